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

use super::movement::Movement;
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

impl Meta {
    /// The assistant's name: see [`assistant_persona`].
    pub fn assistant_persona(&self) -> Option<&str> {
        assistant_persona(&self.persona_names)
    }
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

/// The longest sim code, in characters (all ASCII).
pub const MAX_SIM_CODE: usize = 128;

/// The one rule for sim codes, checked wherever a name becomes `storage/<sim>/` (forking, the
/// report, compression, the web pages): 1–128 ASCII letters, digits, `_`, `-` and `.`, not
/// starting with `.`. So a code is one plain folder name that can neither climb out of storage
/// (`..`) nor hide (`.x`), and every name the CLI makes (`--sim`, a sweep's `<NAME>_p<k>`, an
/// experiment's `<NAME>_<arm>`, the seeds `base_the_ville_persona_<k>`) passes. The error is the
/// message to show, naming the rule.
pub fn check_sim_code(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SIM_CODE
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        return Ok(());
    }
    Err(format!(
        "invalid simulation name {name:?}: a sim code is 1-{MAX_SIM_CODE} ASCII letters, digits, '_', '-' or '.', \
         not starting with '.'"
    ))
}

/// Whether `name` passes [`check_sim_code`] (seeds, sweeps and experiments are named by the same
/// rule).
pub fn valid_sim_code(name: &str) -> bool {
    check_sim_code(name).is_ok()
}

/// The assistant among a sim's personas, listed as in `meta.json`'s `persona_names` (the user
/// first): the second; for a list of one, that one (the last). `None` for an empty list. The
/// original's meta lists `["<user>", "Eddy Lin"]`.
pub fn assistant_persona(names: &[String]) -> Option<&str> {
    names.get(1).or(names.last()).map(String::as_str)
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
        check_sim_code(sim).map_err(anyhow::Error::msg)?;
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
        for dir in seed_folders(storage, seeds) {
            let p = dir.join(seed);
            if p.join("reverie/meta.json").is_file() {
                return Ok(p);
            }
            looked.push(dir.display().to_string());
        }
        let available = Self::available_seeds(storage, seeds);
        if available.is_empty() {
            bail!(
                "persona seed `{seed}` not found (looked in: {}). Run `propersim assets fetch`, or pass --seeds DIR / PROPERSIM_SEEDS",
                looked.join(", ")
            )
        }
        const SHOWN: usize = 6;
        let more = match available.len().saturating_sub(SHOWN) {
            0 => String::new(),
            n => format!(", and {n} more"),
        };
        bail!(
            "persona seed `{seed}` does not exist (looked in: {}). Available: {}{more}",
            looked.join(", "),
            available.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join(", ")
        )
    }

    /// The names that `--fork` finds (folders holding `reverie/meta.json`) under `storage` and
    /// the extra seeds folders, the original's seeds (`base_*`) first, in natural order
    /// (`persona_2` before `persona_10`), without repeats.
    pub fn available_seeds(storage: &Path, seeds: &[PathBuf]) -> Vec<String> {
        let mut names: Vec<String> = seed_folders(storage, seeds)
            .filter_map(|d| fs::read_dir(d).ok())
            .flatten()
            .flatten()
            .filter(|e| e.path().join("reverie/meta.json").is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| valid_sim_code(n))
            .collect();
        names.sort_by_key(|n| natural_key(n));
        names.dedup();
        names
    }

    /// Fork `seed` into `storage/<sim>` (copy, then set `fork_sim_code`). See [`SimDir::fork_with`].
    pub fn fork(storage: &Path, seeds: &[PathBuf], seed: &str, sim: &str, force: bool) -> Result<SimDir> {
        Self::fork_with(storage, seeds, seed, sim, force, |_, _| Ok(()))
    }

    /// Fork `seed` into `storage/<sim>`: copy it into a temporary folder
    /// `storage/.fork-<sim>-<pid>-<random>`, set `fork_sim_code` and whatever `edit` adds to the
    /// meta or writes into the folder it is given (run.json), then rename the folder into place,
    /// so `storage/<sim>` appears complete or not at all. A fork killed half-way leaves only the temporary folder, which the next fork or
    /// resume removes ([`SimDir::sweep_stale_forks`]) and `--resume` redoes
    /// ([`SimDir::fork_interrupted`]). An existing sim is replaced only with `force`.
    pub fn fork_with(
        storage: &Path,
        seeds: &[PathBuf],
        seed: &str,
        sim: &str,
        force: bool,
        edit: impl FnOnce(&mut Meta, &Path) -> Result<()>,
    ) -> Result<SimDir> {
        check_sim_code(sim).map_err(anyhow::Error::msg)?;
        let src = Self::find_seed(storage, seeds, seed)?;
        let dst = storage.join(sim);
        if dst.exists() && !force {
            bail!(
                "simulation `{sim}` already exists in {}: pass --resume to continue it or --force to replace it",
                storage.display()
            );
        }
        fs::create_dir_all(storage).with_context(|| format!("creating {}", storage.display()))?;
        Self::sweep_stale_forks(storage)?;
        // Removed again if anything below fails; kept (renamed) only once complete.
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{FORK_PREFIX}{sim}-{}-", std::process::id()))
            .permissions(super::atomic::dir_permissions())
            .tempdir_in(storage)
            .with_context(|| format!("creating a temporary folder in {}", storage.display()))?;
        // Say which machine forks: over shared storage (a sweep's shards), another machine's
        // process ids mean nothing here, and its fork in progress must not look abandoned.
        let host_file = tmp.path().join(FORK_HOST_FILE);
        fs::write(&host_file, this_host()).with_context(|| format!("writing {}", host_file.display()))?;
        copy_tree(&src, tmp.path())?;
        let mut sd = SimDir { root: tmp.path().to_path_buf(), code: sim.to_string() };
        let mut meta = sd.meta()?;
        meta.fork_sim_code = seed.to_string();
        edit(&mut meta, &sd.root)?;
        sd.write_meta(&meta)?;
        fs::remove_file(&host_file).with_context(|| format!("removing {}", host_file.display()))?;
        if dst.exists() {
            let old = storage.join(format!("{REPLACED_PREFIX}{sim}-{}", std::process::id()));
            fs::rename(&dst, &old)?;
            fs::remove_dir_all(&old).ok();
        }
        let tmp_path = tmp.keep();
        fs::rename(&tmp_path, &dst).with_context(|| format!("moving the fork into {}", dst.display()))?;
        sd.root = dst;
        Ok(sd)
    }

    /// Whether a fork of `sim` was started and never finished (its process is gone and its
    /// temporary folder remains) while `storage/<sim>` does not exist: a resume can redo it.
    pub fn fork_interrupted(storage: &Path, sim: &str) -> bool {
        !storage.join(sim).exists()
            && leftovers(storage).iter().any(|l| l.prefix == FORK_PREFIX && l.sim == sim && !l.owner_alive())
    }

    /// Remove the temporary folders of forks and replacements whose process is gone (killed
    /// half-way). Folders of running processes are left alone.
    pub fn sweep_stale_forks(storage: &Path) -> Result<()> {
        for l in leftovers(storage) {
            if !l.owner_alive() {
                fs::remove_dir_all(&l.path).with_context(|| format!("removing {}", l.path.display()))?;
            }
        }
        Ok(())
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

    pub fn read_movement(&self, step: u64) -> Result<Option<Movement>> {
        read_json_opt(&self.movement_path(step))
    }

    pub fn write_movement(&self, step: u64, movement: &Movement) -> Result<()> {
        write_json_py(&self.movement_path(step), movement)
    }

    /// The steps of a subfolder's `<n>.json` files (`movement`, `environment`): see
    /// [`step_files`].
    pub fn steps_in(&self, sub: &str) -> Result<Vec<u64>> {
        step_files(&self.root.join(sub))
    }

    /// Folder of a persona's saved state.
    pub fn bootstrap(&self, persona: &str) -> PathBuf {
        self.root.join("personas").join(persona).join("bootstrap_memory")
    }
}

/// The steps `n` of the files `<dir>/<n>.json`, ascending: the one listing of step files.
/// Only plain decimal names count (temporary files of atomic writes and anything else are
/// ignored); a missing folder has none.
pub fn step_files(dir: &Path) -> Result<Vec<u64>> {
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in entries {
        let name = e.with_context(|| format!("listing {}", dir.display()))?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json")) else { continue };
        if !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = stem.parse() {
                out.push(n);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Where seeds are looked up: `storage` first, then each extra seeds folder.
fn seed_folders<'a>(storage: &'a Path, seeds: &'a [PathBuf]) -> impl Iterator<Item = PathBuf> + 'a {
    std::iter::once(storage.to_path_buf()).chain(seeds.iter().cloned())
}

/// Sort key: the original's seeds (`base_*`) first, then text with its runs of digits compared
/// as numbers.
fn natural_key(name: &str) -> (bool, Vec<(String, u64)>) {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut digits = String::new();
    for c in name.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            if !digits.is_empty() {
                parts.push((std::mem::take(&mut text), digits.parse().unwrap_or(u64::MAX)));
                digits.clear();
            }
            text.push(c);
        }
    }
    parts.push((text, digits.parse().unwrap_or(0)));
    (!name.starts_with("base_"), parts)
}

/// Folder name prefixes of an unfinished fork (`.fork-<sim>-<pid>-<random>`) and of a sim being
/// replaced by `--force` (`.replaced-<sim>-<pid>`).
const FORK_PREFIX: &str = ".fork-";
const REPLACED_PREFIX: &str = ".replaced-";

/// A temporary folder of [`SimDir::fork_with`] found in `storage/`.
struct Leftover {
    path: PathBuf,
    prefix: &'static str,
    sim: String,
    /// The process that made it; `None` for names of earlier versions (`.fork-<random>`).
    pid: Option<u32>,
}

/// A file in a fork's temporary folder holding the name of the machine making it (removed before
/// the folder is renamed into place).
const FORK_HOST_FILE: &str = ".propersim-fork-host";

/// This machine's name (empty where the system does not say).
fn this_host() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

impl Leftover {
    fn owner_alive(&self) -> bool {
        let host = fs::read_to_string(self.path.join(FORK_HOST_FILE)).map(|h| h.trim().to_string());
        let elsewhere = host.is_ok_and(|h| !h.is_empty() && h != this_host());
        match self.pid {
            Some(pid) if !elsewhere && pid == std::process::id() => true,
            Some(pid) if !elsewhere && Path::new("/proc/self").exists() => Path::new(&format!("/proc/{pid}")).exists(),
            // No way to ask (another machine's fork, or an old-style name): trust a folder
            // younger than an hour (a fork takes seconds).
            _ => fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age < std::time::Duration::from_secs(3600)),
        }
    }
}

fn leftovers(storage: &Path) -> Vec<Leftover> {
    let Ok(entries) = fs::read_dir(storage) else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((prefix, rest)) =
            [FORK_PREFIX, REPLACED_PREFIX].into_iter().find_map(|p| name.strip_prefix(p).map(|r| (p, r.to_string())))
        else {
            continue;
        };
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        // `<sim>-<pid>-<random>` or `<sim>-<pid>`; sim codes may themselves contain '-'.
        let rest = if prefix == FORK_PREFIX { rest.rsplit_once('-').map(|(a, _)| a.to_string()) } else { Some(rest) };
        let parsed =
            rest.as_deref().and_then(|r| r.rsplit_once('-')).and_then(|(sim, pid)| Some((sim, pid.parse().ok()?)));
        let (sim, pid) = match parsed {
            Some((sim, pid)) => (sim.to_string(), Some(pid)),
            None => (String::new(), None),
        };
        out.push(Leftover { path: e.path(), prefix, sim, pid });
    }
    out
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
        let long = "x".repeat(MAX_SIM_CODE + 1);
        for bad in ["", ".", "..", "../x", "a/b", ".hidden", "a\\b", "x\0", "a b", "\u{e9}t\u{e9}", &long] {
            let e = check_sim_code(bad).unwrap_err();
            assert!(e.starts_with("invalid simulation name") && e.contains("1-128"), "{bad:?}: {e}");
            assert!(!valid_sim_code(bad), "{bad:?}");
        }
        // What the CLI makes: --sim names, sweep and experiment sims, seeds.
        let longest = "x".repeat(MAX_SIM_CODE);
        for good in ["base_the_ville_persona_1", "a.b_c-1", "my-sweep_p32", "exp.2_none", "a..b", &longest] {
            assert_eq!(check_sim_code(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn the_assistant_is_the_second_persona() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(assistant_persona(&names(&["John Lin", "Eddy Lin"])), Some("Eddy Lin"));
        assert_eq!(assistant_persona(&names(&["Sam Moore", "Ada Park", "Third"])), Some("Ada Park"));
        assert_eq!(assistant_persona(&names(&["Solo"])), Some("Solo"));
        assert_eq!(assistant_persona(&[]), None);
    }

    #[test]
    fn interrupted_forks_are_found_and_swept() {
        let d = tempfile::tempdir().unwrap();
        let storage = d.path();
        // A dead process (pid beyond any real one), a live one (ours), and an old-style name.
        let dead = storage.join(".fork-my-sim-4194304999-abc123");
        let live = storage.join(format!(".fork-other-{}-xyz", std::process::id()));
        let legacy = storage.join(".fork-Qw3rty");
        for p in [&dead, &live, &legacy] {
            fs::create_dir_all(p.join("reverie")).unwrap();
        }
        assert!(SimDir::fork_interrupted(storage, "my-sim"));
        assert!(!SimDir::fork_interrupted(storage, "my"), "sim codes with '-' are parsed from the right");
        assert!(!SimDir::fork_interrupted(storage, "other"), "a fork in progress is not interrupted");
        SimDir::sweep_stale_forks(storage).unwrap();
        assert!(!dead.exists() && live.exists(), "only the dead process's folder goes");
        assert!(legacy.exists(), "a recent folder of unknown owner is kept");
        assert!(!SimDir::fork_interrupted(storage, "my-sim"));
        // Over shared storage: another machine's fork in progress (its pid is not ours to ask
        // about) is kept; this machine's dead one still goes.
        let remote = storage.join(".fork-shard-4194304999-r1");
        let local = storage.join(".fork-shard2-4194304999-r2");
        fs::create_dir_all(&remote).unwrap();
        fs::create_dir_all(&local).unwrap();
        fs::write(remote.join(FORK_HOST_FILE), format!("not-{}", this_host())).unwrap();
        fs::write(local.join(FORK_HOST_FILE), this_host()).unwrap();
        assert!(!SimDir::fork_interrupted(storage, "shard"));
        SimDir::sweep_stale_forks(storage).unwrap();
        assert!(remote.exists() && !local.exists());
    }

    #[test]
    fn a_finished_fork_holds_no_host_marker() {
        let d = tempfile::tempdir().unwrap();
        let seeds = d.path().join("seeds");
        fs::create_dir_all(seeds.join("seed/reverie")).unwrap();
        let meta = r#"{"fork_sim_code": "x", "start_date": "February 13, 2025", "curr_time": "February 13, 2025, 00:00:00", "sec_per_step": 150, "maze_name": "the_ville", "persona_names": ["A", "B"], "step": 0}"#;
        fs::write(seeds.join("seed/reverie/meta.json"), meta).unwrap();
        let storage = d.path().join("storage");
        let sd = SimDir::fork_with(&storage, &[seeds], "seed", "s", false, |_, _| Ok(())).unwrap();
        assert!(sd.path("reverie/meta.json").is_file());
        assert!(!sd.path(FORK_HOST_FILE).exists());
    }
}
