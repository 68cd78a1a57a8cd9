//! The movement file, `movement/<n>.json`, with the original keys in the original order, plus
//! `path` (the tiles walked this step) so a page can animate the walk. Files the original wrote
//! read too: what it did not write (the ProPerSim fields of a Generative Agents run, `path`)
//! reads as empty.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::world::Pos;

/// `{"persona": {user, assistant}, "meta": {curr_time, is_john_walking, number_of_action_tokens}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Movement {
    /// Persona name → its entry, in file order (the user first).
    pub persona: IndexMap<String, PersonaEntry>,
    pub meta: MovementMeta,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MovementMeta {
    pub curr_time: String,
    /// `"yes"` or `"no"`. The original's name whatever the user is called: readers key on it.
    #[serde(default)]
    pub is_john_walking: String,
    #[serde(default)]
    pub number_of_action_tokens: usize,
}

/// One persona's step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PersonaEntry {
    /// The tile it stands on after the step.
    pub movement: [i64; 2],
    pub pronunciatio: Option<String>,
    pub description: String,
    pub chat: Option<Vec<(String, String)>>,
    #[serde(default)]
    pub user_action_for_suggestion: Option<String>,
    #[serde(default)]
    pub suggestion: String,
    #[serde(default)]
    pub eval_res_score: Option<String>,
    #[serde(default)]
    pub eval_res_reason: Option<String>,
    #[serde(default)]
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

impl Movement {
    /// A step of the user and the assistant.
    pub fn new(
        user: &str,
        u: PersonaEntry,
        assistant: &str,
        a: PersonaEntry,
        curr_time: &str,
        walking: bool,
        tokens: usize,
    ) -> Movement {
        Movement {
            persona: IndexMap::from([(user.to_string(), u), (assistant.to_string(), a)]),
            meta: MovementMeta {
                curr_time: curr_time.to_string(),
                is_john_walking: if walking { "yes" } else { "no" }.to_string(),
                number_of_action_tokens: tokens,
            },
        }
    }
}
