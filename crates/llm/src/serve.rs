//! `propersim llm serve`: an OpenAI-compatible HTTP server over one loaded local model.
//!
//! Why: every request goes to the same [`LocalProvider`], so requests in flight together are
//! decoded together by its engine (continuous batching) and reuse each other's prompt prefixes.
//! Several propersim processes (or other tools) can then share one loaded model, and the engine
//! can be measured against other servers with the same client (`scripts/bench_serve.py`).
//!
//! Endpoints: `POST /v1/chat/completions` (non-streaming), `GET /v1/models`, `GET /health` (with
//! the engine's counters). Requests are checked before they reach the engine: anything we cannot
//! honour (`stream`, `n` > 1, stop sequences, tools, logprobs, a schema that does not compile)
//! is a 400 with an OpenAI-style error body, so a client learns at once instead of getting
//! something other than what it asked for. Other fields of the OpenAI request are ignored; the
//! `model` field is not checked (there is one model).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::local::{EngineOptions, LocalProvider, StopReason};
use super::{token_bound, Message, Sampling};
use crate::config::{ProviderKind, Role, RoleConfig};

/// Largest request body accepted. Prompts are text and the model's context is a few thousand
/// tokens, so this is generous; it only stops a client from making us buffer anything.
pub const BODY_LIMIT_BYTES: usize = 4 << 20;
/// How long in-flight requests may run on after a shutdown signal before they are dropped
/// (which cancels their generations in the engine).
const DRAIN: Duration = Duration::from_secs(2);
/// Answer length when a request names no `max_tokens` and no schema (the local default).
const DEFAULT_MAX_TOKENS: usize = 256;

/// What `propersim llm serve` loads.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A GGUF file, a folder holding one, or a Hugging Face repo id (as a role's `model`).
    pub model: String,
    /// Memory cap of the engine's prefix KV cache in MiB (0 turns it off).
    pub prefix_cache_mb: usize,
    /// Most sequences decoded together (1: one request at a time).
    pub max_batch: usize,
}

/// The loaded model and what the handlers need beside it.
pub struct Served {
    provider: LocalProvider,
    /// The name `/v1/models` lists and replies carry: the GGUF's file stem.
    id: String,
    created: u64,
    context_len: usize,
    next_id: AtomicU64,
}

impl Served {
    /// Load the model (seconds for a small GGUF).
    pub fn load(opts: &ServeOptions) -> Result<Served> {
        anyhow::ensure!(opts.max_batch >= 1, "--max-batch must be at least 1");
        let mut rc = RoleConfig::scripted();
        rc.provider = ProviderKind::Local;
        rc.model = opts.model.clone();
        let options = EngineOptions { max_batch: opts.max_batch, prefix_cache_bytes: opts.prefix_cache_mb << 20 };
        let provider = LocalProvider::with_options(&rc, Role::Assistant, options)
            .with_context(|| format!("loading {}", opts.model))?;
        let id = Path::new(provider.model_name())
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| opts.model.clone());
        let context_len = provider.meta()?.context_length;
        Ok(Served { provider, id, created: unix_now(), context_len, next_id: AtomicU64::new(1) })
    }

    /// The model's name as the API reports it.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn provider(&self) -> &LocalProvider {
        &self.provider
    }
}

/// The routes, over one shared model.
pub fn router(served: Arc<Served>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .with_state(served)
}

/// Serve on `listener` until `shutdown` resolves; in-flight requests then get [`DRAIN`] to
/// finish before they are dropped.
pub async fn run(
    listener: tokio::net::TcpListener,
    served: Arc<Served>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let stopping = Arc::new(tokio::sync::Notify::new());
    let notify = stopping.clone();
    let server = axum::serve(listener, router(served)).with_graceful_shutdown(async move {
        shutdown.await;
        notify.notify_one();
    });
    tokio::select! {
        r = server => r.context("the HTTP server failed"),
        _ = async { stopping.notified().await; tokio::time::sleep(DRAIN).await } => {
            tracing::warn!("requests still running {DRAIN:?} after the shutdown signal were cancelled");
            Ok(())
        }
    }
}

/// Bind `host:port` (port 0: any free port) and return the listener and its address.
pub async fn bind(host: &str, port: u16) -> Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener =
        tokio::net::TcpListener::bind((host, port)).await.with_context(|| format!("cannot listen on {host}:{port}"))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An error as OpenAI returns it: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl ApiError {
    fn invalid(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param,
            code: None,
        }
    }

    fn unsupported(what: &'static str, why: &str) -> ApiError {
        ApiError { code: Some("unsupported_parameter"), ..ApiError::invalid(format!("`{what}`: {why}"), Some(what)) }
    }

    fn server(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            message: message.into(),
            param: None,
            code: None,
        }
    }
}

impl From<BytesRejection> for ApiError {
    /// An unreadable or oversized body keeps its status (413 for the size cap).
    fn from(r: BytesRejection) -> ApiError {
        let status = r.status();
        let status = if status.is_client_error() { status } else { StatusCode::BAD_REQUEST };
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the request body is larger than the server's limit of {BODY_LIMIT_BYTES} bytes")
        } else {
            format!("cannot read the request body: {}", r.body_text())
        };
        ApiError { status, ..ApiError::invalid(message, None) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was never read, so the connection cannot carry another
            // request; say so, or the client reuses it and its next request fails.
            r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: Some("not_found"),
        ..ApiError::invalid(
            "no such endpoint; this server has POST /v1/chat/completions, GET /v1/models and GET /health",
            None,
        )
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: Some("method_not_allowed"),
        ..ApiError::invalid("method not allowed on this endpoint", None)
    }
}

// ---------------------------------------------------------------------------------------------
// Wire types

/// The part of an OpenAI chat completion request we read.
#[derive(Debug, Deserialize)]
struct CompletionRequest {
    messages: Vec<WireMessage>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u64>,
    seed: Option<u64>,
    repeat_penalty: Option<f64>,
    repetition_penalty: Option<f64>,
    response_format: Option<ResponseFormat>,
    n: Option<u64>,
    stream: Option<bool>,
    stop: Option<Value>,
    tools: Option<Value>,
    logprobs: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    role: String,
    content: Option<Content>,
}

/// A message's content: a string, or a list of parts of which only text is understood.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormat {
    Text,
    /// Any JSON object; `schema` is llama.cpp's extension of this form.
    JsonObject {
        schema: Option<Value>,
    },
    JsonSchema {
        json_schema: JsonSchemaFormat,
    },
}

/// `name`, `description` and `strict` are not needed: the schema is always enforced.
#[derive(Debug, Deserialize)]
struct JsonSchemaFormat {
    schema: Option<Value>,
}

#[derive(Debug, Serialize)]
struct Completion {
    id: String,
    object: &'static str,
    created: u64,
    model: String,
    choices: Vec<Choice>,
    usage: Usage,
}

#[derive(Debug, Serialize)]
struct Choice {
    index: u32,
    message: ReplyMessage,
    finish_reason: &'static str,
    logprobs: Option<()>,
}

#[derive(Debug, Serialize)]
struct ReplyMessage {
    role: &'static str,
    content: String,
}

#[derive(Debug, Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
}

#[derive(Debug, Serialize)]
struct PromptDetails {
    cached_tokens: u64,
}

/// A request checked and translated into what the local provider takes.
struct Job {
    messages: Vec<Message>,
    sampling: Sampling,
    schema: Option<Value>,
}

impl CompletionRequest {
    fn into_job(self, served: &Served) -> Result<Job, ApiError> {
        if self.stream == Some(true) {
            return Err(ApiError::unsupported("stream", "streaming is not supported; send `stream: false`"));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::unsupported("n", "only one choice per request (n = 1) is supported"));
        }
        if self.stop.as_ref().is_some_and(has_content) {
            return Err(ApiError::unsupported("stop", "stop sequences are not supported"));
        }
        if self.tools.as_ref().is_some_and(has_content) {
            return Err(ApiError::unsupported("tools", "tool calls are not supported"));
        }
        if self.logprobs == Some(true) {
            return Err(ApiError::unsupported("logprobs", "log-probabilities are not returned"));
        }
        let messages =
            self.messages.into_iter().enumerate().map(|(i, m)| m.into_message(i)).collect::<Result<Vec<_>, _>>()?;
        if messages.is_empty() {
            return Err(ApiError::invalid("`messages` must hold at least one message", Some("messages")));
        }
        let schema = match self.response_format {
            None | Some(ResponseFormat::Text) => None,
            Some(ResponseFormat::JsonObject { schema }) => Some(schema.unwrap_or_else(|| json!({"type": "object"}))),
            Some(ResponseFormat::JsonSchema { json_schema }) => Some(json_schema.schema.ok_or_else(|| {
                ApiError::invalid("`response_format.json_schema.schema` is missing", Some("response_format"))
            })?),
        };
        if let Some(s) = &schema {
            if !s.is_object() {
                return Err(ApiError::invalid(
                    "the response_format schema must be a JSON object",
                    Some("response_format"),
                ));
            }
            served.provider.check_schema(s).map_err(|e| {
                ApiError::invalid(format!("the response_format schema is not usable: {e:#}"), Some("response_format"))
            })?;
        }
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            Some(0) => return Err(ApiError::invalid("`max_tokens` must be at least 1", Some("max_tokens"))),
            Some(m) => usize::try_from(m).unwrap_or(usize::MAX).min(served.context_len),
            // A schema-bound answer ends when its JSON closes; the limit only has to let every
            // valid answer finish.
            None => schema.as_ref().map_or(DEFAULT_MAX_TOKENS, |s| token_bound(s).max(DEFAULT_MAX_TOKENS)),
        };
        let temperature = finite("temperature", self.temperature, |t| t >= 0.0, "at least 0")?;
        let top_p = finite("top_p", self.top_p, |p| p > 0.0 && p <= 1.0, "in (0, 1]")?;
        let penalty = self.repeat_penalty.or(self.repetition_penalty);
        let repeat_penalty = finite("repeat_penalty", penalty, |r| r > 0.0, "above 0")?;
        Ok(Job {
            messages,
            sampling: Sampling {
                temperature,
                top_p,
                top_k: self.top_k.map(|k| usize::try_from(k).unwrap_or(usize::MAX)),
                max_tokens: Some(max_tokens),
                repeat_penalty,
                seed: self.seed,
            },
            schema,
        })
    }
}

impl WireMessage {
    fn into_message(self, index: usize) -> Result<Message, ApiError> {
        let role = match self.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{index}].role `{other}` is not one of system, developer, user, assistant"),
                    Some("messages"),
                ))
            }
        };
        let content = match self.content {
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                format!("messages[{index}] has a `{kind}` part; only text parts are supported"),
                                Some("messages"),
                            ))
                        }
                    }
                }
                text
            }
            None => {
                return Err(ApiError::invalid(format!("messages[{index}].content is missing"), Some("messages")));
            }
        };
        Ok(Message { role: role.to_string(), content })
    }
}

/// Whether an optional list-or-string field asks for something (`null`, `""` and `[]` do not).
fn has_content(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => true,
    }
}

fn finite(name: &'static str, v: Option<f64>, ok: impl Fn(f64) -> bool, range: &str) -> Result<Option<f64>, ApiError> {
    match v {
        Some(x) if !x.is_finite() || !ok(x) => {
            Err(ApiError::invalid(format!("`{name}` is {x}; it must be {range}"), Some(name)))
        }
        v => Ok(v),
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn chat_completions(
    State(served): State<Arc<Served>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Completion>, ApiError> {
    let body = body?;
    let req: CompletionRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("the body is not a valid chat completion request: {e}"), None))?;
    let job = req.into_job(&served)?;
    let (text, g) = match served.provider.generate(&job.messages, &job.sampling, job.schema.as_ref()).await {
        Ok(r) => r,
        Err(e) => return Err(generation_error(&served, &job, e)),
    };
    let finish_reason = match g.stop {
        StopReason::Eos | StopReason::Complete => "stop",
        StopReason::MaxTokens | StopReason::ContextFull => "length",
    };
    let (prompt, completion) = (g.prompt_tokens as u64, g.tokens.len() as u64);
    Ok(Json(Completion {
        id: format!("chatcmpl-{:x}-{}", served.created, served.next_id.fetch_add(1, Ordering::Relaxed)),
        object: "chat.completion",
        created: unix_now(),
        model: served.id.clone(),
        choices: vec![Choice {
            index: 0,
            message: ReplyMessage { role: "assistant", content: text },
            finish_reason,
            logprobs: None,
        }],
        usage: Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: PromptDetails { cached_tokens: g.reused_tokens as u64 },
        },
    }))
}

/// A failed generation is the caller's fault when the prompt does not fit the context (the
/// one request the engine refuses); anything else is ours.
fn generation_error(served: &Served, job: &Job, e: anyhow::Error) -> ApiError {
    let prompt_len = served
        .provider
        .template()
        .and_then(|t| t.render(&job.messages, true))
        .and_then(|p| served.provider.count_tokens(&p));
    match prompt_len {
        Ok(n) if n >= served.context_len => ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid(
                format!("the prompt has {n} tokens but the model's context holds {}", served.context_len),
                Some("messages"),
            )
        },
        _ => ApiError::server(format!("the model failed: {e:#}")),
    }
}

async fn models(State(served): State<Arc<Served>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": served.id, "object": "model", "created": served.created, "owned_by": "propersim"}],
    }))
}

/// Liveness plus the engine's counters (the benchmark reads prefix-cache hits and batch sizes).
async fn health(State(served): State<Arc<Served>>) -> Json<Value> {
    let mut engine = json!(null);
    if let Ok(s) = served.provider.engine_stats() {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (steps, rows) = (n(&s.decode_steps), n(&s.decode_rows));
        engine = json!({
            "requests": n(&s.requests),
            "prompt_tokens": n(&s.prompt_tokens),
            "reused_tokens": n(&s.reused_tokens),
            "prefix_hits": n(&s.prefix_hits),
            "generated_tokens": n(&s.generated_tokens),
            "decode_steps": steps,
            "decode_rows": rows,
            "mean_batch": if steps > 0 { rows as f64 / steps as f64 } else { 0.0 },
            "cache_bytes": n(&s.cache_bytes),
            "peak_cache_bytes": n(&s.peak_cache_bytes),
            "cancelled": n(&s.cancelled),
        });
    }
    Json(json!({"status": "ok", "model": served.id, "engine": engine}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<CompletionRequest, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn wire_request_forms() {
        let r = parse(json!({
            "model": "x",
            "messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}, "strict": true}},
            "frequency_penalty": 0,
        }))
        .unwrap();
        let m = r.messages.into_iter().next().unwrap().into_message(0).unwrap();
        assert_eq!((m.role.as_str(), m.content.as_str()), ("system", "ab"));
        assert!(matches!(r.response_format, Some(ResponseFormat::JsonSchema { .. })));
        assert!(parse(json!({"messages": "hi"})).is_err());
        assert!(parse(json!({"messages": [], "max_tokens": "many"})).is_err());
        assert!(parse(json!({"messages": [], "response_format": {"type": "xml"}})).is_err());
        let bad_role = parse(json!({"messages": [{"role": "tool", "content": "x"}]})).unwrap();
        let e = bad_role.messages.into_iter().next().unwrap().into_message(3).unwrap_err();
        assert!(e.message.contains("messages[3].role `tool`"), "{}", e.message);
    }

    #[test]
    fn empty_stop_and_tools_are_no_request() {
        assert!(!has_content(&json!(null)) && !has_content(&json!([])) && !has_content(&json!("")));
        assert!(has_content(&json!(["\n"])) && has_content(&json!("END")));
        assert!(finite("top_p", Some(1.5), |p| p > 0.0 && p <= 1.0, "in (0, 1]").is_err());
        assert!(finite("temperature", Some(f64::NAN), |t| t >= 0.0, "at least 0").is_err());
        assert_eq!(finite("temperature", Some(0.0), |t| t >= 0.0, "at least 0").unwrap(), Some(0.0));
    }

    #[tokio::test]
    async fn errors_have_the_openai_shape() {
        let r = ApiError::unsupported("n", "one only").into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(
            (v["error"]["param"].as_str(), v["error"]["code"].as_str()),
            (Some("n"), Some("unsupported_parameter"))
        );
        assert!(v["error"]["message"].as_str().unwrap().contains("one only"));
    }
}
