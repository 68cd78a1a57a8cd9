//! TEST/BENCHMARK BRAIN — not a model.
//!
//! The scripted brain's replies to the user's tasks (`--provider scripted`, see
//! [`crate::llm::scripted`]): the day's plan, schedule, decomposition, places, emoji, poignancy
//! and the new-day status from the persona's seed text and fixed lists; the evaluator's checks
//! by plain, learnable rules (suggestions on the persona's interests please; interrupting sleep,
//! a shower or a walk does not; more than one recommendation an hour is too often, none too
//! rare; long ones are too long) and its revisions. Each reply is drawn with the seeded `rng`
//! the client gives and goes through the task's `parse` like a model's.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::evaluator::{Check, EvalInput, Revise, ScoreAll, ScoreCheck};
use super::plan_tasks::{
    hour_label, keyword_place, numbered_items, strip_time, ChoosePlace, DailyPlan, Decompose, Emoji, HourlySchedule,
    Poignancy, ReviseStatus, WakeUpHour,
};
use super::profile::{content_words, Profile};
use crate::llm::scripted::ScriptedReply;
use crate::llm::Task;
use crate::suggestion::{Suggestion, NO_REC};

// The day's tasks.

impl ScriptedReply for WakeUpHour<'_> {
    fn scripted(&self, rng: &mut ChaCha8Rng) -> String {
        let re = regex::Regex::new(r"(?i)\b(\d{1,2})(?::\d\d)?\s*a\.?m").expect("static regex");
        let h = re
            .captures(&self.profile.lifestyle)
            .and_then(|c| c[1].parse::<u32>().ok())
            .filter(|h| (4..=11).contains(h))
            .unwrap_or_else(|| rng.gen_range(6..=8));
        json!({ "wake_up_hour": h }).to_string()
    }
}

impl ScriptedReply for DailyPlan<'_> {
    fn scripted(&self, rng: &mut ChaCha8Rng) -> String {
        let mut items = vec![format!("wake up and complete the morning routine at {}:00 am", self.wake_hour)];
        let mut wishes: Vec<String> = numbered_items(&self.profile.daily_plan_req);
        wishes.extend(numbered_items(&self.profile.lifestyle).into_iter().take(2));
        wishes.shuffle(rng);
        let slots = ["10:00 am", "2:00 pm", "4:00 pm", "8:00 pm"];
        for (w, t) in wishes.iter().zip(slots) {
            items.push(format!("{} at {t}", w.trim_end_matches('.').to_lowercase()));
        }
        items.push("have lunch at 12:00 pm".into());
        items.push("have dinner at 6:00 pm".into());
        items.push("go to bed at 11:00 pm".into());
        json!({ "plan": items }).to_string()
    }
}

impl ScriptedReply for HourlySchedule<'_> {
    fn scripted(&self, rng: &mut ChaCha8Rng) -> String {
        let mut acts = self.fallback();
        let mut fillers: Vec<String> = self
            .plan
            .iter()
            .skip(1)
            .map(|p| strip_time(p))
            .filter(|p| !p.contains("lunch") && !p.contains("dinner") && !p.contains("bed"))
            .collect();
        fillers.extend(["tidying up the common room", "reading on the couch", "tending the garden"].map(String::from));
        for h in (self.wake_hour + 1)..23 {
            if h == 12 || h == 18 {
                continue;
            }
            if let Some(f) = fillers.choose(rng) {
                acts[h as usize] = f.clone();
            }
        }
        acts[(self.wake_hour + 1).min(22) as usize] = "having breakfast".into();
        let sched: Vec<Value> =
            acts.iter().enumerate().map(|(h, a)| json!({"hour": hour_label(h as u32), "activity": a})).collect();
        json!({ "schedule": sched }).to_string()
    }
}

impl ScriptedReply for Decompose<'_> {
    fn scripted(&self, rng: &mut ChaCha8Rng) -> String {
        let phases = ["getting started", "in full swing", "keeping at it", "wrapping up"];
        let n = rng.gen_range(2..=4).min((self.minutes / 10).max(1) as usize);
        let base = (self.minutes / 5 / n as u32) * 5;
        let subs: Vec<Value> = (0..n)
            .map(|i| {
                let m = if i + 1 == n { self.minutes - base * (n as u32 - 1) } else { base };
                let phase = if n == 1 { "in full swing" } else { phases[(i * 3 / (n - 1)).min(3)] };
                json!({"task": format!("{} ({phase})", self.activity), "minutes": m})
            })
            .collect();
        json!({ "subtasks": subs }).to_string()
    }
}

impl ScriptedReply for ChoosePlace<'_> {
    fn scripted(&self, rng: &mut ChaCha8Rng) -> String {
        let c =
            keyword_place(self.action, self.options).or_else(|| self.options.choose(rng).cloned()).unwrap_or_default();
        json!({ "choice": c }).to_string()
    }
}

impl ScriptedReply for Emoji<'_> {
    fn scripted(&self, _rng: &mut ChaCha8Rng) -> String {
        const MAP: &[(&str, &str)] = &[
            ("sleep", "😴"),
            ("breakfast", "🍳"),
            ("lunch", "🥗"),
            ("dinner", "🍲"),
            ("cook", "🍳"),
            ("shower", "🚿"),
            ("garden", "🌱"),
            ("read", "📖"),
            ("journal", "📓"),
            ("sketch", "✏️"),
            ("work", "💻"),
            ("music", "🎵"),
            ("call", "📞"),
            ("clean", "🧹"),
            ("tidy", "🧹"),
            ("decor", "🖼️"),
            ("bed", "🛏️"),
            ("exercise", "🏃"),
        ];
        let a = self.action.to_lowercase();
        let e = MAP.iter().find(|(k, _)| a.contains(k)).map(|(_, e)| *e).unwrap_or("🙂");
        json!({ "emoji": e }).to_string()
    }
}

impl ScriptedReply for Poignancy<'_> {
    fn scripted(&self, rng: &mut ChaCha8Rng) -> String {
        let n = if self.event.contains("sleep") { 1 } else { rng.gen_range(2..=6) };
        json!({ "poignancy": n }).to_string()
    }
}

impl ScriptedReply for ReviseStatus<'_> {
    fn scripted(&self, rng: &mut ChaCha8Rng) -> String {
        let words = content_words(&self.yesterday.join(" "));
        let w = words.choose(rng).cloned().unwrap_or_else(|| "home".into());
        json!({ "status": format!("I feel settled after yesterday. I want to keep some of the {w} going today.") })
            .to_string()
    }
}

// The evaluator.

impl ScriptedReply for ScoreCheck<'_> {
    fn scripted(&self, rng: &mut ChaCha8Rng) -> String {
        let (s, r) = check_reply(self.profile, self.check, self.input, rng);
        json!({"Score": s, "Reason": r}).to_string()
    }
}

impl ScriptedReply for ScoreAll<'_> {
    fn scripted(&self, rng: &mut ChaCha8Rng) -> String {
        let mut m = serde_json::Map::new();
        for c in Check::ALL {
            let (s, r) = check_reply(self.profile, c, self.input, rng);
            m.insert(c.key().into(), json!({"Score": s, "Reason": r}));
        }
        serde_json::Value::Object(m).to_string()
    }
}

impl ScriptedReply for Revise<'_> {
    fn scripted(&self, rng: &mut ChaCha8Rng) -> String {
        let timing_failed = self.judgement.dimensions.get("Timing").map(|d| d.score == 0).unwrap_or(false);
        let r = if timing_failed || self.input.walking || rng.gen_bool(0.3) {
            NO_REC.to_string()
        } else {
            let kw = keywords(self.profile);
            let w = kw.get(rng.gen_range(0..kw.len().max(1))).cloned().unwrap_or_else(|| "something you enjoy".into());
            format!("When you have a moment, maybe spend a few minutes on {w}?")
        };
        json!({ "Revision": r }).to_string()
    }
}

/// One check's score and reason: plain, learnable preferences.
fn check_reply(p: &Profile, check: Check, input: &EvalInput, rng: &mut ChaCha8Rng) -> (u8, &'static str) {
    let text = input.suggestion.text().to_lowercase();
    // The action as the assistant sees it (a decomposed block's subtask), so that the rules stay
    // learnable from the assistant's side.
    let action = subtask(&input.action).to_lowercase();
    let busy = ["sleep", "shower", "bath", "toilet", "journal"].iter().any(|w| action.contains(w));
    match (check, &input.suggestion) {
        (Check::Preference, Suggestion::NoRec) => {
            (rng.gen_bool(0.4) as u8, "Nothing offered; it may have missed a chance.")
        }
        (Check::Preference, Suggestion::Text(_)) => {
            let mut liked = keywords(p);
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

/// The subtask of a `"task (subtask)"` action (the text in its last parentheses, the original's
/// rule for what the assistant sees), or the whole action.
fn subtask(act: &str) -> &str {
    let Some(open) = act.rfind('(') else { return act };
    let rest = &act[open + 1..];
    rest.find(')').map(|close| &rest[..close]).unwrap_or(act)
}

/// Content words of the persona's interests and lifestyle.
fn keywords(p: &Profile) -> Vec<String> {
    content_words(&format!("{} {} {}", p.interests, p.lifestyle, p.daily_plan_req))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_assistants_view_of_an_action_is_its_subtask() {
        assert_eq!(subtask("cooking breakfast (frying eggs)"), "frying eggs");
        assert_eq!(subtask("sleeping"), "sleeping");
    }
}
