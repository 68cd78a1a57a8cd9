//! Preference pairs in TRL's conversational format and their tokenization.
//!
//! A JSONL line is `{"prompt": [{role, content}, ...], "chosen": [{role: assistant, ...}],
//! "rejected": [...], ...extra fields}`. Lines without `prompt` (the original's records, where
//! `chosen`/`rejected` hold the whole conversation) get TRL's `extract_prompt`: the longest common
//! message prefix becomes the prompt.
//!
//! Completion tokens follow TRL: tokens(render(prompt + answer)) minus tokens(render(prompt) with
//! the generation prompt) — for ChatML that is the answer, `<|im_end|>` and the newline.
//! Truncation: the prompt keeps its last `max_prompt` tokens; if prompt + completion is still longer
//! than `max_length`, more is cut from the start (TRL's `keep_end`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::logprob::Sequence;
use crate::llm::Message;

/// Turns chat messages into model tokens (a chat template plus a tokenizer).
pub trait ChatFormatter: Send + Sync {
    /// Render messages with the model's chat template.
    fn render(&self, msgs: &[Message], add_generation_prompt: bool) -> Result<String>;
    /// Tokenize text without adding special tokens (the template already has them).
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
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
    /// TRL 0.19 appended `eos_token_id` after every completion; `None` = don't.
    pub append_eos: Option<u32>,
}

impl Default for TokenLimits {
    fn default() -> Self {
        TokenLimits { max_prompt: 2048, max_length: 2304, append_eos: None }
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
    if let Some(eos) = limits.append_eos {
        completion.push(eos);
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

    /// ChatML with a byte-level "tokenizer" (one token per byte, specials as single ids).
    struct ByteChatMl;
    impl ChatFormatter for ByteChatMl {
        fn render(&self, msgs: &[Message], gen: bool) -> Result<String> {
            let mut s = String::new();
            for m in msgs {
                s += &format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content);
            }
            if gen {
                s += "<|im_start|>assistant\n";
            }
            Ok(s)
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
    }

    #[test]
    fn completion_is_answer_plus_end_and_newline() -> Result<()> {
        let s = tokenize(&ByteChatMl, &[Message::user("hi")], &[Message::assistant("ok")], &TokenLimits::default())?;
        assert_eq!(s.completion, vec![b'o' as u32, b'k' as u32, 1001, b'\n' as u32]);
        assert_eq!(*s.prompt.last().unwrap(), b'\n' as u32);
        assert_eq!(s.prompt[0], 1000);
        Ok(())
    }

    #[test]
    fn truncation_cuts_prompt_from_the_left() -> Result<()> {
        let limits = TokenLimits { max_prompt: 10, max_length: 12, append_eos: Some(7) };
        let s = tokenize(&ByteChatMl, &[Message::user("abcdefghijklmnop")], &[Message::assistant("xyz")], &limits)?;
        // completion: x y z <end> \n eos = 6 tokens; prompt keeps its last 6.
        assert_eq!(s.completion.len(), 6);
        assert_eq!(*s.completion.last().unwrap(), 7);
        assert_eq!(s.prompt.len(), 6);
        assert_eq!(s.prompt, ByteChatMl.encode("stant\n")?);
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
