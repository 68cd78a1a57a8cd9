//! TEST/BENCHMARK BRAIN — not a model.
//!
//! The scripted brain's summaries (`--provider scripted`, see [`crate::llm::scripted`]): a
//! count of the interactions and of the recommendations among them, and the first line of the
//! first one, so the memory's structure is there to test without a model's prose.

use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::summarize::Summarize;
use crate::llm::scripted::ScriptedReply;
use crate::suggestion::Suggestion;

impl ScriptedReply for Summarize<'_> {
    fn scripted(&self, _rng: &mut ChaCha8Rng) -> String {
        let recs: usize = self.entries.iter().map(|e| recommendations(e)).sum();
        let first = self.entries.first().map(|e| e.lines().next().unwrap_or("").to_string()).unwrap_or_default();
        json!({ "Summary": format!("{} interactions, {} with a recommendation. It began with: {}", self.entries.len(), recs, first) }).to_string()
    }
}

/// The recommendations an entry tells of: an interaction's suggestion line ("Assistant's
/// suggestion: ...") unless it is "No Recommendation", or a summarized block's "Number of
/// recommendations: N".
fn recommendations(entry: &str) -> usize {
    entry
        .lines()
        .map(|line| {
            if let Some(n) = line.strip_prefix("Number of recommendations:") {
                return n.trim().parse().unwrap_or(0);
            }
            // ASCII lowercasing keeps every byte where it was, so the index fits `line` too.
            match line.to_ascii_lowercase().find("suggestion:") {
                Some(i) => usize::from(!Suggestion::from_text(&line[i + "suggestion:".len()..]).is_norec()),
                None => 0,
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recommendations_are_counted_in_interactions_and_in_blocks() {
        assert_eq!(recommendations("John Lin's action: reading\nAssistant's suggestion: Take a break"), 1);
        assert_eq!(recommendations("John Lin's action: reading\nAssistant's suggestion: No Recommendation"), 0);
        assert_eq!(recommendations("John Lin's action: reading"), 0);
        assert_eq!(recommendations("TIME: 7 - 8\nNumber of recommendations: 5\nSUMMARY: 12 interactions"), 5);
        let entries = [
            "a\nAssistant's suggestion: Stretch".to_string(),
            "b\nAssistant's suggestion: No Recommendation".to_string(),
        ];
        let reply = Summarize {
            viewpoint: "the assistant",
            user_name: "John Lin",
            span: "hour",
            entries: &entries,
            with_scores: false,
        }
        .scripted(&mut rand::SeedableRng::seed_from_u64(0));
        assert!(reply.contains("2 interactions, 1 with a recommendation"), "{reply}");
    }
}
