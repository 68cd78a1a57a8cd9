//! Validation of everything a request names on disk: sim codes, steps and persona names. The
//! original interpolated them raw into paths (protocol.md §8.9); here nothing can leave `storage/`.

use serde_json::Value;

use super::error::WebError;
use crate::storage::sim::check_sim_code;

const MAX_NAME: usize = 128;

/// A sim code, by the rule the CLI and the report use ([`check_sim_code`]: 1–128 ASCII letters,
/// digits, `_`, `-` and `.`, not starting with `.`); a 400 with its message otherwise.
pub fn sim_code(s: &str) -> Result<&str, WebError> {
    check_sim_code(s).map_err(WebError::bad_request)?;
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
/// `text/plain`; the endpoints that change state require `application/json`, see `guard`).
pub fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, WebError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(WebError::bad_request("request body must be a JSON object")),
        Err(e) => Err(WebError::bad_request(format!("request body is not valid JSON: {e}"))),
    }
}

/// An environment posted for a sim: exactly one tile `{"maze", "x", "y"}` per persona of
/// `meta.persona_names`, on the sim's maze and inside the map (`map_size` = width, height in
/// tiles, when known). Integers only; the reason of a refusal names the persona and the field.
pub fn environment(
    env: &serde_json::Map<String, Value>,
    meta: &serde_json::Map<String, Value>,
    map_size: Option<(i64, i64)>,
) -> Result<(), WebError> {
    let personas: Vec<&str> = meta
        .get("persona_names")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let maze = meta.get("maze_name").and_then(Value::as_str);
    for name in env.keys() {
        if !personas.contains(&name.as_str()) {
            return Err(WebError::bad_request(format!(
                "\"environment\" names {name:?}, who is not a persona of this sim ({})",
                personas.join(", ")
            )));
        }
    }
    for name in &personas {
        let tile =
            env.get(*name).ok_or_else(|| WebError::bad_request(format!("\"environment\" has no tile for {name:?}")))?;
        let field = |key: &str| {
            tile.get(key).ok_or_else(|| WebError::bad_request(format!("the tile of {name:?} has no {key:?}")))
        };
        let Value::Object(_) = tile else {
            return Err(WebError::bad_request(format!(
                "the tile of {name:?} must be an object {{\"maze\", \"x\", \"y\"}}, got {tile}"
            )));
        };
        let tile_maze = field("maze")?
            .as_str()
            .ok_or_else(|| WebError::bad_request(format!("the \"maze\" of {name:?} must be a string")))?;
        if maze.is_some_and(|m| m != tile_maze) {
            return Err(WebError::bad_request(format!(
                "the tile of {name:?} is on maze {tile_maze:?}, not this sim's {:?}",
                maze.unwrap_or_default()
            )));
        }
        for (key, limit) in [("x", map_size.map(|m| m.0)), ("y", map_size.map(|m| m.1))] {
            let v = field(key)?;
            let n = v.as_i64().ok_or_else(|| {
                WebError::bad_request(format!("the {key:?} of {name:?} must be an integer tile coordinate, got {v}"))
            })?;
            if n < 0 || limit.is_some_and(|l| n >= l) {
                return Err(WebError::bad_request(format!(
                    "the {key:?} of {name:?} is {n}, off the map{}",
                    limit.map(|l| format!(" (0 to {})", l - 1)).unwrap_or_default()
                )));
            }
        }
    }
    Ok(())
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
        assert!(sim_code("a.b_c-1").is_ok());
        assert_eq!(sim_code(".x").unwrap_err().status, axum::http::StatusCode::BAD_REQUEST);
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

    #[test]
    fn environments_are_checked_against_the_sim() {
        let meta = json!({"maze_name": "the_ville", "persona_names": ["John Lin", "Eddy Lin"]});
        let meta = meta.as_object().unwrap();
        let check = |env: Value| {
            environment(env.as_object().unwrap(), meta, Some((14, 22))).map_err(|e| (e.status.as_u16(), e.message))
        };
        let tile = |x: i64, y: i64| json!({"maze": "the_ville", "x": x, "y": y});
        assert!(check(json!({"John Lin": tile(5, 10), "Eddy Lin": tile(13, 21)})).is_ok());
        for (bad, why) in [
            (json!({"John Lin": "x", "Eddy Lin": tile(1, 1)}), "must be an object"),
            (json!({"John Lin": tile(1, 1)}), "no tile for \"Eddy Lin\""),
            (json!({"John Lin": tile(1, 1), "Eddy Lin": tile(1, 1), "Mallory": tile(1, 1)}), "not a persona"),
            (json!({"John Lin": tile(-1, 1), "Eddy Lin": tile(1, 1)}), "off the map"),
            (json!({"John Lin": tile(1, 99_999_999_999i64), "Eddy Lin": tile(1, 1)}), "off the map (0 to 21)"),
            (json!({"John Lin": tile(14, 1), "Eddy Lin": tile(1, 1)}), "off the map (0 to 13)"),
            (json!({"John Lin": {"maze": "the_ville", "x": 1.5, "y": 1}, "Eddy Lin": tile(1, 1)}), "integer"),
            (json!({"John Lin": {"x": 1, "y": 1}, "Eddy Lin": tile(1, 1)}), "no \"maze\""),
            (json!({"John Lin": {"maze": "other", "x": 1, "y": 1}, "Eddy Lin": tile(1, 1)}), "not this sim's"),
        ] {
            let (status, msg) = check(bad.clone()).unwrap_err();
            assert_eq!(status, 400, "{bad}");
            assert!(msg.contains(why), "{bad}: {msg}");
        }
    }
}
