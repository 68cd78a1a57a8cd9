//! Gemini provider: `POST {base}/v1beta/models/{model}:generateContent`, `:embedContent` and
//! `:batchEmbedContents`. The key goes in the `x-goog-api-key` header rather than `?key=`, so it
//! never appears in a URL (and so never in a log line that prints one).

use futures::future::BoxFuture;
use serde_json::{json, Map, Value};

use super::http::{join_url, AuthStyle, HttpCaller, HttpPolicy};
use super::openai::{floats, short};
use super::{ChatProvider, ChatReply, ChatRequest, ProviderError};
use crate::config::RoleConfig;

pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";
/// Key variable used with Google's endpoint when no `api_key_env` is configured.
pub const DEFAULT_KEY_ENV: &str = "GEMINI_API_KEY";

#[derive(Debug)]
pub struct GeminiProvider {
    http: HttpCaller,
}

impl GeminiProvider {
    pub fn new(rc: &RoleConfig) -> anyhow::Result<GeminiProvider> {
        Ok(GeminiProvider {
            http: HttpCaller::new(rc, AuthStyle::Header("x-goog-api-key"), DEFAULT_BASE_URL, DEFAULT_KEY_ENV)?,
        })
    }

    pub fn with_policy(mut self, policy: HttpPolicy) -> Self {
        self.http.set_policy(policy);
        self
    }

    fn url(&self, model: &str, method: &str) -> Result<String, ProviderError> {
        let m = model_id(model)?;
        Ok(join_url(self.http.base_url(), &format!("v1beta/models/{m}:{method}")))
    }
}

/// The bare model id (`gemini-2.0-flash`) from `gemini-2.0-flash` or `models/gemini-2.0-flash`.
/// It becomes part of a URL path, so only plain id characters are accepted.
pub fn model_id(model: &str) -> Result<&str, ProviderError> {
    let m = model.trim().trim_start_matches("models/");
    if m.is_empty() || !m.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
        return Err(ProviderError::BadRequest {
            status: 0,
            message: format!("{model:?} is not a Gemini model id (expected something like \"gemini-2.0-flash\")"),
        });
    }
    Ok(m)
}

/// System messages become `systemInstruction`; `assistant` turns are `model` turns.
pub fn generate_body(req: &ChatRequest) -> Value {
    let system: Vec<&str> = req.messages.iter().filter(|m| m.role == "system").map(|m| m.content.as_str()).collect();
    let contents: Vec<Value> = req
        .messages
        .iter()
        .filter(|m| m.role != "system")
        .map(|m| {
            let role = if m.role == "assistant" || m.role == "model" { "model" } else { "user" };
            json!({"role": role, "parts": [{"text": m.content}]})
        })
        .collect();
    let mut body = Map::new();
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": [{"text": system.join("\n\n")}]}));
    }
    body.insert("contents".into(), Value::Array(contents));
    let s = &req.sampling;
    let mut gc = Map::new();
    if let Some(t) = s.temperature {
        gc.insert("temperature".into(), json!(t));
    }
    if let Some(p) = s.top_p {
        gc.insert("topP".into(), json!(p));
    }
    if let Some(k) = s.top_k {
        gc.insert("topK".into(), json!(k));
    }
    if let Some(m) = s.max_tokens {
        gc.insert("maxOutputTokens".into(), json!(m));
    }
    if let Some(seed) = s.seed {
        gc.insert("seed".into(), json!(seed));
    }
    if let Some(a) = &req.schema {
        gc.insert("responseMimeType".into(), json!("application/json"));
        gc.insert("responseSchema".into(), gemini_schema(&a.schema));
    }
    if !gc.is_empty() {
        body.insert("generationConfig".into(), Value::Object(gc));
    }
    Value::Object(body)
}

/// A JSON schema in the OpenAPI subset Gemini's `responseSchema` reads: it has no
/// `additionalProperties`, `const` or `prefixItems`, and orders properties by `propertyOrdering`
/// (it would sort them alphabetically otherwise, and the order is part of what we ask for).
/// A string's `pattern` is left out too (not every Gemini version takes one); the task's own
/// parse still checks what it said.
pub fn gemini_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                match k.as_str() {
                    "additionalProperties" | "prefixItems" | "$schema" | "pattern" => {}
                    "const" => {
                        out.insert("enum".into(), json!([v]));
                    }
                    "properties" => {
                        let props = v.as_object().cloned().unwrap_or_default();
                        out.insert("propertyOrdering".into(), json!(props.keys().collect::<Vec<_>>()));
                        let conv: Map<String, Value> =
                            props.iter().map(|(k, v)| (k.clone(), gemini_schema(v))).collect();
                        out.insert("properties".into(), Value::Object(conv));
                    }
                    _ => {
                        out.insert(k.clone(), gemini_schema(v));
                    }
                }
            }
            // Integer enums are not allowed; a range says the same.
            if let Some(Value::Array(e)) = out.get("enum") {
                if e.iter().all(Value::is_number) {
                    let nums: Vec<f64> = e.iter().filter_map(Value::as_f64).collect();
                    let (lo, hi) = nums.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
                    out.remove("enum");
                    out.insert("minimum".into(), json!(lo));
                    out.insert("maximum".into(), json!(hi));
                }
            }
            if m.contains_key("prefixItems") && !out.contains_key("items") {
                if let Some(first) = m.get("prefixItems").and_then(|p| p.get(0)) {
                    out.insert("items".into(), gemini_schema(first));
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(gemini_schema).collect()),
        other => other.clone(),
    }
}

/// Text of the first candidate and `usageMetadata`. A blocked prompt has no candidates; that is
/// a bad reply (the task may retry or fall back), not a transport failure.
pub fn parse_generate(v: &Value) -> Result<ChatReply, ProviderError> {
    let Some(cand) = v.pointer("/candidates/0") else {
        let why = v
            .pointer("/promptFeedback/blockReason")
            .and_then(Value::as_str)
            .map(|r| format!("the prompt was blocked ({r})"));
        return Err(ProviderError::Malformed(
            why.unwrap_or_else(|| format!("no `candidates` in the reply: {}", short(v))),
        ));
    };
    let parts = cand.pointer("/content/parts").and_then(Value::as_array);
    let text: String = parts
        .map(|ps| {
            ps.iter()
                .filter(|p| p.get("thought").and_then(Value::as_bool) != Some(true))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    if parts.is_none() {
        let reason = cand.get("finishReason").and_then(Value::as_str).unwrap_or("unknown");
        return Err(ProviderError::Malformed(format!("the candidate has no text (finishReason: {reason})")));
    }
    let tok = |k: &str| v.pointer(&format!("/usageMetadata/{k}")).and_then(Value::as_u64).unwrap_or(0);
    Ok(ChatReply {
        text,
        prompt_tokens: tok("promptTokenCount"),
        completion_tokens: tok("candidatesTokenCount"),
        retries: 0,
        cached_prompt_tokens: tok("cachedContentTokenCount"),
    })
}

impl ChatProvider for GeminiProvider {
    fn chat<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<ChatReply, ProviderError>> {
        Box::pin(async move {
            let url = self.url(&req.model, "generateContent")?;
            let (mut reply, retries) = self.http.post_json(&url, &generate_body(req), parse_generate).await?;
            reply.retries = retries;
            Ok(reply)
        })
    }

    /// One text uses `:embedContent`; several use `:batchEmbedContents` (one round trip).
    fn embed<'a>(&'a self, model: &'a str, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, ProviderError>> {
        Box::pin(async move {
            let id = model_id(model)?;
            let content = |t: &String| json!({"parts": [{"text": t}]});
            match texts {
                [] => Ok(Vec::new()),
                [one] => {
                    let url = self.url(model, "embedContent")?;
                    let body = json!({"model": format!("models/{id}"), "content": content(one)});
                    let extract = |v: &Value| {
                        floats(v.pointer("/embedding/values")).map(|e| vec![e]).ok_or_else(|| {
                            ProviderError::Malformed(format!("no `embedding.values` in the reply: {}", short(v)))
                        })
                    };
                    Ok(self.http.post_json(&url, &body, extract).await?.0)
                }
                many => {
                    let url = self.url(model, "batchEmbedContents")?;
                    let requests: Vec<Value> =
                        many.iter().map(|t| json!({"model": format!("models/{id}"), "content": content(t)})).collect();
                    let extract = |v: &Value| -> Result<Vec<Vec<f32>>, ProviderError> {
                        let list = v.get("embeddings").and_then(Value::as_array).ok_or_else(|| {
                            ProviderError::Malformed(format!("no `embeddings` in the reply: {}", short(v)))
                        })?;
                        if list.len() != many.len() {
                            return Err(ProviderError::Malformed(format!(
                                "asked for {} embeddings, got {}",
                                many.len(),
                                list.len()
                            )));
                        }
                        list.iter()
                            .enumerate()
                            .map(|(i, e)| {
                                floats(e.get("values"))
                                    .ok_or_else(|| ProviderError::Malformed(format!("embedding {i} has no `values`")))
                            })
                            .collect()
                    };
                    Ok(self.http.post_json(&url, &json!({"requests": requests}), extract).await?.0)
                }
            }
        })
    }

    fn name(&self) -> &str {
        "gemini"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, Sampling};

    #[test]
    fn schemas_become_gemini_response_schemas() {
        let schema = json!({"type": "object", "additionalProperties": false, "required": ["b", "a"],
            "properties": {"b": {"type": "integer", "enum": [0, 1]}, "a": {"type": "string", "const": "x", "pattern": "^x$"}}});
        let req = ChatRequest {
            model: "gemini-2.0-flash".into(),
            messages: vec![Message::user("hi")],
            sampling: Sampling::default(),
            schema: Some(crate::AnswerSchema { name: "t".into(), schema }),
        };
        let gc = &generate_body(&req)["generationConfig"];
        assert_eq!(gc["responseMimeType"], "application/json");
        let s = &gc["responseSchema"];
        assert_eq!(s["propertyOrdering"], json!(["b", "a"]));
        assert!(s.get("additionalProperties").is_none());
        assert_eq!(
            (s["properties"]["b"]["minimum"].as_f64(), s["properties"]["b"]["maximum"].as_f64()),
            (Some(0.0), Some(1.0))
        );
        assert_eq!(s["properties"]["a"]["enum"], json!(["x"]));
        assert!(s["properties"]["a"].get("pattern").is_none());
    }

    #[test]
    fn body_maps_roles_and_config() {
        let req = ChatRequest {
            model: "gemini-2.0-flash".into(),
            messages: vec![
                Message::system("be brief"),
                Message::user("hi"),
                Message::assistant("hello"),
                Message::user("again"),
            ],
            sampling: Sampling { temperature: Some(0.2), top_k: Some(5), max_tokens: Some(64), ..Sampling::default() },
            schema: None,
        };
        let b = generate_body(&req);
        assert_eq!(b["systemInstruction"]["parts"][0]["text"], "be brief");
        assert!(b["generationConfig"].get("responseSchema").is_none());
        assert_eq!(b["contents"].as_array().unwrap().len(), 3);
        assert_eq!(b["contents"][1]["role"], "model");
        assert_eq!(b["generationConfig"]["topK"], 5);
        assert_eq!(b["generationConfig"]["maxOutputTokens"], 64);
        assert!(b["generationConfig"].get("topP").is_none());
    }

    #[test]
    fn model_ids_are_checked() {
        assert_eq!(model_id("models/gemini-1.5-pro").unwrap(), "gemini-1.5-pro");
        assert!(model_id("../../x?key=1").is_err());
        assert!(model_id("").is_err());
    }

    #[test]
    fn blocked_prompt_is_a_bad_reply() {
        let e = parse_generate(&json!({"promptFeedback":{"blockReason":"SAFETY"}})).unwrap_err().to_string();
        assert!(e.contains("SAFETY"), "{e}");
        let r = parse_generate(&json!({"candidates":[{"content":{"parts":[{"text":"a"},{"text":"b"}],"role":"model"}}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":2}})).unwrap();
        assert_eq!((r.text.as_str(), r.prompt_tokens, r.completion_tokens), ("ab", 4, 2));
    }
}
