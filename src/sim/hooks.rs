//! Where training plugs into the loop.

use std::path::Path;

use anyhow::Result;

/// Called by the engine at day boundaries and before each step.
pub trait DayHook: Send {
    /// Day `day` (0-based) is over; its preference pairs are in `pairs` (may not exist).
    fn day_ended(&mut self, day: u64, pairs: &Path) -> Result<()>;
    /// Before step `step` runs: swap in a finished adapter, or wait for one that must be ready.
    fn before_step(&mut self, _step: u64) -> Result<()> {
        Ok(())
    }
}
