//! The original `storage/<sim>/` tree and the temp_storage handshake.

pub mod atomic;
pub mod compress;
pub mod experiment;
pub mod movement;
pub mod pyjson;
pub mod run;

pub use atomic::{
    append_bytes, append_jsonl, count_lines, jsonl_bytes, open_append, read_jsonl, sweep_temp_files, sync_all_at_once,
    sync_dir, sync_file, truncate_lines, write_atomic, write_json_py,
};
pub mod sim;
pub mod sweep;

pub use sim::{EnvTile, Environment, Meta, SimDir};

/// Names of the folders under `root` that are valid sim-style names and hold `file`, sorted
/// (none when `root` does not exist): how sweeps and experiments are listed.
pub fn folders_holding(root: &std::path::Path, file: &str) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", root.display())),
    };
    for e in entries {
        let e = e?;
        if let Some(n) = e.file_name().to_str() {
            if sim::valid_sim_code(n) && e.path().join(file).is_file() {
                out.push(n.to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A JSON file parsed, or `None` when it does not exist.
pub(crate) fn read_json_if_present<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
) -> anyhow::Result<Option<T>> {
    use anyhow::Context;
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(serde_json::from_str(&t).with_context(|| format!("parsing {}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
