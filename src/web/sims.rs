//! The sims in a storage folder, for the landing page, and one sim's metrics page
//! (`/metrics/<sim>/`: the per-day table and chart of `propersim report`, computed from the files
//! on each request by `report` itself and never written).

use std::path::Path;
use std::time::SystemTime;

use axum::extract::{Path as UrlPath, State};
use axum::response::Response;
use serde::Serialize;
use serde_json::{json, Value};

use super::error::WebError;
use super::pages::html;
use super::{sim_files, AppState};
use crate::report;

/// The file that makes a folder under `storage/` a sim (a seed too: a seed is a sim at step 0).
const SIM_MARKER: &str = "reverie/meta.json";

/// How many steps before the end the landing page's "recent steps" replay link starts.
const RECENT_STEPS: u64 = 20;

/// What the landing page shows of one sim.
#[derive(Debug, Serialize)]
pub struct SimSummary {
    pub name: String,
    /// First and last step with a movement file; `None` when the sim has not run a step.
    pub first_step: Option<u64>,
    pub last_step: Option<u64>,
    /// Movement files (steps computed).
    pub steps: usize,
    /// The simulated time of the last step (else `meta.json`'s).
    pub curr_time: Option<String>,
    /// Where the replay link starts: the assistant's first turn (before it the user sleeps and
    /// nothing happens), else the first step.
    pub replay_step: Option<u64>,
    /// Whether `replay_step` is the assistant's first turn.
    pub replay_from_first_turn: bool,
    /// Where a replay of the last steps starts.
    pub recent_step: Option<u64>,
    /// The step whose state pages show the latest state (the one after the last movement).
    pub state_step: u64,
    /// `[{name, underscore}]` of the sim's personas.
    pub personas: Vec<Value>,
    /// Whether `compress` has written the demo's copy.
    pub compressed: bool,
    #[serde(skip)]
    modified: SystemTime,
}

/// The step of the assistant's first turn: the first line of `records.jsonl` (one line per
/// evaluated step, in step order), read alone so a long run costs no more than a short one.
fn first_turn(dir: &Path) -> Option<u64> {
    use std::io::{BufRead, Read};
    let f = std::fs::File::open(dir.join("records.jsonl")).ok()?;
    let mut line = String::new();
    std::io::BufReader::new(f.take(1 << 20)).read_line(&mut line).ok()?;
    serde_json::from_str::<Value>(&line).ok()?.get("step")?.as_u64()
}

fn modified(p: &Path) -> SystemTime {
    std::fs::metadata(p).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Every sim under `storage` (folders holding `reverie/meta.json`), most recently changed first
/// (a step adds to `movement/`, a save rewrites `meta.json`; whichever is later counts).
pub fn list_sims(storage: &Path, compressed: &Path) -> anyhow::Result<Vec<SimSummary>> {
    let mut out = Vec::new();
    for name in crate::storage::folders_holding(storage, SIM_MARKER)? {
        let dir = storage.join(&name);
        let meta = sim_files::meta(&dir).unwrap_or_default();
        let steps = sim_files::numbered_files(&dir.join("movement"));
        let (first_step, last_step) = (steps.first().copied(), steps.last().copied());
        let curr_time = last_step
            .and_then(|s| sim_files::read_json(&dir.join(format!("movement/{s}.json"))).ok().flatten())
            .and_then(|m| m.pointer("/meta/curr_time").and_then(Value::as_str).map(str::to_string))
            .or_else(|| meta.get("curr_time").and_then(Value::as_str).map(str::to_string));
        let personas = sim_files::persona_names(&dir, &meta)
            .into_iter()
            .map(|n| json!({"underscore": n.replace(' ', "_"), "name": n}))
            .collect();
        let fork_step = meta.get("step").and_then(Value::as_u64).unwrap_or(0);
        let turn =
            first_turn(&dir).filter(|t| first_step.is_some_and(|f| f <= *t) && last_step.is_some_and(|l| *t <= l));
        out.push(SimSummary {
            first_step,
            last_step,
            steps: steps.len(),
            curr_time,
            replay_step: turn.or(first_step),
            replay_from_first_turn: turn.is_some(),
            recent_step: last_step.map(|l| l.saturating_sub(RECENT_STEPS).max(first_step.unwrap_or(0))),
            state_step: last_step.map_or(fork_step, |l| l + 1),
            personas,
            compressed: compressed.join(&name).join("master_movement.json").is_file(),
            modified: modified(&dir.join(SIM_MARKER)).max(modified(&dir.join("movement"))),
            name,
        });
    }
    out.sort_by(|a, b| b.modified.cmp(&a.modified).then_with(|| a.name.cmp(&b.name)));
    Ok(out)
}

/// `GET /`: the landing page, with the sims of this storage folder and links to each one's
/// replay, demo, metrics and persona state.
pub async fn landing(State(state): State<AppState>) -> Response {
    landing_page(&state).await.unwrap_or_else(|e| e.page(&state))
}

async fn landing_page(state: &AppState) -> Result<Response, WebError> {
    let (storage, compressed) = (state.opts.storage.clone(), state.opts.compressed.clone());
    let (sims, sweeps, experiments) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        Ok((
            list_sims(&storage, &compressed)?,
            crate::storage::sweep::list(&storage)?.len(),
            crate::storage::experiment::list(&storage)?.len(),
        ))
    })
    .await
    .map_err(|e| WebError::internal(e.to_string()))??;
    // Seeds and sims that have not run a step have nothing to replay: listed apart, by name.
    let (run, mut not_started): (Vec<SimSummary>, Vec<SimSummary>) =
        sims.into_iter().partition(|s| s.last_step.is_some());
    not_started.sort_by(|a, b| a.name.cmp(&b.name));
    let ctx = json!({
        "live_sim": state.live.as_ref().map(|l| l.sim_code()),
        "sims": run,
        "not_started": not_started.iter().map(|s| &s.name).collect::<Vec<_>>(),
        "sweeps": sweeps,
        "experiments": experiments,
    });
    Ok(html(state, "landing.html", &ctx))
}

/// `GET /metrics/<sim>/`: the sim's per-day metrics table and chart.
pub async fn metrics(State(state): State<AppState>, UrlPath(sim): UrlPath<String>) -> Response {
    metrics_page(&state, &sim).await.unwrap_or_else(|e| e.page(&state))
}

async fn metrics_page(state: &AppState, sim: &str) -> Result<Response, WebError> {
    let dir = sim_files::sim_dir(&state.opts.storage, sim)?;
    let steps = sim_files::numbered_files(&dir.join("movement"));
    if steps.is_empty() {
        return Err(WebError::not_found(format!(
            "simulation {sim:?} has no movement files yet (no step has run), so there is nothing to measure"
        )));
    }
    let (storage, name) = (state.opts.storage.clone(), sim.to_string());
    // Reading every movement file is slow blocking work: keep it off the async workers.
    let days = tokio::task::spawn_blocking(move || report::report(&storage, &name))
        .await
        .map_err(|e| WebError::internal(e.to_string()))??;
    let (header, rows) = report::table::table_cells(&days);
    let ctx = json!({
        "sim_code": sim,
        "first_step": steps.first(),
        "steps": steps.len(),
        "header": header,
        "rows": rows,
        "svg": report::render_svg(sim, &days),
        "scripted_roles": sim_files::scripted_roles(&[&state.opts.storage], sim),
    });
    Ok(html(state, "metrics.html", &ctx))
}
