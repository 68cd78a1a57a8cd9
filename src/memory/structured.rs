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
    /// The score, in the assistant's memory only: the user's evaluation memory holds the action
    /// and the suggestion alone, as the original's did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Block {
    pub from: NaiveDateTime,
    pub to: NaiveDateTime,
    pub recommendations: usize,
    pub summary: String,
}

/// Recent interactions shown in full: the original's evaluator sees its last 4 evaluation-memory
/// entries, the assistant its last 4 interactions (4 × 2.5 min, the paper's "last 10 minutes").
pub const RECENT: usize = 4;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StructuredMemory {
    /// The last [`RECENT`] recommendations ("No Recommendation" skipped, as the original's
    /// evaluation memory skipped it), kept across hours until [`StructuredMemory::reset`].
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
        if it.recommended {
            self.recent.push_back(it.clone());
            while self.recent.len() > RECENT {
                self.recent.pop_front();
            }
        }
        self.hour.push(it);
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
                out.push_str(&format!("{}\n{}\n", crate::clock::fmt_prompt_time(e.time), e.text));
            }
        }
        if out.is_empty() {
            out.push_str("No interactions yet.\n");
        }
        out
    }

    /// [`StructuredMemory::render`] followed by the last [`RECENT`] recommendations that are not
    /// already listed under this hour: the user's view, in which recommendations of earlier
    /// hours stay visible in full after their hour was summarized (the original's evaluator
    /// memory: summaries, then its ≤4 newest evaluation-memory entries).
    pub fn render_with_recent(&self) -> String {
        let mut out = self.render();
        let shown: Vec<u64> = self.hour.iter().map(|i| i.step).collect();
        let earlier: Vec<&Interaction> = self.recent.iter().filter(|i| !shown.contains(&i.step)).collect();
        if !earlier.is_empty() {
            out.push_str("Latest recommendations before this hour:\n");
            for e in earlier {
                out.push_str(&format!("{}\n{}\n", crate::clock::fmt_prompt_time(e.time), e.text));
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ProviderKind};
    use chrono::NaiveDate;

    fn at(h: u32, m: u32, s: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2025, 2, 13).unwrap().and_hms_opt(h, m, s).unwrap()
    }

    fn it(step: u64, time: NaiveDateTime, suggestion: &str) -> Interaction {
        Interaction {
            step,
            time,
            text: format!("John Lin's action: reading (chapter {step})\nSuggestion: {suggestion}"),
            recommended: suggestion != crate::suggestion::NO_REC,
            score: None,
        }
    }

    fn scripted() -> Llm {
        let mut cfg = Config::default();
        cfg.set_all_providers(ProviderKind::Scripted);
        Llm::from_config(&cfg).unwrap()
    }

    /// The last four recommendations stay in view across an hour boundary, "No Recommendation"
    /// skipped, as the original's evaluation memory (reset only each morning).
    #[tokio::test]
    async fn recommendations_carry_across_hours() {
        let llm = scripted();
        let mut m = StructuredMemory::new(3);
        let hour8 = [
            "Stretch your legs.",
            crate::suggestion::NO_REC,
            "Drink some water.",
            "Open a window.",
            crate::suggestion::NO_REC,
            "Try the new tea.",
            "Put on some music.",
            crate::suggestion::NO_REC,
        ];
        for (i, s) in hour8.iter().enumerate() {
            let t = at(8, 5 * i as u32, 0);
            m.add(&llm, "the user", "John Lin", false, it(i as u64, t, s)).await.unwrap();
        }
        let expect_steps = |m: &StructuredMemory| m.recent.iter().map(|i| i.step).collect::<Vec<_>>();
        assert_eq!(expect_steps(&m), [2, 3, 5, 6], "last four recommendations, no-rec skipped");
        // Within the hour they are listed under this hour, not repeated.
        assert!(!m.render_with_recent().contains("Latest recommendations"));

        // The first interaction of the next hour freezes hour 8 into a summary; the
        // recommendations stay in view in full.
        m.add(&llm, "the user", "John Lin", false, it(20, at(9, 0, 0), crate::suggestion::NO_REC)).await.unwrap();
        assert_eq!(m.hourly.len(), 1);
        assert_eq!(m.hourly[0].recommendations, 5);
        assert_eq!(expect_steps(&m), [2, 3, 5, 6]);
        let view = m.render_with_recent();
        let tail = view.split("Latest recommendations before this hour:\n").nth(1).expect("carried over");
        for s in ["Drink some water.", "Open a window.", "Try the new tea.", "Put on some music."] {
            assert!(tail.contains(s), "{s} missing from\n{view}");
        }
        assert!(!tail.contains("Stretch your legs."), "only the last four");
        assert!(!tail.contains(crate::suggestion::NO_REC));
        assert!(tail.find("Drink").unwrap() < tail.find("Put on").unwrap(), "oldest first");

        // A new recommendation in hour 9 pushes out the oldest; it is listed under this hour.
        m.add(&llm, "the user", "John Lin", false, it(21, at(9, 2, 30), "Call your sister.")).await.unwrap();
        assert_eq!(expect_steps(&m), [3, 5, 6, 21]);
        let view = m.render_with_recent();
        let (hour, tail) = view.split_once("Latest recommendations before this hour:\n").unwrap();
        assert!(hour.contains("Call your sister.") && !tail.contains("Call your sister."));
        assert!(!tail.contains("Drink some water."));
        // What the scripted evaluator counts is unchanged: this hour's and the last hour's.
        assert_eq!(m.recommendations_within(at(9, 2, 30), 60), 6);

        // Only the morning reset forgets them.
        m.reset();
        assert!(m.recent.is_empty());
    }
}
