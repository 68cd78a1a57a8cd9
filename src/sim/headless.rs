//! The headless driver (`run --novis`): it writes each step's environment from the previous
//! movement, as the original's `generate_fake_environment`, and steps the engine.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use super::Engine;

pub struct RunSummary {
    pub steps: u64,
    pub seconds: f64,
    pub interrupted: bool,
}

/// Step until `until_step` (exclusive) or until `stop` is raised; the current step always
/// finishes and the personas are saved before returning.
pub async fn run(engine: &mut Engine, until_step: u64, progress: bool, stop: Arc<AtomicBool>) -> Result<RunSummary> {
    let start_step = engine.next_step;
    let bar = if progress && until_step > start_step {
        let b = ProgressBar::new(until_step - start_step);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {per_sec}  eta {eta}  {msg}")
                .expect("static template"),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let t0 = Instant::now();
    let mut interrupted = false;
    while engine.next_step < until_step {
        if stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        engine.write_next_environment()?;
        if let Err(e) = engine.step().await {
            bar.abandon();
            // Over budget is a clean stop: the step was not written, the run resumes later.
            if let Some(b) = e.downcast_ref::<crate::llm::ledger::BudgetExceeded>() {
                eprintln!("{b}; stopping. Raise budget_usd and resume with --resume.");
                interrupted = true;
                break;
            }
            engine.save_personas().ok();
            return Err(e);
        }
        bar.inc(1);
        if engine.next_step.is_multiple_of(24) {
            bar.set_message(super::clock::fmt_curr_time(engine.clock.time(engine.next_step)));
        }
    }
    bar.finish_and_clear();
    engine.save_personas()?;
    Ok(RunSummary { steps: engine.next_step - start_step, seconds: t0.elapsed().as_secs_f64(), interrupted })
}
