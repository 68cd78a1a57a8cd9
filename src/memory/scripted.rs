//! TEST/BENCHMARK BRAIN — not a model.
//!
//! The scripted brain's summaries (`--provider scripted`, see [`crate::llm::scripted`]): a
//! count of the interactions and of the recommendations among them, and the first line of the
//! first one, so the memory's structure is there to test without a model's prose.

use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::summarize::Summarize;
use crate::llm::scripted::ScriptedReply;
use crate::suggestion::NO_REC;

impl ScriptedReply for Summarize<'_> {
    fn scripted(&self, _rng: &mut ChaCha8Rng) -> String {
        let recs = self.entries.iter().filter(|e| e.contains("Suggestion") && !e.contains(NO_REC)).count();
        let first = self.entries.first().map(|e| e.lines().next().unwrap_or("").to_string()).unwrap_or_default();
        json!({ "Summary": format!("{} interactions, {} with a recommendation. It began with: {}", self.entries.len(), recs, first) }).to_string()
    }
}
