//! The local model server with the real SmolLM2 weights: answers, a bounded queue with 429.
//! Skipped, with the reason printed, when the weights are absent (CI pulls them first).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::PathBuf;
use std::sync::Arc;

use keel_gateway::{spawn_local_model, LOCAL_MODEL_ID};
use keel_models::LocalLlm;
use serde_json::{json, Value};

fn gguf() -> Option<PathBuf> {
    let path = std::env::var_os("KEEL_MODELS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".keel/models")))?
        .join("smollm2-135m-instruct/model.gguf");
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("skipped: no local model at {} (run `keel models pull`)", path.display());
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_and_turns_requests_away_when_the_queue_is_full() {
    let Some(path) = gguf() else { return };
    let llm = Arc::new(tokio::task::spawn_blocking(move || LocalLlm::load(&path)).await.unwrap().unwrap());
    let server = spawn_local_model(llm, LOCAL_MODEL_ID, 1).await.unwrap();
    let url = format!("{}/chat/completions", server.base_url());
    let client = reqwest::Client::new();
    let body = |max: u32| json!({"model": LOCAL_MODEL_ID, "max_tokens": max, "messages": [{"role": "user", "content": "Count from one to fifty in words."}]});

    let one: Value = client.post(&url).json(&body(8)).send().await.unwrap().json().await.unwrap();
    assert_eq!(one["usage"]["completion_tokens"], 8);
    assert_eq!(one["choices"][0]["finish_reason"], "length");

    let wrong = client.post(&url).json(&json!({"model": "other", "messages": []})).send().await.unwrap();
    assert_eq!(wrong.status(), 404);

    // One generates, one waits, the third finds the queue (of 1) full.
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (client, url, body) = (client.clone(), url.clone(), body(64));
        tasks.push(tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap().status().as_u16() }));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 429]);
    server.stop();
}
