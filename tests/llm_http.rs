//! The HTTP providers and the client plumbing against a real axum server on loopback that speaks
//! the OpenAI chat-completions/embeddings and Gemini generateContent/embedContent wire formats,
//! and misbehaves on cue (429 with Retry-After, 500, broken JSON, hung requests, 401, 400).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use propersim::config::{Config, ProviderKind, Role, RoleConfig};
use propersim::llm::cache::{CacheMiss, CacheMode};
use propersim::llm::gemini::GeminiProvider;
use propersim::llm::http::HttpPolicy;
use propersim::llm::ledger::{BudgetExceeded, LedgerEntry};
use propersim::llm::openai::OpenAiProvider;
use propersim::llm::scripted::ScriptedReply;
use propersim::llm::task::json_str;
use propersim::llm::{extract_json, ChatProvider, ChatRequest, Llm, Message, ProviderError, Sampling, Task};

// ----------------------------------------------------------------------------------------------
// The mock server
// ----------------------------------------------------------------------------------------------

/// What the server does with the next request.
#[derive(Clone, Debug)]
enum Reply {
    /// A well-formed success whose message text is this.
    Text(String),
    /// A well-formed success: `{"answer": "<last user message> #<request number>"}`. The number
    /// makes every live reply unique, so equal outputs on replay prove the cache answered.
    Echo,
    /// Any status with an optional Retry-After and a body.
    Status(u16, Option<&'static str>, String),
    /// 200 with this raw body (e.g. truncated JSON).
    Raw(String),
    /// Never answer.
    Hang,
}

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Value,
    at: Instant,
}

struct Mock {
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
    seen: Mutex<Vec<Seen>>,
    delay: Mutex<Duration>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    served: AtomicUsize,
}

impl Mock {
    fn new(default: Reply) -> Arc<Mock> {
        Arc::new(Mock {
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(default),
            seen: Mutex::new(Vec::new()),
            delay: Mutex::new(Duration::ZERO),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
        })
    }
    fn then(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script.lock().unwrap().extend(replies);
    }
    fn set_default(&self, r: Reply) {
        *self.default.lock().unwrap() = r;
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn next(&self) -> Reply {
        self.script.lock().unwrap().pop_front().unwrap_or_else(|| self.default.lock().unwrap().clone())
    }
}

/// Counts requests in flight; decrements even when the client gives up and the handler is dropped.
struct InFlight<'a>(&'a Mock);
impl<'a> InFlight<'a> {
    fn enter(m: &'a Mock) -> Self {
        let now = m.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        m.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(m)
    }
}
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Api {
    OpenAi,
    Gemini,
}

/// Shared request handling: record, wait, then produce the scripted reply in `api`'s format.
async fn handle(
    m: &Mock,
    api: Api,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
    success: impl Fn(&Value, &str) -> Value,
) -> Response {
    let _g = InFlight::enter(m);
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("mock: request body is not JSON: {e}")).into_response(),
    };
    m.seen.lock().unwrap().push(Seen { path, query, headers, body: body.clone(), at: Instant::now() });
    let n = m.served.fetch_add(1, Ordering::SeqCst) + 1;
    let delay = *m.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let json_resp = |status: u16, v: Value| {
        (StatusCode::from_u16(status).unwrap(), [("content-type", "application/json")], v.to_string()).into_response()
    };
    match m.next() {
        Reply::Text(t) => json_resp(200, success(&body, &t)),
        Reply::Echo => {
            let last_user = last_user_text(api, &body);
            let t = json!({"answer": format!("{last_user} #{n}")}).to_string();
            json_resp(200, success(&body, &t))
        }
        Reply::Status(code, retry_after, text) => {
            let mut r =
                (StatusCode::from_u16(code).unwrap(), [("content-type", "application/json")], text).into_response();
            if let Some(ra) = retry_after {
                r.headers_mut().insert("retry-after", ra.parse().unwrap());
            }
            r
        }
        Reply::Raw(t) => (StatusCode::OK, [("content-type", "application/json")], t).into_response(),
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            (StatusCode::OK, "too late").into_response()
        }
    }
}

fn last_user_text(api: Api, body: &Value) -> String {
    let empty = vec![];
    match api {
        Api::OpenAi => body["messages"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
            .to_string(),
        Api::Gemini => body["contents"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .and_then(|m| m["parts"][0]["text"].as_str())
            .unwrap_or("")
            .to_string(),
    }
}

/// A deterministic "embedding" of a text, so tests can check vectors end to end.
fn fake_vector(text: &str) -> Vec<f32> {
    let b = text.as_bytes();
    vec![b.len() as f32, *b.first().unwrap_or(&0) as f32, *b.last().unwrap_or(&0) as f32, 0.25]
}

async fn openai_chat(State(m): State<Arc<Mock>>, headers: HeaderMap, body: Bytes) -> Response {
    handle(&m, Api::OpenAi, "/v1/chat/completions".into(), None, headers, body, |req, text| {
        json!({
            "id": "chatcmpl-test", "object": "chat.completion", "created": 1, "model": req["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
        })
    })
    .await
}

async fn openai_embeddings(State(m): State<Arc<Mock>>, headers: HeaderMap, body: Bytes) -> Response {
    handle(&m, Api::OpenAi, "/v1/embeddings".into(), None, headers, body, |req, _| {
        let inputs: Vec<String> = match &req["input"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a.iter().map(|x| x.as_str().unwrap_or("").to_string()).collect(),
            _ => vec![],
        };
        // Reverse order on the wire: the client must sort by `index`.
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .rev()
            .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": fake_vector(t)}))
            .collect();
        json!({"object": "list", "data": data, "model": req["model"], "usage": {"prompt_tokens": 3, "total_tokens": 3}})
    })
    .await
}

async fn gemini(
    State(m): State<Arc<Mock>>,
    Path(call): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let method = call.rsplit_once(':').map(|(_, m)| m.to_string()).unwrap_or_default();
    let path = format!("/v1beta/models/{call}");
    handle(&m, Api::Gemini, path, uri.query().map(String::from), headers, body, move |req, text| match method.as_str() {
        "generateContent" => json!({
            "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 1000, "candidatesTokenCount": 500, "totalTokenCount": 1500},
            "modelVersion": "gemini-test"
        }),
        "embedContent" => json!({"embedding": {"values": fake_vector(req["content"]["parts"][0]["text"].as_str().unwrap_or(""))}}),
        "batchEmbedContents" => {
            let list: Vec<Value> = req["requests"]
                .as_array()
                .map(|rs| rs.iter().map(|r| json!({"values": fake_vector(r["content"]["parts"][0]["text"].as_str().unwrap_or(""))})).collect())
                .unwrap_or_default();
            json!({"embeddings": list})
        }
        other => json!({"error": {"message": format!("mock: unknown method {other}")}}),
    })
    .await
}

struct Server {
    base: String,
    addr: std::net::SocketAddr,
    mock: Arc<Mock>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(default: Reply) -> Server {
        set_keys();
        let mock = Mock::new(default);
        let app = Router::new()
            .route("/v1/chat/completions", post(openai_chat))
            .route("/v1/embeddings", post(openai_embeddings))
            .route("/v1beta/models/{call}", post(gemini))
            .with_state(mock.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Server { base: format!("http://{addr}"), addr, mock, task }
    }

    /// Stop listening and prove nothing answers on the port any more.
    async fn shut_down(self) {
        self.task.abort();
        let _ = self.task.await;
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(self.addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the mock server still accepts connections");
    }
}

// ----------------------------------------------------------------------------------------------
// Helpers
// ----------------------------------------------------------------------------------------------

fn role_cfg(kind: ProviderKind, base: &str, key_env: Option<&str>) -> RoleConfig {
    let mut rc = RoleConfig::scripted();
    rc.provider = kind;
    rc.model = match kind {
        ProviderKind::Gemini => "gemini-test".into(),
        _ => "test-model".into(),
    };
    rc.base_url = Some(match kind {
        ProviderKind::OpenAi => format!("{base}/v1"),
        _ => base.to_string(),
    });
    rc.api_key_env = key_env.map(String::from);
    rc
}

fn fast_policy(max_attempts: u32) -> HttpPolicy {
    HttpPolicy {
        max_attempts,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        retry_after_max: Duration::from_secs(5),
    }
}

fn request(text: &str) -> ChatRequest {
    ChatRequest {
        model: "test-model".into(),
        messages: vec![Message::system("You are terse."), Message::user(text)],
        sampling: Sampling {
            temperature: Some(0.7),
            top_p: Some(0.9),
            top_k: Some(40),
            max_tokens: Some(64),
            repeat_penalty: None,
            seed: Some(7),
        },
        schema: None,
    }
}

/// The test keys, set once before any test touches the environment: setting variables while
/// another thread reads them is a data race in libc, so every test calls this first.
fn set_keys() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for (var, value) in [
            ("PROPERSIM_TEST_KEY_429", "sk-test-429-abcdef"),
            ("PROPERSIM_TEST_KEY_401", "sk-secret-401-xyz"),
            ("PROPERSIM_TEST_KEY_GEMINI", "AIza-test-gemini-key"),
            ("PROPERSIM_TEST_KEY_CLIENT", "sk-client-zzz"),
        ] {
            std::env::set_var(var, value);
        }
    });
}

/// A task whose reply must be JSON with an `answer` string.
struct Ask {
    q: String,
    role: Role,
}

impl Task for Ask {
    type Output = String;
    fn name(&self) -> &'static str {
        "answer"
    }
    fn role(&self) -> Role {
        self.role
    }
    fn schema(&self) -> Value {
        propersim::llm::object_schema(&[("answer", propersim::llm::text_schema(40))])
    }
    fn messages(&self) -> Vec<Message> {
        vec![Message::system("Reply with JSON: {\"answer\": \"...\"}"), Message::user(self.q.clone())]
    }
    fn parse(&self, reply: &str) -> Result<String, String> {
        extract_json(reply).and_then(|v| json_str(&v, "answer")).ok_or_else(|| format!("no `answer` in {reply:?}"))
    }
    fn fallback(&self) -> String {
        "FALLBACK".into()
    }
}

/// The scripted brain's reply (the evaluator role is scripted in some tests).
impl ScriptedReply for Ask {
    fn scripted(&self, rng: &mut rand_chacha::ChaCha8Rng) -> String {
        use rand_chacha::rand_core::RngCore;
        format!("{{\"answer\": \"scripted {}\"}}", rng.next_u32() % 100)
    }
}

fn ask(q: &str) -> Ask {
    Ask { q: q.into(), role: Role::User }
}

fn config_with(role: Role, rc: RoleConfig) -> Config {
    let mut cfg = Config::default();
    cfg.set_all_providers(ProviderKind::Scripted);
    cfg.roles.insert(role.as_str().into(), rc);
    cfg
}

fn read_ledger(path: &std::path::Path) -> Vec<LedgerEntry> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

// ----------------------------------------------------------------------------------------------
// Provider transport
// ----------------------------------------------------------------------------------------------

#[tokio::test]
async fn openai_honours_retry_after_and_sends_bearer_key() {
    let s = Server::start(Reply::Text("hello there".into())).await;
    s.mock.then([Reply::Status(
        429,
        Some("1"),
        r#"{"error":{"message":"Rate limit reached","type":"requests"}}"#.into(),
    )]);
    let rc = role_cfg(ProviderKind::OpenAi, &s.base, Some("PROPERSIM_TEST_KEY_429"));
    let p = OpenAiProvider::new(&rc).unwrap().with_policy(fast_policy(3));
    let t0 = Instant::now();
    let r = p.chat(&request("hi")).await.unwrap();
    assert_eq!(r.text, "hello there");
    assert_eq!(r.retries, 1);
    assert_eq!((r.prompt_tokens, r.completion_tokens), (1000, 500));
    let seen = s.mock.seen();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_millis(950), "Retry-After: 1 was not honoured (waited {gap:?})");
    assert!(t0.elapsed() < Duration::from_secs(5));
    for req in &seen {
        assert_eq!(req.headers["authorization"].to_str().unwrap(), "Bearer sk-test-429-abcdef");
    }
    let b = &seen[0].body;
    assert_eq!(b["model"], "test-model");
    assert_eq!(b["messages"][0]["role"], "system");
    assert_eq!(b["messages"][1]["content"], "hi");
    assert_eq!(
        (b["temperature"].as_f64(), b["top_p"].as_f64(), b["max_tokens"].as_u64(), b["seed"].as_u64()),
        (Some(0.7), Some(0.9), Some(64), Some(7))
    );
    assert_eq!(b["top_k"], 40);
    assert!(b.get("repeat_penalty").is_none(), "unset extras must not be sent: {b}");
    assert!(!format!("{p:?}").contains("sk-test-429"), "Debug must redact the key");
}

#[tokio::test]
async fn server_errors_and_broken_json_are_retried_then_reported() {
    let s = Server::start(Reply::Text("fine".into())).await;
    s.mock.then([
        Reply::Status(500, None, "upstream exploded".into()),
        Reply::Raw(r#"{"choices": [{"message": "#.into()),
    ]);
    let rc = role_cfg(ProviderKind::OpenAi, &s.base, None);
    let p = OpenAiProvider::new(&rc).unwrap().with_policy(fast_policy(4));
    let r = p.chat(&request("x")).await.unwrap();
    assert_eq!((r.text.as_str(), r.retries), ("fine", 2));
    assert!(s.mock.seen()[0].headers.get("authorization").is_none(), "no api_key_env: no key is sent");

    // A server that only ever sends broken JSON: bounded attempts, then a clear error.
    s.mock.set_default(Reply::Raw("{\"choices\": [".into()));
    let before = s.mock.seen().len();
    let e = p.chat(&request("x")).await.unwrap_err();
    assert!(matches!(e, ProviderError::Exhausted { attempts: 4, .. }), "{e:?}");
    assert!(e.to_string().contains("not valid JSON"), "{e}");
    assert_eq!(s.mock.seen().len() - before, 4);

    // 500 forever: bounded too, and the status is in the message.
    s.mock.set_default(Reply::Status(503, None, r#"{"error":{"message":"overloaded"}}"#.into()));
    let e = p.chat(&request("x")).await.unwrap_err().to_string();
    assert!(e.contains("503") && e.contains("overloaded"), "{e}");
}

#[tokio::test]
async fn hung_request_times_out_within_bounds() {
    let s = Server::start(Reply::Hang).await;
    let mut rc = role_cfg(ProviderKind::OpenAi, &s.base, None);
    rc.timeout_s = Some(0.3);
    let p = OpenAiProvider::new(&rc).unwrap().with_policy(fast_policy(2));
    let t0 = Instant::now();
    let e = p.chat(&request("x")).await.unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(e, ProviderError::Exhausted { attempts: 2, .. }), "{e:?}");
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(took >= Duration::from_millis(580) && took < Duration::from_secs(4), "took {took:?}");
    assert_eq!(s.mock.seen().len(), 2);
}

#[tokio::test]
async fn auth_failures_name_the_variable_not_the_key() {
    let s = Server::start(Reply::Status(401, None, r#"{"error":{"message":"Incorrect API key provided: sk-secret-401-xyz.","type":"invalid_request_error","code":"invalid_api_key"}}"#.into())).await;
    let rc = role_cfg(ProviderKind::OpenAi, &s.base, Some("PROPERSIM_TEST_KEY_401"));
    let p = OpenAiProvider::new(&rc).unwrap().with_policy(fast_policy(3));
    let e = p.chat(&request("x")).await.unwrap_err();
    assert!(matches!(e, ProviderError::Auth { status: 401, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("PROPERSIM_TEST_KEY_401"), "{msg}");
    assert!(!msg.contains("sk-secret-401-xyz"), "the key leaked: {msg}");
    assert_eq!(s.mock.seen().len(), 1, "401 is not retried");

    // The variable is not set at all: nothing is sent, and the error says which variable.
    let rc = role_cfg(ProviderKind::OpenAi, &s.base, Some("PROPERSIM_TEST_KEY_NEVER_SET"));
    let e = OpenAiProvider::new(&rc).unwrap().chat(&request("x")).await.unwrap_err().to_string();
    assert!(e.contains("PROPERSIM_TEST_KEY_NEVER_SET") && e.contains("not set"), "{e}");
    assert_eq!(s.mock.seen().len(), 1);
}

#[tokio::test]
async fn bad_request_carries_the_server_message() {
    let s = Server::start(Reply::Status(
        400,
        None,
        r#"{"error":{"message":"max_tokens is too large: 999999","type":"invalid_request_error"}}"#.into(),
    ))
    .await;
    let p = OpenAiProvider::new(&role_cfg(ProviderKind::OpenAi, &s.base, None)).unwrap().with_policy(fast_policy(3));
    let e = p.chat(&request("x")).await.unwrap_err();
    assert!(matches!(e, ProviderError::BadRequest { status: 400, .. }), "{e:?}");
    assert!(e.to_string().contains("max_tokens is too large: 999999"), "{e}");
    assert_eq!(s.mock.seen().len(), 1, "400 is not retried");
}

#[tokio::test]
async fn concurrency_limit_is_respected() {
    let s = Server::start(Reply::Text("ok".into())).await;
    *s.mock.delay.lock().unwrap() = Duration::from_millis(150);
    let mut rc = role_cfg(ProviderKind::OpenAi, &s.base, None);
    rc.concurrency = Some(2);
    let p = OpenAiProvider::new(&rc).unwrap();
    let reqs: Vec<ChatRequest> = (0..6).map(|i| request(&format!("q{i}"))).collect();
    let results = futures::future::join_all(reqs.iter().map(|r| p.chat(r))).await;
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(s.mock.seen().len(), 6);
    assert_eq!(
        s.mock.max_in_flight.load(Ordering::SeqCst),
        2,
        "at most `concurrency` requests in flight, and the limit was reached"
    );
}

#[tokio::test]
async fn openai_embeddings_round_trip_and_cache_by_text() {
    let s = Server::start(Reply::Text(String::new())).await;
    let cfg = config_with(Role::Embedding, role_cfg(ProviderKind::OpenAi, &s.base, None));
    let llm = Llm::from_config(&cfg).unwrap();
    let texts = vec!["alpha".to_string(), "be".to_string(), "cat!".to_string()];
    let vecs = llm.embed_many(&texts).await.unwrap();
    assert_eq!(vecs, texts.iter().map(|t| fake_vector(t)).collect::<Vec<_>>());
    assert_eq!(s.mock.seen()[0].body["input"], json!(texts));
    assert_eq!(llm.embed("be").await.unwrap(), fake_vector("be"));
    assert_eq!(s.mock.seen().len(), 1, "a text embedded before is served from memory");
    assert_eq!(llm.embed("dog").await.unwrap(), fake_vector("dog"));
    assert_eq!(s.mock.seen().len(), 2);
    assert_eq!(llm.totals().get("embedding", "embed").unwrap().calls, 2);
}

#[tokio::test]
async fn gemini_wire_format_retries_and_embeddings() {
    let s = Server::start(Reply::Text("model says hi".into())).await;
    s.mock.then([Reply::Status(
        429,
        Some("1"),
        r#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}"#.into(),
    )]);
    let rc = role_cfg(ProviderKind::Gemini, &s.base, Some("PROPERSIM_TEST_KEY_GEMINI"));
    let p = GeminiProvider::new(&rc).unwrap().with_policy(fast_policy(3));
    let mut req = request("hello");
    req.model = "models/gemini-test".into();
    req.messages.push(Message::assistant("earlier answer"));
    req.messages.push(Message::user("and now?"));
    let r = p.chat(&req).await.unwrap();
    assert_eq!((r.text.as_str(), r.retries, r.prompt_tokens, r.completion_tokens), ("model says hi", 1, 1000, 500));
    let seen = s.mock.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].at - seen[0].at >= Duration::from_millis(950));
    let first = &seen[0];
    assert_eq!(first.path, "/v1beta/models/gemini-test:generateContent");
    assert_eq!(first.headers["x-goog-api-key"].to_str().unwrap(), "AIza-test-gemini-key");
    assert!(first.query.is_none(), "the key must not travel in the URL");
    let b = &first.body;
    assert_eq!(b["systemInstruction"]["parts"][0]["text"], "You are terse.");
    let roles: Vec<&str> = b["contents"].as_array().unwrap().iter().map(|c| c["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "model", "user"]);
    let gc = &b["generationConfig"];
    assert_eq!(
        (
            gc["temperature"].as_f64(),
            gc["topP"].as_f64(),
            gc["topK"].as_u64(),
            gc["maxOutputTokens"].as_u64(),
            gc["seed"].as_u64()
        ),
        (Some(0.7), Some(0.9), Some(40), Some(64), Some(7))
    );

    let one = p.embed("text-embedding-004", &["solo".to_string()]).await.unwrap();
    assert_eq!(one, vec![fake_vector("solo")]);
    let many = p.embed("text-embedding-004", &["a".to_string(), "bb".to_string()]).await.unwrap();
    assert_eq!(many, vec![fake_vector("a"), fake_vector("bb")]);
    let seen = s.mock.seen();
    assert_eq!(seen[2].path, "/v1beta/models/text-embedding-004:embedContent");
    assert_eq!(seen[2].body["model"], "models/text-embedding-004");
    assert_eq!(seen[3].path, "/v1beta/models/text-embedding-004:batchEmbedContents");
    assert_eq!(seen[3].body["requests"].as_array().unwrap().len(), 2);

    // Bad model ids never reach the network.
    let mut bad = request("x");
    bad.model = "../../etc?key=1".into();
    assert!(matches!(p.chat(&bad).await, Err(ProviderError::BadRequest { .. })));
    assert_eq!(s.mock.seen().len(), 4);
}

// ----------------------------------------------------------------------------------------------
// Client plumbing: task retries, fallback, ledger, cache, budget
// ----------------------------------------------------------------------------------------------

#[tokio::test]
async fn task_retries_bad_replies_then_falls_back_and_ledgers_it() {
    let s = Server::start(Reply::Text("I'd rather not say.".into())).await;
    s.mock.then([Reply::Text("Sure! no json here".into()), Reply::Text("```json\n{\"answer\": \"yes\"}\n```".into())]);
    let mut rc = role_cfg(ProviderKind::OpenAi, &s.base, None);
    rc.price_prompt_per_mtok = Some(1.0);
    rc.price_completion_per_mtok = Some(4.0);
    let mut cfg = config_with(Role::User, rc);
    cfg.sim.task_retries = 2;
    let dir = tempfile::tempdir().unwrap();
    let ledger_path = dir.path().join("llm_ledger.jsonl");
    let llm = Llm::from_config(&cfg).unwrap().with_ledger(&ledger_path).unwrap();
    llm.set_step(17);

    let ok = llm.run(&ask("ready?")).await.unwrap();
    assert_eq!((ok.value.as_str(), ok.fallback, ok.attempts), ("yes", false, 2));
    let bad = llm.run(&ask("and now?")).await.unwrap();
    assert_eq!((bad.value.as_str(), bad.fallback, bad.attempts), ("FALLBACK", true, 3));
    assert_eq!(s.mock.seen().len(), 5);
    assert_eq!(llm.fallbacks(), 1);

    // A scripted role goes through the ledger too.
    let scripted = llm.run(&Ask { q: "plan".into(), role: Role::Evaluator }).await.unwrap();
    assert!(scripted.value.starts_with("scripted "));

    let lines = read_ledger(&ledger_path);
    assert_eq!(lines.len(), 3);
    let (a, b, c) = (&lines[0], &lines[1], &lines[2]);
    assert_eq!(
        (a.task.as_str(), a.role.as_str(), a.provider.as_str(), a.model.as_str()),
        ("answer", "user", "openai", "test-model")
    );
    assert_eq!(
        (a.prompt_tokens, a.completion_tokens, a.retries, a.fallback_used, a.step),
        (2000, 1000, 1, false, Some(17))
    );
    assert!((a.cost_usd - (2000.0 * 1.0 + 1000.0 * 4.0) / 1e6).abs() < 1e-12, "{}", a.cost_usd);
    assert_eq!((b.retries, b.fallback_used, b.prompt_tokens), (2, true, 3000));
    assert_eq!((c.provider.as_str(), c.role.as_str(), c.cost_usd), ("scripted", "evaluator", 0.0));
    assert!(c.prompt_tokens > 0 && c.completion_tokens > 0, "scripted tokens are estimated");
    assert!(!a.cached && a.error.is_none() && chrono::DateTime::parse_from_rfc3339(&a.time).is_ok());

    let t = llm.totals();
    let user = t.get("user", "answer").unwrap();
    assert_eq!((user.calls, user.fallbacks, user.prompt_tokens), (2, 1, 5000));
    assert_eq!(t.total.calls, 3);
    let table = t.to_string();
    assert!(table.contains("answer") && table.contains("evaluator") && table.contains("TOTAL"), "{table}");
    // Reopening the ledger restores the totals (a resumed run keeps its budget).
    let again = Llm::from_config(&cfg).unwrap().with_ledger(&ledger_path).unwrap();
    assert_eq!(again.totals(), t);
}

#[tokio::test]
async fn task_schemas_go_out_as_response_format_and_response_schema_unless_structured_is_off() {
    let s = Server::start(Reply::Text("{\"answer\": \"ok\"}".into())).await;
    let schema = ask("x").schema();
    for (kind, structured) in
        [(ProviderKind::OpenAi, None), (ProviderKind::Gemini, None), (ProviderKind::OpenAi, Some(false))]
    {
        let mut rc = role_cfg(kind, &s.base, None);
        rc.structured = structured;
        rc.max_tokens = Some(8);
        let llm = Llm::from_config(&config_with(Role::User, rc)).unwrap();
        assert_eq!(llm.run(&ask("shape?")).await.unwrap().value, "ok");
        let body = s.mock.seen().last().unwrap().body.clone();
        match (kind, structured) {
            (ProviderKind::OpenAi, None) => {
                assert_eq!(body["response_format"]["type"], "json_schema");
                assert_eq!(body["response_format"]["json_schema"]["schema"], schema);
                // The token limit lets every valid answer finish, whatever the role's limit.
                assert!(body["max_tokens"].as_u64().unwrap() >= 40, "{body}");
            }
            (ProviderKind::Gemini, _) => {
                let gc = &body["generationConfig"];
                assert_eq!(gc["responseMimeType"], "application/json");
                assert_eq!(gc["responseSchema"]["properties"]["answer"]["maxLength"], 40);
                assert!(gc["responseSchema"].get("additionalProperties").is_none());
            }
            _ => assert!(body.get("response_format").is_none() && body["max_tokens"] == 8, "{body}"),
        }
    }
    s.shut_down().await;
}

#[tokio::test]
async fn recorded_run_replays_byte_identically_without_a_server() {
    let s = Server::start(Reply::Echo).await;
    // The first reply to "two" is unusable, so the recorded run includes a task retry.
    let mut cfg = config_with(Role::User, role_cfg(ProviderKind::OpenAi, &s.base, None));
    cfg.roles.insert("assistant".into(), role_cfg(ProviderKind::Gemini, &s.base, None));
    cfg.roles.insert("embedding".into(), role_cfg(ProviderKind::OpenAi, &s.base, None));
    let sim = tempfile::tempdir().unwrap();
    let tasks = [ask("one"), ask("two"), Ask { q: "three".into(), role: Role::Assistant }, ask("one")];

    async fn run_all(llm: &Llm, tasks: &[Ask]) -> anyhow::Result<(Vec<String>, Vec<f32>)> {
        let mut out = Vec::new();
        for t in tasks {
            out.push(llm.run(t).await?.value);
        }
        Ok((out, llm.embed("the park at noon").await?))
    }

    let recorded = {
        let llm = Llm::for_sim(&cfg, sim.path(), CacheMode::Record).unwrap();
        llm.set_adapter_version(Role::Assistant, 3);
        // Make the first attempt of "two" bad by scripting the server: requests 1 ("one"),
        // then "two" gets a bad reply, then Echo again.
        s.mock.then([Reply::Echo, Reply::Text("garbage".into())]);
        run_all(&llm, &tasks).await.unwrap()
    };
    let live_requests = s.mock.seen().len();
    assert_eq!(
        live_requests, 5,
        "3 distinct tasks + 1 retry live (the repeated task comes from the cache) + 1 embedding"
    );
    assert_eq!(recorded.0[0], recorded.0[3], "a repeated prompt is answered from the cache");
    assert!(recorded.0[1].starts_with("two #"), "{:?}", recorded.0);
    s.shut_down().await;

    let llm = Llm::for_sim(&cfg, sim.path(), CacheMode::Replay).unwrap();
    llm.set_adapter_version(Role::Assistant, 3);
    let replayed = run_all(&llm, &tasks).await.unwrap();
    assert_eq!(format!("{:?}", replayed.0), format!("{:?}", recorded.0));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&replayed.1), bits(&recorded.1));

    // The replayed calls are ledgered as cached and free.
    let lines = read_ledger(&sim.path().join("llm_ledger.jsonl"));
    let replay_lines: Vec<&LedgerEntry> = lines.iter().filter(|l| l.task == "answer").skip(4).collect();
    assert_eq!(replay_lines.len(), 4);
    assert!(replay_lines.iter().all(|l| l.cached && l.cost_usd == 0.0));
    assert_eq!(replay_lines[1].retries, 1, "the retry sequence is replayed too");

    // Strict replay: anything not recorded is a clear error naming the task.
    let e = llm.run(&ask("never asked")).await.unwrap_err();
    assert!(e.downcast_ref::<CacheMiss>().is_some(), "{e:#}");
    let msg = format!("{e:#}");
    assert!(msg.contains("`answer`") && msg.contains("--llm-cache record"), "{msg}");
    // A different adapter version is a different key.
    llm.set_adapter_version(Role::Assistant, 4);
    let e = llm.run(&Ask { q: "three".into(), role: Role::Assistant }).await.unwrap_err();
    assert!(e.downcast_ref::<CacheMiss>().is_some(), "{e:#}");
    let e = llm.embed("never embedded").await.unwrap_err();
    assert!(e.downcast_ref::<CacheMiss>().is_some(), "{e:#}");
}

#[tokio::test]
async fn budget_cap_stops_the_run() {
    let s = Server::start(Reply::Text("{\"answer\": \"paid\"}".into())).await;
    let mut rc = role_cfg(ProviderKind::OpenAi, &s.base, None);
    rc.price_prompt_per_mtok = Some(10.0); // 1000 prompt tokens -> $0.01
    rc.price_completion_per_mtok = Some(0.0);
    let mut cfg = config_with(Role::User, rc);
    cfg.sim.budget_usd = Some(0.015);
    let llm = Llm::from_config(&cfg).unwrap();
    assert_eq!(llm.run(&ask("a")).await.unwrap().value, "paid");
    assert_eq!(llm.run(&ask("b")).await.unwrap().value, "paid");
    let e = llm.run(&ask("c")).await.unwrap_err();
    let b = e.downcast_ref::<BudgetExceeded>().unwrap_or_else(|| panic!("not a BudgetExceeded: {e:#}"));
    assert!((b.spent_usd - 0.02).abs() < 1e-9 && b.budget_usd == 0.015, "{b:?}");
    assert_eq!(s.mock.seen().len(), 2, "no request is sent once the budget is spent");
    // Scripted roles are free and keep working.
    assert!(llm.run(&Ask { q: "x".into(), role: Role::Evaluator }).await.is_ok());
    assert_eq!(llm.totals().total.errors, 1);
}

#[tokio::test]
async fn client_errors_are_not_swallowed_as_fallbacks() {
    let s = Server::start(Reply::Status(401, None, r#"{"error":{"message":"bad key"}}"#.into())).await;
    let cfg = config_with(Role::User, role_cfg(ProviderKind::OpenAi, &s.base, Some("PROPERSIM_TEST_KEY_CLIENT")));
    let llm = Llm::from_config(&cfg).unwrap();
    let e = llm.run(&ask("hi")).await.unwrap_err();
    let pe = e.downcast_ref::<ProviderError>().unwrap_or_else(|| panic!("{e:#}"));
    assert!(matches!(pe, ProviderError::Auth { .. }));
    let msg = format!("{e:#}");
    assert!(
        msg.contains("`answer`") && msg.contains("PROPERSIM_TEST_KEY_CLIENT") && !msg.contains("sk-client-zzz"),
        "{msg}"
    );
    assert_eq!(llm.fallbacks(), 0);
    assert_eq!(llm.totals().total.errors, 1);
}

#[tokio::test]
async fn cli_chat_and_embed_use_the_configured_role() {
    let s = Server::start(Reply::Text("pong".into())).await;
    let mut cfg = config_with(Role::Evaluator, role_cfg(ProviderKind::OpenAi, &s.base, None));
    cfg.roles.insert("embedding".into(), role_cfg(ProviderKind::Gemini, &s.base, None));
    assert_eq!(propersim::llm::cli::chat(&cfg, Role::Evaluator, "ping").await.unwrap(), "pong");
    assert_eq!(s.mock.seen()[0].body["messages"][0]["content"], "ping");
    let (n, norm) = propersim::llm::cli::embed(&cfg, "abc").await.unwrap();
    let v = fake_vector("abc");
    assert_eq!(n, v.len());
    assert!((norm - v.iter().map(|x| x * x).sum::<f32>().sqrt()).abs() < 1e-4);
}
