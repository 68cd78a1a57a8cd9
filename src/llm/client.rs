//! Routes tasks to their role's provider, with bounded retries and a counted fallback.
//!
//! This first version serves the offline scripted brain only; HTTP and local providers, the
//! response cache and the ledger plug in here.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{ChatProvider, Task};
use crate::config::{Config, ProviderKind, Role, RoleConfig};

/// A task's value and how it was obtained.
#[derive(Debug, Clone)]
pub struct TaskOutcome<T> {
    pub value: T,
    /// True when every attempt failed and the task's fallback was used.
    pub fallback: bool,
    pub attempts: u32,
}

enum Backend {
    Scripted,
    Provider(Arc<dyn ChatProvider>),
}

/// The LLM client the simulation uses.
pub struct Llm {
    roles: HashMap<Role, (RoleConfig, Backend)>,
    retries: usize,
    seed: u64,
    fallbacks: AtomicU64,
    calls: AtomicU64,
}

impl Llm {
    /// Build providers for every role from the configuration.
    pub fn from_config(cfg: &Config) -> Result<Llm> {
        let mut roles = HashMap::new();
        for role in Role::ALL {
            let rc = cfg.role(*role);
            let backend = match rc.provider {
                ProviderKind::Scripted => Backend::Scripted,
                other => bail!(
                    "role `{role}` uses provider `{other}`, which this build cannot reach yet; use `--provider scripted`"
                ),
            };
            roles.insert(*role, (rc, backend));
        }
        Ok(Llm { roles, retries: cfg.sim.task_retries, seed: cfg.sim.seed, fallbacks: AtomicU64::new(0), calls: AtomicU64::new(0) })
    }

    /// Whether every role runs on the scripted brain (the engine benchmark and CI mode).
    pub fn is_scripted(&self, role: Role) -> bool {
        matches!(self.roles.get(&role), Some((_, Backend::Scripted)))
    }

    pub fn role_config(&self, role: Role) -> Option<&RoleConfig> {
        self.roles.get(&role).map(|(rc, _)| rc)
    }

    /// Run a task: ask, parse, retry a bounded number of times, then fall back.
    pub async fn run<T: Task>(&self, task: &T) -> Result<TaskOutcome<T::Output>> {
        let (_rc, backend) = self.roles.get(&task.role()).ok_or_else(|| anyhow::anyhow!("no provider for role {}", task.role()))?;
        let messages = task.messages();
        let attempts_max = self.retries as u32 + 1;
        for attempt in 0..attempts_max {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let text = match backend {
                Backend::Scripted => {
                    let mut rng = ChaCha8Rng::seed_from_u64(self.task_seed(task.name(), &messages, attempt + 1000 * task.sample_index()));
                    task.scripted(&mut rng)
                }
                Backend::Provider(_p) => bail!("providers are not wired yet"),
            };
            if let Ok(v) = task.parse(&text) {
                return Ok(TaskOutcome { value: v, fallback: false, attempts: attempt + 1 });
            }
        }
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        Ok(TaskOutcome { value: task.fallback(), fallback: true, attempts: attempts_max })
    }

    /// Embed one text with the embedding role.
    pub async fn embed(&self, text: &str) -> Result<Vec<f32>> {
        match self.roles.get(&Role::Embedding) {
            Some((_, Backend::Scripted)) => Ok(scripted_embedding(text)),
            _ => bail!("embedding provider not wired yet"),
        }
    }

    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Scripted replies are a pure function of (seed, task, prompt, attempt), so a run is
    /// reproducible no matter in which order concurrent tasks finish.
    fn task_seed(&self, name: &str, messages: &[super::Message], attempt: u32) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.seed.hash(&mut h);
        name.hash(&mut h);
        messages.hash(&mut h);
        attempt.hash(&mut h);
        h.finish()
    }
}

/// The scripted brain's embedding: a normalized hashed bag of words (256 dims). Texts sharing
/// words are similar; it is a test/benchmark stand-in, not a language model.
pub fn scripted_embedding(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; 256];
    for w in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        let w = w.to_lowercase();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        w.hash(&mut h);
        let x = h.finish();
        v[(x % 256) as usize] += if (x >> 8) & 1 == 0 { 1.0 } else { -1.0 };
    }
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
    v
}
