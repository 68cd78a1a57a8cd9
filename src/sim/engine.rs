//! The simulation state machine: one call to [`Engine::step`] turns `environment/<n>.json` into
//! `movement/<n>.json`, in the original's order, as explicit stages:
//!
//! 1. **begin**: the day boundary (the user's evaluation memory resets, yesterday's pairs go to
//!    the [`DayHook`]) and the hook's per-step calls;
//! 2. **user**: the user agent perceives, plans and walks ([`UserAgent::step`]);
//! 3. **turn**: while the user is awake, the assistant suggests and the user judges ([`turn`]);
//! 4. **records**: what the turn leaves goes into both memories and the counted logs;
//! 5. **commit**: the movement file, the day's metrics line, then the checkpoint that vouches
//!    for all of the above. A killed run resumes from its last complete step.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::hooks::DayHook;
use super::turn::{turn, Moment, TurnResult};
use crate::assistant::memory::{load_log, record_text, Record};
use crate::assistant::records::pairs_file;
use crate::assistant::AssistantMemory;
use crate::clock::{fmt_curr_time, Clock};
use crate::config::Config;
use crate::llm::Llm;
use crate::memory::{Interaction, StructuredMemory};
use crate::report::live::MetricsLog;
use crate::storage::movement::{Movement, PersonaEntry};
use crate::storage::{
    count_lines, jsonl_bytes, open_append, read_jsonl, sweep_temp_files, sync_all_at_once, truncate_lines,
    write_atomic, Meta, SimDir,
};
use crate::user::agent::UserStep;
use crate::user::memory::{AssociativeMemory, Node};
use crate::user::{UserAgent, UserState};
use crate::world::maze::Maze;
use crate::world::spatial::SpatialMemory;

const ASSISTANT_LOG: &str = "state/assistant_memory.jsonl";
const RECORDS: &str = "records.jsonl";
/// Today's evaluated interactions (the user's evaluation memory), emptied each morning. A log
/// rather than part of the checkpoint, so the checkpoint stays small late in the day.
const EVALUATED_LOG: &str = "state/evaluated_today.jsonl";
/// The user's associative-memory nodes, oldest first; the checkpoint records how many count.
const NODE_LOG: &str = "state/user_nodes.jsonl";
/// Checkpoints are `state/checkpoint-<next step>.json`: each step writes a new name and then
/// removes the one before last. Renaming over an existing file makes ext4 flush it
/// (`auto_da_alloc`; measured here at about four times the cost of a new name), and keeping the
/// previous one gives a resume something to fall back on. Runs of earlier versions wrote
/// `state/checkpoint.json`, which is still read.
const CHECKPOINT_DIR: &str = "state";
const LEGACY_CHECKPOINT: &str = "checkpoint.json";

fn checkpoint_name(next_step: u64) -> String {
    format!("checkpoint-{next_step}.json")
}

/// Checkpoint files in `dir`, newest first.
fn checkpoints(dir: &std::path::Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name == LEGACY_CHECKPOINT {
            out.push((0, e.path()));
        } else if let Some(n) =
            name.strip_prefix("checkpoint-").and_then(|r| r.strip_suffix(".json")).and_then(|n| n.parse().ok())
        {
            out.push((n, e.path()));
        }
    }
    out.sort_by_key(|c| std::cmp::Reverse(c.0));
    Ok(out)
}

/// What is saved after every step.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    next_step: u64,
    user: UserState,
    user_memory: AssociativeMemory,
    /// Lines of `NODE_LOG` that belong to this checkpoint (absent in checkpoints that held the
    /// nodes themselves).
    #[serde(default)]
    user_nodes: Option<usize>,
    /// Lines of every other log (path under the sim → count) that belong to this checkpoint.
    /// Absent in checkpoints of earlier versions, whose logs are cut by step instead.
    #[serde(default)]
    logs: Option<BTreeMap<String, usize>>,
    spatial: SpatialMemory,
    evaluator: StructuredMemory,
    assistant: AssistantMemory,
}

/// A line of `NODE_LOG`: the node and the vector of its `embedding_key`, so a resume restores
/// the persona's `embeddings.json` exactly as far as its `nodes.json` (the original's loader
/// indexes one with the keys of the other) without embedding anything again.
#[derive(Deserialize)]
struct LoggedNode {
    #[serde(flatten)]
    node: Node,
    #[serde(default)]
    embedding: Option<Vec<f32>>,
}

#[derive(Serialize)]
struct LoggedNodeRef<'a> {
    #[serde(flatten)]
    node: &'a Node,
    #[serde(skip_serializing_if = "Option::is_none")]
    embedding: Option<&'a Vec<f32>>,
}

/// One of today's evaluated interactions in the user's evaluation memory, with the vector of its
/// text (saved in `evaluation_memory/embeddings.json`, which the original's loader needs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Evaluated {
    #[serde(flatten)]
    pub interaction: Interaction,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub embedding: Vec<f32>,
}

/// What an engine is opened with besides its sim: the parts setup decides.
pub struct Attachments {
    /// Day boundaries and steps, for training (`sim::training`) or a test's recorder.
    pub hook: Option<Box<dyn DayHook>>,
    /// Counts the assistant's tokens for `number_of_action_tokens`; `None`: characters / 4.
    pub token_counter: Option<TokenCounter>,
    /// `metrics.jsonl`, opened by setup so that training and tracking can hold it too.
    pub metrics: MetricsLog,
}

pub type TokenCounter = Box<dyn Fn(&str) -> usize + Send + Sync>;

pub struct Engine {
    cfg: Config,
    sim: SimDir,
    meta: Meta,
    clock: Clock,
    maze: Arc<Maze>,
    llm: Arc<Llm>,
    user_name: String,
    assistant_name: String,
    user: UserAgent,
    /// The user's memory of evaluated suggestions (reset each morning, as in the original).
    evaluator: StructuredMemory,
    evaluated_today: Vec<Evaluated>,
    assistant: AssistantMemory,
    next_step: u64,
    /// How many of the user's memory nodes are already in `NODE_LOG`.
    logged_nodes: usize,
    /// Complete lines of each other log this sim appends to (path under the sim → count); the
    /// checkpoint records them, and a resume cuts each log back to its count.
    log_lines: BTreeMap<String, usize>,
    /// Logs appended to since the last checkpoint: flushed to disk before the next checkpoint
    /// when `durable`.
    unsynced_files: BTreeSet<PathBuf>,
    /// Folders that got a new file since the last checkpoint, flushed with them. Kept apart from
    /// the files so the flush needs no `stat` to tell them apart.
    unsynced_dirs: BTreeSet<PathBuf>,
    /// The logs appended to, kept open (a scripted sweep appends some 258,000 times a log).
    /// Closed whenever a log may be rewritten or cut back (a resume, a new day).
    open_logs: HashMap<String, std::fs::File>,
    /// The newest checkpoint file, whose data is flushed with the next step's batch.
    last_checkpoint: Option<PathBuf>,
    /// `[sim] durable`: make each checkpoint and what it counts survive a power loss.
    durable: bool,
    /// The environment the last movement leaves, with the step it is for: the headless driver
    /// writes it without reading the movement file back.
    derived_env: Option<(u64, crate::storage::Environment)>,
    /// The environment file the headless driver wrote last, with its step: the step reads it
    /// from here. (A page writes its own files, which the step reads.)
    written_env: Option<(u64, crate::storage::Environment)>,
    /// A step began and neither finished nor was undone by [`Engine::reload`]: the state in
    /// memory holds part of it, so it must not be saved.
    mid_step: bool,
    hook: Option<Box<dyn DayHook>>,
    /// Whether the hook has been told where this engine started (`DayHook::resumed`).
    hook_started: bool,
    /// Counts the assistant's tokens for `number_of_action_tokens` (chars/4 when no tokenizer).
    token_counter: TokenCounter,
    /// `metrics.jsonl`: a line as each day ends (and from the training hook, as it trains).
    metrics: MetricsLog,
}

/// What the records stage makes of a turn for the movement file.
struct Shown {
    entry: PersonaEntry,
    tokens: usize,
}

impl Engine {
    /// Open a sim folder (freshly forked, or to resume from its checkpoint).
    pub fn open(cfg: Config, sim: SimDir, maze: Arc<Maze>, llm: Arc<Llm>, parts: Attachments) -> Result<Engine> {
        let meta = sim.meta()?;
        let clock = Clock::new(&meta.start_date, meta.sec_per_step)?;
        if meta.persona_names.len() < 2 {
            bail!("{}: persona_names must list the user and the assistant", sim.path("reverie/meta.json").display());
        }
        // Writes a killed process never renamed into place; nothing else writes here now.
        sweep_temp_files(&sim.root)?;
        let user_name = meta.persona_names[0].clone();
        let assistant_name = meta.assistant_persona().unwrap_or_default().to_string();
        let user = initial_user(&sim, &user_name)?;
        let Attachments { hook, token_counter, metrics } = parts;
        let mut engine = Engine {
            user,
            durable: cfg.sim.durable,
            derived_env: None,
            open_logs: HashMap::new(),
            written_env: None,
            cfg,
            meta,
            clock,
            maze,
            llm,
            user_name,
            assistant_name,
            evaluator: StructuredMemory::new(3),
            evaluated_today: Vec::new(),
            assistant: AssistantMemory::default(),
            next_step: 0,
            logged_nodes: 0,
            log_lines: BTreeMap::new(),
            unsynced_files: BTreeSet::new(),
            unsynced_dirs: BTreeSet::new(),
            last_checkpoint: None,
            mid_step: false,
            hook,
            hook_started: false,
            token_counter: token_counter.unwrap_or_else(|| Box::new(|s: &str| s.len().div_ceil(4))),
            metrics,
            sim,
        };
        engine.load_checkpoint()?;
        let clock = &engine.clock;
        if let Err(e) =
            engine.metrics.catch_up_days(engine.next_step, clock.steps_per_day(), |s| fmt_curr_time(clock.time(s)))
        {
            tracing::warn!(error = %format!("{e:#}"), "metrics.jsonl: the finished days could not be filled in");
        }
        Ok(engine)
    }

    /// Go back to the last complete step, as a resume would: the state in memory of a step that
    /// was cut short (cancelled, or failed) is dropped, and its lines are cut from the logs. Run
    /// before saving the personas after such a step, so they never hold half of one.
    pub fn reload(&mut self) -> Result<()> {
        self.user = initial_user(&self.sim, &self.user_name)?;
        self.evaluator = StructuredMemory::new(3);
        self.evaluated_today.clear();
        self.assistant = AssistantMemory::default();
        self.next_step = 0;
        self.logged_nodes = 0;
        self.log_lines.clear();
        self.unsynced_files.clear();
        self.unsynced_dirs.clear();
        self.last_checkpoint = None;
        (self.derived_env, self.written_env) = (None, None);
        self.open_logs.clear();
        self.load_checkpoint()?;
        self.mid_step = false;
        Ok(())
    }

    /// The logs a checkpoint at `next_step` counts: those the step `next_step` may append to.
    fn counted_logs(&self, next_step: u64) -> [String; 4] {
        [
            ASSISTANT_LOG.to_string(),
            EVALUATED_LOG.to_string(),
            RECORDS.to_string(),
            pairs_file(self.clock.day(next_step)),
        ]
    }

    /// Why the logs and files on disk cannot back `cp` (a log shorter than it counts, or its
    /// last movement missing: possible after a power loss), or `Ok` if they can.
    fn backed(&self, cp: &Checkpoint) -> Result<(), String> {
        if cp.next_step > 0 && !self.sim.movement_path(cp.next_step - 1).is_file() {
            return Err(format!("movement/{}.json is missing", cp.next_step - 1));
        }
        let logs = self.vouched_logs(cp);
        let counts = cp.user_nodes.map(|n| (NODE_LOG, n)).into_iter();
        let others = logs.iter().flatten().map(|(rel, n)| (rel.as_str(), *n));
        for (rel, n) in counts.chain(others) {
            if !std::path::Path::new(rel).components().all(|c| matches!(c, std::path::Component::Normal(_))) {
                return Err(format!("it names a log outside the sim ({rel:?})"));
            }
            let have = count_lines(&self.sim.path(rel)).map_err(|e| format!("{e:#}"))?;
            if have < n {
                return Err(format!("{rel} has {have} complete lines but the checkpoint counts {n}"));
            }
        }
        Ok(())
    }

    /// The lines of each log that `cp` vouches for. When the step it resumes begins a new day of
    /// the user's evaluations, that log counts as empty: the step empties it first thing, so a
    /// run killed right after that must still resume from `cp`.
    fn vouched_logs(&self, cp: &Checkpoint) -> Option<BTreeMap<String, usize>> {
        let mut logs = cp.logs.clone()?;
        if cp.next_step % self.steps_per_day() == 1 {
            logs.insert(EVALUATED_LOG.to_string(), 0);
        }
        Some(logs)
    }

    fn load_checkpoint(&mut self) -> Result<()> {
        // The newest checkpoint that reads and that the logs back; an older one is the fallback
        // (an unreadable or unbacked checkpoint is possible only after a power loss).
        let all = checkpoints(&self.sim.path(CHECKPOINT_DIR))?;
        let mut found = None;
        let mut rejected = Vec::new();
        for (_, p) in &all {
            let cp = match std::fs::read_to_string(p)
                .map_err(anyhow::Error::from)
                .and_then(|t| Ok(serde_json::from_str::<Checkpoint>(&t)?))
            {
                Ok(cp) => cp,
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "skipping an unreadable checkpoint");
                    rejected.push(format!("{}: unreadable ({e})", p.display()));
                    continue;
                }
            };
            match self.backed(&cp) {
                Ok(()) => {
                    found = Some((p.clone(), cp));
                    break;
                }
                Err(why) => {
                    tracing::warn!(path = %p.display(), %why, "skipping a checkpoint its files do not back");
                    rejected.push(format!("{}: {why}", p.display()));
                }
            }
        }
        let Some((chosen, cp)) = found else {
            if !all.is_empty() {
                bail!(
                    "no checkpoint in {} can be resumed from, the sim's state is damaged:\n  {}",
                    self.sim.path(CHECKPOINT_DIR).display(),
                    rejected.join("\n  ")
                );
            }
            // No step finished yet: drop whatever a first step that was cut short appended.
            for rel in std::iter::once(NODE_LOG.to_string()).chain(self.counted_logs(0)) {
                truncate_lines(&self.sim.path(&rel), 0)?;
            }
            return Ok(());
        };
        // Keep the chosen one and the one before it (as a run does); newer ones are unusable.
        let at = all.iter().position(|(_, p)| *p == chosen).unwrap_or(0);
        for (_, p) in all.iter().enumerate().filter(|(i, _)| *i != at && *i != at + 1).map(|(_, c)| c) {
            std::fs::remove_file(p).with_context(|| format!("removing {}", p.display()))?;
        }
        self.last_checkpoint = Some(chosen.clone());
        let logs = self.vouched_logs(&cp);
        self.next_step = cp.next_step;
        self.user.state = cp.user;
        // The persona folder's vectors (as of its last save) plus those of the logged nodes.
        let mut embeddings = std::mem::take(&mut self.user.memory.embeddings);
        self.user.memory = cp.user_memory;
        let node_log = self.sim.path(NODE_LOG);
        if let Some(n) = cp.user_nodes {
            truncate_lines(&node_log, n)?;
            let logged = read_jsonl::<LoggedNode>(&node_log)?;
            if logged.len() != n {
                bail!("{} has {} readable nodes but the checkpoint counts {n}", node_log.display(), logged.len());
            }
            self.user.memory.nodes = logged
                .into_iter()
                .map(|l| {
                    if let Some(e) = l.embedding {
                        embeddings.insert(l.node.embedding_key.clone(), e);
                    }
                    l.node
                })
                .collect();
        } else {
            write_atomic(&node_log, &node_lines(&self.user.memory.nodes, &embeddings)?)?;
        }
        self.user.memory.embeddings = embeddings;
        self.logged_nodes = self.user.memory.nodes.len();
        self.user.spatial = cp.spatial;
        self.evaluator = cp.evaluator;
        self.assistant = cp.assistant;
        let (eval_log, log, records, pairs) = (
            self.sim.path(EVALUATED_LOG),
            self.sim.path(ASSISTANT_LOG),
            self.sim.path(RECORDS),
            self.sim.path(&pairs_file(self.clock.day(self.next_step))),
        );
        match logs {
            Some(logs) => {
                // Lines past the counts belong to the step that was cut short.
                for rel in self.counted_logs(self.next_step) {
                    truncate_lines(&self.sim.path(&rel), logs.get(&rel).copied().unwrap_or(0))?;
                }
                for (rel, n) in &logs {
                    truncate_lines(&self.sim.path(rel), *n)?;
                }
                self.log_lines = logs;
                self.evaluated_today = read_jsonl::<Evaluated>(&eval_log)?;
                self.assistant.set_records(load_log(&log, u64::MAX)?);
            }
            None => {
                // Checkpoints of earlier versions count no lines: keep those of finished steps.
                self.evaluated_today = read_jsonl::<Evaluated>(&eval_log)?
                    .into_iter()
                    .filter(|i| i.interaction.step < self.next_step)
                    .collect();
                rewrite_jsonl(&eval_log, &self.evaluated_today)?;
                self.assistant.set_records(load_log(&log, self.next_step)?);
                rewrite_jsonl(&log, self.assistant.records())?;
                truncate_jsonl_by_step(&records, self.next_step)?;
                truncate_jsonl_by_step(&pairs, self.next_step)?;
                for rel in self.counted_logs(self.next_step) {
                    let n = count_lines(&self.sim.path(&rel))?;
                    self.log_lines.insert(rel, n);
                }
            }
        }
        if chosen.file_name().is_some_and(|n| n == LEGACY_CHECKPOINT) {
            self.write_checkpoint()?;
            std::fs::remove_file(&chosen).with_context(|| format!("removing {}", chosen.display()))?;
        }
        Ok(())
    }

    /// Append one line to a counted log.
    fn append_log(&mut self, rel: &str, item: &impl Serialize) -> Result<()> {
        self.append(rel, &jsonl_bytes([item])?)?;
        *self.log_lines.entry(rel.to_string()).or_default() += 1;
        Ok(())
    }

    /// Append whole lines to a log, remembering to flush it (and a new file's folder) before
    /// the next checkpoint.
    fn append(&mut self, rel: &str, bytes: &[u8]) -> Result<()> {
        let path = self.sim.path(rel);
        let file = match self.open_logs.entry(rel.to_string()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                if self.durable && !path.exists() {
                    if let Some(dir) = path.parent() {
                        self.unsynced_dirs.insert(dir.to_path_buf());
                    }
                }
                e.insert(open_append(&path)?)
            }
        };
        // One `write` of whole lines, as `append_bytes` does.
        file.write_all(bytes).with_context(|| format!("appending to {}", path.display()))?;
        self.unsynced_files.insert(path);
        Ok(())
    }

    /// Whether the sim in `sim` has finished a step (has a checkpoint to resume from). A sim
    /// without one was forked but never stepped, so forking it again loses nothing.
    pub fn has_checkpoint(sim: &SimDir) -> Result<bool> {
        Ok(!checkpoints(&sim.path(CHECKPOINT_DIR))?.is_empty())
    }

    /// Embeddings of remembered interactions (after a resume they come from the cache).
    /// (Logs of earlier versions did not keep the vectors; they are embedded once here.)
    async fn ensure_embeddings(&mut self) -> Result<()> {
        if self.assistant.records().iter().any(|r| r.embedding.is_empty()) {
            let mut all = self.assistant.records().to_vec();
            for r in all.iter_mut().filter(|r| r.embedding.is_empty()) {
                r.embedding = self.llm.embed(&r.text).await?;
            }
            self.assistant.set_records(all);
        }
        for e in self.evaluated_today.iter_mut().filter(|e| e.embedding.is_empty()) {
            e.embedding = self.llm.embed(&e.interaction.text).await?;
        }
        Ok(())
    }

    pub fn steps_per_day(&self) -> u64 {
        self.clock.steps_per_day()
    }

    /// Compute step `self.next_step` from its environment file and write its movement file.
    pub async fn step(&mut self) -> Result<Movement> {
        self.mid_step = true;
        let step = self.next_step;
        let env = match self.written_env.take() {
            Some((s, env)) if s == step => env,
            _ => self.sim.read_env(step)?.with_context(|| format!("environment/{step}.json is missing"))?,
        };
        let now = self.clock.time(step);
        self.llm.set_step(step);
        self.ensure_embeddings().await?;
        self.begin(step)?;

        // The user: the page's tile for it if that is on the map, else where it stood.
        let tile = env
            .get(&self.user_name)
            .map(|t| (t.x.max(0) as usize, t.y.max(0) as usize))
            .unwrap_or(self.user.state.tile);
        let tile = if self.maze.tile(tile.0, tile.1).is_some() { tile } else { self.user.state.tile };
        let tps = self.cfg.sim.tiles_per_step(self.meta.sec_per_step);
        let u = self.user.step(&self.llm, &self.maze, now, tile, tps).await?;

        // The assistant: a turn while the user is awake, then its records.
        let assistant_tile = env.get(&self.assistant_name).map(|t| [t.x, t.y]).unwrap_or([0, 0]);
        let shown = if u.asleep {
            Shown { entry: PersonaEntry::idle(assistant_tile, &self.user_name), tokens: 0 }
        } else {
            if let Some(h) = self.hook.as_mut() {
                h.before_suggest().await?;
            }
            let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.sim.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let moment = Moment {
                step,
                now,
                user_name: &self.user_name,
                assistant_name: &self.assistant_name,
                profile: &self.user.profile,
                action: &u.action,
                act_description: &u.act_description,
                walking: u.walking,
            };
            let r = turn(&self.llm, &self.cfg.sim, &moment, &self.assistant, &self.evaluator, &mut rng).await?;
            self.records(step, &u, r, assistant_tile, &mut rng).await?
        };

        let u_entry = PersonaEntry::user([u.tile.0 as i64, u.tile.1 as i64], u.emoji, u.description, &u.walked);
        let mv = Movement::new(
            &self.user_name,
            u_entry,
            &self.assistant_name,
            shown.entry,
            &fmt_curr_time(now),
            u.walking,
            shown.tokens,
        );
        self.commit(step, &mv)?;
        Ok(mv)
    }

    /// Stage 1: the day boundary at the second step of each day (00:02:30), as the original: the
    /// user's evaluation memory resets and yesterday's preference data goes to training. Then
    /// the hook's per-step calls.
    fn begin(&mut self, step: u64) -> Result<()> {
        if step % self.steps_per_day() == 1 {
            self.evaluator.reset();
            self.evaluated_today.clear();
            // The evaluated log is cut back and the day's pairs go to a new file.
            self.open_logs.clear();
            let eval_log = self.sim.path(EVALUATED_LOG);
            truncate_lines(&eval_log, 0)?;
            self.log_lines.insert(EVALUATED_LOG.to_string(), 0);
            self.unsynced_files.insert(eval_log);
            if step > 1 {
                let day = self.clock.day(step) - 1;
                if let Some(h) = self.hook.as_mut() {
                    h.day_ended(day, &self.sim.path(&pairs_file(day)))?;
                }
                self.write_personas()?;
            }
        }
        // The first step this engine runs: tell the hook which day ended last before it (a run
        // resumed between a boundary and the end of that day's training missed the training).
        let spd = self.steps_per_day();
        if !std::mem::replace(&mut self.hook_started, true) && step >= spd + 2 {
            let day = (step - 2) / spd - 1;
            if let Some(h) = self.hook.as_mut() {
                h.resumed(day, &self.sim.path(&pairs_file(day)))?;
            }
        }
        if let Some(h) = self.hook.as_mut() {
            h.before_step(step)?;
        }
        Ok(())
    }

    /// Stage 4: the shown suggestion into both memories (with its score as the memory level
    /// says, in the assistant's only), the record and the pair into their logs; returns the
    /// assistant's entry of the movement file.
    async fn records(
        &mut self,
        step: u64,
        u: &UserStep,
        r: TurnResult,
        assistant_tile: [i64; 2],
        rng: &mut ChaCha8Rng,
    ) -> Result<Shown> {
        let now = self.clock.time(step);
        let score = r.shown_judgement.score_string();
        let shown_text = r.shown.suggestion.text().to_string();
        let text = record_text(
            self.cfg.sim.memory_level,
            &self.user_name,
            &r.user_action,
            &shown_text,
            &score,
            &r.shown_judgement.reason,
            rng,
        );
        // The user's view holds the action and the suggestion, never the score.
        let seen_text =
            crate::user::evaluator::memory_entry(&self.user_name, &u.act_description, u.walking, &shown_text);
        // Both memories' vectors in one request: the assistant's record and the user's view.
        let mut vectors = self.llm.embed_many(&[text.clone(), seen_text.clone()]).await?.into_iter();
        let (Some(embedding), Some(seen_embedding)) = (vectors.next(), vectors.next()) else {
            bail!("the embedding provider returned fewer vectors than texts");
        };
        let recommended = !r.shown.suggestion.is_norec();
        let rec = Record { step, time: now, text, recommended, embedding };
        self.append_log(ASSISTANT_LOG, &rec)?;
        let score_aware = self.cfg.sim.memory_level.score_aware_summaries();
        self.assistant
            .structured
            .add(
                &self.llm,
                "the assistant",
                &self.user_name,
                score_aware,
                AssistantMemory::interaction(&rec, Some(r.shown_judgement.total)),
            )
            .await?;
        self.assistant.push(rec);
        let seen = Interaction { step, time: now, text: seen_text, recommended, score: None };
        self.evaluator.add(&self.llm, "the user", &self.user_name, false, seen.clone()).await?;
        let seen = Evaluated { interaction: seen, embedding: seen_embedding };
        self.append_log(EVALUATED_LOG, &seen)?;
        self.evaluated_today.push(seen);
        self.append_log(RECORDS, &r.record)?;
        if let Some(p) = &r.pair {
            self.append_log(&pairs_file(self.clock.day(step)), p)?;
        }
        let reason = r.shown.reason.clone().unwrap_or_default();
        let tokens = (self.token_counter)(&shown_text)
            + (self.token_counter)(&reason)
            + (self.token_counter)(&format!("{} is {}", self.user_name, r.user_action));
        let entry = PersonaEntry::suggesting(
            assistant_tile,
            &self.user_name,
            r.user_action,
            shown_text,
            score,
            r.shown_judgement.reason,
        );
        Ok(Shown { entry, tokens })
    }

    /// Stage 5: the movement file, the day's metrics line, then the checkpoint that vouches for
    /// everything the step wrote.
    fn commit(&mut self, step: u64, mv: &Movement) -> Result<()> {
        self.sim.write_movement(step, mv)?;
        self.derived_env = Some((step + 1, self.environment_after(mv)));
        self.day_metrics(step);
        self.next_step = step + 1;
        self.write_checkpoint()?;
        self.mid_step = false;
        Ok(())
    }

    /// After the last step of a day: its line in `metrics.jsonl`, before the checkpoint, so a
    /// kill before the checkpoint redoes the step and finds the line written (it is not written
    /// twice). The file is derived: a failure is a warning, and the next resume fills it in.
    fn day_metrics(&mut self, step: u64) {
        let spd = self.steps_per_day();
        if !(step + 1).is_multiple_of(spd) {
            return;
        }
        let day = step / spd;
        match self.metrics.day_ended(day, spd, &fmt_curr_time(self.clock.time(day * spd))) {
            Ok(true) => {
                self.unsynced_files.insert(self.metrics.path());
                self.unsynced_dirs.insert(self.sim.root.clone());
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), day = day + 1, "metrics.jsonl: no line for the day"),
        }
    }

    /// With `durable`: flush to disk what the next checkpoint vouches for (the logs appended
    /// since the last one, the last movement file, and the folders that got new names), so no
    /// power loss can leave a checkpoint ahead of them. The previous checkpoint is flushed in
    /// the same batch rather than on its own: a power loss can cost the last step (the resume
    /// falls back to the one before, which is on disk), never consistency.
    fn flush(&mut self) -> Result<()> {
        let (files, dirs) = (std::mem::take(&mut self.unsynced_files), std::mem::take(&mut self.unsynced_dirs));
        if !self.durable {
            return Ok(());
        }
        let (mut files, mut dirs): (Vec<PathBuf>, Vec<PathBuf>) =
            (files.into_iter().collect(), dirs.into_iter().collect());
        if let Some(last) = self.next_step.checked_sub(1) {
            files.push(self.sim.movement_path(last));
        }
        files.extend(self.last_checkpoint.clone());
        dirs.extend([self.sim.path("movement"), self.sim.path(CHECKPOINT_DIR)]);
        dirs.sort();
        dirs.dedup();
        sync_all_at_once(&files, &dirs)
    }

    fn write_checkpoint(&mut self) -> Result<()> {
        // New nodes go to their log first: a crash before the checkpoint leaves extra lines,
        // which the next resume drops.
        let nodes = &self.user.memory.nodes;
        if nodes.len() > self.logged_nodes {
            let bytes = node_lines(&nodes[self.logged_nodes..], &self.user.memory.embeddings)?;
            // Counted by `user_nodes` rather than in `log_lines`.
            self.append(NODE_LOG, &bytes)?;
            self.logged_nodes = self.user.memory.nodes.len();
        }
        self.flush()?;
        for rel in self.counted_logs(self.next_step) {
            self.log_lines.entry(rel).or_insert(0);
        }
        let cp = CheckpointRef {
            next_step: self.next_step,
            user: &self.user.state,
            user_memory: &self.user.memory,
            user_nodes: self.logged_nodes,
            logs: &self.log_lines,
            spatial: &self.user.spatial,
            evaluator: &self.evaluator,
            assistant: &self.assistant,
        };
        let dir = self.sim.path(CHECKPOINT_DIR);
        let path = dir.join(checkpoint_name(self.next_step));
        write_atomic(&path, &serde_json::to_vec(&cp)?)?;
        self.last_checkpoint = Some(path);
        // Keep the previous one as well; drop the one before it.
        if let Some(old) = self.next_step.checked_sub(2) {
            match std::fs::remove_file(dir.join(checkpoint_name(old))) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).context("removing an old checkpoint")
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Save persona folders and `meta.json` (at each day's end and on exit). Refused while a step
    /// is cut short and not undone (see [`Engine::reload`]): the folders keep their last
    /// consistent save rather than half a step.
    pub fn save_personas(&mut self) -> Result<()> {
        if self.mid_step {
            bail!("not saving the personas: a step was cut short and the engine could not go back to its last complete step (resume the sim to recover)");
        }
        self.write_personas()
    }

    fn write_personas(&mut self) -> Result<()> {
        let now = self.clock.time(self.next_step);
        let dir = self.sim.bootstrap(&self.user_name);
        self.user.save(&dir, now)?;
        crate::user::eval_store::save(
            &dir.join("evaluation_memory"),
            &self.user_name,
            // The original's evaluation memory took recommendations only ("No Recommendation"
            // went into the hour's summary but never became a node).
            self.evaluated_today
                .iter()
                .filter(|e| e.interaction.recommended)
                .map(|e| (e.interaction.time, e.interaction.text.as_str(), &e.embedding[..])),
        )?;
        let adir = self.sim.bootstrap(&self.assistant_name);
        crate::user::eval_store::save(
            &adir.join("evaluation_memory"),
            &self.assistant_name,
            self.assistant.records().iter().map(|r| (r.time, r.text.as_str(), &r.embedding[..])),
        )?;
        self.meta.step = self.next_step;
        self.meta.curr_time = fmt_curr_time(now);
        self.sim.write_meta(&self.meta)
    }

    /// Write the headless driver's environment for the next step from the last movement
    /// (the original's `generate_fake_environment`).
    pub fn write_next_environment(&mut self) -> Result<()> {
        let step = self.next_step;
        if step == 0 {
            return Ok(());
        }
        let env = match self.derived_env.take() {
            Some((s, env)) if s == step => env,
            _ => {
                let prev =
                    self.sim.read_movement(step - 1)?.with_context(|| format!("movement/{} is missing", step - 1))?;
                self.environment_after(&prev)
            }
        };
        self.sim.write_env(step, &env)?;
        self.written_env = Some((step, env));
        Ok(())
    }

    /// Where a movement leaves each persona, as an environment file has it.
    fn environment_after(&self, mv: &Movement) -> crate::storage::Environment {
        let mut env = crate::storage::Environment::new();
        for (name, p) in &mv.persona {
            let [x, y] = p.movement;
            env.insert(name.clone(), crate::storage::EnvTile { maze: self.meta.maze_name.clone(), x, y });
        }
        env
    }

    pub fn sim_path(&self, rel: &str) -> PathBuf {
        self.sim.path(rel)
    }

    /// Record a checked resume in run.json (and meta.json's label), at the step it resumes.
    pub fn record_resume(&mut self, resume: super::provenance::Resume) -> Result<()> {
        resume.record(&self.cfg, &self.sim, &mut self.meta, self.next_step)
    }

    /// The same engine with `hook` in place of its day hook, before its first step (a test's
    /// recorder in place of training).
    pub fn with_day_hook(mut self, hook: Box<dyn DayHook>) -> Engine {
        self.hook = Some(hook);
        self
    }

    /// The step the next call to [`Engine::step`] computes.
    pub fn next_step(&self) -> u64 {
        self.next_step
    }

    pub fn sim(&self) -> &SimDir {
        &self.sim
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn llm(&self) -> &Arc<Llm> {
        &self.llm
    }

    pub fn metrics(&self) -> &MetricsLog {
        &self.metrics
    }

    /// Whether a day hook (training) is attached.
    pub fn has_day_hook(&self) -> bool {
        self.hook.is_some()
    }

    /// The user's memory of evaluated suggestions.
    pub fn evaluator(&self) -> &StructuredMemory {
        &self.evaluator
    }

    /// Today's evaluated interactions, as the user's evaluation memory saves them.
    pub fn evaluated_today(&self) -> &[Evaluated] {
        &self.evaluated_today
    }

    pub fn assistant(&self) -> &AssistantMemory {
        &self.assistant
    }
}

#[derive(Serialize)]
struct CheckpointRef<'a> {
    next_step: u64,
    user: &'a UserState,
    user_memory: &'a AssociativeMemory,
    user_nodes: usize,
    logs: &'a BTreeMap<String, usize>,
    spatial: &'a SpatialMemory,
    evaluator: &'a StructuredMemory,
    assistant: &'a AssistantMemory,
}

/// The user as the persona folder has it, standing on its tile of `environment/0.json`.
fn initial_user(sim: &SimDir, user_name: &str) -> Result<UserAgent> {
    let mut user =
        UserAgent::load(&sim.bootstrap(user_name)).with_context(|| format!("loading persona {user_name}"))?;
    let env0 = sim.read_env(0)?.with_context(|| "environment/0.json is missing")?;
    let t = env0.get(user_name).with_context(|| format!("environment/0.json has no tile for {user_name}"))?;
    user.state.tile = (t.x.max(0) as usize, t.y.max(0) as usize);
    Ok(user)
}

/// `NODE_LOG` lines for `nodes`, each with the vector of its key.
fn node_lines(nodes: &[Node], embeddings: &indexmap::IndexMap<String, Vec<f32>>) -> Result<Vec<u8>> {
    let lines: Vec<LoggedNodeRef> =
        nodes.iter().map(|node| LoggedNodeRef { node, embedding: embeddings.get(&node.embedding_key) }).collect();
    jsonl_bytes(&lines)
}

fn rewrite_jsonl<T: Serialize>(path: &std::path::Path, items: &[T]) -> Result<()> {
    write_atomic(path, &jsonl_bytes(items)?)
}

/// Drop lines whose `step` is not below `next_step` (the interrupted step's partial output).
fn truncate_jsonl_by_step(path: &std::path::Path, next_step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let rows: Vec<Value> = crate::storage::read_jsonl(path)?;
    let keep: Vec<&Value> =
        rows.iter().filter(|v| v.get("step").and_then(Value::as_u64).map(|s| s < next_step).unwrap_or(false)).collect();
    if keep.len() != rows.len() {
        rewrite_jsonl(path, &keep)?;
    }
    Ok(())
}
