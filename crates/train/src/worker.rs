//! The training worker: one OS thread that owns the training device and the trainable adapter.
//!
//! The simulation submits a [`TrainJob`] at a day boundary and keeps stepping (the user's night);
//! the worker trains, saves the adapter (PEFT layout) and publishes version N+1 in the shared
//! [`AdapterSlot`], which inference sessions pick up at their next prompt. Every job yields one
//! message on the result channel — the outcome or the error — so a failed day is never silent.
//! Submitting never blocks, and results can be awaited from async code or polled.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::data::{ChatFormatter, PreferencePair};
use super::{adapter, offline, TrainConfig, TrainSummary};
use crate::model::llama::Llama;
use crate::model::lora::{AdapterSlot, LoraAdapter, PublishedAdapter};

/// One day's training request.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub day: u32,
    /// The day's training set (after replay selection).
    pub pairs: Vec<PreferencePair>,
    pub config: TrainConfig,
    /// Where to save the adapter (e.g. `<sim>/adapters/day_NN`); `None` = don't save.
    pub adapter_dir: Option<PathBuf>,
    /// Per-step metrics JSONL; `None` = don't write.
    pub metrics_path: Option<PathBuf>,
}

/// A finished job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOutcome {
    pub day: u32,
    pub version: u64,
    pub summary: TrainSummary,
    pub adapter_dir: Option<PathBuf>,
}

/// A failed job: the day and the full error chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("training for day {day} failed: {message}")]
pub struct TrainFailure {
    pub day: u32,
    pub message: String,
}

pub type JobResult = std::result::Result<TrainOutcome, TrainFailure>;

/// Handle to the worker thread.
pub struct TrainWorker {
    jobs: Option<std::sync::mpsc::Sender<TrainJob>>,
    results: UnboundedReceiver<JobResult>,
    slot: Arc<AdapterSlot>,
    handle: Option<JoinHandle<()>>,
}

/// What the worker needs besides jobs.
pub struct WorkerSetup {
    pub model: Arc<Llama>,
    pub formatter: Arc<dyn ChatFormatter>,
    /// Adapter to continue from (a resumed run's newest day); `None` = fresh at the first job.
    pub initial: Option<LoraAdapter>,
    pub slot: Arc<AdapterSlot>,
    /// Written into `adapter_config.json`.
    pub base_model_name: String,
    /// Held while a job trains: workers of several sims that share it train one at a time.
    pub queue: Option<Arc<std::sync::Mutex<()>>>,
}

impl TrainWorker {
    pub fn spawn(setup: WorkerSetup) -> Result<TrainWorker> {
        let (jtx, jrx) = std::sync::mpsc::channel::<TrainJob>();
        let (rtx, rrx) = unbounded_channel::<JobResult>();
        let slot = setup.slot.clone();
        let handle = std::thread::Builder::new()
            .name("propersim-train".into())
            .spawn(move || worker_loop(setup, jrx, rtx))
            .context("starting the training worker thread")?;
        Ok(TrainWorker { jobs: Some(jtx), results: rrx, slot, handle: Some(handle) })
    }

    /// Queue a job; returns at once.
    pub fn submit(&self, job: TrainJob) -> Result<()> {
        match &self.jobs {
            Some(tx) => tx.send(job).map_err(|_| anyhow!("the training worker has stopped")),
            None => bail!("the training worker has been shut down"),
        }
    }

    pub fn slot(&self) -> Arc<AdapterSlot> {
        self.slot.clone()
    }

    /// A finished job's result, if one is ready.
    pub fn try_result(&mut self) -> Option<JobResult> {
        self.results.try_recv().ok()
    }

    /// Await the next result (async-friendly; `None` once the worker is gone).
    pub async fn next_result(&mut self) -> Option<JobResult> {
        self.results.recv().await
    }

    /// Block the current (non-async) thread until the next result.
    pub fn wait_result(&mut self) -> Option<JobResult> {
        self.results.blocking_recv()
    }

    /// Stop accepting jobs, let queued ones finish, and join the thread.
    pub fn shutdown(mut self) -> Result<()> {
        self.jobs.take();
        if let Some(h) = self.handle.take() {
            h.join().map_err(|_| anyhow!("the training worker thread panicked"))?;
        }
        Ok(())
    }
}

fn worker_loop(setup: WorkerSetup, jobs: std::sync::mpsc::Receiver<TrainJob>, results: UnboundedSender<JobResult>) {
    let mut adapter = setup.initial;
    while let Ok(job) = jobs.recv() {
        let day = job.day;
        let _turn = setup.queue.as_ref().map(|q| q.lock().unwrap_or_else(|e| e.into_inner()));
        let run = catch_unwind(AssertUnwindSafe(|| {
            run_job(&setup.model, setup.formatter.as_ref(), &mut adapter, &setup.slot, &setup.base_model_name, job)
        }));
        let res = match run {
            Ok(Ok(o)) => Ok(o),
            Ok(Err(e)) => Err(TrainFailure { day, message: format!("{e:#}") }),
            Err(p) => {
                let msg =
                    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                Err(TrainFailure { day, message: format!("panic: {}", msg.unwrap_or_else(|| "unknown".into())) })
            }
        };
        if let Err(f) = &res {
            tracing::error!(day = f.day, "{}", f.message);
        }
        if results.send(res).is_err() {
            break;
        }
    }
}

fn run_job(
    model: &Llama,
    fmt: &dyn ChatFormatter,
    adapter: &mut Option<LoraAdapter>,
    slot: &AdapterSlot,
    base_name: &str,
    job: TrainJob,
) -> Result<TrainOutcome> {
    let cfg = &job.config;
    // Train a copy, so a failed day leaves yesterday's adapter untouched.
    let work = match adapter.as_ref() {
        Some(a) => a.trainable_copy()?,
        None => LoraAdapter::new(cfg.lora.clone(), model.config(), model.dtype(), model.device(), cfg.seed)?,
    };
    let metrics_path = job.metrics_path.clone();
    let mut on_step = |m: &super::StepMetrics| -> Result<()> {
        if let Some(p) = &metrics_path {
            crate::storage::append_jsonl(p, m)?;
        }
        Ok(())
    };
    let summary = offline::train_pairs(model, &work, fmt, &job.pairs, cfg, &mut on_step)?;
    if let Some(dir) = &job.adapter_dir {
        adapter::save_adapter(&work, model.config(), dir, base_name)?;
    }
    let version = slot.version() + 1;
    slot.publish(PublishedAdapter { version, day: Some(job.day), adapter: Some(Arc::new(work.snapshot()?)) });
    *adapter = Some(work);
    Ok(TrainOutcome { day: job.day, version, summary, adapter_dir: job.adapter_dir })
}
