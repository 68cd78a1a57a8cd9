//! The providers of a process, shared by every simulation's [`super::Llm`].
//!
//! A sweep runs many sims in one process. Each sim keeps its own client (cache, ledger, budget,
//! step and adapter version), but the things that are expensive or that should see every sim's
//! traffic exist once: one HTTP client (connection pool and `concurrency` limit) per endpoint, and
//! one loaded local model per model file, whose engine then serves every sim's requests. A single
//! run builds its own `Providers`, so it behaves the same with or without a sweep around it.
//!
//! Requests carry their role's model name and sampling, so sharing changes no reply. The trained
//! assistant never comes from here: it gets its own model copy (see `sim::training`), whose
//! adapters must not reach the other roles or the other sims.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{anyhow, Result};

use super::gemini::GeminiProvider;
use super::openai::OpenAiProvider;
use super::ChatProvider;
use crate::config::{ProviderKind, Role, RoleConfig};

/// What identifies a shared provider: for HTTP, every setting the client is built from; for a
/// local chat model, the model and its chat template; for a local embedder, the model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ProviderKey {
    Http {
        kind: ProviderKind,
        base_url: Option<String>,
        api_key_env: Option<String>,
        /// `timeout_s` as bits: f64 is not `Eq`, and equal settings have equal bits.
        timeout_bits: Option<u64>,
        concurrency: Option<usize>,
    },
    LocalChat {
        model: String,
        chat_template: Option<String>,
    },
    LocalEmbed {
        model: String,
    },
}

impl ProviderKey {
    fn of(rc: &RoleConfig, role: Role) -> Result<ProviderKey> {
        Ok(match rc.provider {
            ProviderKind::OpenAi | ProviderKind::Gemini => ProviderKey::Http {
                kind: rc.provider,
                base_url: rc.base_url.clone(),
                api_key_env: rc.api_key_env.clone(),
                timeout_bits: rc.timeout_s.map(f64::to_bits),
                concurrency: rc.concurrency,
            },
            ProviderKind::Local if role == Role::Embedding => ProviderKey::LocalEmbed { model: rc.model.clone() },
            ProviderKind::Local => {
                ProviderKey::LocalChat { model: rc.model.clone(), chat_template: rc.chat_template.clone() }
            }
            ProviderKind::Scripted => {
                return Err(anyhow!("role {role} uses the scripted brain, which has no provider"))
            }
        })
    }
}

/// The shared provider set. Hold it in an `Arc` and pass it to every [`super::Llm`] that should
/// share it ([`super::Llm::with_providers`]).
#[derive(Default)]
pub struct Providers {
    /// Held while a provider is built, so two sims (or roles) asking together build it once.
    built: tokio::sync::Mutex<HashMap<ProviderKey, Arc<dyn ChatProvider>>>,
}

impl Providers {
    pub fn new() -> Arc<Providers> {
        Arc::new(Providers::default())
    }

    /// The provider serving `rc` for `role`, built on first use.
    pub async fn get(&self, role: Role, rc: &RoleConfig) -> Result<Arc<dyn ChatProvider>> {
        let key = ProviderKey::of(rc, role)?;
        let mut built = self.built.lock().await;
        if let Some(p) = built.get(&key) {
            return Ok(p.clone());
        }
        let p: Arc<dyn ChatProvider> = match &key {
            ProviderKey::Http { kind: ProviderKind::Gemini, .. } => Arc::new(GeminiProvider::new(rc)?),
            ProviderKey::Http { .. } => Arc::new(OpenAiProvider::new(rc)?),
            ProviderKey::LocalEmbed { .. } => {
                let rc = rc.clone();
                // Loading a model is slow blocking work: keep it off the async workers.
                tokio::task::spawn_blocking(move || build_local(&rc, role))
                    .await
                    .map_err(|e| anyhow!("loading the local model for role {role} failed: {e}"))??
            }
            ProviderKey::LocalChat { .. } => {
                // Sampling defaults come from each request (its role's settings), not from
                // whichever role loaded the model first.
                let neutral = rc.clone().without_sampling();
                tokio::task::spawn_blocking(move || build_local(&neutral, role))
                    .await
                    .map_err(|e| anyhow!("loading the local model for role {role} failed: {e}"))??
            }
        };
        built.insert(key, p.clone());
        Ok(p)
    }

    /// How many local chat models are loaded (roles and sims naming the same model share one).
    pub async fn local_models_loaded(&self) -> usize {
        self.built.lock().await.keys().filter(|k| matches!(k, ProviderKey::LocalChat { .. })).count()
    }

    /// How many HTTP clients exist (one per endpoint and its client settings).
    pub async fn http_clients(&self) -> usize {
        self.built.lock().await.keys().filter(|k| matches!(k, ProviderKey::Http { .. })).count()
    }
}

/// The single place where `provider = "local"` is built.
fn build_local(rc: &RoleConfig, role: Role) -> Result<Arc<dyn ChatProvider>> {
    Ok(Arc::new(crate::local::LocalProvider::new(rc, role)?))
}
