//! The local chat model against the real SmolLM2-135M-Instruct weights (skipped when absent).

// Test code: a failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::OnceLock;

use keel_models::{ChatMessage, FinishReason, GenerateParams, LocalLlm};

fn llm() -> Option<&'static LocalLlm> {
    static LLM: OnceLock<Option<LocalLlm>> = OnceLock::new();
    let llm = LLM.get_or_init(|| common::smollm_gguf().map(|p| LocalLlm::load(&p).unwrap())).as_ref();
    if llm.is_none() {
        eprintln!("skipping: the local chat model is not installed");
    }
    llm
}

fn ask(question: &str) -> Vec<ChatMessage> {
    vec![ChatMessage::new("user", question)]
}

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams { max_tokens, ..GenerateParams::default() }
}

#[test]
fn greedy_output_is_identical_across_runs_and_streams_the_same_text() {
    let Some(llm) = llm() else { return };
    let messages = ask("What is the capital of France? Answer in one sentence.");
    let mut streamed = String::new();
    let first = llm
        .generate(&messages, &greedy(40), &mut |t| {
            streamed.push_str(t);
            true
        })
        .unwrap();
    let second = llm.generate(&messages, &greedy(40), &mut |_| true).unwrap();
    eprintln!("answer: {:?}", first.text);
    assert_eq!(first, second);
    assert_eq!(streamed, first.text);
    assert!(first.text.contains("Paris"), "{:?}", first.text);
    assert!(first.completion_tokens > 0 && first.completion_tokens <= 40);
    assert!(first.prompt_tokens > 10);
}

#[test]
fn prompt_uses_chatml_with_the_templates_default_system_prompt() {
    let Some(llm) = llm() else { return };
    let system = llm.default_system_prompt().unwrap();
    assert!(system.contains("SmolLM"), "{system}");
    let ids = llm.prompt_tokens(&ask("Hi")).unwrap();
    let expected =
        format!("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    // Control tokens decode to nothing; the ids must still be there, once per turn boundary.
    let decoded = llm.decode(&ids);
    assert_eq!(decoded, expected.replace("<|im_start|>", "").replace("<|im_end|>", ""));
    assert_eq!(ids.iter().filter(|&&id| id == 1).count(), 3, "{ids:?}");
    assert_eq!(ids.iter().filter(|&&id| id == 2).count(), 2, "{ids:?}");
}

#[test]
fn control_token_names_in_user_text_are_plain_text() {
    let Some(llm) = llm() else { return };
    let ids = llm.encode("<|im_end|>").unwrap();
    assert!(ids.len() > 1, "{ids:?}");
    assert_eq!(llm.decode(&ids), "<|im_end|>");
}

#[test]
fn tokenizer_round_trips_multilingual_text_and_splits_digits() {
    let Some(llm) = llm() else { return };
    let text = "Hello world! 東京は日本の首都です。 12345 naïve café\n\ttabs";
    let ids = llm.encode(text).unwrap();
    assert_eq!(llm.decode(&ids), text);
    // SmolLM's pre-tokenizer splits numbers into single digits.
    assert_eq!(llm.encode("2024").unwrap().len(), 4);
}

#[test]
fn max_tokens_ends_with_length() {
    let Some(llm) = llm() else { return };
    let g = llm.generate(&ask("Write a long story about a dragon."), &greedy(5), &mut |_| true).unwrap();
    assert_eq!(g.finish_reason, FinishReason::Length);
    assert_eq!(g.completion_tokens, 5);
    let none = llm.generate(&ask("Hi"), &greedy(0), &mut |_| true).unwrap();
    assert_eq!((none.text.as_str(), none.completion_tokens), ("", 0));
}

#[test]
fn stop_sequences_cut_the_answer_before_them() {
    let Some(llm) = llm() else { return };
    let messages = ask("Count from 1 to 10, separated by commas.");
    let full = llm.generate(&messages, &greedy(40), &mut |_| true).unwrap();
    eprintln!("full: {:?}", full.text);
    assert!(full.text.contains('5'), "{:?}", full.text);
    let params = GenerateParams { stop: vec!["5".to_string()], ..greedy(40) };
    let mut streamed = String::new();
    let cut = llm
        .generate(&messages, &params, &mut |t| {
            streamed.push_str(t);
            true
        })
        .unwrap();
    assert_eq!(cut.finish_reason, FinishReason::Stop);
    assert_eq!(cut.text, full.text[..full.text.find('5').unwrap()]);
    assert_eq!(streamed, cut.text);
}

#[test]
fn returning_false_from_the_callback_stops_generation() {
    let Some(llm) = llm() else { return };
    let mut pieces = 0;
    let g = llm
        .generate(&ask("Tell me about the sea."), &greedy(50), &mut |_| {
            pieces += 1;
            pieces < 3
        })
        .unwrap();
    assert_eq!(pieces, 3);
    assert_eq!(g.finish_reason, FinishReason::Stop);
    assert!(g.completion_tokens < 50);
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let Some(llm) = llm() else { return };
    let params = GenerateParams { max_tokens: 20, temperature: 0.8, top_p: 0.9, seed: 42, stop: Vec::new() };
    let messages = ask("Name a colour.");
    let a = llm.generate(&messages, &params, &mut |_| true).unwrap();
    let b = llm.generate(&messages, &params, &mut |_| true).unwrap();
    assert_eq!(a, b);
}

#[test]
fn overlong_conversations_and_bad_parameters_are_refused_clearly() {
    let Some(llm) = llm() else { return };
    let long = "word ".repeat(llm.context_length() + 10);
    let err = llm.generate(&ask(&long), &greedy(5), &mut |_| true).unwrap_err();
    assert!(err.to_string().contains("tokens long"), "{err}");
    let err = llm.generate(&[], &greedy(5), &mut |_| true).unwrap_err();
    assert!(err.to_string().contains("no messages"), "{err}");
    let bad = GenerateParams { temperature: -1.0, ..greedy(5) };
    assert!(llm.generate(&ask("Hi"), &bad, &mut |_| true).is_err());
}
