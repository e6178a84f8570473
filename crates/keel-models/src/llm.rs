//! The local chat model: a llama-architecture GGUF (SmolLM2-135M-Instruct) run on the CPU with
//! candle's quantized llama, its byte-level BPE tokenizer rebuilt from the GGUF metadata, the
//! ChatML prompt format, and streaming generation with stop sequences.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Cursor};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::{self, ModelWeights};
use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::Tokenizer;

use crate::error::{ModelError, Result};

/// Prompt tokens fed to the network per forward pass; bounds the attention matrix's memory.
const PREFILL_CHUNK: usize = 512;

/// Largest model (as f32 weights) that is widened to f32 at load; bigger ones run as stored.
const WIDEN_TO_F32_MAX_BYTES: u64 = 2 << 30;

/// GGUF `tokenizer.ggml.token_type` value of control tokens (`<|im_start|>` and the like).
const TOKEN_TYPE_CONTROL: u32 = 3;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message's text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// How to generate: length limit, sampling and stop sequences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling temperature; 0 means greedy (always the most likely token).
    pub temperature: f64,
    /// Nucleus sampling: sample from the smallest set of tokens whose probability reaches
    /// `top_p`; 1 (or more) turns it off.
    pub top_p: f64,
    /// Seed of the sampler, so a sampled answer can be reproduced.
    pub seed: u64,
    /// Texts that end the answer; the answer stops before the first one that appears.
    pub stop: Vec<String>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self { max_tokens: 256, temperature: 0.0, top_p: 1.0, seed: 0, stop: Vec::new() }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its turn, a stop sequence appeared, or the caller stopped the stream.
    Stop,
    /// `max_tokens` or the model's context length was reached.
    Length,
}

impl FinishReason {
    /// The OpenAI-style name: `stop` or `length`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// The outcome of one generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// The answer's text (without any stop sequence).
    pub text: String,
    /// Tokens in the formatted prompt.
    pub prompt_tokens: usize,
    /// Tokens generated (the end-of-turn token excluded).
    pub completion_tokens: usize,
    /// Why generation ended.
    pub finish_reason: FinishReason,
}

/// A local chat model; serves one generation at a time (callers queue on an internal lock).
pub struct LocalLlm {
    model: Mutex<ModelWeights>,
    tokenizer: Tokenizer,
    /// Bytes each token id stands for; control tokens stand for none.
    token_bytes: Vec<Vec<u8>>,
    im_start: u32,
    im_end: u32,
    /// Tokens that end the assistant's turn.
    end_ids: Vec<u32>,
    template: ChatTemplate,
    context_length: usize,
    device: Device,
    path: PathBuf,
}

impl std::fmt::Debug for LocalLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLlm")
            .field("path", &self.path)
            .field("context_length", &self.context_length)
            .finish_non_exhaustive()
    }
}

impl LocalLlm {
    /// Load a llama-architecture GGUF file with a byte-level BPE (`gpt2`) tokenizer and a
    /// ChatML chat template, such as SmolLM2-135M-Instruct.
    pub fn load(gguf: &Path) -> Result<Self> {
        if !gguf.is_file() {
            return Err(ModelError::MissingFile {
                path: gguf.to_path_buf(),
                hint: format!(
                    "pull the local chat model with `keel models pull {}`, or point Keel at a GGUF file",
                    crate::pull::SMOLLM2_135M_INSTRUCT.name
                ),
            });
        }
        let invalid = |detail: String| ModelError::InvalidModel { path: gguf.to_path_buf(), detail };
        let file = File::open(gguf).map_err(ModelError::io("open", gguf))?;
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader).map_err(|e| invalid(format!("not a GGUF file: {e}")))?;
        let meta = GgufMeta(&content.metadata);

        let arch = meta.string("general.architecture").unwrap_or_default();
        if arch != "llama" {
            return Err(invalid(format!(
                "architecture `{arch}` is not supported (only llama-architecture models are)"
            )));
        }
        let vocab = GgufVocab::read(&meta).map_err(invalid)?;
        let tokenizer = vocab.tokenizer().map_err(invalid)?;
        let token_bytes = vocab.token_bytes();
        let id_of = |t: &str| vocab.tokens.iter().position(|x| x == t).map(|i| i as u32);
        let (Some(im_start), Some(im_end)) = (id_of("<|im_start|>"), id_of("<|im_end|>")) else {
            return Err(invalid(
                "the vocabulary has no <|im_start|>/<|im_end|> tokens; only ChatML models are supported".to_string(),
            ));
        };
        let mut end_ids = vec![im_end];
        end_ids.extend(meta.u32("tokenizer.ggml.eos_token_id"));
        end_ids.extend(id_of("<|endoftext|>"));
        end_ids.sort_unstable();
        end_ids.dedup();

        let template = ChatTemplate::from_gguf(meta.string("tokenizer.chat_template").as_deref());
        let context_length = meta
            .u32("llama.context_length")
            .map(|n| n as usize)
            .unwrap_or(quantized_llama::MAX_SEQ_LEN)
            .min(quantized_llama::MAX_SEQ_LEN);

        let device = Device::Cpu;
        let load_err = |e: candle_core::Error| invalid(format!("could not load the weights: {e}"));
        let model = match widen_to_f32(&content, &mut reader, &device).map_err(load_err)? {
            Some((widened, mut data)) => ModelWeights::from_gguf(widened, &mut data, &device),
            None => ModelWeights::from_gguf(content, &mut reader, &device),
        }
        .map_err(load_err)?;
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        tracing::info!(
            path = %gguf.display(),
            context_length,
            threads = candle_core::utils::get_num_threads(),
            available_parallelism = threads,
            "local chat model loaded"
        );
        Ok(Self {
            model: Mutex::new(model),
            tokenizer,
            token_bytes,
            im_start,
            im_end,
            end_ids,
            template,
            context_length,
            device,
            path: gguf.to_path_buf(),
        })
    }

    /// Longest conversation plus answer the model can hold, in tokens.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The default system prompt the chat template adds when a conversation has none.
    pub fn default_system_prompt(&self) -> Option<&str> {
        self.template.default_system.as_deref()
    }

    /// Token ids of `messages` formatted as a prompt that asks for the assistant's answer.
    pub fn prompt_tokens(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for segment in self.template.render(messages) {
            match segment {
                Segment::ImStart => ids.push(self.im_start),
                Segment::ImEnd => ids.push(self.im_end),
                Segment::Text(text) => ids.extend(self.encode(&text)?),
            }
        }
        Ok(ids)
    }

    /// Token ids of plain text (control-token names in it are read as text, never as controls).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let enc = self.tokenizer.encode(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of token ids (control tokens produce no text).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| self.token_bytes.get(id as usize).map(Vec::as_slice).unwrap_or_default())
            .copied()
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Answer the conversation, passing each new piece of text to `on_text` as soon as it is
    /// known not to be part of a stop sequence; `on_text` returning false stops generation.
    pub fn generate(
        &self,
        messages: &[ChatMessage],
        params: &GenerateParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        if messages.is_empty() {
            return Err(ModelError::InvalidInput("the conversation has no messages to answer".to_string()));
        }
        let bad = |x: f64, min_ok: f64| x.is_nan() || x < min_ok;
        if bad(params.temperature, 0.0) || bad(params.top_p, f64::MIN_POSITIVE) {
            return Err(ModelError::InvalidInput(format!(
                "temperature must be 0 or more and top_p more than 0 (got {} and {})",
                params.temperature, params.top_p
            )));
        }
        let prompt = self.prompt_tokens(messages)?;
        if prompt.len() >= self.context_length {
            return Err(ModelError::InvalidInput(format!(
                "the conversation is {} tokens long; the local model reads at most {} tokens",
                prompt.len(),
                self.context_length
            )));
        }
        let budget = params.max_tokens.min(self.context_length - prompt.len());
        let mut sampler = LogitsProcessor::from_sampling(params.seed, sampling(params));
        let mut stream = TextStream::new(&params.stop);

        // A panic in another request cannot leave the weights half-updated (the KV cache is
        // reset below), so a poisoned lock is safe to take over.
        let mut model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        model.clear_kv_cache();

        let mut logits = None;
        for (i, chunk) in prompt.chunks(PREFILL_CHUNK).enumerate() {
            let input = Tensor::new(chunk, &self.device)?.unsqueeze(0)?;
            logits = Some(model.forward(&input, i * PREFILL_CHUNK)?);
        }
        let mut position = prompt.len();
        let mut completion_tokens = 0;
        let mut finish = FinishReason::Length;
        while completion_tokens < budget {
            let Some(current) = logits.take() else { break };
            let next = sampler.sample(&current.squeeze(0)?)?;
            if self.end_ids.contains(&next) {
                finish = FinishReason::Stop;
                break;
            }
            completion_tokens += 1;
            let bytes = self.token_bytes.get(next as usize).map(Vec::as_slice).unwrap_or_default();
            match stream.push(bytes, on_text) {
                StreamStep::Continue => {}
                StreamStep::Stopped => {
                    finish = FinishReason::Stop;
                    break;
                }
            }
            if completion_tokens < budget {
                let input = Tensor::new(&[next], &self.device)?.unsqueeze(0)?;
                logits = Some(model.forward(&input, position)?);
                position += 1;
            }
        }
        drop(model);
        let text = stream.finish(on_text);
        tracing::debug!(
            prompt_tokens = prompt.len(),
            completion_tokens,
            finish_reason = finish.as_str(),
            "local generation done"
        );
        Ok(Generation { text, prompt_tokens: prompt.len(), completion_tokens, finish_reason: finish })
    }
}

/// The GGUF's tensors dequantized to f32, in memory, when the model is small enough.
///
/// candle has no SIMD kernel for some quantisations (Q4_1, which SmolLM2's file uses, runs a
/// scalar dot product): on a 2-core x86 machine that reads ~20 prompt tokens/s. As f32, matrix
/// products go through `gemm` instead: over 200 prompt tokens/s and over 30 generated tokens/s,
/// for ~4× the memory (about 0.6 GB for a 135M-parameter model), hence the size limit.
fn widen_to_f32<R: std::io::Read + std::io::Seek>(
    content: &gguf_file::Content,
    reader: &mut R,
    device: &Device,
) -> candle_core::Result<Option<(gguf_file::Content, Cursor<Vec<u8>>)>> {
    let f32_bytes: u64 = content.tensor_infos.values().map(|t| t.shape.elem_count() as u64 * 4).sum();
    let all_f32 = content.tensor_infos.values().all(|t| t.ggml_dtype == GgmlDType::F32);
    if all_f32 || f32_bytes > WIDEN_TO_F32_MAX_BYTES {
        return Ok(None);
    }
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut data = Vec::with_capacity(f32_bytes as usize);
    let mut tensor_infos = HashMap::with_capacity(names.len());
    for name in names {
        let q = content.tensor(reader, name, device)?;
        let widened = QTensor::quantize(&q.dequantize(device)?, GgmlDType::F32)?;
        let offset = data.len() as u64;
        data.extend_from_slice(&widened.data()?);
        let info = gguf_file::TensorInfo { ggml_dtype: GgmlDType::F32, shape: q.shape().clone(), offset };
        tensor_infos.insert(name.clone(), info);
    }
    let widened = gguf_file::Content {
        magic: content.magic,
        metadata: content.metadata.clone(),
        tensor_infos,
        tensor_data_offset: 0,
    };
    Ok(Some((widened, Cursor::new(data))))
}

fn sampling(params: &GenerateParams) -> Sampling {
    if params.temperature <= 0.0 {
        Sampling::ArgMax
    } else if params.top_p < 1.0 {
        Sampling::TopP { p: params.top_p, temperature: params.temperature }
    } else {
        Sampling::All { temperature: params.temperature }
    }
}

/// Typed access to GGUF metadata.
struct GgufMeta<'a>(&'a HashMap<String, gguf_file::Value>);

impl GgufMeta<'_> {
    fn string(&self, key: &str) -> Option<String> {
        self.0.get(key)?.to_string().ok().cloned()
    }

    fn u32(&self, key: &str) -> Option<u32> {
        let v = self.0.get(key)?;
        v.to_u32()
            .ok()
            .or_else(|| v.to_i32().ok().and_then(|n| u32::try_from(n).ok()))
            .or_else(|| v.to_u64().ok().and_then(|n| u32::try_from(n).ok()))
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, String> {
        let values = self
            .0
            .get(key)
            .ok_or_else(|| format!("metadata `{key}` is missing"))?
            .to_vec()
            .map_err(|_| format!("metadata `{key}` is not a list"))?;
        values
            .iter()
            .map(|v| v.to_string().cloned().map_err(|_| format!("metadata `{key}` holds a non-string")))
            .collect()
    }

    fn u32s(&self, key: &str) -> Option<Vec<u32>> {
        let values = self.0.get(key)?.to_vec().ok()?;
        values.iter().map(|v| v.to_i32().ok().map(|n| n as u32).or_else(|| v.to_u32().ok())).collect()
    }
}

/// The tokenizer description stored in GGUF metadata.
struct GgufVocab {
    tokens: Vec<String>,
    token_types: Vec<u32>,
    merges: Vec<(String, String)>,
    pre: String,
}

impl GgufVocab {
    fn read(meta: &GgufMeta<'_>) -> Result<Self, String> {
        let model = meta.string("tokenizer.ggml.model").unwrap_or_default();
        if model != "gpt2" {
            return Err(format!("tokenizer `{model}` is not supported (only byte-level BPE, `gpt2`, is)"));
        }
        let tokens = meta.strings("tokenizer.ggml.tokens")?;
        let token_types = meta.u32s("tokenizer.ggml.token_type").unwrap_or_else(|| vec![1; tokens.len()]);
        let merges = meta
            .strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| format!("merge rule `{m}` is not two tokens"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pre = meta.string("tokenizer.ggml.pre").unwrap_or_else(|| "gpt2".to_string());
        Ok(Self { tokens, token_types, merges, pre })
    }

    /// A tokenizer that splits text the way the model's own pre-tokenizer (`tokenizer.ggml.pre`)
    /// does, then applies the BPE merges.
    fn tokenizer(&self) -> Result<Tokenizer, String> {
        // Split digits one by one (StarCoder-family vocabularies such as SmolLM's) or not (GPT-2).
        let split_digits = match self.pre.as_str() {
            "smollm" | "starcoder" | "refact" | "codeshell" | "exaone" | "minerva" => true,
            "gpt2" | "default" => false,
            other => {
                return Err(format!(
                    "tokenizer pre-processing `{other}` is not supported (supported: smollm, starcoder, gpt2)"
                ))
            }
        };
        let vocab: Vocab = self.tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, self.merges.clone())
            .build()
            .map_err(|e| format!("invalid BPE vocabulary: {e}"))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        if split_digits {
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![Digits::new(true).into(), byte_level.into()])));
        } else {
            tokenizer.with_pre_tokenizer(Some(byte_level));
        }
        // Control tokens are placed by id by the chat template, never parsed out of user text.
        tokenizer.set_encode_special_tokens(true);
        Ok(tokenizer)
    }

    /// The bytes each token stands for, undoing the byte-to-character mapping of byte-level BPE.
    fn token_bytes(&self) -> Vec<Vec<u8>> {
        let char_to_byte = byte_level_decoding_table();
        self.tokens
            .iter()
            .enumerate()
            .map(|(i, token)| {
                if self.token_types.get(i) == Some(&TOKEN_TYPE_CONTROL) {
                    return Vec::new();
                }
                let mut bytes = Vec::with_capacity(token.len());
                for c in token.chars() {
                    match char_to_byte.get(&c) {
                        Some(&b) => bytes.push(b),
                        // Not a mapped byte (a user-defined token): its text is itself.
                        None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                bytes
            })
            .collect()
    }
}

/// The inverse of GPT-2's byte→character map: printable Latin-1 bytes stand for themselves, the
/// other 68 byte values were moved to U+0100 onwards, in byte order.
fn byte_level_decoding_table() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = HashMap::with_capacity(256);
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        let c = if printable(b) {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
        table.insert(c, b);
    }
    table
}

/// One piece of a formatted prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    ImStart,
    ImEnd,
    Text(String),
}

/// The ChatML prompt format, with the default system prompt the GGUF's template adds (if any).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct ChatTemplate {
    default_system: Option<String>,
}

impl ChatTemplate {
    /// Read the default system prompt out of a Jinja ChatML template: the literal system turn
    /// emitted when the first message is not a system message.
    fn from_gguf(template: Option<&str>) -> Self {
        let Some(t) = template else {
            return Self::default();
        };
        if !t.contains("<|im_start|>") {
            tracing::warn!("the model's chat template is not ChatML; formatting prompts as ChatML anyway");
        }
        let conditional = t.contains("!= 'system'") || t.contains("!= \"system\"");
        let default_system = conditional
            .then(|| {
                let start = t.find("<|im_start|>system")? + "<|im_start|>system".len();
                let rest = &t[start..];
                let rest = rest.strip_prefix("\\n").or_else(|| rest.strip_prefix('\n'))?;
                let end = rest.find("<|im_end|>")?;
                let text = rest[..end].replace("\\n", "\n");
                // A Jinja expression here means the system text is not a fixed default.
                (!text.contains("{{") && !text.contains('\'') && !text.is_empty()).then_some(text)
            })
            .flatten();
        Self { default_system }
    }

    fn render(&self, messages: &[ChatMessage]) -> Vec<Segment> {
        let mut out = Vec::with_capacity(messages.len() * 4 + 6);
        let mut turn = |role: &str, content: &str| {
            out.push(Segment::ImStart);
            out.push(Segment::Text(format!("{role}\n{content}")));
            out.push(Segment::ImEnd);
            out.push(Segment::Text("\n".to_string()));
        };
        if let (Some(system), Some(first)) = (&self.default_system, messages.first()) {
            if first.role != "system" {
                turn("system", system);
            }
        }
        for m in messages {
            turn(&m.role, &m.content);
        }
        out.push(Segment::ImStart);
        out.push(Segment::Text("assistant\n".to_string()));
        out
    }
}

/// What the generation loop should do after a token's text was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamStep {
    Continue,
    Stopped,
}

/// Turns generated bytes into streamed text: whole UTF-8 characters only, never any part of a
/// stop sequence, and everything before the first stop sequence.
struct TextStream<'a> {
    stops: Vec<&'a str>,
    longest_stop: usize,
    /// Bytes of an incomplete UTF-8 character.
    pending: Vec<u8>,
    text: String,
    /// Bytes of `text` already given to the caller.
    emitted: usize,
    /// Bytes of `text` already searched for complete stop sequences.
    searched: usize,
    cancelled: bool,
}

impl<'a> TextStream<'a> {
    fn new(stops: &'a [String]) -> Self {
        let stops: Vec<&str> = stops.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
        let longest_stop = stops.iter().map(|s| s.len()).max().unwrap_or(0);
        Self {
            stops,
            longest_stop,
            pending: Vec::new(),
            text: String::new(),
            emitted: 0,
            searched: 0,
            cancelled: false,
        }
    }

    fn push(&mut self, bytes: &[u8], on_text: &mut dyn FnMut(&str) -> bool) -> StreamStep {
        self.pending.extend_from_slice(bytes);
        self.decode_pending(false);
        let stopped = self.cut_at_stop();
        let ready = if stopped { self.text.len() } else { self.text.len() - self.held_back() };
        self.emit_until(ready, on_text);
        if stopped || self.cancelled {
            StreamStep::Stopped
        } else {
            StreamStep::Continue
        }
    }

    /// Flush what is left (an unfinished character becomes U+FFFD) and return the whole text.
    fn finish(mut self, on_text: &mut dyn FnMut(&str) -> bool) -> String {
        if !self.cancelled {
            self.decode_pending(true);
            self.cut_at_stop();
            let end = self.text.len();
            self.emit_until(end, on_text);
        }
        self.text
    }

    fn decode_pending(&mut self, flush: bool) {
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    self.text.push_str(s);
                    self.pending.clear();
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    self.text.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        Some(bad) => {
                            self.text.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        None if flush => {
                            self.text.push(char::REPLACEMENT_CHARACTER);
                            self.pending.clear();
                            return;
                        }
                        None => {
                            self.pending.drain(..valid);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Truncate `text` at the earliest complete stop sequence; true when one was found.
    fn cut_at_stop(&mut self) -> bool {
        if self.stops.is_empty() {
            return false;
        }
        let mut from = self.searched.saturating_sub(self.longest_stop.saturating_sub(1));
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self.stops.iter().filter_map(|s| self.text[from..].find(s).map(|p| from + p)).min();
        self.searched = self.text.len();
        match hit {
            Some(p) => {
                self.text.truncate(p);
                true
            }
            None => false,
        }
    }

    /// Length of the longest tail of `text` that could still grow into a stop sequence.
    fn held_back(&self) -> usize {
        self.stops
            .iter()
            .flat_map(|s| (1..s.len()).rev().filter(|&k| s.is_char_boundary(k)).map(move |k| &s[..k]))
            .filter(|prefix| self.text.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0)
    }

    fn emit_until(&mut self, end: usize, on_text: &mut dyn FnMut(&str) -> bool) {
        if end > self.emitted && !self.cancelled {
            if !on_text(&self.text[self.emitted..end]) {
                self.cancelled = true;
            }
            self.emitted = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&[u8]]) -> (Vec<String>, String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut stream = TextStream::new(&stops);
        let mut seen = Vec::new();
        let mut stopped = false;
        for p in pieces {
            let step = stream.push(p, &mut |t: &str| {
                seen.push(t.to_string());
                true
            });
            if step == StreamStep::Stopped {
                stopped = true;
                break;
            }
        }
        let text = stream.finish(&mut |t: &str| {
            seen.push(t.to_string());
            true
        });
        (seen, text, stopped)
    }

    #[test]
    fn multibyte_characters_split_across_tokens_are_emitted_whole() {
        let s = "日本語é";
        let b = s.as_bytes();
        let (seen, text, _) = run(&[], &[&b[..1], &b[1..4], &b[4..8], &b[8..]]);
        assert_eq!(text, s);
        assert_eq!(seen.concat(), s);
        assert!(seen.iter().all(|p| !p.is_empty()));
        assert_eq!(seen[0], "日");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let (_, text, _) = run(&[], &[b"a\xff", b"b\xe6"]);
        assert_eq!(text, "a\u{FFFD}b\u{FFFD}");
    }

    #[test]
    fn stop_sequence_split_across_tokens_is_never_streamed() {
        let (seen, text, stopped) = run(&["\nUser:"], &[b"Hello", b" there\n", b"Us", b"er: hi"]);
        assert!(stopped);
        assert_eq!(text, "Hello there");
        assert_eq!(seen.concat(), "Hello there");
    }

    #[test]
    fn held_back_prefix_is_released_when_it_does_not_complete() {
        let (seen, text, stopped) = run(&["END"], &[b"the EN", b"D", b"x"]);
        assert!(stopped);
        assert_eq!(text, "the ");
        assert_eq!(seen.concat(), "the ");
        let (seen, text, stopped) = run(&["END"], &[b"the EN", b"TRY"]);
        assert!(!stopped);
        assert_eq!(text, "the ENTRY");
        assert_eq!(seen, vec!["the ", "ENTRY"]);
    }

    #[test]
    fn earliest_of_several_stop_sequences_wins() {
        let (_, text, _) = run(&["bb", "a"], &[b"xxbb a"]);
        assert_eq!(text, "xx");
    }

    #[test]
    fn caller_can_cancel_the_stream() {
        let stops: Vec<String> = Vec::new();
        let mut stream = TextStream::new(&stops);
        let mut calls = 0;
        let step = stream.push(b"one", &mut |_| {
            calls += 1;
            false
        });
        assert_eq!(step, StreamStep::Stopped);
        assert_eq!(stream.finish(&mut |_| true), "one");
        assert_eq!(calls, 1);
    }

    #[test]
    fn byte_level_table_round_trips_every_byte() {
        let table = byte_level_decoding_table();
        assert_eq!(table.len(), 256);
        assert_eq!(table.get(&'Ġ'), Some(&b' '));
        assert_eq!(table.get(&'Ċ'), Some(&b'\n'));
        assert_eq!(table.get(&'a'), Some(&b'a'));
    }

    #[test]
    fn default_system_prompt_is_read_from_a_chatml_template() {
        let smollm = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let t = ChatTemplate::from_gguf(Some(smollm));
        assert_eq!(
            t.default_system.as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        let plain = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
        assert_eq!(ChatTemplate::from_gguf(Some(plain)).default_system, None);
        assert_eq!(ChatTemplate::from_gguf(None).default_system, None);
    }

    #[test]
    fn chatml_rendering_adds_the_default_system_turn_only_when_missing() {
        let t = ChatTemplate { default_system: Some("Be kind.".to_string()) };
        let text = |segs: Vec<Segment>| {
            segs.into_iter()
                .map(|s| match s {
                    Segment::ImStart => "<|im_start|>".to_string(),
                    Segment::ImEnd => "<|im_end|>".to_string(),
                    Segment::Text(t) => t,
                })
                .collect::<String>()
        };
        let user = [ChatMessage::new("user", "Hi")];
        assert_eq!(
            text(t.render(&user)),
            "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let with_system = [ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi")];
        assert_eq!(
            text(t.render(&with_system)),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
