//! Validation of everything a request names on disk: sim codes, steps and persona names. The
//! original interpolated them raw into paths (protocol.md §8.9); here nothing can leave `storage/`.

use serde_json::Value;

use super::error::WebError;

const MAX_NAME: usize = 128;

/// A sim code: 1–128 of `[A-Za-z0-9_-]` (the original's `[\w-]`, restricted to ASCII).
pub fn sim_code(s: &str) -> Result<&str, WebError> {
    if s.is_empty() || s.len() > MAX_NAME || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(WebError::bad_request(format!(
            "invalid sim code {s:?}: use 1-{MAX_NAME} letters, digits, '_' or '-'"
        )));
    }
    Ok(s)
}

/// A step in a URL: decimal digits only (no sign, no `_`), fitting in u64.
pub fn url_step(s: &str) -> Result<u64, WebError> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WebError::bad_request(format!("invalid step {s:?}: expected a non-negative integer")));
    }
    s.parse().map_err(|_| WebError::bad_request(format!("invalid step {s:?}")))
}

/// A step in a JSON body: a non-negative integer, or a string of digits (the original echoes the
/// value with its JSON type, so `"2"` must keep working).
pub fn json_step(v: Option<&Value>) -> Result<u64, WebError> {
    match v {
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| WebError::bad_request(format!("invalid step {n}: expected a non-negative integer"))),
        Some(Value::String(s)) => url_step(s),
        Some(other) => Err(WebError::bad_request(format!("invalid step {other}: expected a non-negative integer"))),
        None => Err(WebError::bad_request("missing \"step\"")),
    }
}

/// A persona's full name: letters, digits, spaces, `_` and `-`; not starting with a space.
pub fn persona_name(s: &str) -> Result<&str, WebError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME
        && !s.starts_with(' ')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ' || b == b'_' || b == b'-');
    if !ok {
        return Err(WebError::bad_request(format!(
            "invalid persona name {s:?}: use letters, digits, spaces, '_' or '-'"
        )));
    }
    Ok(s)
}

/// Whether a folder name read from disk is one we can show and link to.
pub fn is_listable_name(s: &str) -> bool {
    persona_name(s).is_ok()
}

/// Parse a request body as a JSON object, whatever its content type (the original page sends
/// `text/plain`).
pub fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, WebError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(WebError::bad_request("request body must be a JSON object")),
        Err(e) => Err(WebError::bad_request(format!("request body is not valid JSON: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rejects_traversal_and_odd_steps() {
        assert!(sim_code("../x").is_err());
        assert!(sim_code("a/b").is_err());
        assert!(sim_code("").is_err());
        assert!(sim_code("ok_sim-1").is_ok());
        assert!(url_step("1_0").is_err());
        assert!(url_step("-1").is_err());
        assert!(url_step("99999999999999999999").is_err());
        assert_eq!(url_step("12").unwrap(), 12);
        assert_eq!(json_step(Some(&json!("3"))).unwrap(), 3);
        assert!(json_step(Some(&json!(-3))).is_err());
        assert!(json_step(Some(&json!(1.5))).is_err());
        assert!(json_step(Some(&json!("../../evil"))).is_err());
        assert!(persona_name("John Lin").is_ok());
        assert!(persona_name("..").is_err());
        assert!(persona_name("a/b").is_err());
    }
}
