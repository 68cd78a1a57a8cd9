//! Content-addressed cache of model replies and embeddings, kept per sim on disk.
//!
//! A reply's key is the SHA-256 of everything that determines it: provider kind, model,
//! messages, sampling, the role's adapter version and the attempt index (so the retry of a bad
//! reply is its own entry and a replay re-walks the same retry sequence). With `record` every
//! new reply is appended; with `replay` only the cache answers and a miss is an error, so a run
//! replays byte for byte with no provider reachable and no cost.
//!
//! Storage is two append-only JSONL files (`replies.jsonl`, `embeddings.jsonl`) loaded at start.
//! One appended line per entry means a crash can only tear the last line; it is dropped (and the
//! file rewritten atomically) when the cache is opened again.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Message, Sampling};
use crate::storage::{append_jsonl, write_atomic};

/// Version of the key recipe; bump it when what goes into a key changes.
const KEY_VERSION: u32 = 1;

/// `--llm-cache record|replay|off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Answer from the cache when possible, otherwise ask the provider and store the reply.
    Record,
    /// Answer only from the cache; a miss is a [`CacheMiss`] error.
    Replay,
    /// No cache.
    #[default]
    Off,
}

impl FromStr for CacheMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "record" => Ok(CacheMode::Record),
            "replay" => Ok(CacheMode::Replay),
            "off" | "none" => Ok(CacheMode::Off),
            other => Err(format!("`{other}` is not an LLM cache mode; choose one of: record, replay, off")),
        }
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CacheMode::Record => "record",
            CacheMode::Replay => "replay",
            CacheMode::Off => "off",
        })
    }
}

/// Strict replay found no entry. The message names the task so the user knows what changed.
#[derive(Debug, thiserror::Error)]
#[error("LLM cache replay miss: no recorded reply for task `{task}` (role {role}, attempt {attempt}, key {key}) in {dir}; the prompt, model, sampling or adapter differs from the recorded run. Record it with `--llm-cache record`, or run with `--llm-cache off`")]
pub struct CacheMiss {
    pub task: String,
    pub role: String,
    pub attempt: u32,
    pub key: String,
    pub dir: String,
}

/// A stored reply with the token counts the provider reported for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedReply {
    pub text: String,
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

#[derive(Serialize, Deserialize)]
struct ReplyLine {
    key: String,
    #[serde(flatten)]
    reply: CachedReply,
}

/// Vectors are stored as little-endian f32 bytes in hex: exact, unlike decimal text.
#[derive(Serialize, Deserialize)]
struct EmbedLine {
    key: String,
    f32le: String,
}

#[derive(Serialize)]
struct ReplyKeyParts<'a> {
    v: u32,
    provider: &'a str,
    model: &'a str,
    messages: &'a [Message],
    sampling: &'a Sampling,
    adapter_version: u64,
    attempt: u32,
    /// The answer schema of a constrained request (absent for free text, so older keys hold).
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<&'a serde_json::Value>,
}

/// The content address of one reply.
pub fn reply_key(
    provider: &str,
    model: &str,
    messages: &[Message],
    sampling: &Sampling,
    adapter_version: u64,
    attempt: u32,
    schema: Option<&serde_json::Value>,
) -> String {
    let parts = ReplyKeyParts { v: KEY_VERSION, provider, model, messages, sampling, adapter_version, attempt, schema };
    // Serializing plain structs and strings cannot fail; fall back to Debug text just in case.
    let bytes = serde_json::to_vec(&parts).unwrap_or_else(|_| {
        format!("{provider}{model}{messages:?}{sampling:?}{adapter_version}{attempt}").into_bytes()
    });
    hex::encode(Sha256::digest(&bytes))
}

/// The content address of one embedding.
pub fn embed_key(provider: &str, model: &str, text: &str) -> String {
    let bytes =
        serde_json::to_vec(&(KEY_VERSION, "embed", provider, model, text)).unwrap_or_else(|_| text.as_bytes().to_vec());
    hex::encode(Sha256::digest(&bytes))
}

/// The cache of one sim.
#[derive(Debug)]
pub struct LlmCache {
    dir: PathBuf,
    mode: CacheMode,
    replies: Mutex<HashMap<String, CachedReply>>,
    embeds: Mutex<HashMap<String, Vec<f32>>>,
    /// Serializes appends so concurrent tasks never interleave lines.
    write_lock: Mutex<()>,
}

impl LlmCache {
    /// Open (and load) the cache in `dir`. With `Off` nothing is read or written.
    pub fn open(dir: impl Into<PathBuf>, mode: CacheMode) -> Result<LlmCache> {
        let dir = dir.into();
        let (mut replies, mut embeds) = (HashMap::new(), HashMap::new());
        if mode != CacheMode::Off {
            for line in load_jsonl::<ReplyLine>(&dir.join("replies.jsonl"))? {
                replies.insert(line.key, line.reply);
            }
            for line in load_jsonl::<EmbedLine>(&dir.join("embeddings.jsonl"))? {
                if let Some(v) = decode_f32(&line.f32le) {
                    embeds.insert(line.key, v);
                }
            }
        }
        Ok(LlmCache { dir, mode, replies: Mutex::new(replies), embeds: Mutex::new(embeds), write_lock: Mutex::new(()) })
    }

    pub fn mode(&self) -> CacheMode {
        self.mode
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of stored replies and embeddings.
    pub fn len(&self) -> (usize, usize) {
        (lock(&self.replies).len(), lock(&self.embeds).len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }

    pub fn reply(&self, key: &str) -> Option<CachedReply> {
        if self.mode == CacheMode::Off {
            return None;
        }
        lock(&self.replies).get(key).cloned()
    }

    /// Store a reply (record mode only; replay never writes).
    pub fn put_reply(&self, key: &str, reply: &CachedReply) -> Result<()> {
        if self.mode != CacheMode::Record {
            return Ok(());
        }
        let _w = lock(&self.write_lock);
        append_jsonl(&self.dir.join("replies.jsonl"), &ReplyLine { key: key.to_string(), reply: reply.clone() })?;
        lock(&self.replies).insert(key.to_string(), reply.clone());
        Ok(())
    }

    pub fn embedding(&self, key: &str) -> Option<Vec<f32>> {
        if self.mode == CacheMode::Off {
            return None;
        }
        lock(&self.embeds).get(key).cloned()
    }

    pub fn put_embedding(&self, key: &str, v: &[f32]) -> Result<()> {
        if self.mode != CacheMode::Record {
            return Ok(());
        }
        let _w = lock(&self.write_lock);
        append_jsonl(&self.dir.join("embeddings.jsonl"), &EmbedLine { key: key.to_string(), f32le: encode_f32(v) })?;
        lock(&self.embeds).insert(key.to_string(), v.to_vec());
        Ok(())
    }
}

/// Lock a mutex, recovering the data if another thread panicked while holding it (a cache map
/// is still valid after any panic between its operations).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn encode_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    hex::encode(bytes)
}

fn decode_f32(s: &str) -> Option<Vec<f32>> {
    let bytes = hex::decode(s).ok()?;
    if bytes.len() % 4 != 0 {
        return None;
    }
    Some(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Read a JSONL file that this program appends to. A torn last line (a crash mid-append) is
/// dropped and the file rewritten atomically without it, so the next append starts on a fresh
/// line; any other unreadable line is skipped with a warning rather than failing the run.
pub(crate) fn load_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut complete = text.as_str();
    if !text.is_empty() && !text.ends_with('\n') {
        complete = text.rfind('\n').map(|i| &text[..=i]).unwrap_or("");
        tracing::warn!(file = %path.display(), "dropping a torn last line left by an interrupted run");
        write_atomic(path, complete.as_bytes())?;
    }
    let mut out = Vec::new();
    for (i, line) in complete.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match serde_json::from_str(line) {
            Ok(v) => out.push(v),
            Err(e) => tracing::warn!(file = %path.display(), line = i + 1, error = %e, "skipping an unreadable line"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_change_with_every_part() {
        let m = vec![Message::user("hi")];
        let s = Sampling::default();
        let k = reply_key("openai", "m", &m, &s, 0, 0, None);
        assert_eq!(k, reply_key("openai", "m", &m, &s, 0, 0, None));
        assert_ne!(k, reply_key("gemini", "m", &m, &s, 0, 0, None));
        assert_ne!(k, reply_key("openai", "m2", &m, &s, 0, 0, None));
        assert_ne!(k, reply_key("openai", "m", &[Message::user("hi!")], &s, 0, 0, None));
        assert_ne!(k, reply_key("openai", "m", &m, &Sampling { seed: Some(1), ..Sampling::default() }, 0, 0, None));
        assert_ne!(k, reply_key("openai", "m", &m, &s, 1, 0, None));
        assert_ne!(k, reply_key("openai", "m", &m, &s, 0, 1, None));
        assert_ne!(k, reply_key("openai", "m", &m, &s, 0, 0, Some(&serde_json::json!({"type": "string"}))));
    }

    #[test]
    fn record_reload_and_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        let c = LlmCache::open(d.path(), CacheMode::Record).unwrap();
        let r = CachedReply { text: "é\n{\"a\":1}".into(), prompt_tokens: 3, completion_tokens: 4 };
        c.put_reply("k1", &r).unwrap();
        let v = vec![0.1f32, -3.5e-8, f32::MIN_POSITIVE];
        c.put_embedding("e1", &v).unwrap();
        // Simulate a crash in the middle of an append.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(d.path().join("replies.jsonl")).unwrap();
        f.write_all(b"{\"key\":\"k2\",\"te").unwrap();
        drop(f);
        let c = LlmCache::open(d.path(), CacheMode::Record).unwrap();
        assert_eq!(c.reply("k1"), Some(r));
        assert_eq!(c.embedding("e1"), Some(v));
        c.put_reply("k3", &CachedReply { text: "x".into(), prompt_tokens: 0, completion_tokens: 0 }).unwrap();
        let c = LlmCache::open(d.path(), CacheMode::Replay).unwrap();
        assert_eq!(c.len(), (2, 1));
        assert!(c.reply("k3").is_some());
        // Replay never writes; Off never reads.
        c.put_reply("k4", &CachedReply { text: "y".into(), prompt_tokens: 0, completion_tokens: 0 }).unwrap();
        assert!(LlmCache::open(d.path(), CacheMode::Replay).unwrap().reply("k4").is_none());
        assert!(LlmCache::open(d.path(), CacheMode::Off).unwrap().reply("k1").is_none());
    }

    #[test]
    fn modes_parse() {
        assert_eq!("Replay".parse::<CacheMode>().unwrap(), CacheMode::Replay);
        assert!("sometimes".parse::<CacheMode>().unwrap_err().contains("record, replay, off"));
    }
}
