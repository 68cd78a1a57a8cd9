//! Kill a run with SIGKILL mid-day: every file left is complete JSON, and `--resume` finishes the
//! day with contiguous steps, correct times, and the same result as an uninterrupted run.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn run_cmd(fs: &Path, root: &Path, sim: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(common::bin());
    c.args(["run", "--novis", "--provider", "scripted", "--fork", "base_the_ville_persona_1", "--sim", sim, "--days", "1", "-q"])
        .arg("--storage")
        .arg(root.join("storage"))
        .arg("--seeds")
        .arg(fs.join("storage"))
        .arg("--assets")
        .arg(fs.join("static_dirs/assets"))
        .arg("--temp-storage")
        .arg(root.join("temp_storage"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn all_json_complete(dir: &Path) -> usize {
    let mut n = 0;
    for e in walk(dir) {
        let name = e.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&e).unwrap();
        if name.ends_with(".json") {
            serde_json::from_str::<Value>(&text).unwrap_or_else(|err| panic!("{} is not complete JSON: {err}", e.display()));
            n += 1;
        }
        assert!(!name.ends_with(".tmp"), "temporary file left: {}", e.display());
    }
    n
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
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
    assert!(all_json_complete(&sim) > 200);
    let done = std::fs::read_dir(&mv).unwrap().count();
    assert!(done < 576, "the kill came too late to test anything ({done} steps)");

    // Without --resume the sim is never overwritten silently.
    let out = run_cmd(&fs, root, "killed", &[]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));

    let out = run_cmd(&fs, root, "killed", &["--resume"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!sim.join("movement/576.json").exists(), "--days counts the whole sim, not from the resume point");
    for step in 0..576u64 {
        let a = std::fs::read_to_string(root.join(format!("storage/whole/movement/{step}.json"))).unwrap();
        let b = std::fs::read_to_string(sim.join(format!("movement/{step}.json"))).unwrap_or_else(|_| panic!("step {step} missing after resume"));
        let va: Value = serde_json::from_str(&a).unwrap();
        let secs = step * 150;
        assert_eq!(va["meta"]["curr_time"], format!("February 13, 2025, {:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60));
        assert_eq!(a, b, "step {step} differs from the uninterrupted run");
    }
    for f in ["records.jsonl", "preferences/day_01.jsonl"] {
        let whole = std::fs::read_to_string(root.join("storage/whole").join(f)).unwrap();
        let resumed = std::fs::read_to_string(sim.join(f)).unwrap();
        assert_eq!(resumed, whole, "{f}: the resumed run has the reference's lines exactly");
    }
}
