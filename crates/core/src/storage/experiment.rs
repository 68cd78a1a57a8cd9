//! An experiment's place in `storage/`: one ordinary sim folder per arm, `<NAME>_<arm>/` (so
//! `report`, the replay pages and every other single-sim tool work on them), and
//! `experiments/<NAME>/` for what belongs to the experiment as a whole: `experiment.json` (what it
//! was started with) and the curves (`curve.json`, `curve.csv`, `curve.svg`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::sim::valid_sim_code;

/// The folder under `storage/` that holds every experiment's own folder.
pub const FOLDER: &str = "experiments";

/// The file describing an experiment, in `experiments/<NAME>/`.
pub const MANIFEST: &str = "experiment.json";

/// Sim code of arm `arm` (a training method: `dpo`, `kto`, `none`) in experiment `name`.
pub fn sim_code(name: &str, arm: &str) -> String {
    format!("{name}_{arm}")
}

/// What an experiment was started with. `settings` are the `[sim]` settings the arms share (all
/// but the per-arm `sim` and `train_method`), so a resume can be checked against them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    /// The seed every arm was forked from.
    pub fork: String,
    /// Arms in the order given: `dpo`, `kto`, `none`.
    pub arms: Vec<String>,
    /// Days each arm runs to (the latest command's `--days`).
    pub days: u64,
    /// The engine seed all arms share.
    pub seed: u64,
    pub settings: Value,
}

/// `storage/experiments/<name>/`.
pub fn experiment_dir(storage: &Path, name: &str) -> Result<PathBuf> {
    if !valid_sim_code(name) {
        bail!("invalid experiment name `{name}`: use letters, digits, `_`, `-` and `.`");
    }
    Ok(storage.join(FOLDER).join(name))
}

/// The manifest of experiment `name`, if it has one.
pub fn read_manifest(storage: &Path, name: &str) -> Result<Option<Manifest>> {
    super::read_json_if_present(&experiment_dir(storage, name)?.join(MANIFEST))
}

/// Write the manifest atomically.
pub fn write_manifest(storage: &Path, m: &Manifest) -> Result<()> {
    let dir = experiment_dir(storage, &m.name)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    super::write_json_py(&dir.join(MANIFEST), m)
}

/// Names of the experiments in `storage` (folders of `experiments/` with a manifest), sorted.
pub fn list(storage: &Path) -> Result<Vec<String>> {
    super::folders_holding(&storage.join(FOLDER), MANIFEST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_storage() {
        let s = Path::new("/tmp/storage");
        assert_eq!(experiment_dir(s, "e1").unwrap(), Path::new("/tmp/storage/experiments/e1"));
        for bad in ["..", "a/b", "", "a\\b"] {
            assert!(experiment_dir(s, bad).is_err(), "{bad:?}");
        }
        assert_eq!(sim_code("e1", "dpo"), "e1_dpo");
    }

    #[test]
    fn manifests_round_trip_and_list() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_manifest(dir.path(), "x").unwrap().is_none());
        let m = Manifest {
            name: "x".into(),
            fork: "base_the_ville_persona_1".into(),
            arms: vec!["dpo".into(), "none".into()],
            days: 3,
            seed: 7,
            settings: serde_json::json!({"ranking": true}),
        };
        write_manifest(dir.path(), &m).unwrap();
        assert_eq!(read_manifest(dir.path(), "x").unwrap(), Some(m));
        std::fs::create_dir_all(dir.path().join("experiments/not_one")).unwrap();
        assert_eq!(list(dir.path()).unwrap(), ["x"]);
    }
}
