//! The `propersim` command line. Each subcommand parses its flags, layers them over the
//! configuration file and environment, and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use propersim::config::{Config, ProviderKind, TrainMethod};
use propersim::sim::setup::{ensure_assets, open_engine, open_engine_with, Open, OpenOptions};

#[derive(Parser)]
#[command(name = "propersim", version, about = "ProPerSim in Rust: a proactive, personalized assistant simulation")]
struct Cli {
    /// Configuration file (default: propersim.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a simulation (headless with --novis).
    Run(RunArgs),
    /// Download the map assets and the 32 persona seeds.
    Assets {
        #[command(subcommand)]
        what: AssetsCmd,
    },
    /// Benchmark the engine on the scripted brain (steps/s).
    Bench(BenchArgs),
    /// Serve the pages (simulate, replay, demo, persona state, path tester); with --fork/--sim
    /// (or --sim --resume) a live simulation runs in-process for /simulator_home.
    Serve(ServeArgs),
    /// Train a LoRA adapter offline from saved preference pairs (TRL conversational JSONL).
    Train {
        /// Preference pairs, TRL conversational JSONL (a sim's preference_pairs.jsonl).
        #[arg(long, required_unless_present = "plan")]
        pairs: Option<PathBuf>,
        /// dpo or kto.
        #[arg(long, default_value = "dpo")]
        method: String,
        /// A llama-family GGUF (e.g. SmolLM2-135M-Instruct.Q4_1.gguf); with --plan also a
        /// preset's name: llama-3.1-8b, llama-3.3-70b.
        #[arg(long)]
        model: PathBuf,
        /// Output folder: adapter_model.safetensors, adapter_config.json, metrics.jsonl.
        #[arg(long, required_unless_present = "plan")]
        out: Option<PathBuf>,
        /// How the frozen base weights are held: quantized, bf16, f32 (default: the config's
        /// [sim] train_weights, itself quantized by default).
        #[arg(long)]
        weights: Option<String>,
        /// Instead of training: print the estimated training memory of each weights mode for
        /// --model (weights, LoRA, optimizer, activations at --seq-len tokens).
        #[arg(long)]
        plan: bool,
        /// With --plan: tokens in one training row (a DPO pair packs prompt, chosen and
        /// rejected in one row; default: the maximum length, 2304).
        #[arg(long, requires = "plan")]
        seq_len: Option<usize>,
        /// With --plan: the compute precision, f32 (the CPU's) or bf16 (CUDA's; default: this
        /// build's training device).
        #[arg(long, requires = "plan")]
        compute: Option<String>,
        /// Passes over the pairs (default: the config's [sim] train_epochs, 2 as the original's
        /// daily training).
        #[arg(long)]
        epochs: Option<usize>,
        /// Peak learning rate (default: the config's [sim] train_lr, else the method's, 5e-5).
        #[arg(long)]
        lr: Option<f64>,
        /// Prompt tokens an example keeps, its last ones (default: the config's [sim]
        /// train_max_prompt, else 2048), to train offline as a sim of that config trains.
        #[arg(long)]
        max_prompt: Option<usize>,
        /// DPO: weight of the chosen answer's per-token NLL added to the loss, TRL's rpo_alpha
        /// (default: the config's [sim] train_rpo_alpha, else none: plain DPO).
        #[arg(long)]
        rpo_alpha: Option<f64>,
        /// Continue from this adapter instead of a fresh one.
        #[arg(long)]
        init_adapter: Option<PathBuf>,
    },
    /// Summed completion log-probs per pair, with the adapter and without it (one JSON line each).
    Score {
        /// Preference pairs, TRL conversational JSONL.
        #[arg(long)]
        pairs: PathBuf,
        /// A llama-family GGUF: the base model.
        #[arg(long)]
        model: PathBuf,
        /// A LoRA adapter folder (adapter_model.safetensors, adapter_config.json) to score with.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// How the frozen base weights are held: quantized, bf16, f32 (default: the config's
        /// [sim] train_weights).
        #[arg(long)]
        weights: Option<String>,
    },
    /// The original's daily MMLU check (greedy; the first 100 test questions of human_aging,
    /// nutrition, world_religions, prehistory, sociology) of a base model and then of each
    /// adapter on it: one JSON line per model.
    Mmlu {
        /// A llama-family GGUF: the base model.
        #[arg(long)]
        model: PathBuf,
        /// LoRA adapter folders to check after the base, each on its own (e.g. a sim's
        /// adapters/day_01 adapters/day_02).
        #[arg(long, num_args = 1..)]
        adapter: Vec<PathBuf>,
        /// The questions, JSONL in cais/mmlu's fields (default: the config's [sim] mmlu_path,
        /// else data/mmlu.jsonl, the original's 500 questions).
        #[arg(long)]
        items: Option<PathBuf>,
        /// How the frozen base weights are held: quantized, bf16, f32 (default: the config's
        /// [sim] train_weights, as a sim's daily check holds them).
        #[arg(long)]
        weights: Option<String>,
        /// Check only the adapters, not the base model.
        #[arg(long, requires = "adapter")]
        no_base: bool,
    },
    /// Write the demo's compressed storage: <compressed>/<SIM>/{master_movement.json, meta.json, personas/}.
    Compress {
        /// The sim code (folder under storage/).
        sim: String,
        /// Output root (default: compressed_storage beside the storage folder).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        paths: PathArgs,
    },
    /// Check a model setup: chat with a role's model, or embed a text.
    Llm {
        #[command(subcommand)]
        what: LlmCmd,
    },
    /// Run many personas' sims in one process (the paper's experiment), sharing providers.
    Sweep(SweepArgs),
    /// Does the assistant learn? One sim per arm (dpo, kto, none) from the same seed, side by
    /// side in one process; writes the curves per day and arm to storage/experiments/NAME/.
    Experiment(ExperimentArgs),
    /// Per-day metrics of a sim (or, with --sweep, the mean over a sweep's personas with 95%
    /// intervals; with --experiment, the curves of its arms): table (or --json); writes
    /// metrics.json, metrics.csv, metrics.svg (an experiment: curve.json, curve.csv, curve.svg).
    Report {
        /// The sim code (folder under storage/).
        #[arg(required_unless_present_any = ["sweep", "experiment"], conflicts_with_all = ["sweep", "experiment"])]
        sim: Option<String>,
        /// A sweep's name: aggregate its sims `NAME_p<k>` into storage/NAME/metrics.*.
        #[arg(long, value_name = "NAME", conflicts_with = "experiment")]
        sweep: Option<String>,
        /// An experiment's name: its arms' curves into storage/experiments/NAME/curve.*.
        #[arg(long, value_name = "NAME")]
        experiment: Option<String>,
        /// Print the metrics as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        paths: PathArgs,
    },
}

#[derive(Subcommand)]
enum LlmCmd {
    /// Print the reply of the role's configured model.
    Chat {
        /// user, evaluator, assistant, summarizer.
        #[arg(long, default_value = "assistant")]
        role: String,
        /// The user message to send.
        text: String,
        /// Use this provider instead of the role's: local, openai, gemini, or scripted.
        #[arg(long, value_name = "KIND")]
        provider: Option<String>,
    },
    /// Print the embedding's size and norm.
    Embed {
        /// The text to embed.
        text: String,
        /// Use this provider instead of the embedding role's: local, openai, gemini, or scripted.
        #[arg(long, value_name = "KIND")]
        provider: Option<String>,
    },
    /// Serve a local GGUF over an OpenAI-compatible API (POST /v1/chat/completions, GET
    /// /v1/models, GET /health); all requests share one engine, so concurrent ones are batched.
    /// Threads: RAYON_NUM_THREADS (default: all cores).
    Serve {
        /// A .gguf file, a folder holding one, or a Hugging Face repo id.
        #[arg(long)]
        model: String,
        /// Address to listen on (0.0.0.0: every interface).
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// 0 picks a free port (printed at start).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Memory cap of the prefix KV cache in MiB (0 turns it off).
        #[arg(long, default_value_t = propersim::llm::local::engine::DEFAULT_PREFIX_CACHE_MB)]
        prefix_cache_mb: usize,
        /// Most requests decoded together (1: one at a time).
        #[arg(long, default_value_t = propersim::llm::local::engine::DEFAULT_MAX_BATCH)]
        max_batch: usize,
    },
}

#[derive(Subcommand)]
enum AssetsCmd {
    /// Fetch and verify the assets (from the pinned public ProPerSim commit, or --url).
    Fetch {
        /// Download from this URL (a .zip or .tar.gz of the same layout) instead of the pinned
        /// commit's archive.
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        paths: PathArgs,
    },
}

/// Folders (each also settable by environment variable or the config file).
#[derive(Args, Clone, Default)]
struct PathArgs {
    /// Where sims are written (and seeds looked up first) [env: PROPERSIM_STORAGE].
    #[arg(long)]
    storage: Option<PathBuf>,
    /// Extra folder to look for persona seeds in [env: PROPERSIM_SEEDS].
    #[arg(long)]
    seeds: Option<PathBuf>,
    /// Map assets, laid out like the original static_dirs/assets [env: PROPERSIM_ASSETS].
    #[arg(long)]
    assets: Option<PathBuf>,
    /// The temp_storage handshake folder [env: PROPERSIM_TEMP_STORAGE].
    #[arg(long)]
    temp_storage: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct SimArgs {
    /// Persona seed to fork (e.g. base_the_ville_persona_1).
    #[arg(long)]
    fork: Option<String>,
    /// Sim code: the folder under storage/ to write.
    #[arg(long)]
    sim: Option<String>,
    /// Continue an existing sim from its last complete step.
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Replace an existing sim of the same name.
    #[arg(long)]
    force: bool,
    /// Set every role's provider: local, openai, gemini, or scripted (the offline rule-based
    /// test/benchmark brain, not a model).
    #[arg(long, value_name = "KIND")]
    provider: Option<String>,
    /// LLM reply cache: record (default; replies stored in the sim), replay (strict: a miss is an
    /// error, no provider is called), off.
    #[arg(long, default_value = "record", value_name = "MODE")]
    llm_cache: String,
    /// Set any [sim] setting, e.g. --set train_method=kto --set forced_norec_ratio=30.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Resume with settings other than the sim ran with (its reverie/run.json), recording the
    /// change there; without it such a resume is refused and names what would change.
    #[arg(long)]
    allow_changes: bool,
    #[command(flatten)]
    paths: PathArgs,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    sim: SimArgs,
    /// Run until the sim has lived this many days in total (576 steps each; default 1).
    #[arg(long, conflicts_with = "steps")]
    days: Option<u64>,
    /// Run this many more steps.
    #[arg(long)]
    steps: Option<u64>,
    /// Headless: no browser needed.
    #[arg(long, conflicts_with = "vis")]
    novis: bool,
    /// Drive from a browser page.
    #[arg(long)]
    vis: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
struct SweepArgs {
    /// The sweep's name: its sims are NAME_p<k>, its manifest and report are in NAME/.
    #[arg(long)]
    name: String,
    /// Persona numbers: ranges and lists, e.g. 1-32 or 1,4,9-12 (seeds base_the_ville_persona_<k>).
    #[arg(long, default_value = "1-32", value_parser = clap::value_parser!(propersim::sim::sweep::PersonaList))]
    personas: propersim::sim::sweep::PersonaList,
    /// Run each sim until it has lived this many days in total (576 steps each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    days: u64,
    /// Only the personas k with k mod N = I (for N machines: a Slurm array, a k8s indexed Job).
    #[arg(long, value_name = "I/N", value_parser = clap::value_parser!(propersim::sim::sweep::Shard))]
    shard: Option<propersim::sim::sweep::Shard>,
    /// Sims stepping at once (default: all of this shard's; on the scripted brain alone, one per
    /// core, since those sims are CPU-bound).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: Option<u64>,
    /// Set every role's provider: local, openai, gemini, or scripted.
    #[arg(long, value_name = "KIND")]
    provider: Option<String>,
    /// LLM reply cache of each sim: record (default), replay, off.
    #[arg(long, default_value = "record", value_name = "MODE")]
    llm_cache: String,
    /// Set any [sim] setting, e.g. --set train_method=kto (the same for every persona).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Rerun with settings other than the sweep and its sims ran with, recording the change in
    /// each sim's reverie/run.json; without it such a rerun is refused.
    #[arg(long)]
    allow_changes: bool,
    /// No progress display.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    paths: PathArgs,
}

impl SweepArgs {
    /// The run options every sim shares, as `run` takes them.
    fn sim_args(&self) -> SimArgs {
        SimArgs {
            fork: None,
            sim: None,
            resume: false,
            force: false,
            provider: self.provider.clone(),
            llm_cache: self.llm_cache.clone(),
            sets: self.sets.clone(),
            allow_changes: self.allow_changes,
            paths: self.paths.clone(),
        }
    }
}

#[derive(Args)]
struct ExperimentArgs {
    /// The experiment's name: its arms are the sims NAME_<arm>, its curves in experiments/NAME/.
    #[arg(long)]
    name: String,
    /// Training methods to compare, comma-separated: dpo, kto, none (the untrained control).
    #[arg(long, default_value = "dpo,none", value_parser = clap::value_parser!(propersim::sim::experiment::Arms))]
    arms: propersim::sim::experiment::Arms,
    /// Run each arm until it has lived this many days in total (576 steps each).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    days: u64,
    /// No progress display.
    #[arg(long, short)]
    quiet: bool,
    /// The options `run` takes: --fork (required), --provider, --set, --storage, ...
    #[command(flatten)]
    sim: SimArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (0.0.0.0: every interface).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Load Phaser from this URL instead of our own /static/js/phaser.min.js (e.g. the CDN:
    /// https://cdn.jsdelivr.net/npm/phaser@3.55.2/dist/phaser.min.js).
    #[arg(long, conflicts_with = "phaser_path")]
    phaser_url: Option<String>,
    /// The Phaser file served at /static/js/phaser.min.js (default: `npm ci`'s
    /// node_modules/phaser/dist/phaser.min.js under --web-root).
    #[arg(long, value_name = "FILE")]
    phaser_path: Option<PathBuf>,
    /// Folder holding our templates/ and static/ (default: the current folder).
    #[arg(long, default_value = ".")]
    web_root: PathBuf,
    #[command(flatten)]
    sim: SimArgs,
}

/// `bench` forks a throwaway sim in a temporary folder on the scripted brain: of `run`'s options
/// it takes the seed, the settings and the folders (no --sim, --resume, --force, --provider).
#[derive(Args)]
struct BenchArgs {
    /// Persona seed to fork (e.g. base_the_ville_persona_1).
    #[arg(long)]
    fork: Option<String>,
    /// Set any [sim] setting, e.g. --set memory_level=ASC9R1.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    #[command(flatten)]
    paths: PathArgs,
    /// Steps to time.
    #[arg(long, default_value_t = 576)]
    steps: u64,
    /// Instead: local inference speed (prompt processing and generation tokens/s) of this GGUF, in
    /// every weight mode (only PROPERSIM_LOCAL_WEIGHTS's when set).
    #[arg(long, value_name = "GGUF")]
    llm: Option<PathBuf>,
    /// Instead: DPO optimizer steps/s, tokens/s and peak memory on this GGUF (pairs from the
    /// JSONL file in PROPERSIM_BENCH_PAIRS, else a built-in set).
    #[arg(long, value_name = "GGUF")]
    dpo: Option<PathBuf>,
    /// With --dpo: keep every layer's activations for the backward pass instead of recomputing
    /// them (gradient checkpointing is on by default).
    #[arg(long, requires = "dpo")]
    no_checkpointing: bool,
    /// With --dpo: how the frozen base weights are held: quantized, bf16, f32 (default: the
    /// config's [sim] train_weights).
    #[arg(long, requires = "dpo")]
    weights: Option<String>,
    /// With --dpo: optimizer steps to time.
    #[arg(long, requires = "dpo", default_value_t = 8)]
    dpo_steps: usize,
}

impl BenchArgs {
    fn sim_args(&self) -> SimArgs {
        SimArgs {
            fork: self.fork.clone(),
            sim: None,
            resume: false,
            force: false,
            provider: Some("scripted".into()),
            llm_cache: "off".into(),
            sets: self.sets.clone(),
            allow_changes: false,
            paths: self.paths.clone(),
        }
    }
}

fn load_config(path: Option<&PathBuf>, s: &SimArgs) -> Result<Config> {
    let mut cfg = Config::load(path.map(|p| p.as_path()))?;
    apply_paths(&mut cfg, &s.paths);
    if let Some(f) = &s.fork {
        cfg.sim.fork = f.clone();
    }
    if let Some(n) = &s.sim {
        cfg.sim.sim = n.clone();
    }
    for kv in &s.sets {
        let (k, v) = kv.split_once('=').with_context(|| format!("--set `{kv}`: expected KEY=VALUE"))?;
        cfg.sim.set(k.trim(), v.trim())?;
    }
    if let Some(p) = &s.provider {
        let kind: ProviderKind = p
            .parse()
            .map_err(|allowed| anyhow::anyhow!("--provider `{p}` is not allowed; choose one of: {allowed}"))?;
        cfg.set_all_providers(kind);
    }
    cfg.check_models()?;
    Ok(cfg)
}

fn apply_paths(cfg: &mut Config, p: &PathArgs) {
    if let Some(v) = &p.storage {
        cfg.paths.storage = v.clone();
    }
    if let Some(v) = &p.seeds {
        cfg.paths.seeds = Some(v.clone());
    }
    if let Some(v) = &p.assets {
        cfg.paths.assets = v.clone();
    }
    if let Some(v) = &p.temp_storage {
        cfg.paths.temp_storage = v.clone();
    }
}

/// The training base and the model's tokenizer and chat template (no inference copy).
fn load_for_training(
    gguf: &std::path::Path,
    weights: propersim::config::TrainWeights,
) -> Result<(propersim::model::llama::Llama, propersim::llm::local::ModelText)> {
    let model = propersim::train::load_base(gguf, weights).with_context(|| format!("loading {}", gguf.display()))?;
    Ok((model, propersim::llm::local::ModelText::load(gguf)?))
}

/// `--weights` if given, else the configuration's `[sim] train_weights`.
fn train_weights(cli_config: Option<&PathBuf>, flag: Option<&str>) -> Result<propersim::config::TrainWeights> {
    match flag {
        Some(w) => {
            w.parse().map_err(|allowed| anyhow::anyhow!("--weights `{w}` is not allowed; choose one of: {allowed}"))
        }
        None => Ok(Config::load(cli_config.map(|p| p.as_path()))?.sim.train_weights),
    }
}

/// Eight realistic pairs for the DPO benchmark when no pairs file is given.
fn bench_pairs() -> Vec<propersim::train::data::PreferencePair> {
    use propersim::llm::Message;
    use propersim::suggestion::{json_answer, NO_REC};
    let sys = propersim::assistant::prompt::system("Eddy Lin", "John Lin", propersim::config::ReasonMode::None, None);
    (0..8)
        .map(|i| propersim::train::data::PreferencePair {
            prompt: vec![Message::system(sys.clone()), Message::user(format!("[MEMORY]\nNo interactions yet.\n[ACTION]\nThursday February 13 -- 0{}:30:00 PM\nJohn Lin's action: John Lin is cooking dinner (step {i}).", i % 9))],
            chosen: vec![Message::assistant(json_answer(NO_REC, None))],
            rejected: vec![Message::assistant(json_answer("Call your boss about the quarterly report right now.", None))],
            extra: Default::default(),
        })
        .collect()
}

/// `compressed_storage/` beside the storage folder, as in the original frontend_server.
fn compressed_root(cfg: &Config) -> PathBuf {
    match cfg.paths.storage.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join("compressed_storage"),
        _ => PathBuf::from("compressed_storage"),
    }
}

fn cache_mode(s: &SimArgs) -> Result<propersim::llm::cache::CacheMode> {
    s.llm_cache.parse().map_err(|e| anyhow::anyhow!("--llm-cache `{}`: {e}", s.llm_cache))
}

/// How `run` and `serve` open their sim.
fn open_options(s: &SimArgs) -> Result<OpenOptions> {
    let open = if s.resume {
        Open::Resume
    } else if s.force {
        Open::Force
    } else {
        Open::Fork
    };
    Ok(OpenOptions { allow_changes: s.allow_changes, ..OpenOptions::new(open, cache_mode(s)?) })
}

async fn run(cli_config: Option<&PathBuf>, a: RunArgs) -> Result<()> {
    let mut cfg = load_config(cli_config, &a.sim)?;
    if a.vis {
        cfg.sim.visualization = true;
    }
    if a.novis {
        cfg.sim.visualization = false;
    }
    ensure_assets(&cfg)?;
    let mut engine = open_engine_with(&cfg, &open_options(&a.sim)?)?;
    let per_day = engine.steps_per_day();
    let target = match (a.days, a.steps) {
        (_, Some(s)) => engine.next_step() + s,
        (d, None) => d.unwrap_or(1) * per_day,
    };
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(stop.clone());
    eprintln!(
        "Simulating `{}` (mode {}) from step {} to {}.",
        cfg.sim.sim,
        cfg.sim.train_mode_label(),
        engine.next_step(),
        target
    );
    if cfg.sim.visualization {
        // Drop-in mode: the original Django server and its page drive the steps through files.
        let f = propersim::sim::follow::follower(&engine);
        let f2 = f.clone();
        let stopping = stop.clone();
        tokio::spawn(async move {
            propersim::sim::headless::raised(&stopping).await;
            f2.stop.store(true, Ordering::SeqCst);
            f2.poke();
        });
        eprintln!("Waiting for the page: open the original frontend's /simulator_home (sim `{}`).", cfg.sim.sim);
        let engine = propersim::sim::follow::follow(engine, f, target, true).await?;
        eprintln!(
            "Stopped at step {}. LLM calls: {}, fallbacks: {}.",
            engine.next_step(),
            engine.llm().calls(),
            engine.llm().fallbacks()
        );
        if stop.load(Ordering::SeqCst) {
            eprintln!("Resume with: propersim run --vis --sim {} --resume", cfg.sim.sim);
            return Err(propersim::sim::headless::Interrupted.into());
        }
        return Ok(());
    }
    let summary = propersim::sim::headless::run(&mut engine, target, !a.quiet, stop).await?;
    eprintln!(
        "{} steps in {:.1}s ({:.0} steps/s); now at step {}. LLM calls: {}, fallbacks: {}. Output: {}",
        summary.steps,
        summary.seconds,
        summary.steps as f64 / summary.seconds.max(1e-9),
        engine.next_step(),
        engine.llm().calls(),
        engine.llm().fallbacks(),
        engine.sim().root.display()
    );
    eprintln!("{}", engine.llm().totals());
    eprintln!("{}", last_day_line(&engine.sim().root));
    let storage = match &a.sim.paths.storage {
        Some(p) => format!(" --storage {}", p.display()),
        None => String::new(),
    };
    eprintln!("Per-day metrics: propersim report {}{storage}", cfg.sim.sim);
    if let Some(line) = &summary.tracking {
        eprintln!("{line}");
    }
    if summary.interrupted {
        eprintln!("Resume with: propersim run --novis --sim {} --resume", cfg.sim.sim);
    }
    if summary.cancelled {
        return Err(propersim::sim::headless::Interrupted.into());
    }
    Ok(())
}

/// The last simulated day's scores in one line, for the end of `run`.
fn last_day_line(sim_dir: &std::path::Path) -> String {
    let days = match propersim::report::metrics::compute(sim_dir) {
        Ok(d) => d,
        Err(e) => return format!("No scores to show ({e:#})."),
    };
    let Some(d) = days.last() else {
        return "No scores yet: the assistant made no suggestion.".into();
    };
    let score = match d.mean_score {
        Some(m) => format!("mean score {m:.2} over {} suggestion(s)", d.steps),
        None => format!("{} suggestion(s), none scored", d.steps),
    };
    let rec = match d.rec_mean {
        Some(m) => format!(" (mean {m:.2})"),
        None => String::new(),
    };
    format!("Last day ({}): {score}; {} recommendation(s){rec}, {} no-recommendation(s).", d.date, d.recs, d.norecs)
}

async fn sweep(cli_config: Option<&PathBuf>, a: SweepArgs) -> Result<()> {
    use propersim::sim::sweep::{self, SimStatus};
    let sim_args = a.sim_args();
    let cfg = load_config(cli_config, &sim_args)?;
    let opts = sweep::SweepOptions {
        name: a.name.clone(),
        personas: a.personas.0.clone(),
        days: a.days,
        shard: a.shard,
        concurrency: a.concurrency.map(|k| k as usize),
        cache: cache_mode(&sim_args)?,
        allow_changes: a.allow_changes,
        progress: !a.quiet,
    };
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(stop.clone());
    let shard = a.shard.map(|s| format!(", shard {}/{}", s.index, s.count)).unwrap_or_default();
    eprintln!(
        "Sweep `{}` (mode {}): personas {}{shard}, {} day(s) each.",
        a.name,
        cfg.sim.train_mode_label(),
        sweep::ranges(&a.personas.0),
        a.days
    );
    let summary = sweep::run(&cfg, &opts, stop.clone()).await?;
    for s in &summary.sims {
        match &s.status {
            SimStatus::Done => {}
            SimStatus::Stopped(why) => eprintln!("  {} stopped ({why})", s.sim),
            SimStatus::Failed(why) => eprintln!("  {} FAILED: {why}", s.sim),
        }
    }
    let failed = summary.failed().count();
    eprintln!(
        "{} sims: {} done, {} stopped, {} failed; {} steps in {:.1}s ({:.0} steps/s).",
        summary.sims.len(),
        summary.done(),
        summary.stopped(),
        failed,
        summary.steps,
        summary.seconds,
        summary.steps as f64 / summary.seconds.max(1e-9)
    );
    if summary.sims.is_empty() {
        eprintln!("This shard holds none of the personas: nothing to do.");
    }
    if summary.stopped() > 0 || failed > 0 {
        eprintln!("Rerun the same command to continue: finished sims are kept, the others resume.");
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} sims failed (see above); the others ran", summary.sims.len());
    }
    if stop.load(Ordering::SeqCst) {
        return Err(propersim::sim::headless::Interrupted.into());
    }
    eprintln!("Aggregate: propersim report --sweep {}", a.name);
    Ok(())
}

async fn experiment(cli_config: Option<&PathBuf>, a: ExperimentArgs) -> Result<()> {
    use propersim::sim::sweep::SimStatus;
    if a.sim.sim.is_some() || a.sim.resume || a.sim.force {
        anyhow::bail!("an experiment names its arms' sims itself (NAME_<arm>) and resumes when rerun: drop --sim, --resume and --force");
    }
    let cfg = load_config(cli_config, &a.sim)?;
    let opts = propersim::sim::experiment::ExperimentOptions {
        name: a.name.clone(),
        arms: a.arms.0.clone(),
        days: a.days,
        cache: cache_mode(&a.sim)?,
        allow_changes: a.sim.allow_changes,
        progress: !a.quiet,
    };
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(stop.clone());
    let arms: Vec<&str> = opts.arms.iter().map(|m| m.as_str()).collect();
    eprintln!(
        "Experiment `{}`: arms {} forked from {}, {} day(s) each.",
        a.name,
        arms.join(", "),
        cfg.sim.fork,
        a.days
    );
    let (summary, curve) = propersim::sim::experiment::run(&cfg, &opts, stop.clone()).await?;
    for s in &summary.sims {
        match &s.status {
            SimStatus::Done => {}
            SimStatus::Stopped(why) => eprintln!("  {} stopped ({why})", s.sim),
            SimStatus::Failed(why) => eprintln!("  {} FAILED: {why}", s.sim),
        }
    }
    print!("{}", propersim::report::curve::render_table(&curve));
    eprintln!(
        "Ran {} steps in {:.1}s. Curves: {}/experiments/{}/curve.{{json,csv,svg}}",
        summary.steps,
        summary.seconds,
        cfg.paths.storage.display(),
        a.name
    );
    let failed = summary.failed().count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} arms failed (see above); rerun the same command to continue", summary.sims.len());
    }
    if stop.load(Ordering::SeqCst) || summary.stopped() > 0 {
        eprintln!("Rerun the same command to continue.");
        if stop.load(Ordering::SeqCst) {
            return Err(propersim::sim::headless::Interrupted.into());
        }
    }
    Ok(())
}

async fn bench(cli_config: Option<&PathBuf>, a: BenchArgs) -> Result<()> {
    if let Some(g) = &a.llm {
        let g = g.clone();
        let r = tokio::task::spawn_blocking(move || propersim::bench_llm::bench_llm(&g)).await??;
        println!("{r}");
        return Ok(());
    }
    if let Some(g) = &a.dpo {
        let (g, no_checkpointing, steps) = (g.clone(), a.no_checkpointing, a.dpo_steps);
        let weights = train_weights(cli_config, a.weights.as_deref())?;
        let r = tokio::task::spawn_blocking(move || -> Result<String> {
            let (model, fmt) = load_for_training(&g, weights)?;
            let pairs = propersim::train::data::read_pairs(std::path::Path::new(
                &std::env::var("PROPERSIM_BENCH_PAIRS").unwrap_or_default(),
            ))
            .unwrap_or_default();
            let pairs = if pairs.is_empty() { bench_pairs() } else { pairs };
            let cfg = propersim::train::TrainConfig {
                gradient_checkpointing: !no_checkpointing,
                ..propersim::train::TrainConfig::dpo()
            };
            let report = propersim::train::offline::bench_dpo(&model, &fmt, &pairs, steps, &cfg)?;
            Ok(serde_json::to_string(&report)?)
        })
        .await??;
        println!("{r}");
        return Ok(());
    }
    let mut cfg = load_config(cli_config, &a.sim_args())?;
    let tmp = tempfile::tempdir()?;
    let seeds = cfg.paths.storage.clone();
    cfg.paths.seeds = Some(cfg.paths.seeds.clone().unwrap_or(seeds));
    cfg.paths.storage = tmp.path().join("storage");
    cfg.paths.temp_storage = tmp.path().join("temp_storage");
    cfg.sim.sim = "bench".into();
    let mut engine = open_engine(&cfg, Open::Fork, propersim::llm::cache::CacheMode::Off)?;
    let summary = propersim::sim::headless::run(&mut engine, a.steps, false, Arc::new(AtomicBool::new(false))).await?;
    let steps = summary.steps.max(1) as f64;
    let per_step_ms = summary.seconds * 1000.0 / steps;
    let brain_ms = engine.llm().scripted_seconds() * 1000.0 / steps;
    let engine_ms = per_step_ms - brain_ms;
    println!(
        "scripted headless run: {} steps in {:.3} s = {:.0} steps/s ({:.3} ms/step; the original sleeps 100 ms per step: {:.0}x)",
        summary.steps,
        summary.seconds,
        steps / summary.seconds.max(1e-9),
        per_step_ms,
        100.0 / per_step_ms.max(1e-9)
    );
    println!("  of which the scripted brain {brain_ms:.3} ms/step; engine overhead {engine_ms:.3} ms/step ({:.0}x under the original's 100 ms sleep)", 100.0 / engine_ms.max(1e-9));
    Ok(())
}

async fn serve(cli_config: Option<&PathBuf>, a: ServeArgs) -> Result<()> {
    let cfg = load_config(cli_config, &a.sim)?;
    let mut opts = propersim::web::ServeOptions::new(&a.web_root, cfg.paths.assets.clone());
    opts.host = a.host.clone();
    opts.port = a.port;
    opts.storage = cfg.paths.storage.clone();
    opts.temp_storage = cfg.paths.temp_storage.clone();
    opts.compressed = compressed_root(&cfg);
    opts.set_limits(&cfg.web)?;
    if let Some(u) = a.phaser_url {
        opts.phaser_url = Some(u);
    }
    if let Some(p) = a.phaser_path {
        if !p.is_file() {
            anyhow::bail!("--phaser-path {}: no such file", p.display());
        }
        opts.phaser_file = p;
    }

    let mut live_task = None;
    if a.sim.fork.is_some() || a.sim.sim.is_some() {
        ensure_assets(&cfg)?;
        let engine = open_engine_with(&cfg, &open_options(&a.sim)?)?;
        let f = propersim::sim::follow::follower(&engine);
        opts.live = Some(f.clone());
        let f2 = f.clone();
        live_task =
            Some((f, tokio::spawn(async move { propersim::sim::follow::follow(engine, f2, u64::MAX, false).await })));
        eprintln!("Live simulation `{}`: open http://{}:{}/simulator_home", cfg.sim.sim, a.host, a.port);
    } else {
        eprintln!("Serving http://{}:{}/ (replay and demo of stored sims).", a.host, a.port);
    }
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(stop.clone());
    tokio::select! {
        r = propersim::web::serve(opts) => r?,
        _ = propersim::sim::headless::raised(&stop) => {}
    }
    if let Some((f, task)) = live_task {
        f.stop.store(true, Ordering::SeqCst);
        f.poke();
        let engine = task.await??;
        eprintln!(
            "Saved `{}` at step {}. Resume with: propersim serve --sim {} --resume",
            engine.sim().code,
            engine.next_step(),
            engine.sim().code
        );
    }
    Ok(())
}

async fn llm_cmd(cli_config: Option<&PathBuf>, what: LlmCmd) -> Result<()> {
    let mut cfg = Config::load(cli_config.map(|p| p.as_path()))?;
    let set_provider = |cfg: &mut Config, p: &Option<String>| -> Result<()> {
        if let Some(p) = p {
            let kind: ProviderKind = p
                .parse()
                .map_err(|allowed| anyhow::anyhow!("--provider `{p}` is not allowed; choose one of: {allowed}"))?;
            cfg.set_all_providers(kind);
        }
        Ok(())
    };
    match what {
        LlmCmd::Chat { role, text, provider } => {
            set_provider(&mut cfg, &provider)?;
            let role: propersim::config::Role = role
                .parse()
                .map_err(|allowed| anyhow::anyhow!("--role `{role}` is not allowed; choose one of: {allowed}"))?;
            println!("{}", propersim::llm::cli::chat(&cfg, role, &text).await?);
        }
        LlmCmd::Embed { text, provider } => {
            set_provider(&mut cfg, &provider)?;
            let (size, norm) = propersim::llm::cli::embed(&cfg, &text).await?;
            println!("size={size} norm={norm:.4}");
        }
        LlmCmd::Serve { model, host, port, prefix_cache_mb, max_batch } => {
            use propersim::llm::serve;
            let opts = serve::ServeOptions { model, prefix_cache_mb, max_batch };
            let served = Arc::new(tokio::task::block_in_place(|| serve::Served::load(&opts))?);
            let (listener, addr) = serve::bind(&host, port).await?;
            // Tests and scripts read this line for the address (with --port 0).
            eprintln!("Serving {} on http://{addr}/v1 (max batch {max_batch}); Ctrl-C stops.", served.id());
            serve::run(listener, served, async {
                shutdown_signal().await;
                eprintln!("\nStopping...");
            })
            .await?;
        }
    }
    Ok(())
}

/// Resolves at the first Ctrl-C (SIGINT) or SIGTERM: a server's graceful shutdown.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// The first Ctrl-C (SIGINT) or SIGTERM raises `stop`: the step in flight is cancelled, the last
/// complete step is kept and saved, and the command exits with 130. A second one exits at once.
fn watch_signals(stop: Arc<AtomicBool>) {
    use tokio::signal::unix::{signal, SignalKind};
    // Both listeners exist before the first signal, so a quick second one is not missed.
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        tracing::warn!("cannot listen for signals; Ctrl-C will end the process without saving");
        return;
    };
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            seen += 1;
            if seen == 1 {
                eprintln!("\nInterrupted: cancelling the current step and saving the last complete one (again to quit at once)...");
                stop.store(true, Ordering::SeqCst);
            } else {
                eprintln!("Interrupted again: exiting now.");
                std::process::exit(130);
            }
        }
    });
}

fn assets_fetch(cli_config: Option<&PathBuf>, url: Option<String>, paths: PathArgs) -> Result<()> {
    let mut cfg = Config::load(cli_config.map(|p| p.as_path()))?;
    apply_paths(&mut cfg, &paths);
    let mut opts = propersim::assets::FetchOptions::new(&cfg.paths.assets, &cfg.paths.storage)?;
    if let Some(u) = url {
        opts.url = u;
    }
    let r = propersim::assets::fetch(&opts)?;
    println!(
        "Installed {} verified files ({} bytes) into {} and {}.",
        r.files,
        r.file_bytes,
        r.assets_dir.display(),
        r.storage_dir.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    // candle's worker threads spin for 25,000 PAUSEs after each parallel op before they sleep.
    // Between the decode step's many small ops that kept both threads of a 2-core VM spinning
    // at once for most of a batched decode (perf: ~70% of its samples), and while gemm's own
    // threads ran a prompt pass the spinning worker took a core from them. A short spin then
    // sleep measured faster on both (see README's performance notes). Set here, before any
    // thread exists, because the pool reads it once; an explicit setting wins.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100");
    }
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(async_main()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn async_main() -> ExitCode {
    use std::io::IsTerminal;
    // A closed pipe (`propersim report SIM | head -1`) ends the process quietly, as it does
    // `cat`, instead of a write error panicking in `println!`. Sockets are unaffected: the
    // standard library sends with MSG_NOSIGNAL (Linux; SO_NOSIGPIPE elsewhere), and we write to
    // no child's stdin.
    // SAFETY: signal(2) with SIG_DFL installs no handler of ours; it is safe from any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PROPERSIM_LOG").unwrap_or_else(|_| "warn".into()))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let cfg = cli.config.clone();
    let result = match cli.command {
        Command::Run(a) => run(cfg.as_ref(), a).await,
        Command::Bench(a) => bench(cfg.as_ref(), a).await,
        Command::Serve(a) => serve(cfg.as_ref(), a).await,
        Command::Train {
            pairs,
            method,
            model,
            out,
            epochs,
            lr,
            max_prompt,
            rpo_alpha,
            init_adapter,
            weights,
            plan,
            seq_len,
            compute,
        } => tokio::task::block_in_place(|| -> Result<()> {
            if plan {
                let compute = match compute.as_deref() {
                    None => propersim::train::model_dtype(&propersim::train::pick_device()),
                    Some("f32") => candle_core::DType::F32,
                    Some("bf16") => candle_core::DType::BF16,
                    Some(c) => anyhow::bail!("--compute `{c}` is not allowed; choose one of: f32, bf16"),
                };
                let shape = propersim::train::plan::ModelShape::resolve(&model)?;
                let opts = match seq_len {
                    Some(n) => propersim::train::plan::PlanOptions::with_seq_len(compute, n),
                    None => propersim::train::plan::PlanOptions::new(compute),
                };
                print!("{}", propersim::train::plan::render(&shape, &opts)?);
                return Ok(());
            }
            let (Some(pairs), Some(out)) = (pairs, out) else {
                anyhow::bail!("train needs --pairs and --out (or --plan)");
            };
            let weights = train_weights(cfg.as_ref(), weights.as_deref())?;
            let method: TrainMethod = method
                .parse()
                .map_err(|allowed| anyhow::anyhow!("unknown --method {method:?}: choose one of {allowed}"))?;
            // The config's [sim] training settings, each flag in place of its setting.
            let mut sim = Config::load(cfg.as_deref())?.sim;
            sim.train_method = method;
            sim.train_epochs = epochs.unwrap_or(sim.train_epochs);
            sim.train_lr = lr.or(sim.train_lr);
            sim.train_max_prompt = max_prompt.or(sim.train_max_prompt);
            sim.train_rpo_alpha = rpo_alpha.or(sim.train_rpo_alpha);
            let config = propersim::train::TrainConfig::for_sim(&sim)?;
            let (m, fmt) = load_for_training(&model, weights)?;
            let opts = propersim::train::offline::OfflineTrainOptions {
                pairs,
                out: out.clone(),
                config,
                base_model_name: model.display().to_string(),
                init_adapter,
            };
            let s = propersim::train::offline::train_offline(&m, &fmt, &opts)?;
            println!(
                "{} optimizer steps on {} examples, loss {:.4} -> {:.4}, {:.1}s; adapter in {}",
                s.steps,
                s.examples,
                s.first_loss,
                s.last_loss,
                s.seconds,
                out.display()
            );
            Ok(())
        }),
        Command::Score { pairs, model, adapter, weights } => tokio::task::block_in_place(|| -> Result<()> {
            let weights = train_weights(cfg.as_ref(), weights.as_deref())?;
            let (m, fmt) = load_for_training(&model, weights)?;
            let a = match adapter {
                Some(dir) => {
                    Some(propersim::train::adapter::load_adapter(&dir, m.config(), m.dtype(), m.device(), false)?)
                }
                None => None,
            };
            let pairs = propersim::train::data::read_pairs(&pairs)?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            propersim::train::offline::score_pairs(
                &m,
                a.as_ref(),
                &fmt,
                &pairs,
                &propersim::train::data::TokenLimits::default(),
                &mut out,
            )?;
            Ok(())
        }),
        Command::Mmlu { model, adapter, items, weights, no_base } => tokio::task::block_in_place(|| -> Result<()> {
            let items = match items {
                Some(p) => p,
                None => Config::load(cfg.as_deref())?.sim.mmlu_path.unwrap_or_else(|| PathBuf::from("data/mmlu.jsonl")),
            };
            let items = propersim::train::mmlu::read_items(&items)?;
            let weights = train_weights(cfg.as_ref(), weights.as_deref())?;
            let (m, text) = load_for_training(&model, weights)?;
            let m = std::sync::Arc::new(m);
            let opts = propersim::train::mmlu::MmluOptions::for_model(text.tokenizer.special());
            // Ctrl-C ends the process as usual; nothing is written until a check is complete.
            let never = std::sync::atomic::AtomicBool::new(false);
            // Every adapter loads before the first check, so a bad folder fails at once.
            let mut models = vec![("base".to_string(), None); usize::from(!no_base)];
            for dir in &adapter {
                let a = propersim::train::adapter::load_adapter(dir, m.config(), m.dtype(), m.device(), false)?;
                models.push((dir.display().to_string(), Some(std::sync::Arc::new(a))));
            }
            for (name, a) in models {
                let started = std::time::Instant::now();
                let mut session = propersim::model::llama::LlamaSession::new(m.clone(), a);
                let report = propersim::train::mmlu::run_mmlu(&mut session, &text, &items, &opts, &never)?;
                println!(
                    "{}",
                    serde_json::json!({
                        "adapter": name,
                        "overall_accuracy": report.overall_accuracy,
                        "subject_accuracies": report.subject_accuracies,
                        "questions": report.questions,
                        "seconds": started.elapsed().as_secs_f64(),
                    })
                );
            }
            Ok(())
        }),
        Command::Compress { sim, out, paths } => (|| {
            let mut c = Config::load(cfg.as_deref())?;
            apply_paths(&mut c, &paths);
            let out = out.unwrap_or_else(|| compressed_root(&c));
            let dir = propersim::storage::compress::compress(&c.paths.storage, &sim, &out)?;
            println!("Compressed `{sim}` into {}", dir.display());
            Ok(())
        })(),
        Command::Llm { what } => llm_cmd(cfg.as_ref(), what).await,
        Command::Sweep(a) => sweep(cfg.as_ref(), a).await,
        Command::Experiment(a) => experiment(cfg.as_ref(), a).await,
        Command::Report { sim, sweep, experiment, json, paths } => (|| {
            let mut c = Config::load(cfg.as_deref())?;
            apply_paths(&mut c, &paths);
            let storage = &c.paths.storage;
            let text = match (sweep, experiment, sim) {
                (Some(name), _, _) => propersim::report::sweep::run_report_command(storage, &name, json)?,
                (None, Some(name), _) => propersim::report::curve::run_report_command(storage, &name, json)?,
                (None, None, Some(sim)) => propersim::report::run_report_command(storage, &sim, json)?,
                (None, None, None) => {
                    anyhow::bail!("name a sim, a sweep with --sweep NAME, or an experiment with --experiment NAME")
                }
            };
            print!("{text}");
            Ok(())
        })(),
        Command::Assets { what: AssetsCmd::Fetch { url, paths } } => {
            tokio::task::block_in_place(|| assets_fetch(cfg.as_ref(), url, paths))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<propersim::sim::headless::Interrupted>() => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
