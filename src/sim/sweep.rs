//! `propersim sweep`: many personas' sims in one process, sharing providers.
//!
//! The paper's result is an average over personas, and independent sims are the natural unit of
//! parallelism: against a batching server (vLLM, llama.cpp, `propersim llm serve`) many sims in
//! flight keep it busy where one sim's sequential steps cannot. Each persona `k` gets an ordinary
//! sim folder, `<NAME>_p<k>`, forked from `base_the_ville_persona_<k>` with the same settings and
//! an engine seed derived from `(seed, k)` ([`persona_engine_seed`]), so a sweep's sims are
//! exactly what `propersim run` would make, and every single-sim tool works on them.
//!
//! - Sharing: one [`Shared`] set of providers, training bases and the map for all sims (see
//!   `llm::Providers`); each sim keeps its own cache, ledger, adapters and state.
//! - Resuming: rerunning the command continues every sim from its checkpoint (a sim forked but
//!   never stepped is forked again); finished sims are left alone. Ctrl-C (or SIGTERM) drops
//!   each running sim's step in flight, as `run` does, and saves its last complete one.
//! - Sharding: `--shard I/N` keeps the personas with `k mod N = I`, so N machines over shared
//!   storage split a sweep without talking to each other.
//! - Failure: a sim that fails (a missing or broken seed, a provider error) stops alone, with its
//!   message; the others go on.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use super::headless::step_or_stop;
use super::setup::{ensure_assets_for, open_engine_shared, Open, OpenOptions, Shared};
use super::Engine;
use crate::config::{Config, SimSettings};
use crate::llm::cache::CacheMode;
use crate::llm::ledger::BudgetExceeded;
use crate::storage::sweep::{self as layout, Manifest};
use crate::storage::SimDir;

/// Parse a persona list: numbers and ascending ranges, comma-separated (`1-32`, `1,4,9-12`).
/// Errors say what is wrong with which part, for the command line.
pub fn parse_personas(s: &str) -> Result<Vec<u32>, String> {
    let mut out: Vec<u32> = Vec::new();
    let number = |t: &str| -> Result<u32, String> {
        let t = t.trim();
        let k: u32 =
            t.parse().map_err(|_| format!("`{t}` is not a persona number (expected e.g. 1-32 or 1,4,9-12)"))?;
        if k == 0 {
            return Err("persona numbers start at 1 (base_the_ville_persona_1)".into());
        }
        Ok(k)
    };
    for part in s.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("`{s}` has an empty entry; expected e.g. 1-32 or 1,4,9-12"));
        }
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let k = number(part)?;
                (k, k)
            }
        };
        if a > b {
            return Err(format!("the range `{part}` runs backwards; write {b}-{a}"));
        }
        for k in a..=b {
            if out.contains(&k) {
                return Err(format!("persona {k} is listed twice"));
            }
            out.push(k);
        }
    }
    Ok(out)
}

/// A parsed `--personas` list (a type of its own, so the command line takes it as one value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonaList(pub Vec<u32>);

impl FromStr for PersonaList {
    type Err = String;
    fn from_str(s: &str) -> Result<PersonaList, String> {
        parse_personas(s).map(PersonaList)
    }
}

/// `--shard I/N`: this machine's part of a sweep split N ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// Persona `k` belongs to this shard when `k mod N = I`. The persona number, not its place
    /// in the list, decides, so machines agree however the list is written.
    pub fn includes(&self, k: u32) -> bool {
        k % self.count == self.index
    }
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Shard, String> {
        let (i, n) = s.split_once('/').ok_or_else(|| format!("`{s}` is not I/N (e.g. 0/4: the first of 4 shards)"))?;
        let i: u32 = i.trim().parse().map_err(|_| format!("the shard index `{i}` is not a number (I/N, e.g. 0/4)"))?;
        let n: u32 = n.trim().parse().map_err(|_| format!("the shard count `{n}` is not a number (I/N, e.g. 0/4)"))?;
        if n == 0 {
            return Err("the shard count must be at least 1".into());
        }
        if i >= n {
            return Err(format!(
                "shard index {i} must be below the shard count {n} (shards are 0/{n} to {}/{n})",
                n - 1
            ));
        }
        Ok(Shard { index: i, count: n })
    }
}

/// The engine seed of persona `k`: a mix of the configured seed and `k`, so personas draw
/// independent streams and a sweep is reproducible from its settings alone.
pub fn persona_engine_seed(seed: u64, k: u32) -> u64 {
    // splitmix64 of the seed offset by k.
    let mut z = seed.wrapping_add((k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    pub name: String,
    pub personas: Vec<u32>,
    /// Each sim runs until it has lived this many days in total.
    pub days: u64,
    pub shard: Option<Shard>,
    /// Sims stepping at once (default: all of this shard's).
    pub concurrency: Option<usize>,
    pub cache: CacheMode,
    /// Rerun with other settings than the sweep ran with, recording the change in each sim.
    pub allow_changes: bool,
    /// Show the progress display (a live one on a terminal, periodic lines otherwise).
    pub progress: bool,
}

/// How one sim ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SimStatus {
    /// Reached the target day.
    Done,
    /// Stopped early and cleanly (Ctrl-C, or its budget): it resumes with the same command.
    Stopped(String),
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct SimOutcome {
    pub sim: String,
    /// Steps run by this command.
    pub steps: u64,
    pub status: SimStatus,
}

#[derive(Debug)]
pub struct SweepSummary {
    pub sims: Vec<SimOutcome>,
    pub steps: u64,
    pub seconds: f64,
}

impl SweepSummary {
    pub fn failed(&self) -> impl Iterator<Item = &SimOutcome> {
        self.sims.iter().filter(|s| matches!(s.status, SimStatus::Failed(_)))
    }
    pub fn stopped(&self) -> usize {
        self.sims.iter().filter(|s| matches!(s.status, SimStatus::Stopped(_))).count()
    }
    pub fn done(&self) -> usize {
        self.sims.iter().filter(|s| s.status == SimStatus::Done).count()
    }
}

/// The `[sim]` settings every sim of a sweep must share, as recorded in `sweep.json`: all but
/// the per-sim and operational ones ([`SimSettings::OPERATIONAL`]).
pub fn shared_settings(cfg: &Config) -> Result<Value> {
    let mut v = serde_json::to_value(&cfg.sim)?;
    if let Value::Object(m) = &mut v {
        for k in SimSettings::OPERATIONAL {
            m.shift_remove(*k);
        }
    }
    Ok(v)
}

/// The configuration of persona `k`'s sim.
pub fn persona_config(cfg: &Config, name: &str, k: u32) -> Config {
    let mut c = cfg.clone();
    c.sim.fork = layout::persona_seed(k);
    c.sim.sim = layout::sim_code(name, k);
    c.sim.seed = persona_engine_seed(cfg.sim.seed, k);
    c.sim.visualization = false;
    c
}

/// Record the sweep in `storage/<NAME>/sweep.json`, or check a rerun against it: the same
/// personas and settings, or an error naming what differs (mixing settings in one sweep would
/// make its average meaningless).
fn check_manifest(cfg: &Config, opts: &SweepOptions) -> Result<()> {
    let storage = &cfg.paths.storage;
    let settings = shared_settings(cfg)?;
    if let Some(old) = layout::read_manifest(storage, &opts.name)? {
        if old.personas != opts.personas {
            bail!(
                "sweep `{}` was started with --personas {}; this command names {} (use the same list, or another --name)",
                opts.name,
                ranges(&old.personas),
                ranges(&opts.personas)
            );
        }
        if old.settings != settings && !opts.allow_changes {
            let diff = differing_keys(&old.settings, &settings);
            bail!(
                "sweep `{}` was started with other settings ({}); resume it with the same settings, pass \
                 --allow-changes to continue with these (recorded in each sim's reverie/run.json), or use another --name",
                opts.name,
                diff.join(", ")
            );
        }
    }
    if !opts.allow_changes {
        let mine = opts.personas.iter().filter(|k| opts.shard.is_none_or(|s| s.includes(**k)));
        let cfgs: Vec<Config> = mine.map(|&k| persona_config(cfg, &opts.name, k)).collect();
        refuse_changed_sims(&cfgs, Some(cfg.sim.seed))?;
    }
    layout::write_manifest(
        storage,
        &Manifest {
            name: opts.name.clone(),
            personas: opts.personas.clone(),
            days: opts.days,
            train_mode: cfg.sim.train_mode_label(),
            settings,
        },
    )
}

/// Refuse, before anything is written, to resume any of these sims with settings other than
/// its run.json holds (the settings a sweep's manifest does not record: the roles, a model
/// file). The message names the first such sim's changes and how many sims have some.
pub fn refuse_changed_sims(cfgs: &[Config], seed: Option<u64>) -> Result<()> {
    let mut changed = Vec::new();
    for c in cfgs {
        if open_mode(c)? == Open::Resume {
            let d = super::provenance::check_resume(c, seed, &c.paths.storage.join(&c.sim.sim), true)?.changed();
            if !d.is_empty() {
                changed.push((c.sim.sim.clone(), d));
            }
        }
    }
    match changed.first() {
        None => Ok(()),
        Some((sim, d)) => {
            let others = match changed.len() - 1 {
                0 => String::new(),
                n => format!(" ({n} more of these sims would change too)"),
            };
            bail!("{}{others}", super::provenance::refusal(sim, d))
        }
    }
}

fn differing_keys(old: &Value, new: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (o, n) = (old.as_object().unwrap_or(&empty), new.as_object().unwrap_or(&empty));
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| o.get(*k) != n.get(*k))
        .map(|k| format!("{k}: was {}, now {}", o.get(k).unwrap_or(&Value::Null), n.get(k).unwrap_or(&Value::Null)))
        .collect()
}

/// `1-4,7` for `[1, 2, 3, 4, 7]`.
pub fn ranges(ks: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ks.len() {
        let mut j = i;
        while j + 1 < ks.len() && ks[j + 1] == ks[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { ks[i].to_string() } else { format!("{}-{}", ks[i], ks[j]) });
        i = j + 1;
    }
    parts.join(",")
}

/// The live display: one bar for the sweep (steps, rate, eta) and one line per running sim. On
/// a terminal it redraws in place; otherwise (a batch job's log) it prints a line every
/// `LOG_EVERY`.
struct Display {
    multi: MultiProgress,
    overall: ProgressBar,
    live: bool,
    running: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
}

/// How long a sim steps before it lets the others run (see `run_sim`).
const YIELD_AFTER: Duration = Duration::from_millis(20);

/// How often a sweep without a terminal logs its progress.
const LOG_EVERY: Duration = Duration::from_secs(30);

impl Display {
    fn new(show: bool) -> Display {
        let multi = MultiProgress::with_draw_target(if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(super::headless::steps_style());
        Display {
            live: show && !multi.is_hidden(),
            multi,
            overall,
            running: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    fn sim_line(&self) -> ProgressBar {
        if !self.live {
            return ProgressBar::hidden();
        }
        let b = self.multi.add(ProgressBar::new_spinner());
        b.set_style(ProgressStyle::with_template("  {msg}").expect("static template"));
        b
    }

    fn counts(&self) -> String {
        format!(
            "running {}, done {}, failed {}",
            self.running.load(Ordering::Relaxed),
            self.done.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        )
    }

    fn refresh(&self) {
        self.overall.set_message(self.counts());
    }

    /// A message that stays (a failure, a finished sim), above the live lines.
    fn say(&self, msg: &str) {
        if self.live {
            self.multi.suspend(|| eprintln!("{msg}"));
        } else {
            eprintln!("{msg}");
        }
    }

    /// One plain line for logs.
    fn log_line(&self, label: &str, t0: Instant) {
        let pos = self.overall.position();
        let len = self.overall.length().unwrap_or(0).max(1);
        let secs = t0.elapsed().as_secs_f64().max(1e-9);
        let rate = pos as f64 / secs;
        let eta = if rate > 0.0 { (len.saturating_sub(pos)) as f64 / rate } else { f64::NAN };
        eprintln!(
            "{label}: {pos}/{len} steps ({:.1}%), {rate:.0} steps/s, eta {}, {}",
            100.0 * pos as f64 / len as f64,
            if eta.is_finite() { format!("{:.0}s", eta) } else { "-".into() },
            self.counts()
        );
    }
}

/// Run the sweep: this shard's personas, `concurrency` at a time, until each has lived
/// `opts.days` days or `stop` is raised (each running sim then drops its step in flight and saves).
pub async fn run(cfg: &Config, opts: &SweepOptions, stop: Arc<AtomicBool>) -> Result<SweepSummary> {
    if opts.personas.is_empty() {
        bail!("the sweep names no personas");
    }
    if opts.days == 0 {
        bail!("--days must be at least 1");
    }
    if opts.concurrency == Some(0) {
        bail!("--concurrency must be at least 1");
    }
    check_manifest(cfg, opts)?;
    let mine: Vec<u32> = opts.personas.iter().copied().filter(|k| opts.shard.is_none_or(|s| s.includes(*k))).collect();
    if mine.is_empty() {
        return Ok(SweepSummary { sims: Vec::new(), steps: 0, seconds: 0.0 });
    }
    let seeds: Vec<String> = mine.iter().map(|k| layout::persona_seed(*k)).collect();
    ensure_assets_for(cfg, &seeds)?;
    let cfgs = mine.iter().map(|&k| persona_config(cfg, &opts.name, k)).collect();
    let many = RunMany {
        label: format!("sweep {}", opts.name),
        days: opts.days,
        concurrency: opts.concurrency.or_else(|| default_concurrency(cfg)),
        cache: opts.cache,
        allow_changes: opts.allow_changes,
        seed: Some(cfg.sim.seed),
        progress: opts.progress,
    };
    Ok(run_many(cfgs, &many, stop).await)
}

/// Sims stepping at once when `--concurrency` is not given: all of them, so that a model server
/// sees every sim's requests, except on the scripted brain alone, where sims are CPU-bound and
/// more in flight than cores only costs caches (32 at once on 2 cores used 27% more CPU than 2).
fn default_concurrency(cfg: &Config) -> Option<usize> {
    let scripted =
        crate::config::Role::ALL.iter().all(|r| cfg.role(*r).provider == crate::config::ProviderKind::Scripted);
    scripted.then(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// How [`run_many`] runs a set of sims.
#[derive(Debug, Clone)]
pub struct RunMany {
    /// What the progress lines call the whole (`sweep NAME`, `experiment NAME`).
    pub label: String,
    /// Each sim runs until it has lived this many days in total.
    pub days: u64,
    /// Sims stepping at once (default: all).
    pub concurrency: Option<usize>,
    pub cache: CacheMode,
    /// Resume sims with settings other than their run.json holds, recording the change.
    pub allow_changes: bool,
    /// The `[sim] seed` the sims' engine seeds derive from (a sweep's), for their run.json.
    pub seed: Option<u64>,
    pub progress: bool,
}

/// Run independent sims in this process over one [`Shared`] set of providers and training
/// bases, `concurrency` at a time, each until it has lived `days` days or `stop` is raised. A sim
/// with a checkpoint resumes, one never stepped is forked (again). Used by sweeps (one sim per
/// persona) and experiments (one sim per training arm).
pub async fn run_many(cfgs: Vec<Config>, opts: &RunMany, stop: Arc<AtomicBool>) -> SweepSummary {
    let t0 = Instant::now();
    if cfgs.is_empty() {
        return SweepSummary { sims: Vec::new(), steps: 0, seconds: 0.0 };
    }
    let shared = Shared::default();
    let display = Arc::new(Display::new(opts.progress));
    let permits = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.unwrap_or(cfgs.len()).clamp(1, cfgs.len())));
    let logger = (opts.progress && !display.live).then(|| {
        let (display, label) = (display.clone(), opts.label.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LOG_EVERY).await;
                display.log_line(&label, t0);
            }
        })
    });
    // Sims start in the order given, `concurrency` at a time: the permits are taken here, one
    // after another, not by the sims' own tasks (whose first poll order is the scheduler's).
    let mut tasks = Vec::new();
    for cfg in cfgs {
        let sim = cfg.sim.sim.clone();
        let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        if stop.load(Ordering::SeqCst) {
            tasks.push((sim, None));
            continue;
        }
        let (shared, display, stop) = (shared.clone(), display.clone(), stop.clone());
        let days = opts.days;
        let open = OpenOptions {
            allow_changes: opts.allow_changes,
            seed: opts.seed,
            ..OpenOptions::new(Open::Fork, opts.cache)
        };
        tasks.push((
            sim,
            Some(tokio::spawn(async move {
                let _permit = permit;
                run_sim(cfg, days, open, shared, &display, &stop).await
            })),
        ));
    }
    let mut sims = Vec::new();
    for (sim, task) in tasks {
        let (steps, status) = match task {
            None => (0, SimStatus::Stopped("interrupted before it started".into())),
            Some(task) => match task.await {
                Ok(r) => r,
                Err(e) => (0, SimStatus::Failed(format!("the sim's task panicked: {e}"))),
            },
        };
        sims.push(SimOutcome { sim, steps, status });
    }
    if let Some(l) = logger {
        l.abort();
    }
    display.overall.finish_and_clear();
    let steps = sims.iter().map(|s| s.steps).sum();
    SweepSummary { sims, steps, seconds: t0.elapsed().as_secs_f64() }
}

/// Open (fork, re-fork or resume) one sim and step it to its last day.
async fn run_sim(
    cfg: Config,
    days: u64,
    open: OpenOptions,
    shared: Shared,
    display: &Display,
    stop: &AtomicBool,
) -> (u64, SimStatus) {
    let sim = cfg.sim.sim.clone();
    display.running.fetch_add(1, Ordering::Relaxed);
    display.refresh();
    // Opening copies files and may load models: keep it off the async workers.
    let opened = tokio::task::spawn_blocking(move || open_sim(&cfg, open, &shared)).await;
    let mut engine = match opened {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => return finish(display, &sim, 0, SimStatus::Failed(format!("{e:#}"))),
        Err(e) => return finish(display, &sim, 0, SimStatus::Failed(format!("opening panicked: {e}"))),
    };
    let per_day = engine.steps_per_day();
    let target = days * per_day;
    let start = engine.next_step();
    display.overall.inc_length(target.saturating_sub(start));
    let line = display.sim_line();
    let show = |e: &Engine| {
        line.set_message(format!(
            "{sim}  day {}/{days}  step {}/{target}",
            (e.next_step() / per_day + 1).min(days),
            e.next_step()
        ))
    };
    show(&engine);
    let mut status = SimStatus::Done;
    let mut slice = Instant::now();
    while engine.next_step() < target {
        if stop.load(Ordering::SeqCst) {
            status = SimStatus::Stopped("interrupted".into());
            break;
        }
        let r = match engine.write_next_environment() {
            Ok(()) => step_or_stop(&mut engine, stop).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(true) => {}
            // Ctrl-C dropped the step in flight; the sim is back at its last complete step.
            Ok(false) => {
                status = SimStatus::Stopped("interrupted".into());
                break;
            }
            Err(e) => {
                // Over budget is a clean stop: the step was not written, the sim resumes later.
                status = match e.downcast_ref::<BudgetExceeded>() {
                    Some(b) => SimStatus::Stopped(format!("{b}; raise budget_usd and rerun")),
                    None => SimStatus::Failed(format!("step {}: {e:#}", engine.next_step())),
                };
                break;
            }
        }
        display.overall.inc(1);
        if engine.next_step().is_multiple_of(24) {
            show(&engine);
        }
        // A scripted step never waits, so without this one sim would hold its worker thread
        // to the end. Yielding after every step instead interleaves all sims step by step,
        // and each step then starts with another sim's memory out of the CPU caches (measured:
        // twice the CPU time for 32 sims); a time slice keeps both the locality and a display
        // and Ctrl-C that answer within milliseconds.
        if slice.elapsed() >= YIELD_AFTER {
            tokio::task::yield_now().await;
            slice = Instant::now();
        }
    }
    line.finish_and_clear();
    if let Err(e) = engine.save_personas() {
        if !matches!(status, SimStatus::Failed(_)) {
            status = SimStatus::Failed(format!("saving the personas: {e:#}"));
        }
    }
    let end = match status {
        SimStatus::Done => crate::tracking::RunEnd::Finished,
        SimStatus::Stopped(_) => crate::tracking::RunEnd::Killed,
        SimStatus::Failed(_) => crate::tracking::RunEnd::Failed,
    };
    if let Some(line) = engine.metrics().end_tracking(end).await {
        display.say(&format!("{sim}: {line}"));
    }
    finish(display, &sim, engine.next_step() - start, status)
}

fn finish(display: &Display, sim: &str, steps: u64, status: SimStatus) -> (u64, SimStatus) {
    display.running.fetch_sub(1, Ordering::Relaxed);
    match &status {
        SimStatus::Done => {
            display.done.fetch_add(1, Ordering::Relaxed);
        }
        SimStatus::Failed(why) => {
            display.failed.fetch_add(1, Ordering::Relaxed);
            display.say(&format!("{sim} failed: {why}"));
        }
        SimStatus::Stopped(_) => {}
    }
    display.refresh();
    (steps, status)
}

/// A sim with a checkpoint resumes; one that was forked but never stepped (or whose fork was
/// cut short) is forked again; otherwise it is forked.
fn open_mode(cfg: &Config) -> Result<Open> {
    let storage = &cfg.paths.storage;
    Ok(match SimDir::open(storage, &cfg.sim.sim) {
        Ok(sd) if Engine::has_checkpoint(&sd)? => Open::Resume,
        Ok(_) => Open::Force,
        Err(_) if storage.join(&cfg.sim.sim).exists() => Open::Force,
        Err(_) => Open::Fork,
    })
}

/// Open one sim as [`open_mode`] decides, with `opts`' cache, seed and change policy.
fn open_sim(cfg: &Config, opts: OpenOptions, shared: &Shared) -> Result<Engine> {
    let opts = OpenOptions { open: open_mode(cfg)?, ..opts };
    open_engine_shared(cfg, &opts, shared)
        .with_context(|| format!("persona seed {} into sim {}", cfg.sim.fork, cfg.sim.sim))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persona_lists_parse_or_say_why_not() {
        assert_eq!(parse_personas("1-4").unwrap(), [1, 2, 3, 4]);
        assert_eq!(parse_personas("3, 1,7-8").unwrap(), [3, 1, 7, 8]);
        assert_eq!(parse_personas("5").unwrap(), [5]);
        let err = |s: &str| parse_personas(s).unwrap_err();
        assert!(err("5-3").contains("runs backwards; write 3-5"), "{}", err("5-3"));
        assert!(err("0-3").contains("start at 1"));
        assert!(err("a").contains("`a` is not a persona number"));
        assert!(err("1,,2").contains("empty entry"));
        assert!(err("").contains("empty entry"));
        assert!(err("1-3,2").contains("persona 2 is listed twice"));
        assert!(err("1-").contains("is not a persona number"));
        assert_eq!(ranges(&[1, 2, 3, 5, 7, 8]), "1-3,5,7-8");
    }

    #[test]
    fn shards_split_by_persona_number() {
        let s: Shard = "1/3".parse().unwrap();
        assert_eq!((1..=9).filter(|k| s.includes(*k)).collect::<Vec<_>>(), [1, 4, 7]);
        assert!("2/2".parse::<Shard>().unwrap_err().contains("below the shard count 2"));
        assert!("0/0".parse::<Shard>().unwrap_err().contains("at least 1"));
        assert!("1".parse::<Shard>().unwrap_err().contains("I/N"));
        assert!("x/2".parse::<Shard>().unwrap_err().contains("index `x`"));
        // Every persona is in exactly one shard.
        for k in 1..=32 {
            assert_eq!((0..4).filter(|i| Shard { index: *i, count: 4 }.includes(k)).count(), 1);
        }
    }

    #[test]
    fn persona_seeds_differ_and_are_stable() {
        let seeds: std::collections::HashSet<u64> = (1..=32).map(|k| persona_engine_seed(42, k)).collect();
        assert_eq!(seeds.len(), 32);
        assert_eq!(persona_engine_seed(42, 3), persona_engine_seed(42, 3));
        assert_ne!(persona_engine_seed(42, 3), persona_engine_seed(43, 3));
    }

    #[test]
    fn settings_differences_are_named() {
        let a = serde_json::json!({"seed": 1, "ranking": true});
        let b = serde_json::json!({"seed": 1, "ranking": false});
        assert_eq!(differing_keys(&a, &b), ["ranking: was true, now false"]);
    }
}
