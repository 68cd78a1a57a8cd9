//! The `Task` abstraction and reply parsing shared by all tasks.

use rand_chacha::ChaCha8Rng;

use super::Message;
use crate::config::Role;

/// One typed use of a model.
pub trait Task: Send + Sync {
    type Output: Send;
    /// Stable name for the ledger, the cache and logs (`daily_plan`, `evaluate_timing`, ...).
    fn name(&self) -> &'static str;
    fn role(&self) -> Role;
    fn messages(&self) -> Vec<Message>;
    /// Parse and validate a reply; an `Err` explains what was wrong and triggers a retry.
    fn parse(&self, reply: &str) -> Result<Self::Output, String>;
    /// What to use when every attempt failed. Its use is counted in the ledger.
    fn fallback(&self) -> Self::Output;
    /// The offline scripted brain's reply text for this task (a test/benchmark provider, never a
    /// model). It goes through `parse` like any reply.
    fn scripted(&self, rng: &mut ChaCha8Rng) -> String;
    /// Distinguishes independent samples of the same prompt (ranking candidates): it is mixed
    /// into the sampling seed and the cache key, so two candidates are two draws, not one.
    fn sample_index(&self) -> u32 {
        0
    }
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
    fn extracts_from_fences_and_prose() {
        let r = "Sure! Here you go:\n```json\n{\"Suggestion\": \"Drink {water}\"}\n```\nHope it helps.";
        assert_eq!(json_str(&extract_json(r).unwrap(), "suggestion").unwrap(), "Drink {water}");
        assert!(extract_json("no json here {oops").is_none());
        let r = "{bad} then {\"Score\": 1}";
        assert_eq!(json_str(&extract_json(r).unwrap(), "Score").unwrap(), "1");
    }
}
