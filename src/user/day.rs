//! The user's schedule for one day: hour blocks from the hourly schedule, merged when
//! consecutive hours repeat, and decomposed into subtasks when a block begins.

use serde::{Deserialize, Serialize};

/// A run of consecutive minutes spent on one activity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Block {
    pub start_min: u32,
    pub minutes: u32,
    pub activity: String,
    /// Filled when the block begins (None: not yet decomposed; empty: not decomposable).
    pub subtasks: Option<Vec<(String, u32)>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DayPlan {
    /// `YYYY-MM-DD`.
    pub date: String,
    pub wake_hour: u32,
    pub plan: Vec<String>,
    pub blocks: Vec<Block>,
}

/// Sleep is never decomposed (the original's rule, with the same words).
pub fn is_sleep(activity: &str) -> bool {
    let a = activity.to_lowercase();
    a.contains("sleep") || a.contains("asleep") || a == "in bed"
}

impl DayPlan {
    /// Merge 24 hourly activities into blocks (the original's compressed `[[task, minutes]]`).
    pub fn from_hours(date: String, wake_hour: u32, plan: Vec<String>, hours: &[String]) -> DayPlan {
        let mut blocks: Vec<Block> = Vec::new();
        for (h, a) in hours.iter().enumerate() {
            match blocks.last_mut() {
                Some(b) if b.activity == *a => b.minutes += 60,
                _ => blocks.push(Block { start_min: h as u32 * 60, minutes: 60, activity: a.clone(), subtasks: None }),
            }
        }
        DayPlan { date, wake_hour, plan, blocks }
    }

    /// Index of the block containing `minute` of the day.
    pub fn block_at(&self, minute: u32) -> usize {
        self.blocks.iter().position(|b| minute < b.start_min + b.minutes).unwrap_or(self.blocks.len().saturating_sub(1))
    }

    /// `(block, subtask, description, start minute, duration)` of the action at `minute`.
    pub fn action_at(&self, minute: u32) -> (usize, usize, String, u32, u32) {
        let bi = self.block_at(minute);
        let b = &self.blocks[bi];
        if let Some(subs) = b.subtasks.as_ref().filter(|s| !s.is_empty()) {
            let mut start = b.start_min;
            for (si, (t, m)) in subs.iter().enumerate() {
                if minute < start + m || si + 1 == subs.len() {
                    return (bi, si, t.clone(), start, *m);
                }
                start += m;
            }
        }
        (bi, 0, b.activity.clone(), b.start_min, b.minutes)
    }

    /// The original's `act_description` of `action` in `block`: `"task (subtask)"` when the
    /// block was decomposed, else the action itself.
    pub fn act_description(&self, block: usize, action: &str) -> String {
        match self.blocks.get(block) {
            Some(b) if b.subtasks.as_ref().is_some_and(|s| !s.is_empty()) => format!("{} ({action})", b.activity),
            _ => action.to_string(),
        }
    }

    /// The original's `f_daily_schedule_hourly_org`.
    pub fn hourly_org(&self) -> Vec<(String, u32)> {
        self.blocks.iter().map(|b| (b.activity.clone(), b.minutes)).collect()
    }

    /// The original's `f_daily_schedule`: blocks with their subtasks spliced in.
    pub fn flat(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for b in &self.blocks {
            match b.subtasks.as_ref().filter(|s| !s.is_empty()) {
                Some(s) => out.extend(s.iter().cloned()),
                None => out.push((b.activity.clone(), b.minutes)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_day() {
        let mut hours = vec!["sleeping".to_string(); 7];
        hours.extend(["breakfast", "work", "work", "lunch"].map(String::from));
        hours.extend(vec!["reading".to_string(); 12]);
        hours.push("sleeping".into());
        let mut d = DayPlan::from_hours("2025-02-13".into(), 7, vec![], &hours);
        assert_eq!(d.blocks.iter().map(|b| b.minutes).sum::<u32>(), 1440);
        assert_eq!(d.blocks[0].minutes, 420);
        assert_eq!(d.action_at(8 * 60 + 30).2, "work");
        d.blocks[2].subtasks = Some(vec![("a".into(), 90), ("b".into(), 30)]);
        assert_eq!(d.action_at(9 * 60 + 45).2, "b");
        assert_eq!(d.act_description(2, "b"), "work (b)");
        assert_eq!(d.act_description(1, "breakfast"), "breakfast");
        assert_eq!(d.flat().iter().map(|x| x.1).sum::<u32>(), 1440);
    }
}
