//! `GET /demo/<sim>/<step>/<speed>/`: plays a compressed run (`compressed_storage/<sim>/`, see
//! storage::compress) in the browser with no further requests.

use axum::extract::{Path as UrlPath, State};
use axum::response::Response;
use chrono::NaiveDate;
use serde_json::{json, Map, Value};

use super::error::{PageError, WebError};
use super::pages::{html, persona_entries};
use super::{sim_files, validate, AppState};

/// The original's speed levels: "1".."6" → 1,2,4,8,16,32 px per frame; anything else → 2.
pub fn play_speed(s: &str) -> u32 {
    match s {
        "1" => 1,
        "2" => 2,
        "3" => 4,
        "4" => 8,
        "5" => 16,
        "6" => 32,
        _ => 2,
    }
}

/// `start_date` ("February 13, 2025") at midnight plus `step * sec_per_step`, as `YYYY-MM-DDTHH:MM:SS`.
pub fn start_datetime(start_date: &str, step: u64, sec_per_step: u64) -> Result<String, WebError> {
    let day = NaiveDate::parse_from_str(start_date.trim(), "%B %d, %Y").map_err(|e| {
        WebError::internal(format!("meta.json start_date {start_date:?} is not like \"February 13, 2025\": {e}"))
    })?;
    let secs = step
        .checked_mul(sec_per_step)
        .and_then(|s| i64::try_from(s).ok())
        .ok_or_else(|| WebError::bad_request("step too large"))?;
    let t = day
        .and_hms_opt(0, 0, 0)
        .and_then(|t| t.checked_add_signed(chrono::Duration::try_seconds(secs)?))
        .ok_or_else(|| WebError::bad_request("step too large"))?;
    Ok(t.format("%Y-%m-%dT%H:%M:%S").to_string())
}

/// The steps of `master_movement.json` in numeric order.
fn numeric_steps(master: &Map<String, Value>) -> Vec<(u64, &Map<String, Value>)> {
    let mut v: Vec<(u64, &Map<String, Value>)> =
        master.iter().filter_map(|(k, v)| Some((k.parse().ok()?, v.as_object()?))).collect();
    v.sort_by_key(|(k, _)| *k);
    v
}

/// A JSON object.
pub type Obj = Map<String, Value>;

/// `(init, all_movement)`: the carried-forward state of every persona at `step` (first-seen
/// persona order, not the original's hash order) and `{step: init, later steps…}`.
pub fn demo_movement(master: &Obj, step: u64) -> Result<(Obj, Obj), WebError> {
    let steps = numeric_steps(master);
    let Some(last) = steps.last().map(|(k, _)| *k) else {
        return Err(WebError::not_found("master_movement.json has no steps"));
    };
    if step > last {
        return Err(WebError::not_found(format!("step {step} is past the end of this run (last step {last})")));
    }
    let mut init = Map::new();
    let mut all = Map::new();
    for (k, personas) in &steps {
        if *k <= step {
            for (name, entry) in *personas {
                init.insert(name.clone(), entry.clone());
            }
        } else {
            if all.is_empty() {
                all.insert(step.to_string(), Value::Object(init.clone()));
            }
            all.insert(k.to_string(), Value::Object((*personas).clone()));
        }
    }
    if all.is_empty() {
        all.insert(step.to_string(), Value::Object(init.clone()));
    }
    Ok((init, all))
}

/// A 404 for a demo whose compressed copy is missing or incomplete, naming the command that
/// writes it.
fn not_compressed(sim: &str, what: &str) -> WebError {
    WebError::not_found(format!(
        "the demo plays a compressed copy of a run, and compressed_storage/{sim} {what}: run `propersim compress {sim}` first, then reload"
    ))
}

/// `compressed_storage/<sim>`; when only `storage/<sim>` exists, the 404 says how to make the
/// compressed copy.
fn compressed_dir(state: &AppState, sim: &str) -> Result<std::path::PathBuf, WebError> {
    match sim_files::sim_dir(&state.opts.compressed, sim) {
        Err(e) if e.status == axum::http::StatusCode::NOT_FOUND && state.opts.storage.join(sim).is_dir() => {
            Err(not_compressed(sim, "does not exist"))
        }
        other => other,
    }
}

pub async fn demo(
    State(state): State<AppState>,
    UrlPath((sim, step, speed)): UrlPath<(String, String, String)>,
) -> Result<Response, PageError> {
    let step = validate::url_step(&step)?;
    let speed = play_speed(&speed);
    let dir = compressed_dir(&state, &sim)?;
    let meta = match sim_files::read_json(&dir.join("meta.json"))? {
        Some(Value::Object(m)) => m,
        _ => return Err(not_compressed(&sim, "has no meta.json").into()),
    };
    let master = match sim_files::read_json(&dir.join("master_movement.json"))? {
        Some(Value::Object(m)) => m,
        _ => return Err(not_compressed(&sim, "has no master_movement.json").into()),
    };
    let sec_per_step = meta.get("sec_per_step").and_then(Value::as_u64).unwrap_or(10);
    let start_date = meta
        .get("start_date")
        .and_then(Value::as_str)
        .ok_or_else(|| WebError::internal("meta.json has no start_date"))?;
    let start = start_datetime(start_date, step, sec_per_step)?;
    let (init, all) = demo_movement(&master, step)?;
    // The assistant's suggestions and scores, if the compressor kept them (assistant.json).
    let log = sim_files::read_json(&dir.join("assistant.json")).ok().flatten().unwrap_or(Value::Null);
    let assistant_log: Map<String, Value> = log
        .get("steps")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.parse::<u64>().is_ok_and(|k| k >= step))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let names: Vec<String> = init.keys().filter(|n| validate::is_listable_name(n)).cloned().collect();
    let positions: Map<String, Value> =
        init.iter().filter_map(|(n, e)| Some((n.clone(), e.get("movement")?.clone()))).collect();
    let personas = persona_entries(&state, &names, &positions);
    let assistant = log
        .get("persona")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| sim_files::assistant_name(&names));
    let last_step = numeric_steps(&master).last().map(|(k, _)| *k);
    let config = json!({
        "mode": "demo", "sim_code": sim, "step": step, "start_phase": "update", "personas": personas,
        "assistant": assistant, "paused": false, "last_step": last_step, "scores": [],
        "play_speed": speed, "sec_per_step": sec_per_step, "start_datetime": start, "all_movement": all,
        "assistant_log": assistant_log, "no_recommendation": crate::suggestion::NO_REC,
    });
    let ctx = json!({
        "mode": "demo", "sim_code": sim, "step": step, "personas": personas, "assistant": assistant,
        "play_speed": speed, "sec_per_step": sec_per_step, "start_datetime": start,
        "phaser": super::pages::phaser_vars(&state), "config": config,
        "scripted_roles": sim_files::scripted_roles(&[&state.opts.compressed, &state.opts.storage], &sim),
    });
    Ok(html(&state, "demo.html", &ctx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_and_dates() {
        assert_eq!(play_speed("3"), 4);
        assert_eq!(play_speed("0"), 2);
        assert_eq!(play_speed("x"), 2);
        assert_eq!(start_datetime("February 13, 2025", 3, 150).unwrap(), "2025-02-13T00:07:30");
        assert!(start_datetime("13/02/2025", 0, 150).is_err());
    }

    #[test]
    fn carries_state_forward() {
        let m: Map<String, Value> = serde_json::from_str(r#"{"0": {"A": {"movement": [1,1]}, "B": {"movement": [2,2]}}, "1": {"A": {"movement": [1,2]}}, "2": {}, "3": {"B": {"movement": [3,3]}}}"#).unwrap();
        let (init, all) = demo_movement(&m, 1).unwrap();
        assert_eq!(init["A"]["movement"], json!([1, 2]));
        assert_eq!(init["B"]["movement"], json!([2, 2]));
        assert_eq!(all.keys().collect::<Vec<_>>(), vec!["1", "2", "3"]);
        assert!(demo_movement(&m, 4).is_err());
    }
}
