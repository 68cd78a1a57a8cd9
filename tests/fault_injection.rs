//! Fault injection against the real binary: kill -9 at random moments, a power loss's damage, a
//! hostile web page, slow clients, malformed and out-of-place posts, an LLM API that refuses,
//! hangs or rate-limits, and Ctrl-C. Real processes and real loopback servers throughout; the
//! mock API is a plain HTTP server speaking the OpenAI wire format.
//!
//! The tests share two CPU cores with whatever else runs, and some measure time (exit within
//! 2 s, a connection closed within its timeout), so they run one at a time.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const SEED: &str = "base_the_ville_persona_1";
const DAY: u64 = 576;

fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// `propersim run --novis` on the scripted brain in `root`.
fn run_cmd(fs: &Path, root: &Path, sim: &str, extra: &[&str]) -> Command {
    let mut c = api_run_cmd(fs, root, sim, extra);
    c.args(["--provider", "scripted"]);
    c
}

/// `propersim run --novis` with the models of the configuration (give `--config`).
fn api_run_cmd(fs: &Path, root: &Path, sim: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(common::bin());
    c.args(["run", "--novis", "--fork", SEED, "--sim", sim, "-q"]);
    paths(&mut c, fs, root);
    c.args(extra).stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

fn paths(c: &mut Command, fs: &Path, root: &Path) {
    common::folder_args(c, fs, root, "temp_storage");
}

fn ok(out: Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "the command failed ({}): {err}", out.status);
    err
}

fn python() -> Option<&'static str> {
    Command::new("python3").arg("--version").output().ok().filter(|o| o.status.success()).map(|_| "python3")
}

/// The persona folders of `sim` load in a re-implementation of the original's loaders.
fn original_loads(python: &str, sim: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/original_loader.py");
    let out = Command::new(python).arg(script).arg(sim).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "the original could not load {}: {text}", sim.display());
    serde_json::from_str(&text).unwrap()
}

/// Every file of `a` and `b` is the same, except the LLM ledger (wall-clock times).
fn assert_same_tree(a: &Path, b: &Path) {
    let list = |d: &Path| {
        let v = common::files_under(d);
        let mut v: Vec<PathBuf> = v.into_iter().map(|p| p.strip_prefix(d).unwrap().to_path_buf()).collect();
        // Timings and times: the ledger's latencies, run.json's `created` and `updated`.
        v.retain(|p| p != Path::new("llm_ledger.jsonl") && p != Path::new(propersim::storage::run::FILE));
        v.sort();
        v
    };
    let (la, lb) = (list(a), list(b));
    assert_eq!(la, lb, "the two runs left different files");
    for rel in &la {
        let (x, y) = (std::fs::read(a.join(rel)).unwrap(), std::fs::read(b.join(rel)).unwrap());
        assert!(x == y, "{} differs from the uninterrupted run", rel.display());
    }
    assert!(la.len() > 2 * DAY as usize, "{} files", la.len());
}

fn ledger(sim: &Path) -> Vec<Value> {
    propersim::storage::read_jsonl(&sim.join("llm_ledger.jsonl")).unwrap()
}

fn tasks_at(ledger: &[Value], step: u64) -> Vec<String> {
    let mut v: Vec<String> =
        ledger.iter().filter(|l| l["step"] == step).map(|l| l["task"].as_str().unwrap_or("").to_string()).collect();
    v.sort();
    v
}

// ------------------------------------------------------------------------------------------------
// 1, 2: kill -9 at random moments; the persona folders always load in the original; the resumed
// sim equals an uninterrupted one; a resume embeds nothing again.
// ------------------------------------------------------------------------------------------------

#[test]
fn kill9_at_20_moments_resumes_to_the_same_files() {
    let _serial = serial();
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let python = need!(python(), "python3");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let storage = root.join("storage");
    // Kills need no fsync (the page cache survives a killed process): keep the runs quick.
    let fast = ["--days", "2", "--set", "durable=false"];

    ok(run_cmd(&fs, root, "whole", &fast).output().unwrap());
    let whole = storage.join("whole");
    original_loads(python, &whole);

    let sim = storage.join("killed");
    let leftover = |storage: &Path| {
        std::fs::read_dir(storage)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".fork-killed-"))
    };
    let done = || sim.join("reverie/meta.json").exists();
    // Two kills in the first milliseconds (while the process starts and forks), one as soon as
    // the fork's temporary folder appears, the rest when a random step of the two days is
    // reached (sorted, so the run moves on), each a random fraction of a step later.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(14);
    let mut targets: Vec<u64> = (0..17).map(|_| rng.gen_range(1..2 * DAY - 2)).collect();
    targets.sort_unstable();
    let (mut kills, mut early, mut forks_cut, mut mid_run) = (0, 0, 0, 0);
    while kills < 20 {
        let mut cmd = run_cmd(&fs, root, "killed", &fast);
        if done() || leftover(&storage) {
            cmd.arg("--resume");
        }
        let mut child = cmd.spawn().unwrap();
        let t0 = Instant::now();
        let running = |child: &mut Child| child.try_wait().unwrap().is_none();
        match kills {
            0 | 1 => std::thread::sleep(Duration::from_micros(rng.gen_range(0..4000))),
            2 => {
                while !leftover(&storage) && !done() && running(&mut child) && t0.elapsed() < Duration::from_secs(30) {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            k => {
                let target = sim.join(format!("movement/{}.json", targets[k - 3]));
                while !target.exists() && running(&mut child) && t0.elapsed() < Duration::from_secs(60) {
                    std::thread::sleep(Duration::from_micros(200));
                }
                std::thread::sleep(Duration::from_micros(rng.gen_range(0..1500)));
            }
        }
        let still_running = running(&mut child);
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        if !still_running {
            panic!("run {kills} ended on its own with {status} before its kill: {}", common::stderr_of(&mut child));
        }
        kills += 1;
        if leftover(&storage) {
            forks_cut += 1;
        }
        if !done() {
            early += 1;
            continue;
        }
        mid_run += 1;
        // Whatever the moment, the persona folders load in the original.
        original_loads(python, &sim);
    }
    eprintln!("20 kills: {early} before the sim was in place ({forks_cut} mid-fork), {mid_run} after");
    assert!(mid_run >= 15, "{mid_run}");
    // A fork cut half-way (as a kill leaves it, whether or not a kill above hit that moment) and
    // writes cut before their rename: the next run finishes the fork and sweeps them.
    let half = storage.join(".fork-half-4194304999-Abc123");
    propersim::storage::sim::copy_tree(&fs.join(format!("storage/{SEED}/personas")), &half.join("personas")).unwrap();
    std::fs::write(sim.join("movement/.propersim-Kx1.tmp"), b"").unwrap();
    std::fs::write(sim.join("state/.propersim-Kx2.tmp"), b"{\"next_").unwrap();
    let err = ok(run_cmd(&fs, root, "half", &["--steps", "2", "--resume"]).output().unwrap());
    assert!(err.contains("interrupted before it finished; forking it again"), "{err}");
    assert_eq!(propersim::storage::SimDir::open(&storage, "half").unwrap().steps_in("movement").unwrap(), [0, 1]);
    let err = ok(run_cmd(&fs, root, "killed", &fast).arg("--resume").output().unwrap());
    eprintln!("{}", err.lines().last().unwrap_or(""));
    // Nothing of the killed processes is left: no temporary files, no half-made forks.
    for f in &common::files_under(&storage) {
        let name = f.file_name().unwrap().to_string_lossy();
        assert!(!(name.starts_with(".propersim-") && name.ends_with(".tmp")), "left behind: {}", f.display());
    }
    for e in std::fs::read_dir(&storage).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        assert!(!name.starts_with(".fork-") && !name.starts_with(".replaced-"), "left behind: {name}");
    }
    assert_same_tree(&whole, &sim);
    let loaded = original_loads(python, &sim);
    assert!(loaded["personas"]["John Lin"]["nodes"].as_u64().unwrap() > 50, "{loaded}");

    // A resume embeds nothing again: the resumed step asks for what the uninterrupted one did.
    ok(run_cmd(&fs, root, "partial", &["--steps", "300", "--set", "durable=false"]).output().unwrap());
    let before = ledger(&storage.join("partial")).len();
    ok(run_cmd(&fs, root, "partial", &["--steps", "1", "--resume", "--set", "durable=false"]).output().unwrap());
    let resumed = ledger(&storage.join("partial"))[before..].to_vec();
    assert_eq!(tasks_at(&resumed, 300), tasks_at(&ledger(&whole), 300));
    assert!(resumed.iter().all(|l| l["step"] == 300), "the resume made calls outside its step");
}

// ------------------------------------------------------------------------------------------------
// 10: what a power loss can leave (a log shorter than its checkpoint, a torn line, a lost
// movement file) resumes from the last step the files back; fsync happens when durable.
// ------------------------------------------------------------------------------------------------

#[test]
fn power_loss_damage_is_recovered_or_refused_clearly() {
    let _serial = serial();
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let storage = root.join("storage");
    ok(run_cmd(&fs, root, "whole", &["--days", "1"]).output().unwrap());

    // Stop at step 300 (mid-morning: every log got a line in step 299), then damage the files
    // the way a power loss can: the newest checkpoint is ahead of the assistant's log, a log
    // ends in a torn line, and the last movement file is gone.
    ok(run_cmd(&fs, root, "damaged", &["--steps", "300"]).output().unwrap());
    let sim = storage.join("damaged");
    let records: Vec<Value> = propersim::storage::read_jsonl(&sim.join("records.jsonl")).unwrap();
    assert_eq!(records.last().unwrap()["step"], 299, "step 299 was evaluated");
    let log = sim.join("state/assistant_memory.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let cut = text.trim_end_matches('\n').rfind('\n').unwrap() + 1;
    std::fs::write(&log, &text[..cut]).unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(sim.join("records.jsonl")).unwrap();
    f.write_all(b"{\"step\": 299, \"tor").unwrap();
    std::fs::remove_file(sim.join("movement/299.json")).unwrap();
    let err = ok(run_cmd(&fs, root, "damaged", &["--days", "1", "--resume"]).output().unwrap());
    assert!(err.contains("skipping a checkpoint"), "{err}");
    assert_same_tree(&storage.join("whole"), &sim);

    // With no checkpoint the files back, the run stops with the reason instead of guessing.
    ok(run_cmd(&fs, root, "lost", &["--steps", "300"]).output().unwrap());
    std::fs::write(storage.join("lost/state/user_nodes.jsonl"), b"").unwrap();
    let out = run_cmd(&fs, root, "lost", &["--days", "1", "--resume"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("can be resumed from") && err.contains("user_nodes.jsonl has 0 complete lines"), "{err}");

    // `durable` (the default) flushes every step; off, nothing is flushed.
    if Command::new("strace").arg("-V").output().is_ok_and(|o| o.status.success()) {
        let count_syncs = |sim: &str, extra: &[&str]| {
            let trace = root.join(format!("{sim}.strace"));
            let mut c = Command::new("strace");
            c.args(["-f", "-qq", "-e", "trace=fsync,fdatasync", "-o"]).arg(&trace).arg(common::bin());
            c.args(["run", "--novis", "--provider", "scripted", "--fork", SEED, "--sim", sim, "-q", "--steps", "20"]);
            paths(&mut c, &fs, root);
            ok(c.args(extra).stdout(Stdio::null()).stderr(Stdio::piped()).output().unwrap());
            std::fs::read_to_string(&trace).unwrap().lines().filter(|l| l.contains("sync(")).count()
        };
        let durable = count_syncs("durable", &[]);
        if propersim::storage::atomic::in_memory_dir(root) {
            // On tmpfs a flush would do nothing, so none is made.
            assert_eq!(durable, 0, "{durable} syncs for 20 steps on tmpfs");
        } else {
            assert!(durable >= 20 * 3, "{durable} syncs for 20 steps");
        }
        assert_eq!(count_syncs("volatile", &["--set", "durable=false"]), 0);
    } else {
        println!("PROPERSIM-SKIP: strace not found (the fsync count is not checked)");
    }
}

// ------------------------------------------------------------------------------------------------
// A mock OpenAI-compatible API that misbehaves on purpose.
// ------------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Fault {
    /// 429 with this `Retry-After` (seconds).
    RateLimited(&'static str),
    /// Accept the request and never answer.
    Hang,
    /// 401.
    Unauthorized,
}

struct MockApi {
    base: String,
    requests: Arc<AtomicU64>,
    _rt: tokio::runtime::Runtime,
}

fn mock_api(fault: Fault) -> MockApi {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let requests = Arc::new(AtomicU64::new(0));
    let n = requests.clone();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(move || {
        let n = n.clone();
        async move {
            n.fetch_add(1, Ordering::SeqCst);
            match fault {
                Fault::RateLimited(after) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", after)],
                    r#"{"error": {"message": "Rate limit reached; slow down."}}"#,
                )
                    .into_response(),
                Fault::Hang => std::future::pending().await,
                Fault::Unauthorized => {
                    (StatusCode::UNAUTHORIZED, r#"{"error": {"message": "Incorrect API key provided."}}"#)
                        .into_response()
                }
            }
        }
    });
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    MockApi { base, requests, _rt: rt }
}

/// A config putting every chat role on `base` (embeddings stay on the scripted brain).
fn api_config(root: &Path, base: &str, role_extra: &str) -> PathBuf {
    let mut text = String::from("[sim]\ntrain_method = \"none\"\ntask_retries = 1\n");
    for role in ["user", "evaluator", "assistant", "summarizer"] {
        text.push_str(&format!(
            "[roles.{role}]\nprovider = \"openai\"\nmodel = \"mock-{role}\"\nbase_url = \"{base}\"\n{role_extra}\n"
        ));
    }
    text.push_str("[roles.embedding]\nprovider = \"scripted\"\nmodel = \"scripted\"\n");
    let p = root.join("api.toml");
    std::fs::write(&p, text).unwrap();
    p
}

// ------------------------------------------------------------------------------------------------
// 8: an API that always answers 429 gives counted fallbacks and a finished day; the wait per call
// is capped; a refused key still ends the run.
// ------------------------------------------------------------------------------------------------

#[test]
fn failing_llm_api_falls_back_and_counts_every_retry() {
    let _serial = serial();
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();

    let api = mock_api(Fault::RateLimited("0"));
    let config = api_config(root, &api.base, "");
    let t0 = Instant::now();
    let err = ok(api_run_cmd(&fs, root, "limited", &["--days", "1"]).arg("--config").arg(&config).output().unwrap());
    let took = t0.elapsed();
    let sim = root.join("storage/limited");
    assert!(sim.join(format!("movement/{}.json", DAY - 1)).exists(), "the day finished: {err}");
    let lines = ledger(&sim);
    let chat: Vec<&Value> = lines.iter().filter(|l| l["role"] != "embedding").collect();
    assert!(chat.len() > 100, "{} chat calls", chat.len());
    for l in &chat {
        assert_eq!(l["fallback_used"], true, "{l}");
        assert_eq!(l["transport_retries"], 4, "five tries, four retries: {l}");
        assert!(l["error"].as_str().unwrap_or("").contains("429"), "{l}");
    }
    // Every request the server saw is in the ledger: one per ask, plus each retry.
    let asked: u64 =
        chat.iter().map(|l| l["attempts"].as_u64().unwrap() + l["transport_retries"].as_u64().unwrap()).sum();
    assert_eq!(asked, api.requests.load(Ordering::SeqCst));
    let fallbacks = err.lines().find(|l| l.contains("fallbacks:")).unwrap_or_default().to_string();
    assert!(fallbacks.contains(&format!("fallbacks: {}", chat.len())), "{fallbacks}");
    eprintln!("a day against an always-429 API: {:.1} s, {} requests, {}", took.as_secs_f64(), asked, fallbacks);

    // A server asking to wait 120 s per try: `max_wait_s` caps the whole call.
    let slow = mock_api(Fault::RateLimited("120"));
    let config = api_config(root, &slow.base, "max_wait_s = 1.0");
    let t0 = Instant::now();
    let out = Command::new(common::bin())
        .arg("--config")
        .arg(&config)
        .args(["llm", "chat", "--role", "user", "hello"])
        .output()
        .unwrap();
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("max_wait_s") && err.contains("429"), "{err}");
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(10), "{took:?}");
    assert_eq!(slow.requests.load(Ordering::SeqCst), 2, "one wait of 1 s, then no time left");

    // A refused key is not a transient failure: the run stops with the reason.
    let refused = mock_api(Fault::Unauthorized);
    let config = api_config(root, &refused.base, "");
    let out = api_run_cmd(&fs, root, "refused", &["--days", "1"]).arg("--config").arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("authentication failed (401)"), "{err}");
    assert_eq!(refused.requests.load(Ordering::SeqCst), 1, "no retries of a 401");
}

// ------------------------------------------------------------------------------------------------
// 9: Ctrl-C with a hanging API exits within 2 s with 130, keeping the last complete step; a
// second signal exits at once.
// ------------------------------------------------------------------------------------------------

#[test]
fn sigint_with_a_hanging_api_exits_130_within_2s() {
    let _serial = serial();
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let python = need!(python(), "python3");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let storage = root.join("storage");
    // A few steps on the scripted brain first, so there is a last complete step to keep.
    ok(run_cmd(&fs, root, "hung", &["--steps", "30"]).output().unwrap());

    let api = mock_api(Fault::Hang);
    let config = api_config(root, &api.base, "timeout_s = 60");
    let sim = storage.join("hung");
    let done = || propersim::storage::SimDir::open(&storage, "hung").unwrap().steps_in("movement").unwrap();
    for (round, signals) in [["INT"].as_slice(), ["INT", "TERM"].as_slice()].into_iter().enumerate() {
        let before = api.requests.load(Ordering::SeqCst);
        let mut child = api_run_cmd(&fs, root, "hung", &["--days", "1", "--resume", "--allow-changes"])
            .arg("--config")
            .arg(&config)
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while api.requests.load(Ordering::SeqCst) == before {
            assert!(t0.elapsed() < Duration::from_secs(60), "no LLM call was made");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(200)); // the call is in flight, and hangs
        let finished = done();
        let t0 = Instant::now();
        common::signal(&child, signals);
        let status = common::wait_with_deadline(&mut child, Duration::from_secs(30));
        let took = t0.elapsed();
        let err = common::stderr_of(&mut child);
        assert_eq!(status.code(), Some(130), "{err}");
        assert!(took <= Duration::from_secs(2), "exit took {took:?}");
        if round == 0 {
            assert!(err.contains("Resume with: propersim run --novis --sim hung --resume"), "{err}");
        } else {
            assert!(err.contains("exiting now"), "the second signal exits at once: {err}");
        }
        // The step in flight was dropped, not committed; the last complete one is kept.
        assert_eq!(done(), finished);
        let n = finished.len() as u64;
        assert!(sim.join(format!("state/checkpoint-{n}.json")).exists(), "checkpoint of step {n}");
        original_loads(python, &sim);
        eprintln!("signals {signals:?} during the LLM call of step {n}: exit 130 after {} ms", took.as_millis());
    }
    // It resumes from there, with no gap (back on the scripted brain: a change of providers).
    let n = done().len() as u64;
    ok(run_cmd(&fs, root, "hung", &["--steps", "5", "--resume", "--allow-changes"]).output().unwrap());
    assert_eq!(done(), (0..n + 5).collect::<Vec<_>>());
    original_loads(python, &sim);
}

// ------------------------------------------------------------------------------------------------
// 3, 4, 5, 6, 7: the web server against a hostile page, slow clients, malformed environments,
// posts into finished sims, and impossible static names.
// ------------------------------------------------------------------------------------------------

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// `propersim serve` on a free port; with `max_files`, under that open-file limit.
fn serve(fs: &Path, root: &Path, temp: &str, config: &Path, sim_args: &[&str], max_files: Option<u32>) -> Server {
    let port = free_port();
    let mut c = match max_files {
        Some(n) => {
            let mut c = Command::new("sh");
            c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\"")]).arg(common::bin());
            c
        }
        None => Command::new(common::bin()),
    };
    c.arg("--config").arg(config).args(["serve", "--port", &port.to_string()]).args(sim_args);
    common::folder_args(&mut c, fs, root, temp);
    let log = root.join(format!("{temp}.log"));
    let mut child = c.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    let t0 = Instant::now();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while http(addr, "GET", "/", &[], "").0 != 200 {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the server exited with {st}: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the server did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, addr }
}

/// One HTTP/1.1 request on its own connection: (status, body); status 0 if the connection failed.
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else { return (0, String::new()) };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, String) {
    http(addr, "POST", path, &[JSON], &body.to_string())
}

/// Seconds until the server closes a connection that sends `first` and then `drip` every 200 ms.
fn closed_after(addr: SocketAddr, first: &str, drip: Option<&str>) -> Duration {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let t0 = Instant::now();
    s.write_all(first.as_bytes()).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return t0.elapsed(),
            Ok(_) => {} // an error reply before the close
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if let Some(d) = drip {
                    if s.write_all(d.as_bytes()).is_err() {
                        return t0.elapsed();
                    }
                }
            }
            Err(_) => return t0.elapsed(),
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "a slow client was never dropped");
    }
}

#[test]
fn web_server_refuses_hostile_slow_and_malformed_requests() {
    let _serial = serial();
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let storage = root.join("storage");
    let config = root.join("web.toml");
    std::fs::write(&config, "[web]\nheader_timeout_s = 1.0\nidle_timeout_s = 2.0\nmax_connections = 6\n").unwrap();
    // A finished run for the replay-only server.
    ok(run_cmd(&fs, root, "done", &["--steps", "3"]).output().unwrap());

    let live =
        serve(&fs, root, "temp_live", &config, &["--provider", "scripted", "--fork", SEED, "--sim", "live"], None);
    let a = live.addr;
    let origin = format!("http://{a}");

    // 3. Cross-site requests change nothing.
    let (st, body) = http(
        a,
        "POST",
        "/live_control/",
        &[("Origin", "http://evil.example"), ("Content-Type", "text/plain")],
        r#"{"paused": true}"#,
    );
    assert_eq!(st, 403, "{body}");
    let (st, body) = http(a, "POST", "/live_control/", &[("Content-Type", "text/plain")], r#"{"paused": true}"#);
    assert_eq!(st, 415, "a simple (preflight-free) request is refused: {body}");
    let (st, body) =
        http(a, "POST", "/live_control/", &[("Origin", "http://evil.example"), JSON], r#"{"paused": true}"#);
    assert_eq!(st, 403, "{body}");
    assert!(http(a, "GET", "/live_control/", &[], "").1.contains("\"paused\":false"), "the sim was not paused");
    let env1 = |x: i64, y: i64| json!({"John Lin": {"maze": "the_ville", "x": x, "y": y}, "Eddy Lin": {"maze": "the_ville", "x": 8, "y": 10}});
    let (st, _) = http(
        a,
        "POST",
        "/process_environment/",
        &[("Origin", "http://evil.example"), JSON],
        &json!({"step": 1, "sim_code": "live", "environment": env1(5, 10)}).to_string(),
    );
    assert_eq!(st, 403);
    assert!(!storage.join("live/environment/1.json").exists());
    // The page itself (same origin, JSON) still can.
    let (st, body) = http(a, "POST", "/live_control/", &[("Origin", &origin), JSON], r#"{"paused": false}"#);
    assert_eq!(st, 200, "{body}");

    // 5. Malformed environments get a 400 with the reason; the sim goes on with the next good one.
    let t0 = Instant::now();
    while !storage.join("live/movement/0.json").exists() {
        assert!(t0.elapsed() < Duration::from_secs(60), "the live sim did not compute step 0");
        std::thread::sleep(Duration::from_millis(20));
    }
    for (env, why) in [
        (json!({"John Lin": "x"}), "must be an object"),
        (env1(-1, 10), "off the map"),
        (env1(5, 99_999_999_999), "off the map"),
        (json!({"Mallory": {"maze": "the_ville", "x": 1, "y": 1}}), "not a persona"),
        (json!({"John Lin": {"maze": "the_ville", "x": 5, "y": 10}}), "no tile for \\\"Eddy Lin\\\""),
    ] {
        let (st, body) = post(a, "/process_environment/", &json!({"step": 1, "sim_code": "live", "environment": env}));
        assert_eq!(st, 400, "{env}: {body}");
        assert!(body.contains(why), "{env}: {body}");
        assert!(!storage.join("live/environment/1.json").exists(), "a refused environment was written");
    }
    let (st, body) =
        post(a, "/process_environment/", &json!({"step": 1, "sim_code": "live", "environment": env1(5, 10)}));
    assert_eq!((st, body.as_str()), (200, "received"));
    let t0 = Instant::now();
    while post(a, "/update_environment/", &json!({"step": 1, "sim_code": "live"})).1.contains("-1") {
        assert!(t0.elapsed() < Duration::from_secs(30), "the sim stalled after a refused environment");
        std::thread::sleep(Duration::from_millis(20));
    }

    // 7. A static name no filesystem can hold is a 404, not a 500.
    let long = "a".repeat(5000);
    assert_eq!(http(a, "GET", &format!("/static/assets/{long}"), &[], "").0, 404);
    assert_eq!(http(a, "GET", &format!("/static/{long}"), &[], "").0, 404);
    assert_eq!(http(a, "GET", &format!("/static/assets/the_ville/{long}/x.png"), &[], "").0, 404);

    // 4. Slow clients are dropped: headers dripping in (slowloris) after the 1 s header timeout,
    // a body that stops after the 2 s idle timeout.
    let t = closed_after(a, "GET / HTTP/1.1\r\nHost: x\r\n", Some("X-Slow: 1\r\n"));
    assert!(t >= Duration::from_millis(900) && t < Duration::from_secs(4), "slowloris closed after {t:?}");
    eprintln!("a slowloris client (1 s header timeout) was dropped after {} ms", t.as_millis());
    let t = closed_after(
        a,
        "POST /update_environment/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        None,
    );
    assert!(t >= Duration::from_millis(1900) && t < Duration::from_secs(6), "a stalled body closed after {t:?}");
    eprintln!("a stalled body (2 s idle timeout) was dropped after {} ms", t.as_millis());
    // Connections over the cap get a 503 at once; once idle ones time out, the server answers.
    let mut idle: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut s = TcpStream::connect(a).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let (st, _) = http(a, "GET", "/", &[], "");
    assert_eq!(st, 503, "the cap holds");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(http(a, "GET", "/", &[], "").0, 200, "slots come back after the header timeout");
    idle.clear();
    drop(live);

    // Under a 128-file limit, 200 idle connections: the default cap (half the limit) keeps
    // descriptors free, the rest are told 503, and the server answers again once they time out.
    let small_config = root.join("small.toml");
    std::fs::write(&small_config, "[web]\nheader_timeout_s = 1.0\n").unwrap();
    let small = serve(&fs, root, "temp_small", &small_config, &[], Some(128));
    let crowd: Vec<TcpStream> = (0..200)
        .filter_map(|_| {
            let mut s = TcpStream::connect(small.addr).ok()?;
            s.write_all(b"GET / HTTP/1.1\r\n").ok()?;
            Some(s)
        })
        .collect();
    assert_eq!(crowd.len(), 200);
    let t0 = Instant::now();
    let (st, _) = http(small.addr, "GET", "/", &[], "");
    assert!(st == 503 || st == 200, "a request during the crowd got {st}");
    assert!(t0.elapsed() < Duration::from_secs(2), "it was answered at once");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(http(small.addr, "GET", "/", &[], "").0, 200, "the server accepts again");
    drop(crowd);
    drop(small);

    // 6. A replay-only server writes nothing into finished sims, and nothing past a sim's end.
    let replay = serve(&fs, root, "temp_replay", &config, &[], None);
    let r = replay.addr;
    let env = env1(5, 10);
    for step in [u64::MAX, 3, 1] {
        let (st, body) =
            post(r, "/process_environment/", &json!({"step": step, "sim_code": "done", "environment": env}));
        assert_eq!(st, 409, "step {step}: {body}");
        assert!(body.contains("read-only"), "{body}");
    }
    // With a backend announced for `done` (the original's handshake), only its next step.
    std::fs::create_dir_all(root.join("temp_replay")).unwrap();
    std::fs::write(root.join("temp_replay/curr_sim_code.json"), r#"{"sim_code": "done"}"#).unwrap();
    for step in [u64::MAX, 4, 1] {
        let (st, body) =
            post(r, "/process_environment/", &json!({"step": step, "sim_code": "done", "environment": env}));
        assert_eq!(st, 409, "step {step}: {body}");
    }
    let (st, body) = post(r, "/process_environment/", &json!({"step": 3, "sim_code": "done", "environment": env}));
    assert_eq!((st, body.as_str()), (200, "received"));
    let (st, _) = post(r, "/process_environment/", &json!({"step": 3, "sim_code": "live", "environment": env}));
    assert_eq!(st, 409, "another sim stays read-only");
    let envs = propersim::storage::SimDir::open(&storage, "done").unwrap().steps_in("environment").unwrap();
    assert_eq!(envs, vec![0, 1, 2, 3], "only the awaited step was written");
}
