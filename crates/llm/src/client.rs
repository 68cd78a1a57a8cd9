//! Routes tasks to their role's provider, with bounded retries and a counted fallback, through
//! the reply cache, and records every call in the ledger.
//!
//! Building: [`Llm::from_config`] gives a client with an in-memory ledger and no cache (one-off
//! CLI use). A simulation uses [`Llm::for_sim`] (or chains [`Llm::with_cache`] and
//! [`Llm::with_ledger`]), which keeps `llm_cache/` and `llm_ledger.jsonl` in `storage/<sim>/`.
//!
//! Providers are built on first use, so a replayed run never loads a local model nor needs an
//! API key; call [`Llm::prepare`] to build them all up front and fail fast on bad settings. They
//! come from a [`Providers`] set, which a sweep shares between its sims ([`Llm::with_providers`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::OnceCell;
use tracing::Instrument;

use super::cache::{embed_key, lock, reply_key, CacheMiss, CacheMode, CachedReply, LlmCache};
use super::http::{counting_retries, estimate_tokens};
use super::ledger::{cost_usd, BudgetExceeded, Ledger, LedgerEntry, LedgerTotals};
use super::providers::Providers;
use super::scripted::{self, ScriptedReply};
use super::task::token_bound;
use super::{AnswerSchema, ChatProvider, ChatReply, ChatRequest, Message, ProviderError, Sampling, Task};
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
    /// Built on first use (see the module docs).
    Provider(OnceCell<Arc<dyn ChatProvider>>),
}

struct Slot {
    role: Role,
    rc: RoleConfig,
    backend: Backend,
    adapter_version: AtomicU64,
    /// The model name requests send instead of the role's `model`: the LoRA adapter a vLLM
    /// server serves under its own name (see `sim::training`).
    served_model: Mutex<Option<String>>,
}

impl Slot {
    fn new(role: Role, rc: RoleConfig, backend: Backend) -> Slot {
        Slot { role, rc, backend, adapter_version: AtomicU64::new(0), served_model: Mutex::new(None) }
    }

    /// The model name this role's requests send now.
    fn model(&self) -> String {
        lock(&self.served_model).clone().unwrap_or_else(|| self.rc.model.clone())
    }
}

/// Sentinel for "no step set".
const NO_STEP: u64 = u64::MAX;
/// Bound on the in-memory embedding cache (entries); it is cleared when full.
const EMBED_MEM_MAX: usize = 200_000;

/// The LLM client the simulation uses.
pub struct Llm {
    roles: HashMap<Role, Slot>,
    retries: usize,
    seed: u64,
    budget_usd: Option<f64>,
    cache: Option<LlmCache>,
    ledger: Ledger,
    step: AtomicU64,
    embed_mem: Mutex<HashMap<String, Vec<f32>>>,
    fallbacks: AtomicU64,
    calls: AtomicU64,
    /// The scripted brain, which answers the roles on [`Backend::Scripted`] (and keeps the time
    /// spent in it, so a benchmark can tell the engine's own cost from the brain's).
    brain: scripted::Brain,
    /// Where role providers come from: roles that name the same local model or HTTP endpoint
    /// share one (the default configuration puts every chat role on the same model), and so do
    /// the sims of a sweep. The trained assistant is not in here: it gets its own copy, whose
    /// adapters must not reach the other roles.
    providers: Arc<Providers>,
}

/// What one task run or embedding request added up to, for its ledger line.
#[derive(Default)]
struct CallAcc {
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_usd: f64,
    transport_retries: u32,
    cache_hits: u32,
    live_calls: u32,
    prefix_cached_tokens: u64,
}

impl Llm {
    /// Build the client for every role from the configuration (in-memory ledger, no cache).
    pub fn from_config(cfg: &Config) -> Result<Llm> {
        // An API role with no model would send an empty (or the local default's) name.
        cfg.check_models()?;
        let mut roles = HashMap::new();
        for role in Role::ALL {
            let rc = cfg.role(*role);
            let backend = match rc.provider {
                ProviderKind::Scripted => Backend::Scripted,
                _ => Backend::Provider(OnceCell::new()),
            };
            roles.insert(*role, Slot::new(*role, rc, backend));
        }
        Ok(Llm {
            roles,
            retries: cfg.sim.task_retries,
            seed: cfg.sim.seed,
            budget_usd: cfg.sim.budget_usd,
            cache: None,
            ledger: Ledger::in_memory(),
            step: AtomicU64::new(NO_STEP),
            embed_mem: Mutex::new(HashMap::new()),
            fallbacks: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            brain: scripted::Brain::default(),
            providers: Providers::new(),
        })
    }

    /// The client of one simulation folder: cache in `<sim_dir>/llm_cache/` with `mode`, ledger
    /// appended to `<sim_dir>/llm_ledger.jsonl` (its earlier lines count towards the budget).
    pub fn for_sim(cfg: &Config, sim_dir: &Path, mode: CacheMode) -> Result<Llm> {
        Llm::from_config(cfg)?
            .with_cache(sim_dir.join("llm_cache"), mode)?
            .with_ledger(sim_dir.join("llm_ledger.jsonl"))
    }

    /// Use (and load) the reply cache in `dir`.
    pub fn with_cache(mut self, dir: impl Into<PathBuf>, mode: CacheMode) -> Result<Llm> {
        let dir = dir.into();
        self.cache =
            Some(LlmCache::open(&dir, mode).with_context(|| format!("opening the LLM cache in {}", dir.display()))?);
        Ok(self)
    }

    /// Append the ledger to `path` (JSONL), starting the totals from its existing lines.
    pub fn with_ledger(mut self, path: impl Into<PathBuf>) -> Result<Llm> {
        let path = path.into();
        self.ledger = Ledger::open(&path).with_context(|| format!("opening the LLM ledger {}", path.display()))?;
        Ok(self)
    }

    /// Take role providers from `providers` (shared with other clients) instead of a set of
    /// its own. Call before any provider is used.
    pub fn with_providers(mut self, providers: Arc<Providers>) -> Llm {
        self.providers = providers;
        self
    }

    /// Serve `role` with a ready-made provider and these settings (sampling, prices, model).
    /// The integration point for providers built elsewhere, and for tests.
    pub fn with_provider(mut self, role: Role, rc: RoleConfig, provider: Arc<dyn ChatProvider>) -> Llm {
        let backend = Backend::Provider(OnceCell::new_with(Some(provider)));
        self.roles.insert(role, Slot::new(role, rc, backend));
        self
    }

    /// Build every role's provider now, so bad settings fail before a run starts.
    pub async fn prepare(&self) -> Result<()> {
        for role in Role::ALL {
            if let Some(slot) = self.roles.get(role) {
                if matches!(slot.backend, Backend::Provider(_)) {
                    self.provider(slot).await?;
                }
            }
        }
        Ok(())
    }

    /// Whether this role runs on the scripted brain (the engine benchmark and CI mode).
    pub fn is_scripted(&self, role: Role) -> bool {
        matches!(self.roles.get(&role), Some(Slot { backend: Backend::Scripted, .. }))
    }

    pub fn role_config(&self, role: Role) -> Option<&RoleConfig> {
        self.roles.get(&role).map(|s| &s.rc)
    }

    /// The simulation step written into following ledger lines.
    pub fn set_step(&self, step: u64) {
        self.step.store(step, Ordering::Relaxed);
    }

    /// The adapter version of a role's model (0 = base). It is part of every cache key, so a
    /// retrained assistant never gets a reply recorded for an older adapter.
    pub fn set_adapter_version(&self, role: Role, version: u64) {
        if let Some(s) = self.roles.get(&role) {
            s.adapter_version.store(version, Ordering::Relaxed);
        }
    }

    /// Send `model` as the model of `role`'s requests from now on (`None`: the role's own). The
    /// name enters the cache keys and the ledger.
    pub fn set_served_model(&self, role: Role, model: Option<String>) {
        if let Some(s) = self.roles.get(&role) {
            *lock(&s.served_model) = model;
        }
    }

    pub fn adapter_version(&self, role: Role) -> u64 {
        self.roles.get(&role).map(|s| s.adapter_version.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Totals of the ledger by role and task (Display prints the end-of-run table).
    pub fn totals(&self) -> LedgerTotals {
        self.ledger.totals()
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn cache_mode(&self) -> CacheMode {
        self.cache.as_ref().map(|c| c.mode()).unwrap_or(CacheMode::Off)
    }

    /// Run a task: ask, parse, retry a bounded number of times, then fall back.
    ///
    /// A reply that fails the task's `parse` (or that the provider could not read) is re-asked
    /// up to `task_retries` times (the role's `attempts` in all, when set) and then replaced by
    /// the task's fallback, counted in the ledger. A call whose transport retries ran out
    /// ([`ProviderError::Exhausted`]: 429s, 5xx, timeouts) goes straight to the fallback, also
    /// counted, with the error in its ledger line: asking again would only wait for the same
    /// server once more, and one bad call should not end a run. Authentication and request
    /// errors, a strict-replay miss ([`CacheMiss`]) and the budget cap ([`BudgetExceeded`]) are
    /// returned as errors; match them with `err.downcast_ref`.
    ///
    /// A role on the scripted brain gets the task's [`ScriptedReply`] instead of a provider's.
    pub async fn run<T: Task + ScriptedReply>(&self, task: &T) -> Result<TaskOutcome<T::Output>> {
        let span = tracing::debug_span!("llm_task", task = task.name(), role = %task.role());
        self.run_inner(task).instrument(span).await
    }

    async fn run_inner<T: Task + ScriptedReply>(&self, task: &T) -> Result<TaskOutcome<T::Output>> {
        let slot = self.slot(task.role())?;
        let messages = task.messages();
        let schema = (slot.rc.structured() && matches!(slot.backend, Backend::Provider(_)))
            .then(|| AnswerSchema { name: task.name().to_string(), schema: task.schema() });
        let attempts_max = slot.rc.attempts.map_or(self.retries as u32 + 1, |a| a.max(1));
        let started = Instant::now();
        let mut acc = CallAcc::default();
        for attempt in 0..attempts_max {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let text = match &slot.backend {
                Backend::Scripted => {
                    let r = self.brain.reply(self.seed, task, &messages, draw_index(attempt, task.sample_index()));
                    acc.prompt_tokens += r.prompt_tokens;
                    acc.completion_tokens += r.completion_tokens;
                    Some(r.text)
                }
                Backend::Provider(_) => match self
                    .ask(
                        slot,
                        task.name(),
                        &messages,
                        schema.as_ref(),
                        draw_index(attempt, task.sample_index()),
                        &mut acc,
                    )
                    .await
                {
                    Ok(t) => t,
                    Err(e) if transport_gave_up(&e) => {
                        self.fallbacks.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(task = task.name(), role = %slot.role, error = %format!("{e:#}"), "the provider kept failing; using the task's fallback");
                        self.record(slot, task.name(), &acc, started, attempt + 1, true, Some(&e))?;
                        return Ok(TaskOutcome { value: task.fallback(), fallback: true, attempts: attempt + 1 });
                    }
                    Err(e) => {
                        self.record(slot, task.name(), &acc, started, attempt + 1, false, Some(&e))?;
                        return Err(e);
                    }
                },
            };
            if let Some(text) = text {
                match task.parse(&text) {
                    Ok(v) => {
                        self.record(slot, task.name(), &acc, started, attempt + 1, false, None)?;
                        return Ok(TaskOutcome { value: v, fallback: false, attempts: attempt + 1 });
                    }
                    Err(why) => tracing::debug!(task = task.name(), attempt, %why, "bad reply"),
                }
            }
        }
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(task = task.name(), role = %slot.role, attempts = attempts_max, "every reply was unusable; using the task's fallback");
        self.record(slot, task.name(), &acc, started, attempts_max, true, None)?;
        Ok(TaskOutcome { value: task.fallback(), fallback: true, attempts: attempts_max })
    }

    /// One attempt against a provider, through the cache. `Ok(None)` is a reply the provider
    /// could not read, which counts as a bad reply.
    async fn ask(
        &self,
        slot: &Slot,
        task: &str,
        messages: &[Message],
        schema: Option<&AnswerSchema>,
        attempt: u32,
        acc: &mut CallAcc,
    ) -> Result<Option<String>> {
        let mut sampling = sampling_of(&slot.rc);
        // With no seed in the role, the run's seed stands in: a provider's own default seed
        // would make the two candidates of a step one draw (identical, so never a preference pair).
        sampling.seed = Some(draw_seed(sampling.seed.unwrap_or(self.seed), task, attempt, messages));
        if let Some(a) = schema {
            // A constrained answer ends when its JSON closes; the limit only has to let every
            // valid answer finish (a role's `max_tokens` may be the original's 128).
            let need = token_bound(&a.schema);
            sampling.max_tokens = Some(sampling.max_tokens.map_or(need, |m| m.max(need)));
        }
        let cache = self.cache.as_ref().filter(|c| c.mode() != CacheMode::Off);
        let model = slot.model();
        let key = cache.map(|_| {
            reply_key(
                slot.rc.provider.as_str(),
                &model,
                messages,
                &sampling,
                slot.adapter_version.load(Ordering::Relaxed),
                attempt,
                schema.map(|a| &a.schema),
            )
        });
        if let (Some(c), Some(k)) = (cache, &key) {
            if let Some(hit) = c.reply(k) {
                acc.cache_hits += 1;
                acc.prompt_tokens += hit.prompt_tokens;
                acc.completion_tokens += hit.completion_tokens;
                return Ok(Some(hit.text));
            }
            if c.mode() == CacheMode::Replay {
                return Err(CacheMiss {
                    task: task.to_string(),
                    role: slot.role.to_string(),
                    attempt,
                    key: k.clone(),
                    dir: c.dir().display().to_string(),
                }
                .into());
            }
        }
        self.check_budget(acc)?;
        let provider = self.provider(slot).await?;
        let req = ChatRequest { model: model.clone(), messages: messages.to_vec(), sampling, schema: schema.cloned() };
        acc.live_calls += 1;
        let (result, retries) = counting_retries(provider.chat(&req)).await;
        acc.transport_retries += retries;
        match result {
            Ok(r) => {
                acc.prompt_tokens += r.prompt_tokens;
                acc.completion_tokens += r.completion_tokens;
                acc.cost_usd += cost_usd(&slot.rc, r.prompt_tokens, r.completion_tokens);
                acc.prefix_cached_tokens += r.cached_prompt_tokens;
                if let (Some(c), Some(k)) = (cache, &key) {
                    c.put_reply(
                        k,
                        &CachedReply {
                            text: r.text.clone(),
                            prompt_tokens: r.prompt_tokens,
                            completion_tokens: r.completion_tokens,
                        },
                    )?;
                }
                Ok(Some(r.text))
            }
            Err(ProviderError::Malformed(why)) => {
                tracing::warn!(task, role = %slot.role, attempt, %why, "unreadable provider reply");
                Ok(None)
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!(
                "LLM task `{task}` (role {}, provider {}, model {model:?})",
                slot.role, slot.rc.provider
            ))),
        }
    }

    /// A free-form chat with a role's model (the `llm chat` command). Ledgered as task `chat`;
    /// not cached. The scripted brain has no free-form replies, so it is refused.
    pub async fn chat(&self, role: Role, messages: Vec<Message>) -> Result<ChatReply> {
        let slot = self.slot(role)?;
        if matches!(slot.backend, Backend::Scripted) {
            bail!("role `{role}` uses the scripted brain, which only answers the simulation's typed tasks (it is not a model); configure a model for [roles.{role}] to chat");
        }
        let started = Instant::now();
        let mut acc = CallAcc::default();
        let result: Result<ChatReply> = async {
            self.check_budget(&acc)?;
            let provider = self.provider(slot).await?;
            acc.live_calls += 1;
            let req = ChatRequest { model: slot.model(), messages, sampling: sampling_of(&slot.rc), schema: None };
            let (r, retries) = counting_retries(provider.chat(&req)).await;
            acc.transport_retries += retries;
            let r =
                r.with_context(|| format!("role {role} (provider {}, model {:?})", slot.rc.provider, slot.rc.model))?;
            acc.prompt_tokens += r.prompt_tokens;
            acc.completion_tokens += r.completion_tokens;
            acc.cost_usd += cost_usd(&slot.rc, r.prompt_tokens, r.completion_tokens);
            Ok(r)
        }
        .await;
        self.record(slot, "chat", &acc, started, 1, false, result.as_ref().err())?;
        result
    }

    /// Embed one text with the embedding role.
    pub async fn embed(&self, text: &str) -> Result<Vec<f32>> {
        let mut v = self.embed_many(&[text.to_string()]).await?;
        v.pop().ok_or_else(|| anyhow!("the embedding provider returned no vector"))
    }

    /// Embed several texts in one provider request. Vectors are cached by text in memory and,
    /// when the sim has a cache in `record`/`replay` mode, on disk; only misses reach the
    /// provider, and in strict replay a miss is a [`CacheMiss`].
    pub async fn embed_many(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let slot = self.slot(Role::Embedding)?;
        let started = Instant::now();
        let mut acc = CallAcc::default();
        if let Backend::Scripted = slot.backend {
            let (out, tokens) = self.brain.embed(texts);
            acc.prompt_tokens = tokens;
            self.record(slot, "embed", &acc, started, 1, false, None)?;
            return Ok(out);
        }
        let (provider_kind, model) = (slot.rc.provider.as_str(), slot.rc.model.as_str());
        let cache = self.cache.as_ref().filter(|c| c.mode() != CacheMode::Off);
        let keys: Vec<String> = texts.iter().map(|t| embed_key(provider_kind, model, t)).collect();
        let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        {
            let mem = lock(&self.embed_mem);
            for (i, k) in keys.iter().enumerate() {
                out[i] = mem.get(k).cloned().or_else(|| cache.and_then(|c| c.embedding(k)));
            }
        }
        let missing: Vec<usize> = (0..texts.len()).filter(|&i| out[i].is_none()).collect();
        if !missing.is_empty() {
            if let Some(c) = cache.filter(|c| c.mode() == CacheMode::Replay) {
                let i = missing[0];
                return Err(CacheMiss {
                    task: "embed".into(),
                    role: Role::Embedding.to_string(),
                    attempt: 0,
                    key: keys[i].clone(),
                    dir: c.dir().display().to_string(),
                }
                .into());
            }
            let result: Result<Vec<Vec<f32>>> = async {
                self.check_budget(&acc)?;
                let provider = self.provider(slot).await?;
                let batch: Vec<String> = missing.iter().map(|&i| texts[i].clone()).collect();
                acc.live_calls += 1;
                acc.prompt_tokens = batch.iter().map(|t| estimate_tokens(t.chars().count())).sum();
                acc.cost_usd = cost_usd(&slot.rc, acc.prompt_tokens, 0);
                let (vecs, retries) = counting_retries(provider.embed(model, &batch)).await;
                acc.transport_retries += retries;
                let vecs =
                    vecs.with_context(|| format!("embedding with provider {} model {model:?}", slot.rc.provider))?;
                if vecs.len() != batch.len() {
                    bail!("the embedding provider returned {} vectors for {} texts", vecs.len(), batch.len());
                }
                Ok(vecs)
            }
            .await;
            self.record(slot, "embed", &acc, started, 1, false, result.as_ref().err())?;
            let vecs = result?;
            let mut mem = lock(&self.embed_mem);
            if mem.len() + vecs.len() > EMBED_MEM_MAX {
                mem.clear();
            }
            for (&i, v) in missing.iter().zip(vecs) {
                if let Some(c) = cache {
                    c.put_embedding(&keys[i], &v)?;
                }
                mem.insert(keys[i].clone(), v.clone());
                out[i] = Some(v);
            }
        } else {
            // Served from the caches: nothing to ledger, but remember disk hits in memory.
            let mut mem = lock(&self.embed_mem);
            for (k, v) in keys.iter().zip(&out) {
                if let Some(v) = v {
                    mem.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
    /// How many local chat models this client's provider set has loaded (roles naming the same
    /// model share one).
    pub async fn local_models_loaded(&self) -> usize {
        self.providers.local_models_loaded().await
    }

    /// Seconds spent in the scripted brain so far.
    pub fn scripted_seconds(&self) -> f64 {
        self.brain.seconds()
    }

    fn slot(&self, role: Role) -> Result<&Slot> {
        self.roles.get(&role).ok_or_else(|| anyhow!("no provider for role {role}"))
    }

    /// The role's provider, built on first use.
    async fn provider(&self, slot: &Slot) -> Result<Arc<dyn ChatProvider>> {
        let Backend::Provider(cell) = &slot.backend else {
            bail!("role {} uses the scripted brain", slot.role);
        };
        let p = cell
            .get_or_try_init(|| self.providers.get(slot.role, &slot.rc))
            .await
            .with_context(|| format!("setting up the `{}` provider for role {}", slot.rc.provider, slot.role))?;
        Ok(p.clone())
    }

    fn check_budget(&self, acc: &CallAcc) -> Result<()> {
        if let Some(budget) = self.budget_usd {
            let spent = self.ledger.spent_usd() + acc.cost_usd;
            if spent > budget {
                return Err(BudgetExceeded { spent_usd: spent, budget_usd: budget }.into());
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        slot: &Slot,
        task: &str,
        acc: &CallAcc,
        started: Instant,
        attempts: u32,
        fallback: bool,
        error: Option<&anyhow::Error>,
    ) -> Result<()> {
        let step = self.step.load(Ordering::Relaxed);
        let entry = LedgerEntry {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            step: (step != NO_STEP).then_some(step),
            task: task.to_string(),
            role: slot.role.to_string(),
            provider: slot.rc.provider.to_string(),
            model: self.answering_model(slot),
            prompt_tokens: acc.prompt_tokens,
            completion_tokens: acc.completion_tokens,
            latency_ms: started.elapsed().as_millis() as u64,
            attempts,
            retries: attempts.saturating_sub(1),
            transport_retries: acc.transport_retries,
            fallback_used: fallback,
            cost_usd: acc.cost_usd,
            cached: acc.cache_hits > 0 && acc.live_calls == 0,
            prefix_cached_tokens: acc.prefix_cached_tokens,
            error: error.map(|e| format!("{e:#}")),
        };
        self.ledger.record(&entry).context("writing the LLM ledger")
    }

    /// What the ledger names as the model: the one the provider loaded when it knows (a local
    /// file, maybe the installed fallback for the configured id), else the role's setting.
    fn answering_model(&self, slot: &Slot) -> String {
        if let Backend::Provider(cell) = &slot.backend {
            if let Some(m) = cell.get().and_then(|p| p.loaded_model()) {
                return m.to_string();
            }
        }
        slot.model()
    }
}

/// Whether `e` is a provider whose transport retries ran out (429s, 5xx, timeouts, unreadable
/// bodies): the task falls back. Authentication, bad requests and everything else stay errors.
fn transport_gave_up(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<ProviderError>(), Some(ProviderError::Exhausted { .. }))
}

/// One number for (retry attempt, candidate): mixed into the scripted seed, the sampling seed
/// and the cache key, so two candidates of one prompt are two draws, not one cached reply.
fn draw_index(attempt: u32, sample: u32) -> u32 {
    attempt + 1000 * sample
}

/// The sampling seed of one request: the role's (or run's) seed, the task, the prompt and the
/// draw (attempt and candidate) hashed as the scripted brain seeds its replies
/// ([`scripted::task_seed`]). Without the prompt in it, every step's candidate `i` would be
/// sampled from the same random numbers, so whether it took its top token would be a fixed
/// threshold on that token's probability rather than a draw: in the `learnrule` run of #15 the
/// trained assistant's first candidate abstained on 83% of day 5's steps and its second, the one
/// shown, on 38%, from the same prompts. Same seed and prompt still give the same reply. Kept
/// below 2^31, since Gemini's `seed` is a 32-bit signed integer.
fn draw_seed(seed: u64, task: &str, draw: u32, messages: &[Message]) -> u64 {
    scripted::task_seed(seed, task, messages, draw) & 0x7fff_ffff
}

/// The sampling fields of a role's settings.
pub fn sampling_of(rc: &RoleConfig) -> Sampling {
    Sampling {
        temperature: rc.temperature,
        top_p: rc.top_p,
        top_k: rc.top_k,
        max_tokens: rc.max_tokens,
        repeat_penalty: rc.repeat_penalty,
        seed: rc.seed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_prompt_and_each_draw_gets_its_own_seed() {
        let at = |t: &str| vec![Message::system("You advise John."), Message::user(t)];
        let (a, b) = (at("07:00, John is cooking."), at("07:02, John is cooking."));
        let seed = |s, d, m: &[Message]| draw_seed(s, "suggest", d, m);
        assert_eq!(seed(42, 0, &a), seed(42, 0, &a), "a seed fixes the draw");
        assert_ne!(seed(42, 0, &a), seed(42, 0, &b), "two steps are two draws");
        assert_ne!(seed(42, 0, &a), seed(42, draw_index(0, 1), &a), "two candidates are two draws");
        assert_ne!(seed(42, 0, &a), seed(42, draw_index(1, 0), &a), "a retry is a new draw");
        assert_ne!(seed(42, 0, &a), seed(7, 0, &a), "the run's seed matters");
        for s in [0, 42, u64::MAX] {
            assert!(seed(s, 1000, &b) < 1 << 31, "a seed every provider accepts");
        }
    }

    /// The simulation shares one `Llm` across spawned tasks: it and its futures must be Send.
    #[allow(dead_code)]
    fn llm_and_its_futures_are_send<T: Task + ScriptedReply>(llm: &Llm, task: &T) {
        fn send_sync<S: Send + Sync>() {}
        fn send<F: Send>(_: &F) {}
        send_sync::<Llm>();
        send(&llm.run(task));
        send(&llm.embed("x"));
        send(&llm.chat(Role::User, Vec::new()));
    }

    #[tokio::test]
    async fn unusable_local_model_explains_how_to_configure() {
        let mut cfg = Config::default();
        cfg.set_all_providers(ProviderKind::Scripted);
        let mut rc = cfg.role(Role::User);
        rc.provider = ProviderKind::Local;
        rc.model = "/nonexistent/model.gguf".into();
        cfg.roles.insert("user".into(), rc);
        let llm = Llm::from_config(&cfg).unwrap();
        let e = format!("{:#}", llm.prepare().await.unwrap_err());
        assert!(e.contains("[roles.user]") && e.contains("local GGUF"), "{e}");
        assert!(
            e.contains("provider = \"openai\"") && e.contains("api_key_env") && e.contains("--provider scripted"),
            "{e}"
        );
    }
}
