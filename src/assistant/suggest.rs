//! The assistant's suggestion task.

use crate::config::{ReasonMode, Role};
use crate::llm::task::json_str;
use crate::llm::{extract_json, object_schema, text_schema, Message, Task};
use crate::suggestion::{Suggestion, NO_REC};

/// Scripts a suggestion may not contain (CJK ideographs, Cyrillic): small models drift into
/// them, and the user reads English.
const FOREIGN: [(char, char); 2] = [('\u{4e00}', '\u{9fff}'), ('\u{0400}', '\u{04ff}')];

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
        let mut suggestion = text_schema(300);
        suggestion["pattern"] = format!("^[^{}]*$", FOREIGN.map(|(a, b)| format!("{a}-{b}")).concat()).into();
        let (s, r) = (("Suggestion", suggestion), ("Reason", text_schema(300)));
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
