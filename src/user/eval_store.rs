//! `evaluation_memory/` (a ProPerSim addition) in the associative-memory file shapes: one event
//! node per evaluated interaction, with its text's vector in `embeddings.json` (the original's
//! `EvaluationMemory` loader looks every node's `embedding_key` up there).

use std::path::Path;

use anyhow::Result;
use chrono::NaiveDateTime;

use super::memory::AssociativeMemory;

/// Save `(time, text, vector)` items; an empty vector (none known) is left out.
pub fn save<'a>(
    dir: &Path,
    owner: &str,
    items: impl Iterator<Item = (NaiveDateTime, &'a str, &'a [f32])>,
) -> Result<()> {
    let mut m = AssociativeMemory::default();
    for (t, text, vector) in items {
        let created = t.format("%Y-%m-%d %H:%M:%S").to_string();
        let embedding = (!vector.is_empty()).then(|| vector.to_vec());
        m.add(
            "event",
            &created,
            None,
            (owner, "evaluated", "suggestion"),
            text,
            5,
            vec!["suggestion".into()],
            embedding,
        );
    }
    m.save(dir)
}
