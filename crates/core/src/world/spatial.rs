//! Spatial memory: the places a persona knows, as the tree `{world: {sector: {arena: [objects]}}}`
//! stored in `bootstrap_memory/spatial_memory.json`.
//!
//! Key order is kept (IndexMap), because the original lists known arenas and objects to the LLM
//! in the order the JSON gives them, and new places are appended in the order they are seen.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub use super::maze::Tree;
use super::maze::{add_to_tree, Maze};
use super::Pos;

/// A persona's spatial memory. Serializes as the bare tree, like the original file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpatialMemory {
    pub tree: Tree,
}

impl SpatialMemory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Read a `spatial_memory.json`. A missing or malformed file is an error naming the file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading spatial memory {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!("parsing spatial memory {} (expected {{world: {{sector: {{arena: [objects]}}}}}})", path.display())
        })
    }

    /// Write it atomically in Python's `json.dumps(indent=2)` format.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::storage::write_json_py(path, &self.tree)
    }

    /// What a persona standing on `tile` sees: every world, sector, arena and object of the tiles
    /// within `vision_r` (square, see `Maze::nearby_tiles`) joins the tree. Returns how many
    /// entries were new.
    pub fn perceive(&mut self, maze: &Maze, tile: Pos, vision_r: usize) -> usize {
        let before = self.size();
        for (x, y) in maze.nearby_tiles(tile, vision_r) {
            if let Some(t) = maze.tile(x, y) {
                add_to_tree(&mut self.tree, t);
            }
        }
        self.size() - before
    }

    /// The path tester's narrower rule: only tiles in the same sector and arena as `tile` count,
    /// and the world of `tile` is always added. Returns how many entries were new.
    pub fn perceive_same_arena(&mut self, maze: &Maze, tile: Pos, vision_r: usize) -> usize {
        let Some(center) = maze.tile(tile.0, tile.1) else { return 0 };
        let before = self.size();
        if !center.world.is_empty() {
            self.tree.entry(center.world.clone()).or_default();
        }
        for (x, y) in maze.nearby_tiles(tile, vision_r) {
            if let Some(t) = maze.tile(x, y) {
                if t.sector == center.sector && t.arena == center.arena {
                    add_to_tree(&mut self.tree, t);
                }
            }
        }
        self.size() - before
    }

    /// Number of entries at every level (worlds + sectors + arenas + objects).
    pub fn size(&self) -> usize {
        self.tree
            .values()
            .map(|sectors| {
                1 + sectors
                    .values()
                    .map(|arenas| 1 + arenas.values().map(|objs| 1 + objs.len()).sum::<usize>())
                    .sum::<usize>()
            })
            .sum()
    }

    /// Known sectors of a world, in memory order.
    pub fn sectors_in(&self, world: &str) -> Vec<&str> {
        self.tree.get(world).map(|s| s.keys().map(String::as_str).collect()).unwrap_or_default()
    }

    /// Known arenas of a sector, in memory order.
    pub fn arenas_in(&self, world: &str, sector: &str) -> Vec<&str> {
        self.tree
            .get(world)
            .and_then(|s| s.get(sector))
            .map(|a| a.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// Known objects of an arena, in memory order. Like the original, an arena named with
    /// different capitals (LLMs sometimes lower-case it) falls back to its lower-case key.
    pub fn objects_in(&self, world: &str, sector: &str, arena: &str) -> Vec<&str> {
        let Some(arenas) = self.tree.get(world).and_then(|s| s.get(sector)) else { return Vec::new() };
        arenas
            .get(arena)
            .or_else(|| arenas.get(&arena.to_lowercase()))
            .map(|o| o.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// Whether an address `"world[:sector[:arena[:object]]]"` is known.
    pub fn knows(&self, address: &str) -> bool {
        let parts: Vec<&str> = address.split(':').collect();
        match parts.as_slice() {
            [w] => self.tree.contains_key(*w),
            [w, s] => self.tree.get(*w).is_some_and(|m| m.contains_key(*s)),
            [w, s, a] => self.tree.get(*w).and_then(|m| m.get(*s)).is_some_and(|m| m.contains_key(*a)),
            [w, s, a, o] => self.objects_in(w, s, a).contains(o),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_keeps_key_order_and_python_format() {
        let text = "{\n  \"W\": {\n    \"S\": {\n      \"zeta room\": [\n        \"bed\"\n      ],\n      \"alpha room\": []\n    }\n  }\n}";
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("spatial_memory.json");
        std::fs::write(&p, text).unwrap();
        let m = SpatialMemory::load(&p).unwrap();
        assert_eq!(m.arenas_in("W", "S"), vec!["zeta room", "alpha room"]);
        assert_eq!(m.objects_in("W", "S", "Zeta Room"), vec!["bed"]);
        assert!(m.knows("W:S:zeta room:bed") && !m.knows("W:S:zeta room:desk") && !m.knows("W:X"));
        let out = d.path().join("out/spatial_memory.json");
        m.save(&out).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
        assert_eq!(m.size(), 5);
    }

    #[test]
    fn bad_file_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json");
        std::fs::write(&p, "[1, 2]").unwrap();
        let err = format!("{:#}", SpatialMemory::load(&p).unwrap_err());
        assert!(err.contains("s.json"), "{err}");
    }
}
