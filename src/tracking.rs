//! Optional MLflow tracking (`[tracking] mlflow_uri`): one MLflow run per sim, fed with the lines
//! of its `metrics.jsonl` (`report::live`) as they are written, through MLflow's REST
//! API (`/api/2.0/mlflow/...`), and the report files uploaded as artifacts at the end
//! (`/api/2.0/mlflow-artifacts/...`, the artifact proxy of `mlflow server --serve-artifacts`).
//!
//! The simulation never waits for MLflow and never stops for it: requests go out from a thread of
//! their own, and a failed one is a warning, counted and summed up when the run ends. Lines not
//! yet delivered are retried with the next line and at the end, and a resumed sim sends what its
//! earlier process could not: `mlflow.json` in the sim folder keeps the run's id (so a resumed
//! sim logs into the same run) and how many lines of `metrics.jsonl` MLflow has.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, Role};

/// The sim's MLflow run, in the sim folder.
pub const RUN_FILE: &str = "mlflow.json";

/// MLflow's limits per `runs/log-batch` request (`mlflow/utils/validation.py`).
const MAX_METRICS_PER_BATCH: usize = 1000;
const MAX_PARAMS_PER_BATCH: usize = 100;
/// MLflow's longest parameter value.
const MAX_PARAM_LEN: usize = 6000;
/// One request's limit: a tracker that waits long on a hung server only delays its own queue.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// How the sim's run ended, as MLflow's run status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Every step asked for ran.
    Finished,
    /// Stopped early (a signal, the budget): the sim can be resumed into the same run.
    Killed,
    /// A step failed.
    Failed,
}

impl RunEnd {
    fn status(self) -> &'static str {
        match self {
            RunEnd::Finished => "FINISHED",
            RunEnd::Killed => "KILLED",
            RunEnd::Failed => "FAILED",
        }
    }
}

/// What `mlflow.json` records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct RunState {
    tracking_uri: String,
    experiment_id: String,
    run_id: String,
    artifact_uri: String,
    /// Lines of `metrics.jsonl` MLflow has (at least once: a kill between a delivery and this
    /// file's update sends those lines again).
    delivered: usize,
    params_logged: bool,
}

enum Msg {
    Line(Value),
    Finish { end: RunEnd, artifacts: Vec<PathBuf>, reply: oneshot::Sender<String> },
}

/// The handle of one sim's tracker thread.
#[derive(Clone)]
pub struct Tracker {
    tx: mpsc::UnboundedSender<Msg>,
}

/// Everything a tracker needs to open or find its run.
pub struct TrackerSetup {
    pub uri: String,
    pub experiment: String,
    pub sim_root: PathBuf,
    pub run_name: String,
    pub params: Vec<(String, String)>,
}

impl TrackerSetup {
    /// The tracker of the sim in `sim_root`, when `cfg` names an MLflow server.
    pub fn for_sim(cfg: &Config, sim_root: &Path) -> Option<TrackerSetup> {
        let uri = cfg.tracking.mlflow_uri.clone()?;
        Some(TrackerSetup {
            uri,
            experiment: cfg.tracking.experiment.clone(),
            sim_root: sim_root.to_path_buf(),
            run_name: cfg.sim.sim.clone(),
            params: params(cfg),
        })
    }
}

/// The run's parameters: the resolved settings. Every `[sim]` setting by its name (unset ones
/// left out), the original's `train_mode` label, and each role's provider and model.
pub fn params(cfg: &Config) -> Vec<(String, String)> {
    let mut out = vec![("train_mode".to_string(), cfg.sim.train_mode_label())];
    if let Ok(Value::Object(sim)) = serde_json::to_value(&cfg.sim) {
        for (k, v) in sim {
            let v = match v {
                Value::Null => continue,
                Value::String(s) => s,
                other => other.to_string(),
            };
            out.push((k, v));
        }
    }
    for role in Role::ALL {
        let rc = cfg.role(*role);
        out.push((format!("{}.provider", role.as_str()), rc.provider.as_str().to_string()));
        out.push((format!("{}.model", role.as_str()), rc.model.clone()));
    }
    for (_, v) in &mut out {
        if v.len() > MAX_PARAM_LEN {
            let mut end = MAX_PARAM_LEN;
            while !v.is_char_boundary(end) {
                end -= 1;
            }
            v.truncate(end);
        }
    }
    out
}

impl Tracker {
    /// Start the tracker thread. `lines` are the lines `metrics.jsonl` already holds: those
    /// MLflow does not have yet are sent first. Nothing is requested before this returns, so an
    /// unreachable server never delays the run.
    pub fn start(setup: TrackerSetup, lines: Vec<Value>) -> Result<Tracker> {
        let (tx, rx) = mpsc::unbounded_channel();
        let state_path = setup.sim_root.join(RUN_FILE);
        // A state file that does not read (damaged by hand) costs the link to the old run, not
        // the simulation: a new run is made.
        let state = match std::fs::read_to_string(&state_path) {
            Ok(text) => serde_json::from_str::<RunState>(&text).unwrap_or_else(|e| {
                tracing::warn!(path = %state_path.display(), error = %e, "MLflow tracking: starting a new run");
                RunState::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RunState::default(),
            Err(e) => {
                tracing::warn!(path = %state_path.display(), error = %e, "MLflow tracking: starting a new run");
                RunState::default()
            }
        };
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("building the MLflow HTTP client")?;
        let mut worker = Worker {
            http,
            base: setup.uri.trim_end_matches('/').to_string(),
            setup,
            state_path,
            state,
            lines,
            failures: 0,
            last_error: None,
            opened: false,
            ended: false,
        };
        // A state file of another server (or experiment) starts a new run there.
        if worker.state.tracking_uri != worker.setup.uri {
            worker.state = RunState { tracking_uri: worker.setup.uri.clone(), ..RunState::default() };
        }
        std::thread::Builder::new()
            .name("mlflow-tracker".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::warn!(error = %e, "MLflow tracking is off: no runtime for its thread");
                        return;
                    }
                };
                rt.block_on(worker.serve(rx));
            })
            .context("starting the MLflow tracker thread")?;
        Ok(Tracker { tx })
    }

    /// Queue a new line of `metrics.jsonl` for MLflow.
    pub fn send(&self, line: Value) {
        // A tracker whose thread is gone has nothing to tell.
        let _ = self.tx.send(Msg::Line(line));
    }

    /// Send what is left, upload `artifacts` (the files that exist), set the run's status, and
    /// return a line that sums up the tracking (the run, and failures if any).
    pub async fn finish(&self, end: RunEnd, artifacts: Vec<PathBuf>) -> String {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Finish { end, artifacts, reply }).is_err() {
            return "MLflow tracking stopped early (its thread is gone); see the warnings above.".into();
        }
        rx.await.unwrap_or_else(|_| "MLflow tracking stopped early (its thread is gone).".into())
    }
}

struct Worker {
    http: reqwest::Client,
    /// The server's URL without a trailing slash.
    base: String,
    setup: TrackerSetup,
    state_path: PathBuf,
    state: RunState,
    /// Every line of `metrics.jsonl` so far; `state.delivered` of them are in MLflow.
    lines: Vec<Value>,
    failures: u64,
    last_error: Option<String>,
    /// Whether this process has set the run's status to RUNNING (or made the run).
    opened: bool,
    /// Whether the run was ended since; a new line then opens it again.
    ended: bool,
}

impl Worker {
    async fn serve(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let r = self.sync().await;
        self.note("sending metrics", r);
        while let Some(msg) = rx.recv().await {
            match msg {
                Msg::Line(line) => {
                    self.lines.push(line);
                    // A run ended and then stepped further (more days on the same engine).
                    if std::mem::take(&mut self.ended) {
                        self.opened = false;
                    }
                    let r = self.sync().await;
                    self.note("sending metrics", r);
                }
                Msg::Finish { end, artifacts, reply } => {
                    let r = self.sync().await;
                    // A server that did not answer that will not take the files either.
                    let reachable = r.is_ok();
                    self.note("sending metrics", r);
                    if reachable {
                        for file in artifacts.iter().filter(|f| f.is_file()) {
                            let r = self.upload(file).await;
                            self.note(&format!("uploading {}", file.display()), r);
                        }
                        let r = self.end(end).await;
                        self.note("ending the run", r);
                    }
                    let _ = reply.send(self.summary());
                }
            }
        }
        // The sim was dropped without ending its run: send what is left.
        if self.state.delivered < self.lines.len() {
            let r = self.sync().await;
            self.note("sending metrics", r);
        }
    }

    /// A failed request is a warning, counted for the summary; the simulation goes on.
    fn note(&mut self, what: &str, r: Result<()>) {
        if let Err(e) = r {
            let msg = format!("{e:#}");
            tracing::warn!(sim = %self.setup.run_name, mlflow = %self.setup.uri, "MLflow tracking: {what} failed: {msg}");
            self.failures += 1;
            self.last_error = Some(format!("{what}: {msg}"));
        }
    }

    fn summary(&self) -> String {
        let run = if self.state.run_id.is_empty() {
            format!("no run could be made at {}", self.setup.uri)
        } else {
            format!(
                "run {} in experiment `{}` at {} ({} of {} metric lines sent)",
                self.state.run_id,
                self.setup.experiment,
                self.setup.uri,
                self.state.delivered.min(self.lines.len()),
                self.lines.len()
            )
        };
        match (&self.last_error, self.failures) {
            (Some(last), n) if n > 0 => {
                format!("MLflow: {run}; {n} request(s) failed, the simulation went on (last: {last}).")
            }
            _ => format!("MLflow: {run}."),
        }
    }

    fn api(&self, path: &str) -> String {
        format!("{}/api/2.0/mlflow/{path}", self.base)
    }

    /// POST `body` to `path` and return the JSON answer, or MLflow's error.
    async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let resp = self.http.post(self.api(path)).json(body).send().await.with_context(|| format!("POST {path}"))?;
        answer(resp, path).await
    }

    /// Open the run: the one `mlflow.json` names, or a new one in the experiment (made when
    /// missing); then its parameters once, and RUNNING as its status.
    async fn ensure_run(&mut self) -> Result<()> {
        if self.state.run_id.is_empty() {
            let experiment_id = self.experiment_id().await?;
            let now = now_ms();
            let r = self
                .post(
                    "runs/create",
                    &json!({
                        "experiment_id": experiment_id,
                        "run_name": self.setup.run_name,
                        "start_time": now,
                        "tags": [
                            {"key": "mlflow.runName", "value": self.setup.run_name},
                            {"key": "propersim.sim", "value": self.setup.sim_root.display().to_string()},
                        ],
                    }),
                )
                .await?;
            let info = &r["run"]["info"];
            let Some(run_id) = info["run_id"].as_str() else {
                bail!("runs/create answered without a run id: {r}");
            };
            self.state = RunState {
                tracking_uri: self.setup.uri.clone(),
                experiment_id,
                run_id: run_id.to_string(),
                artifact_uri: info["artifact_uri"].as_str().unwrap_or_default().to_string(),
                delivered: 0,
                params_logged: false,
            };
            self.save()?;
            self.opened = true;
        }
        if !self.state.params_logged {
            for chunk in self.setup.params.chunks(MAX_PARAMS_PER_BATCH) {
                let params: Vec<Value> = chunk.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
                self.post("runs/log-batch", &json!({"run_id": self.state.run_id, "params": params})).await?;
            }
            self.state.params_logged = true;
            self.save()?;
        }
        if !self.opened {
            self.post("runs/update", &json!({"run_id": self.state.run_id, "status": "RUNNING"})).await?;
            self.opened = true;
        }
        Ok(())
    }

    /// The id of the experiment named in the settings, made if it does not exist (two sims of a
    /// sweep may race to make it: the loser finds the winner's).
    async fn experiment_id(&self) -> Result<String> {
        let name = &self.setup.experiment;
        let path = "experiments/get-by-name";
        let resp = self
            .http
            .get(self.api(path))
            .query(&[("experiment_name", name)])
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        if resp.status() != reqwest::StatusCode::NOT_FOUND {
            let r = answer(resp, path).await?;
            return id_of(&r["experiment"]["experiment_id"], path);
        }
        match self.post("experiments/create", &json!({"name": name})).await {
            Ok(r) => id_of(&r["experiment_id"], "experiments/create"),
            Err(e) if format!("{e:#}").contains("RESOURCE_ALREADY_EXISTS") => {
                let resp = self.http.get(self.api(path)).query(&[("experiment_name", name)]).send().await?;
                let r = answer(resp, path).await?;
                id_of(&r["experiment"]["experiment_id"], path)
            }
            Err(e) => Err(e),
        }
    }

    /// Send the lines MLflow does not have yet, as metrics at the line's day. A run that is gone
    /// from the server (deleted there) is replaced by a new one, which gets every line.
    async fn sync(&mut self) -> Result<()> {
        let had_run = !self.state.run_id.is_empty();
        match self.sync_once().await {
            Err(e) if had_run && run_gone(&e) => {
                tracing::warn!(
                    sim = %self.setup.run_name,
                    "MLflow run {} is gone from the server ({e:#}); starting a new run",
                    self.state.run_id
                );
                self.state = RunState { tracking_uri: self.setup.uri.clone(), ..RunState::default() };
                self.opened = false;
                self.sync_once().await
            }
            r => r,
        }
    }

    async fn sync_once(&mut self) -> Result<()> {
        self.ensure_run().await?;
        while self.state.delivered < self.lines.len() {
            // Whole lines per request, within MLflow's batch limit.
            let now = now_ms();
            let mut metrics = Vec::new();
            let mut taken = 0;
            for line in &self.lines[self.state.delivered..] {
                let m = line_metrics(line, now);
                if !metrics.is_empty() && metrics.len() + m.len() > MAX_METRICS_PER_BATCH {
                    break;
                }
                metrics.extend(m);
                taken += 1;
            }
            if !metrics.is_empty() {
                self.post("runs/log-batch", &json!({"run_id": self.state.run_id, "metrics": metrics})).await?;
            }
            self.state.delivered += taken;
            self.save()?;
        }
        Ok(())
    }

    /// Upload one file into the run's artifacts through the server's artifact proxy.
    async fn upload(&self, file: &Path) -> Result<()> {
        let Some(root) = proxied_artifact_path(&self.state.artifact_uri) else {
            bail!(
                "the run's artifacts go to {:?}, which the server does not proxy (start `mlflow server` \
                 with --serve-artifacts, the default, and no --default-artifact-root)",
                self.state.artifact_uri
            );
        };
        let name = file.file_name().and_then(|n| n.to_str()).context("an artifact without a plain file name")?;
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let url = format!("{}/api/2.0/mlflow-artifacts/artifacts/{root}/{name}", self.base);
        let resp = self.http.put(url).body(bytes).send().await.context("PUT mlflow-artifacts")?;
        answer(resp, "mlflow-artifacts").await.map(|_| ())
    }

    async fn end(&mut self, end: RunEnd) -> Result<()> {
        let body = json!({"run_id": self.state.run_id, "status": end.status(), "end_time": now_ms()});
        self.post("runs/update", &body).await?;
        self.ended = true;
        Ok(())
    }

    fn save(&self) -> Result<()> {
        crate::storage::write_atomic(&self.state_path, &serde_json::to_vec_pretty(&self.state)?)
    }
}

/// The JSON answer of a request, or an error with MLflow's `error_code` and message.
async fn answer(resp: reqwest::Response, what: &str) -> Result<Value> {
    let status = resp.status();
    let text = resp.text().await.with_context(|| format!("{what}: reading the answer"))?;
    if !status.is_success() {
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let code = v["error_code"].as_str().unwrap_or("");
        let msg = v["message"].as_str().map(str::to_owned).unwrap_or_else(|| text.chars().take(300).collect());
        bail!("{what}: HTTP {status} {code} {msg}");
    }
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).with_context(|| format!("{what}: the answer is not JSON"))
}

/// Whether MLflow refused a request because the run does not exist or was deleted.
fn run_gone(e: &anyhow::Error) -> bool {
    let m = format!("{e:#}");
    m.contains("RESOURCE_DOES_NOT_EXIST") || m.contains("must be in the 'active' state")
}

fn id_of(v: &Value, what: &str) -> Result<String> {
    match v {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => bail!("{what}: no experiment id in the answer"),
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The path under the server's artifact proxy of an `mlflow-artifacts:` URI
/// (`mlflow-artifacts:/1/<run>/artifacts`, or with a host: `mlflow-artifacts://h:p/1/...`);
/// `None` for artifacts the server does not proxy (a local folder, a bucket).
fn proxied_artifact_path(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix("mlflow-artifacts:")?;
    let path = match rest.strip_prefix("//") {
        Some(with_host) => with_host.find('/').map_or("", |i| &with_host[i..]),
        None => rest,
    };
    let path = path.trim_matches('/');
    (!path.is_empty()).then(|| path.to_string())
}

/// An MLflow metric name from ours: MLflow allows letters, digits, `_ - . / : ` and spaces,
/// so the rubric's `Communication_&_Safety` becomes `Communication_and_Safety`.
pub fn metric_key(name: &str) -> String {
    name.replace('&', "and")
        .chars()
        .map(|c| if c.is_alphanumeric() || "_-./: ".contains(c) { c } else { '_' })
        .collect()
}

/// The MLflow metrics of one `metrics.jsonl` line, each at step = the line's (1-based) day.
/// Missing values (a day without scores) are left out.
pub fn line_metrics(line: &Value, timestamp: i64) -> Vec<Value> {
    let Some(day) = line["day"].as_u64() else { return Vec::new() };
    let mut out = Vec::new();
    let mut push = |key: String, v: &Value| {
        if let Some(x) = v.as_f64().filter(|x| x.is_finite()) {
            out.push(json!({"key": key, "value": x, "timestamp": timestamp, "step": day}));
        }
    };
    match line["event"].as_str() {
        Some("day") => {
            for k in ["mean_score", "success_rate", "recs_per_awake_hour", "norec_share", "steps", "recs", "norecs"] {
                push(k.to_string(), &line[k]);
            }
            if let Some(dims) = line["dimensions"].as_object() {
                for (name, v) in dims {
                    push(format!("pass_rate/{}", metric_key(name)), v);
                }
            }
        }
        Some("training") => {
            for (key, field) in [
                ("train/loss", "mean_loss"),
                ("train/first_loss", "first_loss"),
                ("train/last_loss", "last_loss"),
                ("train/pairs", "pairs"),
                ("train/epochs", "epochs"),
                ("train/steps", "steps"),
                ("train/seconds", "seconds"),
            ] {
                push(key.to_string(), &line[field]);
            }
        }
        Some("mmlu") => push("mmlu/accuracy".to_string(), &line["overall_accuracy"]),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_uris_map_to_the_proxy_path() {
        assert_eq!(proxied_artifact_path("mlflow-artifacts:/1/abc/artifacts").as_deref(), Some("1/abc/artifacts"));
        assert_eq!(
            proxied_artifact_path("mlflow-artifacts://127.0.0.1:5000/1/abc/artifacts").as_deref(),
            Some("1/abc/artifacts")
        );
        assert_eq!(proxied_artifact_path("/tmp/mlruns/1/abc/artifacts"), None);
        assert_eq!(proxied_artifact_path("s3://bucket/1/abc"), None);
        assert_eq!(proxied_artifact_path("mlflow-artifacts:/"), None);
    }

    #[test]
    fn metric_keys_are_mlflow_names() {
        assert_eq!(metric_key("Communication_&_Safety"), "Communication_and_Safety");
        assert_eq!(metric_key("Timing"), "Timing");
        assert_eq!(metric_key("a=b"), "a_b");
    }

    #[test]
    fn lines_become_metrics_at_their_day() {
        let day = json!({"event": "day", "day": 2, "mean_score": 2.5, "success_rate": null, "steps": 10,
                         "dimensions": {"Communication_&_Safety": 0.75}});
        let m = line_metrics(&day, 7);
        let keys: Vec<&str> = m.iter().map(|v| v["key"].as_str().unwrap()).collect();
        assert_eq!(keys, ["mean_score", "steps", "pass_rate/Communication_and_Safety"]);
        assert!(m.iter().all(|v| v["step"] == 2 && v["timestamp"] == 7));
        let train = json!({"event": "training", "day": 1, "mean_loss": 0.69, "pairs": 4});
        let m = line_metrics(&train, 0);
        assert_eq!(m[0]["key"], "train/loss");
        assert_eq!(m[0]["value"], 0.69);
        assert!(line_metrics(&json!({"event": "day"}), 0).is_empty(), "a line without a day has no step");
    }

    #[test]
    fn params_name_the_resolved_settings() {
        let mut cfg = Config::default();
        cfg.set_all_providers(crate::config::ProviderKind::Scripted);
        cfg.sim.seed = 9;
        let p: std::collections::HashMap<_, _> = params(&cfg).into_iter().collect();
        assert_eq!(p["seed"], "9");
        assert_eq!(p["train_method"], "dpo");
        assert_eq!(p["assistant.provider"], "scripted");
        assert_eq!(p["train_mode"], cfg.sim.train_mode_label());
        assert!(!p.contains_key("budget_usd"), "unset settings are left out");
    }
}
