//! The assistant's system and user prompts.

use crate::config::ReasonMode;

/// The answer format line for a reason mode.
pub fn format_hint(mode: ReasonMode) -> &'static str {
    match mode {
        ReasonMode::None => r#"{"Suggestion": "..."}"#,
        ReasonMode::After => r#"{"Suggestion": "...", "Reason": "..."}"#,
        ReasonMode::Before => r#"{"Reason": "...", "Suggestion": "..."}"#,
    }
}

/// System prompt. `rubric` is the user's own preference text when the persona is given.
pub fn system(assistant: &str, user: &str, mode: ReasonMode, rubric: Option<&str>) -> String {
    let mut s = format!(
        "You are {assistant}, a proactive assistant living alongside {user}, who spends the whole day at home. \
Every few minutes you see what {user} is doing, together with your memory of earlier moments and of how your suggestions landed. \
Decide whether speaking up right now would genuinely help. Learn {user}'s preferences, routines and rhythm from the memory. \
If a suggestion would not clearly improve this moment, answer exactly {{\"Suggestion\": \"No Recommendation\"}}. \
Otherwise give one concise, specific suggestion that fits the moment, in English."
    );
    if mode != ReasonMode::None {
        s.push_str(" Include a short reason for your decision.");
    }
    if let Some(r) = rubric {
        s.push_str(&format!("\n\nWhat {user} has told you about the suggestions they want:\n{r}"));
    }
    s.push_str(&format!("\n\nAnswer with JSON only, in the form {}.", format_hint(mode)));
    s
}

/// User prompt: memory, then the current moment.
pub fn user(memory: &str, time: &str, user: &str, action: &str, mode: ReasonMode) -> String {
    format!(
        "[MEMORY]\n{memory}\n[ACTION]\n{time}\n{user}'s action: {user} is {action}.\n\nAnswer in the format {}",
        format_hint(mode)
    )
}
