//! A suggestion or the explicit choice to stay quiet.

use serde::{Deserialize, Serialize};

pub const NO_REC: &str = "No Recommendation";

/// An abstention says one of these...
const NEGATIONS: [&str; 3] = ["no", "none", "not"];
/// ...and may add only these (see [`Suggestion::from_text`]).
const ABSTENTION_WORDS: [&str; 6] =
    ["recommend", "recommended", "recommendation", "recommendations", "suggestion", "suggestions"];

/// "No Recommendation" is a first-class value, not a magic substring.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Suggestion {
    NoRec,
    Text(String),
}

impl Suggestion {
    /// An abstention is an answer made only of the abstention's words, one of them a "no":
    /// "No Recommendation" (any case, quotes and punctuation aside) and the near-misses a small
    /// model writes when it means it ("None Recommendation", "Not recommended", "...None", "NO").
    /// Any other word makes it a suggestion, so "I recommend you rest now", "No rush" and
    /// "Recommendation" stay suggestions (the original's substring rule turned the first into an
    /// abstention; its clean-up did catch the near-misses, which were scored here as odd
    /// suggestions until 2026-12-04: README, Experiments).
    pub fn from_text(s: &str) -> Suggestion {
        let lower = s.to_lowercase();
        let words: Vec<&str> = lower.split(|c: char| !c.is_alphabetic()).filter(|w| !w.is_empty()).collect();
        let says_no = words.iter().any(|w| NEGATIONS.contains(w));
        let only_abstention = words.iter().all(|w| NEGATIONS.contains(w) || ABSTENTION_WORDS.contains(w));
        let blank = s.trim().trim_matches(|c| c == '"' || c == '\'').trim().is_empty();
        if blank || (says_no && only_abstention) {
            Suggestion::NoRec
        } else {
            Suggestion::Text(s.trim().trim_matches('"').trim().to_string())
        }
    }
    pub fn is_norec(&self) -> bool {
        matches!(self, Suggestion::NoRec)
    }
    pub fn text(&self) -> &str {
        match self {
            Suggestion::NoRec => NO_REC,
            Suggestion::Text(t) => t,
        }
    }
    /// The assistant's answer as valid JSON (`{"Suggestion": "No Recommendation"}` included),
    /// which is what preference data stores and training learns. See [`json_answer`].
    pub fn to_json_answer(&self, reason: Option<(&str, bool)>) -> String {
        json_answer(self.text(), reason)
    }
}

/// An answer `{"Suggestion": "…"}`, with its reason after it (`Some((reason, false))`) or
/// before it (`Some((reason, true))`), spaced as a local model writes it under its schema (`": "`
/// and `", "`, also the original's spacing): a trained completion must be the token sequence
/// the model produces, and the compact form tokenizes differently (SmolLM2 puts the space and
/// the quote in one token).
pub fn json_answer(suggestion: &str, reason: Option<(&str, bool)>) -> String {
    let field = |k: &str, v: &str| format!("\"{k}\": {}", serde_json::Value::from(v));
    let fields = match reason {
        None => vec![field("Suggestion", suggestion)],
        Some((r, false)) => vec![field("Suggestion", suggestion), field("Reason", r)],
        Some((r, true)) => vec![field("Reason", r), field("Suggestion", suggestion)],
    };
    format!("{{{}}}", fields.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_abstention_is_made_of_its_words_only() {
        // Near-misses SmolLM2-135M wrote on its trained day 4 (run learnbal, 2026-12-04).
        for quiet in [
            "No Recommendation",
            " \"no recommendation.\" ",
            "None Recommendation",
            "Not Recommended",
            "...None Recommendation",
            "NO",
            "None",
            "No suggestion!",
            "",
        ] {
            assert!(Suggestion::from_text(quiet).is_norec(), "{quiet:?}");
        }
        for said in [
            "I recommend you rest now",
            "No recommendation is needed, but drink water",
            "No rush",
            "Yes Recommendation",
            "Recommendation",
            "Suggestion 3",
            "Take a walk",
            "...",
            "Não",
        ] {
            assert!(!Suggestion::from_text(said).is_norec(), "{said:?}");
        }
        assert_eq!(Suggestion::NoRec.to_json_answer(None), r#"{"Suggestion": "No Recommendation"}"#);
        assert_eq!(json_answer("Say \"hi\"", Some(("why", true))), r#"{"Reason": "why", "Suggestion": "Say \"hi\""}"#);
        assert_eq!(json_answer("a", Some(("b", false))), r#"{"Suggestion": "a", "Reason": "b"}"#);
    }
}
