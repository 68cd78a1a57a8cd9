//! An OpenAI-compatible mock model on loopback that answers each of our tasks the way a chat
//! model would, with some replies wrapped in prose or code fences and some broken.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

pub struct Mock {
    /// Chat requests answered.
    pub n: AtomicU64,
    /// Embeddings requests answered.
    pub embeds: AtomicU64,
    /// Requests in flight and the most seen at once, per model.
    pub in_flight: std::sync::Mutex<std::collections::HashMap<String, (u64, u64)>>,
    /// Requests in flight over all models, and the most seen at once.
    pub total_in_flight: std::sync::Mutex<(u64, u64)>,
    pub opts: MockOptions,
}

/// How the mock behaves.
#[derive(Debug, Clone, Copy)]
pub struct MockOptions {
    /// Time before each chat answer.
    pub latency: std::time::Duration,
    /// Time before each embeddings answer.
    pub embed_latency: std::time::Duration,
    /// Wrap some replies in prose and cut some in half, as real models do.
    pub imperfect: bool,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            latency: std::time::Duration::from_millis(2),
            embed_latency: std::time::Duration::ZERO,
            imperfect: true,
        }
    }
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
        let acts = [
            "cooking breakfast",
            "rearranging the shelves",
            "reading a book",
            "having lunch",
            "watering the garden",
            "sketching designs",
            "cooking dinner",
            "journaling",
        ];
        let sched: Vec<Value> = (0..24u32)
            .map(|hr| {
                let a = if hr < wake || hr >= 23 {
                    "sleeping".to_string()
                } else {
                    acts[((hr - wake) as usize) % acts.len()].to_string()
                };
                json!({"hour": format!("{hr:02}:00"), "activity": a})
            })
            .collect();
        return json!({"schedule": sched}).to_string();
    }
    if prompt.contains("{\"subtasks\"") {
        let mins: u32 = prompt
            .split("you will spend ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(60);
        // Durations that don't add up on purpose: the parser has to fit them.
        return json!({"subtasks": [{"task": "getting ready", "minutes": 10}, {"task": "the main part", "minutes": mins}, {"task": "cleaning up", "minutes": 15}]}).to_string();
    }
    if prompt.contains("{\"choice\"") {
        let opts: Vec<&str> = prompt
            .split("Choose exactly one of: ")
            .nth(1)
            .unwrap_or("")
            .split('\n')
            .next()
            .unwrap_or("")
            .trim_end_matches('.')
            .split(", ")
            .map(|o| o.trim_matches('"'))
            .collect();
        let action = prompt.split("You are about to be ").nth(1).and_then(|s| s.split('.').next()).unwrap_or("");
        let good = opts
            .iter()
            .find(|o| action.split(' ').any(|w| w.len() > 3 && o.contains(&w[..4])))
            .or(opts.first())
            .copied()
            .unwrap_or("");
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
        for (i, k) in
            ["Personal_Preference", "Timing", "Frequency_too_often", "Frequency_too_rarely", "Communication_&_Safety"]
                .iter()
                .enumerate()
        {
            m.insert(k.to_string(), json!({"Score": (pick >> i) & 1, "Reason": "judged"}));
        }
        return Value::Object(m).to_string();
    }
    if prompt.contains("\"Score\": 0 or 1") {
        return json!({"Score": !pick.is_multiple_of(4) as u8, "Reason": "That is how I feel about it."}).to_string();
    }
    if system.contains("proactive assistant") {
        let s = if pick.is_multiple_of(2) {
            "No Recommendation".to_string()
        } else {
            format!("Maybe take a short break (idea {}).", pick % 7)
        };
        return json!({"Suggestion": s}).to_string();
    }
    "I am not sure what you want.".into()
}

async fn chat(State(m): State<Arc<Mock>>, Json(req): Json<Value>) -> Json<Value> {
    let msgs = req["messages"].as_array().cloned().unwrap_or_default();
    let system =
        msgs.iter().find(|m| m["role"] == "system").and_then(|m| m["content"].as_str()).unwrap_or("").to_string();
    let user =
        msgs.iter().rev().find(|m| m["role"] == "user").and_then(|m| m["content"].as_str()).unwrap_or("").to_string();
    let n = m.n.fetch_add(1, Ordering::SeqCst);
    let model = req["model"].as_str().unwrap_or("").to_string();
    {
        let mut f = m.in_flight.lock().unwrap();
        let e = f.entry(model.clone()).or_insert((0, 0));
        e.0 += 1;
        e.1 = e.1.max(e.0);
        let mut t = m.total_in_flight.lock().unwrap();
        t.0 += 1;
        t.1 = t.1.max(t.0);
    }
    // Latency, so concurrent calls overlap as they would against a real server.
    tokio::time::sleep(m.opts.latency).await;
    m.in_flight.lock().unwrap().get_mut(&model).unwrap().0 -= 1;
    m.total_in_flight.lock().unwrap().0 -= 1;
    let body = answer(&user, &system);
    // Real models ramble: wrap some replies, break a few.
    let text = match n % 17 {
        3 if m.opts.imperfect => {
            format!("Sure! Here is my answer:\n```json\n{body}\n```\nLet me know if you need more.")
        }
        7 if m.opts.imperfect => body[..body.len() / 2].to_string(),
        _ => body,
    };
    Json(json!({
        "id": format!("cmpl-{n}"), "object": "chat.completion", "model": req["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": (system.len() + user.len()) / 4, "completion_tokens": 20, "total_tokens": 0}
    }))
}

async fn embeddings(State(m): State<Arc<Mock>>, Json(req): Json<Value>) -> Json<Value> {
    m.embeds.fetch_add(1, Ordering::SeqCst);
    if !m.opts.embed_latency.is_zero() {
        {
            let mut t = m.total_in_flight.lock().unwrap();
            t.0 += 1;
            t.1 = t.1.max(t.0);
        }
        tokio::time::sleep(m.opts.embed_latency).await;
        m.total_in_flight.lock().unwrap().0 -= 1;
    }
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
    Json(
        json!({"object": "list", "data": data, "model": req["model"], "usage": {"prompt_tokens": 1, "total_tokens": 1}}),
    )
}

pub async fn start_mock() -> (String, Arc<Mock>) {
    start_mock_with(MockOptions::default()).await
}

pub async fn start_mock_with(opts: MockOptions) -> (String, Arc<Mock>) {
    let mock = Arc::new(Mock {
        n: AtomicU64::new(0),
        embeds: AtomicU64::new(0),
        in_flight: Default::default(),
        total_in_flight: Default::default(),
        opts,
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), mock)
}
