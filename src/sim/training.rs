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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use futures::future::BoxFuture;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::hooks::DayHook;
use crate::config::{Config, ConfigError, ProviderKind, ReplayMode, Role, TrainMethod, TrainWeights};
use crate::llm::local::LocalProvider;
use crate::llm::vllm::{lora_name, LoraServer};
use crate::llm::Llm;
use crate::model::llama::{Llama, LlamaSession};
use crate::model::lora::{AdapterSlot, PublishedAdapter};
use crate::report::live::MetricsLog;
use crate::suggestion::Suggestion;
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
    mmlu: Option<Arc<Mmlu>>,
    /// The nightly training's settings (`TrainConfig::for_sim`).
    train: TrainConfig,
    replay: ReplayBuffer<PreferencePair>,
    mode: ReplayMode,
    seed: u64,
    max_pairs: Option<usize>,
    /// Draw the capped pairs from their three kinds in turn (`train_balance`).
    balance: bool,
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
    /// Its pairs by kind ([`pair_kind`]), for `training.jsonl`.
    pending_kinds: Option<[usize; 3]>,
    /// The day (1-based) whose model's MMLU check is still to run: set when that model comes
    /// into use (day 1's base, a night's adapter, a resume that finds the check missing) and
    /// run before the assistant's next suggestion, where a stop cancels it like any step.
    mmlu_due: Option<u32>,
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
        (true, Some(p)) => Some(Arc::new(Mmlu {
            items: crate::train::mmlu::read_items(p)?,
            out: sim_root.join(MMLU_FILE),
            model: model.clone(),
            slot: slot.clone(),
        })),
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
    let mmlu_due = (mmlu.is_some() && version == 0 && mmlu_day_missing(&sim_root.join(MMLU_FILE), 1)?).then_some(1);
    let t = Training {
        worker,
        mmlu,
        train: TrainConfig::for_sim(&cfg.sim)?,
        replay,
        mode,
        seed: cfg.sim.seed,
        max_pairs: cfg.sim.train_max_pairs,
        balance: cfg.sim.train_balance,
        adapters,
        log: sim_root.join(adapter::TRAINING_LOG),
        llm: None,
        metrics: None,
        provider,
        pending: None,
        pending_kinds: None,
        mmlu_due,
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
                    "kinds": self.pending_kinds.map(|[a, b, c]| serde_json::json!({
                        "norec_chosen": a, "norec_rejected": b, "suggestions": c,
                    })),
                });
                crate::storage::append_jsonl(&self.log, &line)?;
                self.to_metrics(&line, MetricsLog::training);
                // The adapter trained on day N is the model of day N + 1.
                self.mmlu_due = self.mmlu.is_some().then_some(o.day + 1);
                Ok(())
            }
            Err(f) => bail!("{f} (the run stops here; fix the cause and continue with --resume)"),
        }
    }
}

/// A pair's kind, for a balanced draw: "No Recommendation" chosen (0), rejected (1), or two
/// suggestions (2).
fn pair_kind(p: &PreferencePair) -> usize {
    let norec = |m: &[crate::llm::Message]| m.last().is_some_and(|m| answer_is_norec(&m.content));
    if norec(&p.chosen) {
        0
    } else if norec(&p.rejected) {
        1
    } else {
        2
    }
}

/// Whether a stored answer (`{"Suggestion": ...}`, or plain text) is the abstention.
fn answer_is_norec(content: &str) -> bool {
    let field = serde_json::from_str::<serde_json::Value>(content)
        .ok()
        .and_then(|v| v.get("Suggestion").and_then(|s| s.as_str()).map(str::to_string));
    Suggestion::from_text(field.as_deref().unwrap_or(content)).is_norec()
}

/// A night's capped set: `n` of `set`'s pairs drawn at random (the replay selection's own order
/// would give its oldest pairs when the pool is small), or with `balance` from the three kinds
/// of [`pair_kind`] in turn, each kind in random order, so that one kind (late in a run, the
/// forced "No Recommendation" chosen over a suggestion) does not fill the night; a kind that runs
/// out leaves its turns to the others.
fn draw_capped(set: Vec<PreferencePair>, n: usize, balance: bool, seed: u64) -> Vec<PreferencePair> {
    if set.len() <= n {
        return set;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    if !balance {
        let mut slots: Vec<Option<PreferencePair>> = set.into_iter().map(Some).collect();
        return rand::seq::index::sample(&mut rng, slots.len(), n)
            .into_iter()
            .filter_map(|i| slots[i].take())
            .collect();
    }
    let mut kinds: [Vec<PreferencePair>; 3] = Default::default();
    for p in set {
        kinds[pair_kind(&p)].push(p);
    }
    let mut kinds = kinds.map(|mut k| {
        k.shuffle(&mut rng);
        k.into_iter()
    });
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let before = out.len();
        for k in &mut kinds {
            if out.len() < n {
                out.extend(k.next());
            }
        }
        if out.len() == before {
            break;
        }
    }
    out
}

/// Whether `path` has no result for `day` (a missing file has none).
fn mmlu_day_missing(path: &Path, day: u32) -> Result<bool> {
    if !path.exists() {
        return Ok(true);
    }
    let lines: Vec<serde_json::Value> = crate::storage::read_jsonl(path)?;
    Ok(!lines.iter().any(|l| l.get("day").and_then(serde_json::Value::as_u64) == Some(day as u64)))
}

impl Mmlu {
    /// Greedy MMLU on the model in use now (the slot's adapter, or the base before any) as the
    /// model of simulated day `day` (1-based); the line is appended to `mmlu.jsonl` and returned.
    /// `None` when the file has the day already (a check that finished as its step was cancelled).
    fn check(&self, provider: &LocalProvider, day: u32, cancel: &AtomicBool) -> Result<Option<serde_json::Value>> {
        if !mmlu_day_missing(&self.out, day)? {
            return Ok(None);
        }
        let adapter = match self.slot.current().day {
            Some(d) if self.slot.version() > 0 => format!("day_{d:02}"),
            _ => "base".to_string(),
        };
        let opts = crate::train::mmlu::MmluOptions::for_model(provider.try_tokenizer()?.special());
        let mut session = LlamaSession::following(self.model.clone(), self.slot.clone());
        let report = crate::train::mmlu::run_mmlu(&mut session, provider, &self.items, &opts, cancel)?;
        eprintln!(
            "MMLU of day {day}'s model ({adapter}): {:.3} over {} questions",
            report.overall_accuracy, report.questions
        );
        let line = serde_json::json!({"day": day, "adapter": adapter, "overall_accuracy": report.overall_accuracy, "subject_accuracies": report.subject_accuracies});
        crate::storage::append_jsonl(&self.out, &line)?;
        Ok(Some(line))
    }
}

/// Raises its flag when dropped: a cancelled future tells the blocking work it started to stop.
struct RaiseOnDrop(Arc<AtomicBool>);

impl Drop for RaiseOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Training {
    /// The due MMLU check, off the runtime's threads (500 questions are minutes on a CPU). The
    /// original checked at the start of every day, day 1 included; here it runs before the
    /// day's first suggestion, on the same model. A stop drops this future, which cancels the
    /// check before its next question; it stays due and runs again on resume.
    async fn check_due_mmlu(&mut self) -> Result<()> {
        let (Some(day), Some(m)) = (self.mmlu_due, self.mmlu.clone()) else { return Ok(()) };
        let cancel = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = RaiseOnDrop(cancel.clone());
        let provider = self.provider.clone();
        let line = tokio::task::spawn_blocking(move || m.check(&provider, day, &cancel))
            .await
            .context("the MMLU check panicked")??;
        self.mmlu_done(line);
        Ok(())
    }

    /// The due check on this thread, before the night's training changes the model: only a day
    /// without a suggestion (the user never woke) leaves one due at its end.
    fn check_due_mmlu_now(&mut self) -> Result<()> {
        let (Some(day), Some(m)) = (self.mmlu_due, &self.mmlu) else { return Ok(()) };
        let line = m.check(&self.provider, day, &AtomicBool::new(false))?;
        self.mmlu_done(line);
        Ok(())
    }

    /// The due check is done; its line, if this run wrote it, goes to `metrics.jsonl` too.
    fn mmlu_done(&mut self, line: Option<serde_json::Value>) {
        self.mmlu_due = None;
        if let Some(line) = line {
            self.to_metrics(&line, MetricsLog::mmlu);
        }
    }
}

impl DayHook for Training {
    fn day_ended(&mut self, day: u64, pairs: &Path) -> Result<()> {
        self.check_due_mmlu_now()?;
        let today = if pairs.exists() { read_pairs(pairs)? } else { Vec::new() };
        let mut set = self.replay.select(self.mode, today, self.seed ^ day);
        if let Some(n) = self.max_pairs {
            set = draw_capped(set, n, self.balance, (self.seed ^ day).rotate_left(32));
        }
        if set.is_empty() {
            eprintln!("day {} produced no preference pairs; the adapter stays as it is", day + 1);
            // The next day still gets its check, as in the original.
            self.mmlu_due = self.mmlu.is_some().then_some(day as u32 + 2);
            return Ok(());
        }
        let adapter_day = day as u32 + 1;
        let mut kinds = [0; 3];
        for p in &set {
            kinds[pair_kind(p)] += 1;
        }
        eprintln!(
            "night {adapter_day}: {} pairs ({} with \"No Recommendation\" chosen, {} with it rejected, {} of two suggestions)",
            set.len(),
            kinds[0],
            kinds[1],
            kinds[2]
        );
        self.pending_kinds = Some(kinds);
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
        // The run may have been stopped or killed before today's check was written.
        let today = day as u32 + 2;
        if let Some(m) = &self.mmlu {
            if mmlu_day_missing(&m.out, today)? {
                self.mmlu_due = Some(today);
            }
        }
        Ok(())
    }

    fn before_step(&mut self, _step: u64) -> Result<()> {
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
            self.check_due_mmlu().await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::Message;

    /// `kind` 0: the abstention chosen, 1: rejected, 2: two suggestions; `i` tells pairs apart.
    fn pair(kind: usize, i: usize) -> PreferencePair {
        let answer =
            |s: &str| vec![Message { role: "assistant".into(), content: crate::suggestion::json_answer(s, None) }];
        let sug = format!("Suggestion {i}");
        let (chosen, rejected) = match kind {
            0 => (answer("No Recommendation"), answer(&sug)),
            1 => (answer(&sug), answer("No Recommendation")),
            _ => (answer(&sug), answer(&format!("{sug}, again"))),
        };
        let prompt = vec![Message { role: "user".into(), content: format!("step {i}") }];
        PreferencePair { prompt, chosen, rejected, extra: Default::default() }
    }

    fn kinds(set: &[PreferencePair]) -> [usize; 3] {
        let mut k = [0; 3];
        set.iter().for_each(|p| k[pair_kind(p)] += 1);
        k
    }

    #[test]
    fn a_pair_kind_is_read_from_its_answers() {
        assert_eq!([pair_kind(&pair(0, 0)), pair_kind(&pair(1, 1)), pair_kind(&pair(2, 2))], [0, 1, 2]);
        assert!(answer_is_norec("No Recommendation."), "plain text counts too");
        assert!(!answer_is_norec(r#"{"Suggestion": "No Recommendation for lunch? Try soup"}"#));
    }

    #[test]
    fn a_balanced_night_takes_the_kinds_in_turn_and_a_scarce_kind_leaves_its_turns() {
        // A late day: the abstention chosen dominates, few pairs reject it.
        let set: Vec<_> = (0..200)
            .map(|i| {
                pair(
                    if i < 150 {
                        0
                    } else if i < 155 {
                        1
                    } else {
                        2
                    },
                    i,
                )
            })
            .collect();
        assert_eq!(kinds(&set), [150, 5, 45]);
        let drawn = draw_capped(set.clone(), 32, true, 7);
        assert_eq!(kinds(&drawn), [14, 5, 13], "5 rejected, then the rest in turn");
        assert_eq!(draw_capped(set.clone(), 32, true, 7), drawn, "a seed draws the same set again");
        // Unbalanced, the cap draws at random from the whole selection, not its first pairs.
        let plain = draw_capped(set.clone(), 32, false, 7);
        assert_eq!(plain.len(), 32);
        let index = |p: &PreferencePair| p.prompt[0].content["step ".len()..].parse::<usize>().unwrap();
        let firsts = plain.iter().filter(|p| index(p) < 32).count();
        assert!(plain.iter().any(|p| pair_kind(p) != 0), "the later kinds are drawn too: {:?}", kinds(&plain));
        assert!(firsts < 32, "not the selection's first 32");
        // No pair twice, and a set under the cap is kept whole.
        let mut names: Vec<_> = drawn.iter().map(|p| p.prompt[0].content.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 32);
        assert_eq!(draw_capped(set[..20].to_vec(), 32, true, 7).len(), 20);
    }
}
