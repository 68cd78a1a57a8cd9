//! The user agent: plans its day, picks where each action happens, walks there on a real path,
//! perceives the house, and remembers what it did.

use std::path::Path;

use anyhow::Result;
use chrono::{Duration, NaiveDateTime};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::day::{is_sleep, DayPlan};
use super::memory::AssociativeMemory;
use super::plan_tasks::{
    ChoosePlace, DailyPlan, Decompose, Emoji, HourlySchedule, Poignancy, ReviseStatus, WakeUpHour,
};
use super::profile::{content_words, Profile, Scratch};
use crate::clock::{fmt_curr_time, minute_of_day};
use crate::llm::Llm;
use crate::world::maze::Maze;
use crate::world::path::nearest_reachable;
use crate::world::spatial::SpatialMemory;
use crate::world::Pos;

/// The action the user is doing now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Action {
    pub block: usize,
    pub sub: usize,
    pub description: String,
    pub address: String,
    pub emoji: String,
    pub start: String,
    pub minutes: u32,
}

/// Everything about the user that changes during a run (checkpointed every step).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct UserState {
    pub tile: Pos,
    pub day: Option<DayPlan>,
    pub status: String,
    pub action: Option<Action>,
    /// Tiles still to walk, next first.
    pub path: Vec<Pos>,
    pub actions_today: Vec<String>,
    pub actions_yesterday: Vec<String>,
}

/// What the user did this step, for the movement file.
#[derive(Debug, Clone, PartialEq)]
pub struct UserStep {
    pub tile: Pos,
    /// Tiles walked this step, starting tile included (one entry when standing still).
    pub walked: Vec<Pos>,
    pub emoji: String,
    pub description: String,
    /// The action alone (a decomposed block's subtask), as the assistant sees it.
    pub action: String,
    /// The original's `act_description`: `"task (subtask)"` for a decomposed block, else the
    /// action; what the user's evaluator sees.
    pub act_description: String,
    pub walking: bool,
    pub asleep: bool,
}

pub struct UserAgent {
    pub profile: Profile,
    pub scratch: Scratch,
    pub spatial: SpatialMemory,
    pub memory: AssociativeMemory,
    pub state: UserState,
    /// Pos of the last perception (not saved: perceiving again after a resume is harmless).
    perceived_from: Option<Pos>,
}

impl UserAgent {
    /// Load from `personas/<name>/bootstrap_memory`.
    pub fn load(dir: &Path) -> Result<UserAgent> {
        let scratch = Scratch::load(&dir.join("scratch.json"))?;
        Ok(UserAgent {
            profile: Profile::from_scratch(&scratch),
            spatial: SpatialMemory::load(&dir.join("spatial_memory.json"))?,
            memory: AssociativeMemory::load(&dir.join("associative_memory"))?,
            scratch,
            state: UserState::default(),
            perceived_from: None,
        })
    }

    /// Write the persona folder in the original shapes (scratch, spatial and associative memory).
    pub fn save(&mut self, dir: &Path, now: NaiveDateTime) -> Result<()> {
        self.sync_scratch(now);
        crate::storage::write_json_py(&dir.join("scratch.json"), &self.scratch)?;
        self.spatial.save(&dir.join("spatial_memory.json"))?;
        self.memory.save(&dir.join("associative_memory"))
    }

    fn sync_scratch(&mut self, now: NaiveDateTime) {
        let s = &mut self.scratch;
        s.set("curr_time", fmt_curr_time(now));
        s.set("curr_tile", json!([self.state.tile.0, self.state.tile.1]));
        if let Some(d) = &self.state.day {
            s.set("daily_req", json!(d.plan));
            s.set("f_daily_schedule", json!(d.flat()));
            s.set("f_daily_schedule_hourly_org", json!(d.hourly_org()));
        }
        if let Some(a) = &self.state.action {
            s.set("act_address", a.address.clone());
            s.set("act_start_time", a.start.clone());
            s.set("act_duration", a.minutes);
            s.set("act_description", a.description.clone());
            s.set("act_pronunciatio", a.emoji.clone());
            s.set("act_event", json!([self.profile.name, "is", a.description]));
        }
        s.set("act_path_set", !self.state.path.is_empty());
        s.set("planned_path", json!(self.state.path.iter().map(|t| [t.0, t.1]).collect::<Vec<_>>()));
        if !self.state.status.is_empty() {
            s.set("currently", self.state.status.clone());
        }
    }

    pub fn is_asleep(&self) -> bool {
        self.state.action.as_ref().map(|a| is_sleep(&a.description)).unwrap_or(true)
    }

    /// One step: perceive, plan, place, walk.
    pub async fn step(
        &mut self,
        llm: &Llm,
        maze: &Maze,
        now: NaiveDateTime,
        tile: Pos,
        tiles_per_step: usize,
    ) -> Result<UserStep> {
        self.state.tile = tile;
        // The house does not change: looking again from the same tile teaches nothing new.
        if self.perceived_from != Some(tile) {
            let vision = self.scratch.u64("vision_r", 8) as usize;
            self.spatial.perceive(maze, tile, vision);
            self.perceived_from = Some(tile);
        }

        let date = now.format("%Y-%m-%d").to_string();
        if self.state.day.as_ref().map(|d| d.date != date).unwrap_or(true) {
            self.plan_day(llm, now, date).await?;
        }
        let minute = minute_of_day(now);
        self.ensure_decomposed(llm, minute, now).await?;
        let day = self.state.day.as_ref().expect("planned above");
        let (block, sub, desc, start_min, minutes) = day.action_at(minute);
        let changed = self
            .state
            .action
            .as_ref()
            .map(|a| (a.block, a.sub, a.description.as_str()) != (block, sub, desc.as_str()))
            .unwrap_or(true);
        if changed {
            let start = now.date().and_hms_opt(start_min / 60, start_min % 60, 0).unwrap_or(now);
            self.begin_action(llm, maze, now, block, sub, desc, start, minutes).await?;
        }

        let from = self.state.tile;
        let take = tiles_per_step.min(self.state.path.len());
        let mut walked = vec![from];
        walked.extend(self.state.path.drain(..take));
        let to = *walked.last().expect("non-empty");
        self.state.tile = to;
        let a = self.state.action.as_ref().expect("set above");
        let act_description = self
            .state
            .day
            .as_ref()
            .map(|d| d.act_description(a.block, &a.description))
            .unwrap_or(a.description.clone());
        Ok(UserStep {
            tile: to,
            walking: to != from,
            walked,
            emoji: a.emoji.clone(),
            description: format!("{} @ {}", a.description, a.address),
            action: a.description.clone(),
            act_description,
            asleep: is_sleep(&a.description),
        })
    }

    async fn plan_day(&mut self, llm: &Llm, now: NaiveDateTime, date: String) -> Result<()> {
        let pretty = now.format("%A %B %d").to_string();
        if self.state.day.is_some() {
            self.state.actions_yesterday = std::mem::take(&mut self.state.actions_today);
            let yesterday = self.state.actions_yesterday.clone();
            self.state.status = llm
                .run(&ReviseStatus { profile: &self.profile, date: pretty.clone(), yesterday: &yesterday })
                .await?
                .value;
        }
        let wake = llm.run(&WakeUpHour { profile: &self.profile }).await?.value;
        let plan = llm
            .run(&DailyPlan {
                profile: &self.profile,
                date: pretty.clone(),
                wake_hour: wake,
                status: &self.state.status,
            })
            .await?
            .value;
        let mut hours = llm
            .run(&HourlySchedule { profile: &self.profile, date: pretty.clone(), wake_hour: wake, plan: &plan })
            .await?
            .value;
        for h in hours.iter_mut().take(wake as usize) {
            *h = "sleeping".into();
        }
        let thought = format!("This is {}'s plan for {}: {}.", self.profile.name, pretty, plan.join(", "));
        let emb = llm.embed(&thought).await.ok();
        let created = now.format("%Y-%m-%d %H:%M:%S").to_string();
        let expires = (now + Duration::days(30)).format("%Y-%m-%d %H:%M:%S").to_string();
        self.memory.add(
            "thought",
            &created,
            Some(expires),
            (&self.profile.name, "plan", &pretty),
            &thought,
            5,
            vec!["plan".into()],
            emb,
        );
        self.state.day = Some(DayPlan::from_hours(date, wake, plan, &hours));
        Ok(())
    }

    /// Decompose the block at `minute` when it begins (blocks of an hour or more, not sleep).
    async fn ensure_decomposed(&mut self, llm: &Llm, minute: u32, now: NaiveDateTime) -> Result<()> {
        let day = self.state.day.as_mut().expect("planned");
        let bi = day.block_at(minute);
        let b = &day.blocks[bi];
        if b.subtasks.is_some() {
            return Ok(());
        }
        let subs = if b.minutes >= 60 && !is_sleep(&b.activity) {
            let start = now
                .date()
                .and_hms_opt(b.start_min / 60, b.start_min % 60, 0)
                .map(|t| t.format("%I:%M %p").to_string())
                .unwrap_or_default();
            llm.run(&Decompose { profile: &self.profile, activity: &b.activity, start, minutes: b.minutes })
                .await?
                .value
        } else {
            Vec::new()
        };
        day.blocks[bi].subtasks = Some(subs);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn begin_action(
        &mut self,
        llm: &Llm,
        maze: &Maze,
        now: NaiveDateTime,
        block: usize,
        sub: usize,
        desc: String,
        start: NaiveDateTime,
        minutes: u32,
    ) -> Result<()> {
        let address = self.choose_address(llm, maze, &desc).await?;
        let emoji = llm.run(&Emoji { action: &desc }).await?.value;
        let event = format!("{} is {}", self.profile.name, desc);
        let poignancy = llm.run(&Poignancy { profile: &self.profile, event: &event }).await?.value;
        let emb = llm.embed(&event).await.ok();
        let created = now.format("%Y-%m-%d %H:%M:%S").to_string();
        let mut kw = content_words(&desc);
        kw.truncate(4);
        self.memory.add("event", &created, None, (&self.profile.name, "is", &desc), &event, poignancy, kw, emb);
        self.state.actions_today.push(desc.clone());

        let targets: Vec<Pos> = maze.address_tiles(&address).to_vec();
        self.state.path = match nearest_reachable(maze, self.state.tile, &targets) {
            Some((_, path)) => path.into_iter().skip(1).collect(),
            None => Vec::new(),
        };
        self.state.action =
            Some(Action { block, sub, description: desc, address, emoji, start: fmt_curr_time(start), minutes });
        Ok(())
    }

    /// `world:sector:arena:object` for an action, checked against the persona's spatial memory
    /// and the maze (a wrong answer is retried by the task, then falls back to keywords).
    async fn choose_address(&mut self, llm: &Llm, maze: &Maze, desc: &str) -> Result<String> {
        let mut parts = self.profile.living_area.split(':');
        let (world, sector, home_arena) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let arenas: Vec<String> = self
            .spatial
            .arenas_in(&world, &sector)
            .into_iter()
            .map(str::to_string)
            .filter(|a| !maze.address_tiles(&format!("{world}:{sector}:{a}")).is_empty())
            .collect();
        let arena = if is_sleep(desc) && arenas.contains(&home_arena) {
            home_arena
        } else if arenas.is_empty() {
            return Ok(self.profile.living_area.clone());
        } else {
            llm.run(&ChoosePlace {
                profile: &self.profile,
                action: desc,
                what: "area",
                within: sector.to_string(),
                options: &arenas,
            })
            .await?
            .value
        };
        let objects: Vec<String> = self
            .spatial
            .objects_in(&world, &sector, &arena)
            .into_iter()
            .map(str::to_string)
            .filter(|o| !maze.address_tiles(&format!("{world}:{sector}:{arena}:{o}")).is_empty())
            .collect();
        if objects.is_empty() {
            return Ok(format!("{world}:{sector}:{arena}"));
        }
        let object = llm
            .run(&ChoosePlace {
                profile: &self.profile,
                action: desc,
                what: "object",
                within: format!("the {arena}"),
                options: &objects,
            })
            .await?
            .value;
        Ok(format!("{world}:{sector}:{arena}:{object}"))
    }
}
