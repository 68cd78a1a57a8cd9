//! The HTML pages: `simulator_home` (live run), replay, the path tester, and the favicon.

use axum::extract::{Path as UrlPath, State};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::error::{PageError, WebError};
use super::sim_files::{self, StartPoint};
use super::{validate, AppState};

/// `GET /favicon.ico`: browsers ask for it whatever the page links; it is our logo, wherever
/// `/static/` is served from.
pub async fn favicon() -> Response {
    use axum::http::{header, StatusCode};
    (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, "/static/img/propersim.svg")]).into_response()
}

/// `GET /path_tester/`.
pub async fn path_tester(State(state): State<AppState>) -> Response {
    html(&state, "path_tester.html", &json!({"phaser": phaser_vars(&state)}))
}

/// What `_phaser.html` needs: the URL to load Phaser from, and when our own copy is missing,
/// the notice saying how to get one.
pub fn phaser_vars(state: &AppState) -> Value {
    json!({
        "url": state.opts.phaser_src(),
        "problem": state.opts.phaser_problem(),
        "help": format!(
            "Run `npm ci` in the web root (node_modules/phaser), pass --phaser-path FILE, or --phaser-url {}.",
            super::CDN_PHASER_URL
        ),
    })
}

/// `GET /static/js/phaser.min.js`: the configured Phaser file, read on each request.
pub async fn phaser(State(state): State<AppState>) -> Response {
    use axum::http::{header, StatusCode};
    match tokio::fs::read(&state.opts.phaser_file).await {
        Ok(body) => {
            ([(header::CONTENT_TYPE, "text/javascript"), (header::CACHE_CONTROL, "max-age=3600")], body).into_response()
        }
        Err(_) => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            state.opts.phaser_problem().unwrap_or_else(|| "Phaser is not served here".into()),
        )
            .into_response(),
    }
}

/// `GET /simulator_home`: the live run. With an in-process engine the sim and step come from it
/// (refresh-safe). Without one, from the temp_storage handshake like the original, except that
/// `curr_step.json` is read but never deleted, and the page resumes after the last movement file.
pub async fn simulator_home(State(state): State<AppState>) -> Result<Response, PageError> {
    let (sim, step, paused) = match &state.live {
        Some(live) => (live.sim_code(), live.current_step(), live.paused()),
        None => {
            let temp = &state.opts.temp_storage;
            let Some(step_file) = sim_files::read_json(&temp.join("curr_step.json")).ok().flatten() else {
                return Ok(html(&state, "start_backend.html", &json!({})));
            };
            let sim_file = sim_files::read_json(&temp.join("curr_sim_code.json"))?.ok_or_else(|| {
                WebError::not_found("temp_storage/curr_sim_code.json is missing; start the backend first")
            })?;
            let sim = sim_file
                .get("sim_code")
                .and_then(Value::as_str)
                .ok_or_else(|| WebError::internal("curr_sim_code.json has no \"sim_code\""))?;
            let step = validate::json_step(step_file.get("step"))?;
            let dir = sim_files::sim_dir(&state.opts.storage, sim)?;
            (sim.to_string(), sim_files::resume_step(&dir, step), false)
        }
    };
    home_page(&state, "simulate", &sim, step, paused)
}

/// `GET /replay/<sim>/<step>/`: plays recorded movement files; never writes to storage.
pub async fn replay(
    State(state): State<AppState>,
    UrlPath((sim, step)): UrlPath<(String, String)>,
) -> Result<Response, PageError> {
    let step = validate::url_step(&step)?;
    home_page(&state, "replay", &sim, step, false)
}

fn home_page(state: &AppState, mode: &str, sim: &str, step: u64, paused: bool) -> Result<Response, PageError> {
    let dir = sim_files::sim_dir(&state.opts.storage, sim)?;
    let meta = sim_files::meta(&dir)?;
    let names = sim_files::persona_names(&dir, &meta);
    if names.is_empty() {
        return Err(WebError::not_found(format!("simulation {sim:?} has no personas")).into());
    }
    let StartPoint { phase, positions } = sim_files::start_point(&dir, step)?;
    let personas = persona_entries(state, &names, &positions);
    let assistant = sim_files::assistant_name(&names);
    let movements = sim_files::numbered_files(&dir.join("movement"));
    // The step before the start, so a reloaded page shows the current actions, clock and suggestion at once.
    let previous = match step.checked_sub(1) {
        Some(p) => sim_files::read_json(&dir.join(format!("movement/{p}.json"))).ok().flatten(),
        None => None,
    };
    let curr_time = previous.as_ref().and_then(|m| m.pointer("/meta/curr_time")).or(meta.get("curr_time")).cloned();
    let config = json!({
        "mode": mode,
        "sim_code": sim,
        "step": step,
        "start_phase": if mode == "replay" { "update" } else { phase },
        "personas": personas,
        "assistant": assistant,
        "paused": paused,
        "first_step": movements.first(),
        "last_step": movements.last(),
        "no_recommendation": crate::suggestion::NO_REC,
        "scores": sim_files::todays_scores(&dir, step, &assistant),
        "curr_time": curr_time,
        "previous": previous,
        "urls": {"update": "/update_environment/", "process": "/process_environment/", "control": "/live_control/"},
    });
    let ctx = json!({
        "mode": mode, "sim_code": sim, "step": step, "personas": personas, "assistant": assistant,
        "phaser": phaser_vars(state), "config": config,
        "scripted_roles": sim_files::scripted_roles(&[&state.opts.storage], sim),
    });
    Ok(html(state, "home.html", &ctx))
}

/// `[{name, underscore, x, y, sprite, initials}]` for the template and the script.
pub fn persona_entries(state: &AppState, names: &[String], positions: &Map<String, Value>) -> Vec<Value> {
    names
        .iter()
        .map(|n| {
            let u = n.replace(' ', "_");
            let t = positions.get(n);
            let x = t.and_then(|t| t.get(0)).cloned().unwrap_or(Value::Null);
            let y = t.and_then(|t| t.get(1)).cloned().unwrap_or(Value::Null);
            json!({"name": n, "underscore": u, "x": x, "y": y, "sprite": sim_files::sprite_for(&state.opts.assets, &u), "initials": sim_files::initials(n)})
        })
        .collect()
}

/// Render a template into a 200 page, or the error page.
pub fn html(state: &AppState, name: &str, ctx: &Value) -> Response {
    match state.render.render(name, ctx) {
        Ok(body) => Html(body).into_response(),
        Err(e) => WebError::internal(format!("{e:#}")).page(state),
    }
}
