//! Local LLM speed: prompt processing (prefill) and generation (decode) tokens per second for a
//! GGUF model under each weight load mode. Speed is reported, never asserted.

use std::fmt;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use crate::llm::local::engine::generate;
use crate::llm::local::{ChatTemplate, LoadMode, QuantizedLm, SamplingParams, Tokenizer};
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
        Ok(())
    }
}

/// Benchmark every load mode on `gguf`.
pub fn bench_llm(gguf: &Path) -> Result<BenchReport> {
    bench_llm_modes(gguf, &LoadMode::ALL)
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
    for &mode in modes {
        let t = Instant::now();
        let (mut model, _) = QuantizedLm::load(gguf, mode)?;
        let load_s = t.elapsed().as_secs_f64();
        let max_seq = model.max_seq_len();
        let params = SamplingParams {
            temperature: 0.0,
            max_new_tokens: BENCH_GEN_TOKENS,
            repeat_penalty: 1.0,
            ..Default::default()
        };
        // Warm-up: allocations, page faults, thread pools.
        generate(
            &mut model,
            &ids[..16.min(ids.len())],
            SamplingParams { max_new_tokens: 4, ..params.clone() },
            None,
            &[],
            max_seq,
        )?;
        // Best of up to BENCH_REPEATS runs (the machine may be shared); slow modes stop early.
        let started = Instant::now();
        let mut best: Option<BenchRow> = None;
        for _ in 0..BENCH_REPEATS {
            let g = generate(&mut model, &ids, params.clone(), None, &[], max_seq)?;
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
    }
    Ok(BenchReport { model: gguf.display().to_string(), threads: candle_core::utils::get_num_threads(), rows })
}
