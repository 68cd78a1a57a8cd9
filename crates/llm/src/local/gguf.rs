//! Reading GGUF files: typed metadata, and the weights in the form that runs fastest here.
//!
//! candle's quantized llama/qwen2 loaders take a `gguf_file::Content` plus a reader. To change how
//! the weights are stored (see [`LoadMode`]) we convert every tensor once at load, write a new GGUF
//! image into memory with `gguf_file::write`, and hand that to candle's loader. This keeps candle's
//! model code untouched while letting us avoid its slow kernels: Q4_1 (the format of the SmolLM2
//! package) has only a scalar CPU kernel in candle 0.11, so running it natively is the slowest
//! choice (measured in `bench_llm`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Cursor};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// How the weight matrices are held in memory after loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoadMode {
    /// As stored in the file (e.g. Q4_1).
    Native,
    /// Re-quantized to Q8_0, which has an AVX2 kernel: fast decode, slower prefill than f32.
    Q8_0,
    /// Dequantized to f32 dense matrices: fastest prefill (gemm), slower decode, 4 bytes/weight.
    F32,
    /// Both: f32 for multi-token prompts, the GGUF's Q4_1/Q8_0 blocks (others re-quantized to
    /// Q8_0) for one-token decode steps (~5 bytes/weight).
    /// Runs our own llama/qwen2 forward (`quantized::DualModel`) instead of candle's.
    Dual,
}

impl LoadMode {
    pub const ALL: [LoadMode; 4] = [LoadMode::Native, LoadMode::Q8_0, LoadMode::F32, LoadMode::Dual];

    pub fn as_str(self) -> &'static str {
        match self {
            LoadMode::Native => "native",
            LoadMode::Q8_0 => "q8_0",
            LoadMode::F32 => "f32",
            LoadMode::Dual => "dual",
        }
    }

    pub fn parse(s: &str) -> Result<LoadMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "native" => Ok(LoadMode::Native),
            "q8_0" | "q8" => Ok(LoadMode::Q8_0),
            "f32" | "dequantize" => Ok(LoadMode::F32),
            "dual" => Ok(LoadMode::Dual),
            other => bail!("unknown weight load mode `{other}`; choose native, q8_0, f32 or dual"),
        }
    }

    /// The mode the local provider uses: `PROPERSIM_LOCAL_WEIGHTS` if set, else
    /// [`LoadMode::auto`].
    pub fn from_env_or_auto(meta: &GgufMeta) -> Result<LoadMode> {
        match std::env::var("PROPERSIM_LOCAL_WEIGHTS") {
            Ok(s) if !s.trim().is_empty() => LoadMode::parse(&s),
            _ => Ok(LoadMode::auto(meta)),
        }
    }

    /// `Dual` while the dense f32 copy fits in [`F32_BUDGET_BYTES`] (small models: fastest
    /// prefill and decode, measured in `bench_llm`), else Q8_0 (4× smaller, AVX2 kernel).
    pub fn auto(meta: &GgufMeta) -> LoadMode {
        if meta.parameter_count() * 4 <= F32_BUDGET_BYTES {
            LoadMode::Dual
        } else {
            LoadMode::Q8_0
        }
    }
}

/// Largest dense f32 weight copy [`LoadMode::auto`] accepts (2 GiB: up to ~500M parameters,
/// which covers SmolLM2-135M/360M and Qwen2-0.5B; `Dual` adds the quantized copy, ≤ 1.06
/// bytes/weight).
pub const F32_BUDGET_BYTES: u64 = 2 << 30;

/// The GGUF metadata a model loader and a tokenizer need, plus the raw key/value table.
#[derive(Debug, Clone)]
pub struct GgufMeta {
    pub path: PathBuf,
    /// `general.architecture`, e.g. `llama` or `qwen2`.
    pub architecture: String,
    pub name: Option<String>,
    pub block_count: usize,
    pub embedding_length: usize,
    pub head_count: usize,
    pub head_count_kv: usize,
    pub feed_forward_length: usize,
    pub context_length: usize,
    pub rope_freq_base: f32,
    pub rms_norm_eps: f64,
    pub vocab_size: usize,
    pub chat_template: Option<String>,
    /// Every metadata entry, for anything not typed above (tokenizer arrays included).
    pub metadata: HashMap<String, Value>,
    /// Tensor name → (shape, stored dtype).
    pub tensors: HashMap<String, (Vec<usize>, GgmlDType)>,
}

impl GgufMeta {
    fn from_content(path: &Path, ct: &gguf_file::Content) -> Result<GgufMeta> {
        let md = &ct.metadata;
        let architecture = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .with_context(|| format!("{}: no `general.architecture` in the GGUF metadata", path.display()))?;
        let key = |k: &str| format!("{architecture}.{k}");
        let get_u = |k: &str| -> Result<usize> {
            let v = md.get(&key(k)).with_context(|| format!("{}: GGUF metadata lacks `{}`", path.display(), key(k)))?;
            Ok(value_u64(v).with_context(|| format!("GGUF key `{}` is not an integer", key(k)))? as usize)
        };
        let head_count = get_u("attention.head_count")?;
        let vocab_size = match md.get("tokenizer.ggml.tokens") {
            Some(Value::Array(a)) => a.len(),
            _ => ct
                .tensor_infos
                .get("token_embd.weight")
                .map(|t| t.shape.dims().iter().copied().max().unwrap_or(0))
                .unwrap_or(0),
        };
        Ok(GgufMeta {
            path: path.to_path_buf(),
            name: md.get("general.name").and_then(|v| v.to_string().ok()).cloned(),
            block_count: get_u("block_count")?,
            embedding_length: get_u("embedding_length")?,
            head_count,
            head_count_kv: get_u("attention.head_count_kv").unwrap_or(head_count),
            feed_forward_length: get_u("feed_forward_length").unwrap_or(0),
            context_length: get_u("context_length").unwrap_or(2048),
            rope_freq_base: md.get(&key("rope.freq_base")).and_then(|v| v.to_f32().ok()).unwrap_or(10_000.0),
            rms_norm_eps: md.get(&key("attention.layer_norm_rms_epsilon")).and_then(|v| v.to_f32().ok()).unwrap_or(1e-5)
                as f64,
            vocab_size,
            chat_template: md.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned(),
            tensors: ct
                .tensor_infos
                .iter()
                .map(|(n, t)| (n.clone(), (t.shape.dims().to_vec(), t.ggml_dtype)))
                .collect(),
            metadata: md.clone(),
            architecture,
        })
    }

    /// Number of weights in the file's tensors.
    pub fn parameter_count(&self) -> u64 {
        self.tensors.values().map(|(d, _)| d.iter().product::<usize>() as u64).sum()
    }

    /// A metadata string, if present.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(|v| v.to_string().ok()).map(|s| s.as_str())
    }

    /// A metadata integer (any integer width), if present.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.metadata.get(key).and_then(value_u64)
    }
}

/// Any GGUF integer value as u64 (token ids are stored as u32 or i32 depending on the writer).
pub fn value_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(*x as u64),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::U16(x) => Some(*x as u64),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::U32(x) => Some(*x as u64),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::U64(x) => Some(*x),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    }
}

/// Open a GGUF file and read its header.
pub fn open(path: &Path) -> Result<(gguf_file::Content, BufReader<File>)> {
    let f = File::open(path).with_context(|| format!("cannot open GGUF model {}", path.display()))?;
    let mut r = BufReader::new(f);
    let ct =
        gguf_file::Content::read(&mut r).with_context(|| format!("{} is not a readable GGUF file", path.display()))?;
    Ok((ct, r))
}

/// Read only the metadata of a GGUF file.
pub fn read_meta(path: &Path) -> Result<GgufMeta> {
    let (ct, _) = open(path)?;
    GgufMeta::from_content(path, &ct)
}

/// A GGUF image whose weights are stored as `mode` asks, ready for candle's model loaders.
pub struct Prepared {
    pub meta: GgufMeta,
    pub content: gguf_file::Content,
    pub reader: Cursor<Vec<u8>>,
}

/// Which tensors are matrices that go through a matmul (and so benefit from a faster format).
fn is_matmul_weight(name: &str, dims: &[usize]) -> bool {
    dims.len() == 2 && name.ends_with(".weight") && !name.contains("norm")
}

/// Load a GGUF file and convert its matmul weights to `mode`. Norm vectors and other small
/// tensors keep their stored type. Rows whose length is not a multiple of the Q8_0 block (32)
/// stay as stored.
pub fn prepare(path: &Path, mode: LoadMode) -> Result<Prepared> {
    let (ct, mut reader) = open(path)?;
    let meta = GgufMeta::from_content(path, &ct)?;
    let dev = Device::Cpu;
    let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let qt = ct.tensor(&mut reader, name, &dev).with_context(|| format!("reading tensor {name}"))?;
        let dims = qt.shape().dims().to_vec();
        let converted = match mode {
            LoadMode::Native | LoadMode::Dual => qt,
            _ if !is_matmul_weight(name, &dims) => qt,
            LoadMode::Q8_0 => {
                let target = GgmlDType::Q8_0;
                if qt.dtype() == target || dims.last().copied().unwrap_or(0) % target.block_size() != 0 {
                    qt
                } else {
                    let w = qt.dequantize(&dev)?;
                    QTensor::quantize(&w, target).with_context(|| format!("re-quantizing {name} to Q8_0"))?
                }
            }
            LoadMode::F32 => {
                if qt.dtype() == GgmlDType::F32 {
                    qt
                } else {
                    let w = qt.dequantize(&dev)?;
                    QTensor::quantize(&w, GgmlDType::F32)?
                }
            }
        };
        tensors.push((name.clone(), converted));
    }
    let md: Vec<(&str, &Value)> = ct.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tr: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut buf = Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &md, &tr).context("re-encoding the converted GGUF image")?;
    drop(tensors);
    buf.set_position(0);
    let content = gguf_file::Content::read(&mut buf).context("reading back the converted GGUF image")?;
    Ok(Prepared { meta, content, reader: buf })
}

/// Every tensor of a GGUF file dequantized to f32, keyed by its GGUF name
/// (`token_embd.weight`, `blk.0.attn_q.weight`, ...). Note GGUF llama q/k rows are permuted for
/// interleaved RoPE (use `rope_i`). For training code that builds its own differentiable model.
pub fn load_dequantized(path: &Path) -> Result<(GgufMeta, HashMap<String, Tensor>)> {
    let (ct, mut reader) = open(path)?;
    let meta = GgufMeta::from_content(path, &ct)?;
    let dev = Device::Cpu;
    let mut out = HashMap::with_capacity(ct.tensor_infos.len());
    for name in ct.tensor_infos.keys() {
        let qt = ct.tensor(&mut reader, name, &dev).with_context(|| format!("reading tensor {name}"))?;
        out.insert(name.clone(), qt.dequantize(&dev)?);
    }
    Ok((meta, out))
}
