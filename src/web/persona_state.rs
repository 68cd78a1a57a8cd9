//! `GET /replay_persona_state/<sim>/<step>/<persona>/`: a persona's saved scratch and memories,
//! from `storage/` or else `compressed_storage/`. Node ids need not be contiguous.

use std::path::PathBuf;

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

/// Python-like display of a JSON value: `None`, `True`, strings bare at top level, lists and
/// dicts as their repr (`['sleeping', 360]`).
pub fn py_display(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => {
            format!("{{{}}}", o.iter().map(|(k, v)| format!("'{k}': {}", py_repr(v))).collect::<Vec<_>>().join(", "))
        }
    }
}

fn memory_dir(state: &AppState, sim: &str, name: &str) -> Result<PathBuf, WebError> {
    for root in [&state.opts.storage, &state.opts.compressed] {
        let p = root.join(sim).join("personas").join(name).join("bootstrap_memory");
        if p.is_dir() {
            return Ok(p);
        }
    }
    Err(WebError::not_found(format!(
        "no saved state for persona {name:?} in simulation {sim:?} (looked in storage and compressed storage)"
    )))
}

/// Nodes of `nodes.json` bucketed by type, newest (highest id) first.
pub fn bucket_nodes(nodes: &Map<String, Value>) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let mut all: Vec<(u64, &Value)> =
        nodes.iter().filter_map(|(k, v)| Some((k.strip_prefix("node_")?.parse().ok()?, v))).collect();
    all.sort_by_key(|n| std::cmp::Reverse(n.0));
    let (mut ev, mut chat, mut th) = (Vec::new(), Vec::new(), Vec::new());
    for (id, n) in all {
        let s = |k: &str| n.get(k).map(py_display).unwrap_or_default();
        let mut view = json!({"id": id, "created": s("created"), "description": s("description"), "depth": s("depth"), "evidence": n.get("filling").map(py_repr).unwrap_or_default()});
        match n.get("type").and_then(Value::as_str) {
            Some("event") => ev.push(view),
            Some("chat") => {
                let lines: Vec<Value> = n
                    .get("filling")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|p| match p.as_array().map(|x| x.as_slice()) {
                                Some([who, what]) => json!([py_display(who), py_display(what)]),
                                _ => json!(["", py_display(p)]),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                view["lines"] = Value::Array(lines);
                chat.push(view)
            }
            Some("thought") => th.push(view),
            _ => {}
        }
    }
    (ev, chat, th)
}

pub async fn persona_state(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath((sim, step, persona)): UrlPath<(String, String, String)>,
) -> Response {
    let r = (|| {
        let sim = validate::sim_code(&sim)?;
        let step = validate::url_step(&step)?;
        let name = persona.replace('_', " ");
        validate::persona_name(&name)?;
        let dir = memory_dir(&state, sim, &name)?;
        let scratch = match sim_files::read_json(&dir.join("scratch.json"))? {
            Some(Value::Object(m)) => m,
            _ => {
                return Err(WebError::not_found(format!(
                    "{} is missing or not an object",
                    dir.join("scratch.json").display()
                )))
            }
        };
        let mut rows: Vec<Value> =
            MAIN_KEYS.iter().filter_map(|k| Some(json!([k, py_display(scratch.get(*k)?)]))).collect();
        let lists = ["daily_req", "f_daily_schedule"];
        for (k, v) in &scratch {
            if !MAIN_KEYS.contains(&k.as_str()) && !lists.contains(&k.as_str()) {
                rows.push(json!([k, py_display(v)]));
            }
        }
        let list = |k: &str| -> Vec<String> {
            scratch.get(k).and_then(Value::as_array).map(|a| a.iter().map(py_display).collect()).unwrap_or_default()
        };
        let nodes = match sim_files::read_json(&dir.join("associative_memory/nodes.json"))? {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let (ev, chat, th) = bucket_nodes(&nodes);
        let back = headers
            .get(header::REFERER)
            .and_then(|v| v.to_str().ok())
            .filter(|r| r.starts_with("http://") || r.starts_with("https://") || r.starts_with('/'));
        let ctx = json!({
            "sim_code": sim, "step": step, "persona_name": name, "persona_name_underscore": name.replace(' ', "_"),
            "rows": rows, "daily_req": list("daily_req"), "f_daily_schedule": list("f_daily_schedule"),
            "a_mem_event": ev, "a_mem_chat": chat, "a_mem_thought": th, "back": back,
            "scripted_roles": sim_files::scripted_roles(&[&state.opts.storage, &state.opts.compressed], sim),
        });
        Ok(html(&state, "persona_state.html", &ctx))
    })();
    r.unwrap_or_else(|e| e.page(&state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_and_gaps() {
        assert_eq!(py_display(&json!(["sleeping", 360])), "['sleeping', 360]");
        assert_eq!(py_display(&Value::Null), "None");
        let nodes: Map<String, Value> = serde_json::from_str(r#"{"node_2": {"type": "event", "description": "b"}, "node_7": {"type": "thought", "description": "t"}, "node_10": {"type": "event", "description": "c"}, "node_3": {"type": "chat", "filling": [["A", "hi"]]}, "junk": {}}"#).unwrap();
        let (ev, chat, th) = bucket_nodes(&nodes);
        assert_eq!(ev.iter().map(|n| n["id"].as_u64().unwrap()).collect::<Vec<_>>(), vec![10, 2]);
        assert_eq!(chat[0]["lines"], json!([["A", "hi"]]));
        assert_eq!(th.len(), 1);
    }
}
