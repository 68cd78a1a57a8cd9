//! `GET /replay_persona_state/<sim>/<step>/<persona>/`: a persona's state as of a step, as far as
//! the files allow, from `storage/` or else `compressed_storage/`.
//!
//! A run saves persona folders (`bootstrap_memory/`) at each day's end and on exit, not per step,
//! so the scratch shown is the latest saved one and the page says so when that is not the step
//! asked for. What is known per step is shown per step: what the persona was doing (the movement
//! file of the step before), the user's engine state when `state/checkpoint-<step>.json` is still
//! there, and the associative memory without the nodes created from that step on. Values are
//! shown as text and lists, not as Python reprs. Node ids need not be contiguous.

use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::error::WebError;
use super::pages::html;
use super::{sim_files, validate, AppState};

/// Scratch keys shown first, in this order; the rest follow in file order.
const MAIN_KEYS: &[&str] = &[
    "first_name",
    "last_name",
    "age",
    "curr_time",
    "curr_tile",
    "vision_r",
    "att_bandwidth",
    "retention",
    "big_five_personality_traits",
    "background",
    "current_interests",
    "lifestyle",
    "long_term_goals",
    "living_area",
    "act_address",
    "act_start_time",
    "act_duration",
    "act_description",
    "act_pronunciatio",
    "suggestion",
    "user_action_for_suggestion",
    "suggestion_eval_result",
];

/// `(sim folder, bootstrap_memory folder)` of a persona: `storage/<sim>` first, else the
/// compressed copy.
fn memory_dir(state: &AppState, sim: &str, name: &str) -> Result<(PathBuf, PathBuf), WebError> {
    for root in [&state.opts.storage, &state.opts.compressed] {
        let p = root.join(sim).join("personas").join(name).join("bootstrap_memory");
        if p.is_dir() {
            return Ok((root.join(sim), p));
        }
    }
    Err(WebError::not_found(format!(
        "no saved state for persona {name:?} in simulation {sim:?} (looked in storage and compressed storage)"
    )))
}

/// A value as text: strings as they are, `null` as "none", booleans as yes/no, lists joined with
/// commas, objects as `key: value` pairs.
pub fn inline(v: &Value) -> String {
    match v {
        Value::Null => "none".into(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(Value::is_null) => "none".into(),
        Value::Array(a) => a.iter().map(inline).collect::<Vec<_>>().join(", "),
        Value::Object(o) if o.is_empty() => "none".into(),
        Value::Object(o) => o.iter().map(|(k, v)| format!("{k}: {}", inline(v))).collect::<Vec<_>>().join("; "),
    }
}

/// `[[activity, minutes], …]` (a day's schedule) as `HH:MM–HH:MM activity` lines, starting at
/// midnight; `None` when the list is not of that shape.
fn schedule_lines(a: &[Value]) -> Option<Vec<String>> {
    let hhmm = |m: u64| format!("{:02}:{:02}", (m / 60) % 24, m % 60);
    let mut at = 0u64;
    a.iter()
        .map(|e| {
            let [what, minutes] = e.as_array()?.as_slice() else { return None };
            let minutes = minutes.as_u64()?;
            let line = format!("{}–{} {}", hhmm(at), hhmm(at + minutes), what.as_str()?);
            at += minutes;
            Some(line)
        })
        .collect()
}

/// A scratch value for the page: a string, or a list of strings (shown as a list). Events
/// (`act_event`: subject, predicate, object) read as a sentence, schedules get their times,
/// addresses read as places.
pub fn readable(key: &str, v: &Value) -> Value {
    match v {
        Value::Array(a) if key.ends_with("_event") => {
            let words: Vec<String> = a.iter().filter(|w| !w.is_null()).map(inline).collect();
            Value::String(if words.is_empty() { "none".into() } else { words.join(" ") })
        }
        Value::Array(a) if a.is_empty() => Value::String("none".into()),
        // A tile, a pair of numbers: one line.
        Value::Array(a) if a.iter().all(Value::is_number) => Value::String(inline(v)),
        Value::Array(a) => match schedule_lines(a) {
            Some(lines) => json!(lines),
            None if a.iter().all(Value::is_null) => Value::String("none".into()),
            None => json!(a.iter().map(inline).collect::<Vec<_>>()),
        },
        Value::Object(o) if !o.is_empty() => {
            json!(o.iter().map(|(k, v)| format!("{k}: {}", inline(v))).collect::<Vec<_>>())
        }
        Value::String(a) if key.ends_with("_address") || key == "living_area" => Value::String(readable_place(a)),
        other => Value::String(inline(other)),
    }
}

/// An action address as a place a person reads: `<persona> John Lin` (the assistant keeps to the
/// user) as "with John Lin", `the Ville:Lin family's house:kitchen` as "Lin family's house ›
/// kitchen". The live pages' script (`readablePlace` in game.js) follows the same rule.
pub fn readable_place(address: &str) -> String {
    let a = address.trim();
    if let Some(who) = a.strip_prefix("<persona>") {
        return format!("with {}", who.trim());
    }
    if a.starts_with("<waiting>") {
        return "waiting".into();
    }
    let parts: Vec<&str> = a.split(':').map(str::trim).filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [] => String::new(),
        [only] => only.to_string(),
        [_world, rest @ ..] => rest.join(" › "),
    }
}

/// `"February 13, 2025, 16:40:00"` (a movement's or scratch's `curr_time`).
fn parse_clock(t: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(t.trim(), "%B %d, %Y, %H:%M:%S").ok()
}

/// The simulated time at which `step` starts: its movement file's clock, else the sim's start
/// date plus `step` steps (as the demo computes it).
fn step_time(sim_root: &Path, meta: &Map<String, Value>, step: u64) -> Option<NaiveDateTime> {
    let from_movement = sim_files::read_json(&sim_root.join(format!("movement/{step}.json")))
        .ok()
        .flatten()
        .and_then(|m| m.pointer("/meta/curr_time").and_then(Value::as_str).and_then(parse_clock));
    from_movement.or_else(|| {
        let start = meta.get("start_date")?.as_str()?;
        let sec = meta.get("sec_per_step").and_then(Value::as_u64).unwrap_or(150);
        let t = super::demo::start_datetime(start, step, sec).ok()?;
        NaiveDateTime::parse_from_str(&t, "%Y-%m-%dT%H:%M:%S").ok()
    })
}

/// Nodes of `nodes.json` bucketed by type, newest (highest id) first, leaving out those created
/// at or after `before` (nodes carry the clock of the step that made them). Returns the buckets
/// and how many nodes were left out.
pub fn bucket_nodes(nodes: &Map<String, Value>, before: Option<NaiveDateTime>) -> ([Vec<Value>; 3], usize) {
    let mut all: Vec<(u64, &Value)> =
        nodes.iter().filter_map(|(k, v)| Some((k.strip_prefix("node_")?.parse().ok()?, v))).collect();
    all.sort_by_key(|n| std::cmp::Reverse(n.0));
    let (mut ev, mut chat, mut th, mut later) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for (id, n) in all {
        let s = |k: &str| n.get(k).map(inline).unwrap_or_default();
        let created = n
            .get("created")
            .and_then(Value::as_str)
            .and_then(|c| NaiveDateTime::parse_from_str(c.trim(), "%Y-%m-%d %H:%M:%S").ok());
        if let (Some(before), Some(created)) = (before, created) {
            if created >= before {
                later += 1;
                continue;
            }
        }
        let mut view = json!({"id": id, "created": s("created"), "description": s("description"), "depth": s("depth")});
        match n.get("type").and_then(Value::as_str) {
            Some("event") => ev.push(view),
            Some("chat") => {
                let lines: Vec<Value> = n
                    .get("filling")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|p| match p.as_array().map(|x| x.as_slice()) {
                                Some([who, what]) => json!([inline(who), inline(what)]),
                                _ => json!(["", inline(p)]),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                view["lines"] = Value::Array(lines);
                chat.push(view)
            }
            Some("thought") => {
                view["evidence"] = Value::String(n.get("filling").map(inline).unwrap_or_default());
                th.push(view)
            }
            _ => {}
        }
    }
    ([ev, chat, th], later)
}

/// What the persona was doing when `step` began: the persona's entry of `movement/<step - 1>.json`.
fn doing_at(sim_root: &Path, step: u64, name: &str) -> Option<Value> {
    let mv = sim_files::read_json(&sim_root.join(format!("movement/{}.json", step.checked_sub(1)?))).ok()??;
    let e = mv.get("persona")?.get(name)?;
    let (act, place) = match e.get("description").and_then(Value::as_str) {
        Some(d) => d.split_once('@').map_or((d.trim(), ""), |(a, p)| (a.trim(), p.trim())),
        None => ("", ""),
    };
    let mut rows = vec![json!(["Time", inline(mv.pointer("/meta/curr_time").unwrap_or(&Value::Null))])];
    rows.push(json!(["Doing", act]));
    rows.push(json!(["Where", readable_place(place)]));
    if let Some(t) = e.get("movement") {
        rows.push(json!(["Tile", inline(t)]));
    }
    let suggestion = e.get("suggestion").and_then(Value::as_str).unwrap_or("").trim();
    if !suggestion.is_empty() {
        rows.push(json!(["Suggestion", suggestion]));
        for (label, key) in [
            ("User's response", "user_action_for_suggestion"),
            ("Score", "eval_res_score"),
            ("Reason", "eval_res_reason"),
        ] {
            rows.push(json!([label, e.get(key).map(inline).unwrap_or_default()]));
        }
    }
    Some(Value::Array(rows))
}

/// The user's engine state at the start of `step` from `state/checkpoint-<step>.json` (a run
/// keeps the last two), as rows; `None` when that checkpoint is gone or unreadable (the rest of
/// the page does not depend on it).
fn checkpoint_rows(sim_root: &Path, step: u64) -> Option<Vec<Value>> {
    let cp = sim_files::read_json(&sim_root.join(format!("state/checkpoint-{step}.json"))).ok()??;
    let user = cp.get("user")?;
    let mut rows = Vec::new();
    if let Some(a) = user.get("action").filter(|a| a.is_object()) {
        let get = |k: &str| a.get(k).map(inline).unwrap_or_default();
        rows.push(json!(["Doing", get("description")]));
        rows.push(json!(["Where", readable_place(&get("address"))]));
        rows.push(json!(["Since", format!("{} (for {} minutes)", get("start"), get("minutes"))]));
    }
    if let Some(t) = user.get("tile") {
        rows.push(json!(["Tile", inline(t)]));
    }
    if let Some(plan) = user.pointer("/day/plan") {
        rows.push(json!(["Today's plan", readable("plan", plan)]));
    }
    if let Some(done) = user.get("actions_today") {
        rows.push(json!(["Done today", readable("actions_today", done)]));
    }
    Some(rows)
}

pub async fn persona_state(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath((sim, step, persona)): UrlPath<(String, String, String)>,
) -> Response {
    persona_page(&state, &headers, &sim, &step, &persona).unwrap_or_else(|e| e.page(&state))
}

fn persona_page(
    state: &AppState,
    headers: &HeaderMap,
    sim: &str,
    step: &str,
    persona: &str,
) -> Result<Response, WebError> {
    let sim = validate::sim_code(sim)?;
    let step = validate::url_step(step)?;
    let name = persona.replace('_', " ");
    validate::persona_name(&name)?;
    let (sim_root, dir) = memory_dir(state, sim, &name)?;
    let scratch = match sim_files::read_json(&dir.join("scratch.json"))? {
        Some(Value::Object(m)) => m,
        _ => {
            return Err(WebError::not_found(format!(
                "{} is missing or not an object",
                dir.join("scratch.json").display()
            )))
        }
    };
    // storage/<sim>/reverie/meta.json, or the compressed copy's meta.json; saved with the personas.
    let meta = match sim_files::meta(&sim_root)? {
        m if !m.is_empty() => m,
        _ => match sim_files::read_json(&sim_root.join("meta.json"))? {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        },
    };
    let saved_step = meta.get("step").and_then(Value::as_u64);
    let saved_time = scratch.get("curr_time").and_then(Value::as_str).map(str::to_string);
    let at = step_time(&sim_root, &meta, step);

    let lists = ["daily_req", "f_daily_schedule"];
    let mut rows: Vec<Value> =
        MAIN_KEYS.iter().filter_map(|k| Some(json!([k, readable(k, scratch.get(*k)?)]))).collect();
    for (k, v) in &scratch {
        if !MAIN_KEYS.contains(&k.as_str()) && !lists.contains(&k.as_str()) {
            rows.push(json!([k, readable(k, v)]));
        }
    }
    let list = |k: &str| -> Value { scratch.get(k).map(|v| readable(k, v)).unwrap_or(json!([])) };
    let nodes = match sim_files::read_json(&dir.join("associative_memory/nodes.json"))? {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    // Nodes from the step asked for on are hidden only when the saved memory reaches past it.
    let cut = at.filter(|_| saved_step.is_none_or(|s| s > step));
    let ([ev, chat, th], later) = bucket_nodes(&nodes, cut);
    let back = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .filter(|r| r.starts_with("http://") || r.starts_with("https://") || r.starts_with('/'));
    let ctx = json!({
        "sim_code": sim, "step": step, "persona_name": name, "persona_name_underscore": name.replace(' ', "_"),
        "exact": saved_step == Some(step),
        "saved_step": saved_step, "saved_time": saved_time,
        "step_time": at.map(|t| t.format("%B %d, %Y, %H:%M:%S").to_string()),
        "doing": doing_at(&sim_root, step, &name),
        // Only the user's state is checkpointed; a late checkpoint is large, so read it only then.
        "checkpoint": is_user(&sim_root, &meta, &name).then(|| checkpoint_rows(&sim_root, step)).flatten(),
        "rows": rows, "daily_req": list("daily_req"), "f_daily_schedule": list("f_daily_schedule"),
        "a_mem_event": ev, "a_mem_chat": chat, "a_mem_thought": th, "later_nodes": later, "back": back,
        "scripted_roles": sim_files::scripted_roles(&[&state.opts.storage, &state.opts.compressed], sim),
    });
    Ok(html(state, "persona_state.html", &ctx))
}

/// Whether `name` is the sim's user (the engine's checkpoint holds the user's state only).
fn is_user(sim_root: &Path, meta: &Map<String, Value>, name: &str) -> bool {
    let names = sim_files::persona_names(sim_root, meta);
    names.iter().any(|n| n == name) && sim_files::assistant_name(&names) != name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_values() {
        assert_eq!(
            readable("f_daily_schedule", &json!([["sleeping", 420], ["breakfast", 30]])),
            json!(["00:00–07:00 sleeping", "07:00–07:30 breakfast"])
        );
        assert_eq!(readable("act_obj_event", &json!([null, null, null])), json!("none"));
        assert_eq!(readable("act_event", &json!(["John Lin", "is", "cooking"])), json!("John Lin is cooking"));
        assert_eq!(readable("chat", &Value::Null), json!("none"));
        assert_eq!(readable("lifestyle", &json!("I'm \"up\" early")), json!("I'm \"up\" early"));
        assert_eq!(readable("daily_req", &json!(["wake up", "work"])), json!(["wake up", "work"]));
        assert_eq!(readable("criteria", &json!({"Timing": "soon"})), json!(["Timing: soon"]));
        assert_eq!(readable("act_path_set", &json!(false)), json!("no"));
        assert_eq!(readable("curr_tile", &json!([7, 3])), json!("7, 3"));
        assert_eq!(readable("act_address", &json!("the Ville:house:kitchen")), json!("house › kitchen"));
    }

    #[test]
    fn places() {
        assert_eq!(readable_place("<persona> John Lin"), "with John Lin");
        assert_eq!(
            readable_place("the Ville:Lin family's house:kitchen:cooking area"),
            "Lin family's house › kitchen › cooking area"
        );
        assert_eq!(readable_place(""), "");
    }

    #[test]
    fn nodes_by_type_and_time() {
        let nodes: Map<String, Value> = serde_json::from_str(r#"{"node_2": {"type": "event", "description": "b", "created": "2025-02-13 00:00:00"}, "node_7": {"type": "thought", "description": "t", "filling": ["node_2"], "created": "2025-02-13 08:00:00"}, "node_10": {"type": "event", "description": "c", "created": "2025-02-13 09:00:00"}, "node_3": {"type": "chat", "filling": [["A", "hi"]]}, "junk": {}}"#).unwrap();
        let ([ev, chat, th], later) = bucket_nodes(&nodes, None);
        assert_eq!(ev.iter().map(|n| n["id"].as_u64().unwrap()).collect::<Vec<_>>(), vec![10, 2]);
        assert_eq!(chat[0]["lines"], json!([["A", "hi"]]));
        assert_eq!((th.len(), th[0]["evidence"].as_str(), later), (1, Some("node_2"), 0));
        let cut = NaiveDateTime::parse_from_str("2025-02-13 08:00:00", "%Y-%m-%d %H:%M:%S").ok();
        let ([ev, chat, th], later) = bucket_nodes(&nodes, cut);
        assert_eq!((ev.len(), chat.len(), th.len(), later), (1, 1, 0, 2), "undated nodes stay");
    }
}
