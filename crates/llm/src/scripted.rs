//! TEST/BENCHMARK BRAIN — not a model.
//!
//! The scripted brain (`--provider scripted`) is an offline, deterministic stand-in for the
//! models: each task's reply comes from rules ([`ScriptedReply`], implemented beside the tasks
//! of each area of the simulation, never inside their `Task` impls), seeded from
//! `(seed, task, prompt, attempt, candidate)` so that a run is byte-identical however its
//! concurrent calls interleave, and its embeddings are a hashed bag of words
//! ([`scripted_embedding`]). It exists for CI, the engine benchmark and tests. Here are all of
//! its pieces the client needs: the reply with its seed and token estimates, the embeddings,
//! and the clock of the time spent in it; the client only dispatches to them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::http::estimate_tokens;
use super::{Message, Task};

/// A task's reply on the scripted brain. It goes through the task's `parse` like any reply.
/// The client runs a task only if it has one (`Llm::run` takes `T: Task + ScriptedReply`), so
/// a task without rules does not build; `Task` itself knows nothing of the scripted brain.
pub trait ScriptedReply {
    /// The reply text, from the rules and `rng` (seeded from the task, its prompt, the attempt
    /// and the candidate).
    fn scripted(&self, rng: &mut ChaCha8Rng) -> String;
}

/// One scripted reply and its token estimates (characters / 4) for the ledger.
pub(crate) struct Reply {
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The scripted backend of a client: it answers tasks and embeds texts, and keeps the time
/// spent doing so, so a benchmark can tell the engine's own cost from the brain's.
#[derive(Default)]
pub(crate) struct Brain {
    nanos: AtomicU64,
}

impl Brain {
    /// The reply to attempt/candidate `draw` of `task`, whose prompt is `messages`, in a run
    /// seeded with `seed`.
    pub fn reply<T: Task + ScriptedReply>(&self, seed: u64, task: &T, messages: &[Message], draw: u32) -> Reply {
        let _timer = Timer(&self.nanos, Instant::now());
        let mut rng = ChaCha8Rng::seed_from_u64(task_seed(seed, task.name(), messages, draw));
        let text = task.scripted(&mut rng);
        Reply {
            prompt_tokens: estimate_tokens(messages.iter().map(|m| m.content.chars().count()).sum()),
            completion_tokens: estimate_tokens(text.chars().count()),
            text,
        }
    }

    /// The vectors of `texts` and their token estimate.
    pub fn embed(&self, texts: &[String]) -> (Vec<Vec<f32>>, u64) {
        let _timer = Timer(&self.nanos, Instant::now());
        let out = texts.iter().map(|t| scripted_embedding(t)).collect();
        (out, texts.iter().map(|t| estimate_tokens(t.chars().count())).sum())
    }

    /// Seconds spent in the brain so far (its replies and its embeddings).
    pub fn seconds(&self) -> f64 {
        self.nanos.load(Ordering::Relaxed) as f64 / 1e9
    }
}

/// Adds the time from its start to its drop to a counter.
struct Timer<'a>(&'a AtomicU64, Instant);

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(self.1.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Scripted replies are a pure function of (seed, task, prompt, attempt and candidate), so a run
/// is reproducible no matter in which order concurrent tasks finish; the sampling seeds sent to
/// model providers derive from the same hash (`client::draw_seed`). The hash is XXH3, whose
/// output is fixed across platforms and releases (std's `DefaultHasher` does not promise that),
/// so recorded runs replay the same. The prompt goes in as it is, each string after its length:
/// a scripted step hashes tens of kilobytes of prompts.
pub(crate) fn task_seed(seed: u64, name: &str, messages: &[Message], draw: u32) -> u64 {
    fn text(h: &mut xxhash_rust::xxh3::Xxh3, s: &str) {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&seed.to_le_bytes());
    text(&mut h, name);
    h.update(&(messages.len() as u64).to_le_bytes());
    for m in messages {
        text(&mut h, &m.role);
        text(&mut h, &m.content);
    }
    h.update(&draw.to_le_bytes());
    h.digest()
}

/// The scripted brain's embedding: a normalized hashed bag of words (256 dims). Texts sharing
/// words are similar; it is a test/benchmark stand-in, not a language model.
pub fn scripted_embedding(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; 256];
    for w in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        let x = xxhash_rust::xxh3::xxh3_64(w.to_lowercase().as_bytes());
        v[(x % 256) as usize] += if (x >> 8) & 1 == 0 { 1.0 } else { -1.0 };
    }
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
    v
}
