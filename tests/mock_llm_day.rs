//! A day driven by real HTTP: every role talks to an OpenAI-compatible mock server on loopback
//! that answers each task the way a chat model would (some replies wrapped in prose or code
//! fences, some broken), so the whole path — prompts, wire format, parsing, retries,
//! fallbacks, ledger — runs for real.

mod common;

use std::path::Path;
use std::sync::Arc;

use propersim::config::{Config, ProviderKind, Role, RoleConfig};
use propersim::llm::cache::CacheMode;
use propersim::sim::setup::{open_engine, Open};
use propersim::world::maze::Maze;
use serde_json::Value;

fn config(fs: &Path, root: &Path, base: &str) -> Config {
    let mut cfg = Config::default();
    cfg.paths.storage = root.join("storage");
    cfg.paths.seeds = Some(fs.join("storage"));
    cfg.paths.assets = fs.join("static_dirs/assets");
    cfg.paths.temp_storage = root.join("temp_storage");
    cfg.sim.sim = "mock".into();
    for role in Role::ALL {
        let mut rc = RoleConfig::scripted();
        rc.provider = ProviderKind::OpenAi;
        rc.model = format!("mock-{role}");
        rc.base_url = Some(base.into());
        rc.concurrency = Some(8);
        cfg.roles.insert(role.as_str().into(), rc);
    }
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_over_http_with_imperfect_replies() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let (base, mock) = common::mock_llm::start_mock().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(&fs, tmp.path(), &base);
    let mut engine = open_engine(&cfg, Open::Fork, CacheMode::Record).unwrap();
    let maze = Maze::load(&cfg.paths.assets).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // Step through the day, watching the evaluator's memory: it resets at 00:02:30 and its
    // hourly summaries appear as awake hours pass.
    let mut max_hourly = 0;
    while engine.next_step() < 576 {
        engine.write_next_environment().unwrap();
        engine.step().await.unwrap();
        max_hourly = max_hourly.max(engine.evaluator().hourly.len() + 4 * engine.evaluator().four_hourly.len());
    }
    assert!(max_hourly >= 3, "hourly summaries were made ({max_hourly})");
    assert!(!engine.assistant().records().is_empty());
    let day1_memory = engine.evaluated_today().len();
    assert!(day1_memory > 100);
    // Day 2 begins: the user's evaluation memory is wiped at 00:02:30, the assistant's is not.
    propersim::sim::headless::run(&mut engine, 578, false, stop.clone()).await.unwrap();
    assert!(
        engine.evaluator().hour.is_empty()
            && engine.evaluator().hourly.is_empty()
            && engine.evaluated_today().is_empty()
    );
    assert!(engine.assistant().records().len() >= day1_memory, "the assistant remembers across days");

    let sim = tmp.path().join("storage/mock");
    replay_matches_without_a_server(&fs, tmp.path(), &sim).await;
    let scratch: Value = serde_json::from_str(
        &std::fs::read_to_string(sim.join("personas/John Lin/bootstrap_memory/scratch.json")).unwrap(),
    )
    .unwrap();
    let hourly: Vec<(String, u32)> = serde_json::from_value(scratch["f_daily_schedule_hourly_org"].clone()).unwrap();
    assert_eq!(hourly.iter().map(|x| x.1).sum::<u32>(), 1440, "the hourly schedule covers 24 h");
    let flat: Vec<(String, u32)> = serde_json::from_value(scratch["f_daily_schedule"].clone()).unwrap();
    assert_eq!(flat.iter().map(|x| x.1).sum::<u32>(), 1440, "the decomposed schedule covers 24 h");
    assert!(flat.iter().all(|x| x.1 % 5 == 0 && x.1 > 0));

    // Actions on real object tiles.
    let mut on_object = 0;
    for step in 0..576u64 {
        let m: Value =
            serde_json::from_str(&std::fs::read_to_string(sim.join(format!("movement/{step}.json"))).unwrap()).unwrap();
        let john = &m["persona"]["John Lin"];
        let addr = john["description"].as_str().unwrap().split(" @ ").nth(1).unwrap().to_string();
        let t = (john["movement"][0].as_u64().unwrap() as usize, john["movement"][1].as_u64().unwrap() as usize);
        assert_eq!(addr.split(':').count(), 4, "step {step}: object-level address {addr}");
        if maze.address_tiles(&addr).contains(&t) {
            on_object += 1;
        }
    }
    assert!(on_object > 560, "{on_object} of 576 steps on the action's object");

    // Scores: 0..4, the sum of four binary dimensions, Frequency failing if either check failed.
    let records: Vec<Value> = propersim::storage::read_jsonl(&sim.join("records.jsonl")).unwrap();
    assert!(records.len() > 200);
    for r in &records {
        for (i, dims) in r["dimensions"].as_array().unwrap().iter().enumerate() {
            let sum: u64 = dims.as_object().unwrap().values().map(|d| d["score"].as_u64().unwrap()).sum();
            assert!(sum <= 4);
            assert_eq!(r["scores"][i].as_f64().unwrap(), sum as f64);
            assert_eq!(
                dims.as_object().unwrap().keys().collect::<Vec<_>>(),
                ["Personal_Preference", "Timing", "Frequency", "Communication_&_Safety"]
            );
        }
    }
    // Both candidates are generated at once, and the evaluator's checks run concurrently.
    let peaks = mock.in_flight.lock().unwrap().clone();
    assert!(peaks["mock-assistant"].1 >= 2, "candidates were generated one after another: {peaks:?}");
    assert!(peaks["mock-evaluator"].1 >= 5, "evaluator checks were not concurrent: {peaks:?}");

    // Broken replies were retried (and counted), never crashed the run.
    let ledger: Vec<Value> = propersim::storage::read_jsonl(&sim.join("llm_ledger.jsonl")).unwrap();
    assert!(ledger.iter().any(|l| l["retries"].as_u64().unwrap_or(0) > 0), "some replies needed a retry");
    assert!(ledger.iter().all(|l| l["provider"] == "openai"));
    let tasks: std::collections::BTreeSet<&str> = ledger.iter().filter_map(|l| l["task"].as_str()).collect();
    for t in [
        "wake_up_hour",
        "daily_plan",
        "hourly_schedule",
        "decompose",
        "choose_area",
        "choose_object",
        "emoji",
        "poignancy",
        "suggest",
        "evaluate_timing",
        "evaluate_frequency_too_rarely",
        "summarize_hour",
    ] {
        assert!(tasks.contains(t), "task {t} never ran: {tasks:?}");
    }
}

/// The recorded cache replays the start of the day byte for byte with no provider reachable.
async fn replay_matches_without_a_server(fs: &Path, root: &Path, recorded: &Path) {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", l.local_addr().unwrap())
    };
    let mut cfg = config(fs, root, &closed);
    cfg.sim.sim = "mock_replay".into();
    let replay_dir = root.join("storage/mock_replay");
    let sd = propersim::storage::SimDir::fork(
        &cfg.paths.storage,
        &[fs.join("storage")],
        &cfg.sim.fork,
        "mock_replay",
        false,
    )
    .unwrap();
    propersim::storage::sim::copy_tree(&recorded.join("llm_cache"), &sd.path("llm_cache")).unwrap();
    let mut engine = open_engine(&cfg, Open::Resume, CacheMode::Replay).unwrap();
    for _ in 0..200 {
        engine.write_next_environment().unwrap();
        engine.step().await.unwrap();
    }
    for step in 0..200u64 {
        let a = std::fs::read(recorded.join(format!("movement/{step}.json"))).unwrap();
        let b = std::fs::read(replay_dir.join(format!("movement/{step}.json"))).unwrap();
        assert_eq!(a, b, "step {step} differs in replay");
    }
    assert!(
        std::fs::read_to_string(replay_dir.join("records.jsonl")).unwrap().lines().count() > 10,
        "the replay covered awake steps"
    );
}
