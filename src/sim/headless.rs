//! The headless driver (`run --novis`): it writes each step's environment from the previous
//! movement, as the original's `generate_fake_environment`, and steps the engine.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use super::Engine;
use crate::tracking::RunEnd;

pub struct RunSummary {
    pub steps: u64,
    pub seconds: f64,
    /// The run stopped before `until_step` (a signal, or the budget): it can be resumed.
    pub interrupted: bool,
    /// It was `stop` (a signal) that ended it.
    pub cancelled: bool,
    /// With `[tracking]`: the MLflow run and how its tracking went, in a line.
    pub tracking: Option<String>,
}

/// The error a command returns when a signal stopped it (exit code 130, like a shell).
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Resolves once `stop` is raised. Polled rather than notified so callers keep a plain flag; a
/// step in flight is dropped within one poll of it.
pub async fn raised(stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Step `engine` once, unless `stop` is raised first: then the step in flight is dropped with
/// its LLM calls (whatever provider: a dropped HTTP request is aborted, the local model stops
/// when its reply channel goes), the engine goes back to its last complete step, and `Ok(false)`
/// is returned. A failed step also goes back before its error is returned, so the personas
/// saved afterwards never hold half a step.
pub async fn step_or_stop(engine: &mut Engine, stop: &AtomicBool) -> Result<bool> {
    let outcome = tokio::select! {
        biased;
        r = engine.step() => Some(r),
        _ = raised(stop) => None,
    };
    match outcome {
        Some(Ok(_)) => Ok(true),
        None => {
            engine.reload()?;
            Ok(false)
        }
        Some(Err(e)) => {
            if let Err(r) = engine.reload() {
                tracing::warn!(error = %format!("{r:#}"), "could not go back to the last complete step");
            }
            Err(e)
        }
    }
}

/// The progress bar of steps: `{bar} 12/576 steps  1286 steps/s  eta 3s  {msg}`. The rate is
/// rounded to whole steps (indicatif's `{per_sec}` prints `1,285.9935/s`).
pub fn steps_style() -> ProgressStyle {
    ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {rate}  eta {eta}  {msg}")
        .expect("static template")
        .with_key("rate", |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{}", rate_text(s.per_sec()));
        })
}

/// A rate as `1286 steps/s`; below 10 steps/s, one decimal (`2.5 steps/s`).
pub fn rate_text(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec <= 0.0 {
        "- steps/s".into()
    } else if per_sec < 10.0 {
        format!("{per_sec:.1} steps/s")
    } else {
        format!("{per_sec:.0} steps/s")
    }
}

/// Step until `until_step` (exclusive) or until `stop` is raised, which cancels the step in
/// flight (see [`step_or_stop`]). The personas are saved before returning.
pub async fn run(engine: &mut Engine, until_step: u64, progress: bool, stop: Arc<AtomicBool>) -> Result<RunSummary> {
    let start_step = engine.next_step();
    let bar = if progress && until_step > start_step {
        let b = ProgressBar::new(until_step - start_step);
        b.set_style(steps_style());
        b
    } else {
        ProgressBar::hidden()
    };
    let t0 = Instant::now();
    let (mut interrupted, mut cancelled) = (false, false);
    while engine.next_step() < until_step {
        if stop.load(Ordering::SeqCst) {
            (interrupted, cancelled) = (true, true);
            break;
        }
        engine.write_next_environment()?;
        match step_or_stop(engine, &stop).await {
            Ok(true) => {}
            Ok(false) => {
                (interrupted, cancelled) = (true, true);
                break;
            }
            Err(e) => {
                bar.abandon();
                // Over budget is a clean stop: the step was not written, the run resumes later.
                if let Some(b) = e.downcast_ref::<crate::llm::ledger::BudgetExceeded>() {
                    eprintln!("{b}; stopping. Raise budget_usd and resume with --resume.");
                    interrupted = true;
                    break;
                }
                engine.save_personas().ok();
                if let Some(line) = engine.metrics().end_tracking(RunEnd::Failed).await {
                    eprintln!("{line}");
                }
                return Err(e);
            }
        }
        bar.inc(1);
        if engine.next_step().is_multiple_of(24) {
            bar.set_message(crate::clock::fmt_curr_time(engine.clock().time(engine.next_step())));
        }
    }
    bar.finish_and_clear();
    engine.save_personas()?;
    let end = if interrupted { RunEnd::Killed } else { RunEnd::Finished };
    Ok(RunSummary {
        steps: engine.next_step().saturating_sub(start_step),
        seconds: t0.elapsed().as_secs_f64(),
        interrupted,
        cancelled,
        tracking: engine.metrics().end_tracking(end).await,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_plain_and_rounded() {
        assert_eq!(rate_text(1285.9935), "1286 steps/s");
        assert_eq!(rate_text(2.46), "2.5 steps/s");
        assert_eq!(rate_text(0.0), "- steps/s");
    }
}
