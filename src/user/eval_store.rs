//! `evaluation_memory/` (a ProPerSim addition) in the associative-memory file shapes: one event
//! node per evaluated interaction. Vectors live in the run's embedding cache, not here.

use std::path::Path;

use anyhow::Result;
use chrono::NaiveDateTime;

use super::memory::AssociativeMemory;

pub fn save<'a>(dir: &Path, owner: &str, items: impl Iterator<Item = (NaiveDateTime, &'a str)>) -> Result<()> {
    let mut m = AssociativeMemory::default();
    for (t, text) in items {
        let created = t.format("%Y-%m-%d %H:%M:%S").to_string();
        m.add("event", &created, None, (owner, "evaluated", "suggestion"), text, 5, vec!["suggestion".into()], None);
    }
    m.save(dir)
}
