//! A sweep's place in `storage/`: its sims are ordinary sim folders, `<NAME>_p<k>/` for persona
//! `k` (forked from `base_the_ville_persona_<k>`), and `<NAME>/` holds what belongs to the sweep
//! as a whole: `sweep.json` (which personas and settings it was started with) and the aggregate
//! report (`metrics.json`, `metrics.csv`, `metrics.svg`).
//!
//! Everything here is plain files, so shards that run on different machines over shared storage
//! need no coordination: each writes its own sims, and all write the same `sweep.json`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::sim::valid_sim_code;

/// The file describing a sweep, in `storage/<NAME>/`.
pub const MANIFEST: &str = "sweep.json";

/// Seed folder of persona `k`.
pub fn persona_seed(k: u32) -> String {
    format!("base_the_ville_persona_{k}")
}

/// Sim code of persona `k` in sweep `name`.
pub fn sim_code(name: &str, k: u32) -> String {
    format!("{name}_p{k}")
}

/// What a sweep was started with. The settings are the `[sim]` settings minus the per-sim ones
/// (`fork`, `sim`), so a rerun (a resume, another shard) can be checked against them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub personas: Vec<u32>,
    /// Days each sim runs to (the latest command's `--days`).
    pub days: u64,
    /// The original's TRAIN_MODE label of the settings.
    pub train_mode: String,
    pub settings: Value,
}

/// `storage/<name>/`, the sweep's own folder.
pub fn sweep_dir(storage: &Path, name: &str) -> Result<PathBuf> {
    if !valid_sim_code(name) {
        bail!("invalid sweep name `{name}`: use letters, digits, `_`, `-` and `.`");
    }
    Ok(storage.join(name))
}

/// The manifest of sweep `name`, if it has one.
pub fn read_manifest(storage: &Path, name: &str) -> Result<Option<Manifest>> {
    super::read_json_if_present(&sweep_dir(storage, name)?.join(MANIFEST))
}

/// Write the manifest atomically (shards writing the same content at once is harmless).
pub fn write_manifest(storage: &Path, m: &Manifest) -> Result<()> {
    let dir = sweep_dir(storage, &m.name)?;
    if dir.join("reverie/meta.json").is_file() {
        bail!("`{}` in {} is a simulation, not a sweep: choose another --name", m.name, storage.display());
    }
    super::write_json_py(&dir.join(MANIFEST), m)
}

/// Persona numbers of the sims of sweep `name` present in `storage` (folders `<name>_p<k>`
/// holding a sim), ascending.
pub fn sims_present(storage: &Path, name: &str) -> Result<Vec<u32>> {
    let prefix = format!("{name}_p");
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(storage) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", storage.display())),
    };
    for e in entries {
        let e = e?;
        let file_name = e.file_name();
        let Some(k) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) || k.starts_with('0') {
            continue;
        }
        if let Ok(k) = k.parse::<u32>() {
            if e.path().join("reverie/meta.json").is_file() {
                out.push(k);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Names of the sweeps in `storage` (folders with a manifest), sorted.
pub fn list(storage: &Path) -> Result<Vec<String>> {
    super::folders_holding(storage, MANIFEST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sims_are_found_by_name_and_manifest_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let st = tmp.path();
        for n in ["s_p1", "s_p12", "s_p03", "s_px", "s2_p1", "s_p4"] {
            std::fs::create_dir_all(st.join(n).join("reverie")).unwrap();
            if n != "s_p4" {
                std::fs::write(st.join(n).join("reverie/meta.json"), "{}").unwrap();
            }
        }
        assert_eq!(sims_present(st, "s").unwrap(), [1, 12], "p03 is not a persona number, p4 holds no sim");
        let m = Manifest {
            name: "s".into(),
            personas: vec![1, 12],
            days: 2,
            train_mode: "x".into(),
            settings: serde_json::json!({"seed": 1}),
        };
        write_manifest(st, &m).unwrap();
        assert_eq!(read_manifest(st, "s").unwrap(), Some(m));
        assert_eq!(list(st).unwrap(), ["s"]);
        assert!(sweep_dir(st, "../x").is_err());
        let sim_named = Manifest { name: "s_p1".into(), ..read_manifest(st, "s").unwrap().unwrap() };
        assert!(write_manifest(st, &sim_named).unwrap_err().to_string().contains("is a simulation"));
    }
}
