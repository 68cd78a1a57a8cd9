//! `propersim experiment`: does the assistant learn? One sim per arm (a training method: `dpo`,
//! `kto`, or `none` for the untrained control), all forked from the same seed with the same engine
//! seed, run side by side in one process, then the curves per day and arm (`report::curve`).
//!
//! The arms differ only in `train_method`, so until the first adapter arrives (day 2) they make
//! the same suggestions and get the same scores, and every later difference is the training's.
//! Arms are ordinary sims (`<NAME>_<arm>/`) run by [`sweep::run_many`]: local roles that name
//! the same model share one loaded copy, the trained arms share one training base and queue
//! and keep their own adapters, and a rerun resumes each arm from its checkpoint.

use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Result};
use serde_json::Value;

use super::setup::ensure_assets_for;
use super::sweep::{self, RunMany, SweepSummary};
use crate::config::{Config, TrainMethod};
use crate::llm::cache::CacheMode;
use crate::report::curve::{self, Curve};
use crate::storage::experiment::{self as layout, Manifest};

/// A parsed `--arms` list: training methods, each once (`dpo,kto,none`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arms(pub Vec<TrainMethod>);

impl FromStr for Arms {
    type Err = String;
    fn from_str(s: &str) -> Result<Arms, String> {
        let mut out = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let m: TrainMethod = part.parse().map_err(|allowed| {
                format!("`{part}` is not an arm; arms are training methods, comma-separated, from: {allowed}")
            })?;
            if out.contains(&m) {
                return Err(format!("the arm `{m}` is listed twice"));
            }
            out.push(m);
        }
        Ok(Arms(out))
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ExperimentOptions {
    pub name: String,
    pub arms: Vec<TrainMethod>,
    /// Each arm runs until it has lived this many days in total.
    pub days: u64,
    pub cache: CacheMode,
    /// Rerun with other settings than the experiment ran with, recording the change in each arm.
    pub allow_changes: bool,
    pub progress: bool,
}

/// The configuration of one arm: the experiment's settings with this arm's training method.
pub fn arm_config(cfg: &Config, name: &str, arm: TrainMethod) -> Config {
    let mut c = cfg.clone();
    c.sim.sim = layout::sim_code(name, arm.as_str());
    c.sim.train_method = arm;
    c.sim.visualization = false;
    c
}

/// The settings every arm shares: a sweep's shared settings without the training method.
fn shared_settings(cfg: &Config) -> Result<Value> {
    let mut v = sweep::shared_settings(cfg)?;
    if let Value::Object(m) = &mut v {
        m.shift_remove("train_method");
    }
    Ok(v)
}

/// Record the experiment, or check a rerun against what it was started with.
fn check_manifest(cfg: &Config, opts: &ExperimentOptions) -> Result<()> {
    let storage = &cfg.paths.storage;
    let settings = shared_settings(cfg)?;
    let arms: Vec<String> = opts.arms.iter().map(|a| a.as_str().to_string()).collect();
    if let Some(old) = layout::read_manifest(storage, &opts.name)? {
        let resume = "resume it with the same options, or choose another --name";
        if old.fork != cfg.sim.fork {
            bail!("experiment `{}` was forked from {}, not {}; {resume}", opts.name, old.fork, cfg.sim.fork);
        }
        if old.arms != arms {
            bail!("experiment `{}` has the arms {}, not {}; {resume}", opts.name, old.arms.join(","), arms.join(","));
        }
        if (old.seed != cfg.sim.seed || old.settings != settings) && !opts.allow_changes {
            bail!(
                "experiment `{}` was started with other settings (seed or [sim] settings); {resume} \
                 (or pass --allow-changes to continue with these, recorded in each arm's reverie/run.json)",
                opts.name
            );
        }
    }
    if !opts.allow_changes {
        let arms: Vec<Config> = opts.arms.iter().map(|a| arm_config(cfg, &opts.name, *a)).collect();
        sweep::refuse_changed_sims(&arms, None)?;
    }
    for arm in &opts.arms {
        let code = layout::sim_code(&opts.name, arm.as_str());
        if storage.join(&code).join(crate::storage::sweep::MANIFEST).is_file() {
            bail!("`{code}` in {} is a sweep; choose another experiment --name", storage.display());
        }
    }
    layout::write_manifest(
        storage,
        &Manifest {
            name: opts.name.clone(),
            fork: cfg.sim.fork.clone(),
            arms,
            days: opts.days,
            seed: cfg.sim.seed,
            settings,
        },
    )
}

/// Run (or resume) every arm to `opts.days` days, then write the curves (also when stopped
/// early: the curve of what has run). Each arm's sim is an ordinary sim folder.
pub async fn run(cfg: &Config, opts: &ExperimentOptions, stop: Arc<AtomicBool>) -> Result<(SweepSummary, Curve)> {
    if opts.arms.is_empty() {
        bail!("the experiment names no arms");
    }
    if opts.days == 0 {
        bail!("--days must be at least 1");
    }
    if cfg.sim.fork.is_empty() {
        bail!("an experiment needs --fork SEED (e.g. base_the_ville_persona_1)");
    }
    layout::experiment_dir(&cfg.paths.storage, &opts.name)?;
    check_manifest(cfg, opts)?;
    ensure_assets_for(cfg, std::slice::from_ref(&cfg.sim.fork))?;
    let cfgs = opts.arms.iter().map(|a| arm_config(cfg, &opts.name, *a)).collect();
    let many = RunMany {
        label: format!("experiment {}", opts.name),
        days: opts.days,
        concurrency: None,
        cache: opts.cache,
        allow_changes: opts.allow_changes,
        seed: None,
        progress: opts.progress,
    };
    let summary = sweep::run_many(cfgs, &many, stop).await;
    let storage = cfg.paths.storage.clone();
    let name = opts.name.clone();
    let c = tokio::task::spawn_blocking(move || -> Result<Curve> {
        let c = curve::compute(&storage, &name)?;
        curve::write_outputs(&storage, &c)?;
        Ok(c)
    })
    .await??;
    Ok((summary, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arms_parse_or_say_why_not() {
        assert_eq!("dpo,none".parse::<Arms>().unwrap().0, [TrainMethod::Dpo, TrainMethod::None]);
        assert_eq!(" kto ".parse::<Arms>().unwrap().0, [TrainMethod::Kto]);
        assert!("dpo,dpo".parse::<Arms>().unwrap_err().contains("listed twice"));
        assert!("ppo".parse::<Arms>().unwrap_err().contains("`ppo` is not an arm"));
        assert!("dpo,".parse::<Arms>().is_err());
    }

    #[test]
    fn arms_differ_only_in_training() {
        let cfg = Config::default();
        let (a, b) = (arm_config(&cfg, "e", TrainMethod::Dpo), arm_config(&cfg, "e", TrainMethod::None));
        assert_eq!((a.sim.sim.as_str(), b.sim.sim.as_str()), ("e_dpo", "e_none"));
        assert_eq!(a.sim.seed, b.sim.seed);
        assert_eq!(shared_settings(&a).unwrap(), shared_settings(&b).unwrap());
    }
}
