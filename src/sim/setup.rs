//! From configuration to a ready engine: assets, fork or resume, maze, LLM client.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use super::engine::{Attachments, Engine};
use super::provenance;
use super::training::TrainShare;
use crate::config::Config;
use crate::llm::cache::CacheMode;
use crate::llm::{Llm, Providers};
use crate::report::live::MetricsLog;
use crate::storage::sim::write_handshake;
use crate::storage::SimDir;
use crate::world::maze::Maze;

/// How to open the sim folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// Fork the seed; refuse if the sim exists.
    Fork,
    /// Fork, replacing an existing sim.
    Force,
    /// Continue an existing sim from its last complete step.
    Resume,
}

/// How to open a sim, beyond its configuration.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    pub open: Open,
    pub cache: CacheMode,
    /// On a resume, run with settings other than those in the sim's run.json, recording the
    /// change (`--allow-changes`); otherwise such a resume is refused.
    pub allow_changes: bool,
    /// The `[sim] seed` as given, when the engine's seed was derived from it (a sweep's
    /// persona); run.json records both.
    pub seed: Option<u64>,
}

impl OpenOptions {
    pub fn new(open: Open, cache: CacheMode) -> OpenOptions {
        OpenOptions { open, cache, allow_changes: false, seed: None }
    }
}

pub fn seed_dirs(cfg: &Config) -> Vec<PathBuf> {
    cfg.paths.seeds.iter().cloned().collect()
}

/// Fetch the map and seeds on first use when they are absent.
pub fn ensure_assets(cfg: &Config) -> Result<()> {
    ensure_assets_for(cfg, std::slice::from_ref(&cfg.sim.fork))
}

/// Fetch the map and seeds when the map is missing or none of `seeds` is found. When some are
/// found, nothing is fetched: the seeds are there, and a missing one is that sim's error (a
/// sweep's other sims go on), not a reason to download. Nor is a misspelt seed: when the map
/// and the original's seeds (`base_*`) are present but none of `seeds` is, the error names the
/// seed, where it was looked for, and the seeds there are.
pub fn ensure_assets_for(cfg: &Config, seeds: &[String]) -> Result<()> {
    let map_ok = crate::assets::map_present(&cfg.paths.assets);
    let dirs = seed_dirs(cfg);
    let found: Vec<_> = seeds.iter().map(|s| SimDir::find_seed(&cfg.paths.storage, &dirs, s)).collect();
    if map_ok && found.iter().any(|r| r.is_ok()) {
        return Ok(());
    }
    if map_ok && SimDir::available_seeds(&cfg.paths.storage, &dirs).iter().any(|n| n.starts_with("base_")) {
        if let Some(Err(e)) = found.into_iter().next() {
            return Err(e);
        }
    }
    eprintln!("Map assets or persona seeds are missing; fetching them once (propersim assets fetch)...");
    let opts = crate::assets::FetchOptions::new(&cfg.paths.assets, &cfg.paths.storage)?;
    crate::assets::fetch(&opts)
        .context("fetching the map and persona seeds; pass --assets and --seeds to use local copies")?;
    Ok(())
}

/// What the sims of one process share: the role providers (one HTTP client per endpoint, one
/// loaded local model per file), the trained assistants' bases and training queue, and the map.
/// A single run makes its own; a sweep hands one to all its sims.
#[derive(Clone, Default)]
pub struct Shared {
    pub providers: Arc<Providers>,
    pub training: Arc<TrainShare>,
    maze: Arc<Mutex<Option<Arc<Maze>>>>,
}

impl Shared {
    /// The map, loaded on first use.
    pub fn maze(&self, cfg: &Config) -> Result<Arc<Maze>> {
        let mut m = self.maze.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(maze) = m.as_ref() {
            return Ok(maze.clone());
        }
        let maze = Arc::new(
            Maze::load(&cfg.paths.assets)
                .with_context(|| format!("loading the map from {}", cfg.paths.assets.display()))?,
        );
        *m = Some(maze.clone());
        Ok(maze)
    }
}

/// Open one sim on its own, and tell the web page's handshake (`temp_storage`) about it.
pub fn open_engine(cfg: &Config, open: Open, cache: CacheMode) -> Result<Engine> {
    open_engine_with(cfg, &OpenOptions::new(open, cache))
}

/// As [`open_engine`], with every option.
pub fn open_engine_with(cfg: &Config, opts: &OpenOptions) -> Result<Engine> {
    let engine = open_engine_shared(cfg, opts, &Shared::default())?;
    write_handshake(&cfg.paths.temp_storage, &cfg.sim.sim, engine.next_step())?;
    Ok(engine)
}

/// Open one sim that takes its providers, training base and map from `shared`. Its cache,
/// ledger, adapters and state stay its own. A fork gets its run.json before it is renamed into
/// place; a resume is checked against the sim's run.json before anything is written, and
/// records itself there once the sim is open.
pub fn open_engine_shared(cfg: &Config, opts: &OpenOptions, shared: &Shared) -> Result<Engine> {
    // Settings that cannot run are refused before anything is forked or written.
    cfg.check_models()?;
    cfg.check_mmlu()?;
    cfg.check_training()?;
    let storage = &cfg.paths.storage;
    let fork = |force: bool| -> Result<SimDir> {
        let label = cfg.sim.train_mode_label();
        let info = provenance::describe(cfg, opts.seed, None)?;
        // The label and run.json go in before the fork is renamed into place, so no kill can
        // leave them out.
        SimDir::fork_with(storage, &seed_dirs(cfg), &cfg.sim.fork, &cfg.sim.sim, force, |meta, tmp| {
            meta.extra.insert("train_mode".into(), label.into());
            info.write(tmp)
        })
    };
    let (sim, resume) = match opts.open {
        Open::Resume if SimDir::fork_interrupted(storage, &cfg.sim.sim) => {
            eprintln!("The fork of `{}` was interrupted before it finished; forking it again.", cfg.sim.sim);
            (fork(false)?, None)
        }
        Open::Resume => {
            let sim = SimDir::open(storage, &cfg.sim.sim)?;
            let resume = provenance::check_resume(cfg, opts.seed, &sim.root, opts.allow_changes)?;
            SimDir::sweep_stale_forks(storage)?;
            (sim, Some(resume))
        }
        Open::Fork | Open::Force => (fork(opts.open == Open::Force)?, None),
    };
    let maze = shared.maze(cfg)?;
    let llm = Llm::for_sim(cfg, &sim.root, opts.cache)?.with_providers(shared.providers.clone());
    let (llm, training) = super::training::attach(cfg, &sim.root, llm, &shared.training)?;
    let llm = Arc::new(llm);
    let metrics = MetricsLog::open(&sim.root)?;
    if let Some(tracker) = crate::tracking::TrackerSetup::for_sim(cfg, &sim.root) {
        metrics.track(tracker)?;
    }
    let mut parts = Attachments { hook: None, token_counter: None, metrics: metrics.clone() };
    if let Some(mut t) = training {
        t.bind(llm.clone(), metrics);
        let p = t.provider.clone();
        parts.token_counter = Some(Box::new(move |s: &str| p.count_tokens(s).unwrap_or_else(|_| s.len().div_ceil(4))));
        parts.hook = Some(Box::new(t));
    }
    let mut engine = Engine::open(cfg.clone(), sim, maze, llm, parts)?;
    if let Some(r) = resume {
        engine.record_resume(r)?;
    }
    Ok(engine)
}
