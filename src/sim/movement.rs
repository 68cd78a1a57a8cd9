//! The movement file, `movement/<n>.json`, with the original keys in the original order, plus
//! `path` (the tiles walked this step) so a page can animate the walk.

use serde::Serialize;
use serde_json::{json, Value};

use crate::world::Pos;

#[derive(Debug, Clone, Serialize)]
pub struct PersonaEntry {
    pub movement: [i64; 2],
    pub pronunciatio: Option<String>,
    pub description: String,
    pub chat: Option<Vec<(String, String)>>,
    pub user_action_for_suggestion: Option<String>,
    pub suggestion: String,
    pub eval_res_score: Option<String>,
    pub eval_res_reason: Option<String>,
    pub path: Vec<[i64; 2]>,
}

impl PersonaEntry {
    /// The user's entry: no assistant fields (the original wrote stale ones here).
    pub fn user(at: [i64; 2], emoji: String, description: String, walked: &[Pos]) -> PersonaEntry {
        PersonaEntry {
            movement: at,
            pronunciatio: Some(emoji),
            description,
            chat: None,
            user_action_for_suggestion: None,
            suggestion: String::new(),
            eval_res_score: None,
            eval_res_reason: None,
            path: walked.iter().map(|t| [t.0 as i64, t.1 as i64]).collect(),
        }
    }

    /// The assistant while the user sleeps: nothing suggested, nothing judged.
    pub fn idle(at: [i64; 2], user: &str) -> PersonaEntry {
        PersonaEntry {
            movement: at,
            pronunciatio: Some("💤".into()),
            description: format!("sleeping @ <persona> {user}"),
            chat: None,
            user_action_for_suggestion: None,
            suggestion: String::new(),
            eval_res_score: None,
            eval_res_reason: None,
            path: vec![at],
        }
    }

    pub fn suggesting(
        at: [i64; 2],
        user: &str,
        action: String,
        suggestion: String,
        score: String,
        reason: String,
    ) -> PersonaEntry {
        PersonaEntry {
            movement: at,
            pronunciatio: Some("💬".into()),
            description: format!("suggestion @ <persona> {user}"),
            chat: None,
            user_action_for_suggestion: Some(action),
            suggestion,
            eval_res_score: Some(score),
            eval_res_reason: Some(reason),
            path: vec![at],
        }
    }
}

/// `{"persona": {user, assistant}, "meta": {curr_time, is_john_walking, number_of_action_tokens}}`.
/// `is_john_walking` keeps its original name whatever the user is called: readers key on it.
pub fn movement_json(
    user: &str,
    u: PersonaEntry,
    assistant: &str,
    a: PersonaEntry,
    curr_time: &str,
    walking: bool,
    tokens: usize,
) -> Value {
    let mut persona = serde_json::Map::new();
    persona.insert(user.to_string(), serde_json::to_value(u).expect("plain data"));
    persona.insert(assistant.to_string(), serde_json::to_value(a).expect("plain data"));
    json!({
        "persona": persona,
        "meta": {"curr_time": curr_time, "is_john_walking": if walking { "yes" } else { "no" }, "number_of_action_tokens": tokens}
    })
}
