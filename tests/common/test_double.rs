//! TEST DOUBLE — not a simulation. `CopyEnvToMovement` stands in for the engine behind
//! [`LiveSim`] in the web tests (the "stub backend" of protocol.md §9.12): for each environment
//! the page posts, it writes a movement file that walks every persona one tile left or right, with
//! scripted actions, chat, a suggestion and an evaluator score, so the pages have something to show.
//! It lives with the tests, so release builds of the library do not contain it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use propersim::sim::live::LiveSim;
use propersim::storage::write_json_py;

pub struct CopyEnvToMovement {
    sim_dir: PathBuf,
    sim: String,
    next: Arc<AtomicU64>,
    paused: AtomicBool,
    delay: Duration,
}

impl CopyEnvToMovement {
    /// A double for `storage/<sim>` whose next step is `start`; each step is written after `delay`.
    /// Like an engine started on a fork, it computes `start` at once if its environment exists.
    pub fn new(storage: PathBuf, sim: &str, start: u64, delay: Duration) -> Arc<Self> {
        let me = Arc::new(CopyEnvToMovement {
            sim_dir: storage.join(sim),
            sim: sim.into(),
            next: Arc::new(AtomicU64::new(start)),
            paused: AtomicBool::new(false),
            delay,
        });
        if me.sim_dir.join(format!("environment/{start}.json")).is_file() {
            me.environment_written(start);
        }
        me
    }

    /// The scripted movement for `step` given the posted environment.
    pub fn movement_for(step: u64, env: &Map<String, Value>, start_date: &str, sec_per_step: u64) -> Value {
        let mut persona = Map::new();
        let n = env.len();
        let acts = ["making coffee", "reading the news", "watering the plants", "stretching", "checking email"];
        for (i, (name, e)) in env.iter().enumerate() {
            let x = e.get("x").and_then(Value::as_i64).unwrap_or(1);
            let y = e.get("y").and_then(Value::as_i64).unwrap_or(1);
            let dx = if (step + i as u64).is_multiple_of(2) { 1 } else { -1 };
            let is_assistant = i + 1 == n;
            let suggestion = if is_assistant {
                format!("Scripted suggestion #{step}: take a short walk <b>outside</b>")
            } else {
                String::new()
            };
            persona.insert(name.clone(), json!({
                "movement": [x + dx, y],
                "path": [[x, y], [x + dx, y]],
                "pronunciatio": if is_assistant { "💡" } else { "☕" },
                "description": format!("{} @ the Ville:Lin family's house:common room", acts[(step as usize + i) % acts.len()]),
                "chat": if step % 3 == 2 { json!([[name, format!("Hello at step {step}")]]) } else { Value::Null },
                "user_action_for_suggestion": if is_assistant { json!("accepted") } else { Value::Null },
                "suggestion": suggestion,
                "eval_res_score": if is_assistant { json!((step % 5 + 1).to_string()) } else { Value::Null },
                "eval_res_reason": if is_assistant { json!(format!("Scripted reason for step {step}")) } else { Value::Null },
            }));
        }
        let secs = i64::try_from(step.saturating_mul(sec_per_step)).unwrap_or(i64::MAX);
        let curr_time = chrono::NaiveDate::parse_from_str(start_date, "%B %d, %Y")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .and_then(|t| t.checked_add_signed(chrono::Duration::try_seconds(secs)?))
            .map(|t| t.format("%B %d, %Y, %H:%M:%S").to_string())
            .unwrap_or_default();
        json!({"persona": persona, "meta": {"curr_time": curr_time, "is_john_walking": "yes", "number_of_action_tokens": 0}})
    }

    fn compute(sim_dir: &std::path::Path, next: &AtomicU64, step: u64) {
        let env_path = sim_dir.join(format!("environment/{step}.json"));
        let Some(env) =
            std::fs::read(&env_path).ok().and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok())
        else {
            return;
        };
        let meta: Value = std::fs::read(sim_dir.join("reverie/meta.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let start = meta.get("start_date").and_then(Value::as_str).unwrap_or("February 13, 2025");
        let sps = meta.get("sec_per_step").and_then(Value::as_u64).unwrap_or(150);
        let mv = Self::movement_for(step, &env, start, sps);
        if write_json_py(&sim_dir.join(format!("movement/{step}.json")), &mv).is_ok() {
            next.fetch_max(step + 1, Ordering::SeqCst);
        }
    }
}

impl LiveSim for CopyEnvToMovement {
    fn sim_code(&self) -> String {
        self.sim.clone()
    }
    fn current_step(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }
    fn environment_written(&self, step: u64) {
        if self.delay.is_zero() {
            Self::compute(&self.sim_dir, &self.next, step);
            return;
        }
        let (dir, next, delay) = (self.sim_dir.clone(), self.next.clone(), self.delay);
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            Self::compute(&dir, &next, step);
        });
    }
    fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst)
    }
    fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }
}
