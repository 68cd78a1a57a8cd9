//! The maze: tiles with their world/sector/arena/object names and collision, read from the
//! original matrix files (`<assets>/the_ville/matrix/`).
//!
//! Layout of those files (the original's, unchanged):
//! * `maze_meta_info.json`: `maze_width`, `maze_height`, `sq_tile_size`, `world_name`,
//!   `special_constraint`.
//! * `maze/{collision,sector,arena,game_object,spawning_location}_maze.csv`: one row-major list of
//!   `width * height` cell codes (`0` = nothing).
//! * `special_blocks/{world,sector,arena,game_object,spawning_location}_blocks.csv`: rows
//!   `code, world[, sector[, arena[, name]]]`; cells are trimmed and the **last** cell is the name.
//!   The world is the last cell of the first row of `world_blocks.csv` and applies to every tile.
//!
//! Addresses follow the original: `"world:sector"`, `"world:sector:arena"`,
//! `"world:sector:arena:object"`, and `"<spawn_loc>name"` (spawn names such as `sp-A` repeat in
//! several rooms, so one spawn address can cover several tiles, exactly as in the original).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indexmap::IndexMap;
use serde_json::Value;

use super::Pos;

/// One tile. Absent levels are empty strings, as in the original's tile dictionaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tile {
    pub world: String,
    pub sector: String,
    pub arena: String,
    pub game_object: String,
    pub spawning_location: String,
    /// True when the collision cell is anything but `0` (a wall or furniture block).
    pub collision: bool,
}

/// How deep a tile address goes (`Maze::tile_address`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    World,
    Sector,
    Arena,
    Object,
}

/// The loaded maze. Immutable after loading; runtime state (tile events, persona positions)
/// belongs to the simulation.
#[derive(Debug, Clone)]
pub struct Maze {
    /// `world_name` from the meta file ("the ville"); informational, like in the original.
    pub name: String,
    /// The world every tile belongs to (from `world_blocks.csv`, e.g. "the Ville").
    pub world: String,
    pub width: usize,
    pub height: usize,
    pub sq_tile_size: u32,
    /// Loaded and kept, never interpreted (the original never uses it either).
    pub special_constraint: String,
    tiles: Vec<Tile>,
    /// Row-major copy of `!collision`, so path search touches one byte per tile.
    walkable: Vec<bool>,
    address_tiles: HashMap<String, Vec<Pos>>,
    tree: Tree,
}

/// Refuse absurd sizes before allocating (the 140×100 Ville is the largest real map).
const MAX_TILES: usize = 4_000_000;

impl Maze {
    /// Load ProPerSim's map: `<assets>/the_ville/matrix/maze_meta_info.json` + `maze/`.
    pub fn load(assets_dir: &Path) -> Result<Maze> {
        Self::load_variant(assets_dir, "maze_meta_info.json", "maze")
    }

    /// Load another map kept beside it, e.g. the full 140×100 Ville
    /// (`"maze_meta_info_theville.json"`, `"maze_original"`). Special blocks are shared.
    pub fn load_variant(assets_dir: &Path, meta_file_name: &str, maze_folder_name: &str) -> Result<Maze> {
        for name in [meta_file_name, maze_folder_name] {
            if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
                bail!("maze file or folder name {name:?} must be a plain name inside the matrix folder");
            }
        }
        let matrix = matrix_dir(assets_dir);
        Self::load_from(&matrix.join(meta_file_name), &matrix.join(maze_folder_name), &matrix.join("special_blocks"))
    }

    /// Load from explicit paths: the meta JSON, the folder of `*_maze.csv`, the folder of
    /// `*_blocks.csv`.
    pub fn load_from(meta_path: &Path, maze_dir: &Path, blocks_dir: &Path) -> Result<Maze> {
        let meta = read_meta(meta_path)?;
        let (width, height) = (meta.width, meta.height);

        let world_rows = read_block_rows(&blocks_dir.join("world_blocks.csv"))?;
        let world = match world_rows.first() {
            Some((_, name)) => name.clone(),
            None => bail!("{}: no world row", blocks_dir.join("world_blocks.csv").display()),
        };
        let sectors = read_blocks(&blocks_dir.join("sector_blocks.csv"))?;
        let arenas = read_blocks(&blocks_dir.join("arena_blocks.csv"))?;
        let objects = read_blocks(&blocks_dir.join("game_object_blocks.csv"))?;
        let spawns = read_blocks(&blocks_dir.join("spawning_location_blocks.csv"))?;

        let n = width * height;
        let collision = read_cells(&maze_dir.join("collision_maze.csv"), n)?;
        let sector_cells = read_cells(&maze_dir.join("sector_maze.csv"), n)?;
        let arena_cells = read_cells(&maze_dir.join("arena_maze.csv"), n)?;
        let object_cells = read_cells(&maze_dir.join("game_object_maze.csv"), n)?;
        let spawn_cells = read_cells(&maze_dir.join("spawning_location_maze.csv"), n)?;

        // Unknown codes mean "nothing", as in the original (a dictionary lookup that misses).
        let name_of = |map: &HashMap<String, String>, code: &str| map.get(code).cloned().unwrap_or_default();
        let mut tiles = Vec::with_capacity(n);
        for i in 0..n {
            tiles.push(Tile {
                world: world.clone(),
                sector: name_of(&sectors, &sector_cells[i]),
                arena: name_of(&arenas, &arena_cells[i]),
                game_object: name_of(&objects, &object_cells[i]),
                spawning_location: name_of(&spawns, &spawn_cells[i]),
                collision: collision[i] != "0",
            });
        }

        let mut address_tiles: HashMap<String, Vec<Pos>> = HashMap::new();
        let mut tree = Tree::new();
        for y in 0..height {
            for x in 0..width {
                let t = &tiles[y * width + x];
                for addr in tile_addresses(t) {
                    address_tiles.entry(addr).or_default().push((x, y));
                }
                add_to_tree(&mut tree, t);
            }
        }
        for v in address_tiles.values_mut() {
            v.sort_unstable();
        }

        let walkable = tiles.iter().map(|t| !t.collision).collect();
        Ok(Maze {
            name: meta.world_name,
            world,
            width,
            height,
            sq_tile_size: meta.sq_tile_size,
            special_constraint: meta.special_constraint,
            tiles,
            walkable,
            address_tiles,
            tree,
        })
    }

    /// The tile at `(x, y)`, or `None` off the map.
    pub fn tile(&self, x: usize, y: usize) -> Option<&Tile> {
        if x < self.width && y < self.height {
            self.tiles.get(y * self.width + x)
        } else {
            None
        }
    }

    /// True when `(x, y)` is on the map.
    pub fn contains(&self, x: usize, y: usize) -> bool {
        x < self.width && y < self.height
    }

    /// On the map and not a collision tile.
    pub fn is_walkable(&self, x: usize, y: usize) -> bool {
        x < self.width && y < self.height && self.walkable[y * self.width + x]
    }

    /// Row-major walkability of every tile (index `y * width + x`).
    pub fn walkable_grid(&self) -> &[bool] {
        &self.walkable
    }

    /// Every tile of an address (`"world:sector[:arena[:object]]"` or `"<spawn_loc>name"`),
    /// sorted by `(x, y)`; empty for an unknown address.
    pub fn address_tiles(&self, address: &str) -> &[Pos] {
        self.address_tiles.get(address).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Tiles of a game object address; the same lookup as `address_tiles`, named for call sites
    /// that mean objects.
    pub fn object_tiles(&self, object_address: &str) -> &[Pos] {
        self.address_tiles(object_address)
    }

    /// Whether any tile carries this address.
    pub fn has_address(&self, address: &str) -> bool {
        self.address_tiles.contains_key(address)
    }

    /// All known addresses (unordered).
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        self.address_tiles.keys().map(String::as_str)
    }

    /// The tile's address down to `level`, joined with `:`. Like the original's `get_tile_path`,
    /// empty names are joined too (a corridor tile at arena level is `"the Ville:Lin family's
    /// house:"`), so two tiles compare equal exactly when they share every level.
    pub fn tile_address(&self, x: usize, y: usize, level: Level) -> Option<String> {
        let t = self.tile(x, y)?;
        let mut s = t.world.clone();
        let parts: &[&str] = match level {
            Level::World => &[],
            Level::Sector => &[&t.sector],
            Level::Arena => &[&t.sector, &t.arena],
            Level::Object => &[&t.sector, &t.arena, &t.game_object],
        };
        for p in parts {
            s.push(':');
            s.push_str(p);
        }
        Some(s)
    }

    /// Tiles in the square of `radius` around `center`, x-major (all y of one column, then the
    /// next column), as the original orders them.
    ///
    /// Fix: the original clamps the exclusive upper bound to `width - 1` / `height - 1`, so the
    /// last column and row are never seen. Here the bound is `width` / `height`. A center off the
    /// map yields the part of the square that lies on it.
    pub fn nearby_tiles(&self, center: Pos, radius: usize) -> Vec<Pos> {
        let (x, y) = center;
        let x0 = x.saturating_sub(radius);
        let x1 = x.saturating_add(radius).saturating_add(1).min(self.width);
        let y0 = y.saturating_sub(radius);
        let y1 = y.saturating_add(radius).saturating_add(1).min(self.height);
        let mut out = Vec::with_capacity(x1.saturating_sub(x0) * y1.saturating_sub(y0));
        for i in x0..x1 {
            for j in y0..y1 {
                out.push((i, j));
            }
        }
        out
    }

    /// Every world → sector → arena → objects reachable in the maze, in first-seen (row-major)
    /// order: the spatial tree of someone who has seen the whole map.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Sector names of the world, in first-seen order.
    pub fn sectors(&self, world: &str) -> Vec<&str> {
        self.tree.get(world).map(|s| s.keys().map(String::as_str).collect()).unwrap_or_default()
    }

    /// Arena names in a sector address `"world:sector"`, in first-seen order; empty if unknown.
    pub fn arenas(&self, sector_address: &str) -> Vec<&str> {
        let mut it = sector_address.split(':');
        match (it.next(), it.next(), it.next()) {
            (Some(w), Some(s), None) => self
                .tree
                .get(w)
                .and_then(|m| m.get(s))
                .map(|a| a.keys().map(String::as_str).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Object names in an arena address `"world:sector:arena"`, in first-seen order.
    pub fn objects(&self, arena_address: &str) -> Vec<&str> {
        let mut it = arena_address.split(':');
        match (it.next(), it.next(), it.next(), it.next()) {
            (Some(w), Some(s), Some(a), None) => self
                .tree
                .get(w)
                .and_then(|m| m.get(s))
                .and_then(|m| m.get(a))
                .map(|o| o.iter().map(String::as_str).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Tiles of a spawn location name such as `sp-A`.
    pub fn spawn_tiles(&self, name: &str) -> &[Pos] {
        self.address_tiles(&format!("<spawn_loc>{name}"))
    }

    /// Pixel position to tile, as the original path tester does it: `ceil(px / tile_size)`.
    /// Negative or non-finite input maps to 0.
    pub fn pixel_to_tile(&self, px: f64, py: f64) -> Pos {
        let size = f64::from(self.sq_tile_size.max(1));
        let conv = |v: f64| if v.is_finite() && v > 0.0 { (v / size).ceil() as usize } else { 0 };
        (conv(px), conv(py))
    }
}

/// The addresses a tile contributes to, following the original's rules.
fn tile_addresses(t: &Tile) -> Vec<String> {
    let mut out = Vec::new();
    if !t.sector.is_empty() {
        out.push(format!("{}:{}", t.world, t.sector));
    }
    if !t.arena.is_empty() {
        out.push(format!("{}:{}:{}", t.world, t.sector, t.arena));
    }
    if !t.game_object.is_empty() {
        out.push(format!("{}:{}:{}:{}", t.world, t.sector, t.arena, t.game_object));
    }
    if !t.spawning_location.is_empty() {
        out.push(format!("<spawn_loc>{}", t.spawning_location));
    }
    out
}

/// world → sector → arena → objects.
pub type Tree = IndexMap<String, IndexMap<String, IndexMap<String, Vec<String>>>>;

/// Add a tile's names to a spatial tree. A level is only added under a complete parent chain
/// (the original's perceive raises KeyError on an arena without a sector; we skip it instead).
pub(crate) fn add_to_tree(tree: &mut Tree, t: &Tile) {
    if t.world.is_empty() {
        return;
    }
    let sectors = tree.entry(t.world.clone()).or_default();
    if t.sector.is_empty() {
        return;
    }
    let arenas = sectors.entry(t.sector.clone()).or_default();
    if t.arena.is_empty() {
        return;
    }
    let objects = arenas.entry(t.arena.clone()).or_default();
    if !t.game_object.is_empty() && !objects.contains(&t.game_object) {
        objects.push(t.game_object.clone());
    }
}

struct Meta {
    width: usize,
    height: usize,
    sq_tile_size: u32,
    world_name: String,
    special_constraint: String,
}

fn read_meta(path: &Path) -> Result<Meta> {
    let text = fs::read_to_string(path).with_context(|| format!("reading maze meta file {}", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("parsing maze meta file {}", path.display()))?;
    let int = |key: &str| -> Result<Option<usize>> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(|n| Some(n as usize))
                .with_context(|| format!("{}: {key} must be a non-negative integer", path.display())),
            // The original calls int() on it, so a numeric string is accepted too.
            Some(Value::String(s)) => {
                s.trim().parse().map(Some).with_context(|| format!("{}: {key} {s:?} is not an integer", path.display()))
            }
            Some(other) => bail!("{}: {key} must be an integer, found {other}", path.display()),
        }
    };
    let width = int("maze_width")?.with_context(|| format!("{}: maze_width is missing", path.display()))?;
    let height = int("maze_height")?.with_context(|| format!("{}: maze_height is missing", path.display()))?;
    if width == 0 || height == 0 || width.saturating_mul(height) > MAX_TILES {
        bail!("{}: maze size {width}x{height} is out of range", path.display());
    }
    let sq_tile_size = int("sq_tile_size")?.unwrap_or(32);
    let sq_tile_size = u32::try_from(sq_tile_size)
        .ok()
        .filter(|s| *s > 0)
        .with_context(|| format!("{}: sq_tile_size {sq_tile_size} is out of range", path.display()))?;
    let text_field = |key: &str| v.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
    Ok(Meta {
        width,
        height,
        sq_tile_size,
        world_name: text_field("world_name"),
        special_constraint: text_field("special_constraint"),
    })
}

/// Split one CSV line into trimmed cells, honouring double quotes like Python's csv reader.
fn csv_cells(line: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => cells.push(std::mem::take(&mut cur).trim().to_string()),
            _ => cur.push(c),
        }
    }
    cells.push(cur.trim().to_string());
    cells
}

fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading maze file {}", path.display()))
}

/// `(code, name)` rows of a blocks file; blank lines are skipped.
fn read_block_rows(path: &Path) -> Result<Vec<(String, String)>> {
    let text = read_text(path)?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let cells = csv_cells(line);
        match (cells.first(), cells.last()) {
            (Some(code), Some(name)) if cells.len() >= 2 && !code.is_empty() => rows.push((code.clone(), name.clone())),
            _ => bail!("{} line {}: expected `code, world[, ...], name`, found {line:?}", path.display(), i + 1),
        }
    }
    Ok(rows)
}

/// Code → name; a repeated code keeps its last name (the original fills a dict row by row).
fn read_blocks(path: &Path) -> Result<HashMap<String, String>> {
    Ok(read_block_rows(path)?.into_iter().collect())
}

/// The `n` trimmed cells of a maze CSV. The original reads the first line only; the cells of
/// every line are taken here so that a file wrapped over several lines still loads, and a
/// trailing comma is tolerated.
fn read_cells(path: &Path, n: usize) -> Result<Vec<String>> {
    let text = read_text(path)?;
    let mut cells: Vec<String> = Vec::with_capacity(n);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut row = csv_cells(line);
        if row.last().is_some_and(|c| c.is_empty()) {
            row.pop();
        }
        cells.extend(row);
    }
    if cells.len() != n {
        bail!("{}: expected {n} cells (width x height from the meta file), found {}", path.display(), cells.len());
    }
    if let Some(i) = cells.iter().position(|c| c.is_empty()) {
        bail!("{}: cell {i} is empty", path.display());
    }
    Ok(cells)
}

/// The matrix folder of a maze inside an assets folder.
pub fn matrix_dir(assets_dir: &Path) -> PathBuf {
    assets_dir.join("the_ville").join("matrix")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_trim_and_quotes() {
        assert_eq!(
            csv_cells("32155, the Ville, Ryan Park's apartment "),
            vec!["32155", "the Ville", "Ryan Park's apartment"]
        );
        assert_eq!(csv_cells(r#"1, "a, b", "say ""hi""""#), vec!["1", "a, b", r#"say "hi""#]);
        assert_eq!(csv_cells("0,0,"), vec!["0", "0", ""]);
    }

    fn write_maze(dir: &Path, w: usize, h: usize, collision: &str) {
        let m = dir.join("the_ville/matrix");
        fs::create_dir_all(m.join("maze")).unwrap();
        fs::create_dir_all(m.join("special_blocks")).unwrap();
        fs::write(
            m.join("maze_meta_info.json"),
            format!(r#"{{"world_name": "w", "maze_width": {w}, "maze_height": "{h}", "sq_tile_size": 32}}"#),
        )
        .unwrap();
        let zeros = vec!["0"; w * h].join(",");
        fs::write(m.join("maze/collision_maze.csv"), collision).unwrap();
        for f in ["sector", "arena", "game_object", "spawning_location"] {
            fs::write(m.join(format!("maze/{f}_maze.csv")), &zeros).unwrap();
        }
        fs::write(m.join("special_blocks/world_blocks.csv"), "1, W").unwrap();
        for f in ["sector", "arena", "game_object", "spawning_location"] {
            fs::write(m.join(format!("special_blocks/{f}_blocks.csv")), "").unwrap();
        }
    }

    #[test]
    fn nearby_tiles_include_last_row_and_column() {
        let d = tempfile::tempdir().unwrap();
        write_maze(d.path(), 3, 2, "0,0,0,0,0,0\n");
        let m = Maze::load(d.path()).unwrap();
        assert_eq!(m.nearby_tiles((2, 1), 1), vec![(1, 0), (1, 1), (2, 0), (2, 1)]);
        assert_eq!(m.nearby_tiles((0, 0), 5).len(), 6);
        assert_eq!(m.nearby_tiles((10, 10), 1), Vec::<Pos>::new());
    }

    #[test]
    fn wrong_cell_count_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        write_maze(d.path(), 3, 2, "0,0,0,0,0");
        let err = format!("{:#}", Maze::load(d.path()).unwrap_err());
        assert!(err.contains("collision_maze.csv") && err.contains("expected 6 cells"), "{err}");
    }

    #[test]
    fn missing_file_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        write_maze(d.path(), 3, 2, "0,0,0,0,0,0");
        fs::remove_file(d.path().join("the_ville/matrix/special_blocks/arena_blocks.csv")).unwrap();
        let err = format!("{:#}", Maze::load(d.path()).unwrap_err());
        assert!(err.contains("arena_blocks.csv"), "{err}");
    }

    #[test]
    fn bad_variant_names_are_refused() {
        let d = tempfile::tempdir().unwrap();
        assert!(Maze::load_variant(d.path(), "../x.json", "maze").is_err());
        assert!(Maze::load_variant(d.path(), "m.json", "..").is_err());
    }
}
