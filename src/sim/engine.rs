//! The simulation state machine: one call to [`Engine::step`] turns `environment/<n>.json` into
//! `movement/<n>.json`, in the original's order: the user moves first, then the assistant
//! suggests and the user judges. State is checkpointed after every step, so a killed run resumes
//! from its last complete step.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::clock::{fmt_curr_time, Clock};
use super::hooks::DayHook;
use super::movement::{movement_json, PersonaEntry};
use super::turn::{turn, Moment};
use crate::assistant::memory::{load_log, record_text, Record};
use crate::assistant::records::pairs_file;
use crate::assistant::AssistantMemory;
use crate::config::Config;
use crate::llm::Llm;
use crate::memory::{Interaction, StructuredMemory};
use crate::storage::{append_jsonl, jsonl_bytes, write_atomic, Meta, SimDir};
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
    spatial: SpatialMemory,
    evaluator: StructuredMemory,
    assistant: AssistantMemory,
}

pub struct Engine {
    pub cfg: Config,
    pub sim: SimDir,
    pub meta: Meta,
    pub clock: Clock,
    pub maze: Arc<Maze>,
    pub llm: Arc<Llm>,
    pub user_name: String,
    pub assistant_name: String,
    pub user: UserAgent,
    /// The user's memory of evaluated suggestions (reset each morning, as in the original).
    pub evaluator: StructuredMemory,
    pub evaluated_today: Vec<Interaction>,
    pub assistant: AssistantMemory,
    pub next_step: u64,
    /// How many of the user's memory nodes are already in `NODE_LOG`.
    logged_nodes: usize,
    pub hook: Option<Box<dyn DayHook>>,
    /// Counts the assistant's tokens for `number_of_action_tokens` (chars/4 when no tokenizer).
    pub token_counter: Box<dyn Fn(&str) -> usize + Send + Sync>,
}

impl Engine {
    /// Open a sim folder (freshly forked, or to resume from its checkpoint).
    pub fn open(cfg: Config, sim: SimDir, maze: Arc<Maze>, llm: Arc<Llm>) -> Result<Engine> {
        let meta = sim.meta()?;
        let clock = Clock::new(&meta.start_date, meta.sec_per_step)?;
        if meta.persona_names.len() < 2 {
            bail!("{}: persona_names must list the user and the assistant", sim.path("reverie/meta.json").display());
        }
        let (user_name, assistant_name) = (meta.persona_names[0].clone(), meta.persona_names[1].clone());
        let mut user =
            UserAgent::load(&sim.bootstrap(&user_name)).with_context(|| format!("loading persona {user_name}"))?;
        let mut engine = Engine {
            user: {
                let env0 = sim.read_env(0)?.with_context(|| "environment/0.json is missing")?;
                let t =
                    env0.get(&user_name).with_context(|| format!("environment/0.json has no tile for {user_name}"))?;
                user.state.tile = (t.x.max(0) as usize, t.y.max(0) as usize);
                user
            },
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
            hook: None,
            token_counter: Box::new(|s: &str| s.len().div_ceil(4)),
            sim,
        };
        engine.load_checkpoint()?;
        Ok(engine)
    }

    fn load_checkpoint(&mut self) -> Result<()> {
        // The newest checkpoint that reads; an unreadable one (possible only after a power
        // loss, as there is no fsync) falls back to the one before it.
        let all = checkpoints(&self.sim.path(CHECKPOINT_DIR))?;
        let mut found = None;
        for (_, p) in &all {
            match std::fs::read_to_string(p)
                .map_err(anyhow::Error::from)
                .and_then(|t| Ok(serde_json::from_str::<Checkpoint>(&t)?))
            {
                Ok(cp) => {
                    found = Some((p.clone(), cp));
                    break;
                }
                Err(e) => tracing::warn!(path = %p.display(), error = %e, "skipping an unreadable checkpoint"),
            }
        }
        let Some((chosen, cp)) = found else {
            if let Some((_, p)) = all.first() {
                bail!(
                    "no checkpoint in {} could be read (the newest is {})",
                    self.sim.path(CHECKPOINT_DIR).display(),
                    p.display()
                );
            }
            return Ok(());
        };
        for (_, p) in all.iter().filter(|(_, p)| *p != chosen) {
            std::fs::remove_file(p).with_context(|| format!("removing {}", p.display()))?;
        }
        self.next_step = cp.next_step;
        self.user.state = cp.user;
        let embeddings = std::mem::take(&mut self.user.memory.embeddings);
        self.user.memory = cp.user_memory;
        self.user.memory.embeddings = embeddings;
        let node_log = self.sim.path(NODE_LOG);
        if let Some(n) = cp.user_nodes {
            let mut nodes = crate::storage::read_jsonl::<Node>(&node_log)?;
            if nodes.len() < n {
                bail!(
                    "{} has {} nodes but the checkpoint counts {n}: the sim's state is damaged",
                    node_log.display(),
                    nodes.len()
                );
            }
            nodes.truncate(n);
            self.user.memory.nodes = nodes;
        }
        rewrite_jsonl(&node_log, &self.user.memory.nodes)?;
        self.logged_nodes = self.user.memory.nodes.len();
        self.user.spatial = cp.spatial;
        self.evaluator = cp.evaluator;
        let eval_log = self.sim.path(EVALUATED_LOG);
        self.evaluated_today = crate::storage::read_jsonl::<Interaction>(&eval_log)?
            .into_iter()
            .filter(|i| i.step < self.next_step)
            .collect();
        rewrite_jsonl(&eval_log, &self.evaluated_today)?;
        self.assistant = cp.assistant;
        // Logs may hold lines of the step that was cut short: keep only finished steps.
        let log = self.sim.path(ASSISTANT_LOG);
        self.assistant.all = load_log(&log, self.next_step)?;
        rewrite_jsonl(&log, &self.assistant.all)?;
        truncate_jsonl_by_step(&self.sim.path(RECORDS), self.next_step)?;
        truncate_jsonl_by_step(&self.sim.path(&pairs_file(self.clock.day(self.next_step))), self.next_step)?;
        if chosen.file_name().is_some_and(|n| n == LEGACY_CHECKPOINT) {
            self.write_checkpoint()?;
            std::fs::remove_file(&chosen).with_context(|| format!("removing {}", chosen.display()))?;
        }
        Ok(())
    }

    /// Embeddings of remembered interactions (after a resume they come from the cache).
    async fn ensure_embeddings(&mut self) -> Result<()> {
        for r in self.assistant.all.iter_mut().filter(|r| r.embedding.is_empty()) {
            r.embedding = self.llm.embed(&r.text).await?;
        }
        Ok(())
    }

    pub fn steps_per_day(&self) -> u64 {
        self.clock.steps_per_day()
    }

    /// Compute step `self.next_step` from its environment file and write its movement file.
    pub async fn step(&mut self) -> Result<Value> {
        let step = self.next_step;
        let env = self.sim.read_env(step)?.with_context(|| format!("environment/{step}.json is missing"))?;
        let now = self.clock.time(step);
        self.llm.set_step(step);
        self.ensure_embeddings().await?;

        // Day boundary at the second step of each day (00:02:30), as the original: the user's
        // evaluation memory resets and yesterday's preference data goes to training.
        if step % self.steps_per_day() == 1 {
            self.evaluator.reset();
            self.evaluated_today.clear();
            write_atomic(&self.sim.path(EVALUATED_LOG), b"")?;
            if step > 1 {
                let day = self.clock.day(step) - 1;
                if let Some(h) = self.hook.as_mut() {
                    h.day_ended(day, &self.sim.path(&pairs_file(day)))?;
                }
                self.save_personas()?;
            }
        }
        if let Some(h) = self.hook.as_mut() {
            h.before_step(step)?;
        }

        let tile = env
            .get(&self.user_name)
            .map(|t| (t.x.max(0) as usize, t.y.max(0) as usize))
            .unwrap_or(self.user.state.tile);
        let tile = if self.maze.tile(tile.0, tile.1).is_some() { tile } else { self.user.state.tile };
        let tps = self.cfg.sim.tiles_per_step(self.meta.sec_per_step);
        let u = self.user.step(&self.llm, &self.maze, now, tile, tps).await?;

        let assistant_tile = env.get(&self.assistant_name).map(|t| [t.x, t.y]).unwrap_or([0, 0]);
        let mut a_entry = PersonaEntry::idle(assistant_tile, &self.user_name);
        let mut tokens = 0usize;
        if !u.asleep {
            if let Some(h) = self.hook.as_mut() {
                h.before_suggest()?;
            }
            let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.sim.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let moment = Moment {
                step,
                now,
                user_name: &self.user_name,
                assistant_name: &self.assistant_name,
                profile: &self.user.profile,
                action: &u.action,
                walking: u.walking,
            };
            let r = turn(&self.llm, &self.cfg.sim, &moment, &self.assistant, &self.evaluator, &mut rng).await?;
            let score = r.shown_judgement.score_string();
            let shown_text = r.shown.suggestion.text().to_string();
            // Into both memories: the shown suggestion with its score.
            let text = record_text(
                self.cfg.sim.memory_level,
                &self.user_name,
                &r.user_action,
                &shown_text,
                &score,
                &r.shown_judgement.reason,
                &mut rng,
            );
            let embedding = self.llm.embed(&text).await?;
            let rec = Record { step, time: now, text, recommended: !r.shown.suggestion.is_norec(), embedding };
            append_jsonl(&self.sim.path(ASSISTANT_LOG), &rec)?;
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
            let seen = Interaction {
                step,
                time: now,
                text: format!(
                    "{}'s action: {}\nSuggestion: {}\nMy score: {}/4",
                    self.user_name, r.user_action, shown_text, score
                ),
                recommended: !r.shown.suggestion.is_norec(),
                score: Some(r.shown_judgement.total),
            };
            self.evaluator.add(&self.llm, "the user", &self.user_name, true, seen.clone()).await?;
            append_jsonl(&self.sim.path(EVALUATED_LOG), &seen)?;
            self.evaluated_today.push(seen);
            append_jsonl(&self.sim.path(RECORDS), &r.record)?;
            if let Some(p) = &r.pair {
                append_jsonl(&self.sim.path(&pairs_file(self.clock.day(step))), p)?;
            }
            let reason = r.shown.reason.clone().unwrap_or_default();
            tokens = (self.token_counter)(&shown_text)
                + (self.token_counter)(&reason)
                + (self.token_counter)(&format!("{} is {}", self.user_name, r.user_action));
            a_entry = PersonaEntry::suggesting(
                assistant_tile,
                &self.user_name,
                r.user_action,
                shown_text,
                score,
                r.shown_judgement.reason.clone(),
            );
        }
        let u_entry = PersonaEntry::user([u.tile.0 as i64, u.tile.1 as i64], u.emoji, u.description, &u.walked);
        let mv = movement_json(
            &self.user_name,
            u_entry,
            &self.assistant_name,
            a_entry,
            &fmt_curr_time(now),
            u.walking,
            tokens,
        );
        self.sim.write_movement(step, &mv)?;
        self.next_step = step + 1;
        self.write_checkpoint()?;
        Ok(mv)
    }

    fn write_checkpoint(&mut self) -> Result<()> {
        // New nodes go to their log first: a crash before the checkpoint leaves extra lines,
        // which the next resume drops.
        let nodes = &self.user.memory.nodes;
        if nodes.len() > self.logged_nodes {
            crate::storage::append_bytes(&self.sim.path(NODE_LOG), &jsonl_bytes(&nodes[self.logged_nodes..])?)?;
            self.logged_nodes = nodes.len();
        }
        let cp = CheckpointRef {
            next_step: self.next_step,
            user: &self.user.state,
            user_memory: &self.user.memory,
            user_nodes: self.logged_nodes,
            spatial: &self.user.spatial,
            evaluator: &self.evaluator,
            assistant: &self.assistant,
        };
        let dir = self.sim.path(CHECKPOINT_DIR);
        write_atomic(&dir.join(checkpoint_name(self.next_step)), &serde_json::to_vec(&cp)?)?;
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

    /// Save persona folders and `meta.json` (at each day's end and on exit).
    pub fn save_personas(&mut self) -> Result<()> {
        let now = self.clock.time(self.next_step);
        let dir = self.sim.bootstrap(&self.user_name);
        self.user.save(&dir, now)?;
        crate::user::eval_store::save(
            &dir.join("evaluation_memory"),
            &self.user_name,
            self.evaluated_today.iter().map(|i| (i.time, i.text.as_str())),
        )?;
        let adir = self.sim.bootstrap(&self.assistant_name);
        crate::user::eval_store::save(
            &adir.join("evaluation_memory"),
            &self.assistant_name,
            self.assistant.all.iter().map(|r| (r.time, r.text.as_str())),
        )?;
        self.meta.step = self.next_step;
        self.meta.curr_time = fmt_curr_time(now);
        self.sim.write_meta(&self.meta)
    }

    /// Write the headless driver's environment for the next step from the last movement
    /// (the original's `generate_fake_environment`).
    pub fn write_next_environment(&self) -> Result<()> {
        let step = self.next_step;
        if step == 0 {
            return Ok(());
        }
        let prev = self.sim.read_movement(step - 1)?.with_context(|| format!("movement/{} is missing", step - 1))?;
        let mut env = crate::storage::Environment::new();
        if let Some(Value::Object(ps)) = prev.get("persona") {
            for (name, p) in ps {
                let xy = p.get("movement").and_then(Value::as_array).cloned().unwrap_or_default();
                let (x, y) =
                    (xy.first().and_then(Value::as_i64).unwrap_or(0), xy.get(1).and_then(Value::as_i64).unwrap_or(0));
                env.insert(name.clone(), crate::storage::EnvTile { maze: self.meta.maze_name.clone(), x, y });
            }
        }
        self.sim.write_env(step, &env)
    }

    pub fn sim_path(&self, rel: &str) -> PathBuf {
        self.sim.path(rel)
    }
}

#[derive(Serialize)]
struct CheckpointRef<'a> {
    next_step: u64,
    user: &'a UserState,
    user_memory: &'a AssociativeMemory,
    user_nodes: usize,
    spatial: &'a SpatialMemory,
    evaluator: &'a StructuredMemory,
    assistant: &'a AssistantMemory,
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
