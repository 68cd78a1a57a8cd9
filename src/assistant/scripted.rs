//! TEST/BENCHMARK BRAIN — not a model.
//!
//! The scripted brain's suggestions (`--provider scripted`, see [`crate::llm::scripted`]):
//! "No Recommendation" 45% of the time, otherwise one of ten canned ideas around the user's
//! action. Each candidate skips its index's worth of draws first, so the candidates of one
//! prompt differ.

use rand::seq::SliceRandom;
use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::suggest::Suggest;
use crate::config::ReasonMode;
use crate::llm::scripted::ScriptedReply;
use crate::suggestion::NO_REC;

impl ScriptedReply for Suggest<'_> {
    fn scripted(&self, rng: &mut ChaCha8Rng) -> String {
        for _ in 0..self.sample {
            rng.next_u64();
        }
        const IDEAS: &[&str] = &[
            "Take a two-minute stretch before you carry on with {a}.",
            "Put on a playlist you love while {a}.",
            "Drink a glass of water; you have been {a} for a while.",
            "Jot down one idea that came up while {a}.",
            "Open a window for some fresh air while {a}.",
            "Try a new seasonal decoration idea after {a}.",
            "Plan a themed dinner for friends once you finish {a}.",
            "Sketch a quick design idea when you pause {a}.",
            "Call a friend for a short chat after {a}.",
            "Set a timer so {a} doesn't eat the whole afternoon.",
        ];
        let s = if rng.gen_bool(0.45) {
            NO_REC.to_string()
        } else {
            IDEAS.choose(rng).expect("non-empty").replace("{a}", self.action)
        };
        match self.mode {
            ReasonMode::None => json!({ "Suggestion": s }).to_string(),
            ReasonMode::After => format!("{{\"Suggestion\": {}, \"Reason\": \"It suits the moment.\"}}", json!(s)),
            ReasonMode::Before => format!("{{\"Reason\": \"It suits the moment.\", \"Suggestion\": {}}}", json!(s)),
        }
    }
}
