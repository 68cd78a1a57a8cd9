//! The assistant's system and user prompts.

use crate::config::ReasonMode;
use crate::suggestion::{json_answer, NO_REC};

/// The answer format line for a reason mode.
pub fn format_hint(mode: ReasonMode) -> &'static str {
    match mode {
        ReasonMode::None => r#"{"Suggestion": "..."}"#,
        ReasonMode::After => r#"{"Suggestion": "...", "Reason": "..."}"#,
        ReasonMode::Before => r#"{"Reason": "...", "Suggestion": "..."}"#,
    }
}

/// An answer in the mode's key order, as one line of JSON (`{"Suggestion": "…", …}`).
fn answer_line(mode: ReasonMode, suggestion: &str, reason: &str) -> String {
    let reason = match mode {
        ReasonMode::None => None,
        ReasonMode::After => Some((reason, false)),
        ReasonMode::Before => Some((reason, true)),
    };
    json_answer(suggestion, reason)
}

/// The worked example the system prompt shows (the original's prompt had one: a recap offer
/// while the user watches a series), in the mode's answer format.
pub fn example_answer(mode: ReasonMode, user: &str) -> String {
    answer_line(
        mode,
        "Would you like a short recap of what happened earlier in this series?",
        &format!(
            "{user} is watching TV, and my memory shows this show is new to {user}, so a recap of the earlier episodes helps."
        ),
    )
}

/// The abstention in the mode's answer format.
pub fn no_rec_answer(mode: ReasonMode) -> String {
    answer_line(mode, NO_REC, NO_REC)
}

/// System prompt. `rubric` is the user's own preference text when the persona is given.
pub fn system(assistant: &str, user: &str, mode: ReasonMode, rubric: Option<&str>) -> String {
    let mut s = format!(
        "You are {assistant}, a proactive assistant living alongside {user}, who spends the whole day at home. \
Every few minutes you see what {user} is doing, together with your memory of earlier moments and of how your suggestions landed. \
Decide whether speaking up right now would genuinely help. Learn {user}'s preferences, routines and rhythm from the memory. \
If a suggestion would not clearly improve this moment, answer exactly {}. \
Otherwise give one concise, specific suggestion that fits the moment, in English.",
        no_rec_answer(mode)
    );
    if mode != ReasonMode::None {
        s.push_str(" Include a short reason for your decision, also in English.");
    }
    if let Some(r) = rubric {
        s.push_str(&format!("\n\nWhat {user} has told you about the suggestions they want:\n{r}"));
    }
    s.push_str(&format!("\n\nAnswer with JSON only, in the form {}.", format_hint(mode)));
    s.push_str(&format!(
        "\nAn example of a suggestion: {}\nAn example of staying quiet: {}",
        example_answer(mode, user),
        no_rec_answer(mode)
    ));
    s
}

/// User prompt: memory, then the current moment.
pub fn user(memory: &str, time: &str, user: &str, action: &str, mode: ReasonMode) -> String {
    format!(
        "[MEMORY]\n{memory}\n[ACTION]\n{time}\n{user}'s action: {user} is {action}.\n\nAnswer in the format {}",
        format_hint(mode)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assistant::suggest::Suggest;
    use crate::llm::Task;

    #[test]
    fn system_prompt_shows_an_example_answer_in_the_answer_schema() {
        for mode in [ReasonMode::None, ReasonMode::After, ReasonMode::Before] {
            let sys = system("Eddy Lin", "John Lin", mode, None);
            let ex = example_answer(mode, "John Lin");
            assert!(sys.contains(&format!("An example of a suggestion: {ex}")), "{sys}");
            assert!(ex.contains("recap of what happened earlier in this series"), "{ex}");
            // The example is a valid answer of the suggestion task, in the mode's key order.
            let task = Suggest { system: &sys, user: "", mode, sample: 0 };
            let a = task.parse(&ex).expect("the example parses");
            assert!(!a.suggestion.is_norec());
            assert_eq!(a.reason.is_some(), mode != ReasonMode::None);
            // Exactly the schema's keys, in its order (the order the format line asks for).
            let v: serde_json::Value = serde_json::from_str(&ex).unwrap();
            let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
            let schema = task.schema();
            let props: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
            assert_eq!(keys, props, "{ex}");
            let quiet = task.parse(&no_rec_answer(mode)).unwrap();
            assert!(quiet.suggestion.is_norec());
        }
        assert_eq!(
            example_answer(ReasonMode::None, "John Lin"),
            r#"{"Suggestion": "Would you like a short recap of what happened earlier in this series?"}"#
        );
    }
}
