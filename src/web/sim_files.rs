//! Reading a sim's folder (`storage/<sim>/`) for the pages: personas, numbered step files, where a
//! page should start, and today's evaluator scores. Missing or odd files give clear errors or are
//! skipped; nothing here trusts a name it did not validate.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::error::WebError;
use super::validate;
use crate::storage::sim::assistant_persona;

/// `root/<sim>` if it is a folder; 404 with a message otherwise.
pub fn sim_dir(root: &Path, sim: &str) -> Result<PathBuf, WebError> {
    let sim = validate::sim_code(sim)?;
    let dir = root.join(sim);
    if !dir.is_dir() {
        return Err(WebError::not_found(format!("no simulation named {sim:?} in {}", root.display())));
    }
    Ok(dir)
}

/// The chat roles the scripted brain answered in sim `sim` (a validated code), from the
/// run.json of the first of `roots` that has one: the notice on the sim's pages. None when no
/// run.json is found (a sim made before them, or the original's) or it cannot be read.
pub fn scripted_roles(roots: &[&Path], sim: &str) -> Vec<String> {
    for root in roots {
        match crate::storage::run::RunInfo::read(&root.join(sim)) {
            Ok(Some(info)) => return info.scripted_roles(),
            Ok(None) => {}
            Err(e) => tracing::warn!("{e:#}"),
        }
    }
    Vec::new()
}

/// Read and parse a JSON file; `Ok(None)` if it does not exist.
pub fn read_json(path: &Path) -> Result<Option<Value>, WebError> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(WebError::internal(format!("reading {}: {e}", path.display()))),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| WebError::internal(format!("{} is not valid JSON: {e}", path.display())))
}

/// The step numbers of `<dir>/<n>.json`, ascending (other names are ignored; a folder that
/// cannot be listed has none, so a page shows an empty run rather than failing).
pub fn numbered_files(dir: &Path) -> Vec<u64> {
    crate::storage::sim::step_files(dir).unwrap_or_default()
}

/// `reverie/meta.json` of a sim (empty object if missing).
pub fn meta(sim_dir: &Path) -> Result<Map<String, Value>, WebError> {
    Ok(match read_json(&sim_dir.join("reverie/meta.json"))? {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    })
}

/// Persona folder names of `<dir>/personas/`, in `meta.persona_names` order first, then by name.
/// Names we could not link to safely are skipped.
pub fn persona_names(dir: &Path, meta: &Map<String, Value>) -> Vec<String> {
    let mut found: Vec<String> = fs::read_dir(dir.join("personas"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.') && validate::is_listable_name(n))
        .collect();
    found.sort();
    let order: Vec<&str> = meta
        .get("persona_names")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    found.sort_by_key(|n| order.iter().position(|o| o == n).unwrap_or(usize::MAX));
    found
}

/// Where a page starts at `step`: the tile of each persona and whether the environment for that
/// step still has to be posted ("process") or already exists ("update").
pub struct StartPoint {
    pub phase: &'static str,
    pub positions: Map<String, Value>,
}

/// Tiles of `movement/<step>.json` as `{name: [x, y]}`.
fn movement_tiles(movement: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(p) = movement.get("persona").and_then(Value::as_object) {
        for (name, entry) in p {
            if let Some(t) = entry.get("movement").and_then(tile) {
                out.insert(name.clone(), t);
            }
        }
    }
    out
}

fn tile(v: &Value) -> Option<Value> {
    let a = v.as_array()?;
    Some(Value::Array(vec![Value::from(a.first()?.as_i64()?), Value::from(a.get(1)?.as_i64()?)]))
}

/// Tiles of an environment file as `{name: [x, y]}`.
fn env_tiles(env: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(o) = env.as_object() {
        for (name, e) in o {
            if let (Some(x), Some(y)) = (e.get("x").and_then(Value::as_i64), e.get("y").and_then(Value::as_i64)) {
                out.insert(name.clone(), Value::Array(vec![x.into(), y.into()]));
            }
        }
    }
    out
}

/// Decide the start for a page at `step`: `environment/<step>.json` if it exists (phase
/// "update"); else the targets of `movement/<step-1>.json` (phase "process"); else the newest
/// environment file at or before `step` (the original used the newest of all).
pub fn start_point(sim_dir: &Path, step: u64) -> Result<StartPoint, WebError> {
    if let Some(env) = read_json(&sim_dir.join(format!("environment/{step}.json")))? {
        return Ok(StartPoint { phase: "update", positions: env_tiles(&env) });
    }
    if step > 0 {
        if let Some(mv) = read_json(&sim_dir.join(format!("movement/{}.json", step - 1)))? {
            return Ok(StartPoint { phase: "process", positions: movement_tiles(&mv) });
        }
    }
    let envs = numbered_files(&sim_dir.join("environment"));
    let best = envs.iter().rev().find(|&&n| n <= step).or(envs.last());
    match best {
        Some(n) => {
            let env = read_json(&sim_dir.join(format!("environment/{n}.json")))?.unwrap_or(Value::Null);
            Ok(StartPoint { phase: "process", positions: env_tiles(&env) })
        }
        None => Err(WebError::not_found(format!("{} has no environment files", sim_dir.display()))),
    }
}

/// The step a page without a live engine should start at: from `from`, skip every step whose
/// movement already exists (so a reload continues instead of replaying the handshake step).
pub fn resume_step(sim_dir: &Path, from: u64) -> u64 {
    let mut s = from;
    while sim_dir.join(format!("movement/{s}.json")).is_file() {
        s += 1;
    }
    s
}

/// The persona the evaluator's fields belong to, the assistant, from `personas` in
/// `meta.persona_names` order (as [`persona_names`] gives them): found as the engine finds it
/// ([`assistant_persona`]: the second, or the only one). Empty for no personas.
pub fn assistant_name(personas: &[String]) -> String {
    assistant_persona(personas).unwrap_or_default().to_string()
}

/// The date part of `"February 13, 2025, 00:02:30"` → `"February 13, 2025"`.
fn day_of(curr_time: &str) -> Option<&str> {
    curr_time.rsplit_once(", ").map(|(d, _)| d)
}

/// Evaluator scores of the same simulated day as step `before - 1`, oldest first, as
/// `[[curr_time, score], …]`, so a reloaded page redraws today's chart (at most 1000 files read).
pub fn todays_scores(sim_dir: &Path, before: u64, assistant: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut day: Option<String> = None;
    let mut s = before;
    while s > 0 && out.len() < 1000 && before - s < 1000 {
        s -= 1;
        let Ok(Some(mv)) = read_json(&sim_dir.join(format!("movement/{s}.json"))) else { break };
        let Some(t) = mv.pointer("/meta/curr_time").and_then(Value::as_str) else { break };
        let d = day_of(t).unwrap_or(t).to_string();
        match &day {
            None => day = Some(d),
            Some(x) if *x != d => break,
            _ => {}
        }
        let entry = mv.get("persona").and_then(|p| p.get(assistant));
        if let Some(score) = entry.and_then(|e| e.get("eval_res_score")).and_then(score_number) {
            out.push(Value::Array(vec![t.into(), score.into()]));
        }
    }
    out.reverse();
    out
}

/// A score as a number: the original writes a string, a number or null.
pub fn score_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The character sheet for a persona: `characters/<N_U>.png` if the assets have it, otherwise
/// one of the bundled sheets picked by the name, so unknown personas still get a body.
pub fn sprite_for(assets: &Path, underscore: &str) -> String {
    let chars = assets.join("characters");
    if chars.join(format!("{underscore}.png")).is_file() {
        return underscore.to_string();
    }
    let mut all: Vec<String> = fs::read_dir(&chars)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".png").map(str::to_string))
        .filter(|n| validate::is_listable_name(n))
        .collect();
    all.sort();
    if all.is_empty() {
        return underscore.to_string();
    }
    let h = underscore.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
    all[h % all.len()].clone()
}

/// Initials for the speech bubble: first letters of the first and last words ("John Lin" → "JL").
pub fn initials(name: &str) -> String {
    let words: Vec<&str> = name.split_whitespace().collect();
    let first = words.first().and_then(|w| w.chars().next());
    let last = if words.len() > 1 { words.last().and_then(|w| w.chars().next()) } else { None };
    first.into_iter().chain(last).flat_map(char::to_uppercase).collect()
}
