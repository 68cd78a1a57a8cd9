//! Preference pairs in TRL's conversational format and their tokenization.
//!
//! A JSONL line is `{"prompt": [{role, content}, ...], "chosen": [{role: assistant, ...}],
//! "rejected": [...], ...extra fields}`. Lines without `prompt` (the original's records, where
//! `chosen`/`rejected` hold the whole conversation) get TRL's `extract_prompt`: the longest common
//! message prefix becomes the prompt.
//!
//! Completion tokens follow TRL: tokens(render(prompt + answer)) minus tokens(render(prompt) with
//! the generation prompt) — for ChatML that is the answer, `<|im_end|>` and the newline — then the
//! tokenizer's EOS, which TRL 0.19 appends: its DPO tokenization after every completion, its KTO
//! tokenization when the completion does not already end with it ([`AppendEos`]).
//! Truncation: the prompt keeps its last `max_prompt` tokens; if prompt + completion is still longer
//! than `max_length`, more is cut from the start (TRL's `keep_end`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::logprob::Sequence;
pub use crate::llm::ChatFormatter;
use crate::llm::Message;

/// Whether the tokenizer's EOS follows a completion (TRL 0.19 tokenization).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppendEos {
    /// Nothing is appended.
    Never,
    /// After every completion, even one the chat template already ended with an end-of-turn
    /// token (`DPOTrainer.tokenize_row`; Llama-3's `<|eot_id|>` is then followed by an EOS).
    Always,
    /// Unless the completion's last token already is the EOS (`KTOTrainer`'s `_process_tokens`).
    IfMissing,
}

/// One preference record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    #[serde(default)]
    pub prompt: Vec<Message>,
    pub chosen: Vec<Message>,
    pub rejected: Vec<Message>,
    /// Any other fields (`score`, ...), kept so files round-trip.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl PreferencePair {
    /// TRL's `extract_prompt` when `prompt` is empty: move the common prefix of chosen and
    /// rejected into the prompt.
    pub fn normalized(mut self) -> Result<PreferencePair> {
        if self.prompt.is_empty() {
            let n = self.chosen.iter().zip(&self.rejected).take_while(|(a, b)| a == b).count();
            self.prompt = self.chosen[..n].to_vec();
            self.chosen.drain(..n);
            self.rejected.drain(..n);
        }
        if self.prompt.is_empty() {
            bail!("the pair has no prompt");
        }
        if self.chosen.is_empty() || self.rejected.is_empty() {
            bail!("the pair has an empty chosen or rejected completion");
        }
        Ok(self)
    }
}

/// Read preference pairs from a JSONL file (blank lines skipped; errors name the line).
pub fn read_pairs(path: &Path) -> Result<Vec<PreferencePair>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_pairs(&text).with_context(|| format!("in {}", path.display()))
}

pub fn parse_pairs(text: &str) -> Result<Vec<PreferencePair>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let p: PreferencePair =
            serde_json::from_str(line).with_context(|| format!("line {}: not a preference pair", i + 1))?;
        out.push(p.normalized().with_context(|| format!("line {}", i + 1))?);
    }
    Ok(out)
}

/// Token budgets (the original: prompt 2048, total 2304).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLimits {
    pub max_prompt: usize,
    pub max_length: usize,
    /// Whether the formatter's EOS id follows each completion (DPO: always, as TRL 0.19).
    pub append_eos: AppendEos,
}

impl Default for TokenLimits {
    fn default() -> Self {
        TokenLimits { max_prompt: 2048, max_length: 2304, append_eos: AppendEos::Always }
    }
}

/// Tokenize prompt + answer into a [`Sequence`] with truncation applied.
pub fn tokenize(
    fmt: &dyn ChatFormatter,
    prompt: &[Message],
    answer: &[Message],
    limits: &TokenLimits,
) -> Result<Sequence> {
    let prompt_text = fmt.render(prompt, true)?;
    let mut all = prompt.to_vec();
    all.extend_from_slice(answer);
    let full_text = fmt.render(&all, false)?;
    let prompt_ids = fmt.encode(&prompt_text)?;
    let full_ids = fmt.encode(&full_text)?;
    let mut completion = if full_ids.len() > prompt_ids.len() && full_ids[..prompt_ids.len()] == prompt_ids[..] {
        full_ids[prompt_ids.len()..].to_vec()
    } else if let Some(rest) = full_text.strip_prefix(&prompt_text) {
        // A token merged across the boundary: fall back to TRL's string difference.
        fmt.encode(rest)?
    } else {
        bail!("the chat template's rendering of prompt + answer does not start with the rendered prompt");
    };
    if let Some(eos) = fmt.eos_id() {
        match limits.append_eos {
            AppendEos::Always => completion.push(eos),
            AppendEos::IfMissing if completion.last() != Some(&eos) => completion.push(eos),
            _ => {}
        }
    }
    if completion.is_empty() {
        bail!("the completion has no tokens");
    }
    let mut prompt_ids = prompt_ids;
    if prompt_ids.len() > limits.max_prompt {
        prompt_ids.drain(..prompt_ids.len() - limits.max_prompt);
    }
    let total = prompt_ids.len() + completion.len();
    if total > limits.max_length {
        let mut cut = total - limits.max_length;
        // Keep at least one prompt token: it is what predicts the first completion token.
        let from_prompt = cut.min(prompt_ids.len().saturating_sub(1));
        prompt_ids.drain(..from_prompt);
        cut -= from_prompt;
        if cut > 0 {
            completion.drain(..cut.min(completion.len().saturating_sub(1)));
        }
    }
    if prompt_ids.is_empty() {
        bail!("the prompt renders to no tokens");
    }
    Ok(Sequence { prompt: prompt_ids, completion })
}

/// A tokenized preference pair (same prompt tokens on both sides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPair {
    pub chosen: Sequence,
    pub rejected: Sequence,
}

pub fn tokenize_pair(fmt: &dyn ChatFormatter, pair: &PreferencePair, limits: &TokenLimits) -> Result<TokenizedPair> {
    Ok(TokenizedPair {
        chosen: tokenize(fmt, &pair.prompt, &pair.chosen, limits).context("tokenizing the chosen side")?,
        rejected: tokenize(fmt, &pair.prompt, &pair.rejected, limits).context("tokenizing the rejected side")?,
    })
}

/// The text of a completion (its messages' contents joined), used by KTO's filter.
pub fn completion_text(msgs: &[Message]) -> String {
    msgs.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ChatML with a byte-level "tokenizer" (one token per byte, specials as single ids), and
    /// the EOS id a real tokenizer has, if given.
    struct ByteChatMl {
        eos: Option<u32>,
    }
    const CHATML: ByteChatMl = ByteChatMl { eos: None };
    const CHATML_EOS: ByteChatMl = ByteChatMl { eos: Some(7) };
    impl ChatFormatter for ByteChatMl {
        fn render(&self, msgs: &[Message], gen: bool) -> Result<String> {
            let turns: String =
                msgs.iter().map(|m| format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content)).collect();
            Ok(if gen { turns + "<|im_start|>assistant\n" } else { turns })
        }
        fn encode(&self, text: &str) -> Result<Vec<u32>> {
            let mut out = Vec::new();
            let mut rest = text;
            while !rest.is_empty() {
                if let Some(r) = rest.strip_prefix("<|im_start|>") {
                    out.push(1000);
                    rest = r;
                } else if let Some(r) = rest.strip_prefix("<|im_end|>") {
                    out.push(1001);
                    rest = r;
                } else {
                    out.push(rest.as_bytes()[0] as u32);
                    rest = &rest[1..];
                }
            }
            Ok(out)
        }
        fn eos_id(&self) -> Option<u32> {
            self.eos
        }
    }

    #[test]
    fn completion_is_answer_plus_end_and_newline() -> Result<()> {
        let s = tokenize(&CHATML, &[Message::user("hi")], &[Message::assistant("ok")], &TokenLimits::default())?;
        assert_eq!(s.completion, vec![b'o' as u32, b'k' as u32, 1001, b'\n' as u32]);
        assert_eq!(*s.prompt.last().unwrap(), b'\n' as u32);
        assert_eq!(s.prompt[0], 1000);
        Ok(())
    }

    #[test]
    fn completions_end_with_eos_as_trl_tokenizes_them() -> Result<()> {
        let (p, a) = ([Message::user("hi")], [Message::assistant("ok")]);
        let end = |mode| -> Result<Vec<u32>> {
            let limits = TokenLimits { append_eos: mode, ..TokenLimits::default() };
            Ok(tokenize(&CHATML_EOS, &p, &a, &limits)?.completion)
        };
        let (o, k, nl) = (b'o' as u32, b'k' as u32, b'\n' as u32);
        // DPO (the default): the template's end of turn, its newline, then the EOS.
        assert_eq!(TokenLimits::default().append_eos, AppendEos::Always);
        assert_eq!(end(AppendEos::Always)?, vec![o, k, 1001, nl, 7]);
        assert_eq!(end(AppendEos::IfMissing)?, vec![o, k, 1001, nl, 7]);
        assert_eq!(end(AppendEos::Never)?, vec![o, k, 1001, nl]);
        // A completion that already ends with the EOS: DPO adds another, KTO does not.
        let ends_in_eos = [Message::assistant("ok\u{7}")];
        let tok = |mode| -> Result<Vec<u32>> {
            let mut limits = TokenLimits { append_eos: mode, ..TokenLimits::default() };
            limits.max_length = 100;
            struct NoEnd;
            impl ChatFormatter for NoEnd {
                fn render(&self, msgs: &[Message], gen: bool) -> Result<String> {
                    let mut s: String = msgs.iter().map(|m| m.content.clone()).collect::<Vec<_>>().join("|");
                    if gen {
                        s.push('|');
                    }
                    Ok(s)
                }
                fn encode(&self, text: &str) -> Result<Vec<u32>> {
                    Ok(text.bytes().map(u32::from).collect())
                }
                fn eos_id(&self) -> Option<u32> {
                    Some(7)
                }
            }
            Ok(tokenize(&NoEnd, &p, &ends_in_eos, &limits)?.completion)
        };
        assert_eq!(tok(AppendEos::Always)?, vec![o, k, 7, 7]);
        assert_eq!(tok(AppendEos::IfMissing)?, vec![o, k, 7]);
        // The training configurations: DPO always, KTO if missing.
        assert_eq!(crate::TrainConfig::dpo().limits.append_eos, AppendEos::Always);
        assert_eq!(crate::TrainConfig::kto().limits.append_eos, AppendEos::IfMissing);
        Ok(())
    }

    #[test]
    fn truncation_cuts_prompt_from_the_left() -> Result<()> {
        let limits = TokenLimits { max_prompt: 10, max_length: 12, append_eos: AppendEos::Always };
        let s = tokenize(&CHATML_EOS, &[Message::user("abcdefghijklmnop")], &[Message::assistant("xyz")], &limits)?;
        // completion: x y z <end> \n eos = 6 tokens; prompt keeps its last 6.
        assert_eq!(s.completion.len(), 6);
        assert_eq!(*s.completion.last().unwrap(), 7);
        assert_eq!(s.prompt.len(), 6);
        assert_eq!(s.prompt, CHATML.encode("stant\n")?);
        Ok(())
    }

    #[test]
    fn implicit_prompt_is_extracted_and_extra_fields_kept() -> Result<()> {
        let line = r#"{"chosen":[{"role":"system","content":"s"},{"role":"user","content":"u"},{"role":"assistant","content":"a"}],"rejected":[{"role":"system","content":"s"},{"role":"user","content":"u"},{"role":"assistant","content":"b"}],"score":3.0}"#;
        let p = parse_pairs(line)?;
        assert_eq!(p[0].prompt.len(), 2);
        assert_eq!(p[0].chosen, vec![Message::assistant("a")]);
        assert_eq!(p[0].extra["score"], serde_json::json!(3.0));
        assert!(parse_pairs("{\"chosen\": 3}").is_err());
        Ok(())
    }
}
