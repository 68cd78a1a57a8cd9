//! Where training plugs into the loop.

use std::path::Path;

use anyhow::Result;
use futures::future::BoxFuture;

/// Called by the engine at day boundaries and before each step.
pub trait DayHook: Send {
    /// Day `day` (0-based) is over; its preference pairs are in `pairs` (may not exist).
    fn day_ended(&mut self, day: u64, pairs: &Path) -> Result<()>;
    /// A resumed run is about to run its first step; `day` (0-based) is the last day that ended
    /// before it, with its pairs in `pairs`. A run killed between a day boundary and the end of
    /// that day's training resumes past the boundary, so the hook must start what it missed.
    fn resumed(&mut self, _day: u64, _pairs: &Path) -> Result<()> {
        Ok(())
    }
    /// Before step `step` runs (non-blocking: e.g. pick up a finished adapter).
    fn before_step(&mut self, _step: u64) -> Result<()> {
        Ok(())
    }
    /// The assistant is about to suggest: whatever must be in use by now (the new adapter) is.
    /// Async, so waiting for the night's training (or a server loading the adapter) holds no
    /// runtime thread, and a cancelled step stops waiting.
    fn before_suggest(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }
}
