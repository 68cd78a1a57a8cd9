//! The assistant's suggestion task.

use crate::config::{ReasonMode, Role};
use crate::llm::task::json_str;
use crate::llm::{extract_json, object_schema, text_schema, Message, Task};
use crate::suggestion::{Suggestion, NO_REC};

/// Scripts a suggestion may not contain (CJK ideographs, Cyrillic): small models drift into
/// them, and the user reads English.
const FOREIGN: [(char, char); 2] = [('\u{4e00}', '\u{9fff}'), ('\u{0400}', '\u{04ff}')];

/// The `Suggestion` field: exactly the abstention, or up to 300 characters that do not begin like
/// it ("No Rec") and use no [`FOREIGN`] script (the parse's language rule). A small model that
/// once writes a misspelt abstention ("No Recommendion", scored as a suggestion) copies it from
/// its memory for the rest of the day; with SmolLM2-135M such misspellings were a third of day 1's
/// answers and two thirds of a trained day 2's (README, Experiments). Allowing the abstention only
/// whole leaves every other answer as it was (same seeds, same text).
fn suggestion_schema() -> serde_json::Value {
    let foreign: String = FOREIGN.map(|(a, b)| format!("{a}-{b}")).concat();
    let any = format!("[^{foreign}]");
    // Strings that stop inside "No Rec" or leave it at some character; "No Rec" has no regex
    // metacharacters.
    const PREFIX: &str = "No Rec";
    let mut alternatives = Vec::new();
    for (i, c) in PREFIX.char_indices() {
        let head = &PREFIX[..i];
        if i > 0 {
            alternatives.push(head.to_string());
        }
        alternatives.push(format!("{head}[^{c}{foreign}]{any}*"));
    }
    let mut text = text_schema(300);
    text["pattern"] = format!("^({})$", alternatives.join("|")).into();
    serde_json::json!({"anyOf": [{"type": "string", "const": NO_REC}, text]})
}

/// One candidate: the model's answer to the step's prompt.
pub struct Suggest<'a> {
    pub system: &'a str,
    pub user: &'a str,
    pub mode: ReasonMode,
    /// Candidate number (independent samples of the same prompt).
    pub sample: u32,
}

/// A parsed answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub suggestion: Suggestion,
    pub reason: Option<String>,
}

impl Task for Suggest<'_> {
    type Output = Answer;
    fn name(&self) -> &'static str {
        "suggest"
    }
    fn role(&self) -> Role {
        Role::Assistant
    }
    fn schema(&self) -> serde_json::Value {
        // The original's answers ran to 128 tokens; 300 characters hold a suggestion, and the
        // reason gets as much. The suggestion's pattern is the parse's language rule, so a
        // constrained decoder never writes what the parse would refuse.
        let (s, r) = (("Suggestion", suggestion_schema()), ("Reason", text_schema(300)));
        match self.mode {
            ReasonMode::None => object_schema(&[s]),
            ReasonMode::After => object_schema(&[s, r]),
            ReasonMode::Before => object_schema(&[r, s]),
        }
    }
    fn messages(&self) -> Vec<Message> {
        vec![Message::system(self.system), Message::user(self.user)]
    }
    fn sample_index(&self) -> u32 {
        self.sample
    }
    fn parse(&self, reply: &str) -> Result<Answer, String> {
        let v = extract_json(reply).ok_or("no JSON object with a Suggestion")?;
        let s = json_str(&v, "suggestion").ok_or("`Suggestion` missing")?;
        if s.chars().any(|c| FOREIGN.iter().any(|(a, b)| (*a..=*b).contains(&c))) {
            return Err("not in English".into());
        }
        let chars = s.chars().count();
        if s.trim().is_empty() || chars > 600 {
            return Err(format!("suggestion of {chars} characters"));
        }
        let reason = json_str(&v, "reason");
        if self.mode != ReasonMode::None && reason.is_none() {
            return Err("`Reason` missing".into());
        }
        Ok(Answer { suggestion: Suggestion::from_text(&s), reason })
    }
    fn fallback(&self) -> Answer {
        Answer { suggestion: Suggestion::NoRec, reason: (self.mode != ReasonMode::None).then(|| NO_REC.to_string()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_abstention_is_allowed_only_whole() {
        let schema = suggestion_schema();
        assert_eq!(schema["anyOf"][0]["const"], NO_REC);
        let text = regex::Regex::new(schema["anyOf"][1]["pattern"].as_str().unwrap()).unwrap();
        for ok in
            ["Note the time", "Nothing", "No rush", "No", "No Re", "Now stretch", "no recommendation", "Take a walk"]
        {
            assert!(text.is_match(ok), "{ok}");
        }
        for bad in ["No Recommendion", "No Recommend", "No Rec", NO_REC, "Try \u{4e00}"] {
            assert!(!text.is_match(bad), "{bad}");
        }
    }
}
