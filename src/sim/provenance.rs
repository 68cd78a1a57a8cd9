//! A sim's provenance (`reverie/run.json`, see `storage::run`): built from the configuration a
//! run resolved, written into a fork before it is renamed into place, and on a resume compared
//! with what the sim ran with before. A resume that would change what the sim computes is
//! refused, naming each changed setting, unless the caller allows it; then the change is
//! recorded with the step it starts at, so every output can be traced to the settings that
//! made it.

use std::path::Path;

use anyhow::{bail, Result};
use indexmap::IndexMap;
use serde_json::Value;

use crate::config::{Config, ProviderKind, Role};
use crate::storage::run::{self, Change, ModelFile, Program, ResolvedConfig, RoleRun, RunInfo};
use crate::storage::SimDir;

/// Describe the run `cfg` makes: program, settings, seeds, and each role's model, hashing local
/// model files (reusing the hashes `previous` holds for files unchanged since). `seed` is the
/// `[sim] seed` as given when the engine's was derived from it (a sweep's persona).
pub fn describe(cfg: &Config, seed: Option<u64>, previous: Option<&RunInfo>) -> Result<RunInfo> {
    let mut tables = IndexMap::new();
    let mut roles = IndexMap::new();
    for role in Role::ALL {
        let rc = cfg.role(*role);
        // The local file whose bytes decide the answers: the role's model, or the training base
        // of an assistant served by vLLM (its adapters are trained on that file).
        let local = match (rc.provider, &rc.train_base) {
            (ProviderKind::Local, _) => Some(rc.model.as_str()),
            (ProviderKind::OpenAi, Some(base)) if *role == Role::Assistant => Some(base.as_str()),
            _ => None,
        };
        let file = match local {
            Some(spec) => {
                let before = previous.and_then(|p| p.roles.get(role.as_str())).and_then(|r| r.file.as_ref());
                Some(ModelFile::of(&local_model_file(spec, *role)?, before)?)
            }
            None => None,
        };
        roles.insert(
            role.as_str().to_string(),
            RoleRun { provider: rc.provider.to_string(), model: rc.model.clone(), file },
        );
        tables.insert(role.as_str().to_string(), serde_json::to_value(&rc)?);
    }
    let now = run::now();
    Ok(RunInfo {
        program: program(),
        created: Some(now.clone()),
        updated: now,
        seed: seed.unwrap_or(cfg.sim.seed),
        engine_seed: cfg.sim.seed,
        config: ResolvedConfig { sim: serde_json::to_value(&cfg.sim)?, roles: tables },
        roles,
        changes: Vec::new(),
    })
}

/// The file whose bytes decide a local role's answers: the GGUF of a chat role; for the
/// embedding role its zip, or the weights in its folder.
/// This binary: its package version and the git commit `build.rs` embedded ("unknown" for a build
/// outside a git checkout, e.g. Docker).
pub fn program() -> Program {
    Program {
        name: env!("CARGO_PKG_NAME").into(),
        version: env!("CARGO_PKG_VERSION").into(),
        commit: option_env!("PROPERSIM_GIT_COMMIT").unwrap_or("unknown").into(),
    }
}

fn local_model_file(spec: &str, role: Role) -> Result<std::path::PathBuf> {
    if role != Role::Embedding {
        return crate::llm::local::resolve_gguf(spec, role);
    }
    let from = crate::llm::local::resolve_embedder(spec)?;
    Ok(if from.is_dir() { from.join("model.safetensors") } else { from })
}

/// A resume's provenance, decided before anything is written.
pub struct Resume {
    /// What the sim ran with before, if it has a run.json.
    old: Option<RunInfo>,
    new: RunInfo,
    changed: IndexMap<String, (Value, Value)>,
}

/// Check resuming the sim at `sim_root` with `cfg`: an error naming each changed setting
/// (`key: old → new`) unless `allow_changes`. Writes nothing.
pub fn check_resume(cfg: &Config, seed: Option<u64>, sim_root: &Path, allow_changes: bool) -> Result<Resume> {
    let old = RunInfo::read(sim_root)?;
    let new = describe(cfg, seed, old.as_ref())?;
    let changed = old.as_ref().map(|o| o.changes_to(&new)).unwrap_or_default();
    if !changed.is_empty() && !allow_changes {
        bail!("{}", refusal(&cfg.sim.sim, &changed));
    }
    Ok(Resume { old, new, changed })
}

/// Why a resume with changed settings is refused, and what to do.
pub fn refusal(sim: &str, changed: &IndexMap<String, (Value, Value)>) -> String {
    format!(
        "`{sim}` ran with other settings; resuming it with these would change:\n{}\nNothing was written. \
         Resume with the settings it ran with, or pass --allow-changes to continue with the new ones \
         (the change is recorded in the sim's {}).",
        run::describe_changes(changed),
        run::FILE
    )
}

impl Resume {
    /// The settings this resume changes (`key: [old, new]`); empty when none.
    pub fn changed(self) -> IndexMap<String, (Value, Value)> {
        self.changed
    }

    /// Record the resume once the sim is open at `next_step`: run.json gets the new settings and,
    /// after an allowed change, an entry in `changes` and (when the change alters it) the
    /// original's `train_mode` label in meta.json. A sim without run.json gets one.
    pub fn record(self, cfg: &Config, sim: &SimDir, meta: &mut crate::storage::Meta, next_step: u64) -> Result<()> {
        let Resume { old, mut new, changed } = self;
        // The seed folder it was forked from: `fork` on a resume is whatever the command line
        // left as the default.
        if let Value::Object(n) = &mut new.config.sim {
            n.insert("fork".into(), Value::from(meta.fork_sim_code.clone()));
        }
        match old {
            None => {
                eprintln!(
                    "note: `{}` has no {} (it was made before runs recorded their provenance); writing one from \
                     this run's settings.",
                    cfg.sim.sim,
                    run::FILE
                );
                new.created = None;
            }
            Some(old) => {
                new.created = old.created;
                new.changes = old.changes;
                if !changed.is_empty() {
                    eprintln!(
                        "Continuing `{}` with changed settings:\n{}",
                        cfg.sim.sim,
                        run::describe_changes(&changed)
                    );
                    new.changes.push(Change { at_step: next_step, time: new.updated.clone(), changed });
                    let label = Value::from(cfg.sim.train_mode_label());
                    if meta.extra.get("train_mode") != Some(&label) {
                        new.write(&sim.root)?;
                        meta.extra.insert("train_mode".into(), label);
                        return sim.write_meta(meta);
                    }
                }
            }
        }
        new.write(&sim.root)
    }
}
