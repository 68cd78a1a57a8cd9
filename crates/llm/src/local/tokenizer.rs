//! The model's tokenizer: `tokenizer.json` next to the model when present, otherwise built from
//! the GGUF metadata (`tokenizer.ggml.*`).
//!
//! We build the GGUF tokenizer ourselves instead of using candle's `TokenizerFromGguf` because
//! candle maps unknown pre-tokenizer names (SmolLM2's `smollm`) to GPT-2 `ByteLevel` *with* a
//! prefix space and without digit splitting, which yields ids that differ from llama.cpp and HF
//! (a spurious `Ġ` after every special token, `123` as one token). The pre-tokenizers below follow
//! llama.cpp's `llama-vocab.cpp` per `tokenizer.ggml.pre`; BPE tokenizers never get a prefix space.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::gguf::{value_u64, GgufMeta};

/// GPT-4/Qwen2-style split: words with a leading non-letter, single digits, punctuation runs,
/// newlines, spaces (from llama.cpp's `LLAMA_VOCAB_PRE_TYPE_QWEN2`).
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama-3 split: as Qwen2 but digits in groups of up to three.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token ids that end a generation, and the special strings chat templates need.
#[derive(Debug, Clone, Default)]
pub struct SpecialTokens {
    pub bos: Option<(u32, String)>,
    pub eos: Option<(u32, String)>,
    /// Every id at which generation stops (eos, eot, `<|im_end|>`, `<|endoftext|>`, ...).
    pub stop_ids: Vec<u32>,
}

/// A tokenizer plus the model's special tokens.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
    /// Where it came from (`tokenizer.json` path or `gguf metadata (pre=...)`), for messages.
    source: String,
}

/// Names used as end-of-turn markers by common chat models.
const STOP_NAMES: &[&str] =
    &["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>", "</s>"];

impl Tokenizer {
    /// `tokenizer.json` in the model's folder if there is one, else the GGUF metadata.
    pub fn for_model(meta: &GgufMeta) -> Result<Tokenizer> {
        if let Some(dir) = meta.path.parent() {
            let tj = dir.join("tokenizer.json");
            if tj.is_file() {
                return Tokenizer::from_json_file(&tj, meta);
            }
        }
        Tokenizer::from_gguf(meta)
    }

    /// Load a Hugging Face `tokenizer.json`; special ids come from the GGUF metadata.
    pub fn from_json_file(path: &Path, meta: &GgufMeta) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("cannot read tokenizer {}: {e}", path.display()))?;
        let special = special_tokens(meta, |t| inner.token_to_id(t), |id| inner.id_to_token(id))?;
        Ok(Tokenizer { inner, special, source: path.display().to_string() })
    }

    /// Build a byte-level BPE tokenizer from `tokenizer.ggml.*` (model `gpt2`).
    pub fn from_gguf(meta: &GgufMeta) -> Result<Tokenizer> {
        let model = meta.get_str("tokenizer.ggml.model").unwrap_or("");
        if model != "gpt2" {
            bail!(
                "{}: tokenizer model `{model}` in the GGUF metadata is not supported (only byte-level BPE, `gpt2`); put the model's tokenizer.json next to the GGUF file",
                meta.path.display()
            );
        }
        let tokens = string_array(meta, "tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = string_array(meta, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok((a.to_string(), b.to_string())),
                None => Err(anyhow!("malformed BPE merge `{m}` in the GGUF metadata")),
            })
            .collect::<Result<_>>()?;
        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(meta.get_str("tokenizer.ggml.pre") == Some("llama-bpe"))
            .build()
            .map_err(|e| anyhow!("building the BPE model from GGUF metadata: {e}"))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = meta.get_str("tokenizer.ggml.pre").unwrap_or("default").to_string();
        let no_regex = ByteLevel::new(false, false, false);
        let pre_tok: PreTokenizerWrapper = match pre.as_str() {
            // SmolLM: every digit alone, then the GPT-2 regex, no prefix space.
            "smollm" => Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, false, true).into()]).into(),
            "qwen2" | "deepseek-r1-qwen" => {
                inner.with_normalizer(Some(NFC)).map_err(|e| anyhow!("{e}"))?;
                Sequence::new(vec![split(QWEN2_SPLIT)?.into(), no_regex.into()]).into()
            }
            "llama3" | "llama-bpe" | "smaug-bpe" | "lfm2" | "dbrx" => {
                Sequence::new(vec![split(LLAMA3_SPLIT)?.into(), no_regex.into()]).into()
            }
            // llama.cpp's default BPE pre-tokenizer is the GPT-2 regex, with no prefix space.
            _ => ByteLevel::new(false, false, true).into(),
        };
        inner.with_pre_tokenizer(Some(pre_tok));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        // Control and user-defined tokens (types 3, 4) are matched whole in text, never split.
        let types: Vec<u64> = match meta.metadata.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a.iter().map(|v| value_u64(v).unwrap_or(1)).collect(),
            _ => Vec::new(),
        };
        let mut special_ids: HashSet<u32> =
            types.iter().enumerate().filter(|(_, t)| matches!(**t, 3 | 4)).map(|(i, _)| i as u32).collect();
        for key in ["bos", "eos", "unknown", "padding", "eot", "eom"] {
            if let Some(id) = meta.get_u64(&format!("tokenizer.ggml.{key}_token_id")) {
                special_ids.insert(id as u32);
            }
        }
        let mut ids: Vec<u32> = special_ids.into_iter().filter(|i| (*i as usize) < tokens.len()).collect();
        ids.sort();
        let added: Vec<AddedToken> =
            ids.iter().map(|&i| AddedToken::from(tokens[i as usize].clone(), true).normalized(false)).collect();
        inner.add_special_tokens(added).map_err(|e| anyhow!("registering special tokens: {e}"))?;
        let special = special_tokens(meta, |t| inner.token_to_id(t), |id| inner.id_to_token(id))?;
        Ok(Tokenizer { inner, special, source: format!("gguf metadata (pre={pre})") })
    }

    /// Token ids of `text`. Special tokens written in the text (e.g. `<|im_start|>`) map to their
    /// ids; no BOS/EOS is added (chat templates write those themselves).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("tokenizing failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, with special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| anyhow!("detokenizing failed: {e}"))
    }

    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.encode(text)?.len())
    }

    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

fn split(re: &str) -> Result<Split> {
    Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| anyhow!("pre-tokenizer regex: {e}"))
}

fn string_array(meta: &GgufMeta, key: &str) -> Result<Vec<String>> {
    match meta.metadata.get(key) {
        Some(Value::Array(a)) => {
            a.iter().map(|v| v.to_string().cloned().map_err(|_| anyhow!("`{key}` holds a non-string entry"))).collect()
        }
        Some(_) => bail!("GGUF metadata `{key}` is not an array"),
        None => {
            bail!("{}: GGUF metadata lacks `{key}`; put the model's tokenizer.json next to it", meta.path.display())
        }
    }
}

/// BOS/EOS and the stop ids: the metadata's eos/eot/eom ids plus well-known end markers.
fn special_tokens(
    meta: &GgufMeta,
    to_id: impl Fn(&str) -> Option<u32>,
    to_tok: impl Fn(u32) -> Option<String>,
) -> Result<SpecialTokens> {
    let named = |key: &str| -> Option<(u32, String)> {
        let id = meta.get_u64(&format!("tokenizer.ggml.{key}_token_id"))? as u32;
        Some((id, to_tok(id)?))
    };
    let bos = named("bos");
    let eos = named("eos");
    let mut stop: Vec<u32> = Vec::new();
    for key in ["eos", "eot", "eom"] {
        if let Some((id, _)) = named(key) {
            stop.push(id);
        }
    }
    for name in STOP_NAMES {
        if let Some(id) = to_id(name) {
            stop.push(id);
        }
    }
    stop.sort();
    stop.dedup();
    if stop.is_empty() {
        bail!("{}: the model names no end-of-sequence token, so generation could not stop", meta.path.display());
    }
    Ok(SpecialTokens { bos, eos, stop_ids: stop })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_regexes_compile() {
        assert!(split(QWEN2_SPLIT).is_ok());
        assert!(split(LLAMA3_SPLIT).is_ok());
    }
}
