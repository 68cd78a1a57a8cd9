//! What a step leaves behind: preference pairs in TRL's conversational format (one JSONL file per
//! day, so TRL and our trainer read the same files) and the all-time interaction records.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

pub use crate::train::data::PreferencePair;
use crate::user::evaluator::DimScore;

/// What a step's pair records besides TRL's `prompt`/`chosen`/`rejected` (the trainer keeps these
/// as the pair's `extra`, so the file round-trips).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PairDetails {
    pub chosen_score: f64,
    pub rejected_score: f64,
    pub chosen_reason: String,
    pub rejected_reason: String,
    pub step: u64,
    pub curr_time: String,
}

impl PairDetails {
    /// The pair these details follow on its line.
    pub fn pair(
        self,
        prompt: Vec<crate::llm::Message>,
        chosen: Vec<crate::llm::Message>,
        rejected: Vec<crate::llm::Message>,
    ) -> PreferencePair {
        let extra = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => unreachable!("a struct of numbers and strings serializes to an object"),
        };
        PreferencePair { prompt, chosen, rejected, extra }
    }
}

/// One evaluated step (`records.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InteractionRecord {
    pub step: u64,
    pub curr_time: String,
    pub date: String,
    pub action: String,
    pub candidates: Vec<String>,
    pub scores: Vec<f64>,
    pub reasons: Vec<String>,
    /// Index of the candidate shown to the user and logged in the movement file.
    pub shown: usize,
    pub no_rec: Vec<bool>,
    /// Candidates forced to "No Recommendation" (not generated).
    pub forced: Vec<bool>,
    /// Per candidate: dimension → score and reason.
    pub dimensions: Vec<IndexMap<String, DimScore>>,
}

/// File of a day's pairs: `preferences/day_01.jsonl` for the first simulated day.
pub fn pairs_file(day_index: u64) -> String {
    format!("preferences/day_{:02}.jsonl", day_index + 1)
}
