//! The user agent judging the assistant on its personal rubric: Personal Preference, Timing,
//! Frequency (checked as too often and as too rarely; it passes only if both pass) and
//! Communication & Safety, each 0 or 1, total 0–4. "No Recommendation" is judged like any
//! suggestion.

use futures::future::try_join_all;
use indexmap::IndexMap;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::profile::{content_words, Profile, DIMENSIONS};
use crate::config::{Evaluation as Mode, Role};
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

impl Check {
    pub const ALL: [Check; 5] =
        [Check::Preference, Check::Timing, Check::TooOften, Check::TooRarely, Check::Communication];
    fn key(self) -> &'static str {
        match self {
            Check::Preference => "Personal_Preference",
            Check::Timing => "Timing",
            Check::TooOften => "Frequency_too_often",
            Check::TooRarely => "Frequency_too_rarely",
            Check::Communication => "Communication_&_Safety",
        }
    }
    fn dimension(self) -> &'static str {
        match self {
            Check::TooOften | Check::TooRarely => "Frequency",
            c => c.key(),
        }
    }
    fn question(self) -> &'static str {
        match self {
            Check::Preference => "Does the content fit what you like to receive? Staying quiet can miss something you would have wanted.",
            Check::Timing => "Is this a moment you welcome hearing from the assistant? Staying quiet at a moment you want to be left alone is right.",
            Check::TooOften => "Counting this one, would you be hearing suggestions MORE often than you like? If so, the score is 0. Staying quiet never makes it too often.",
            Check::TooRarely => "Counting this one, would you be hearing suggestions LESS often than you like? If so, the score is 0. A suggestion never makes it too rare.",
            Check::Communication => "Is the tone right for you and does it respect your safety, privacy and boundaries? Staying quiet raises no such issue.",
        }
    }
}

/// What the evaluator sees for one candidate.
#[derive(Debug, Clone)]
pub struct EvalInput {
    pub time: String,
    /// What the user is doing, as the user sees it (walking is phrased as walking).
    pub action: String,
    pub walking: bool,
    pub suggestion: Suggestion,
    pub memory: String,
    /// Recommendations the user heard in the last hour (for the scripted rules).
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

fn context(p: &Profile, input: &EvalInput) -> String {
    format!(
        "[Who you are]\n{}\n\n[Your memory of today's suggestions]\n{}\n[Now]\n{}\nYou are {}.\n\n[The assistant's output]\n{}",
        p.identity(),
        input.memory,
        input.time,
        input.action,
        match &input.suggestion {
            Suggestion::NoRec => "No Recommendation (the assistant chose to stay quiet)".to_string(),
            Suggestion::Text(t) => format!("\"{t}\""),
        }
    )
}

/// One check (separate mode).
pub struct ScoreCheck<'a> {
    pub profile: &'a Profile,
    pub check: Check,
    pub input: &'a EvalInput,
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
        vec![
            Message::system(format!(
                "You are {} judging a home assistant that may speak up at any moment. Judge one thing only, strictly by your own rule below, and give a binary score: 1 if it satisfies your rule, 0 if not.",
                self.profile.name
            )),
            Message::user(format!(
                "{}\n\n[Your rule: {}]\n{}\n\n{}\nReply as {{\"Score\": 0 or 1, \"Reason\": \"one sentence\"}}.",
                context(self.profile, self.input),
                self.check.dimension().replace('_', " "),
                self.profile.criterion(self.check.dimension()),
                self.check.question()
            )),
        ]
    }
    fn parse(&self, reply: &str) -> Result<DimScore, String> {
        parse_score(&extract_json(reply).ok_or("no JSON object")?)
    }
    fn fallback(&self) -> DimScore {
        DimScore { score: 0, reason: "Evaluation failed".into() }
    }
    fn scripted(&self, rng: &mut ChaCha8Rng) -> String {
        let (s, r) = scripted_check(self.profile, self.check, self.input, rng);
        json!({"Score": s, "Reason": r}).to_string()
    }
}

/// The scripted brain's rules (a test/benchmark provider): plain, learnable preferences.
fn scripted_check(p: &Profile, check: Check, input: &EvalInput, rng: &mut ChaCha8Rng) -> (u8, &'static str) {
    let text = input.suggestion.text().to_lowercase();
    let action = input.action.to_lowercase();
    let busy = ["sleep", "shower", "bath", "toilet", "journal"].iter().any(|w| action.contains(w));
    match (check, &input.suggestion) {
        (Check::Preference, Suggestion::NoRec) => {
            (rng.gen_bool(0.4) as u8, "Nothing offered; it may have missed a chance.")
        }
        (Check::Preference, Suggestion::Text(_)) => {
            let mut liked = p.keywords();
            liked.extend(content_words(p.criterion("Personal_Preference")));
            let hit = content_words(&text).iter().any(|w| liked.contains(w));
            if hit || rng.gen_bool(0.25) {
                (1, "It fits my interests.")
            } else {
                (0, "Not the kind of thing I care about.")
            }
        }
        (Check::Timing, Suggestion::NoRec) => (1, "Quiet is fine now."),
        (Check::Timing, Suggestion::Text(_)) if input.walking || busy => (0, "Bad moment to interrupt."),
        (Check::Timing, Suggestion::Text(_)) => (rng.gen_bool(0.85) as u8, "Reasonable moment."),
        (Check::TooOften, Suggestion::NoRec) => (1, "Quiet never makes it too often."),
        (Check::TooOften, Suggestion::Text(_)) => {
            ((input.recs_last_hour < 2) as u8, "Depends on how many I had this hour.")
        }
        (Check::TooRarely, Suggestion::Text(_)) => (1, "A suggestion never makes it too rare."),
        (Check::TooRarely, Suggestion::NoRec) => ((input.recs_last_hour >= 1) as u8, "I had none for a while."),
        (Check::Communication, Suggestion::NoRec) => (1, "Nothing to object to."),
        (Check::Communication, Suggestion::Text(t)) => ((t.len() <= 240) as u8, "Tone and length."),
    }
}

/// Every check in one call (`all` mode; the original's was broken).
pub struct ScoreAll<'a> {
    pub profile: &'a Profile,
    pub input: &'a EvalInput,
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
        let rules: Vec<String> = Check::ALL
            .iter()
            .map(|c| format!("- {}: {} — {}", c.key(), self.profile.criterion(c.dimension()), c.question()))
            .collect();
        vec![
            Message::system(format!("You are {} judging a home assistant that may speak up at any moment. Score each check 1 if it satisfies your rule, else 0.", self.profile.name)),
            Message::user(format!(
                "{}\n\n[Your checks]\n{}\n\nReply as {{\"{}\": {{\"Score\": 0 or 1, \"Reason\": \"...\"}}, ...}} with all five keys.",
                context(self.profile, self.input),
                rules.join("\n"),
                Check::Preference.key()
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
    fn scripted(&self, rng: &mut ChaCha8Rng) -> String {
        let mut m = serde_json::Map::new();
        for c in Check::ALL {
            let (s, r) = scripted_check(self.profile, c, self.input, rng);
            m.insert(c.key().into(), json!({"Score": s, "Reason": r}));
        }
        serde_json::Value::Object(m).to_string()
    }
}

/// Judge one candidate.
pub async fn judge(llm: &Llm, mode: Mode, profile: &Profile, input: &EvalInput) -> anyhow::Result<Judgement> {
    let (scores, fallbacks) = match mode {
        Mode::Separate => {
            let tasks: Vec<ScoreCheck> = Check::ALL.iter().map(|&check| ScoreCheck { profile, check, input }).collect();
            let outs = try_join_all(tasks.iter().map(|t| llm.run(t))).await?;
            let fb = outs.iter().filter(|o| o.fallback).count() as u32;
            (outs.into_iter().map(|o| o.value).collect::<Vec<_>>(), fb)
        }
        Mode::All => {
            let o = llm.run(&ScoreAll { profile, input }).await?;
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
            Message::system(format!("You are {}. Rewrite a home assistant's output so it would fully satisfy your own rules.", self.profile.name)),
            Message::user(format!(
                "{}\n\n[Your rules]\n{}\n\nYou scored it {}/4 because: {}\nWrite what you would have wanted instead: a better suggestion, or \"No Recommendation\" if silence was best. Reply as {{\"Revision\": \"...\"}}.",
                context(self.profile, self.input),
                self.profile.rubric_text(),
                self.judgement.score_string(),
                self.judgement.reason
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
    fn scripted(&self, rng: &mut ChaCha8Rng) -> String {
        let timing_failed = self.judgement.dimensions.get("Timing").map(|d| d.score == 0).unwrap_or(false);
        let r = if timing_failed || self.input.walking || rng.gen_bool(0.3) {
            crate::suggestion::NO_REC.to_string()
        } else {
            let kw = self.profile.keywords();
            let w = kw.get(rng.gen_range(0..kw.len().max(1))).cloned().unwrap_or_else(|| "something you enjoy".into());
            format!("When you have a moment, maybe spend a few minutes on {w}?")
        };
        json!({ "Revision": r }).to_string()
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
