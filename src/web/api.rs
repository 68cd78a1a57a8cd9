//! The JSON endpoints of the browser loop (protocol.md §1.6–1.8), plus pause/play of a live run.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::error::WebError;
use super::sim_files;
use super::{validate, AppState};
use crate::sim::live::LiveSim;
use crate::storage::{pyjson, write_json_py};

/// A JSON reply in Python's `json.dumps` format (`", "`/`": "`, non-ASCII escaped), as Django's
/// `JsonResponse` wrote it.
fn py_json(v: &Value) -> Result<Response, WebError> {
    let s = pyjson::to_string_compact(v).map_err(|e| WebError::internal(format!("encoding reply: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], s).into_response())
}

fn received() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], "received").into_response()
}

/// The request's `"sim_code"`; a 400 when it is missing or not a string.
fn sim_code_of(req: &Map<String, Value>) -> Result<&str, WebError> {
    req.get("sim_code").and_then(Value::as_str).ok_or_else(|| WebError::bad_request("missing \"sim_code\" (a string)"))
}

/// `POST /process_environment/` `{"step", "sim_code", "environment"}`: write
/// `storage/<sim>/environment/<step>.json` (Python indent=2, atomically) and tell the live engine.
///
/// The environment must hold a tile `{"maze", "x", "y"}` on the map for every persona of the sim
/// and nothing else; anything else is a 400 with the reason, and no file is written, so the
/// engine keeps waiting for a good one instead of stalling on a bad one.
///
/// With a live engine, posts for any other sim or for a step other than the engine's next are
/// refused (409), so replay or stale tabs cannot rewrite files; the step just computed is
/// answered as received without writing (a page reloaded mid-step posts it). Without one, the file is written
/// as the original did, for an external backend (`reverie.py`), but only for the sim that
/// backend announced in `temp_storage/curr_sim_code.json` and only for the step it waits on
/// (the first without a movement file): every other sim is read-only, and no post can add
/// files past a sim's end.
pub async fn process_environment(State(state): State<AppState>, body: Bytes) -> Result<Response, WebError> {
    let req = validate::json_object(&body)?;
    let sim = sim_code_of(&req)?;
    let step = validate::json_step(req.get("step"))?;
    let env = match req.get("environment") {
        Some(Value::Object(m)) => m,
        _ => return Err(WebError::bad_request("missing \"environment\" (an object of persona tiles)")),
    };
    let dir = sim_files::sim_dir(&state.opts.storage, sim)?;
    match &state.live {
        Some(live) => {
            if live.sim_code() != sim {
                return Err(WebError::new(
                    StatusCode::CONFLICT,
                    format!("{sim:?} is not the running simulation; only {:?} accepts environments", live.sim_code()),
                ));
            }
            // The next step, or the one after while the engine is still finishing its
            // bookkeeping; anything older comes from a stale tab and would rewrite history.
            let next = live.current_step();
            // A page loaded while the engine was computing a step starts at that step and
            // posts it once the engine has moved on: the step is done, so the post is
            // answered as received and nothing is written (the page then finds its
            // movement file and goes on).
            if step.checked_add(1) == Some(next) && dir.join(format!("movement/{step}.json")).is_file() {
                return Ok(received());
            }
            if step < next || step > next.saturating_add(1) {
                return Err(WebError::new(
                    StatusCode::CONFLICT,
                    format!("step {step} is not the running simulation's next step ({next}); reload the page"),
                ));
            }
        }
        None => external_backend_waits_on(&state, sim, &dir, step)?,
    }
    let meta = sim_files::meta(&dir)?;
    validate::environment(env, &meta, state.map_size)?;
    write_json_py(&dir.join(format!("environment/{step}.json")), env)?;
    if let Some(live) = &state.live {
        live.environment_written(step);
    }
    Ok(received())
}

/// Without a live engine: whether an external backend runs `sim` and waits on `step`'s
/// environment (409 otherwise).
fn external_backend_waits_on(state: &AppState, sim: &str, dir: &std::path::Path, step: u64) -> Result<(), WebError> {
    let running = sim_files::read_json(&state.opts.temp_storage.join("curr_sim_code.json"))
        .ok()
        .flatten()
        .and_then(|v| v.get("sim_code").and_then(Value::as_str).map(str::to_string));
    if running.as_deref() != Some(sim) {
        return Err(WebError::new(
            StatusCode::CONFLICT,
            format!(
                "{sim:?} is read-only here: no backend is running it (temp_storage/curr_sim_code.json names {})",
                running.map(|r| format!("{r:?}")).unwrap_or_else(|| "none".into())
            ),
        ));
    }
    let movements = sim_files::numbered_files(&dir.join("movement"));
    let start = sim_files::meta(dir)?.get("step").and_then(Value::as_u64).unwrap_or(0);
    let next = movements.last().map_or(start, |&m| (m + 1).max(start));
    if step != next {
        return Err(WebError::new(
            StatusCode::CONFLICT,
            format!("step {step} is not the step the backend of {sim:?} waits on ({next}); reload the page"),
        ));
    }
    Ok(())
}

/// `POST /update_environment/` `{"step", "sim_code"}`: the movement file plus `"<step>": step`
/// (echoed with its JSON type), or `{"<step>": -1}` while it does not exist yet.
pub async fn update_environment(State(state): State<AppState>, body: Bytes) -> Result<Response, WebError> {
    let req = validate::json_object(&body)?;
    let sim = sim_code_of(&req)?;
    let step_value = req.get("step").cloned().unwrap_or(Value::Null);
    let step = validate::json_step(Some(&step_value))?;
    let dir = sim_files::sim_dir(&state.opts.storage, sim)?;
    match sim_files::read_json(&dir.join(format!("movement/{step}.json")))? {
        Some(Value::Object(mut m)) => {
            m.shift_remove("<step>");
            m.insert("<step>".into(), step_value);
            py_json(&Value::Object(m))
        }
        Some(_) => Err(WebError::internal(format!("movement/{step}.json is not a JSON object"))),
        None => py_json(&json!({"<step>": -1})),
    }
}

/// `POST /path_tester_update/` `{"camera": {...}}`: write `temp_storage/path_tester_env.json`.
pub async fn path_tester_update(State(state): State<AppState>, body: Bytes) -> Result<Response, WebError> {
    let req = validate::json_object(&body)?;
    let camera = match req.get("camera") {
        Some(c @ Value::Object(_)) => c,
        _ => return Err(WebError::bad_request("missing \"camera\" (an object)")),
    };
    write_json_py(&state.opts.temp_storage.join("path_tester_env.json"), camera)?;
    Ok(received())
}

/// What the in-process run is doing, as `(state, explanation)`. `paused` alone cannot say it: an
/// engine that is not paused still does nothing until a browser tab posts the environment of its
/// next step (the file handshake), so that wait is reported as such.
fn run_state(state: &AppState, live: &dyn LiveSim) -> (&'static str, String) {
    let step = live.current_step();
    if live.paused() {
        return ("paused", format!("paused before step {step}; press Play on the simulator page"));
    }
    let env = state.opts.storage.join(live.sim_code()).join(format!("environment/{step}.json"));
    if env.is_file() {
        ("computing", format!("computing step {step}"))
    } else {
        (
            "waiting_for_page",
            format!("waiting for a browser tab on /simulator_home to send the environment of step {step}"),
        )
    }
}

fn live_json(state: &AppState) -> Value {
    match &state.live {
        Some(l) => {
            let (run, message) = run_state(state, l.as_ref());
            json!({"live": true, "sim_code": l.sim_code(), "step": l.current_step(), "paused": l.paused(), "state": run, "message": message})
        }
        None => json!({"live": false}),
    }
}

/// `GET /live_control/`: `{"live", "sim_code", "step", "paused", "state", "message"}` of the
/// in-process run; `state` is `paused`, `waiting_for_page` or `computing`.
pub async fn live_state(State(state): State<AppState>) -> Response {
    axum::Json(live_json(&state)).into_response()
}

/// `POST /live_control/` `{"paused": bool}`: pause or resume the in-process run.
pub async fn live_control(State(state): State<AppState>, body: Bytes) -> Result<Response, WebError> {
    let req = validate::json_object(&body)?;
    let paused = req
        .get("paused")
        .and_then(Value::as_bool)
        .ok_or_else(|| WebError::bad_request("missing \"paused\" (true or false)"))?;
    let live = state.live.as_ref().ok_or_else(|| WebError::not_found("no simulation is running in this server"))?;
    live.set_paused(paused);
    Ok(axum::Json(live_json(&state)).into_response())
}
