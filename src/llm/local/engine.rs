//! The model thread. A local model is big, stateful (KV cache) and CPU-bound, so it lives on one
//! dedicated `std::thread`; callers send jobs over a channel and await a oneshot reply. Async
//! callers never block a tokio worker, and jobs run one at a time in arrival order, which also
//! makes a model swap atomic between two requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use tokio::sync::oneshot;

use super::sampler::{Sampler, SamplingParams};
use crate::model::CausalLm;

/// Prompts are fed in slices of this many tokens, bounding the attention matrix's memory.
const PREFILL_CHUNK: usize = 512;

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced one of its end-of-sequence tokens.
    Eos,
    /// `max_new_tokens` were produced.
    MaxTokens,
    /// The model's context window is full.
    ContextFull,
}

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids, without the stop token.
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub stop: StopReason,
    /// Time spent on the prompt (prefill) and on the generated tokens (decode).
    pub prefill_time: Duration,
    pub decode_time: Duration,
    /// Model version that produced this (see [`Engine::swap_model`]).
    pub model_version: u64,
}

enum Job {
    Generate { prompt: Vec<u32>, params: SamplingParams, reply: oneshot::Sender<Result<Generation>> },
    Swap { model: Box<dyn CausalLm>, version: u64 },
}

/// Handle to the model thread. Dropping the last handle ends the thread.
pub struct Engine {
    tx: mpsc::Sender<Job>,
    version: Arc<AtomicU64>,
}

impl Engine {
    /// Start the thread with `model`; `stop_ids` end a generation; `max_seq_len` is the context.
    pub fn start(model: Box<dyn CausalLm>, stop_ids: Vec<u32>, max_seq_len: usize) -> Result<Engine> {
        let (tx, rx) = mpsc::channel::<Job>();
        let version = Arc::new(AtomicU64::new(0));
        let v = version.clone();
        std::thread::Builder::new()
            .name("propersim-local-llm".into())
            .spawn(move || run(model, rx, stop_ids, max_seq_len, v))
            .map_err(|e| anyhow!("cannot start the model thread: {e}"))?;
        Ok(Engine { tx, version })
    }

    /// Generate from `prompt` (token ids). Awaits the model thread without blocking.
    pub async fn generate(&self, prompt: Vec<u32>, params: SamplingParams) -> Result<Generation> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Generate { prompt, params, reply })
            .map_err(|_| anyhow!("the local model thread has stopped"))?;
        rx.await.map_err(|_| anyhow!("the local model thread stopped during the request"))?
    }

    /// Blocking variant for non-async callers (benchmarks, CLI). Do not call from async code.
    pub fn generate_blocking(&self, prompt: Vec<u32>, params: SamplingParams) -> Result<Generation> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Generate { prompt, params, reply })
            .map_err(|_| anyhow!("the local model thread has stopped"))?;
        rx.blocking_recv().map_err(|_| anyhow!("the local model thread stopped during the request"))?
    }

    /// Replace the model (e.g. base + a newly trained LoRA adapter). Requests sent before this
    /// call finish on the old model; later ones use the new one. `version` is reported with each
    /// generation and is part of the response-cache key.
    pub fn swap_model(&self, model: Box<dyn CausalLm>, version: u64) -> Result<()> {
        self.tx.send(Job::Swap { model, version }).map_err(|_| anyhow!("the local model thread has stopped"))
    }

    /// Version of the model that the next request will use, as last requested by `swap_model`.
    pub fn model_version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }
}

fn run(
    mut model: Box<dyn CausalLm>,
    rx: mpsc::Receiver<Job>,
    stop_ids: Vec<u32>,
    max_seq_len: usize,
    version: Arc<AtomicU64>,
) {
    let mut current_version = 0u64;
    while let Ok(job) = rx.recv() {
        match job {
            Job::Swap { model: m, version: v } => {
                model = m;
                current_version = v;
                version.store(v, Ordering::SeqCst);
            }
            Job::Generate { prompt, params, reply } => {
                let out = generate(model.as_mut(), &prompt, params, &stop_ids, max_seq_len).map(|mut g| {
                    g.model_version = current_version;
                    g
                });
                // The caller may have gone away (cancelled future); nothing to do then.
                let _ = reply.send(out);
            }
        }
    }
}

/// Prefill then decode until a stop token, the token limit, or the context end.
pub fn generate(
    model: &mut dyn CausalLm,
    prompt: &[u32],
    params: SamplingParams,
    stop_ids: &[u32],
    max_seq_len: usize,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(anyhow!("empty prompt"));
    }
    if prompt.len() >= max_seq_len {
        return Err(anyhow!(
            "the prompt has {} tokens but the model's context holds {max_seq_len}; shorten the prompt",
            prompt.len()
        ));
    }
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
        if tokens.len() >= max_new {
            break StopReason::MaxTokens;
        }
        let l: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        let next = sampler.sample(&l, &history);
        if stop_ids.contains(&next) {
            break StopReason::Eos;
        }
        tokens.push(next);
        history.push(next);
        if pos + 1 >= max_seq_len {
            break StopReason::ContextFull;
        }
        logits = model.forward_last(&[next], pos)?;
        pos += 1;
    };
    Ok(Generation {
        tokens,
        prompt_tokens: prompt.len(),
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
        let e = Engine::start(Box::new(Counter { vocab: 8, bias: 0 }), vec![3], 64).unwrap();
        let g = e.generate(vec![0], greedy(10)).await.unwrap();
        assert_eq!(g.tokens, vec![1, 2]);
        assert_eq!(g.stop, StopReason::Eos);
        let g = e.generate(vec![4], greedy(2)).await.unwrap();
        assert_eq!((g.tokens.clone(), g.stop), (vec![5, 6], StopReason::MaxTokens));
        e.swap_model(Box::new(Counter { vocab: 8, bias: 1 }), 7).unwrap();
        let g = e.generate(vec![4], greedy(2)).await.unwrap();
        assert_eq!((g.tokens, g.model_version), (vec![6, 0], 7));
        assert_eq!(e.model_version(), 7);
    }

    #[tokio::test]
    async fn context_limits_are_enforced() {
        let e = Engine::start(Box::new(Counter { vocab: 8, bias: 0 }), vec![3], 6).unwrap();
        assert!(e.generate(vec![0; 6], greedy(4)).await.is_err());
        let g = e.generate(vec![4, 4, 4], greedy(10)).await.unwrap();
        assert_eq!(g.stop, StopReason::ContextFull);
        assert!(g.prompt_tokens + g.tokens.len() <= 6);
    }
}
