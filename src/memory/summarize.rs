//! The summarizer task.

use crate::config::Role;
use crate::llm::task::json_str;
use crate::llm::{extract_json, object_schema, text_schema, Message, Task};

pub struct Summarize<'a> {
    /// Whose view: "the user" or "the assistant".
    pub viewpoint: &'a str,
    pub user_name: &'a str,
    /// "hour" or "four hours".
    pub span: &'a str,
    pub entries: &'a [String],
    /// Say what was received well or badly (score-aware memory levels).
    pub with_scores: bool,
}

impl Task for Summarize<'_> {
    type Output = String;
    fn name(&self) -> &'static str {
        if self.span == "hour" {
            "summarize_hour"
        } else {
            "summarize_4hours"
        }
    }
    fn role(&self) -> Role {
        Role::Summarizer
    }
    fn schema(&self) -> serde_json::Value {
        // 100 words.
        object_schema(&[("Summary", text_schema(700))])
    }
    fn messages(&self) -> Vec<Message> {
        let focus = if self.with_scores {
            "Say which suggestions were received well and which were received badly, and why."
        } else {
            "Say what the user did and what the assistant suggested, if anything."
        };
        vec![
            Message::system(format!("You keep the memory of {} about a home assistant's suggestions to {}. Write plain, compact summaries.", self.viewpoint, self.user_name)),
            Message::user(format!(
                "Summarize this {} of interactions in at most 100 words, without times or dates. {focus}\n\n{}\n\nReply as {{\"Summary\": \"...\"}}.",
                self.span,
                self.entries.join("\n")
            )),
        ]
    }
    fn parse(&self, reply: &str) -> Result<String, String> {
        let v = extract_json(reply).ok_or("no JSON object")?;
        let s = json_str(&v, "summary").ok_or("`Summary` missing")?.trim().to_string();
        if s.is_empty() {
            Err("empty summary".into())
        } else {
            Ok(s)
        }
    }
    fn fallback(&self) -> String {
        format!("{} interactions (summary unavailable).", self.entries.len())
    }
}
