//! Structured outputs in the local engine: a task's JSON schema, compiled by llguidance into a
//! grammar over the model's tokens, masks the logits before every sampling step. The model can
//! then only write an answer that parses, and the answer ends when its JSON closes — so even a
//! 135M model answers each task on its first try, and it never spends tokens on prose around
//! the JSON.
//!
//! The grammar is compact JSON with one space after `:` and `,` (what chat models were trained
//! to write), with no free whitespace a weak model could loop on.
//!
//! The token budget is part of the constraint: a free-text field can run past `max_tokens` (a
//! 135M model writes 300-character strings of run-together words), and a cut answer does not
//! parse, costing a retry. So in its last [`CLOSE_RESERVE`] tokens the answer may only close
//! what is open (`"`, `}`, `]`) wherever the grammar allows that, and it ends complete. Inside a
//! string `}` and `]` are only more text, so there a token that starts with `"` (one that ends
//! the string) is required whenever the grammar allows one.

use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};

use super::tokenizer::Tokenizer;

/// Compiles schemas for one model's vocabulary. Built once per loaded model (the token trie
/// costs tens of milliseconds); each request gets its own [`Constraint`].
#[derive(Clone)]
pub struct Grammars {
    factory: Arc<ParserFactory>,
    /// Tokens made only of `"`, `}` and `]`: what an answer short of tokens may still write;
    /// those starting with `"` first.
    closers: Arc<Closers>,
}

/// The closing tokens, split by whether they start with `"`.
struct Closers {
    quote: Vec<u32>,
    other: Vec<u32>,
}

/// The last tokens of the budget, in which an open answer is closed (a string's `"`, then what
/// the grammar forces, such as a required key, then that key's shortest value and `}`).
pub const CLOSE_RESERVE: usize = 16;

impl Grammars {
    /// For `tokenizer`, with `n_vocab` logits per step (a model may have more logits than
    /// tokenizer entries; the extra ones are never allowed).
    pub fn new(tokenizer: &Tokenizer, n_vocab: usize) -> Result<Grammars> {
        let json = tokenizer.inner().to_string(false).map_err(|e| anyhow!("serializing the tokenizer: {e}"))?;
        let mut bt = toktrie_hf_tokenizers::ByteTokenizer::from_json_bytes(json.as_bytes())
            .context("building llguidance's view of the tokenizer")?;
        let stops = &tokenizer.special().stop_ids;
        if !stops.is_empty() {
            bt.set_eos_tokens(stops);
        }
        let n_vocab = n_vocab.max(bt.tokrx_info().vocab_size as usize);
        let env = bt.into_tok_env(Some(n_vocab))?;
        let trie = env.tok_trie();
        let (quote, other) = (0..trie.vocab_size() as u32)
            .filter(|&t| {
                let b = trie.token(t);
                !b.is_empty() && !trie.is_special_token(t) && b.iter().all(|c| matches!(c, b'"' | b'}' | b']'))
            })
            .partition(|&t| trie.token(t)[0] == b'"');
        let closers = Closers { quote, other };
        let mut factory = ParserFactory::new_simple(&env)?;
        factory.quiet();
        Ok(Grammars { factory: Arc::new(factory), closers: Arc::new(closers) })
    }

    /// A fresh constraint for one answer of `schema`.
    pub fn constraint(&self, schema: &Value) -> Result<Constraint> {
        let mut schema = schema.clone();
        if let Some(obj) = schema.as_object_mut() {
            obj.insert(
                "x-guidance".into(),
                json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
            );
        }
        let parser = self.factory.create_parser(TopLevelGrammar::from_json_schema(schema));
        let matcher = Matcher::new(parser);
        if let Some(e) = matcher.get_error() {
            return Err(anyhow!("the answer schema does not compile to a grammar: {e}"));
        }
        Ok(Constraint { matcher, closers: self.closers.clone() })
    }
}

/// The grammar state of one generation.
pub struct Constraint {
    matcher: Matcher,
    closers: Arc<Closers>,
}

impl Constraint {
    /// Set the logits of every token the grammar forbids here to -inf. When the answer is
    /// complete, only the end-of-sequence tokens remain. With `tokens_left` within
    /// [`CLOSE_RESERVE`], only closing tokens remain wherever the grammar allows one.
    pub fn mask(&mut self, logits: &mut [f32], tokens_left: usize) -> Result<()> {
        let allowed = self.matcher.compute_mask_or_eos().map_err(|e| anyhow!("grammar mask: {e}"))?;
        let ok = |set: &[u32]| -> Vec<u32> {
            set.iter().copied().filter(|&t| allowed.is_allowed(t) && (t as usize) < logits.len()).collect()
        };
        let closing = if tokens_left > CLOSE_RESERVE {
            Vec::new()
        } else {
            Some(ok(&self.closers.quote)).filter(|q| !q.is_empty()).unwrap_or_else(|| ok(&self.closers.other))
        };
        if !closing.is_empty() {
            let keep: Vec<(u32, f32)> = closing.iter().map(|&t| (t, logits[t as usize])).collect();
            logits.fill(f32::NEG_INFINITY);
            for (t, l) in keep {
                logits[t as usize] = l;
            }
            return Ok(());
        }
        for (i, l) in logits.iter_mut().enumerate() {
            if !allowed.is_allowed(i as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advance past a sampled token (never an end-of-sequence token).
    pub fn commit(&mut self, token: u32) -> Result<()> {
        self.matcher.consume_token(token).map_err(|e| anyhow!("grammar rejected token {token}: {e}"))
    }

    /// The tokens the grammar forces next (e.g. the rest of a key and `": "`), already
    /// advanced past: the engine feeds them without sampling.
    pub fn take_forced(&mut self) -> Vec<u32> {
        self.matcher.consume_ff_tokens()
    }

    /// The answer is complete and nothing more may follow.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// Whether the answer could end here (an end-of-sequence token is allowed).
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }
}
