//! Simulated time: step n is `start_date 00:00:00 + n * sec_per_step`.

use anyhow::{Context, Result};
use chrono::{Duration, NaiveDate, NaiveDateTime, Timelike};

/// Time format of `meta.curr_time` and movement files: `February 13, 2025, 00:02:30`.
pub const CURR_TIME_FMT: &str = "%B %d, %Y, %H:%M:%S";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clock {
    pub start: NaiveDateTime,
    pub sec_per_step: u64,
}

impl Clock {
    pub fn new(start_date: &str, sec_per_step: u64) -> Result<Clock> {
        let d = NaiveDate::parse_from_str(start_date.trim(), "%B %d, %Y")
            .with_context(|| format!("bad start_date `{start_date}` (want e.g. `February 13, 2025`)"))?;
        Ok(Clock { start: d.and_hms_opt(0, 0, 0).expect("midnight exists"), sec_per_step: sec_per_step.max(1) })
    }
    pub fn time(&self, step: u64) -> NaiveDateTime {
        self.start + Duration::seconds((step * self.sec_per_step) as i64)
    }
    pub fn steps_per_day(&self) -> u64 {
        86_400 / self.sec_per_step
    }
    /// Zero-based simulated day of a step.
    pub fn day(&self, step: u64) -> u64 {
        step / self.steps_per_day()
    }
    /// First step of the day after `step`'s day.
    pub fn next_day_start(&self, step: u64) -> u64 {
        (self.day(step) + 1) * self.steps_per_day()
    }
}

pub fn fmt_curr_time(t: NaiveDateTime) -> String {
    t.format(CURR_TIME_FMT).to_string()
}

/// `Thursday February 13 -- 08:02:30 AM`, the form prompts show.
pub fn fmt_prompt_time(t: NaiveDateTime) -> String {
    t.format("%A %B %d -- %I:%M:%S %p").to_string()
}

pub fn minute_of_day(t: NaiveDateTime) -> u32 {
    t.hour() * 60 + t.minute()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_advance_150s() {
        let c = Clock::new("February 13, 2025", 150).unwrap();
        assert_eq!(fmt_curr_time(c.time(1)), "February 13, 2025, 00:02:30");
        assert_eq!(c.steps_per_day(), 576);
        assert_eq!(fmt_curr_time(c.time(576)), "February 14, 2025, 00:00:00");
        assert_eq!(c.day(575), 0);
        assert_eq!(c.next_day_start(10), 576);
    }
}
