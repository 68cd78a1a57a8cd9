//! From configuration to a ready engine: assets, fork or resume, maze, LLM client.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::Engine;
use crate::config::Config;
use crate::llm::cache::CacheMode;
use crate::llm::Llm;
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

pub fn seed_dirs(cfg: &Config) -> Vec<PathBuf> {
    cfg.paths.seeds.iter().cloned().collect()
}

/// Fetch the map and seeds on first use when they are absent.
pub fn ensure_assets(cfg: &Config) -> Result<()> {
    let map_ok = crate::assets::map_present(&cfg.paths.assets);
    let seed_ok = SimDir::find_seed(&cfg.paths.storage, &seed_dirs(cfg), &cfg.sim.fork).is_ok();
    if map_ok && seed_ok {
        return Ok(());
    }
    eprintln!("Map assets or persona seeds are missing; fetching them once (propersim assets fetch)...");
    let opts = crate::assets::FetchOptions::new(&cfg.paths.assets, &cfg.paths.storage)?;
    crate::assets::fetch(&opts)
        .context("fetching the map and persona seeds; pass --assets and --seeds to use local copies")?;
    Ok(())
}

pub fn open_engine(cfg: &Config, open: Open, cache: CacheMode) -> Result<Engine> {
    let storage = &cfg.paths.storage;
    let fork = |force: bool| {
        let label = cfg.sim.train_mode_label();
        // The label goes in before the fork is renamed into place, so no kill can leave it out.
        SimDir::fork_with(storage, &seed_dirs(cfg), &cfg.sim.fork, &cfg.sim.sim, force, |meta| {
            meta.extra.insert("train_mode".into(), label.into());
        })
    };
    let sim = match open {
        Open::Resume if SimDir::fork_interrupted(storage, &cfg.sim.sim) => {
            eprintln!("The fork of `{}` was interrupted before it finished; forking it again.", cfg.sim.sim);
            fork(false)?
        }
        Open::Resume => {
            SimDir::sweep_stale_forks(storage)?;
            SimDir::open(storage, &cfg.sim.sim)?
        }
        Open::Fork | Open::Force => fork(open == Open::Force)?,
    };
    let maze = Arc::new(
        Maze::load(&cfg.paths.assets)
            .with_context(|| format!("loading the map from {}", cfg.paths.assets.display()))?,
    );
    let llm = Llm::for_sim(cfg, &sim.root, cache)?;
    let (llm, training) = super::training::attach(cfg, &sim.root, llm)?;
    let llm = Arc::new(llm);
    let mut engine = Engine::open(cfg.clone(), sim, maze, llm.clone())?;
    if let Some(mut t) = training {
        t.bind(llm);
        let p = t.provider.clone();
        engine.token_counter = Box::new(move |s: &str| p.count_tokens(s).unwrap_or_else(|_| s.len().div_ceil(4)));
        engine.hook = Some(Box::new(t));
    }
    write_handshake(&cfg.paths.temp_storage, &cfg.sim.sim, engine.next_step)?;
    Ok(engine)
}
