//! The physical world: the maze read from the original matrix files, shortest paths over its
//! walkable tiles, and a persona's spatial memory (the places it knows about).
//!
//! This module knows tiles, addresses and distances; it must not know what a persona thinks or
//! plans. Coordinates are always `(x, y)` = (column, row), like the original's tile tuples and the
//! `environment/<step>.json` files.

pub mod maze;
pub mod path;
pub mod spatial;

pub use maze::{Level, Maze, Tile};
pub use path::{nearest_reachable, path_len, shortest_path};
pub use spatial::SpatialMemory;

/// A tile coordinate `(x, y)`.
pub type Pos = (usize, usize);
