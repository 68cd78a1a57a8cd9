//! Kill a run with SIGKILL mid-day: every file left is complete JSON, and `--resume` finishes the
//! day with contiguous steps, correct times, and the same result as an uninterrupted run.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn run_cmd(fs: &Path, root: &Path, sim: &str, extra: &[&str]) -> Command {
    let mut c = partial_cmd(fs, root, sim, extra);
    c.args(["--days", "1"]);
    c
}

/// A run without a length: `extra` gives `--steps`, or `--days` is added by [`run_cmd`].
fn partial_cmd(fs: &Path, root: &Path, sim: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(common::bin());
    c.args(["run", "--novis", "--provider", "scripted", "--fork", "base_the_ville_persona_1", "--sim", sim, "-q"]);
    common::folder_args(&mut c, fs, root, "temp_storage");
    c.args(extra).stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

/// Every `.json` file under `dir` parses; returns how many there are. With `no_temp`, no `.tmp`
/// file is left either (a kill -9 during an atomic write can leave its temporary file behind;
/// the resume sweeps them away).
fn all_json_complete(dir: &Path, no_temp: bool) -> usize {
    let mut n = 0;
    for e in common::files_under(dir) {
        let name = e.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&e).unwrap();
        if name.ends_with(".json") {
            serde_json::from_str::<Value>(&text)
                .unwrap_or_else(|err| panic!("{} is not complete JSON: {err}", e.display()));
            n += 1;
        }
        assert!(!(no_temp && name.ends_with(".tmp")), "temporary file left: {}", e.display());
    }
    n
}

#[test]
fn sigkill_then_resume_matches_an_uninterrupted_run() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();

    // Reference: the whole day without interruption.
    let st = run_cmd(&fs, root, "whole", &[]).status().unwrap();
    assert!(st.success());

    // Kill the same run once it is well into the day.
    let mut child = run_cmd(&fs, root, "killed", &[]).spawn().unwrap();
    let mv = root.join("storage/killed/movement");
    let t0 = Instant::now();
    while std::fs::read_dir(&mv).map(|d| d.count()).unwrap_or(0) < 200 {
        assert!(t0.elapsed() < Duration::from_secs(120), "run made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let sim = root.join("storage/killed");
    assert!(all_json_complete(&sim, false) > 200);
    let done = std::fs::read_dir(&mv).unwrap().count();
    assert!(done < 576, "the kill came too late to test anything ({done} steps)");

    // Without --resume the sim is never overwritten silently.
    let out = run_cmd(&fs, root, "killed", &[]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));

    let out = run_cmd(&fs, root, "killed", &["--resume"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!sim.join("movement/576.json").exists(), "--days counts the whole sim, not from the resume point");
    assert!(all_json_complete(&sim, true) > 576, "the resume swept the killed write's temporary file");
    assert_same_day(&root.join("storage/whole"), &sim);

    // A newest checkpoint that does not read (a power loss can leave one empty, as nothing is
    // fsynced) falls back to the one before it.
    let out = partial_cmd(&fs, root, "damaged", &["--steps", "150"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let state = root.join("storage/damaged/state");
    let newest = state.join("checkpoint-150.json");
    assert!(
        state.join("checkpoint-149.json").exists() && !state.join("checkpoint-148.json").exists(),
        "the two newest checkpoints are kept"
    );
    let text = std::fs::read_to_string(&newest).unwrap();
    std::fs::write(&newest, &text[..text.len() / 2]).unwrap();
    let out = run_cmd(&fs, root, "damaged", &["--resume"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_same_day(&root.join("storage/whole"), &root.join("storage/damaged"));

    // A sim of an earlier version (one `checkpoint.json` holding the user's memory nodes) resumes.
    let out = partial_cmd(&fs, root, "legacy", &["--steps", "150"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let state = root.join("storage/legacy/state");
    let mut cp: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("checkpoint-150.json")).unwrap()).unwrap();
    let nodes: Vec<Value> = std::fs::read_to_string(state.join("user_nodes.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!nodes.is_empty(), "the user's memory nodes are logged");
    cp["user_memory"]["nodes"] = Value::Array(nodes);
    cp.as_object_mut().unwrap().remove("user_nodes");
    for f in ["checkpoint-149.json", "checkpoint-150.json", "user_nodes.jsonl"] {
        std::fs::remove_file(state.join(f)).unwrap();
    }
    std::fs::write(state.join("checkpoint.json"), serde_json::to_vec(&cp).unwrap()).unwrap();
    let out = run_cmd(&fs, root, "legacy", &["--resume"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!state.join("checkpoint.json").exists(), "the legacy checkpoint is replaced");
    assert_same_day(&root.join("storage/whole"), &root.join("storage/legacy"));
}

/// A kill between a day's last movement file and its checkpoint: the resume redoes that step,
/// and `metrics.jsonl` keeps the day's line once (a line torn by the kill is dropped).
#[test]
fn a_day_end_step_redone_after_a_kill_writes_its_metrics_line_once() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let out = run_cmd(&fs, root, "dayend", &[]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sim = root.join("storage/dayend");
    let metrics = sim.join("metrics.jsonl");
    let whole = std::fs::read_to_string(&metrics).unwrap();
    let lines: Vec<Value> = whole.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{whole}");
    assert_eq!((lines[0]["event"].as_str(), lines[0]["day"].as_u64()), (Some("day"), Some(1)));
    assert!(lines[0]["mean_score"].as_f64().is_some(), "{whole}");

    // As if killed after the line but before the last step's checkpoint, mid-way through
    // writing another line.
    std::fs::remove_file(sim.join("state/checkpoint-576.json")).unwrap();
    std::fs::write(&metrics, format!("{whole}{{\"event\":\"da")).unwrap();
    let out = run_cmd(&fs, root, "dayend", &["--resume"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(sim.join("state/checkpoint-576.json").is_file(), "the last step was redone");
    assert_eq!(std::fs::read_to_string(&metrics).unwrap(), whole);
}

/// `sim` holds exactly the day of the uninterrupted run `whole`: every movement file, the
/// records, the preference pairs, both memories' logs and `metrics.jsonl`.
fn assert_same_day(whole: &Path, sim: &Path) {
    for step in 0..576u64 {
        let a = std::fs::read_to_string(whole.join(format!("movement/{step}.json"))).unwrap();
        let b = std::fs::read_to_string(sim.join(format!("movement/{step}.json")))
            .unwrap_or_else(|_| panic!("step {step} missing after resume"));
        let va: Value = serde_json::from_str(&a).unwrap();
        let secs = step * 150;
        assert_eq!(
            va["meta"]["curr_time"],
            format!("February 13, 2025, {:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
        );
        assert_eq!(a, b, "step {step} differs from the uninterrupted run");
    }
    for f in [
        "records.jsonl",
        "preferences/day_01.jsonl",
        "state/user_nodes.jsonl",
        "state/assistant_memory.jsonl",
        "personas/John Lin/bootstrap_memory/associative_memory/nodes.json",
        // The day's line, written once even when its step is redone.
        "metrics.jsonl",
    ] {
        let whole = std::fs::read_to_string(whole.join(f)).unwrap();
        let resumed = std::fs::read_to_string(sim.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(resumed, whole, "{f}: the resumed run has the reference's lines exactly");
    }
}
