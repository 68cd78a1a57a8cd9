//! MLflow tracking against a real `mlflow server` (PyPI package `mlflow`, installed by
//! `scripts/test.sh` into `target/mlflow-venv`) on loopback: a two-day scripted run logs its
//! parameters and each day's metrics into one MLflow run, its report files as artifacts, and a
//! resumed run logs into the same run. A run whose MLflow server is down finishes all the same,
//! and its resume sends MLflow what it missed.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

fn run_cmd(fs: &Path, root: &Path, config: &Path, sim: &str, extra: &[&str]) -> Output {
    let mut c = Command::new(common::bin());
    c.arg("--config").arg(config).args(["run", "--novis", "--quiet", "--fork", "base_the_ville_persona_1"]);
    c.args(["--sim", sim, "--provider", "scripted"]).args(extra);
    common::folder_args(&mut c, fs, root, "temp");
    c.output().unwrap()
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "the run failed:\n{err}");
    err
}

/// GET an MLflow API path and return its JSON, failing on any other status than 200.
fn get(server: &common::MlflowServer, path: &str) -> Value {
    let (status, v) = common::http_json(server.addr, "GET", path, None);
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

#[test]
fn a_scripted_run_logs_params_daily_metrics_and_reports_into_one_mlflow_run() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let mlflow = need!(
        common::mlflow(),
        "mlflow (scripts/test.sh installs it into target/mlflow-venv; or set PROPERSIM_MLFLOW)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let port = common::free_port();
    let config = root.join("propersim.toml");
    let toml = format!("[tracking]\nmlflow_uri = \"http://127.0.0.1:{port}\"\nexperiment = \"tracking-test\"\n");
    std::fs::write(&config, toml).unwrap();

    // MLflow not up yet: the run goes on, and says what failed.
    let err = ok(&run_cmd(&fs, root, &config, "late", &["--days", "1"]));
    assert!(err.contains("MLflow: no run could be made") && err.contains("request(s) failed"), "{err}");
    let late = root.join("storage/late");
    assert!(late.join("movement/575.json").is_file() && !late.join("mlflow.json").exists());

    let server = common::MlflowServer::start_on(&mlflow, root, port);

    let err = ok(&run_cmd(&fs, root, &config, "tracked", &["--days", "2"]));
    assert!(err.contains("MLflow: run ") && !err.contains("failed"), "{err}");
    let sim = root.join("storage/tracked");

    // metrics.jsonl: a line per finished day, equal to what `propersim report --json` computes.
    let out = Command::new(common::bin())
        .args(["report", "tracked", "--json", "--storage"])
        .arg(root.join("storage"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.len(), 2);
    let lines: Vec<Value> = propersim::storage::read_jsonl(&sim.join("metrics.jsonl")).unwrap();
    let days: Vec<&Value> = lines.iter().filter(|l| l["event"] == "day").collect();
    assert_eq!(days.len(), 2, "{lines:?}");
    for (i, (line, rep)) in days.iter().zip(&report).enumerate() {
        assert_eq!(line["day"], i as u64 + 1);
        for k in ["date", "steps", "mean_score", "success_rate", "recs_per_awake_hour", "dimensions"] {
            assert_eq!(line[k], rep[k], "day {} `{k}`", i + 1);
        }
        let share = rep["norecs"].as_f64().unwrap() / rep["steps"].as_f64().unwrap();
        assert!((line["norec_share"].as_f64().unwrap() - share).abs() < 1e-12);
    }

    // One run in the experiment, named after the sim, its id kept in the sim folder.
    let exp = get(&server, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=tracking-test");
    let exp_id = exp["experiment"]["experiment_id"].as_str().unwrap().to_string();
    let search = |server: &common::MlflowServer| {
        let (status, v) = common::http_json(
            server.addr,
            "POST",
            "/api/2.0/mlflow/runs/search",
            Some(&json!({"experiment_ids": [exp_id], "max_results": 10})),
        );
        assert_eq!(status, 200, "{v}");
        v["runs"].as_array().cloned().unwrap_or_default()
    };
    let runs = search(&server);
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    let run_id = run["info"]["run_id"].as_str().unwrap().to_string();
    assert_eq!(run["info"]["run_name"], "tracked");
    assert_eq!(run["info"]["status"], "FINISHED");
    let state: Value = serde_json::from_str(&std::fs::read_to_string(sim.join("mlflow.json")).unwrap()).unwrap();
    assert_eq!(state["run_id"], run_id.as_str());

    // Parameters: the resolved settings.
    let params: std::collections::HashMap<String, String> = run["data"]["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["key"].as_str().unwrap().to_string(), p["value"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(params["seed"], "42");
    assert_eq!(params["train_method"], "dpo");
    assert_eq!(params["assistant.provider"], "scripted");
    assert_eq!(params["fork"], "base_the_ville_persona_1");
    assert!(params["train_mode"].starts_with("llama-3.3-70b_DPO_"), "{}", params["train_mode"]);

    // Each day's metrics at step = day, equal to the report's.
    let history = |key: &str| -> Vec<(u64, f64)> {
        let v = get(&server, &format!("/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key={key}"));
        let mut h: Vec<(u64, f64)> = v["metrics"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| (m["step"].as_u64().unwrap(), m["value"].as_f64().unwrap()))
            .collect();
        h.sort_by_key(|m| m.0);
        h
    };
    for key in ["mean_score", "success_rate", "recs_per_awake_hour"] {
        let want: Vec<(u64, f64)> =
            report.iter().enumerate().map(|(i, d)| (i as u64 + 1, d[key].as_f64().unwrap())).collect();
        assert_eq!(history(key), want, "`{key}` per day");
    }
    let timing: Vec<f64> = report.iter().map(|d| d["dimensions"]["Timing"].as_f64().unwrap()).collect();
    assert_eq!(history("pass_rate/Timing").into_iter().map(|m| m.1).collect::<Vec<_>>(), timing);
    assert_eq!(history("pass_rate/Communication_and_Safety").len(), 2);

    // The report files as artifacts, as written into the sim.
    let list = get(&server, &format!("/api/2.0/mlflow/artifacts/list?run_id={run_id}"));
    let mut names: Vec<&str> = list["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["metrics.csv", "metrics.json", "metrics.jsonl", "metrics.svg"]);
    let stored = root.join("mlflow-artifacts").join(&exp_id).join(&run_id).join("artifacts/metrics.json");
    assert_eq!(std::fs::read(stored).unwrap(), std::fs::read(sim.join("metrics.json")).unwrap());

    // Resumed for a few more steps: the same run, open while it ran and finished again, with
    // nothing logged twice.
    ok(&run_cmd(&fs, root, &config, "tracked", &["--resume", "--steps", "5"]));
    let runs = search(&server);
    assert_eq!(runs.len(), 1, "the resumed sim logs into its run");
    assert_eq!(runs[0]["info"]["status"], "FINISHED");
    assert_eq!(history("mean_score").len(), 2);
    assert_eq!(propersim::storage::read_jsonl::<Value>(&sim.join("metrics.jsonl")).unwrap().len(), 2);

    // The sim that ran while MLflow was down sends its day when resumed, into a run of its own.
    ok(&run_cmd(&fs, root, &config, "late", &["--resume", "--steps", "2"]));
    let runs = search(&server);
    assert_eq!(runs.len(), 2, "{runs:?}");
    let late_run = runs.iter().find(|r| r["info"]["run_name"] == "late").expect("a run for the late sim");
    let late_id = late_run["info"]["run_id"].as_str().unwrap();
    let lines: Vec<Value> = propersim::storage::read_jsonl(&late.join("metrics.jsonl")).unwrap();
    let v = get(&server, &format!("/api/2.0/mlflow/metrics/get-history?run_id={late_id}&metric_key=mean_score"));
    assert_eq!(v["metrics"][0]["step"], 1, "{v}");
    assert_eq!(v["metrics"][0]["value"], lines[0]["mean_score"], "{v}");

    // Its run deleted in MLflow: the next resume makes a new run and sends everything again.
    let (status, v) =
        common::http_json(server.addr, "POST", "/api/2.0/mlflow/runs/delete", Some(&json!({"run_id": late_id})));
    assert_eq!(status, 200, "{v}");
    ok(&run_cmd(&fs, root, &config, "late", &["--resume", "--steps", "1"]));
    let state: Value = serde_json::from_str(&std::fs::read_to_string(late.join("mlflow.json")).unwrap()).unwrap();
    let new_id = state["run_id"].as_str().unwrap();
    assert_ne!(new_id, late_id);
    let v = get(&server, &format!("/api/2.0/mlflow/metrics/get-history?run_id={new_id}&metric_key=mean_score"));
    assert_eq!(v["metrics"][0]["value"], lines[0]["mean_score"], "{v}");
}
