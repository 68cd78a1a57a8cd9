//! The `Task` abstraction and reply parsing shared by all tasks.

use serde_json::{json, Map, Value};

use super::Message;
use crate::config::Role;

/// One typed use of a model.
pub trait Task: Send + Sync {
    type Output: Send;
    /// Stable name for the ledger, the cache and logs (`daily_plan`, `evaluate_timing`, ...).
    fn name(&self) -> &'static str;
    fn role(&self) -> Role;
    fn messages(&self) -> Vec<Message>;
    /// The JSON schema of a valid answer. Providers that can constrain decoding to it (the local
    /// engine with llguidance, `response_format` for OpenAI-compatible servers, `responseSchema`
    /// for Gemini) make even a small model answer in shape on the first try; `parse` still checks
    /// what a schema cannot say and still accepts unconstrained replies. Every string is bounded
    /// (`maxLength`), every array too (`maxItems`), so a constrained answer always ends.
    fn schema(&self) -> Value;
    /// Parse and validate a reply; an `Err` explains what was wrong and triggers a retry.
    fn parse(&self, reply: &str) -> Result<Self::Output, String>;
    /// What to use when every attempt failed. Its use is counted in the ledger.
    fn fallback(&self) -> Self::Output;
    /// Distinguishes independent samples of the same prompt (ranking candidates): it is mixed
    /// into the sampling seed and the cache key, so two candidates are two draws, not one.
    fn sample_index(&self) -> u32 {
        0
    }
}

/// A bounded string: `{"type": "string", "minLength": 1, "maxLength": max}`.
pub fn text_schema(max: usize) -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": max})
}

/// An object whose properties are all required, in this order, and nothing else. Constrained
/// decoders emit properties in schema order, so the order is the one the prompt asks for.
pub fn object_schema(props: &[(&str, Value)]) -> Value {
    let mut properties = Map::new();
    for (k, v) in props {
        properties.insert(k.to_string(), v.clone());
    }
    let required: Vec<&str> = props.iter().map(|(k, _)| *k).collect();
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

/// Most tokens an answer of `schema` can take when it is emitted compactly: every character of a
/// string may be a token of its own. Used as the token limit of constrained requests so that a
/// role's `max_tokens` (the original's 128 for the assistant) never cuts a valid answer short; the
/// grammar ends the answer long before this on real replies. Capped at 4096.
pub fn token_bound(schema: &Value) -> usize {
    fn bound(s: &Value) -> usize {
        let get = |k: &str| s.get(k).and_then(Value::as_u64).map(|n| n as usize);
        if let Some(alternatives) = s.get("anyOf").and_then(Value::as_array) {
            return alternatives.iter().map(bound).max().unwrap_or(64);
        }
        if let Some(c) = s.get("const") {
            return c.to_string().chars().count() + 1;
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            return e.iter().map(|v| v.to_string().chars().count()).max().unwrap_or(1) + 1;
        }
        match s.get("type").and_then(Value::as_str) {
            Some("string") => get("maxLength").unwrap_or(256) + 2,
            Some("integer") | Some("number") => 12,
            Some("boolean") => 5,
            Some("array") => {
                let item = s.get("items").map(bound).unwrap_or(16);
                get("maxItems").unwrap_or(16) * (item + 1) + 2
            }
            Some("object") => {
                let props = s.get("properties").and_then(Value::as_object);
                props.map(|p| p.iter().map(|(k, v)| k.chars().count() + 4 + bound(v)).sum()).unwrap_or(16) + 2
            }
            _ => 64,
        }
    }
    bound(schema).clamp(16, 4096)
}

/// Find the first JSON object in a model reply: accepts code fences and prose around it.
pub fn extract_json(reply: &str) -> Option<serde_json::Value> {
    let bytes = reply.as_bytes();
    let mut start = 0;
    while let Some(off) = reply[start..].find('{') {
        let s = start + off;
        // Scan to the matching brace, respecting strings.
        let (mut depth, mut in_str, mut esc) = (0i32, false, false);
        for (i, &b) in bytes.iter().enumerate().skip(s) {
            if in_str {
                match b {
                    _ if esc => esc = false,
                    b'\\' => esc = true,
                    b'"' => in_str = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_str = true,
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&reply[s..=i]) {
                            return Some(v);
                        }
                        break;
                    }
                }
                _ => {}
            }
        }
        start = s + 1;
    }
    None
}

/// Get a string field of a JSON reply, case-insensitively, accepting numbers too.
pub fn json_str(v: &serde_json::Value, key: &str) -> Option<String> {
    let obj = v.as_object()?;
    let val = obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v)?;
    match val {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bound_covers_bounded_answers() {
        let s = object_schema(&[("Score", json!({"type": "integer", "enum": [0, 1]})), ("Reason", text_schema(100))]);
        assert_eq!(s["required"], json!(["Score", "Reason"]));
        let b = token_bound(&s);
        assert!((110..=140).contains(&b), "{b}");
        let list = json!({"type": "array", "items": text_schema(10), "maxItems": 3});
        assert_eq!(token_bound(&list), 3 * 13 + 2);
        // One of several shapes: the longest.
        let either = json!({"anyOf": [{"type": "string", "const": "abc"}, text_schema(10)]});
        assert_eq!(bound_of(&either), 12);
        let either = json!({"anyOf": [{"type": "string", "const": "No Recommendation"}, text_schema(10)]});
        assert_eq!(bound_of(&either), 20);
    }

    /// The bound of `s` itself, read through an array of two (so the floor of 16 stays out of it).
    fn bound_of(s: &Value) -> usize {
        let wrapped = json!({"type": "array", "items": s, "maxItems": 2});
        (token_bound(&wrapped) - 4) / 2
    }

    #[test]
    fn extracts_from_fences_and_prose() {
        let r = "Sure! Here you go:\n```json\n{\"Suggestion\": \"Drink {water}\"}\n```\nHope it helps.";
        assert_eq!(json_str(&extract_json(r).unwrap(), "suggestion").unwrap(), "Drink {water}");
        assert!(extract_json("no json here {oops").is_none());
        let r = "{bad} then {\"Score\": 1}";
        assert_eq!(json_str(&extract_json(r).unwrap(), "Score").unwrap(), "1");
    }
}
