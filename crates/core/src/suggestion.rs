//! A suggestion or the explicit choice to stay quiet.

use serde::{Deserialize, Serialize};

pub const NO_REC: &str = "No Recommendation";

/// "No Recommendation" is a first-class value, not a magic substring.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Suggestion {
    NoRec,
    Text(String),
}

impl Suggestion {
    /// Exact detection: the whole text (trimmed, outer quotes and a final period removed) equals
    /// "No Recommendation", ignoring case. "I recommend you rest now" stays a suggestion (the
    /// original's substring rule turned it into an abstention).
    pub fn from_text(s: &str) -> Suggestion {
        let t = s.trim().trim_matches(|c| c == '"' || c == '\'').trim().trim_end_matches('.').trim();
        if t.eq_ignore_ascii_case(NO_REC) || t.is_empty() {
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
    fn exact_norec_detection() {
        assert!(Suggestion::from_text("No Recommendation").is_norec());
        assert!(Suggestion::from_text(" \"no recommendation.\" ").is_norec());
        assert!(!Suggestion::from_text("I recommend you rest now").is_norec());
        assert!(!Suggestion::from_text("No recommendation is needed, but drink water").is_norec());
        assert_eq!(Suggestion::NoRec.to_json_answer(None), r#"{"Suggestion": "No Recommendation"}"#);
        assert_eq!(json_answer("Say \"hi\"", Some(("why", true))), r#"{"Reason": "why", "Suggestion": "Say \"hi\""}"#);
        assert_eq!(json_answer("a", Some(("b", false))), r#"{"Suggestion": "a", "Reason": "b"}"#);
    }
}
