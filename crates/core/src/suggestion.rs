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
    /// which is what preference data stores and training learns.
    pub fn to_json_answer(&self, reason: Option<(&str, bool)>) -> String {
        let mut m = serde_json::Map::new();
        match reason {
            Some((r, true)) => {
                m.insert("Reason".into(), r.into());
                m.insert("Suggestion".into(), self.text().into());
            }
            Some((r, false)) => {
                m.insert("Suggestion".into(), self.text().into());
                m.insert("Reason".into(), r.into());
            }
            None => {
                m.insert("Suggestion".into(), self.text().into());
            }
        }
        serde_json::Value::Object(m).to_string()
    }
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
        assert_eq!(Suggestion::NoRec.to_json_answer(None), r#"{"Suggestion":"No Recommendation"}"#);
    }
}
