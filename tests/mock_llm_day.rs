//! A day driven by real HTTP: every role talks to an OpenAI-compatible mock server on loopback
//! that answers each task the way a chat model would (some replies wrapped in prose or code
//! fences, some broken), so the whole path — prompts, wire format, parsing, retries,
//! fallbacks, ledger — runs for real.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use propersim::config::{Config, ProviderKind, Role, RoleConfig};
use propersim::llm::cache::CacheMode;
use propersim::sim::setup::{open_engine, Open};
use propersim::world::maze::Maze;
use serde_json::{json, Value};

struct Mock {
    n: AtomicU64,
    /// Requests in flight and the most seen at once, per model.
    in_flight: std::sync::Mutex<std::collections::HashMap<String, (u64, u64)>>,
}

fn h(s: &str) -> u64 {
    s.bytes().fold(1469598103934665603u64, |a, b| (a ^ b as u64).wrapping_mul(1099511628211))
}

/// A plausible answer to the task in `prompt`.
fn answer(prompt: &str, system: &str) -> String {
    let pick = h(prompt);
    if prompt.contains("\"wake_up_hour\"") {
        return json!({"wake_up_hour": 6 + pick % 3}).to_string();
    }
    if prompt.contains("{\"plan\"") {
        return json!({"plan": ["wake up and stretch at 7:00 am", "cook breakfast at 8:00 am", "rearrange the shelves at 10:00 am", "lunch at 12:00 pm", "garden work at 3:00 pm", "dinner at 6:00 pm", "journal before bed at 10:00 pm"]}).to_string();
    }
    if prompt.contains("{\"schedule\"") {
        let wake = prompt.split("asleep before ").nth(1).and_then(|s| s[..2].parse::<u32>().ok()).unwrap_or(7);
        let acts = ["cooking breakfast", "rearranging the shelves", "reading a book", "having lunch", "watering the garden", "sketching designs", "cooking dinner", "journaling"];
        let sched: Vec<Value> = (0..24u32)
            .map(|hr| {
                let a = if hr < wake || hr >= 23 { "sleeping".to_string() } else { acts[((hr - wake) as usize) % acts.len()].to_string() };
                json!({"hour": format!("{hr:02}:00"), "activity": a})
            })
            .collect();
        return json!({"schedule": sched}).to_string();
    }
    if prompt.contains("{\"subtasks\"") {
        let mins: u32 = prompt.split("you will spend ").nth(1).and_then(|s| s.split(' ').next()).and_then(|s| s.parse().ok()).unwrap_or(60);
        // Durations that don't add up on purpose: the parser has to fit them.
        return json!({"subtasks": [{"task": "getting ready", "minutes": 10}, {"task": "the main part", "minutes": mins}, {"task": "cleaning up", "minutes": 15}]}).to_string();
    }
    if prompt.contains("{\"choice\"") {
        let opts: Vec<&str> = prompt.split("Choose exactly one of: ").nth(1).unwrap_or("").split('\n').next().unwrap_or("").trim_end_matches('.').split(", ").map(|o| o.trim_matches('"')).collect();
        let action = prompt.split("You are about to be ").nth(1).and_then(|s| s.split('.').next()).unwrap_or("");
        let good = opts.iter().find(|o| action.split(' ').any(|w| w.len() > 3 && o.contains(&w[..4]))).or(opts.first()).copied().unwrap_or("");
        return json!({"choice": good}).to_string();
    }
    if prompt.contains("{\"emoji\"") {
        return json!({"emoji": "🙂"}).to_string();
    }
    if prompt.contains("{\"poignancy\"") {
        return json!({"poignancy": 1 + pick % 8}).to_string();
    }
    if prompt.contains("{\"status\"") {
        return json!({"status": "I feel rested and want to keep tidying the house today."}).to_string();
    }
    if prompt.contains("{\"Summary\"") {
        return json!({"Summary": "Mostly chores and meals; a few suggestions about breaks were welcome."}).to_string();
    }
    if prompt.contains("{\"Revision\"") {
        return json!({"Revision": "No Recommendation"}).to_string();
    }
    if prompt.contains("with all five keys") {
        let mut m = serde_json::Map::new();
        for (i, k) in ["Personal_Preference", "Timing", "Frequency_too_often", "Frequency_too_rarely", "Communication_&_Safety"].iter().enumerate() {
            m.insert(k.to_string(), json!({"Score": (pick >> i) & 1, "Reason": "judged"}));
        }
        return Value::Object(m).to_string();
    }
    if prompt.contains("\"Score\": 0 or 1") {
        return json!({"Score": (pick % 4 != 0) as u8, "Reason": "That is how I feel about it."}).to_string();
    }
    if system.contains("proactive assistant") {
        let s = if pick % 2 == 0 { "No Recommendation".to_string() } else { format!("Maybe take a short break (idea {}).", pick % 7) };
        return json!({"Suggestion": s}).to_string();
    }
    "I am not sure what you want.".into()
}

async fn chat(State(m): State<Arc<Mock>>, Json(req): Json<Value>) -> Json<Value> {
    let msgs = req["messages"].as_array().cloned().unwrap_or_default();
    let system = msgs.iter().find(|m| m["role"] == "system").and_then(|m| m["content"].as_str()).unwrap_or("").to_string();
    let user = msgs.iter().rev().find(|m| m["role"] == "user").and_then(|m| m["content"].as_str()).unwrap_or("").to_string();
    let n = m.n.fetch_add(1, Ordering::SeqCst);
    let model = req["model"].as_str().unwrap_or("").to_string();
    {
        let mut f = m.in_flight.lock().unwrap();
        let e = f.entry(model.clone()).or_insert((0, 0));
        e.0 += 1;
        e.1 = e.1.max(e.0);
    }
    // A little latency, so concurrent calls overlap as they would against a real server.
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    m.in_flight.lock().unwrap().get_mut(&model).unwrap().0 -= 1;
    let body = answer(&user, &system);
    // Real models ramble: wrap some replies, break a few.
    let text = match n % 17 {
        3 => format!("Sure! Here is my answer:\n```json\n{body}\n```\nLet me know if you need more."),
        7 => body[..body.len() / 2].to_string(),
        _ => body,
    };
    Json(json!({
        "id": format!("cmpl-{n}"), "object": "chat.completion", "model": req["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": (system.len() + user.len()) / 4, "completion_tokens": 20, "total_tokens": 0}
    }))
}

async fn embeddings(Json(req): Json<Value>) -> Json<Value> {
    let inputs: Vec<String> = match &req["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
        _ => vec![],
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut v = vec![0f32; 32];
            for w in t.split_whitespace() {
                v[(h(&w.to_lowercase()) % 32) as usize] += 1.0;
            }
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    Json(json!({"object": "list", "data": data, "model": req["model"], "usage": {"prompt_tokens": 1, "total_tokens": 1}}))
}

async fn start_mock() -> (String, Arc<Mock>) {
    let mock = Arc::new(Mock { n: AtomicU64::new(0), in_flight: Default::default() });
    let app = Router::new().route("/v1/chat/completions", post(chat)).route("/v1/embeddings", post(embeddings)).with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), mock)
}

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
    let (base, mock) = start_mock().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(&fs, tmp.path(), &base);
    let mut engine = open_engine(&cfg, Open::Fork, CacheMode::Record).unwrap();
    let maze = Maze::load(&cfg.paths.assets).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // Step through the day, watching the evaluator's memory: it resets at 00:02:30 and its
    // hourly summaries appear as awake hours pass.
    let mut max_hourly = 0;
    while engine.next_step < 576 {
        engine.write_next_environment().unwrap();
        engine.step().await.unwrap();
        max_hourly = max_hourly.max(engine.evaluator.hourly.len() + 4 * engine.evaluator.four_hourly.len());
    }
    assert!(max_hourly >= 3, "hourly summaries were made ({max_hourly})");
    assert!(!engine.assistant.all.is_empty());
    let day1_memory = engine.evaluated_today.len();
    assert!(day1_memory > 100);
    // Day 2 begins: the user's evaluation memory is wiped at 00:02:30, the assistant's is not.
    propersim::sim::headless::run(&mut engine, 578, false, stop.clone()).await.unwrap();
    assert!(engine.evaluator.hour.is_empty() && engine.evaluator.hourly.is_empty() && engine.evaluated_today.is_empty());
    assert!(engine.assistant.all.len() >= day1_memory, "the assistant remembers across days");

    let sim = tmp.path().join("storage/mock");
    let scratch: Value = serde_json::from_str(&std::fs::read_to_string(sim.join("personas/John Lin/bootstrap_memory/scratch.json")).unwrap()).unwrap();
    let hourly: Vec<(String, u32)> = serde_json::from_value(scratch["f_daily_schedule_hourly_org"].clone()).unwrap();
    assert_eq!(hourly.iter().map(|x| x.1).sum::<u32>(), 1440, "the hourly schedule covers 24 h");
    let flat: Vec<(String, u32)> = serde_json::from_value(scratch["f_daily_schedule"].clone()).unwrap();
    assert_eq!(flat.iter().map(|x| x.1).sum::<u32>(), 1440, "the decomposed schedule covers 24 h");
    assert!(flat.iter().all(|x| x.1 % 5 == 0 && x.1 > 0));

    // Actions on real object tiles.
    let mut on_object = 0;
    for step in 0..576u64 {
        let m: Value = serde_json::from_str(&std::fs::read_to_string(sim.join(format!("movement/{step}.json"))).unwrap()).unwrap();
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
            assert_eq!(dims.as_object().unwrap().keys().collect::<Vec<_>>(), ["Personal_Preference", "Timing", "Frequency", "Communication_&_Safety"]);
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
    for t in ["wake_up_hour", "daily_plan", "hourly_schedule", "decompose", "choose_area", "choose_object", "emoji", "poignancy", "suggest", "evaluate_timing", "evaluate_frequency_too_rarely", "summarize_hour"] {
        assert!(tasks.contains(t), "task {t} never ran: {tasks:?}");
    }
}
