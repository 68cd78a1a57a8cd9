//! LLM tasks of the user agent's day: wake-up hour, broad plan, hourly schedule, decomposition,
//! placement, emoji, poignancy, and the new-day revision. Prompts are ours; each asks for JSON.

use serde_json::{json, Value};

use super::profile::Profile;
use crate::config::Role;
use crate::llm::task::json_str;
use crate::llm::{extract_json, object_schema, text_schema, Message, Task};

fn system(p: &Profile) -> Message {
    Message::system(format!(
        "You are role-playing {name}, a person who spends the whole day at home (the house and its garden). Stay in character, be concrete, and answer only with the JSON object requested.\n\n{id}",
        name = p.name,
        id = p.identity()
    ))
}

fn json_list(v: &Value, key: &str) -> Option<Vec<Value>> {
    let obj = v.as_object()?;
    obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).and_then(|(_, v)| v.as_array().cloned())
}

/// Hour (0–23) the user gets up.
pub struct WakeUpHour<'a> {
    pub profile: &'a Profile,
}

impl Task for WakeUpHour<'_> {
    type Output = u32;
    fn name(&self) -> &'static str {
        "wake_up_hour"
    }
    fn role(&self) -> Role {
        Role::User
    }
    fn schema(&self) -> Value {
        object_schema(&[("wake_up_hour", json!({"type": "integer", "minimum": 4, "maximum": 11}))])
    }
    fn messages(&self) -> Vec<Message> {
        vec![
            system(self.profile),
            Message::user(format!(
                "Given your lifestyle, at what hour do you get out of bed today? Reply as {{\"wake_up_hour\": H}} with H an integer from 4 to 11 (24-hour clock).\nLifestyle: {}",
                self.profile.lifestyle
            )),
        ]
    }
    fn parse(&self, reply: &str) -> Result<u32, String> {
        let v = extract_json(reply).ok_or("no JSON object")?;
        let h: u32 = json_str(&v, "wake_up_hour")
            .and_then(|s| s.trim().parse().ok())
            .ok_or("wake_up_hour missing or not an integer")?;
        if (4..=11).contains(&h) {
            Ok(h)
        } else {
            Err(format!("wake_up_hour {h} outside 4..=11"))
        }
    }
    fn fallback(&self) -> u32 {
        7
    }
}

/// Broad strokes of the day (4–8 items).
pub struct DailyPlan<'a> {
    pub profile: &'a Profile,
    pub date: String,
    pub wake_hour: u32,
    /// Status note carried from yesterday (empty on the first day).
    pub status: &'a str,
}

impl Task for DailyPlan<'_> {
    type Output = Vec<String>;
    fn name(&self) -> &'static str {
        "daily_plan"
    }
    fn role(&self) -> Role {
        Role::User
    }
    fn schema(&self) -> Value {
        object_schema(&[("plan", json!({"type": "array", "items": text_schema(80), "minItems": 4, "maxItems": 8}))])
    }
    fn messages(&self) -> Vec<Message> {
        let status = if self.status.is_empty() {
            String::new()
        } else {
            format!("\nHow things stand since yesterday: {}", self.status)
        };
        vec![
            system(self.profile),
            Message::user(format!(
                "Today is {}. You wake up at {}:00. Outline your day at home in 4 to 8 short items, in order, each with a rough time (e.g. \"make breakfast at 8:00 am\").{status}\nReply as {{\"plan\": [\"item\", ...]}}.",
                self.date, self.wake_hour
            )),
        ]
    }
    fn parse(&self, reply: &str) -> Result<Vec<String>, String> {
        let v = extract_json(reply).ok_or("no JSON object")?;
        let items: Vec<String> = json_list(&v, "plan")
            .ok_or("`plan` list missing")?
            .iter()
            .filter_map(|x| x.as_str().map(|s| s.trim().to_string()))
            .filter(|s| !s.is_empty())
            .collect();
        if (3..=12).contains(&items.len()) {
            Ok(items)
        } else {
            Err(format!("{} plan items, want 3 to 12", items.len()))
        }
    }
    fn fallback(&self) -> Vec<String> {
        vec![
            format!("wake up and complete the morning routine at {}:00 am", self.wake_hour),
            "have lunch at 12:00 pm".into(),
            "have dinner at 6:00 pm".into(),
            "get ready for bed at 10:00 pm".into(),
        ]
    }
}

/// Split "1) foo. 2) bar." into ["foo.", "bar."].
pub fn numbered_items(text: &str) -> Vec<String> {
    let re = regex::Regex::new(r"\d+\)\s*").expect("static regex");
    // Text before "1)" is a lead-in ("John Lin typically"), not an item.
    re.split(text).skip(1).map(str::trim).filter(|s| s.len() > 3).map(str::to_string).collect()
}

/// One activity for each hour of the day.
pub struct HourlySchedule<'a> {
    pub profile: &'a Profile,
    pub date: String,
    pub wake_hour: u32,
    pub plan: &'a [String],
}

pub fn hour_label(h: u32) -> String {
    format!("{:02}:00", h)
}

impl Task for HourlySchedule<'_> {
    type Output = Vec<String>;
    fn name(&self) -> &'static str {
        "hourly_schedule"
    }
    fn role(&self) -> Role {
        Role::User
    }
    fn schema(&self) -> Value {
        let hours: Vec<String> = (0..24).map(hour_label).collect();
        let entry = object_schema(&[("hour", json!({"type": "string", "enum": hours})), ("activity", text_schema(48))]);
        object_schema(&[("schedule", json!({"type": "array", "items": entry, "minItems": 24, "maxItems": 24}))])
    }
    fn messages(&self) -> Vec<Message> {
        vec![
            system(self.profile),
            Message::user(format!(
                "Today is {}. Your outline for the day:\n{}\n\nTurn it into a definite schedule for all 24 hours, from 00:00 to 23:00, everything at home (the garden counts). You are asleep before {}. Name one concrete activity per hour, no alternatives and no \"maybe\".\nReply as {{\"schedule\": [{{\"hour\": \"00:00\", \"activity\": \"sleeping\"}}, ...]}} with exactly 24 entries.",
                self.date,
                self.plan.iter().enumerate().map(|(i, p)| format!("{}) {p}", i + 1)).collect::<Vec<_>>().join("\n"),
                hour_label(self.wake_hour)
            )),
        ]
    }
    fn parse(&self, reply: &str) -> Result<Vec<String>, String> {
        let v = extract_json(reply).ok_or("no JSON object")?;
        let list = json_list(&v, "schedule").ok_or("`schedule` list missing")?;
        let mut hours: Vec<Option<String>> = vec![None; 24];
        // A full list is in hour order (the schema asks for exactly that): its position is the
        // hour, whatever label a small model wrote beside it.
        let by_position = list.len() == 24;
        for (i, e) in list.iter().enumerate() {
            let (h, act) = match e {
                Value::String(s) => (i as u32, s.clone()),
                Value::Object(_) => {
                    let h = json_str(e, "hour")
                        .and_then(|h| h.split(':').next().and_then(|x| x.trim().parse::<u32>().ok()))
                        .filter(|_| !by_position)
                        .unwrap_or(i as u32);
                    (h, json_str(e, "activity").ok_or("entry without activity")?)
                }
                _ => return Err("schedule entry is neither text nor object".into()),
            };
            let act = act.trim().trim_end_matches('.').to_string();
            if h < 24 && !act.is_empty() {
                hours[h as usize] = Some(act);
            }
        }
        let missing = hours.iter().filter(|h| h.is_none()).count();
        if missing > 0 {
            return Err(format!("{missing} hours without an activity"));
        }
        Ok(hours.into_iter().map(|h| h.unwrap_or_default()).collect())
    }
    fn fallback(&self) -> Vec<String> {
        (0..24)
            .map(|h| match h {
                h if h < self.wake_hour || h >= 23 => "sleeping".to_string(),
                h if h == self.wake_hour => "morning routine".into(),
                12 => "having lunch".into(),
                18 => "having dinner".into(),
                _ => "relaxing at home".into(),
            })
            .collect()
    }
}

/// "make breakfast at 8:00 am" → "make breakfast".
pub fn strip_time(s: &str) -> String {
    let re = regex::Regex::new(r"(?i)\s*(at|around|by)?\s*\d{1,2}(:\d\d)?\s*(am|pm|a\.m\.|p\.m\.)?\s*$")
        .expect("static regex");
    re.replace(s.trim().trim_end_matches('.'), "").trim().to_string()
}

/// Break an hour block into 5–30 minute steps.
pub struct Decompose<'a> {
    pub profile: &'a Profile,
    pub activity: &'a str,
    pub start: String,
    pub minutes: u32,
}

impl Task for Decompose<'_> {
    type Output = Vec<(String, u32)>;
    fn name(&self) -> &'static str {
        "decompose"
    }
    fn role(&self) -> Role {
        Role::User
    }
    fn schema(&self) -> Value {
        let entry = object_schema(&[
            ("task", text_schema(60)),
            ("minutes", json!({"type": "integer", "minimum": 5, "maximum": self.minutes.clamp(5, 60)})),
        ]);
        let most = (self.minutes / 5).clamp(1, 12);
        object_schema(&[("subtasks", json!({"type": "array", "items": entry, "minItems": 1, "maxItems": most}))])
    }
    fn messages(&self) -> Vec<Message> {
        vec![
            system(self.profile),
            Message::user(format!(
                "From {} you will spend {} minutes on: {}. Break this into consecutive concrete steps of 5 to 30 minutes each (multiples of 5) that add up to {} minutes.\nReply as {{\"subtasks\": [{{\"task\": \"...\", \"minutes\": 15}}, ...]}}.",
                self.start, self.minutes, self.activity, self.minutes
            )),
        ]
    }
    fn parse(&self, reply: &str) -> Result<Vec<(String, u32)>, String> {
        let v = extract_json(reply).ok_or("no JSON object")?;
        let list = json_list(&v, "subtasks").ok_or("`subtasks` list missing")?;
        let mut out = Vec::new();
        for e in list {
            let t = json_str(&e, "task").ok_or("subtask without task")?.trim().trim_end_matches('.').to_string();
            let m: f64 =
                json_str(&e, "minutes").and_then(|m| m.trim().parse().ok()).ok_or("subtask without minutes")?;
            if t.is_empty() || !(1.0..=120.0).contains(&m) {
                return Err(format!("bad subtask `{t}` ({m} min)"));
            }
            out.push((t, ((m / 5.0).round() as u32).max(1) * 5));
        }
        if out.is_empty() {
            return Err("no subtasks".into());
        }
        Ok(fit_durations(out, self.minutes))
    }
    fn fallback(&self) -> Vec<(String, u32)> {
        vec![(self.activity.to_string(), self.minutes)]
    }
}

/// Make durations sum to `total`: trim from the end, or extend the last one.
pub fn fit_durations(mut v: Vec<(String, u32)>, total: u32) -> Vec<(String, u32)> {
    let mut sum: u32 = v.iter().map(|x| x.1).sum();
    while sum > total {
        let over = sum - total;
        let last = v.last_mut().expect("non-empty");
        if last.1 > over {
            last.1 -= over;
            sum = total;
        } else {
            sum -= last.1;
            v.pop();
        }
    }
    if sum < total {
        v.last_mut().expect("non-empty").1 += total - sum;
    }
    v
}

/// Pick one of the given options for an action (arena, then object).
pub struct ChoosePlace<'a> {
    pub profile: &'a Profile,
    pub action: &'a str,
    /// "area" or "object".
    pub what: &'static str,
    pub within: String,
    pub options: &'a [String],
}

impl Task for ChoosePlace<'_> {
    type Output = String;
    fn name(&self) -> &'static str {
        if self.what == "area" {
            "choose_area"
        } else {
            "choose_object"
        }
    }
    fn role(&self) -> Role {
        Role::User
    }
    fn schema(&self) -> Value {
        object_schema(&[("choice", json!({"type": "string", "enum": self.options}))])
    }
    fn messages(&self) -> Vec<Message> {
        vec![
            system(self.profile),
            Message::user(format!(
                "You are about to be {}. In {}, which {} is the best place for it? Choose exactly one of: {}.\nReply as {{\"choice\": \"...\"}}.",
                self.action,
                self.within,
                self.what,
                self.options.iter().map(|o| format!("\"{o}\"")).collect::<Vec<_>>().join(", ")
            )),
        ]
    }
    fn parse(&self, reply: &str) -> Result<String, String> {
        let v = extract_json(reply).ok_or("no JSON object")?;
        let c = json_str(&v, "choice").ok_or("`choice` missing")?;
        let c = c.trim().trim_matches('"');
        self.options
            .iter()
            .find(|o| o.eq_ignore_ascii_case(c))
            .cloned()
            .ok_or_else(|| format!("`{c}` is not one of the options"))
    }
    fn fallback(&self) -> String {
        keyword_place(self.action, self.options).unwrap_or_else(|| self.options.first().cloned().unwrap_or_default())
    }
}

/// Where an action most plausibly happens, by keywords (the scripted brain and the fallback).
pub fn keyword_place(action: &str, options: &[String]) -> Option<String> {
    const RULES: &[(&[&str], &[&str])] = &[
        (&["sleep", "asleep", "nap", "bed"], &["bed", "bedroom"]),
        (
            &["shower", "bath", "brush", "teeth", "wash", "toilet", "groom"],
            &["shower", "bathroom sink", "bathroom", "toilet"],
        ),
        (
            &["cook", "breakfast", "lunch", "dinner", "meal", "recipe", "kitchen", "eat", "snack", "coffee", "tea"],
            &["cooking area", "kitchen", "refrigerator", "common room table"],
        ),
        (&["garden", "plant", "water", "flower", "yard", "outside"], &["house garden", "garden"]),
        (&["read", "book", "shelf"], &["shelf", "common room"]),
        (
            &["work", "write", "journal", "sketch", "design", "study", "email", "computer", "plan"],
            &["desk", "common room table", "common room"],
        ),
        (&["dress", "clothes", "closet"], &["closet"]),
    ];
    let a = action.to_lowercase();
    for (keys, places) in RULES {
        if keys.iter().any(|k| a.contains(k)) {
            for p in *places {
                if let Some(o) = options.iter().find(|o| o.to_lowercase().contains(p)) {
                    return Some(o.clone());
                }
            }
        }
    }
    None
}

/// One to three emoji that show the action above the sprite.
pub struct Emoji<'a> {
    pub action: &'a str,
}

impl Task for Emoji<'_> {
    type Output = String;
    fn name(&self) -> &'static str {
        "emoji"
    }
    fn role(&self) -> Role {
        Role::User
    }
    fn schema(&self) -> Value {
        // Pictographs, symbols and dingbats, and the variation selector some emoji carry. Literal
        // characters rather than escapes, which every regex dialect reads alike.
        object_schema(&[(
            "emoji",
            json!({"type": "string", "pattern": "^[\u{1F300}-\u{1FAFF}\u{2600}-\u{27BF}\u{FE0F}]{1,3}$"}),
        )])
    }
    fn messages(&self) -> Vec<Message> {
        vec![Message::user(format!(
            "Give one to three emoji that show this action: \"{}\". Reply as {{\"emoji\": \"...\"}}.",
            self.action
        ))]
    }
    fn parse(&self, reply: &str) -> Result<String, String> {
        let v = extract_json(reply).ok_or("no JSON object")?;
        let e = json_str(&v, "emoji").ok_or("`emoji` missing")?.trim().to_string();
        if e.is_empty() || e.chars().count() > 8 || e.is_ascii() {
            return Err(format!("`{e}` is not a short emoji"));
        }
        Ok(e)
    }
    fn fallback(&self) -> String {
        "🙂".into()
    }
}

/// How memorable an event is, 1–10.
pub struct Poignancy<'a> {
    pub profile: &'a Profile,
    pub event: &'a str,
}

impl Task for Poignancy<'_> {
    type Output = u32;
    fn name(&self) -> &'static str {
        "poignancy"
    }
    fn role(&self) -> Role {
        Role::User
    }
    fn schema(&self) -> Value {
        object_schema(&[("poignancy", json!({"type": "integer", "minimum": 1, "maximum": 10}))])
    }
    fn messages(&self) -> Vec<Message> {
        vec![
            system(self.profile),
            Message::user(format!(
                "On a scale of 1 (mundane, like brushing teeth) to 10 (life-changing), how significant is this to you: \"{}\"? Reply as {{\"poignancy\": N}}.",
                self.event
            )),
        ]
    }
    fn parse(&self, reply: &str) -> Result<u32, String> {
        let v = extract_json(reply).ok_or("no JSON object")?;
        let n: f64 = json_str(&v, "poignancy").and_then(|s| s.trim().parse().ok()).ok_or("`poignancy` missing")?;
        if (1.0..=10.0).contains(&n) {
            Ok(n.round() as u32)
        } else {
            Err(format!("poignancy {n} outside 1..=10"))
        }
    }
    fn fallback(&self) -> u32 {
        4
    }
}

/// New day: a short status note from yesterday, kept apart from the seed's interests (the
/// original overwrote `current_interests` and `daily_plan_req`, drifting the evaluator's persona).
pub struct ReviseStatus<'a> {
    pub profile: &'a Profile,
    pub date: String,
    pub yesterday: &'a [String],
}

impl Task for ReviseStatus<'_> {
    type Output = String;
    fn name(&self) -> &'static str {
        "revise_status"
    }
    fn role(&self) -> Role {
        Role::User
    }
    fn schema(&self) -> Value {
        object_schema(&[("status", json!({"type": "string", "minLength": 10, "maxLength": 300}))])
    }
    fn messages(&self) -> Vec<Message> {
        vec![
            system(self.profile),
            Message::user(format!(
                "It is the morning of {}. Yesterday you did, in order: {}.\nIn two or three sentences in the first person, how are you doing and what do you want to carry over into today? Reply as {{\"status\": \"...\"}}.",
                self.date,
                self.yesterday.join("; ")
            )),
        ]
    }
    fn parse(&self, reply: &str) -> Result<String, String> {
        let v = extract_json(reply).ok_or("no JSON object")?;
        let s = json_str(&v, "status").ok_or("`status` missing")?.trim().to_string();
        if s.len() < 10 {
            Err("status too short".into())
        } else {
            Ok(s)
        }
    }
    fn fallback(&self) -> String {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fit() {
        let v = fit_durations(vec![("a".into(), 30), ("b".into(), 40)], 60);
        assert_eq!(v.iter().map(|x| x.1).sum::<u32>(), 60);
        let v = fit_durations(vec![("a".into(), 10)], 60);
        assert_eq!(v, vec![("a".to_string(), 60)]);
    }

    #[test]
    fn strip_time_and_items() {
        assert_eq!(strip_time("make breakfast at 8:00 am"), "make breakfast");
        assert_eq!(numbered_items("Ana typically 1) Foo. 2) Bar baz."), vec!["Foo.", "Bar baz."]);
    }

    #[test]
    fn place_keywords() {
        let opts: Vec<String> = ["closet", "desk", "bed"].map(String::from).to_vec();
        assert_eq!(keyword_place("sleeping", &opts).as_deref(), Some("bed"));
        assert_eq!(keyword_place("journaling thoughts", &opts).as_deref(), Some("desk"));
    }
}
