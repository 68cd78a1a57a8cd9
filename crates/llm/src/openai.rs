//! OpenAI-compatible provider: `POST {base}/chat/completions` and `POST {base}/embeddings`.
//! The same wire format is spoken by OpenAI, vLLM, Ollama (`/v1`) and the llama.cpp server, so
//! `base_url` is the only thing that changes between them.

use futures::future::BoxFuture;
use serde_json::{json, Map, Value};

use super::http::{join_url, AuthStyle, HttpCaller, HttpPolicy};
use super::{ChatProvider, ChatReply, ChatRequest, ProviderError};
use crate::config::RoleConfig;

pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// Key variable used when talking to api.openai.com and no `api_key_env` is configured.
pub const DEFAULT_KEY_ENV: &str = "OPENAI_API_KEY";

#[derive(Debug)]
pub struct OpenAiProvider {
    http: HttpCaller,
}

impl OpenAiProvider {
    /// From a role's settings. With no `base_url` this is api.openai.com and the key defaults
    /// to `OPENAI_API_KEY`; with a `base_url` and no `api_key_env` no key is sent (local servers).
    pub fn new(rc: &RoleConfig) -> anyhow::Result<OpenAiProvider> {
        Ok(OpenAiProvider { http: HttpCaller::new(rc, AuthStyle::Bearer, DEFAULT_BASE_URL, DEFAULT_KEY_ENV)? })
    }

    /// Replace the retry policy (tests use short backoffs).
    pub fn with_policy(mut self, policy: HttpPolicy) -> Self {
        self.http.set_policy(policy);
        self
    }
}

/// The request body: standard fields, plus `top_k` and the repetition penalty only when set,
/// because vLLM and llama.cpp accept them but api.openai.com rejects unknown fields. The penalty
/// goes under both spellings: llama.cpp reads `repeat_penalty`, vLLM `repetition_penalty`, and
/// each ignores the other's.
pub fn chat_body(req: &ChatRequest) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert(
        "messages".into(),
        json!(req.messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect::<Vec<_>>()),
    );
    let s = &req.sampling;
    if let Some(t) = s.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = s.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if let Some(m) = s.max_tokens {
        body.insert("max_tokens".into(), json!(m));
    }
    if let Some(seed) = s.seed {
        body.insert("seed".into(), json!(seed));
    }
    if let Some(k) = s.top_k {
        body.insert("top_k".into(), json!(k));
    }
    if let Some(r) = s.repeat_penalty {
        body.insert("repeat_penalty".into(), json!(r));
        body.insert("repetition_penalty".into(), json!(r));
    }
    if let Some(a) = &req.schema {
        // vLLM, llama.cpp's server and Ollama enforce the schema while decoding; OpenAI does
        // with `strict`, which also requires every property listed and no extra ones (our
        // schemas are written that way).
        body.insert(
            "response_format".into(),
            json!({"type": "json_schema", "json_schema": {"name": a.name, "schema": a.schema, "strict": true}}),
        );
    }
    body.insert("stream".into(), json!(false));
    Value::Object(body)
}

/// `choices[0].message.content` and `usage`.
pub fn parse_chat(v: &Value) -> Result<ChatReply, ProviderError> {
    let choice = v
        .pointer("/choices/0")
        .ok_or_else(|| ProviderError::Malformed(format!("no `choices` in the reply: {}", short(v))))?;
    let text = match choice.pointer("/message/content") {
        Some(Value::String(s)) => s.clone(),
        // Some servers return content as a list of parts.
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("")
        }
        _ => {
            let reason = choice.get("finish_reason").and_then(Value::as_str).unwrap_or("unknown");
            return Err(ProviderError::Malformed(format!("the reply has no message text (finish_reason: {reason})")));
        }
    };
    let tok = |k: &str| v.pointer(&format!("/usage/{k}")).and_then(Value::as_u64).unwrap_or(0);
    Ok(ChatReply {
        text,
        prompt_tokens: tok("prompt_tokens"),
        completion_tokens: tok("completion_tokens"),
        retries: 0,
        cached_prompt_tokens: tok("prompt_tokens_details/cached_tokens"),
    })
}

/// `data[*].embedding`, ordered by `index`.
pub fn parse_embeddings(v: &Value, expected: usize) -> Result<Vec<Vec<f32>>, ProviderError> {
    let data = v
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| ProviderError::Malformed(format!("no `data` in the embeddings reply: {}", short(v))))?;
    let mut out: Vec<Option<Vec<f32>>> = vec![None; expected];
    for (pos, item) in data.iter().enumerate() {
        let idx = item.get("index").and_then(Value::as_u64).map(|i| i as usize).unwrap_or(pos);
        let vec = floats(item.get("embedding"))
            .ok_or_else(|| ProviderError::Malformed(format!("embedding {idx} is not a list of numbers")))?;
        match out.get_mut(idx) {
            Some(slot) => *slot = Some(vec),
            None => {
                return Err(ProviderError::Malformed(format!(
                    "embedding index {idx} is out of range (asked for {expected})"
                )))
            }
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, e)| e.ok_or_else(|| ProviderError::Malformed(format!("the reply lacks embedding {i} of {expected}"))))
        .collect()
}

pub(crate) fn floats(v: Option<&Value>) -> Option<Vec<f32>> {
    v?.as_array()?.iter().map(|x| x.as_f64().map(|f| f as f32)).collect()
}

pub(crate) fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s
    }
}

impl ChatProvider for OpenAiProvider {
    fn chat<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<ChatReply, ProviderError>> {
        Box::pin(async move {
            let url = join_url(self.http.base_url(), "chat/completions");
            let (mut reply, retries) = self.http.post_json(&url, &chat_body(req), parse_chat).await?;
            reply.retries = retries;
            Ok(reply)
        })
    }

    fn embed<'a>(&'a self, model: &'a str, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, ProviderError>> {
        Box::pin(async move {
            if texts.is_empty() {
                return Ok(Vec::new());
            }
            let url = join_url(self.http.base_url(), "embeddings");
            let body = json!({"model": model, "input": texts});
            let (vecs, _) = self.http.post_json(&url, &body, |v| parse_embeddings(v, texts.len())).await?;
            Ok(vecs)
        })
    }

    fn name(&self) -> &str {
        "openai"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, Sampling};

    #[test]
    fn body_sends_extras_only_when_set() {
        let mut req = ChatRequest {
            model: "m".into(),
            messages: vec![Message::user("hi")],
            sampling: Sampling::default(),
            schema: None,
        };
        let b = chat_body(&req);
        assert!(b.get("top_k").is_none() && b.get("temperature").is_none());
        req.sampling.top_k = Some(40);
        req.sampling.temperature = Some(0.5);
        req.sampling.repeat_penalty = Some(1.1);
        let b = chat_body(&req);
        assert_eq!(b["top_k"], 40);
        assert_eq!((b["repeat_penalty"].as_f64(), b["repetition_penalty"].as_f64()), (Some(1.1), Some(1.1)));
        assert_eq!(b["temperature"], 0.5);
        assert!(b.get("response_format").is_none());
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        req.schema = Some(crate::AnswerSchema { name: "t".into(), schema: schema.clone() });
        let rf = &chat_body(&req)["response_format"];
        assert_eq!(
            (&rf["type"], &rf["json_schema"]["name"], &rf["json_schema"]["schema"]),
            (&json!("json_schema"), &json!("t"), &schema)
        );
    }

    #[test]
    fn parses_replies_and_errors() {
        let r = parse_chat(
            &json!({"choices":[{"message":{"content":"hey"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}),
        )
        .unwrap();
        assert_eq!((r.text.as_str(), r.prompt_tokens, r.completion_tokens), ("hey", 3, 1));
        assert!(matches!(parse_chat(&json!({"choices":[]})), Err(ProviderError::Malformed(_))));
        let e = parse_embeddings(&json!({"data":[{"index":1,"embedding":[1.0]},{"index":0,"embedding":[2.0]}]}), 2)
            .unwrap();
        assert_eq!(e, vec![vec![2.0], vec![1.0]]);
        assert!(parse_embeddings(&json!({"data":[{"index":0,"embedding":[2.0]}]}), 2).is_err());
    }
}
