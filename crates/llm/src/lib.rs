//! The LLM layer. Every use of a model is a [`Task`]: it builds messages, parses the reply into a
//! typed value, and has a fallback. Providers only move text. [`Llm`] routes a task to its role's
//! provider, retries bad replies, and records each call.

// The lower crates under the names the modules use (`crate::config`, `crate::model`).
use propersim_core::{config, storage};
use propersim_model as model;

pub mod cache;
pub mod cli;
pub mod client;
pub mod embed_bert;
pub mod gemini;
pub mod http;
pub mod ledger;
pub mod local;
pub mod openai;
pub mod providers;
pub mod scripted;
pub mod serve;
pub mod task;
pub mod vllm;

pub use client::{Llm, TaskOutcome};
pub use providers::Providers;
pub use task::{extract_json, object_schema, text_schema, token_bound, Task};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn system(c: impl Into<String>) -> Self {
        Message { role: "system".into(), content: c.into() }
    }
    pub fn user(c: impl Into<String>) -> Self {
        Message { role: "user".into(), content: c.into() }
    }
    pub fn assistant(c: impl Into<String>) -> Self {
        Message { role: "assistant".into(), content: c.into() }
    }
}

/// Turns chat messages into model tokens (a chat template plus a tokenizer): what training and
/// scoring need from a model besides its weights.
pub trait ChatFormatter: Send + Sync {
    /// Render messages with the model's chat template.
    fn render(&self, msgs: &[Message], add_generation_prompt: bool) -> anyhow::Result<String>;
    /// Tokenize text without adding special tokens (the template already has them).
    fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>>;
    /// The tokenizer's EOS id, which TRL appends to completions; `None`: nothing is appended.
    fn eos_id(&self) -> Option<u32> {
        None
    }
}

/// Plain-text tokenization, without a chat template (the MMLU check's prompts and answers).
pub trait TextCodec {
    fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>>;
    fn decode(&self, ids: &[u32]) -> anyhow::Result<String>;
}

/// Sampling settings sent with a request (None = provider default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub max_tokens: Option<usize>,
    pub repeat_penalty: Option<f64>,
    pub seed: Option<u64>,
}

/// The shape an answer must have: a JSON schema and a name (OpenAI's `response_format` wants
/// one). Providers that can, constrain decoding to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerSchema {
    pub name: String,
    pub schema: serde_json::Value,
}

/// A chat request as providers see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub sampling: Sampling,
    /// Constrain the answer to this schema (structured outputs); `None` is free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<AnswerSchema>,
}

/// A provider's answer, with token counts when the provider reports them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatReply {
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Transport-level retries the provider made (429/5xx/timeouts).
    pub retries: u32,
    /// Prompt tokens the provider served from its prefix cache (local engine; OpenAI-compatible
    /// servers that report `prompt_tokens_details.cached_tokens`).
    #[serde(default)]
    pub cached_prompt_tokens: u64,
}

/// Errors a provider reports after its own retries.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("authentication failed ({status}): check the API key in the environment variable named by `api_key_env`: {message}")]
    Auth { status: u16, message: String },
    #[error("the provider rejected the request ({status}): {message}")]
    BadRequest { status: u16, message: String },
    #[error("the provider failed after {attempts} attempts: {message}")]
    Exhausted { attempts: u32, message: String },
    #[error("unreadable reply from the provider: {0}")]
    Malformed(String),
    #[error("{0}")]
    Other(String),
}

/// Something that turns messages into text (and, optionally, text into vectors).
pub trait ChatProvider: Send + Sync {
    fn chat<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<ChatReply, ProviderError>>;
    fn embed<'a>(
        &'a self,
        _model: &'a str,
        _texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, ProviderError>> {
        Box::pin(async { Err(ProviderError::Other("this provider has no embeddings".into())) })
    }
    /// Short name for the ledger and the cache key (`openai`, `gemini`, `local`, ...).
    fn name(&self) -> &str;
    /// The model that actually answers, when the provider knows it better than the role's
    /// `model` setting: a local provider names the file it loaded (which may be a fallback for
    /// the configured id). The ledger records this.
    fn loaded_model(&self) -> Option<&str> {
        None
    }
}
