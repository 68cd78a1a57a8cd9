//! Shortest paths on the maze: breadth-first search over walkable tiles with 4-neighbours.
//!
//! Differences from the original `path_finder` (deliberate):
//! * The whole path `start..=end` is returned. ProPerSim cuts it to `[start, end]`, so personas
//!   teleport; here a persona can walk it tile by tile.
//! * No 150-step cap (the original gives up after 151 wavefront rounds).
//! * An unreachable or non-walkable target gives `None` instead of the original's `[end, end]`.
//!
//! Kept: the start tile may be a collision tile (the seeds start John on a wall at (5,10), and the
//! original seeds its wavefront there regardless), and among equally short paths the one the
//! original's backtracking would pick: walking back from the end, prefer the neighbour above,
//! then left, then below, then right.

use std::collections::VecDeque;

use super::maze::Maze;
use super::Pos;

const UNSEEN: u32 = u32::MAX;

/// Breadth-first distances from `start` (in steps) over walkable tiles; `UNSEEN` elsewhere.
/// Stops once a tile of `stop_at` leaves the queue: by then every tile at that distance or less
/// is labelled, so all the nearest targets (ties included) have their final distance.
fn distances(maze: &Maze, start: Pos, stop_at: &[Pos]) -> Vec<u32> {
    let (w, h) = (maze.width, maze.height);
    let mut dist = vec![UNSEEN; w * h];
    if !maze.contains(start.0, start.1) {
        return dist;
    }
    let walkable = maze.walkable_grid();
    let mut queue = VecDeque::with_capacity(w + h);
    dist[start.1 * w + start.0] = 0;
    queue.push_back(start);
    while let Some((x, y)) = queue.pop_front() {
        if stop_at.contains(&(x, y)) {
            break;
        }
        let d = dist[y * w + x] + 1;
        for (nx, ny) in neighbours(x, y, w, h) {
            let i = ny * w + nx;
            if dist[i] == UNSEEN && walkable[i] {
                dist[i] = d;
                queue.push_back((nx, ny));
            }
        }
    }
    dist
}

/// In-bounds 4-neighbours in the original's backtracking preference: up, left, down, right.
fn neighbours(x: usize, y: usize, w: usize, h: usize) -> impl Iterator<Item = Pos> {
    let up = (y > 0).then(|| (x, y - 1));
    let left = (x > 0).then(|| (x - 1, y));
    let down = (y + 1 < h).then_some((x, y + 1));
    let right = (x + 1 < w).then_some((x + 1, y));
    [up, left, down, right].into_iter().flatten()
}

/// Walk back from `end` along decreasing distances; `end` must have a distance.
fn backtrack(maze: &Maze, dist: &[u32], end: Pos) -> Vec<Pos> {
    let w = maze.width;
    let mut d = dist[end.1 * w + end.0];
    let mut path = Vec::with_capacity(d as usize + 1);
    let mut cur = end;
    path.push(cur);
    while d > 0 {
        let prev = neighbours(cur.0, cur.1, w, maze.height).find(|p| dist[p.1 * w + p.0] == d - 1);
        match prev {
            Some(p) => cur = p,
            None => break, // cannot happen for a BFS distance field; stop rather than loop
        }
        path.push(cur);
        d -= 1;
    }
    path.reverse();
    path
}

/// Shortest path from `start` to `end`, both included (`[start]` when they are equal).
/// `None` when either is off the map, `end` is a collision tile, or no path exists.
pub fn shortest_path(maze: &Maze, start: Pos, end: Pos) -> Option<Vec<Pos>> {
    if !maze.contains(start.0, start.1) || !maze.contains(end.0, end.1) {
        return None;
    }
    if start == end {
        return Some(vec![start]);
    }
    if !maze.is_walkable(end.0, end.1) {
        return None;
    }
    let dist = distances(maze, start, &[end]);
    (dist[end.1 * maze.width + end.0] != UNSEEN).then(|| backtrack(maze, &dist, end))
}

/// Number of steps of the shortest path (path length minus one), or `None` if unreachable.
pub fn path_len(maze: &Maze, start: Pos, end: Pos) -> Option<usize> {
    shortest_path(maze, start, end).map(|p| p.len() - 1)
}

/// The target closest to `from` by walking distance, and the path to it (both ends included).
/// Ties go to the earlier target in `targets`. One search serves all targets, so picking among
/// an object's tiles costs the same as one path. `None` when no target is reachable.
pub fn nearest_reachable(maze: &Maze, from: Pos, targets: &[Pos]) -> Option<(Pos, Vec<Pos>)> {
    if !maze.contains(from.0, from.1) {
        return None;
    }
    if targets.contains(&from) {
        return Some((from, vec![from]));
    }
    let dist = distances(maze, from, targets);
    let w = maze.width;
    let best = targets
        .iter()
        .filter(|t| maze.contains(t.0, t.1) && dist[t.1 * w + t.0] != UNSEEN)
        .min_by_key(|t| dist[t.1 * w + t.0])?;
    Some((*best, backtrack(maze, &dist, *best)))
}
