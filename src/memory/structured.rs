//! Recent interactions in full, this hour's events, frozen hourly blocks and 4-hourly summaries.

use std::collections::VecDeque;

use anyhow::Result;
use chrono::{Duration, NaiveDateTime, Timelike};
use serde::{Deserialize, Serialize};

use super::summarize::Summarize;
use crate::llm::Llm;

/// One evaluated step as memory keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Interaction {
    pub step: u64,
    pub time: NaiveDateTime,
    /// The text memory holds (its content depends on the memory level for the assistant).
    pub text: String,
    pub recommended: bool,
    pub score: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Block {
    pub from: NaiveDateTime,
    pub to: NaiveDateTime,
    pub recommendations: usize,
    pub summary: String,
}

/// Recent interactions shown in full: 4 × 2.5 min, the paper's "last 10 minutes".
pub const RECENT: usize = 4;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StructuredMemory {
    pub recent: VecDeque<Interaction>,
    pub hour: Vec<Interaction>,
    pub hourly: Vec<Block>,
    pub four_hourly: VecDeque<Block>,
    /// 4-hourly blocks kept (the original: 3 for the user, 1 for the assistant).
    pub keep_four_hourly: usize,
}

impl StructuredMemory {
    pub fn new(keep_four_hourly: usize) -> Self {
        StructuredMemory {
            recent: VecDeque::new(),
            hour: Vec::new(),
            hourly: Vec::new(),
            four_hourly: VecDeque::new(),
            keep_four_hourly,
        }
    }

    /// Forget everything (the user's evaluator memory is reset each morning).
    pub fn reset(&mut self) {
        *self = StructuredMemory::new(self.keep_four_hourly);
    }

    /// Record an interaction. An hour is frozen into a summary by the first interaction of a
    /// later hour (the original froze only on an evaluated `:57:30` step and otherwise let hours
    /// run together), and every four hourly blocks fold into a 4-hourly summary.
    pub async fn add(
        &mut self,
        llm: &Llm,
        viewpoint: &str,
        user: &str,
        with_scores: bool,
        it: Interaction,
    ) -> Result<()> {
        if let Some(first) = self.hour.first() {
            if first.time.date() != it.time.date() || first.time.hour() != it.time.hour() {
                self.freeze_hour(llm, viewpoint, user, with_scores).await?;
            }
        }
        self.hour.push(it.clone());
        self.recent.push_back(it);
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        Ok(())
    }

    async fn freeze_hour(&mut self, llm: &Llm, viewpoint: &str, user: &str, with_scores: bool) -> Result<()> {
        let events = std::mem::take(&mut self.hour);
        let Some(first) = events.first() else { return Ok(()) };
        let from = first.time.with_minute(0).and_then(|t| t.with_second(0)).unwrap_or(first.time);
        let entries: Vec<String> = events.iter().map(|e| e.text.clone()).collect();
        let summary = llm
            .run(&Summarize { viewpoint, user_name: user, span: "hour", entries: &entries, with_scores })
            .await?
            .value;
        self.hourly.push(Block {
            from,
            to: from + Duration::hours(1),
            recommendations: events.iter().filter(|e| e.recommended).count(),
            summary,
        });
        if self.hourly.len() >= 4 {
            let blocks = std::mem::take(&mut self.hourly);
            let entries: Vec<String> = blocks.iter().map(render_block).collect();
            let summary = llm
                .run(&Summarize { viewpoint, user_name: user, span: "four hours", entries: &entries, with_scores })
                .await?
                .value;
            self.four_hourly.push_back(Block {
                from: blocks[0].from,
                to: blocks[blocks.len() - 1].to,
                recommendations: blocks.iter().map(|b| b.recommendations).sum(),
                summary,
            });
            while self.four_hourly.len() > self.keep_four_hourly.max(1) {
                self.four_hourly.pop_front();
            }
        }
        Ok(())
    }

    /// Recommendations among the interactions of the last `minutes` before `now`.
    pub fn recommendations_within(&self, now: NaiveDateTime, minutes: i64) -> usize {
        let since = now - Duration::minutes(minutes);
        let in_hour = self.hour.iter().filter(|i| i.time >= since && i.recommended).count();
        let in_blocks: usize = self.hourly.iter().filter(|b| b.to > since).map(|b| b.recommendations).sum();
        in_hour + in_blocks
    }

    /// The memory as prompt text: oldest summaries first, then this hour's events.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for b in self.four_hourly.iter().chain(self.hourly.iter()) {
            out.push_str(&render_block(b));
            out.push('\n');
        }
        if !self.hour.is_empty() {
            out.push_str("This hour so far:\n");
            for e in &self.hour {
                out.push_str(&format!("{}\n{}\n", crate::sim::clock::fmt_prompt_time(e.time), e.text));
            }
        }
        if out.is_empty() {
            out.push_str("No interactions yet.\n");
        }
        out
    }
}

fn render_block(b: &Block) -> String {
    format!(
        "TIME: {} - {}\nNumber of recommendations: {}\nSUMMARY: {}\n",
        b.from.format("%A %B %d %I:%M %p"),
        b.to.format("%I:%M %p"),
        b.recommendations,
        b.summary
    )
}
