//! Daily training plugged into the loop: at each day boundary the day's pairs (with the replay
//! buffer) go to the training worker thread; the loop keeps stepping through the user's night;
//! before the assistant's next suggestion the new adapter is in use (the hook waits if training
//! has not finished). Inference follows the worker's adapter slot, so the swap is atomic and
//! happens between two prompts, never inside one.
//!
//! An assistant served by vLLM trains the same way on a local copy of its base model
//! (`train_base`); its adapters then reach the server through vLLM's runtime LoRA API, and the
//! assistant's requests name the newest one as their `model`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use futures::future::BoxFuture;

use super::hooks::DayHook;
use crate::config::{Config, ConfigError, ProviderKind, ReplayMode, Role, TrainMethod, TrainWeights};
use crate::llm::local::LocalProvider;
use crate::llm::vllm::{lora_name, LoraServer};
use crate::llm::Llm;
use crate::model::llama::{Llama, LlamaSession};
use crate::model::lora::{AdapterSlot, PublishedAdapter};
use crate::report::live::MetricsLog;
use crate::train::data::{read_pairs, PreferencePair};
use crate::train::mmlu::MMLU_FILE;
use crate::train::replay::ReplayBuffer;
use crate::train::worker::{JobResult, TrainJob, TrainWorker, WorkerSetup};
use crate::train::{adapter, TrainConfig};

/// The daily MMLU check: its questions and where results go.
struct Mmlu {
    items: Vec<crate::train::mmlu::MmluItem>,
    out: PathBuf,
    model: Arc<Llama>,
    slot: Arc<AdapterSlot>,
}

pub struct Training {
    worker: TrainWorker,
    mmlu: Option<Mmlu>,
    /// The nightly training's settings (`TrainConfig::for_sim`).
    train: TrainConfig,
    replay: ReplayBuffer<PreferencePair>,
    mode: ReplayMode,
    seed: u64,
    max_pairs: Option<usize>,
    adapters: PathBuf,
    /// `training.jsonl`: a line per finished day of training.
    log: PathBuf,
    /// The engine's client, to record the adapter version in the cache keys.
    llm: Option<Arc<Llm>>,
    /// The sim's `metrics.jsonl`, which gets each training and MMLU line too.
    metrics: Option<MetricsLog>,
    /// Counts tokens with the assistant's tokenizer.
    pub provider: Arc<LocalProvider>,
    /// Day whose training is running.
    pending: Option<u32>,
    /// The base model's MMLU check of day 1 is still to run (a fresh run with `daily_mmlu`).
    base_mmlu_due: bool,
    /// An assistant on a vLLM server: where each day's adapter goes to be served.
    remote: Option<Remote>,
}

/// The assistant's vLLM server and what it serves of this sim. Adapters are loaded before the
/// assistant's next request (never in the middle of a step's candidates), and requests name
/// the adapter as their `model` only once the server has it: no request falls back to the base
/// model silently.
struct Remote {
    server: LoraServer,
    /// The sim's name: part of each adapter's name on the server.
    sim: String,
    /// The day whose adapter the assistant should use (the newest trained).
    wanted: Option<u32>,
    /// The adapter name this process has loaded into the server.
    loaded: Option<String>,
}

/// What the trained assistants of the sims in one process share: each base model loaded once
/// (the f32 copy training needs is ~4 bytes a weight, far too much to hold once per sim), and
/// one queue that runs their training jobs one at a time, so a sweep's sims reaching a day's
/// end together do not each claim every core and all that memory at once. Each sim keeps its
/// own adapter, slot and inference copy, so no sim's training reaches another.
#[derive(Default)]
pub struct TrainShare {
    bases: Mutex<HashMap<(PathBuf, TrainWeights), Arc<Llama>>>,
    queue: Arc<Mutex<()>>,
}

impl TrainShare {
    /// The training base of `gguf` with its weights held as `weights` says, loaded on first use.
    fn base(&self, gguf: &Path, weights: TrainWeights) -> Result<Arc<Llama>> {
        let mut bases = self.bases.lock().unwrap_or_else(|e| e.into_inner());
        let key = (gguf.to_path_buf(), weights);
        if let Some(m) = bases.get(&key) {
            return Ok(m.clone());
        }
        let model = Arc::new(
            crate::train::load_base(gguf, weights)
                .with_context(|| format!("loading {} for training", gguf.display()))?,
        );
        bases.insert(key, model.clone());
        Ok(model)
    }

    /// How many training bases are loaded.
    pub fn bases_loaded(&self) -> usize {
        self.bases.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Attach training to the assistant's local model, if the configuration asks for it. Returns
/// the LLM client (with the assistant's provider following the adapter slot) and the hook.
pub fn attach(cfg: &Config, sim_root: &Path, llm: Llm, share: &TrainShare) -> Result<(Llm, Option<Training>)> {
    let method = cfg.sim.train_method;
    if method == TrainMethod::None {
        if cfg.sim.daily_mmlu {
            eprintln!(
                "note: daily_mmlu checks the trained assistant; with train_method = none this run does not check."
            );
        }
        return Ok((llm, None));
    }
    let rc = cfg.role(Role::Assistant);
    // The model training runs on: the assistant's own (local), or `train_base`, the same base
    // model as the vLLM server's (remote).
    let base_spec = match (rc.provider, &rc.train_base) {
        (ProviderKind::Scripted, _) => return Ok((llm, None)),
        (ProviderKind::Local, None) => rc.model.clone(),
        (ProviderKind::OpenAi, Some(base)) => base.clone(),
        (ProviderKind::Local | ProviderKind::Gemini, Some(_)) => {
            return Err(
                ConfigError::TrainBase { role: Role::Assistant.to_string(), provider: rc.provider.to_string() }.into()
            )
        }
        (_, None) => {
            eprintln!(
                "note: train_method = {} needs [roles.assistant] provider = \"local\", or provider = \"openai\" on a vLLM server with train_base (it is `{}`); this run does not train.",
                cfg.sim.train_method, rc.provider
            );
            return Ok((llm, None));
        }
    };
    if method == TrainMethod::Kto && cfg.sim.train_rpo_alpha.is_some() {
        eprintln!("note: train_rpo_alpha adds to the DPO loss only; this KTO run trains without it.");
    }
    let remote = rc.provider == ProviderKind::OpenAi;
    let mut base_rc = rc.clone();
    base_rc.provider = ProviderKind::Local;
    base_rc.model = base_spec.clone();
    let provider = Arc::new(LocalProvider::new(&base_rc, Role::Assistant)?);
    let gguf = crate::llm::local::resolve_gguf(&base_spec, Role::Assistant)?;
    let model = share.base(&gguf, cfg.sim.train_weights)?;
    let adapters = sim_root.join("adapters");
    // A resumed run continues from its newest adapter.
    let (initial, published) = match adapter::latest_day(&adapters)? {
        Some((day, dir)) => {
            let a = adapter::load_adapter(&dir, model.config(), model.dtype(), model.device(), true)?;
            let snap = Arc::new(a.snapshot()?);
            (Some(a), PublishedAdapter { version: day as u64, day: Some(day), adapter: Some(snap) })
        }
        None => (None, PublishedAdapter::default()),
    };
    let version = published.version;
    let resumed_day = published.day;
    let slot = Arc::new(AdapterSlot::new(published));
    if !remote {
        provider.follow_adapters(model.clone(), slot.clone(), version)?;
    }
    let mmlu = match (&cfg.sim.daily_mmlu, &cfg.sim.mmlu_path) {
        (true, Some(p)) => Some(Mmlu {
            items: crate::train::mmlu::read_items(p)?,
            out: sim_root.join(MMLU_FILE),
            model: model.clone(),
            slot: slot.clone(),
        }),
        (true, None) => return Err(ConfigError::NoMmlu.into()),
        _ => None,
    };
    let worker = TrainWorker::spawn(WorkerSetup {
        model,
        formatter: provider.clone(),
        initial,
        slot,
        base_model_name: rc.model.clone(),
        queue: Some(share.queue.clone()),
    })?;
    let remote = if remote {
        // A resumed run loads its newest adapter again before the first request: the server may
        // have restarted since.
        Some(Remote { server: LoraServer::new(&rc)?, sim: cfg.sim.sim.clone(), wanted: resumed_day, loaded: None })
    } else {
        None
    };
    let llm = if remote.is_some() { llm } else { llm.with_provider(Role::Assistant, rc, provider.clone()) };
    llm.set_adapter_version(Role::Assistant, version);
    // The pairs of days already trained into the adapter are the replay buffer's past.
    let mut replay = ReplayBuffer::new();
    for d in 0..version {
        let p = sim_root.join(crate::assistant::records::pairs_file(d));
        if p.exists() {
            replay.all_time.extend(read_pairs(&p)?);
        }
    }
    let mode = cfg.sim.replay_buffer;
    // Like the original, day 1 starts with a check of the base model (unless a resumed run
    // already has it).
    let base_mmlu_due = mmlu.is_some() && version == 0 && mmlu_day_missing(&sim_root.join(MMLU_FILE), 1)?;
    let t = Training {
        worker,
        mmlu,
        train: TrainConfig::for_sim(&cfg.sim)?,
        replay,
        mode,
        seed: cfg.sim.seed,
        max_pairs: cfg.sim.train_max_pairs,
        adapters,
        log: sim_root.join(adapter::TRAINING_LOG),
        llm: None,
        metrics: None,
        provider,
        pending: None,
        base_mmlu_due,
        remote,
    };
    Ok((llm, Some(t)))
}

impl Training {
    pub fn bind(&mut self, llm: Arc<Llm>, metrics: MetricsLog) {
        self.llm = Some(llm);
        self.metrics = Some(metrics);
    }

    /// Copy a `training.jsonl` / `mmlu.jsonl` line into `metrics.jsonl` (a failure is a warning:
    /// the file is derived, and the next resume fills the line in).
    fn to_metrics(&self, line: &serde_json::Value, f: fn(&MetricsLog, &serde_json::Value) -> Result<bool>) {
        if let Some(m) = &self.metrics {
            if let Err(e) = f(m, line) {
                tracing::warn!(error = %format!("{e:#}"), "metrics.jsonl: a line could not be written");
            }
        }
    }

    fn finish(&mut self, r: JobResult) -> Result<()> {
        self.pending = None;
        match r {
            Ok(o) => {
                if let Some(l) = &self.llm {
                    l.set_adapter_version(Role::Assistant, o.version);
                }
                if let Some(r) = &mut self.remote {
                    r.wanted = Some(o.day);
                }
                eprintln!(
                    "trained day {}: adapter v{} ({} steps, loss {:.4} -> {:.4}){}",
                    o.day,
                    o.version,
                    o.summary.steps,
                    o.summary.first_loss,
                    o.summary.last_loss,
                    o.adapter_dir.map(|d| format!(", saved in {}", d.display())).unwrap_or_default()
                );
                let line = serde_json::json!({
                    "day": o.day,
                    "version": o.version,
                    "pairs": o.summary.examples,
                    "epochs": self.train.epochs,
                    "steps": o.summary.steps,
                    "first_loss": o.summary.first_loss,
                    "last_loss": o.summary.last_loss,
                    "seconds": o.summary.seconds,
                });
                crate::storage::append_jsonl(&self.log, &line)?;
                self.to_metrics(&line, MetricsLog::training);
                // The adapter trained on day N is the model of day N + 1.
                self.check_mmlu(o.day + 1)
            }
            Err(f) => bail!("{f} (the run stops here; fix the cause and continue with --resume)"),
        }
    }
}

/// Whether `path` has no result for `day` (a missing file has none).
fn mmlu_day_missing(path: &Path, day: u32) -> Result<bool> {
    if !path.exists() {
        return Ok(true);
    }
    let lines: Vec<serde_json::Value> = crate::storage::read_jsonl(path)?;
    Ok(!lines.iter().any(|l| l.get("day").and_then(serde_json::Value::as_u64) == Some(day as u64)))
}

impl Training {
    /// Greedy MMLU on the model of simulated day `day` (1-based): the adapter in use now, or the
    /// base before any training. The original checked at the start of every day, day 1 included.
    fn check_mmlu(&self, day: u32) -> Result<()> {
        let Some(m) = &self.mmlu else { return Ok(()) };
        let adapter = match m.slot.current().day {
            Some(d) if m.slot.version() > 0 => format!("day_{d:02}"),
            _ => "base".to_string(),
        };
        let opts = crate::train::mmlu::MmluOptions::for_model(self.provider.try_tokenizer()?.special());
        let mut session = LlamaSession::following(m.model.clone(), m.slot.clone());
        let report = crate::train::mmlu::run_mmlu(&mut session, &*self.provider, &m.items, &opts)?;
        eprintln!(
            "MMLU of day {day}'s model ({adapter}): {:.3} over {} questions",
            report.overall_accuracy, report.questions
        );
        let line = serde_json::json!({"day": day, "adapter": adapter, "overall_accuracy": report.overall_accuracy, "subject_accuracies": report.subject_accuracies});
        crate::storage::append_jsonl(&m.out, &line)?;
        self.to_metrics(&line, MetricsLog::mmlu);
        Ok(())
    }
}

impl DayHook for Training {
    fn day_ended(&mut self, day: u64, pairs: &Path) -> Result<()> {
        let today = if pairs.exists() { read_pairs(pairs)? } else { Vec::new() };
        let mut set = self.replay.select(self.mode, today, self.seed ^ day);
        if let Some(n) = self.max_pairs {
            set.truncate(n);
        }
        if set.is_empty() {
            eprintln!("day {} produced no preference pairs; the adapter stays as it is", day + 1);
            // The next day still gets its check, as in the original.
            return self.check_mmlu(day as u32 + 2);
        }
        let adapter_day = day as u32 + 1;
        let dir = adapter::day_dir(&self.adapters, adapter_day);
        self.worker.submit(TrainJob {
            day: adapter_day,
            pairs: set,
            config: self.train.clone(),
            metrics_path: Some(dir.join("train_metrics.jsonl")),
            adapter_dir: Some(dir),
        })?;
        self.pending = Some(adapter_day);
        Ok(())
    }

    fn resumed(&mut self, day: u64, pairs: &Path) -> Result<()> {
        // Day `day`'s adapter is `adapters/day_<day + 1>`; a day without pairs never gets one.
        let latest = adapter::latest_day(&self.adapters)?.map_or(0, |(d, _)| u64::from(d));
        if self.pending.is_none() && latest < day + 1 && pairs.exists() {
            eprintln!("resuming after the end of day {}: its training had not finished; training now", day + 1);
            return self.day_ended(day, pairs);
        }
        Ok(())
    }

    fn before_step(&mut self, _step: u64) -> Result<()> {
        if std::mem::take(&mut self.base_mmlu_due) {
            self.check_mmlu(1)?;
        }
        match self.worker.try_result() {
            Some(r) => self.finish(r),
            None => Ok(()),
        }
    }

    fn before_suggest(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.pending.is_some() {
                match self.worker.next_result().await {
                    Some(r) => self.finish(r)?,
                    None => bail!("the training worker stopped without a result"),
                }
            }
            self.serve_remote_adapter().await
        })
    }
}

impl Training {
    /// With the assistant on vLLM: make the server serve the newest adapter, and the
    /// assistant's requests name it. The load is retried (`LoraServer::load`); when the server
    /// still refuses, the step fails and the run stops at its last complete step, to be resumed
    /// once the server is fixed. The adapter before it is unloaded after the new one is in.
    async fn serve_remote_adapter(&mut self) -> Result<()> {
        let Some(r) = &mut self.remote else { return Ok(()) };
        let Some(day) = r.wanted else { return Ok(()) };
        let name = lora_name(&r.sim, day);
        if r.loaded.as_deref() == Some(name.as_str()) {
            return Ok(());
        }
        // A replay of recorded replies (`--llm-cache replay`) asks no server: only the model
        // name, which the cache keys hold, has to follow.
        let replay = self.llm.as_ref().is_some_and(|l| l.cache_mode() == crate::llm::cache::CacheMode::Replay);
        if !replay {
            let dir = adapter::day_dir(&self.adapters, day);
            // The server reads the folder itself: give it an absolute path.
            let path = std::fs::canonicalize(&dir).with_context(|| format!("the adapter folder {}", dir.display()))?;
            r.server.load(&name, &path).await.with_context(|| {
                format!(
                    "day {day}'s adapter is not served, so the run stops at its last complete step; \
                     continue it with --resume once the server loads adapters"
                )
            })?;
            eprintln!("the vLLM server at {} serves day {day}'s adapter as `{name}`", r.server.base_url());
            // The adapter before it: the one this process loaded or, in a resumed run, the
            // newest older one on disk (the server may still hold it from before the restart).
            let old = match r.loaded.take() {
                Some(o) => Some(o),
                None => adapter::saved_days(&self.adapters)?
                    .into_iter()
                    .rev()
                    .find(|(d, _)| *d < day)
                    .map(|(d, _)| lora_name(&r.sim, d)),
            };
            if let Some(old) = old {
                // A failed unload leaves the old adapter in one of the server's LoRA slots; the
                // run goes on.
                if let Err(e) = r.server.unload(&old).await {
                    eprintln!("warning: {e:#}");
                }
            }
        }
        r.loaded = Some(name.clone());
        if let Some(l) = &self.llm {
            l.set_served_model(Role::Assistant, Some(name));
        }
        Ok(())
    }
}
