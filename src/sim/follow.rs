//! The browser-driven driver: the engine computes step `n` once `environment/<n>.json` exists,
//! exactly as `reverie.py` waits on the file the page posts. It serves both the in-process web
//! server (which wakes it on each POST) and drop-in mode beside the original Django server (a
//! file watcher wakes it, with polling as a fallback for filesystems without inotify).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;

use super::Engine;

/// Shared state between the engine task and whoever drives it.
pub struct Follower {
    pub sim_code: String,
    /// The next step the engine will compute.
    pub next_step: AtomicU64,
    pub paused: AtomicBool,
    pub stop: AtomicBool,
    pub wake: Notify,
    /// The last error, if the engine stopped on one.
    pub error: std::sync::Mutex<Option<String>>,
}

impl Follower {
    pub fn poke(&self) {
        self.wake.notify_one();
    }
}

/// How often the loop looks for the file when no event arrives.
const POLL: Duration = Duration::from_millis(200);

/// Run the engine until `until_step` (exclusive) or until stopped (which cancels the step in
/// flight), computing each step as soon as its environment file appears. Saves the personas
/// before returning.
pub async fn follow(mut engine: Engine, f: Arc<Follower>, until_step: u64, watch: bool) -> Result<Engine> {
    // Watch the environment folder; events only wake the loop, which then checks the file.
    let env_dir = engine.sim().path("environment");
    std::fs::create_dir_all(&env_dir)?;
    let _watcher = if watch {
        let f2 = f.clone();
        let mut w = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| f2.poke()).ok();
        if let Some(w) = w.as_mut() {
            if w.watch(&env_dir, RecursiveMode::NonRecursive).is_err() {
                tracing::warn!("cannot watch {}; polling instead", env_dir.display());
            }
        }
        w
    } else {
        None
    };
    f.next_step.store(engine.next_step(), Ordering::SeqCst);
    while engine.next_step() < until_step && !f.stop.load(Ordering::SeqCst) {
        let ready = !f.paused.load(Ordering::SeqCst) && engine.sim().env_path(engine.next_step()).is_file();
        if !ready {
            let _ = tokio::time::timeout(POLL, f.wake.notified()).await;
            continue;
        }
        // A half-written file cannot be seen (writers rename into place), but the original's
        // frontend writes in place: a parse error means "not yet", so wait and try again.
        match engine.sim().read_env(engine.next_step()) {
            Ok(Some(_)) => {}
            _ => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        }
        // Stopping (a signal, or the server shutting down) cancels the step in flight.
        match super::headless::step_or_stop(&mut engine, &f.stop).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                *f.error.lock().expect("not poisoned") = Some(format!("{e:#}"));
                engine.save_personas().ok();
                if let Some(line) = engine.metrics().end_tracking(crate::tracking::RunEnd::Failed).await {
                    eprintln!("{line}");
                }
                return Err(e);
            }
        }
        f.next_step.store(engine.next_step(), Ordering::SeqCst);
    }
    engine.save_personas()?;
    let end = if engine.next_step() >= until_step {
        crate::tracking::RunEnd::Finished
    } else {
        crate::tracking::RunEnd::Killed
    };
    if let Some(line) = engine.metrics().end_tracking(end).await {
        eprintln!("{line}");
    }
    Ok(engine)
}

pub fn follower(engine: &Engine) -> Arc<Follower> {
    Arc::new(Follower {
        sim_code: engine.sim().code.clone(),
        next_step: AtomicU64::new(engine.next_step()),
        paused: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        wake: Notify::new(),
        error: std::sync::Mutex::new(None),
    })
}

/// The web server's view of the run.
impl super::live::LiveSim for Follower {
    fn sim_code(&self) -> String {
        self.sim_code.clone()
    }
    fn current_step(&self) -> u64 {
        self.next_step.load(Ordering::SeqCst)
    }
    fn environment_written(&self, _step: u64) {
        self.poke();
    }
    fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        self.poke();
    }
    fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }
}
