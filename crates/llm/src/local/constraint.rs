//! Structured outputs in the local engine: a task's JSON schema, compiled by llguidance into a
//! grammar over the model's tokens, masks the logits before every sampling step. The model can
//! then only write an answer that parses, and the answer ends when its JSON closes — so even a
//! 135M model answers each task on its first try, and it never spends tokens on prose around
//! the JSON.
//!
//! The grammar is compact JSON with one space after `:` and `,` (what chat models were trained
//! to write), with no free whitespace a weak model could loop on.

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
}

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
        let mut factory = ParserFactory::new_simple(&env)?;
        factory.quiet();
        Ok(Grammars { factory: Arc::new(factory) })
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
        Ok(Constraint { matcher })
    }
}

/// The grammar state of one generation.
pub struct Constraint {
    matcher: Matcher,
}

impl Constraint {
    /// Set the logits of every token the grammar forbids here to -inf. When the answer is
    /// complete, only the end-of-sequence tokens remain.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let allowed = self.matcher.compute_mask_or_eos().map_err(|e| anyhow!("grammar mask: {e}"))?;
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
