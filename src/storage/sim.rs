//! One simulation folder, `storage/<sim>/`, in the original layout:
//! `reverie/meta.json`, `environment/<n>.json`, `movement/<n>.json`,
//! `personas/<name>/bootstrap_memory/...`; plus our own files beside them (records, preference
//! pairs, ledger, engine checkpoint), which the original ignores.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{write_atomic, write_json_py};

/// `reverie/meta.json`. Unknown keys are kept as they were.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub fork_sim_code: String,
    pub start_date: String,
    pub curr_time: String,
    pub sec_per_step: u64,
    pub maze_name: String,
    pub persona_names: Vec<String>,
    pub step: u64,
    #[serde(flatten)]
    pub extra: IndexMap<String, Value>,
}

/// A persona's tile in `environment/<n>.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnvTile {
    pub maze: String,
    pub x: i64,
    pub y: i64,
}

/// `environment/<n>.json`: persona name → tile, in file order.
pub type Environment = IndexMap<String, EnvTile>;

/// Is `name` a safe single path component for a sim code (no traversal, no separators)?
pub fn valid_sim_code(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && !name.starts_with('.')
}

/// Handle on `storage/<sim>/`.
#[derive(Debug, Clone)]
pub struct SimDir {
    pub root: PathBuf,
    pub code: String,
}

impl SimDir {
    /// Open an existing sim.
    pub fn open(storage: &Path, sim: &str) -> Result<SimDir> {
        if !valid_sim_code(sim) {
            bail!("invalid sim code `{sim}`: use letters, digits, `_`, `-` and `.`");
        }
        let root = storage.join(sim);
        if !root.join("reverie/meta.json").is_file() {
            bail!("no simulation `{sim}` in {} (missing reverie/meta.json)", storage.display());
        }
        Ok(SimDir { root, code: sim.to_string() })
    }

    /// Find a seed folder: first under `storage`, then under each extra seeds folder.
    pub fn find_seed(storage: &Path, seeds: &[PathBuf], seed: &str) -> Result<PathBuf> {
        if !valid_sim_code(seed) {
            bail!("invalid seed name `{seed}`");
        }
        let mut looked = Vec::new();
        for dir in std::iter::once(storage.to_path_buf()).chain(seeds.iter().cloned()) {
            let p = dir.join(seed);
            if p.join("reverie/meta.json").is_file() {
                return Ok(p);
            }
            looked.push(dir.display().to_string());
        }
        bail!(
            "persona seed `{seed}` not found (looked in: {}). Run `propersim assets fetch`, or pass --seeds DIR / PROPERSIM_SEEDS",
            looked.join(", ")
        )
    }

    /// Fork `seed` into `storage/<sim>` (copy, then set `fork_sim_code`). The copy is made in a
    /// temporary folder and renamed, so a crash never leaves a half-copied sim. An existing sim is
    /// replaced only with `force`.
    pub fn fork(storage: &Path, seeds: &[PathBuf], seed: &str, sim: &str, force: bool) -> Result<SimDir> {
        if !valid_sim_code(sim) {
            bail!("invalid sim code `{sim}`: use letters, digits, `_`, `-` and `.`");
        }
        let src = Self::find_seed(storage, seeds, seed)?;
        let dst = storage.join(sim);
        if dst.exists() && !force {
            bail!(
                "simulation `{sim}` already exists in {}: pass --resume to continue it or --force to replace it",
                storage.display()
            );
        }
        fs::create_dir_all(storage).with_context(|| format!("creating {}", storage.display()))?;
        let tmp = tempfile::Builder::new().prefix(".fork-").tempdir_in(storage)?;
        copy_tree(&src, tmp.path())?;
        let tmp_path = tmp.keep();
        let mut sd = SimDir { root: tmp_path.clone(), code: sim.to_string() };
        let mut meta = sd.meta()?;
        meta.fork_sim_code = seed.to_string();
        sd.write_meta(&meta)?;
        if dst.exists() {
            let old = storage.join(format!(".replaced-{sim}-{}", std::process::id()));
            fs::rename(&dst, &old)?;
            fs::remove_dir_all(&old).ok();
        }
        fs::rename(&tmp_path, &dst).with_context(|| format!("moving the fork into {}", dst.display()))?;
        sd.root = dst;
        Ok(sd)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn meta(&self) -> Result<Meta> {
        let p = self.path("reverie/meta.json");
        let text = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
    }

    pub fn write_meta(&self, meta: &Meta) -> Result<()> {
        write_json_py(&self.path("reverie/meta.json"), meta)
    }

    pub fn env_path(&self, step: u64) -> PathBuf {
        self.root.join(format!("environment/{step}.json"))
    }
    pub fn movement_path(&self, step: u64) -> PathBuf {
        self.root.join(format!("movement/{step}.json"))
    }

    /// Read `environment/<step>.json`; `Ok(None)` if absent.
    pub fn read_env(&self, step: u64) -> Result<Option<Environment>> {
        read_json_opt(&self.env_path(step))
    }

    pub fn write_env(&self, step: u64, env: &Environment) -> Result<()> {
        write_json_py(&self.env_path(step), env)
    }

    pub fn read_movement(&self, step: u64) -> Result<Option<Value>> {
        read_json_opt(&self.movement_path(step))
    }

    pub fn write_movement(&self, step: u64, movement: &Value) -> Result<()> {
        write_json_py(&self.movement_path(step), movement)
    }

    /// Numbers of the `.json` files in a subfolder, sorted.
    pub fn steps_in(&self, sub: &str) -> Result<Vec<u64>> {
        let dir = self.root.join(sub);
        let mut out = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        for e in rd {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name.strip_suffix(".json").and_then(|s| s.parse::<u64>().ok()) {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Folder of a persona's saved state.
    pub fn bootstrap(&self, persona: &str) -> PathBuf {
        self.root.join("personas").join(persona).join("bootstrap_memory")
    }
}

fn read_json_opt<T: serde::de::DeserializeOwned>(p: &Path) -> Result<Option<T>> {
    match fs::read_to_string(p) {
        Ok(t) => Ok(Some(serde_json::from_str(&t).with_context(|| format!("parsing {}", p.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Recursive copy of a folder's files (no symlinks followed outside it).
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    fs::create_dir_all(dst)?;
    for e in fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let e = e?;
        let ty = e.file_type()?;
        let to = dst.join(e.file_name());
        if ty.is_dir() {
            copy_tree(&e.path(), &to)?;
        } else if ty.is_file() {
            fs::copy(e.path(), &to).with_context(|| format!("copying {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// The temp_storage handshake the original frontend reads: `curr_sim_code.json` and
/// `curr_step.json`, both in Python indent=2 format.
pub fn write_handshake(temp_storage: &Path, sim: &str, step: u64) -> Result<()> {
    let mut code = IndexMap::new();
    code.insert("sim_code", Value::from(sim));
    write_json_py(&temp_storage.join("curr_sim_code.json"), &code)?;
    let mut st = IndexMap::new();
    st.insert("step", Value::from(step));
    write_json_py(&temp_storage.join("curr_step.json"), &st)
}

/// Write raw bytes atomically under the sim (for our own files).
pub fn write_bytes(sd: &SimDir, rel: &str, bytes: &[u8]) -> Result<()> {
    write_atomic(&sd.path(rel), bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_codes_are_validated() {
        for bad in ["", "..", "../x", "a/b", ".hidden", "a\\b", "x\0"] {
            assert!(!valid_sim_code(bad), "{bad:?}");
        }
        assert!(valid_sim_code("base_the_ville_persona_1"));
    }
}
