//! `reverie/run.json`: what produced a sim. The original has no such file (its `meta.json` keeps
//! the original's contract and only its `train_mode` label); ours says which program and commit
//! ran, the configuration as resolved (after `--config`, the environment, `--set` and
//! `--provider`), the seeds, each role's provider and model (with the SHA-256 of a local model
//! file), and every change of settings a resume was allowed to make (`--allow-changes`).
//!
//! This module reads and writes the file and compares two of them; `sim::provenance` builds one
//! from a configuration. Everything that reads run.json goes through [`RunInfo::read`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{RoleConfig, SimSettings};

/// Where the file lives in a sim folder.
pub const FILE: &str = "reverie/run.json";

/// The roles that answer in words: the ones the scripted-brain notice names.
pub const CHAT_ROLES: [&str; 4] = ["user", "evaluator", "assistant", "summarizer"];

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub program: Program,
    /// When the sim was forked (RFC 3339, UTC); `None` for a sim forked before run.json existed.
    pub created: Option<String>,
    /// When this file was last written: the fork, or the latest resume.
    pub updated: String,
    /// The `[sim] seed` as given. A sweep derives each persona's engine seed from it.
    pub seed: u64,
    /// The seed the engine and the LLM client use (`[sim] seed` of this sim).
    pub engine_seed: u64,
    pub config: ResolvedConfig,
    /// Per role (`user`, `evaluator`, `assistant`, `summarizer`, `embedding`): what answered.
    pub roles: IndexMap<String, RoleRun>,
    /// Changes of settings made by resumes with `--allow-changes`, oldest first.
    #[serde(default)]
    pub changes: Vec<Change>,
}

/// The program that wrote the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Program {
    pub name: String,
    /// `CARGO_PKG_VERSION`.
    pub version: String,
    /// The git commit built from, or "unknown" (a build outside a git checkout, e.g. Docker).
    pub commit: String,
}

/// The configuration as the run used it. Kept as JSON so a file written by another version
/// (with settings added or removed) still reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedConfig {
    /// Every `[sim]` setting.
    pub sim: Value,
    /// Every role's table with the role's defaults filled in (`Config::role`).
    pub roles: IndexMap<String, Value>,
}

/// What answered for one role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleRun {
    /// `local`, `openai`, `gemini` or `scripted`.
    pub provider: String,
    /// The `model` setting: an API's model name, a local file, folder or Hugging Face repo id.
    pub model: String,
    /// For a local model: the file loaded and its hash; for an assistant on vLLM trained
    /// between days, the training base (`train_base`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<ModelFile>,
}

/// A local model file and its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    pub path: String,
    pub bytes: u64,
    /// Modification time, nanoseconds since the Unix epoch: with the path and size, the key
    /// under which the hash is reused instead of read again.
    pub mtime_ns: u64,
    pub sha256: String,
}

/// One resume's change of settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The first step run with the new settings.
    pub at_step: u64,
    /// When the resume started (RFC 3339, UTC).
    pub time: String,
    /// `key: [old, new]`, keys as [`RunInfo::compared`] names them.
    pub changed: IndexMap<String, (Value, Value)>,
}

impl RunInfo {
    /// The run.json of the sim at `sim_root`, or `None` when it has none (a sim forked before
    /// the file existed, or the original's).
    pub fn read(sim_root: &Path) -> Result<Option<RunInfo>> {
        super::read_json_if_present(&sim_root.join(FILE))
    }

    /// Write it atomically into the sim at `sim_root`.
    pub fn write(&self, sim_root: &Path) -> Result<()> {
        super::write_json_py(&sim_root.join(FILE), self)
    }

    /// The roles among [`CHAT_ROLES`] that the scripted brain answered, now or before an
    /// allowed change: a run that used it for any part is not a model's run.
    pub fn scripted_roles(&self) -> Vec<String> {
        let was_scripted = |role: &str| {
            let key = format!("roles.{role}.provider");
            let scripted = Value::from("scripted");
            self.roles.get(role).is_some_and(|r| r.provider == "scripted")
                || self.changes.iter().any(|c| c.changed.get(&key).is_some_and(|(old, _)| *old == scripted))
        };
        CHAT_ROLES.iter().filter(|r| was_scripted(r)).map(|r| r.to_string()).collect()
    }

    /// The settings that decide what the sim computes, flat: `sim.<key>` for each `[sim]`
    /// setting but the operational ones ([`SimSettings::OPERATIONAL`]), `roles.<role>.<key>` for
    /// each role setting but the operational ones ([`RoleConfig::OPERATIONAL`]), and
    /// `roles.<role>.sha256` for a local model file.
    pub fn compared(&self) -> IndexMap<String, Value> {
        let mut out = IndexMap::new();
        if let Value::Object(m) = &self.config.sim {
            for (k, v) in m {
                if !SimSettings::OPERATIONAL.contains(&k.as_str()) {
                    out.insert(format!("sim.{k}"), v.clone());
                }
            }
        }
        for (role, table) in &self.config.roles {
            if let Value::Object(m) = table {
                for (k, v) in m {
                    if !RoleConfig::OPERATIONAL.contains(&k.as_str()) {
                        out.insert(format!("roles.{role}.{k}"), v.clone());
                    }
                }
            }
        }
        for (role, r) in &self.roles {
            if let Some(f) = &r.file {
                out.insert(format!("roles.{role}.sha256"), Value::from(f.sha256.clone()));
            }
        }
        out
    }

    /// What differs between the settings `self` records and `new`'s: `key: [old, new]`, a side
    /// that lacks the key showing `null`. Empty when resuming with `new` changes nothing.
    pub fn changes_to(&self, new: &RunInfo) -> IndexMap<String, (Value, Value)> {
        let (old, new) = (self.compared(), new.compared());
        let mut seen = std::collections::HashSet::new();
        old.keys()
            .chain(new.keys())
            .filter(|k| seen.insert(*k))
            .filter_map(|k| {
                let (o, n) = (old.get(k).cloned().unwrap_or(Value::Null), new.get(k).cloned().unwrap_or(Value::Null));
                (o != n).then(|| (k.clone(), (o, n)))
            })
            .collect()
    }
}

/// `key: old → new`, one per line, for messages.
pub fn describe_changes(changed: &IndexMap<String, (Value, Value)>) -> String {
    changed.iter().map(|(k, (o, n))| format!("  {k}: {o} → {n}")).collect::<Vec<_>>().join("\n")
}

/// The current time as run.json writes it.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A file as it was hashed: path, size, mtime.
type FileKey = (PathBuf, u64, u64);

/// Hashes made by this process, by (path, size, mtime): a sweep's sims and a model named by
/// several roles hash the file once.
fn hashed() -> &'static Mutex<HashMap<FileKey, String>> {
    static HASHED: OnceLock<Mutex<HashMap<FileKey, String>>> = OnceLock::new();
    HASHED.get_or_init(Default::default)
}

impl ModelFile {
    /// Describe `path` with its SHA-256. The hash of `previous` (the sim's run.json of an
    /// earlier run) or of this process is reused when path, size and modification time match:
    /// model files are hundreds of MB, and a resume should not read them again.
    pub fn of(path: &Path, previous: Option<&ModelFile>) -> Result<ModelFile> {
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let md = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        let mtime_ns = md
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let (bytes, shown) = (md.len(), path.display().to_string());
        if let Some(p) = previous.filter(|p| p.path == shown && p.bytes == bytes && p.mtime_ns == mtime_ns) {
            return Ok(p.clone());
        }
        let key = (path.clone(), bytes, mtime_ns);
        let known = hashed().lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        let sha256 = match known {
            Some(h) => h,
            None => {
                let h = sha256_file(&path)?;
                hashed().lock().unwrap_or_else(|e| e.into_inner()).insert(key, h.clone());
                h
            }
        };
        Ok(ModelFile { path: shown, bytes, mtime_ns, sha256 })
    }
}

/// The SHA-256 of a file, hex, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(sim: Value, assistant: Value, provider: &str) -> RunInfo {
        RunInfo {
            program: Program { name: "propersim".into(), version: "0.1.0".into(), commit: "unknown".into() },
            created: Some(now()),
            updated: now(),
            seed: 1,
            engine_seed: 1,
            config: ResolvedConfig { sim, roles: IndexMap::from([("assistant".to_string(), assistant)]) },
            roles: IndexMap::from([(
                "assistant".to_string(),
                RoleRun { provider: provider.into(), model: "m".into(), file: None },
            )]),
            changes: Vec::new(),
        }
    }

    #[test]
    fn operational_settings_are_no_change_and_others_are_named() {
        let a = info(
            json!({"train_method": "dpo", "durable": true, "budget_usd": 1.0}),
            json!({"provider": "local", "temperature": 0.9, "concurrency": 2}),
            "local",
        );
        let b = info(
            json!({"train_method": "dpo", "durable": false, "budget_usd": 5.0}),
            json!({"provider": "local", "temperature": 0.9, "concurrency": 8}),
            "local",
        );
        assert!(a.changes_to(&b).is_empty(), "{:?}", a.changes_to(&b));
        let c = info(
            json!({"train_method": "kto", "durable": true}),
            json!({"provider": "local", "temperature": 0.3, "top_k": 5}),
            "local",
        );
        let d = a.changes_to(&c);
        assert_eq!(d["sim.train_method"], (json!("dpo"), json!("kto")));
        assert_eq!(d["roles.assistant.temperature"], (json!(0.9), json!(0.3)));
        assert_eq!(d["roles.assistant.top_k"], (Value::Null, json!(5)));
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(describe_changes(&d).contains("sim.train_method: \"dpo\" → \"kto\""));
    }

    #[test]
    fn a_changed_model_file_is_a_change_and_its_hash_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, b"abc").unwrap();
        let f = ModelFile::of(&p, None).unwrap();
        assert_eq!(f.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        // The same path, size and mtime: the recorded hash stands (here a wrong one, to see it).
        let fake = ModelFile { sha256: "recorded".into(), ..f.clone() };
        assert_eq!(ModelFile::of(&p, Some(&fake)).unwrap().sha256, "recorded");
        let mut a = info(json!({}), json!({"provider": "local"}), "local");
        let mut b = a.clone();
        a.roles["assistant"].file = Some(f);
        std::fs::write(&p, b"abcd").unwrap();
        b.roles["assistant"].file = Some(ModelFile::of(&p, a.roles["assistant"].file.as_ref()).unwrap());
        assert!(a.changes_to(&b).contains_key("roles.assistant.sha256"));
    }

    #[test]
    fn scripted_roles_count_a_change_away_from_the_scripted_brain() {
        let mut a = info(json!({}), json!({"provider": "scripted"}), "scripted");
        assert_eq!(a.scripted_roles(), ["assistant"]);
        a.roles["assistant"].provider = "local".into();
        assert!(a.scripted_roles().is_empty());
        a.changes.push(Change {
            at_step: 3,
            time: now(),
            changed: IndexMap::from([("roles.assistant.provider".to_string(), (json!("scripted"), json!("local")))]),
        });
        assert_eq!(a.scripted_roles(), ["assistant"]);
        let dir = tempfile::tempdir().unwrap();
        assert!(RunInfo::read(dir.path()).unwrap().is_none());
        a.write(dir.path()).unwrap();
        assert_eq!(RunInfo::read(dir.path()).unwrap(), Some(a));
    }
}
