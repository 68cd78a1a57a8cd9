//! Compressing a finished run for the demo page (the original's `compress_sim_storage.py`, see
//! protocol.md §4): `master_movement.json` keeps, per step, only the personas whose movement,
//! pronunciatio, description or chat changed (only those four keys), in Python's
//! `json.dumps(indent=2)` format; `meta.json` and `personas/` are copied.
//!
//! Addition: `assistant.json` keeps what the original dropped and the demo page now shows: per
//! step, the assistant's suggestion, the user's response and the evaluator's score and reason.
//!
//! Differences from the original: the output is built in a temporary folder and renamed into
//! place (an existing output is replaced, not an error); steps may start above 0 (a run resumed
//! from a later step), but must be contiguous; persona order is that of the first movement file.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use super::pyjson;
use super::sim::{assistant_persona, check_sim_code, copy_tree, step_files};

const KEYS: [&str; 4] = ["movement", "pronunciatio", "description", "chat"];

/// Compress `storage_dir/<sim>` into `out_root/<sim>/`; returns that folder.
pub fn compress(storage_dir: &Path, sim: &str, out_root: &Path) -> Result<PathBuf> {
    check_sim_code(sim).map_err(anyhow::Error::msg)?;
    let src = storage_dir.join(sim);
    if !src.is_dir() {
        bail!("no simulation {sim:?} in {}", storage_dir.display());
    }
    let (master, assistant) = master_movement(&src)?;
    let text = pyjson::to_string_indent2(&master)?;

    fs::create_dir_all(out_root).with_context(|| format!("creating {}", out_root.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{sim}-compress-"))
        .permissions(super::atomic::dir_permissions())
        .tempdir_in(out_root)?;
    fs::write(tmp.path().join("master_movement.json"), text)?;
    fs::write(tmp.path().join("assistant.json"), pyjson::to_string_indent2(&assistant)?)?;
    let meta = src.join("reverie/meta.json");
    fs::copy(&meta, tmp.path().join("meta.json")).with_context(|| format!("copying {}", meta.display()))?;
    // Our provenance, where the demo page finds it as in a sim folder (its scripted-brain notice).
    let run = src.join(super::run::FILE);
    if run.is_file() {
        fs::create_dir_all(tmp.path().join("reverie"))?;
        fs::copy(&run, tmp.path().join(super::run::FILE)).with_context(|| format!("copying {}", run.display()))?;
    }
    copy_tree(&src.join("personas"), &tmp.path().join("personas"))?;

    let dest = out_root.join(sim);
    let old = out_root.join(format!(".{sim}-old-{}", std::process::id()));
    if dest.exists() {
        fs::rename(&dest, &old).with_context(|| format!("moving aside {}", dest.display()))?;
    }
    fs::rename(tmp.keep(), &dest).with_context(|| format!("renaming into {}", dest.display()))?;
    if old.exists() {
        fs::remove_dir_all(&old).ok();
    }
    Ok(dest)
}

/// The ProPerSim fields kept in `assistant.json`.
const ASSISTANT_KEYS: [&str; 4] = ["suggestion", "user_action_for_suggestion", "eval_res_score", "eval_res_reason"];

/// `({"<step>": {persona: {movement, pronunciatio, description, chat}}}, assistant log)` over
/// every movement file. The log is `{"persona": name, "steps": {"<step>": {curr_time, suggestion,
/// user_action_for_suggestion, eval_res_score, eval_res_reason}}}` for steps that have any of them.
pub fn master_movement(sim_dir: &Path) -> Result<(Map<String, Value>, Map<String, Value>)> {
    let mdir = sim_dir.join("movement");
    let steps = step_files(&mdir)?;
    let (Some(&first), Some(&last)) = (steps.first(), steps.last()) else {
        bail!("{} has no movement files", mdir.display())
    };
    if (last - first + 1) as usize != steps.len() {
        let missing = (first..=last).find(|s| steps.binary_search(s).is_err()).unwrap_or(first);
        bail!("movement files are not contiguous: {}/{missing}.json is missing", mdir.display());
    }
    let mut personas: Vec<String> = fs::read_dir(sim_dir.join("personas"))
        .with_context(|| format!("reading {}/personas", sim_dir.display()))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    personas.sort();

    let mut master = Map::new();
    let mut log = Map::new();
    let mut last_seen: Map<String, Value> = Map::new();
    for step in first..=last {
        let path = mdir.join(format!("{step}.json"));
        let doc: Value =
            serde_json::from_slice(&fs::read(&path).with_context(|| format!("reading {}", path.display()))?)
                .with_context(|| format!("{} is not valid JSON", path.display()))?;
        let Some(d) = doc.get("persona").and_then(Value::as_object) else {
            bail!("{} has no \"persona\" object", path.display())
        };
        if step == first {
            // Movement order is meta.json's `persona_names` order (the user first), in the
            // original's files and ours: the assistant is then found as the engine finds it.
            personas.sort_by_key(|p| d.keys().position(|k| k == p).unwrap_or(usize::MAX));
        }
        let mut out = Map::new();
        for p in &personas {
            let Some(entry) = d.get(p) else { bail!("{} has no entry for persona {p:?}", path.display()) };
            let slim: Map<String, Value> =
                KEYS.iter().map(|k| (k.to_string(), entry.get(*k).cloned().unwrap_or(Value::Null))).collect();
            let slim = Value::Object(slim);
            if step == first || last_seen.get(p) != Some(&slim) {
                last_seen.insert(p.clone(), slim.clone());
                out.insert(p.clone(), slim);
            }
        }
        master.insert(step.to_string(), Value::Object(out));
        if let Some(entry) = assistant_persona(&personas).and_then(|a| d.get(a)) {
            if ASSISTANT_KEYS.iter().any(|k| entry.get(*k).is_some()) {
                let mut e = Map::new();
                e.insert("curr_time".into(), doc.pointer("/meta/curr_time").cloned().unwrap_or(Value::Null));
                for k in ASSISTANT_KEYS {
                    e.insert(k.into(), entry.get(k).cloned().unwrap_or(Value::Null));
                }
                log.insert(step.to_string(), Value::Object(e));
            }
        }
    }
    let mut assistant = Map::new();
    assistant.insert("persona".into(), assistant_persona(&personas).map(Value::from).unwrap_or(Value::Null));
    assistant.insert("steps".into(), Value::Object(log));
    Ok((master, assistant))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_changes_in_python_format() {
        let d = tempfile::tempdir().unwrap();
        let sim = d.path().join("storage/s");
        fs::create_dir_all(sim.join("personas/A B/bootstrap_memory")).unwrap();
        fs::create_dir_all(sim.join("personas/C D")).unwrap();
        fs::create_dir_all(sim.join("reverie")).unwrap();
        fs::create_dir_all(sim.join("movement")).unwrap();
        fs::write(sim.join("reverie/meta.json"), "{\"step\": 0}").unwrap();
        fs::write(sim.join("personas/A B/bootstrap_memory/scratch.json"), "{}").unwrap();
        let e = |x: i32, em: &str| {
            format!("{{\"movement\": [{x}, 1], \"pronunciatio\": \"{em}\", \"description\": \"d @ a\", \"chat\": null, \"suggestion\": \"s\"}}")
        };
        fs::write(
            sim.join("movement/0.json"),
            format!("{{\"persona\": {{\"C D\": {}, \"A B\": {}}}, \"meta\": {{}}}}", e(1, "z"), e(2, "😀")),
        )
        .unwrap();
        fs::write(
            sim.join("movement/1.json"),
            format!("{{\"persona\": {{\"C D\": {}, \"A B\": {}}}, \"meta\": {{}}}}", e(1, "z"), e(3, "😀")),
        )
        .unwrap();
        fs::write(
            sim.join("movement/2.json"),
            format!("{{\"persona\": {{\"C D\": {}, \"A B\": {}}}, \"meta\": {{}}}}", e(1, "z"), e(3, "😀")),
        )
        .unwrap();
        let out = compress(&d.path().join("storage"), "s", &d.path().join("compressed")).unwrap();
        let text = fs::read_to_string(out.join("master_movement.json")).unwrap();
        let expected = "{\n  \"0\": {\n    \"C D\": {\n      \"movement\": [\n        1,\n        1\n      ],\n      \"pronunciatio\": \"z\",\n      \"description\": \"d @ a\",\n      \"chat\": null\n    },\n    \"A B\": {\n      \"movement\": [\n        2,\n        1\n      ],\n      \"pronunciatio\": \"\\ud83d\\ude00\",\n      \"description\": \"d @ a\",\n      \"chat\": null\n    }\n  },\n  \"1\": {\n    \"A B\": {\n      \"movement\": [\n        3,\n        1\n      ],\n      \"pronunciatio\": \"\\ud83d\\ude00\",\n      \"description\": \"d @ a\",\n      \"chat\": null\n    }\n  },\n  \"2\": {}\n}";
        assert_eq!(text, expected);
        assert_eq!(fs::read_to_string(out.join("meta.json")).unwrap(), "{\"step\": 0}");
        assert!(out.join("personas/A B/bootstrap_memory/scratch.json").is_file());
        let log: Value = serde_json::from_str(&fs::read_to_string(out.join("assistant.json")).unwrap()).unwrap();
        assert_eq!(log["persona"], "A B", "the second persona in movement order");
        assert_eq!(log["steps"]["2"]["suggestion"], "s");
        // Recompressing replaces the output; a gap is an error.
        compress(&d.path().join("storage"), "s", &d.path().join("compressed")).unwrap();
        fs::remove_file(sim.join("movement/1.json")).unwrap();
        let err = compress(&d.path().join("storage"), "s", &d.path().join("compressed")).unwrap_err();
        assert!(format!("{err:#}").contains("1.json is missing"), "{err:#}");
        assert!(compress(&d.path().join("storage"), "../s", &d.path().join("c")).is_err());
    }
}
