//! The model thread. A local model is big, stateful (KV caches) and CPU-bound, so it lives on
//! one dedicated `std::thread`; callers send jobs over a channel and await a oneshot reply, so
//! async callers never block a tokio worker.
//!
//! A model that supports it ([`EngineModel::Batched`]) is driven by a scheduler with
//! **continuous batching**: a request joins at the next decode step (after its prompt pass), a
//! finished one leaves, and every decode step runs all sequences in flight through one forward
//! pass. Each request keeps its own sampler, seed and answer constraint; decode rows are computed
//! independently of each other, so a greedy answer does not depend on its batch. Prompt passes
//! start from the longest cached prefix ([`PrefixCache`]). A request whose caller went away
//! (a cancelled future: Ctrl-C, a timeout) is dropped at the next step.
//!
//! Other models ([`EngineModel::Single`]: candle's single-format GGUF models, the f32 LoRA model
//! after a training day) run one request at a time, KV cache cleared between requests.
//!
//! A model swap is atomic between requests: sequences in flight finish on the old model,
//! requests sent after the swap wait for them and then run on the new one, and the prefix cache
//! is emptied (its keys and values belong to the old weights).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use tokio::sync::oneshot;

use super::batch::{common_prefix, BatchLm, PrefixCache, SeqKv};
use super::constraint::Constraint;
use super::sampler::{Sampler, SamplingParams};
use crate::model::lora::AdapterSlot;
use crate::model::CausalLm;

/// Single-sequence models are fed prompts in slices of this many tokens, bounding the
/// attention matrix's memory.
const PREFILL_CHUNK: usize = 512;
/// The batched engine computes prompts in passes of at most this many positions per prompt,
/// aligned at multiples of it, which bounds a pass's memory. Where a pass starts does not change
/// any result: every row is computed on its own (see [`BatchLm::forward_batch`]), so a prompt
/// that starts from a cached prefix of any length is bit-identical to the same prompt computed
/// cold, and a seeded sample is the same with or without the cache (decode steps quantize their
/// activations, which would turn a last-bit difference into a different token within a few
/// steps).
pub const PROMPT_BLOCK: usize = 64;
/// A prompt that shares at least this many uncached tokens with one already starting waits for
/// the next round of passes and takes them from the cache; fewer are cheaper to compute twice
/// than to spend a round on.
const DEFER_MIN_SHARED: usize = 16;
/// Default cap on sequences decoded together.
pub const DEFAULT_MAX_BATCH: usize = 16;
/// Default memory cap of the prefix cache (`prefix_cache_mb`).
pub const DEFAULT_PREFIX_CACHE_MB: usize = 1024;

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced one of its end-of-sequence tokens.
    Eos,
    /// `max_new_tokens` were produced.
    MaxTokens,
    /// The model's context window is full.
    ContextFull,
    /// The answer's grammar is complete (structured output).
    Complete,
}

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids, without the stop token.
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache instead of a forward pass.
    pub reused_tokens: usize,
    pub stop: StopReason,
    /// Time spent on the prompt (prefill) and on the generated tokens (decode).
    pub prefill_time: Duration,
    pub decode_time: Duration,
    /// Model version that produced this (see [`InferenceEngine::swap_model`]).
    pub model_version: u64,
}

/// A model as the engine runs it.
pub enum EngineModel {
    Batched(Box<dyn BatchLm>),
    Single(Box<dyn CausalLm>),
}

impl From<Box<dyn CausalLm>> for EngineModel {
    fn from(m: Box<dyn CausalLm>) -> Self {
        EngineModel::Single(m)
    }
}

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Most sequences decoded together; more requests wait for a free place.
    pub max_batch: usize,
    /// Memory cap of the prefix cache; 0 turns it off.
    pub prefix_cache_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { max_batch: DEFAULT_MAX_BATCH, prefix_cache_bytes: DEFAULT_PREFIX_CACHE_MB << 20 }
    }
}

/// Counters of the engine since it started (for the ledger, `bench`, and the server).
#[derive(Debug, Default)]
pub struct EngineStats {
    pub requests: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens served from the prefix cache.
    pub reused_tokens: AtomicU64,
    /// Requests that reused a cached prefix.
    pub prefix_hits: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Decode steps, and sequences summed over them (their ratio is the mean batch size).
    pub decode_steps: AtomicU64,
    pub decode_rows: AtomicU64,
    /// Prefix cache size now and at most.
    pub cache_bytes: AtomicU64,
    pub peak_cache_bytes: AtomicU64,
    /// Requests dropped because their caller went away.
    pub cancelled: AtomicU64,
}

struct Request {
    prompt: Vec<u32>,
    params: SamplingParams,
    constraint: Option<Constraint>,
    reply: oneshot::Sender<Result<Generation>>,
}

enum Job {
    /// Boxed: a request carries its grammar state, large beside the other jobs.
    Generate(Box<Request>),
    Swap {
        model: EngineModel,
        version: u64,
    },
    /// Apply the adapters a slot publishes; `single` is the single-sequence LoRA model to run
    /// instead when the loaded model cannot apply them itself.
    Follow {
        slot: Arc<AdapterSlot>,
        single: Box<dyn CausalLm>,
        version: u64,
    },
}

/// Handle to the model thread. Dropping the last handle ends the thread.
pub struct InferenceEngine {
    tx: mpsc::Sender<Job>,
    version: Arc<AtomicU64>,
    stats: Arc<EngineStats>,
}

impl InferenceEngine {
    /// Start the thread with `model` and default options; `stop_ids` end a generation;
    /// `max_seq_len` is the context.
    pub fn start(model: impl Into<EngineModel>, stop_ids: Vec<u32>, max_seq_len: usize) -> Result<InferenceEngine> {
        InferenceEngine::with_options(model, stop_ids, max_seq_len, EngineOptions::default())
    }

    pub fn with_options(
        model: impl Into<EngineModel>,
        stop_ids: Vec<u32>,
        max_seq_len: usize,
        options: EngineOptions,
    ) -> Result<InferenceEngine> {
        let (tx, rx) = mpsc::channel::<Job>();
        let mut worker = Worker::new(model.into(), rx, stop_ids, max_seq_len, options);
        let (version, stats) = (worker.published_version.clone(), worker.stats.clone());
        std::thread::Builder::new()
            .name("propersim-local-llm".into())
            .spawn(move || worker.run())
            .map_err(|e| anyhow!("cannot start the model thread: {e}"))?;
        Ok(InferenceEngine { tx, version, stats })
    }

    /// Generate from `prompt` (token ids), constrained by `constraint` if given. Awaits the model
    /// thread without blocking; dropping the future cancels the request.
    pub async fn generate(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
        constraint: Option<Constraint>,
    ) -> Result<Generation> {
        let rx = self.send(prompt, params, constraint)?;
        rx.await.map_err(|_| anyhow!("the local model thread stopped during the request"))?
    }

    /// Blocking variant for non-async callers (benchmarks, CLI). Do not call from async code.
    pub fn generate_blocking(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
        constraint: Option<Constraint>,
    ) -> Result<Generation> {
        let rx = self.send(prompt, params, constraint)?;
        rx.blocking_recv().map_err(|_| anyhow!("the local model thread stopped during the request"))?
    }

    fn send(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
        constraint: Option<Constraint>,
    ) -> Result<oneshot::Receiver<Result<Generation>>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Generate(Box::new(Request { prompt, params, constraint, reply })))
            .map_err(|_| anyhow!("the local model thread has stopped"))?;
        Ok(rx)
    }

    /// Replace the model (e.g. base + a newly trained LoRA adapter). Requests sent before this
    /// call finish on the old model; later ones use the new one. `version` is reported with each
    /// generation and is part of the response-cache key.
    pub fn swap_model(&self, model: impl Into<EngineModel>, version: u64) -> Result<()> {
        self.tx
            .send(Job::Swap { model: model.into(), version })
            .map_err(|_| anyhow!("the local model thread has stopped"))
    }

    /// Apply the LoRA adapters `slot` publishes from now on (a trained assistant). A batched
    /// model applies them itself and stays batched: it adopts a newly published adapter between
    /// sequences and empties the prefix cache then. Otherwise `single` (a single-sequence model
    /// that follows the slot) replaces the model. Ordered like [`InferenceEngine::swap_model`].
    pub fn follow_adapters(&self, slot: Arc<AdapterSlot>, single: Box<dyn CausalLm>, version: u64) -> Result<()> {
        self.tx.send(Job::Follow { slot, single, version }).map_err(|_| anyhow!("the local model thread has stopped"))
    }

    /// Version of the model that the next request will use, as last requested by `swap_model`.
    pub fn model_version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }
}

/// A sequence being decoded.
struct Seq {
    kv: SeqKv,
    /// Prompt and generated tokens (the repetition penalty looks at both).
    history: Vec<u32>,
    prompt_len: usize,
    reused: usize,
    sampler: Sampler,
    constraint: Option<Constraint>,
    reply: oneshot::Sender<Result<Generation>>,
    /// What the next decode step feeds: the token sampled last, followed by the tokens the
    /// answer's grammar forces after it (a JSON key, `", "`), which thus cost no step of their own.
    next: Vec<u32>,
    prefill_time: Duration,
    decode_started: Instant,
}

/// What sampling a token led to.
enum Sampled {
    /// Feed these next.
    Continue(Vec<u32>),
    Stop(StopReason),
}

struct Worker {
    model: EngineModel,
    rx: mpsc::Receiver<Job>,
    /// Jobs received but not started, in arrival order.
    backlog: VecDeque<Job>,
    active: Vec<Seq>,
    stop_ids: Vec<u32>,
    max_seq_len: usize,
    cache: PrefixCache,
    options: EngineOptions,
    version: u64,
    published_version: Arc<AtomicU64>,
    stats: Arc<EngineStats>,
}

impl Worker {
    fn new(
        model: EngineModel,
        rx: mpsc::Receiver<Job>,
        stop_ids: Vec<u32>,
        max_seq_len: usize,
        options: EngineOptions,
    ) -> Worker {
        Worker {
            model,
            rx,
            backlog: VecDeque::new(),
            active: Vec::new(),
            stop_ids,
            max_seq_len,
            cache: PrefixCache::new(options.prefix_cache_bytes),
            options,
            version: 0,
            published_version: Arc::new(AtomicU64::new(0)),
            stats: Arc::new(EngineStats::default()),
        }
    }

    fn run(&mut self) {
        loop {
            // Wait for work when idle; otherwise take what arrived without waiting.
            if self.active.is_empty() && self.backlog.is_empty() {
                match self.rx.recv() {
                    Ok(j) => self.backlog.push_back(j),
                    Err(_) => return,
                }
            }
            while let Ok(j) = self.rx.try_recv() {
                self.backlog.push_back(j);
            }
            self.start_jobs();
            if !self.active.is_empty() {
                self.decode_step();
            }
        }
    }

    /// Start backlog jobs in order while there is room; a swap waits for the sequences in flight.
    /// The requests taken in one call start together (see [`Worker::prefill`]).
    fn start_jobs(&mut self) {
        let mut starting: Vec<Request> = Vec::new();
        while let Some(job) = self.backlog.front() {
            let busy = !self.active.is_empty() || !starting.is_empty();
            match job {
                Job::Swap { .. } | Job::Follow { .. } if busy => break,
                Job::Generate(_) if self.active.len() + starting.len() >= self.options.max_batch => break,
                _ => {}
            }
            // A newly published adapter is adopted between sequences, before the next request.
            if let (Job::Generate(_), EngineModel::Batched(m)) = (job, &mut self.model) {
                if m.adapter_pending() {
                    if busy {
                        break;
                    }
                    match m.adopt_adapter() {
                        Ok(v) => self.set_version(v),
                        Err(e) => tracing::error!("cannot apply the new adapter: {e:#}"),
                    }
                }
            }
            match self.backlog.pop_front() {
                Some(Job::Swap { model, version }) => {
                    self.model = model;
                    self.set_version(version);
                }
                Some(Job::Follow { slot, single, version }) => {
                    let batched = match &mut self.model {
                        EngineModel::Batched(m) => m.follow_adapters(slot).is_ok(),
                        EngineModel::Single(_) => false,
                    };
                    if !batched {
                        self.model = EngineModel::Single(single);
                    }
                    self.set_version(version);
                }
                Some(Job::Generate(req)) => starting.push(*req),
                None => break,
            }
        }
        self.start(starting);
    }

    fn start(&mut self, reqs: Vec<Request>) {
        let mut prompts = Vec::new();
        for req in reqs {
            if req.reply.is_closed() {
                self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            self.stats.prompt_tokens.fetch_add(req.prompt.len() as u64, Ordering::Relaxed);
            match &mut self.model {
                EngineModel::Single(m) => {
                    let Request { prompt, params, mut constraint, reply } = req;
                    let out =
                        generate(m.as_mut(), &prompt, params, constraint.as_mut(), &self.stop_ids, self.max_seq_len)
                            .map(|mut g| {
                                g.model_version = self.version;
                                g
                            });
                    if let Ok(g) = &out {
                        self.stats.generated_tokens.fetch_add(g.tokens.len() as u64, Ordering::Relaxed);
                    }
                    let _ = reply.send(out);
                }
                EngineModel::Batched(_) => match check_prompt(&req.prompt, self.max_seq_len) {
                    Ok(()) => prompts.push(req),
                    Err(e) => {
                        let _ = req.reply.send(Err(e));
                    }
                },
            }
        }
        self.prefill(prompts);
    }

    /// The prompt passes of requests that start together, each from its longest cached prefix,
    /// then their first tokens. Their passes go through the model together: one pass over the
    /// weights per block position instead of one per request, with the same bits as alone (see
    /// [`BatchLm::forward_batch`]). A prompt that shares uncached tokens with one already in the
    /// group waits for the next round, which takes them from the cache instead of computing them
    /// twice: the two candidates' checks of one dimension share everything up to the
    /// recommendation.
    fn prefill(&mut self, mut waiting: Vec<Request>) {
        while !waiting.is_empty() {
            let mut round: Vec<(Request, SeqKv, usize)> = Vec::new();
            let mut later = Vec::new();
            for req in waiting {
                // At least the last prompt token is computed: its logits start the answer.
                let most = req.prompt.len() - 1;
                let cached = self.cache.lookup(&req.prompt, most).map_or(0, |hit| hit.len);
                let shares = round
                    .iter()
                    .any(|(r, _, _)| common_prefix(&r.prompt, &req.prompt).min(most) >= cached + DEFER_MIN_SHARED);
                if shares {
                    later.push(req);
                    continue;
                }
                let EngineModel::Batched(model) = &self.model else { unreachable!("prefill runs on batched models") };
                let capacity = (req.prompt.len() + req.params.max_new_tokens + 1).min(self.max_seq_len);
                let kv = model.new_seq(capacity).and_then(|mut kv| {
                    if let Some(hit) = self.cache.lookup(&req.prompt, cached) {
                        hit.kv.copy_prefix(cached, &mut kv)?;
                    }
                    Ok(kv)
                });
                match kv {
                    Ok(kv) => round.push((req, kv, cached)),
                    Err(e) => {
                        let _ = req.reply.send(Err(e));
                    }
                }
            }
            self.prefill_round(round);
            waiting = later;
        }
    }

    /// One round of [`Worker::prefill`]: block `i` of every prompt in one forward pass.
    fn prefill_round(&mut self, mut round: Vec<(Request, SeqKv, usize)>) {
        if round.is_empty() {
            return;
        }
        let t0 = Instant::now();
        let EngineModel::Batched(model) = &mut self.model else { unreachable!("prefill runs on batched models") };
        let blocks: Vec<Vec<std::ops::Range<usize>>> =
            round.iter().map(|(r, _, reused)| prompt_blocks(*reused, r.prompt.len())).collect();
        let mut logits: Vec<Vec<f32>> = vec![Vec::new(); round.len()];
        for i in 0..blocks.iter().map(Vec::len).max().unwrap_or(0) {
            let mut fed = Vec::new();
            let mut items: Vec<(&mut SeqKv, &[u32])> = Vec::new();
            for (j, (r, kv, _)) in round.iter_mut().enumerate() {
                if let Some(b) = blocks[j].get(i) {
                    fed.push(j);
                    items.push((kv, &r.prompt[b.clone()]));
                }
            }
            match model.forward_batch(&mut items, true) {
                Ok(out) => fed.into_iter().zip(out).for_each(|(j, l)| logits[j] = l),
                Err(e) => {
                    for (r, _, _) in round {
                        let _ = r.reply.send(Err(anyhow!("the local model failed: {e:#}")));
                    }
                    return;
                }
            }
        }
        let prefill_time = t0.elapsed();
        for ((req, kv, reused), mut logits) in round.into_iter().zip(logits) {
            let Request { prompt, params, constraint, reply } = req;
            if reused > 0 {
                self.stats.prefix_hits.fetch_add(1, Ordering::Relaxed);
                self.stats.reused_tokens.fetch_add(reused as u64, Ordering::Relaxed);
            }
            // Requests that arrive together often share this prompt (the candidates of a step,
            // the evaluator's checks): keep a copy of it for them. Generated tokens are never
            // cached: decode steps compute them with the quantized weights, a prompt pass with
            // the dense ones.
            if self.options.prefix_cache_bytes > 0 && prompt.len() > reused {
                if let Ok(copy) = kv.compact(prompt.len()) {
                    self.cache.insert(prompt.clone(), copy);
                    self.note_cache();
                }
            }
            let mut seq = Seq {
                kv,
                prompt_len: prompt.len(),
                history: prompt,
                reused,
                sampler: Sampler::new(params),
                constraint,
                reply,
                next: Vec::new(),
                prefill_time,
                decode_started: Instant::now(),
            };
            match sample(&mut seq, &mut logits, &self.stop_ids, self.max_seq_len) {
                Ok(Sampled::Continue(t)) => {
                    seq.next = t;
                    self.active.push(seq);
                }
                Ok(Sampled::Stop(reason)) => self.finish(seq, reason),
                Err(e) => {
                    let _ = seq.reply.send(Err(e));
                }
            }
        }
    }

    /// One token for every sequence in flight, in one forward pass.
    fn decode_step(&mut self) {
        let before = self.active.len();
        self.active.retain(|s| !s.reply.is_closed());
        self.stats.cancelled.fetch_add((before - self.active.len()) as u64, Ordering::Relaxed);
        if self.active.is_empty() {
            return;
        }
        let EngineModel::Batched(model) = &mut self.model else { return };
        let nexts: Vec<Vec<u32>> = self.active.iter_mut().map(|s| std::mem::take(&mut s.next)).collect();
        let mut items: Vec<(&mut SeqKv, &[u32])> =
            self.active.iter_mut().zip(&nexts).map(|(s, n)| (&mut s.kv, n.as_slice())).collect();
        let result = model.forward_batch(&mut items, false);
        drop(items);
        self.stats.decode_steps.fetch_add(1, Ordering::Relaxed);
        self.stats.decode_rows.fetch_add(self.active.len() as u64, Ordering::Relaxed);
        let all_logits = match result {
            Ok(l) => l,
            Err(e) => {
                // A failed forward leaves every cache in an unknown state: fail them all.
                for s in self.active.drain(..) {
                    let _ = s.reply.send(Err(anyhow!("the local model failed: {e:#}")));
                }
                return;
            }
        };
        let mut still = Vec::with_capacity(self.active.len());
        for ((mut seq, mut logits), fed) in std::mem::take(&mut self.active).into_iter().zip(all_logits).zip(nexts) {
            seq.history.extend(fed);
            match sample(&mut seq, &mut logits, &self.stop_ids, self.max_seq_len) {
                Ok(Sampled::Continue(t)) => {
                    seq.next = t;
                    still.push(seq);
                }
                Ok(Sampled::Stop(reason)) => self.finish(seq, reason),
                Err(e) => {
                    let _ = seq.reply.send(Err(e));
                }
            }
        }
        self.active = still;
    }

    fn finish(&mut self, seq: Seq, stop: StopReason) {
        let tokens = seq.history[seq.prompt_len..].to_vec();
        self.stats.generated_tokens.fetch_add(tokens.len() as u64, Ordering::Relaxed);
        let g = Generation {
            tokens,
            prompt_tokens: seq.prompt_len,
            reused_tokens: seq.reused,
            stop,
            prefill_time: seq.prefill_time,
            decode_time: seq.decode_started.elapsed(),
            model_version: self.version,
        };
        let _ = seq.reply.send(Ok(g));
    }

    /// A new model or adapter: the cached keys and values belong to the old one.
    fn set_version(&mut self, version: u64) {
        self.version = version;
        self.cache.clear();
        self.note_cache();
        self.published_version.store(version, Ordering::SeqCst);
    }

    fn note_cache(&self) {
        let b = self.cache.bytes() as u64;
        self.stats.cache_bytes.store(b, Ordering::Relaxed);
        self.stats.peak_cache_bytes.fetch_max(b, Ordering::Relaxed);
    }
}

/// The passes of positions `start..end`: each ends at the next multiple of [`PROMPT_BLOCK`], or
/// at `end`.
fn prompt_blocks(start: usize, end: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let next = ((at / PROMPT_BLOCK + 1) * PROMPT_BLOCK).min(end);
        out.push(at..next);
        at = next;
    }
    out
}

fn check_prompt(prompt: &[u32], max_seq_len: usize) -> Result<()> {
    if prompt.is_empty() {
        return Err(anyhow!("empty prompt"));
    }
    if prompt.len() >= max_seq_len {
        return Err(anyhow!(
            "the prompt has {} tokens but the model's context holds {max_seq_len}; shorten the prompt",
            prompt.len()
        ));
    }
    Ok(())
}

/// Pick the next token of `seq` from `logits` (masked by its constraint), or say why it ends.
/// `seq.history` holds every token fed so far.
fn sample(seq: &mut Seq, logits: &mut [f32], stop_ids: &[u32], max_seq_len: usize) -> Result<Sampled> {
    let generated = seq.history.len() - seq.prompt_len;
    if let Some(c) = &seq.constraint {
        if c.is_finished() {
            return Ok(Sampled::Stop(StopReason::Complete));
        }
    }
    if generated >= seq.sampler.params().max_new_tokens {
        return Ok(Sampled::Stop(StopReason::MaxTokens));
    }
    if let Some(c) = &mut seq.constraint {
        c.mask(logits, seq.sampler.params().max_new_tokens - generated)?;
    }
    let next = seq.sampler.sample(logits, &seq.history);
    if stop_ids.contains(&next) {
        return Ok(Sampled::Stop(StopReason::Eos));
    }
    let mut feed = vec![next];
    if let Some(c) = &mut seq.constraint {
        c.commit(next)?;
        feed.extend(c.take_forced());
        if c.is_finished() {
            seq.history.extend(feed);
            return Ok(Sampled::Stop(StopReason::Complete));
        }
    }
    let end = seq.history.len() + feed.len();
    if generated + feed.len() >= seq.sampler.params().max_new_tokens {
        // The answer is long enough: nothing to feed.
        seq.history.extend(feed);
        return Ok(Sampled::Stop(StopReason::MaxTokens));
    }
    if end >= max_seq_len || end >= seq.kv.capacity() {
        seq.history.extend(feed);
        return Ok(Sampled::Stop(StopReason::ContextFull));
    }
    Ok(Sampled::Continue(feed))
}

/// One request on a single-sequence model: prefill then decode until a stop token, the token
/// limit, the context end, or (with a constraint) the end of the answer.
pub fn generate(
    model: &mut dyn CausalLm,
    prompt: &[u32],
    params: SamplingParams,
    mut constraint: Option<&mut Constraint>,
    stop_ids: &[u32],
    max_seq_len: usize,
) -> Result<Generation> {
    check_prompt(prompt, max_seq_len)?;
    model.reset();
    let t0 = Instant::now();
    let mut logits = None;
    let mut pos = 0;
    for chunk in prompt.chunks(PREFILL_CHUNK) {
        logits = Some(model.forward_last(chunk, pos)?);
        pos += chunk.len();
    }
    let mut logits = logits.ok_or_else(|| anyhow!("empty prompt"))?;
    let prefill_time = t0.elapsed();
    let t1 = Instant::now();
    let mut sampler = Sampler::new(params);
    let mut history: Vec<u32> = prompt.to_vec();
    let mut tokens = Vec::new();
    let max_new = sampler.params().max_new_tokens;
    let stop = loop {
        if constraint.as_ref().is_some_and(|c| c.is_finished()) {
            break StopReason::Complete;
        }
        if tokens.len() >= max_new {
            break StopReason::MaxTokens;
        }
        let mut l: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        if let Some(c) = constraint.as_deref_mut() {
            c.mask(&mut l, max_new - tokens.len())?;
        }
        let next = sampler.sample(&l, &history);
        if stop_ids.contains(&next) {
            break StopReason::Eos;
        }
        let mut feed = vec![next];
        if let Some(c) = constraint.as_deref_mut() {
            c.commit(next)?;
            feed.extend(c.take_forced());
        }
        tokens.extend_from_slice(&feed);
        history.extend_from_slice(&feed);
        if constraint.as_ref().is_some_and(|c| c.is_finished()) {
            break StopReason::Complete;
        }
        if pos + feed.len() >= max_seq_len {
            break StopReason::ContextFull;
        }
        logits = model.forward_last(&feed, pos)?;
        pos += feed.len();
    };
    Ok(Generation {
        tokens,
        prompt_tokens: prompt.len(),
        reused_tokens: 0,
        stop,
        prefill_time,
        decode_time: t1.elapsed(),
        model_version: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use std::sync::atomic::AtomicUsize;

    /// A tiny deterministic "model": logits favour (last token + 1) mod vocab, and token 3 is the
    /// stop token; it records its version so swaps are observable.
    struct Counter {
        vocab: usize,
        bias: u32,
    }
    impl CausalLm for Counter {
        fn forward_last(&mut self, tokens: &[u32], _pos: usize) -> candle_core::Result<Tensor> {
            let last = *tokens.last().unwrap_or(&0);
            let mut l = vec![0f32; self.vocab];
            l[((last + 1 + self.bias) as usize) % self.vocab] = 10.0;
            Tensor::new(l, &Device::Cpu)
        }
        fn reset(&mut self) {}
    }

    fn greedy(max: usize) -> SamplingParams {
        SamplingParams { temperature: 0.0, max_new_tokens: max, ..Default::default() }
    }

    #[tokio::test]
    async fn stops_at_eos_and_at_max_tokens_and_swaps_between_requests() {
        let e =
            InferenceEngine::start(Box::new(Counter { vocab: 8, bias: 0 }) as Box<dyn CausalLm>, vec![3], 64).unwrap();
        let g = e.generate(vec![0], greedy(10), None).await.unwrap();
        assert_eq!(g.tokens, vec![1, 2]);
        assert_eq!(g.stop, StopReason::Eos);
        let g = e.generate(vec![4], greedy(2), None).await.unwrap();
        assert_eq!((g.tokens.clone(), g.stop), (vec![5, 6], StopReason::MaxTokens));
        e.swap_model(Box::new(Counter { vocab: 8, bias: 1 }) as Box<dyn CausalLm>, 7).unwrap();
        let g = e.generate(vec![4], greedy(2), None).await.unwrap();
        assert_eq!((g.tokens, g.model_version), (vec![6, 0], 7));
        assert_eq!(e.model_version(), 7);
    }

    #[tokio::test]
    async fn context_limits_are_enforced() {
        let e =
            InferenceEngine::start(Box::new(Counter { vocab: 8, bias: 0 }) as Box<dyn CausalLm>, vec![3], 6).unwrap();
        assert!(e.generate(vec![0; 6], greedy(4), None).await.is_err());
        let g = e.generate(vec![4, 4, 4], greedy(10), None).await.unwrap();
        assert_eq!(g.stop, StopReason::ContextFull);
        assert!(g.prompt_tokens + g.tokens.len() <= 6);
    }

    /// A batched "model" whose next token is the sum of every token in its cache (mod 1000), so
    /// a wrongly copied prefix changes the answer; 999 is the stop token.
    struct SumModel {
        rows: Arc<AtomicUsize>,
        batches: Arc<AtomicUsize>,
    }
    impl BatchLm for SumModel {
        fn new_seq(&self, capacity: usize) -> Result<SeqKv> {
            SeqKv::new(1, 1, 1, capacity)
        }
        fn forward_batch(&mut self, items: &mut [(&mut SeqKv, &[u32])], _dense: bool) -> Result<Vec<Vec<f32>>> {
            self.batches.fetch_add(1, Ordering::SeqCst);
            let mut out = Vec::new();
            for (kv, toks) in items.iter_mut() {
                self.rows.fetch_add(toks.len(), Ordering::SeqCst);
                let start = kv.len();
                let t: Vec<f32> = toks.iter().map(|&x| x as f32).collect();
                kv.write_rows(0, start, &t, &t)?;
                kv.set_len(start + toks.len());
                // One head of one dimension: the keys lie in position order.
                let sum: f32 = kv.head(0, 0).0[..kv.len()].iter().sum();
                let mut l = vec![0f32; 1000];
                l[(sum as usize) % 1000] = 10.0;
                out.push(l);
            }
            Ok(out)
        }
        fn max_seq_len(&self) -> usize {
            4096
        }
    }

    fn sum_engine(cache_bytes: usize) -> (InferenceEngine, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let (rows, batches) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let m = SumModel { rows: rows.clone(), batches: batches.clone() };
        let opts = EngineOptions { max_batch: 8, prefix_cache_bytes: cache_bytes };
        (
            InferenceEngine::with_options(EngineModel::Batched(Box::new(m)), vec![999], 4096, opts).unwrap(),
            rows,
            batches,
        )
    }

    /// How many leading tokens [`prompts`] share: two passes and a bit.
    const SHARED: usize = 2 * PROMPT_BLOCK + 5;

    /// Six prompts sharing their first [`SHARED`] tokens, then differing.
    fn prompts() -> Vec<Vec<u32>> {
        (0..6u32).map(|i| (1..=SHARED as u32).chain([i * 7 + 1, i + 2]).collect()).collect()
    }

    #[tokio::test]
    async fn batched_answers_equal_single_answers_and_share_decode_steps() {
        let (alone, _, _) = sum_engine(0);
        let mut singles = Vec::new();
        for p in prompts() {
            singles.push(alone.generate(p, greedy(12), None).await.unwrap().tokens);
        }
        let (together, _, batches) = sum_engine(0);
        let outs =
            futures::future::join_all(prompts().into_iter().map(|p| together.generate(p, greedy(12), None))).await;
        let outs: Vec<Vec<u32>> = outs.into_iter().map(|g| g.unwrap().tokens).collect();
        assert_eq!(outs, singles);
        assert!(outs.iter().all(|t| t.len() == 12));
        let s = together.stats();
        let (steps, rows) = (s.decode_steps.load(Ordering::SeqCst), s.decode_rows.load(Ordering::SeqCst));
        assert!(rows as f64 / steps as f64 > 2.0, "sequences decoded together: {rows} rows in {steps} steps");
        assert!(batches.load(Ordering::SeqCst) < 6 * 13, "fewer forwards than one per token per request");
    }

    #[tokio::test]
    async fn prefix_cache_reuses_shared_prompts_without_changing_answers() {
        let (cold, _, _) = sum_engine(0);
        let (warm, rows, _) = sum_engine(1 << 20);
        let mut expected = Vec::new();
        for p in prompts() {
            expected.push(cold.generate(p, greedy(5), None).await.unwrap().tokens);
        }
        let mut got = Vec::new();
        let mut reused = 0;
        for p in prompts() {
            let g = warm.generate(p, greedy(5), None).await.unwrap();
            reused += g.reused_tokens;
            got.push(g.tokens);
        }
        assert_eq!(got, expected);
        // Every prompt after the first shares its first SHARED tokens with an earlier one.
        assert_eq!(reused, 5 * SHARED);
        assert_eq!(warm.stats().prefix_hits.load(Ordering::SeqCst), 5);
        let len = prompts()[0].len();
        let decoded = 6 * 5;
        assert!(
            rows.load(Ordering::SeqCst) < 6 * len + decoded - 5 * SHARED + 1,
            "cached prompt tokens were recomputed"
        );
        // The same prompt again reuses all but its last token, whose logits start the answer.
        let g = warm.generate(prompts()[2].clone(), greedy(5), None).await.unwrap();
        assert_eq!((g.reused_tokens, g.tokens.clone()), (len - 1, expected[2].clone()));
    }

    #[test]
    fn prompt_blocks_are_aligned() {
        let b = PROMPT_BLOCK;
        assert_eq!(prompt_blocks(0, 2 * b + 3), vec![0..b, b..2 * b, 2 * b..2 * b + 3]);
        assert_eq!(prompt_blocks(b, b + 1), vec![b..b + 1]);
        assert_eq!(prompt_blocks(b + 60, 2 * b + 3), vec![b + 60..2 * b, 2 * b..2 * b + 3]);
        assert_eq!(prompt_blocks(0, 5), vec![0..5]);
        assert!(prompt_blocks(3, 3).is_empty());
    }

    #[test]
    fn prompts_that_start_together_share_their_passes_and_compute_shared_tokens_once() {
        let (rows, batches) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let m = SumModel { rows: rows.clone(), batches: batches.clone() };
        let opts = EngineOptions { max_batch: 8, prefix_cache_bytes: 1 << 20 };
        let mut w = Worker::new(EngineModel::Batched(Box::new(m)), mpsc::channel().1, vec![999], 4096, opts);
        // Six prompts in the backlog at once (as the evaluator's checks arrive): started by one
        // call, deterministically, without the model thread's timing.
        let replies: Vec<_> = prompts()
            .into_iter()
            .map(|prompt| {
                let (reply, rx) = oneshot::channel();
                w.backlog.push_back(Job::Generate(Box::new(Request {
                    prompt,
                    params: greedy(5),
                    constraint: None,
                    reply,
                })));
                rx
            })
            .collect();
        w.start_jobs();
        let prompt_passes = batches.load(Ordering::SeqCst);
        let prompt_rows = rows.load(Ordering::SeqCst);
        while !w.active.is_empty() {
            w.decode_step();
        }
        let got: Vec<Generation> = replies.into_iter().map(|mut rx| rx.try_recv().unwrap().unwrap()).collect();
        // The first prompt's three passes, then the other five together: their shared tokens
        // come from the cache the first filled, their differing tails in one pass.
        assert_eq!(prompt_passes, 3 + 1);
        let len = prompts()[0].len();
        assert_eq!(prompt_rows, len + 5 * (len - SHARED));
        assert_eq!(
            got.iter().map(|g| g.reused_tokens).collect::<Vec<_>>(),
            [0, SHARED, SHARED, SHARED, SHARED, SHARED]
        );
        // And the answers are those of the prompts computed alone and cold.
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (alone, _, _) = sum_engine(0);
        for (p, g) in prompts().into_iter().zip(&got) {
            assert_eq!(rt.block_on(alone.generate(p, greedy(5), None)).unwrap().tokens, g.tokens);
        }
    }

    #[tokio::test]
    async fn a_dropped_request_is_cancelled_and_the_engine_goes_on() {
        let (e, rows, _) = sum_engine(0);
        // The caller goes away once the engine is decoding its request, well before the 4,000
        // tokens are done (a fixed 50 ms was not: a release build finishes them sooner).
        let mut long = Box::pin(e.generate(vec![1, 2, 3], greedy(4000), None));
        while rows.load(Ordering::SeqCst) < 8 {
            assert!(tokio::time::timeout(Duration::from_millis(1), &mut long).await.is_err(), "it finished");
        }
        drop(long);
        let g = e.generate(vec![5], greedy(3), None).await.unwrap();
        assert_eq!(g.tokens.len(), 3);
        assert_eq!(e.stats().cancelled.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn swaps_wait_for_sequences_in_flight_and_empty_the_prefix_cache() {
        let (e, _, _) = sum_engine(1 << 20);
        let first = e.generate(prompts()[0].clone(), greedy(30), None);
        let (rows, batches) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (g, ()) = tokio::join!(first, async {
            tokio::task::yield_now().await;
            e.swap_model(EngineModel::Batched(Box::new(SumModel { rows, batches })), 9).unwrap();
        });
        let g = g.unwrap();
        assert_eq!((g.model_version, g.tokens.len()), (0, 30));
        let after = e.generate(prompts()[0].clone(), greedy(3), None).await.unwrap();
        assert_eq!((after.model_version, after.reused_tokens), (9, 0));
    }
}
