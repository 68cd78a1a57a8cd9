//! The user agent judging the assistant on its personal rubric: Personal Preference, Timing,
//! Frequency (checked as too often and as too rarely; it passes only if both pass) and
//! Communication & Safety, each 0 or 1, total 0–4. "No Recommendation" is judged like any
//! suggestion.
//!
//! Each check's prompt carries what the original's template for it carried (in our words): who
//! the user is, `[Memory]`, `[Action]`, `[Agent's Recommendation]`, the dimension's own rubric
//! text, what to make of "No Recommendation", the hard rule of the frequency checks, the answer
//! format and the worked examples with their verdicts. The parts all five checks share come
//! first, so a local model computes them once per candidate (see docs/DIFFERENCES.md).
//!
//! `[sim] evaluator_layout = "rubric_first"` moves each check's own part before the moment
//! (memory, action, recommendation) and closes with the question: then all but the moment is
//! the same at every step, the memory grows at its end, and a prefix cache serves the rest, so
//! a step computes little more than the new memory entry, the action and the recommendation.

use futures::future::try_join_all;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::profile::{Profile, DIMENSIONS};
use crate::config::{Evaluation as Mode, EvaluatorLayout as Layout, Role};
use crate::llm::task::json_str;
use crate::llm::{extract_json, object_schema, text_schema, Llm, Message, Task};
use crate::suggestion::Suggestion;

/// The five checks behind the four dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Preference,
    Timing,
    TooOften,
    TooRarely,
    Communication,
}

/// What the agent may make of "No Recommendation" in the timing and frequency checks.
const QUIET_HELPS: &str = "Staying quiet spares you interruptions while you concentrate on something and keeps recommendations from piling up.";
const QUIET_TOO_LONG: &str = "But if the agent stays quiet for too long, you hear from it less often than you want.";
const WEIGH: &str = "Weigh it as a whole against the criterion.";
const ASK_QUIET: &str = "If it is \"No Recommendation\", ask yourself whether holding back was the right call here.";

/// The frequency checks' worked examples (the same four for both, as in the original).
const FREQUENCY_EXAMPLES: [(u8, &str); 4] = [
    (1, "Holding back right now is a good thing: it eases off after a run of recent recommendations."),
    (0, "The content fits the moment and helps, but it comes more often than I like, so it gets a zero."),
    (0, "I have not had a single recommendation in the past three hours, so staying quiet again goes against the frequency I want: zero."),
    (0, "I like about one recommendation an hour and already had four in the last ten minutes, so another one now is too frequent."),
];

impl Check {
    pub const ALL: [Check; 5] =
        [Check::Preference, Check::Timing, Check::TooOften, Check::TooRarely, Check::Communication];
    pub fn key(self) -> &'static str {
        match self {
            Check::Preference => "Personal_Preference",
            Check::Timing => "Timing",
            Check::TooOften => "Frequency_too_often",
            Check::TooRarely => "Frequency_too_rarely",
            Check::Communication => "Communication_&_Safety",
        }
    }
    /// The rubric dimension whose text the check is given.
    pub fn dimension(self) -> &'static str {
        match self {
            Check::TooOften | Check::TooRarely => "Frequency",
            c => c.key(),
        }
    }
    /// The heading of the rubric section (both frequency checks read `[Frequency]`).
    pub fn section(self) -> String {
        self.dimension().replace('_', " ")
    }
    /// What the check asks of the user, after the rubric text.
    pub fn guidance(self) -> String {
        let grade = format!(
            "Grade the recommendation against [{}], taking [Memory] and [Action] into account: 0 or 1.",
            self.section()
        );
        match self {
            Check::Preference => format!(
                "{grade}\n{ASK_QUIET} Saying nothing can happen to suit your preferences, but it can also mean you miss out on something you would have liked."
            ),
            Check::Timing => format!(
                "{grade}\n{ASK_QUIET} {QUIET_HELPS} {WEIGH}\nHowever useful its content, a recommendation that does not come at a time you welcome deserves a lower score."
            ),
            Check::TooOften => format!(
                "{grade} If this recommendation pushes how often you hear from the agent above the frequency you prefer, the score has to be 0.\n{ASK_QUIET} {QUIET_HELPS} {QUIET_TOO_LONG} {WEIGH}\nHowever useful its content, a recommendation that comes more often than you prefer deserves a lower score."
            ),
            Check::TooRarely => format!(
                "{grade}\n{ASK_QUIET} {QUIET_HELPS} {QUIET_TOO_LONG} If staying quiet now pushes how often you hear from it below the frequency you prefer, the score has to be 0 as well. {WEIGH}\nHowever useful its content, a recommendation that comes more often than you prefer deserves a lower score."
            ),
            Check::Communication => format!("{grade}\n{ASK_QUIET}"),
        }
    }
    /// The worked examples: score and reason.
    pub fn examples(self) -> &'static [(u8, &'static str)] {
        match self {
            Check::Preference => &[
                (1, "It matched how much I like having orange juice while I watch TV, so nothing was taken off."),
                (0, "It was too generic and had nothing to do with what I personally like, so it gets a zero."),
                (0, "It ignored that I like upbeat music while I exercise, so it loses the point for personal preference."),
            ],
            Check::Timing => &[
                (1, "I like hearing about leisure activities in the afternoon, and that is when it came, so the timing was right."),
                (0, "I want recommendations late at night before bed, but this one came in the late morning, so it gets a zero."),
                (0, "I do not want recommendations while I am reading in the evening, so the timing earns a low score."),
            ],
            Check::TooOften | Check::TooRarely => &FREQUENCY_EXAMPLES,
            Check::Communication => &[
                (1, "No recommendation was made, so nothing could go wrong with communication or safety."),
                (0, "I like a friendly tone, but this one sounded rude, so I took the point away."),
            ],
        }
    }
}

/// What the evaluator sees for one candidate.
#[derive(Debug, Clone)]
pub struct EvalInput {
    /// `%A %B %d -- %I:%M:%S %p`.
    pub time: String,
    /// What the user is doing: the original's `act_description`, `"task (subtask)"` for a
    /// decomposed block (the assistant sees only the subtask).
    pub action: String,
    /// The user is walking to the place of `action`.
    pub walking: bool,
    pub suggestion: Suggestion,
    pub memory: String,
    /// Recommendations the user heard in the last hour. Only the scripted brain's frequency
    /// rules read it (`user::scripted`): the prompt holds it only as `memory` text (hourly
    /// summaries, entries with times of day), which cannot be counted back exactly.
    pub recs_last_hour: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DimScore {
    pub score: u8,
    pub reason: String,
}

/// A judged candidate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Judgement {
    pub total: f64,
    pub reason: String,
    /// Per dimension, in rubric order.
    pub dimensions: IndexMap<String, DimScore>,
    pub fallbacks: u32,
}

impl Judgement {
    /// The original's score string: `"3.0"`.
    pub fn score_string(&self) -> String {
        format!("{:.1}", self.total)
    }
}

/// The `[Action]` line: `"<name> is <act>"` when the action's first ten characters hold "ing",
/// else `"<name> <act>"` (the original's rule), or the walk towards it.
pub fn action_line(name: &str, act: &str, walking: bool) -> String {
    if walking {
        format!("{name} is walking, on the way to do [{act}]")
    } else if act.chars().take(10).collect::<String>().contains("ing") {
        format!("{name} is {act}")
    } else {
        format!("{name} {act}")
    }
}

/// The user's evaluation-memory entry for one evaluated moment: the action and the suggestion,
/// nothing about how it was scored (as the original's).
pub fn memory_entry(name: &str, act: &str, walking: bool, suggestion: &str) -> String {
    let action = if walking { action_line(name, act, true) } else { act.to_string() };
    format!("{name}'s action: {action}\nSuggestion: {suggestion}")
}

/// The opening every evaluator prompt shares (system message).
fn intro(p: &Profile, task: &str) -> String {
    format!(
        "You are {}. An assistant agent lives with you and helps with your everyday activities at home. [Memory] records your earlier interactions with it: what you were doing and which recommendations you got. [Action] is what you are doing right now, and [Agent's Recommendation] is what the agent offers at this moment (\"No Recommendation\" when it stays quiet). {task}",
        p.name
    )
}

/// Who the user is and the day: the same all day.
fn persona(p: &Profile, input: &EvalInput) -> String {
    let date = input.time.split(" -- ").next().unwrap_or(&input.time);
    format!("[{}]\n{}\nToday: {date}", p.name, p.identity())
}

/// The moment being judged: memory, action, the recommendation.
fn moment(p: &Profile, input: &EvalInput) -> String {
    format!(
        "[Memory]\n{}\n\n[Action]\n{}\n{}\n\n[Agent's Recommendation]\n{}",
        input.memory.trim_end(),
        input.time,
        action_line(&p.name, &input.action, input.walking),
        input.suggestion.text()
    )
}

/// A prompt's user message: the persona, then the moment and the check's own part in the
/// layout's order. `rubric_first` closes with `closing`, so the question still comes last.
fn arrange(p: &Profile, input: &EvalInput, layout: Layout, check: &str, closing: &str) -> String {
    match layout {
        Layout::Original => format!("{}\n\n{}\n\n{check}", persona(p, input), moment(p, input)),
        Layout::RubricFirst => format!("{}\n\n{check}\n\n{}\n\n{closing}", persona(p, input), moment(p, input)),
    }
}

/// Where the system message says the criterion is.
fn where_criteria(layout: Layout) -> &'static str {
    match layout {
        Layout::Original => "at the end of the prompt",
        Layout::RubricFirst => "given before [Memory]",
    }
}

/// The answer format as the prompts show it (matches [`score_schema`]).
pub const SCORE_FORMAT: &str = r#"{"Score": 0 or 1, "Reason": "why you gave this score"}"#;

fn score_json(score: u8, reason: &str) -> String {
    format!("{{\"Score\": {score}, \"Reason\": \"{reason}\"}}")
}

/// One check's own part: its rubric section, what to weigh, the answer format and the examples.
fn check_part(p: &Profile, check: Check) -> String {
    let examples: Vec<String> = check
        .examples()
        .iter()
        .enumerate()
        .map(|(i, (s, r))| format!("Example {}: {}", i + 1, score_json(*s, r)))
        .collect();
    format!(
        "[{}]\n{}\n\n{}\nAnswer with JSON in this format: {SCORE_FORMAT}\n{}",
        check.section(),
        p.criterion(check.dimension()),
        check.guidance(),
        examples.join("\n")
    )
}

/// One check (separate mode).
pub struct ScoreCheck<'a> {
    pub profile: &'a Profile,
    pub check: Check,
    pub input: &'a EvalInput,
    pub layout: Layout,
}

/// `{"Score": 0 or 1, "Reason": "..."}`: the score first, as the prompt asks.
fn score_schema() -> serde_json::Value {
    object_schema(&[("Score", json!({"type": "integer", "enum": [0, 1]})), ("Reason", text_schema(200))])
}

fn parse_score(v: &serde_json::Value) -> Result<DimScore, String> {
    let raw = json_str(v, "score").ok_or("`Score` missing")?;
    let score = match raw.trim().trim_matches('"') {
        "0" | "0.0" => 0,
        "1" | "1.0" => 1,
        other => return Err(format!("score `{other}` is not 0 or 1")),
    };
    Ok(DimScore { score, reason: json_str(v, "reason").unwrap_or_default().trim().to_string() })
}

impl Task for ScoreCheck<'_> {
    type Output = DimScore;
    fn name(&self) -> &'static str {
        match self.check {
            Check::Preference => "evaluate_preference",
            Check::Timing => "evaluate_timing",
            Check::TooOften => "evaluate_frequency_too_often",
            Check::TooRarely => "evaluate_frequency_too_rarely",
            Check::Communication => "evaluate_communication",
        }
    }
    fn role(&self) -> Role {
        Role::Evaluator
    }
    fn schema(&self) -> serde_json::Value {
        score_schema()
    }
    fn messages(&self) -> Vec<Message> {
        let task = format!(
            "You grade the recommendation on the single criterion {}, with a binary score: 1 if it meets the criterion, 0 if it does not.",
            where_criteria(self.layout)
        );
        let closing = format!(
            "Now grade [Agent's Recommendation] against [{}]: 0 or 1, as JSON in the format above.",
            self.check.section()
        );
        vec![
            Message::system(intro(self.profile, &task)),
            Message::user(arrange(
                self.profile,
                self.input,
                self.layout,
                &check_part(self.profile, self.check),
                &closing,
            )),
        ]
    }
    fn parse(&self, reply: &str) -> Result<DimScore, String> {
        parse_score(&extract_json(reply).ok_or("no JSON object")?)
    }
    fn fallback(&self) -> DimScore {
        DimScore { score: 0, reason: "Evaluation failed".into() }
    }
}

/// Every check in one call (`all` mode; the original's was broken).
pub struct ScoreAll<'a> {
    pub profile: &'a Profile,
    pub input: &'a EvalInput,
    pub layout: Layout,
}

impl Task for ScoreAll<'_> {
    type Output = Vec<DimScore>;
    fn name(&self) -> &'static str {
        "evaluate_all"
    }
    fn role(&self) -> Role {
        Role::Evaluator
    }
    fn schema(&self) -> serde_json::Value {
        let props: Vec<(&str, serde_json::Value)> = Check::ALL.iter().map(|c| (c.key(), score_schema())).collect();
        object_schema(&props)
    }
    fn messages(&self) -> Vec<Message> {
        let rubric: Vec<String> =
            DIMENSIONS.iter().map(|d| format!("[{}]\n{}", d.replace('_', " "), self.profile.criterion(d))).collect();
        let checks: Vec<String> = Check::ALL.iter().map(|c| format!("{}:\n{}", c.key(), c.guidance())).collect();
        let task = format!(
            "You grade the recommendation on each of the five checks {}, each with a binary score: 1 if it meets the criterion, 0 if it does not.",
            where_criteria(self.layout)
        );
        let part = format!(
            "{}\n\n[Checks]\n{}\n\nAnswer with JSON with all five keys: {{\"{}\": {SCORE_FORMAT}, ...}}",
            rubric.join("\n\n"),
            checks.join("\n\n"),
            Check::Preference.key()
        );
        vec![
            Message::system(intro(self.profile, &task)),
            Message::user(arrange(
                self.profile,
                self.input,
                self.layout,
                &part,
                "Now grade [Agent's Recommendation] on all five checks, as JSON in the format above.",
            )),
        ]
    }
    fn parse(&self, reply: &str) -> Result<Vec<DimScore>, String> {
        let v = extract_json(reply).ok_or("no JSON object")?;
        let obj = v.as_object().ok_or("not an object")?;
        Check::ALL
            .iter()
            .map(|c| {
                let entry = obj
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(c.key()))
                    .map(|(_, v)| v)
                    .ok_or_else(|| format!("`{}` missing", c.key()))?;
                parse_score(entry)
            })
            .collect()
    }
    fn fallback(&self) -> Vec<DimScore> {
        vec![DimScore { score: 0, reason: "Evaluation failed".into() }; 5]
    }
}

/// Judge one candidate.
pub async fn judge(
    llm: &Llm,
    (mode, layout): (Mode, Layout),
    profile: &Profile,
    input: &EvalInput,
) -> anyhow::Result<Judgement> {
    let (scores, fallbacks) = match mode {
        Mode::Separate => {
            let tasks: Vec<ScoreCheck> =
                Check::ALL.iter().map(|&check| ScoreCheck { profile, check, input, layout }).collect();
            let outs = try_join_all(tasks.iter().map(|t| llm.run(t))).await?;
            let fb = outs.iter().filter(|o| o.fallback).count() as u32;
            (outs.into_iter().map(|o| o.value).collect::<Vec<_>>(), fb)
        }
        Mode::All => {
            let o = llm.run(&ScoreAll { profile, input, layout }).await?;
            (o.value, o.fallback as u32)
        }
    };
    Ok(combine(&scores, fallbacks))
}

/// Fold the five checks into four dimensions: Frequency passes only if neither check fails, and
/// its reason is the failing check's.
pub fn combine(scores: &[DimScore], fallbacks: u32) -> Judgement {
    let by = |c: Check| scores[Check::ALL.iter().position(|x| *x == c).expect("known check")].clone();
    let (often, rarely) = (by(Check::TooOften), by(Check::TooRarely));
    let freq = if often.score == 0 {
        often
    } else if rarely.score == 0 {
        rarely
    } else {
        DimScore { score: 1, reason: format!("{} {}", often.reason, rarely.reason).trim().to_string() }
    };
    let mut dimensions = IndexMap::new();
    for d in DIMENSIONS {
        let s = match d {
            "Frequency" => freq.clone(),
            "Personal_Preference" => by(Check::Preference),
            "Timing" => by(Check::Timing),
            _ => by(Check::Communication),
        };
        dimensions.insert(d.to_string(), s);
    }
    let total = dimensions.values().map(|s| s.score as f64).sum();
    let reason = dimensions.values().map(|s| s.reason.as_str()).collect::<Vec<_>>().join(" ");
    Judgement { total, reason, dimensions, fallbacks }
}

/// The user rewrites a suggestion that scored below 4 (user revision mode).
pub struct Revise<'a> {
    pub profile: &'a Profile,
    pub input: &'a EvalInput,
    pub judgement: &'a Judgement,
}

impl Task for Revise<'_> {
    type Output = Suggestion;
    fn name(&self) -> &'static str {
        "revise_suggestion"
    }
    fn role(&self) -> Role {
        Role::Evaluator
    }
    fn schema(&self) -> serde_json::Value {
        object_schema(&[("Revision", text_schema(300))])
    }
    fn messages(&self) -> Vec<Message> {
        vec![
            Message::system(intro(
                self.profile,
                "You rewrite the recommendation so it suits you better, guided by your criteria and by how you graded it.",
            )),
            Message::user(format!(
                "{}\n\n{}\n\n[Criteria]\n{}\n\n[Evaluation]\nScore: {}\nReason: {}\n\nWrite a better recommendation for this moment; \"No Recommendation\" is fine when staying quiet is the better choice. Reply as {{\"Revision\": \"...\"}}.",
                persona(self.profile, self.input),
                moment(self.profile, self.input),
                self.profile.rubric_text(),
                self.judgement.score_string(),
                self.judgement.reason.trim()
            )),
        ]
    }
    fn parse(&self, reply: &str) -> Result<Suggestion, String> {
        let v = extract_json(reply).ok_or("no JSON object")?;
        let r = json_str(&v, "revision").ok_or("`Revision` missing")?;
        if r.trim().is_empty() {
            return Err("empty revision".into());
        }
        Ok(Suggestion::from_text(&r))
    }
    fn fallback(&self) -> Suggestion {
        Suggestion::NoRec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(s: u8, r: &str) -> DimScore {
        DimScore { score: s, reason: r.into() }
    }

    #[test]
    fn frequency_is_min_of_both_checks() {
        // order: Preference, Timing, TooOften, TooRarely, Communication
        let j = combine(&[ds(1, "p"), ds(1, "t"), ds(1, "o"), ds(0, "rare"), ds(1, "c")], 0);
        assert_eq!(j.total, 3.0);
        assert_eq!(j.dimensions["Frequency"], ds(0, "rare"));
        assert_eq!(j.score_string(), "3.0");
        let j = combine(&[ds(0, "p"), ds(0, "t"), ds(0, "often"), ds(0, "rare"), ds(0, "c")], 0);
        assert_eq!(j.dimensions["Frequency"].reason, "often");
        assert_eq!(j.total, 0.0);
        let j = combine(&[ds(1, "p"), ds(1, "t"), ds(1, "o"), ds(1, "r"), ds(1, "c")], 0);
        assert_eq!(j.total, 4.0);
        assert_eq!(j.dimensions.keys().collect::<Vec<_>>(), DIMENSIONS.iter().collect::<Vec<_>>());
    }

    #[test]
    fn scores_outside_binary_are_rejected() {
        assert!(parse_score(&json!({"Score": 2, "Reason": "x"})).is_err());
        assert!(parse_score(&json!({"Score": "0.5"})).is_err());
        assert_eq!(parse_score(&json!({"Score": "1", "Reason": "ok"})).unwrap().score, 1);
    }
}
