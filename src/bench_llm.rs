//! Local LLM speed: prompt processing (prefill) and generation (decode) tokens per second for a
//! GGUF model under each weight load mode. Speed is reported, never asserted.

use std::fmt;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use crate::llm::local::{
    ChatTemplate, EngineOptions, InferenceEngine, LoadMode, QuantizedLm, SamplingParams, Tokenizer,
};
use crate::llm::Message;

/// Prompt length in tokens (about one assistant-step prompt of the simulation).
pub const BENCH_PROMPT_TOKENS: usize = 256;
/// Tokens generated per run.
pub const BENCH_GEN_TOKENS: usize = 64;
/// Runs per mode; the best prefill and decode rates are kept.
pub const BENCH_REPEATS: usize = 3;
/// No further repeats once a mode has used this many seconds.
const BENCH_MODE_BUDGET_S: f64 = 20.0;

/// One load mode's figures.
#[derive(Debug, Clone)]
pub struct BenchRow {
    pub mode: LoadMode,
    pub load_s: f64,
    pub prompt_tokens: usize,
    pub prefill_tok_s: f64,
    pub gen_tokens: usize,
    pub decode_tok_s: f64,
}

/// The benchmark result, printable as a table.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub model: String,
    pub threads: usize,
    pub rows: Vec<BenchRow>,
    /// [`BENCH_BATCH`] requests at once on the dual model.
    pub batched: Option<BatchRow>,
    /// The prefix cache on prompts that share a prefix, under a small memory cap.
    pub prefix: Option<PrefixRow>,
}

/// Prompts sharing a long prefix (as a step's evaluator checks do), one after another, with the
/// prefix cache capped at [`BENCH_CACHE_MB`].
#[derive(Debug, Clone)]
pub struct PrefixRow {
    pub requests: usize,
    pub prompt_tokens: usize,
    pub reused_tokens: usize,
    /// Prompt seconds of the first (cold) request and the mean of the others.
    pub cold_prompt_s: f64,
    pub warm_prompt_s: f64,
    pub peak_cache_mb: f64,
    pub cap_mb: usize,
}

/// Memory cap of the prefix-cache measurement: small, so that eviction runs.
pub const BENCH_CACHE_MB: usize = 48;

/// Requests sent together, decoded together by the engine.
pub const BENCH_BATCH: usize = 8;

/// Aggregate throughput of [`BENCH_BATCH`] concurrent requests (distinct prompts, no prefix
/// cache), from the first request sent to the last answer.
#[derive(Debug, Clone)]
pub struct BatchRow {
    pub requests: usize,
    pub wall_s: f64,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    /// Generated tokens per second of wall time, prompts included.
    pub gen_tok_s: f64,
    /// Sequences per decode step, on average.
    pub mean_batch: f64,
}

fn bench_prefix(engine: &InferenceEngine, ids: &[u32], params: &SamplingParams) -> Result<PrefixRow> {
    use std::sync::atomic::Ordering;
    let requests = 12;
    let params = SamplingParams { max_new_tokens: 8, ..params.clone() };
    let (mut prompt_tokens, mut reused_tokens, mut cold, mut warm) = (0, 0, 0.0, 0.0);
    for i in 0..requests {
        // The same body, a different tail of 24 tokens: like one check of ten on one moment.
        let mut p = ids.to_vec();
        let tail = p.len() - 24;
        p[tail..].rotate_left(i + 1);
        let g = engine.generate_blocking(p, params.clone(), None)?;
        prompt_tokens += g.prompt_tokens;
        reused_tokens += g.reused_tokens;
        if i == 0 {
            cold = g.prefill_time.as_secs_f64();
        } else {
            warm += g.prefill_time.as_secs_f64() / (requests - 1) as f64;
        }
    }
    Ok(PrefixRow {
        requests,
        prompt_tokens,
        reused_tokens,
        cold_prompt_s: cold,
        warm_prompt_s: warm,
        peak_cache_mb: engine.stats().peak_cache_bytes.load(Ordering::SeqCst) as f64 / (1 << 20) as f64,
        cap_mb: BENCH_CACHE_MB,
    })
}

fn bench_batch(engine: &InferenceEngine, ids: &[u32], params: &SamplingParams) -> Result<BatchRow> {
    use std::sync::atomic::Ordering;
    let prompts: Vec<Vec<u32>> = (0..BENCH_BATCH)
        .map(|i| {
            // Distinct prompts of the same length: rotate the body.
            let mut p = ids.to_vec();
            let body = p.len() / 2;
            p[body..].rotate_left(i * 3);
            p
        })
        .collect();
    let (steps0, rows0) =
        (engine.stats().decode_steps.load(Ordering::SeqCst), engine.stats().decode_rows.load(Ordering::SeqCst));
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let t = Instant::now();
    let outs =
        rt.block_on(futures::future::join_all(prompts.into_iter().map(|p| engine.generate(p, params.clone(), None))));
    let wall_s = t.elapsed().as_secs_f64();
    let mut gen_tokens = 0;
    let mut prompt_tokens = 0;
    for g in outs {
        let g = g?;
        gen_tokens += g.tokens.len();
        prompt_tokens += g.prompt_tokens;
    }
    let steps = engine.stats().decode_steps.load(Ordering::SeqCst) - steps0;
    let rows = engine.stats().decode_rows.load(Ordering::SeqCst) - rows0;
    Ok(BatchRow {
        requests: BENCH_BATCH,
        wall_s,
        prompt_tokens,
        gen_tokens,
        gen_tok_s: gen_tokens as f64 / wall_s.max(1e-9),
        mean_batch: rows as f64 / steps.max(1) as f64,
    })
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "local LLM benchmark: {} ({} threads)", self.model, self.threads)?;
        writeln!(f, "{:<8} {:>8} {:>14} {:>14}", "weights", "load s", "prefill tok/s", "decode tok/s")?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<8} {:>8.2} {:>14.1} {:>14.1}   ({} prompt, {} generated tokens)",
                r.mode.as_str(),
                r.load_s,
                r.prefill_tok_s,
                r.decode_tok_s,
                r.prompt_tokens,
                r.gen_tokens
            )?;
        }
        if let Some(b) = &self.batched {
            writeln!(
                f,
                "dual, {} requests at once: {:.1} generated tok/s over {:.2} s ({} prompt, {} generated tokens; {:.1} sequences per decode step)",
                b.requests, b.gen_tok_s, b.wall_s, b.prompt_tokens, b.gen_tokens, b.mean_batch
            )?;
        }
        if let Some(p) = &self.prefix {
            writeln!(
                f,
                "dual, prefix cache: {} prompts sharing all but 24 tokens: {} of {} prompt tokens reused; prompt {:.3} s cold, {:.3} s warm ({:.1}x); cache peak {:.1} MB (cap {} MB)",
                p.requests,
                p.reused_tokens,
                p.prompt_tokens,
                p.cold_prompt_s,
                p.warm_prompt_s,
                p.cold_prompt_s / p.warm_prompt_s.max(1e-9),
                p.peak_cache_mb,
                p.cap_mb
            )?;
        }
        Ok(())
    }
}

/// Benchmark every load mode on `gguf`, or only `PROPERSIM_LOCAL_WEIGHTS`'s when it is set.
pub fn bench_llm(gguf: &Path) -> Result<BenchReport> {
    match std::env::var("PROPERSIM_LOCAL_WEIGHTS") {
        Ok(s) if !s.trim().is_empty() => bench_llm_modes(gguf, &[LoadMode::parse(&s)?]),
        _ => bench_llm_modes(gguf, &LoadMode::ALL),
    }
}

/// Benchmark the given load modes: a chat prompt of about [`BENCH_PROMPT_TOKENS`] tokens, then
/// [`BENCH_GEN_TOKENS`] greedy tokens with no stop token. One warm-up call per mode first.
/// Threads: candle's default (all cores), or `RAYON_NUM_THREADS`.
pub fn bench_llm_modes(gguf: &Path, modes: &[LoadMode]) -> Result<BenchReport> {
    let meta = crate::llm::local::gguf::read_meta(gguf)?;
    let tok = Tokenizer::for_model(&meta)?;
    let tmpl = ChatTemplate::new(
        meta.chat_template.as_deref().unwrap_or(crate::llm::local::template::CHATML),
        tok.special().bos.as_ref().map(|b| b.1.as_str()),
        tok.special().eos.as_ref().map(|b| b.1.as_str()),
    )?;
    let filler = "Isabella is at the cafe counter at 9:30 am, preparing the Valentine's Day party decorations and chatting with regulars about the weekend. ";
    let mut ids = Vec::new();
    let mut body = String::new();
    while ids.len() < BENCH_PROMPT_TOKENS {
        body.push_str(filler);
        let text =
            tmpl.render(&[Message::system("You are a proactive assistant."), Message::user(body.clone())], true)?;
        ids = tok.encode(&text)?;
    }
    let mut rows = Vec::new();
    let mut batched = None;
    let mut prefix = None;
    for &mode in modes {
        let t = Instant::now();
        let (model, _) = QuantizedLm::load(gguf, mode)?;
        let load_s = t.elapsed().as_secs_f64();
        let max_seq = model.max_seq_len();
        let params = SamplingParams {
            temperature: 0.0,
            max_new_tokens: BENCH_GEN_TOKENS,
            repeat_penalty: 1.0,
            ..Default::default()
        };
        // Through the engine, as the simulation runs it (the dual model batched), with the
        // prefix cache off so that every repeat computes its whole prompt.
        let options = EngineOptions { prefix_cache_bytes: 0, ..EngineOptions::default() };
        let engine = InferenceEngine::with_options(model.into_engine_model(), Vec::new(), max_seq, options)?;
        // Warm-up: allocations, page faults, thread pools.
        engine.generate_blocking(
            ids[..16.min(ids.len())].to_vec(),
            SamplingParams { max_new_tokens: 4, ..params.clone() },
            None,
        )?;
        // Best of up to BENCH_REPEATS runs (the machine may be shared); slow modes stop early.
        let started = Instant::now();
        let mut best: Option<BenchRow> = None;
        for _ in 0..BENCH_REPEATS {
            let g = engine.generate_blocking(ids.clone(), params.clone(), None)?;
            let row = BenchRow {
                mode,
                load_s,
                prompt_tokens: g.prompt_tokens,
                prefill_tok_s: g.prompt_tokens as f64 / g.prefill_time.as_secs_f64().max(1e-9),
                gen_tokens: g.tokens.len(),
                // The first generated token comes from the prefill logits; the rest each cost a forward.
                decode_tok_s: g.tokens.len().saturating_sub(1) as f64 / g.decode_time.as_secs_f64().max(1e-9),
            };
            best = Some(match best {
                None => row,
                Some(b) => BenchRow {
                    prefill_tok_s: b.prefill_tok_s.max(row.prefill_tok_s),
                    decode_tok_s: b.decode_tok_s.max(row.decode_tok_s),
                    ..b
                },
            });
            if started.elapsed().as_secs_f64() > BENCH_MODE_BUDGET_S {
                break;
            }
        }
        rows.extend(best);
        if mode == LoadMode::Dual {
            batched = Some(bench_batch(&engine, &ids, &params)?);
            drop(engine);
            let (model, _) = QuantizedLm::load(gguf, mode)?;
            let options = EngineOptions { prefix_cache_bytes: BENCH_CACHE_MB << 20, ..EngineOptions::default() };
            let engine = InferenceEngine::with_options(model.into_engine_model(), Vec::new(), max_seq, options)?;
            prefix = Some(bench_prefix(&engine, &ids, &params)?);
        }
    }
    Ok(BenchReport {
        model: gguf.display().to_string(),
        threads: candle_core::utils::get_num_threads(),
        rows,
        batched,
        prefix,
    })
}
