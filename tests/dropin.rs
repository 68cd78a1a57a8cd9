//! Drop-in mode: this test plays the original Django server and page. It reads the temp_storage
//! handshake, writes `environment/<n>.json` the way the frontend does (in place, not atomically),
//! and reads `movement/<n>.json` back, for several steps.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[test]
fn original_frontend_drives_the_steps_through_files() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let tmp = tempfile::tempdir().unwrap();
    let storage = tmp.path().join("storage");
    let temp = tmp.path().join("temp_storage");
    let mut child = Command::new(common::bin())
        .args([
            "run",
            "--vis",
            "--provider",
            "scripted",
            "--fork",
            "base_the_ville_persona_3",
            "--sim",
            "dropin",
            "--steps",
            "8",
            "-q",
        ])
        .arg("--storage")
        .arg(&storage)
        .arg("--seeds")
        .arg(fs.join("storage"))
        .arg("--assets")
        .arg(fs.join("static_dirs/assets"))
        .arg("--temp-storage")
        .arg(&temp)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let wait_for = |p: &std::path::Path| {
        let t0 = Instant::now();
        while !p.exists() {
            assert!(t0.elapsed() < Duration::from_secs(60), "timed out waiting for {}", p.display());
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // The backend writes the handshake the Django `home` view reads.
    wait_for(&temp.join("curr_step.json"));
    let code: Value = serde_json::from_str(&std::fs::read_to_string(temp.join("curr_sim_code.json")).unwrap()).unwrap();
    assert_eq!(code, json!({"sim_code": "dropin"}));
    let st: Value = serde_json::from_str(&std::fs::read_to_string(temp.join("curr_step.json")).unwrap()).unwrap();
    assert_eq!(st["step"], 0);

    let sim = storage.join("dropin");
    for step in 0..8u64 {
        if step > 0 {
            // The page posts where the sprites ended: the previous movement targets.
            let prev: Value = serde_json::from_str(
                &std::fs::read_to_string(sim.join(format!("movement/{}.json", step - 1))).unwrap(),
            )
            .unwrap();
            let mut env = serde_json::Map::new();
            for (name, p) in prev["persona"].as_object().unwrap() {
                env.insert(name.clone(), json!({"maze": "the_ville", "x": p["movement"][0], "y": p["movement"][1]}));
            }
            // Written in place in two parts, like a slow non-atomic writer.
            let text = serde_json::to_string_pretty(&Value::Object(env)).unwrap();
            let mut f = std::fs::File::create(sim.join(format!("environment/{step}.json"))).unwrap();
            let (a, b) = text.split_at(text.len() / 2);
            f.write_all(a.as_bytes()).unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(30));
            f.write_all(b.as_bytes()).unwrap();
        }
        let mv = sim.join(format!("movement/{step}.json"));
        wait_for(&mv);
        let m: Value = serde_json::from_str(&std::fs::read_to_string(&mv).unwrap()).unwrap();
        let secs = step * 150;
        assert_eq!(m["meta"]["curr_time"], format!("February 13, 2025, 00:{:02}:{:02}", secs / 60, secs % 60));
        assert!(m["persona"]["John Lin"]["description"].as_str().unwrap().contains(" @ the Ville:"));
        // The engine waits for the page: the next movement does not appear on its own.
        if step < 7 {
            std::thread::sleep(Duration::from_millis(300));
            assert!(
                !sim.join(format!("movement/{}.json", step + 1)).exists(),
                "step {} ran without its environment",
                step + 1
            );
        }
    }
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "drop-in run did not stop after its steps");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
}
