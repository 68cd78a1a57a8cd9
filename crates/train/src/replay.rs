//! The replay buffer that decides each day's training set (assistant_training.md §3.5).
//!
//! - `equally200` / `equally400` (N): today's pairs join the all-time list first; if the list is
//!   longer than N, N pairs are drawn uniformly without replacement from all days (today
//!   included), else everything is used.
//! - `halftoday`: with P pairs today and T before today, if P > T use today + all of the past,
//!   else P past pairs drawn without replacement + all of today; then today joins the list.
//!   (The original's `elif 'halftoday':` is always true, so any non-`equally` mode lands here.)
//!
//! Draws come from a ChaCha RNG seeded by the caller, so a day's set is reproducible.

use rand::SeedableRng;
use serde::{Deserialize, Serialize};

pub use crate::config::ReplayMode;

/// All pairs seen so far, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplayBuffer<T> {
    pub all_time: Vec<T>,
}

impl<T: Clone> ReplayBuffer<T> {
    pub fn new() -> Self {
        ReplayBuffer { all_time: Vec::new() }
    }

    /// Add today's pairs and return the day's training set.
    pub fn select(&mut self, mode: ReplayMode, today: Vec<T>, seed: u64) -> Vec<T> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        match mode.size() {
            Some(n) => {
                self.all_time.extend(today);
                let len = self.all_time.len();
                if len > n {
                    rand::seq::index::sample(&mut rng, len, n).into_iter().map(|i| self.all_time[i].clone()).collect()
                } else {
                    self.all_time.clone()
                }
            }
            None => {
                let (p, t) = (today.len(), self.all_time.len());
                let mut out: Vec<T> = if p > t {
                    let mut v = today.clone();
                    v.extend(self.all_time.iter().cloned());
                    v
                } else {
                    let mut v: Vec<T> = rand::seq::index::sample(&mut rng, t, p)
                        .into_iter()
                        .map(|i| self.all_time[i].clone())
                        .collect();
                    v.extend(today.iter().cloned());
                    v
                };
                self.all_time.extend(today);
                out.shrink_to_fit();
                out
            }
        }
    }
}
