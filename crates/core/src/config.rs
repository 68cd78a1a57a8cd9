//! Typed configuration: the original's 16 `utils.py` settings, per-role model settings, and the
//! folders. Layering is file (`propersim.toml`) < environment (`PROPERSIM_*`) < CLI flags; the CLI
//! layer is applied by `main.rs`, which owns clap.
//!
//! Every choice the original made with a substring test on `TRAIN_MODE` is an enum here; the
//! original label is still derived (`train_mode_label`) because output names and users rely on it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Error for a bad configuration value: names the key and what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config key `{key}`: `{value}` is not allowed; choose one of: {allowed}")]
    BadValue { key: String, value: String, allowed: String },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error(
        "[roles.{role}] train_base: only an assistant served by vLLM (provider = \"openai\" with its base_url) \
         trains on a separate base; role `{role}` has provider `{provider}`. A local assistant trains its own \
         model: remove train_base"
    )]
    TrainBase { role: String, provider: String },
    #[error("unknown [sim] setting `{key}`; the settable keys are: {allowed}")]
    UnknownKey { key: String, allowed: String },
    #[error(
        "{which} provider {provider} but name{s} no model. Name one per role in the config file \
         (propersim.toml), e.g. [roles.assistant] model = \"gpt-4o-mini\" (an API's model name; for the \
         embedding role e.g. \"text-embedding-3-small\"), or pick another provider (--provider local or scripted)",
        s = if roles.len() == 1 { "s" } else { "" },
        which = if roles.len() == 1 {
            format!("role `{}` uses", roles[0])
        } else {
            format!("roles {} use", roles.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", "))
        }
    )]
    NoModel { provider: String, roles: Vec<String> },
    #[error(
        "daily_mmlu needs mmlu_path: a JSONL file of MMLU questions (subject, question, choices, answer); \
         set it in [sim] (the repository's data/mmlu.jsonl holds the original's 500) or turn daily_mmlu off"
    )]
    NoMmlu,
    #[error(
        "[sim] mmlu_path `{path}` is not a readable file (a relative path is read from the working \
         directory, {cwd}); run from the folder it is relative to, or give an absolute path"
    )]
    MmluMissing { path: PathBuf, cwd: String },
    #[error(
        "[sim] train_balance draws a night's pairs up to train_max_pairs, which is not set; \
         set train_max_pairs (e.g. 32) or turn train_balance off"
    )]
    BalanceWithoutCap,
}

/// Declares a string-valued enum with its config spellings (first spelling is canonical).
macro_rules! choice {
    ($(#[$m:meta])* $name:ident { $($var:ident => [$($s:literal),+]),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($var),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => choice!(@first $($s),+)),+ }
            }
            pub fn allowed() -> String {
                [$(choice!(@first $($s),+)),+].join(", ")
            }
        }
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let l = s.trim().to_ascii_lowercase();
                $( if [$($s),+].iter().any(|c| c.eq_ignore_ascii_case(&l)) { return Ok($name::$var); } )+
                Err(Self::allowed())
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> { s.serialize_str(self.as_str()) }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = StrOrNum::deserialize(d)?.0;
                s.parse().map_err(|allowed| serde::de::Error::custom(format!("`{s}` is not allowed; choose one of: {allowed}")))
            }
        }
    };
    (@first $f:literal $(, $r:literal)*) => { $f };
}

/// Accepts `30` as well as `"30"` for numeric-looking choices.
struct StrOrNum(String);
impl<'de> Deserialize<'de> for StrOrNum {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum V {
            S(String),
            I(i64),
            B(bool),
        }
        Ok(StrOrNum(match V::deserialize(d)? {
            V::S(s) => s,
            V::I(i) => i.to_string(),
            V::B(b) => b.to_string(),
        }))
    }
}

choice!(
    /// How the assistant is trained between days.
    TrainMethod { Dpo => ["dpo"], Kto => ["kto"], None => ["none", "wo_train"] });
choice!(
    /// Whether and where the assistant writes a reason next to its suggestion.
    ReasonMode { None => ["none", "noreason"], Before => ["before", "reasonleft"], After => ["after", "reasonright"] });
choice!(
/// What one interaction record in the assistant's memory holds (A = action, S = suggestion,
/// C = score, R = reason; `9C1` = C in 10% of records).
MemoryLevel {
    A => ["A"], As => ["AS"], Asc => ["ASC"], As9c1 => ["AS9C1"], As8c2 => ["AS8C2"],
    Ascr => ["ASCR"], Asc9r1 => ["ASC9R1"], Asc8r2 => ["ASC8R2"],
});
choice!(
    /// `separate`: one evaluator call per rubric dimension; `all`: one call for every dimension.
    Evaluation { Separate => ["separate", "seperate"], All => ["all"] });
choice!(
    /// Where each evaluator check's prompt puts its own part (the dimension's rubric, what to
    /// weigh, the answer format, the worked examples): `original` after the moment (memory,
    /// action, recommendation), as the original's templates; `rubric_first` before it, so that
    /// all but the moment is the same from step to step and a prefix cache (the local engine's,
    /// a provider's prompt caching) serves it.
    EvaluatorLayout { Original => ["original"], RubricFirst => ["rubric_first"] });
choice!(
    /// Probability (percent) that the first ranking candidate is forced to "No Recommendation".
    NoRecRatio { P0 => ["0", "norec0"], P30 => ["30", "norec30"], P70 => ["70", "norec70"], P100 => ["100", "norec100"] });
choice!(
    /// Which past preference pairs join each day's training set (`replay_buffer`).
    ReplayMode { Equally200 => ["equally200"], Equally400 => ["equally400"], HalfToday => ["halftoday"] });
choice!(
    /// How the frozen base weights are held in memory while training: `quantized` keeps the
    /// GGUF file's blocks and expands one matrix at a time for each use (the file's size; the
    /// numbers are the dequantized base's), `bf16` and `f32` dequantize the whole base once.
    TrainWeights { Quantized => ["quantized"], Bf16 => ["bf16"], F32 => ["f32"] });
choice!(
    /// LLM provider for one role.
    ProviderKind { Local => ["local"], OpenAi => ["openai"], Gemini => ["gemini"], Scripted => ["scripted"] });
choice!(
    /// Model roles; each has its own provider settings.
    Role { User => ["user"], Evaluator => ["evaluator"], Assistant => ["assistant"], Summarizer => ["summarizer"], Embedding => ["embedding"] });

impl NoRecRatio {
    pub fn probability(self) -> f64 {
        match self {
            NoRecRatio::P0 => 0.0,
            NoRecRatio::P30 => 0.3,
            NoRecRatio::P70 => 0.7,
            NoRecRatio::P100 => 1.0,
        }
    }
}

impl MemoryLevel {
    /// (probability of including the score, probability of including the reason) in a record.
    pub fn score_reason_probability(self) -> (f64, f64) {
        match self {
            MemoryLevel::A | MemoryLevel::As => (0.0, 0.0),
            MemoryLevel::Asc => (1.0, 0.0),
            MemoryLevel::As9c1 => (0.1, 0.0),
            MemoryLevel::As8c2 => (0.2, 0.0),
            MemoryLevel::Ascr => (1.0, 1.0),
            MemoryLevel::Asc9r1 => (1.0, 0.1),
            MemoryLevel::Asc8r2 => (1.0, 0.2),
        }
    }
    pub fn includes_suggestion(self) -> bool {
        self != MemoryLevel::A
    }
    /// The original switches its summaries to the score-aware prompt for ASC* levels.
    pub fn score_aware_summaries(self) -> bool {
        matches!(
            self,
            MemoryLevel::Asc
                | MemoryLevel::As9c1
                | MemoryLevel::As8c2
                | MemoryLevel::Ascr
                | MemoryLevel::Asc9r1
                | MemoryLevel::Asc8r2
        )
    }
}

impl ReplayMode {
    /// `equallyN`: at most N pairs drawn from all days; `None` for `halftoday`.
    pub fn size(self) -> Option<usize> {
        match self {
            ReplayMode::Equally200 => Some(200),
            ReplayMode::Equally400 => Some(400),
            ReplayMode::HalfToday => None,
        }
    }
}

/// Settings for one role's model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    pub provider: ProviderKind,
    /// Model name (API), local GGUF/folder path, or HF repo id.
    #[serde(default)]
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Name of the environment variable holding the API key (the key itself is never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Optional chat template overriding the model's own (local provider).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// Requests in flight at once for this role's provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// USD per million prompt / completion tokens, for the ledger's cost estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_prompt_per_mtok: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_completion_per_mtok: Option<f64>,
    /// Request timeout in seconds (HTTP providers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
    /// Constrain answers to each task's JSON schema (default true): llguidance in the local
    /// engine, `response_format` for OpenAI-compatible servers, `responseSchema` for Gemini.
    /// Turn it off for a server that rejects schemas; replies are then parsed and retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured: Option<bool>,
    /// Memory cap of the local engine's prefix KV cache, in MiB (default 1024; 0 turns it off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_cache_mb: Option<usize>,
    /// Cap on the total seconds one call waits between its transport retries (429 `Retry-After`,
    /// backoff); when spent, the call gives up and the task uses its fallback. Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_s: Option<f64>,
    /// Tries of a task whose reply does not parse, before its fallback. Default: the sim's
    /// `task_retries` + 1; for the assistant 5, as the original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// The assistant on a vLLM server, trained between days: a local GGUF or HF repo of the
    /// same base model the server serves. Training runs in-process on it and the server loads
    /// each day's adapter through its runtime LoRA API (`sim::training`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_base: Option<String>,
}

impl RoleConfig {
    /// Role settings that change how requests are made or costed, never what they answer: the
    /// key's variable name, limits on time and concurrency, the prefix cache (a hit is
    /// bit-identical to a cold prompt) and prices. Resuming with other values is no change
    /// (`sim::provenance`). The endpoint (`base_url`) is not among them: another server may
    /// serve another model under the same name.
    pub const OPERATIONAL: &'static [&'static str] = &[
        "api_key_env",
        "concurrency",
        "timeout_s",
        "max_wait_s",
        "prefix_cache_mb",
        "price_prompt_per_mtok",
        "price_completion_per_mtok",
    ];

    /// The same model with every sampling setting left to each request.
    pub fn without_sampling(self) -> Self {
        RoleConfig {
            temperature: None,
            top_p: None,
            top_k: None,
            max_tokens: None,
            repeat_penalty: None,
            seed: None,
            ..self
        }
    }

    pub fn scripted() -> Self {
        RoleConfig {
            provider: ProviderKind::Scripted,
            model: "scripted".into(),
            base_url: None,
            api_key_env: None,
            temperature: None,
            top_p: None,
            top_k: None,
            max_tokens: None,
            repeat_penalty: None,
            seed: None,
            chat_template: None,
            concurrency: None,
            price_prompt_per_mtok: None,
            price_completion_per_mtok: None,
            timeout_s: None,
            structured: None,
            prefix_cache_mb: None,
            max_wait_s: None,
            attempts: None,
            train_base: None,
        }
    }

    /// Whether answers are constrained to the task's schema (see `structured`).
    pub fn structured(&self) -> bool {
        self.structured.unwrap_or(true)
    }
    /// Fill what the role leaves out with the role's defaults. Only the assistant has any: the
    /// original's generation settings. On the local model (the original's Llama path,
    /// `gpt_structure.py::opensource_inference`): temperature 0.9, top-p 0.9, top-k 50,
    /// repetition penalty 1.5 over prompt and answer, 128 new tokens; on an API (its
    /// gpt-4o-mini path): temperature 0.1 and nothing else. Both paths try 5 times before
    /// falling back to "No Recommendation". Other roles keep the provider's defaults.
    pub fn with_role_defaults(mut self, role: Role) -> Self {
        if role != Role::Assistant {
            return self;
        }
        match self.provider {
            ProviderKind::Local => {
                self.temperature.get_or_insert(ASSISTANT_SAMPLING.temperature);
                self.top_p.get_or_insert(ASSISTANT_SAMPLING.top_p);
                self.top_k.get_or_insert(ASSISTANT_SAMPLING.top_k);
                self.repeat_penalty.get_or_insert(ASSISTANT_SAMPLING.repeat_penalty);
                self.max_tokens.get_or_insert(ASSISTANT_SAMPLING.max_tokens);
            }
            ProviderKind::OpenAi | ProviderKind::Gemini => {
                self.temperature.get_or_insert(ASSISTANT_API_TEMPERATURE);
            }
            ProviderKind::Scripted => {}
        }
        self.attempts.get_or_insert(ASSISTANT_SAMPLING.attempts);
        self
    }

    /// The default with no configuration: a small local instruct model (see README for why).
    pub fn default_local(role: Role) -> Self {
        let mut r = RoleConfig::scripted();
        r.provider = ProviderKind::Local;
        r.model = match role {
            Role::Embedding => DEFAULT_EMBEDDING_MODEL.into(),
            _ => DEFAULT_CHAT_MODEL.into(),
        };
        r
    }
}

/// The original assistant's generation settings on its local model (see
/// [`RoleConfig::with_role_defaults`]).
pub struct AssistantSampling {
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub repeat_penalty: f64,
    pub max_tokens: usize,
    pub attempts: u32,
}

pub const ASSISTANT_SAMPLING: AssistantSampling =
    AssistantSampling { temperature: 0.9, top_p: 0.9, top_k: 50, repeat_penalty: 1.5, max_tokens: 128, attempts: 5 };
/// The original's API assistant (gpt-4o-mini) sampled at this temperature.
pub const ASSISTANT_API_TEMPERATURE: f64 = 0.1;

/// Default chat model for every role when nothing is configured (fetched with hf-hub).
pub const DEFAULT_CHAT_MODEL: &str = "HuggingFaceTB/SmolLM2-360M-Instruct-GGUF";
pub const DEFAULT_EMBEDDING_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// The simulation settings: the original's 16 options.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SimSettings {
    /// 1. user persona seed to fork (`storage/<seed>`).
    pub fork: String,
    /// 2. sim code: the save folder under `storage/`.
    pub sim: String,
    /// 3. assistant model label (the `[roles.assistant]` table says how to reach it).
    pub assistant_model: String,
    /// 4. dpo / kto / none.
    pub train_method: TrainMethod,
    /// 5. give the assistant the user's rubric in its system prompt.
    pub persona_given: bool,
    /// 6. none / before / after.
    pub reason_mode: ReasonMode,
    /// 7. retrieve similar past interactions for the assistant's prompt.
    pub memory_retrieval: bool,
    /// 8. two candidates per step, scored and paired.
    pub ranking: bool,
    /// 9. what an assistant memory record holds.
    pub memory_level: MemoryLevel,
    /// 10. evaluator model label (the `[roles.evaluator]` table says how to reach it).
    pub evaluator_model: String,
    /// 11. separate / all.
    pub evaluation: Evaluation,
    /// Order of each evaluator prompt's parts (not the original's 14: it had one). Left out of
    /// files when `original`, so manifests written before it existed still match.
    #[serde(skip_serializing_if = "EvaluatorLayout::is_default")]
    pub evaluator_layout: EvaluatorLayout,
    /// 12. 0 / 30 / 70 / 100.
    pub forced_norec_ratio: NoRecRatio,
    /// 13. drive from a browser (true) or headless (false).
    pub visualization: bool,
    /// 14. equally200 / equally400 / halftoday.
    pub replay_buffer: ReplayMode,
    /// 15. the user rewrites low-scoring suggestions and the pair is suggestion vs revision.
    pub user_revision: bool,
    /// 16. run the MMLU check on each day's model: the base on day 1, then after each training.
    pub daily_mmlu: bool,
    /// Seed for every random choice of the engine (not the LLMs').
    pub seed: u64,
    /// Tiles a persona walks per step; default sec_per_step / 10 (one tile per 10 s).
    pub tiles_per_step: Option<usize>,
    /// Bounded retries of an LLM task before its fallback.
    pub task_retries: usize,
    /// Stop cleanly once the ledger's estimated cost passes this many USD.
    pub budget_usd: Option<f64>,
    /// Path of an MMLU dataset file (JSONL) for the daily check.
    pub mmlu_path: Option<PathBuf>,
    /// Training epochs per day (the original: 2).
    pub train_epochs: usize,
    /// Cap on the pairs trained per day after replay selection (none: all, as the original),
    /// drawn at random from the selection.
    pub train_max_pairs: Option<usize>,
    /// Draw the capped pairs from three kinds in turn: "No Recommendation" chosen, "No
    /// Recommendation" rejected, two suggestions. Needs `train_max_pairs`. Left out of files
    /// when off, so manifests written before it existed still match.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub train_balance: bool,
    /// Peak learning rate of the daily training (none: the original's 5e-5). Left out of files
    /// when unset, so manifests written before it existed still match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_lr: Option<f64>,
    /// Prompt tokens a training example keeps, its last ones (TRL's `max_prompt_length` with
    /// `keep_end`; none: the original's 2048). The end holds the moment and the newest memory;
    /// a CPU run trains several times faster on 512.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_max_prompt: Option<usize>,
    /// DPO: add this weight times the chosen answer's per-token negative log-likelihood to the
    /// loss (TRL's `rpo_alpha`; none: plain DPO, as the original). Left out of files when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_rpo_alpha: Option<f64>,
    /// How the training base's frozen weights are held (quantized / bf16 / f32). Not
    /// operational: bf16 rounds the weights, so the gradients differ slightly. The default is
    /// left out of files: it computes exactly what runs from before the setting did (f32, the
    /// same decoded weights), so their manifests and run.json still match.
    #[serde(skip_serializing_if = "TrainWeights::is_default")]
    pub train_weights: TrainWeights,
    /// Flush each step's checkpoint, movement and logs to disk (fsync) so a power loss cannot
    /// leave the checkpoint ahead of them. A kill needs no flush; costs a few ms a step on disk.
    pub durable: bool,
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            fork: "base_the_ville_persona_1".into(),
            sim: "propersim_run".into(),
            assistant_model: "llama-3.3-70b".into(),
            train_method: TrainMethod::Dpo,
            persona_given: false,
            reason_mode: ReasonMode::None,
            memory_retrieval: true,
            ranking: true,
            memory_level: MemoryLevel::As,
            evaluator_model: "gemini-2.0".into(),
            evaluation: Evaluation::Separate,
            evaluator_layout: EvaluatorLayout::Original,
            forced_norec_ratio: NoRecRatio::P0,
            visualization: false,
            replay_buffer: ReplayMode::Equally200,
            user_revision: false,
            daily_mmlu: false,
            seed: 42,
            tiles_per_step: None,
            task_retries: 3,
            budget_usd: None,
            mmlu_path: None,
            train_epochs: 2,
            train_max_pairs: None,
            train_balance: false,
            train_lr: None,
            train_max_prompt: None,
            train_rpo_alpha: None,
            train_weights: TrainWeights::Quantized,
            durable: true,
        }
    }
}

impl EvaluatorLayout {
    fn is_default(&self) -> bool {
        *self == EvaluatorLayout::Original
    }
}

impl TrainWeights {
    fn is_default(&self) -> bool {
        *self == TrainWeights::Quantized
    }
}

/// Folders the program reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    pub storage: PathBuf,
    pub seeds: Option<PathBuf>,
    pub assets: PathBuf,
    pub temp_storage: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            storage: "storage".into(),
            seeds: None,
            assets: "environment".into(),
            temp_storage: "temp_storage".into(),
        }
    }
}

/// `[web]`: limits of the web server (`serve`) on its clients.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebSettings {
    /// Seconds a client has to send a request's headers (also closes idle kept-alive
    /// connections).
    pub header_timeout_s: f64,
    /// Seconds a connection may sit with no byte moving (a stalled body or reply).
    pub idle_timeout_s: f64,
    /// Connections open at once (more get 503); default: half the open-file limit, 16–1024.
    pub max_connections: Option<usize>,
}

impl Default for WebSettings {
    fn default() -> Self {
        WebSettings { header_timeout_s: 10.0, idle_timeout_s: 60.0, max_connections: None }
    }
}

/// `[tracking]`: where runs are reported besides their own folder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrackingSettings {
    /// An MLflow tracking server (`http://127.0.0.1:5000`); unset: no tracking.
    pub mlflow_uri: Option<String>,
    /// The MLflow experiment the sims' runs go into (made when missing).
    pub experiment: String,
}

impl Default for TrackingSettings {
    fn default() -> Self {
        TrackingSettings { mlflow_uri: None, experiment: "propersim".into() }
    }
}

impl TrackingSettings {
    /// The server is reached over HTTP(S) only, and the experiment must have a name.
    fn check(&self) -> Result<(), ConfigError> {
        if let Some(uri) = &self.mlflow_uri {
            let rest = uri.strip_prefix("http://").or_else(|| uri.strip_prefix("https://"));
            if rest.is_none_or(|r| r.trim_matches('/').is_empty()) {
                return Err(bad("tracking.mlflow_uri", uri, "an http:// or https:// URL of an MLflow server"));
            }
        }
        if self.experiment.trim().is_empty() {
            return Err(bad("tracking.experiment", &self.experiment, "a non-empty MLflow experiment name"));
        }
        Ok(())
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sim: SimSettings,
    pub paths: Paths,
    pub web: WebSettings,
    pub tracking: TrackingSettings,
    /// `[roles.<role>]` tables; a missing role uses the default local model.
    pub roles: BTreeMap<String, RoleConfig>,
}

impl Config {
    /// Parse TOML text; unknown keys and bad values name the key.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config =
            toml::from_str(text).map_err(|e| ConfigError::File { path: path.to_path_buf(), message: e.to_string() })?;
        for name in cfg.roles.keys() {
            name.parse::<Role>().map_err(|allowed| ConfigError::BadValue {
                key: format!("roles.{name}"),
                value: name.clone(),
                allowed,
            })?;
        }
        cfg.tracking.check()?;
        Ok(cfg)
    }

    /// Load `path` if given (it must exist), else `propersim.toml` if present, else defaults;
    /// then apply `PROPERSIM_*` environment variables.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", p.display()))?;
                Config::from_toml(&text, p)?
            }
            None if Path::new("propersim.toml").exists() => {
                let p = Path::new("propersim.toml");
                Config::from_toml(&std::fs::read_to_string(p)?, p)?
            }
            None => Config::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        Ok(cfg)
    }

    /// Environment layer. Folder variables are `PROPERSIM_STORAGE`, `PROPERSIM_SEEDS`,
    /// `PROPERSIM_ASSETS`, `PROPERSIM_TEMP_STORAGE`; any sim setting is `PROPERSIM_<KEY>`
    /// (e.g. `PROPERSIM_TRAIN_METHOD=kto`); tracking is `PROPERSIM_MLFLOW_URI` (empty: off) and
    /// `PROPERSIM_MLFLOW_EXPERIMENT`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("PROPERSIM_STORAGE") {
            self.paths.storage = v.into();
        }
        if let Some(v) = get("PROPERSIM_SEEDS") {
            self.paths.seeds = Some(v.into());
        }
        if let Some(v) = get("PROPERSIM_ASSETS") {
            self.paths.assets = v.into();
        }
        if let Some(v) = get("PROPERSIM_TEMP_STORAGE") {
            self.paths.temp_storage = v.into();
        }
        for key in SimSettings::KEYS {
            if let Some(v) = get(&format!("PROPERSIM_{}", key.to_ascii_uppercase())) {
                self.sim.set(key, &v)?;
            }
        }
        if let Some(v) = get("PROPERSIM_MLFLOW_URI") {
            self.tracking.mlflow_uri = (!v.trim().is_empty()).then(|| v.trim().to_string());
        }
        if let Some(v) = get("PROPERSIM_MLFLOW_EXPERIMENT") {
            self.tracking.experiment = v;
        }
        self.tracking.check()
    }

    /// The settings of one role (or the default local model), with the role's defaults filled
    /// in where it leaves a setting out ([`RoleConfig::with_role_defaults`]).
    pub fn role(&self, role: Role) -> RoleConfig {
        self.role_as_written(role).with_role_defaults(role)
    }

    /// The settings of one role as configured, or the default local model, without defaults.
    fn role_as_written(&self, role: Role) -> RoleConfig {
        self.roles.get(role.as_str()).cloned().unwrap_or_else(|| RoleConfig::default_local(role))
    }

    /// `--provider scripted`: every role answers from the offline scripted brain.
    pub fn set_all_providers(&mut self, kind: ProviderKind) {
        for role in Role::ALL {
            // As written: the defaults of the old provider must not follow the role to the new.
            let mut rc = self.role_as_written(*role);
            // The default local model's name means nothing to an API: the role then has no
            // model, and `check_models` says so before any request.
            let local_default = rc.provider == ProviderKind::Local
                && (rc.model == DEFAULT_CHAT_MODEL || rc.model == DEFAULT_EMBEDDING_MODEL);
            rc.provider = kind;
            // Only an assistant on vLLM has a separate training base.
            if kind != ProviderKind::OpenAi {
                rc.train_base = None;
            }
            match kind {
                ProviderKind::Scripted => rc.model = "scripted".into(),
                ProviderKind::OpenAi | ProviderKind::Gemini if local_default => rc.model.clear(),
                _ => {}
            }
            self.roles.insert(role.as_str().to_string(), rc);
        }
    }

    /// Every role on an API (openai, gemini) must name its model; an error lists the roles that
    /// do not, per provider. `train_base` is only for the assistant on an OpenAI-compatible
    /// server (vLLM).
    pub fn check_models(&self) -> Result<(), ConfigError> {
        for kind in [ProviderKind::OpenAi, ProviderKind::Gemini] {
            let roles: Vec<String> = Role::ALL
                .iter()
                .filter(|r| {
                    let rc = self.role_as_written(**r);
                    rc.provider == kind && rc.model.trim().is_empty()
                })
                .map(|r| r.as_str().to_string())
                .collect();
            if !roles.is_empty() {
                return Err(ConfigError::NoModel { provider: kind.as_str().into(), roles });
            }
        }
        for role in Role::ALL {
            let rc = self.role_as_written(*role);
            if rc.train_base.is_some() && (*role != Role::Assistant || rc.provider != ProviderKind::OpenAi) {
                return Err(ConfigError::TrainBase { role: role.to_string(), provider: rc.provider.to_string() });
            }
        }
        Ok(())
    }

    /// The daily MMLU check's file exists, so that a run stops before it forks and not after
    /// the first step (a config's relative `mmlu_path` is read from the working directory).
    pub fn check_mmlu(&self) -> Result<(), ConfigError> {
        let rc = self.role(Role::Assistant);
        let trains = match rc.provider {
            ProviderKind::Local => true,
            ProviderKind::OpenAi => rc.train_base.is_some(),
            _ => false,
        };
        if !self.sim.daily_mmlu || self.sim.train_method == TrainMethod::None || !trains {
            return Ok(());
        }
        let path = self.sim.mmlu_path.as_ref().ok_or(ConfigError::NoMmlu)?;
        if std::fs::File::open(path).is_err() || path.is_dir() {
            let cwd = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_else(|_| "unknown".into());
            return Err(ConfigError::MmluMissing { path: path.clone(), cwd });
        }
        Ok(())
    }
}

impl Config {
    /// Training settings that only make sense together.
    pub fn check_training(&self) -> Result<(), ConfigError> {
        if self.sim.train_balance && self.sim.train_max_pairs.is_none() {
            return Err(ConfigError::BalanceWithoutCap);
        }
        Ok(())
    }
}

fn bad(key: &str, value: &str, allowed: impl Into<String>) -> ConfigError {
    ConfigError::BadValue { key: key.into(), value: value.into(), allowed: allowed.into() }
}

/// A finite number that `ok` accepts, else an error naming `key` and `allowed`.
fn finite(key: &str, v: &str, allowed: &str, ok: impl Fn(f64) -> bool) -> Result<f64, ConfigError> {
    match v.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && ok(x) => Ok(x),
        _ => Err(bad(key, v, allowed)),
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(bad(key, v, "true, false")),
    }
}

impl SimSettings {
    /// Settings that do not decide what a sim computes: its identity (`fork`, `sim`), how it is
    /// driven (`visualization`: the page or headless), and how a run is operated: `budget_usd`
    /// (raised to continue a sim that hit it) and `durable` (whether each step is flushed to
    /// disk). A sweep's sims may differ in them, and resuming a sim with others is no change
    /// (`sim::provenance`).
    pub const OPERATIONAL: &'static [&'static str] = &["fork", "sim", "visualization", "budget_usd", "durable"];

    /// Keys settable by name (environment variables and `--set key=value`).
    pub const KEYS: &'static [&'static str] = &[
        "fork",
        "sim",
        "assistant_model",
        "train_method",
        "persona_given",
        "reason_mode",
        "memory_retrieval",
        "ranking",
        "memory_level",
        "evaluator_model",
        "evaluation",
        "evaluator_layout",
        "forced_norec_ratio",
        "visualization",
        "replay_buffer",
        "user_revision",
        "daily_mmlu",
        "seed",
        "tiles_per_step",
        "task_retries",
        "budget_usd",
        "mmlu_path",
        "train_epochs",
        "train_max_pairs",
        "train_balance",
        "train_lr",
        "train_max_prompt",
        "train_rpo_alpha",
        "train_weights",
        "durable",
    ];

    /// Set one setting from text, with an error naming the key and the allowed values.
    pub fn set(&mut self, key: &str, v: &str) -> Result<(), ConfigError> {
        fn choice<T: FromStr<Err = String>>(key: &str, v: &str) -> Result<T, ConfigError> {
            v.parse::<T>().map_err(|allowed| bad(key, v, allowed))
        }
        match key {
            "fork" => self.fork = v.into(),
            "sim" => self.sim = v.into(),
            "assistant_model" => self.assistant_model = v.into(),
            "evaluator_model" => self.evaluator_model = v.into(),
            "train_method" => self.train_method = choice(key, v)?,
            "reason_mode" => self.reason_mode = choice(key, v)?,
            "memory_level" => self.memory_level = choice(key, v)?,
            "evaluation" => self.evaluation = choice(key, v)?,
            "evaluator_layout" => self.evaluator_layout = choice(key, v)?,
            "forced_norec_ratio" => self.forced_norec_ratio = choice(key, v)?,
            "replay_buffer" => self.replay_buffer = choice(key, v)?,
            "persona_given" => self.persona_given = parse_bool(key, v)?,
            "memory_retrieval" => self.memory_retrieval = parse_bool(key, v)?,
            "ranking" => self.ranking = parse_bool(key, v)?,
            "visualization" => self.visualization = parse_bool(key, v)?,
            "user_revision" => self.user_revision = parse_bool(key, v)?,
            "daily_mmlu" => self.daily_mmlu = parse_bool(key, v)?,
            "seed" => self.seed = v.trim().parse().map_err(|_| bad(key, v, "a non-negative integer"))?,
            "task_retries" => {
                self.task_retries = v.trim().parse().map_err(|_| bad(key, v, "a non-negative integer"))?
            }
            "tiles_per_step" => {
                self.tiles_per_step = Some(v.trim().parse().map_err(|_| bad(key, v, "a positive integer"))?)
            }
            "budget_usd" => self.budget_usd = Some(v.trim().parse().map_err(|_| bad(key, v, "a number of USD"))?),
            "mmlu_path" => self.mmlu_path = Some(v.into()),
            "train_epochs" => self.train_epochs = v.trim().parse().map_err(|_| bad(key, v, "a positive integer"))?,
            "train_max_pairs" => {
                self.train_max_pairs = Some(v.trim().parse().map_err(|_| bad(key, v, "a positive integer"))?)
            }
            "train_balance" => self.train_balance = parse_bool(key, v)?,
            "train_lr" => self.train_lr = Some(finite(key, v, "a positive number", |x| x > 0.0)?),
            "train_max_prompt" => {
                let n: usize = v.trim().parse().map_err(|_| bad(key, v, "a positive integer"))?;
                if n == 0 {
                    return Err(bad(key, v, "a positive integer"));
                }
                self.train_max_prompt = Some(n)
            }
            "train_rpo_alpha" => self.train_rpo_alpha = Some(finite(key, v, "a non-negative number", |x| x >= 0.0)?),
            "train_weights" => self.train_weights = choice(key, v)?,
            "durable" => self.durable = parse_bool(key, v)?,
            _ => return Err(ConfigError::UnknownKey { key: key.into(), allowed: SimSettings::KEYS.join(", ") }),
        }
        Ok(())
    }

    /// The original `TRAIN_MODE` string, built from its 14 parts exactly as `utils.py` joins them:
    /// `{AGENT_MODEL}_{TRAIN_METHOD}_{PERSONA_GIVEN}_{REASON_}_{MEMORY_RET}_{RANKING}_{AGENT_MEMORY_LEVEL}_
    /// {EVALUATOR}_{EVALUATE_SEPERATE}_{FORCE_NOREC_RATIO}_{VISUALIZATION}_{REPLAY_BUFFER}_{REC_REVISION}_{MMLU_EVAL}`.
    pub fn train_mode_label(&self) -> String {
        let parts: [&str; 14] = [
            &self.assistant_model,
            match self.train_method {
                TrainMethod::Dpo => "DPO",
                TrainMethod::Kto => "KTO",
                TrainMethod::None => "wo_train",
            },
            if self.persona_given { "givenpersona" } else { "" },
            match self.reason_mode {
                ReasonMode::None => "noreason",
                ReasonMode::Before => "reasonleft",
                ReasonMode::After => "reasonright",
            },
            if self.memory_retrieval { "ret_suggest" } else { "wo_mem_suggest" },
            if self.ranking { "ranking" } else { "" },
            self.memory_level.as_str(),
            &self.evaluator_model,
            match self.evaluation {
                Evaluation::Separate => "seperate",
                Evaluation::All => "all",
            },
            match self.forced_norec_ratio {
                NoRecRatio::P0 => "norec0",
                NoRecRatio::P30 => "norec30",
                NoRecRatio::P70 => "norec70",
                NoRecRatio::P100 => "norec100",
            },
            if self.visualization { "vis" } else { "novis" },
            self.replay_buffer.as_str(),
            if self.user_revision { "recrev" } else { "recnorev" },
            if self.daily_mmlu { "mmlueval" } else { "" },
        ];
        parts.join("_")
    }

    /// Tiles walked per step: configured, or one tile per 10 simulated seconds.
    pub fn tiles_per_step(&self, sec_per_step: u64) -> usize {
        self.tiles_per_step.unwrap_or((sec_per_step / 10).max(1) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_label_matches_original_readme() {
        assert_eq!(
            SimSettings::default().train_mode_label(),
            "llama-3.3-70b_DPO__noreason_ret_suggest_ranking_AS_gemini-2.0_seperate_norec0_novis_equally200_recnorev_"
        );
    }

    #[test]
    fn label_names_evaluation_all() {
        let s = SimSettings { evaluation: Evaluation::All, ..SimSettings::default() };
        assert_eq!(
            s.train_mode_label(),
            "llama-3.3-70b_DPO__noreason_ret_suggest_ranking_AS_gemini-2.0_all_norec0_novis_equally200_recnorev_"
        );
    }

    #[test]
    fn rpo_alpha_and_learning_rate_are_settable_and_refuse_what_is_out_of_range() {
        let mut c = Config::default();
        c.sim.set("train_rpo_alpha", "1").unwrap();
        assert_eq!(c.sim.train_rpo_alpha, Some(1.0));
        for bad in ["-0.5", "NaN", "inf", "one"] {
            let e = c.sim.set("train_rpo_alpha", bad).unwrap_err().to_string();
            assert!(e.contains("train_rpo_alpha") && e.contains("non-negative"), "{bad}: {e}");
        }
        assert_eq!(c.sim.train_rpo_alpha, Some(1.0), "a refused value leaves the setting alone");
        c.sim.set("train_rpo_alpha", "0").unwrap();
        // The learning rate goes through the same check, with zero refused too.
        c.sim.set("train_lr", "1e-4").unwrap();
        for bad in ["0", "-1e-4", "NaN", "inf", "fast"] {
            let e = c.sim.set("train_lr", bad).unwrap_err().to_string();
            assert!(e.contains("train_lr") && e.contains("positive"), "{bad}: {e}");
        }
        assert_eq!((c.sim.train_rpo_alpha, c.sim.train_lr), (Some(0.0), Some(1e-4)));
    }

    #[test]
    fn a_balanced_draw_needs_a_cap_and_is_left_out_of_files_when_off() {
        let mut c = Config::default();
        c.sim.set("train_balance", "true").unwrap();
        let e = c.check_training().unwrap_err().to_string();
        assert!(e.contains("train_max_pairs"), "{e}");
        c.sim.set("train_max_pairs", "32").unwrap();
        c.check_training().unwrap();
        assert!(serde_json::to_string(&c.sim).unwrap().contains("\"train_balance\":true"));
        let off = serde_json::to_string(&SimSettings::default()).unwrap();
        assert!(!off.contains("train_balance"), "{off}");
    }

    #[test]
    fn assistant_defaults_are_the_originals_sampling() {
        // No table: the default local model, with the original's Llama generation settings.
        let c = Config::default();
        let a = c.role(Role::Assistant);
        assert_eq!(a.provider, ProviderKind::Local);
        assert_eq!(
            (a.temperature, a.top_p, a.top_k, a.repeat_penalty, a.max_tokens, a.attempts),
            (Some(0.9), Some(0.9), Some(50), Some(1.5), Some(128), Some(5))
        );
        // A table that names only the model gets them too; what it sets wins.
        let c = Config::from_toml(
            "[roles.assistant]\nprovider = \"local\"\nmodel = \"/m.gguf\"\ntemperature = 0.3\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let a = c.role(Role::Assistant);
        assert_eq!(
            (a.temperature, a.top_p, a.top_k, a.repeat_penalty, a.max_tokens, a.attempts),
            (Some(0.3), Some(0.9), Some(50), Some(1.5), Some(128), Some(5))
        );
        // On an API, the original's gpt-4o-mini assistant: temperature 0.1, nothing else sent.
        let c = Config::from_toml(
            "[roles.assistant]\nprovider = \"openai\"\nmodel = \"gpt-4o-mini\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let a = c.role(Role::Assistant);
        assert_eq!(
            (a.temperature, a.top_p, a.top_k, a.repeat_penalty, a.max_tokens),
            (Some(0.1), None, None, None, None)
        );
        // Other roles keep the provider's defaults.
        let u = Config::default().role(Role::User);
        assert_eq!((u.temperature, u.repeat_penalty, u.max_tokens, u.attempts), (None, None, None, None));
        // Switching every role to an API does not carry the local defaults along.
        let mut c = Config::default();
        c.set_all_providers(ProviderKind::OpenAi);
        assert_eq!(c.role(Role::Assistant).repeat_penalty, None);
    }

    #[test]
    fn example_config_shows_the_assistant_defaults_that_run() {
        // Uncomment the settings of the `[roles.assistant]` example in propersim.toml: they are
        // what the assistant runs with no table.
        let text = include_str!("../../../propersim.toml");
        let mut table = String::from("[roles.assistant]\n");
        let mut inside = false;
        for line in text.lines() {
            if line.starts_with("# [roles.") {
                inside = line == "# [roles.assistant]";
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ").filter(|r| inside && r.contains(" = ") && !r.starts_with(' ')) {
                table.push_str(rest);
                table.push('\n');
            }
        }
        let shown = Config::from_toml(&table, Path::new("propersim.toml")).unwrap().role(Role::Assistant);
        let runs = Config::default().role(Role::Assistant);
        let key = |r: &RoleConfig| {
            (r.provider, r.model.clone(), r.temperature, r.top_p, r.top_k, r.repeat_penalty, r.max_tokens, r.attempts)
        };
        assert_eq!(key(&shown), key(&runs), "{table}");
    }

    #[test]
    fn the_readmes_toml_examples_are_valid_configurations() {
        // The provider examples use only real keys and name every API role's model.
        let text = include_str!("../../../README.md");
        let blocks: Vec<&str> =
            text.split("```toml\n").skip(1).map(|b| b.split("```").next().unwrap_or_default()).collect();
        assert!(blocks.len() >= 4, "{} blocks", blocks.len());
        for b in blocks {
            let c = Config::from_toml(b, Path::new("README.md")).unwrap_or_else(|e| panic!("{e}\n{b}"));
            c.check_models().unwrap_or_else(|e| panic!("{e}\n{b}"));
        }
    }

    #[test]
    fn train_base_is_only_for_an_assistant_on_an_api_server() {
        let ok = "[roles.assistant]\nprovider = \"openai\"\nmodel = \"m\"\nbase_url = \"http://127.0.0.1:8000/v1\"\ntrain_base = \"/b.gguf\"\n";
        let mut c = Config::from_toml(ok, Path::new("x.toml")).unwrap();
        assert_eq!(c.role(Role::Assistant).train_base.as_deref(), Some("/b.gguf"));
        c.check_models().unwrap();
        // `--provider scripted` drops it with the server.
        c.set_all_providers(ProviderKind::Scripted);
        assert_eq!(c.role(Role::Assistant).train_base, None);
        c.check_models().unwrap();
        for bad in [
            "[roles.assistant]\nprovider = \"local\"\nmodel = \"/a.gguf\"\ntrain_base = \"/b.gguf\"\n",
            "[roles.user]\nprovider = \"openai\"\nmodel = \"m\"\ntrain_base = \"/b.gguf\"\n",
        ] {
            let e = Config::from_toml(bad, Path::new("x.toml")).unwrap().check_models().unwrap_err().to_string();
            assert!(e.contains("train_base") && e.contains("vLLM"), "{e}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml("[sim]\nbogus = 1\n", Path::new("x.toml")).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn bad_value_names_key_and_allowed() {
        let e = Config::from_toml("[sim]\nmemory_level = \"XYZ\"\n", Path::new("x.toml")).unwrap_err().to_string();
        assert!(e.contains("memory_level") && e.contains("ASC9R1"), "{e}");
        let mut s = SimSettings::default();
        let e = s.set("forced_norec_ratio", "50").unwrap_err().to_string();
        assert!(e.contains("forced_norec_ratio") && e.contains("0, 30, 70, 100"), "{e}");
        let e =
            Config::from_toml("[roles.painter]\nprovider = \"local\"\n", Path::new("x.toml")).unwrap_err().to_string();
        assert!(e.contains("roles.painter") && e.contains("evaluator"), "{e}");
    }

    #[test]
    fn unknown_setting_names_it_and_the_keys() {
        let e = SimSettings::default().set("foo", "1").unwrap_err().to_string();
        assert!(e.contains("`foo`") && e.contains("train_method") && !e.contains("`sim`"), "{e}");
    }

    #[test]
    fn api_roles_must_name_a_model() {
        let mut c = Config::default();
        c.check_models().unwrap();
        c.set_all_providers(ProviderKind::OpenAi);
        let e = c.check_models().unwrap_err().to_string();
        assert!(e.contains("`assistant`") && e.contains("openai") && e.contains("model ="), "{e}");
        // A model named in the file stays with the role.
        let mut c =
            Config::from_toml("[roles.assistant]\nprovider = \"local\"\nmodel = \"gpt-4o\"\n", Path::new("x.toml"))
                .unwrap();
        c.set_all_providers(ProviderKind::OpenAi);
        assert_eq!(c.role(Role::Assistant).model, "gpt-4o");
        let e = c.check_models().unwrap_err().to_string();
        assert!(!e.contains("`assistant`") && e.contains("`user`"), "{e}");
    }

    #[test]
    fn tracking_is_off_by_default_and_checks_its_url() {
        let c = Config::default();
        assert_eq!((c.tracking.mlflow_uri.as_deref(), c.tracking.experiment.as_str()), (None, "propersim"));
        let c = Config::from_toml(
            "[tracking]\nmlflow_uri = \"http://127.0.0.1:5000\"\nexperiment = \"x\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.tracking.mlflow_uri.as_deref(), Some("http://127.0.0.1:5000"));
        let e = Config::from_toml("[tracking]\nmlflow_uri = \"127.0.0.1:5000\"\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("tracking.mlflow_uri") && e.to_string().contains("http://"), "{e}");
        let e = Config::from_toml("[tracking]\nuri = \"http://x\"\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("uri"), "{e}");
        let mut c = Config::default();
        c.apply_env(|k| (k == "PROPERSIM_MLFLOW_URI").then(|| "http://h:1".to_string())).unwrap();
        assert_eq!(c.tracking.mlflow_uri.as_deref(), Some("http://h:1"));
        let e = c.apply_env(|k| (k == "PROPERSIM_MLFLOW_EXPERIMENT").then(String::new)).unwrap_err();
        assert!(e.to_string().contains("tracking.experiment"), "{e}");
    }

    #[test]
    fn env_layer_overrides_file() {
        let mut c =
            Config::from_toml("[sim]\ntrain_method = \"dpo\"\nforced_norec_ratio = 30\n", Path::new("x.toml")).unwrap();
        assert_eq!(c.sim.forced_norec_ratio, NoRecRatio::P30);
        c.apply_env(|k| (k == "PROPERSIM_TRAIN_METHOD").then(|| "kto".to_string())).unwrap();
        assert_eq!(c.sim.train_method, TrainMethod::Kto);
        assert!(c.sim.train_mode_label().contains("_KTO_"));
    }
}
