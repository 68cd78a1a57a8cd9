//! The maze, paths and spatial memory: on our own tiny fixture (always) and on the original
//! ProPerSim map from `../shared` (skipped with `PROPERSIM-SKIP:` when it is not there).

use std::path::{Path, PathBuf};

use propersim::world::{nearest_reachable, shortest_path, Level, Maze, Pos, SpatialMemory};

fn fixture_assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_house")
}

fn fixture_seed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seeds/tiny_seed")
}

/// The original's `frontend_server` folder: `$PROPERSIM_SHARED` when set (the shared folder or
/// the frontend_server folder itself; nothing else is tried then), else `shared/frontend_server`
/// beside the repository or one level further up (worktrees live one level deeper).
fn shared_frontend() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os("PROPERSIM_SHARED") {
        let p = PathBuf::from(v);
        return [p.join("frontend_server"), p].into_iter().find(|c| c.join("static_dirs").is_dir());
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .skip(1)
        .take(2)
        .map(|a| a.join("shared/frontend_server"))
        .find(|p| p.join("static_dirs").is_dir())
}

fn shared_assets(test: &str) -> Option<PathBuf> {
    let p = shared_frontend()
        .map(|f| f.join("static_dirs/assets"))
        .filter(|p| p.join("the_ville/matrix/maze_meta_info.json").is_file());
    if p.is_none() {
        println!("PROPERSIM-SKIP: {test}: the original map assets (../shared/frontend_server/static_dirs/assets or $PROPERSIM_SHARED) are missing");
    }
    p
}

/// Check a path: starts and ends right, every step moves to a 4-adjacent walkable tile.
fn assert_valid_path(maze: &Maze, path: &[Pos], start: Pos, end: Pos) {
    assert_eq!(path.first(), Some(&start), "{path:?}");
    assert_eq!(path.last(), Some(&end), "{path:?}");
    for w in path.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        assert_eq!(x0.abs_diff(x1) + y0.abs_diff(y1), 1, "step {:?} -> {:?} is not 4-adjacent in {path:?}", w[0], w[1]);
        assert!(maze.is_walkable(x1, y1), "{:?} is not walkable in {path:?}", w[1]);
    }
}

/// All-pairs distances by Floyd–Warshall over the walkable grid, plus each extra start (which may
/// be a wall) linked to its walkable neighbours: written independently of the BFS under test.
#[allow(clippy::needless_range_loop)] // Floyd–Warshall reads clearest with indices.
fn floyd(maze: &Maze, extra_starts: &[Pos]) -> (Vec<Pos>, Vec<Vec<u32>>) {
    let mut nodes: Vec<Pos> = Vec::new();
    for y in 0..maze.height {
        for x in 0..maze.width {
            if maze.is_walkable(x, y) || extra_starts.contains(&(x, y)) {
                nodes.push((x, y));
            }
        }
    }
    let n = nodes.len();
    const INF: u32 = u32::MAX / 4;
    let mut d = vec![vec![INF; n]; n];
    for i in 0..n {
        d[i][i] = 0;
        for j in 0..n {
            let (a, b) = (nodes[i], nodes[j]);
            let adjacent = a.0.abs_diff(b.0) + a.1.abs_diff(b.1) == 1;
            // Moves go into walkable tiles only; a wall start can be left but not entered.
            if adjacent && maze.is_walkable(b.0, b.1) {
                d[i][j] = 1;
            }
        }
    }
    for k in 0..n {
        for i in 0..n {
            let dik = d[i][k];
            if dik == INF {
                continue;
            }
            for j in 0..n {
                let via = dik + d[k][j];
                if via < d[i][j] {
                    d[i][j] = via;
                }
            }
        }
    }
    (nodes, d)
}

// ---------------------------------------------------------------------------------------------
// Fixture: always runs.

#[test]
fn fixture_maze_loads_with_addresses() {
    let m = Maze::load(&fixture_assets()).unwrap();
    assert_eq!((m.width, m.height, m.sq_tile_size), (13, 8, 32));
    assert_eq!(m.name, "tiny town");
    assert_eq!(m.world, "Tiny Town");
    let bed = m.tile(1, 1).unwrap();
    assert_eq!(
        (bed.sector.as_str(), bed.arena.as_str(), bed.game_object.as_str(), bed.spawning_location.as_str()),
        ("Ruiz flat", "Ana Ruiz's bedroom", "bed", "sp-A")
    );
    assert!(!bed.collision);
    // Ana's start tile is a wall inside her bedroom, like John's (5,10) in the original.
    let start = m.tile(1, 4).unwrap();
    assert!(start.collision && start.arena == "Ana Ruiz's bedroom");
    assert!(m.tile(13, 0).is_none() && m.tile(0, 8).is_none());

    assert_eq!(m.address_tiles("Tiny Town:Ruiz flat:Ana Ruiz's bedroom:bed"), &[(1, 1), (2, 1)]);
    assert_eq!(m.address_tiles("Tiny Town:Ruiz flat:Theo Park's room:bed"), &[(5, 1), (6, 1)]);
    assert_eq!(m.address_tiles("<spawn_loc>sp-A"), &[(1, 1), (5, 1)]);
    assert_eq!(m.spawn_tiles("sp-B"), &[(2, 1), (6, 1)]);
    assert_eq!(m.address_tiles("Tiny Town:Ruiz flat:kitchen").len(), 10);
    assert!(m.address_tiles("Tiny Town:Ruiz flat:garden").is_empty());
    assert_eq!(m.address_tiles("Tiny Town:Ruiz flat").len(), 12 * 8);

    assert_eq!(
        m.arenas("Tiny Town:Ruiz flat"),
        vec!["Ana Ruiz's bedroom", "Theo Park's room", "bathroom", "living room", "kitchen"]
    );
    assert_eq!(m.objects("Tiny Town:Ruiz flat:kitchen"), vec!["cooking area", "kitchen sink", "refrigerator"]);
    assert_eq!(m.objects("Tiny Town:Ruiz flat:Ana Ruiz's bedroom"), vec!["bed", "closet", "desk"]);
    assert!(m.objects("Tiny Town:Ruiz flat").is_empty() && m.arenas("nonsense").is_empty());

    assert_eq!(m.tile_address(3, 3, Level::Object).unwrap(), "Tiny Town:Ruiz flat:Ana Ruiz's bedroom:desk");
    assert_eq!(m.tile_address(3, 3, Level::Arena).unwrap(), "Tiny Town:Ruiz flat:Ana Ruiz's bedroom");
    assert_eq!(m.tile_address(3, 3, Level::Sector).unwrap(), "Tiny Town:Ruiz flat");
    assert_eq!(m.tile_address(3, 3, Level::World).unwrap(), "Tiny Town");
    // The walled-off pocket has no sector; empty levels are still joined, as in the original.
    assert_eq!(m.tile_address(12, 6, Level::Arena).unwrap(), "Tiny Town::");
    assert_eq!(m.pixel_to_tile(33.0, 64.0), (2, 2));
}

#[test]
fn fixture_paths_are_shortest_and_follow_the_tie_break() {
    let m = Maze::load(&fixture_assets()).unwrap();
    // From Ana's wall start tile to the kitchen sink. Two 9-step routes exist; walking back from
    // the end the original prefers the upper neighbour, so the route goes through the door (2,4).
    let p = shortest_path(&m, (1, 4), (9, 5)).unwrap();
    let mut expected = vec![(1, 4), (2, 4)];
    expected.extend((2..=9).map(|x| (x, 5)));
    assert_eq!(p, expected);
    assert_valid_path(&m, &p, (1, 4), (9, 5));

    assert_eq!(shortest_path(&m, (2, 2), (2, 2)), Some(vec![(2, 2)]));
    assert_eq!(shortest_path(&m, (2, 2), (12, 6)), None, "the pocket is walled off");
    assert_eq!(shortest_path(&m, (2, 2), (4, 2)), None, "a wall is not a destination");
    assert_eq!(shortest_path(&m, (2, 2), (40, 2)), None);
    assert_eq!(shortest_path(&m, (40, 2), (2, 2)), None);

    let (nodes, d) = floyd(&m, &[(1, 4)]);
    for (i, &a) in nodes.iter().enumerate() {
        for (j, &b) in nodes.iter().enumerate() {
            let got = if m.is_walkable(b.0, b.1) || a == b { shortest_path(&m, a, b) } else { None };
            match got {
                Some(path) => {
                    assert_valid_path(&m, &path, a, b);
                    assert_eq!(path.len() as u32 - 1, d[i][j], "{a:?} -> {b:?}");
                }
                None => assert!(d[i][j] > 10_000 || !m.is_walkable(b.0, b.1), "{a:?} -> {b:?} should be reachable"),
            }
        }
    }
}

#[test]
fn fixture_nearest_reachable_picks_the_closest_target() {
    let m = Maze::load(&fixture_assets()).unwrap();
    // Theo's bed: (6,1) is 11 steps from (2,2), (5,1) is 12, though (5,1) is listed first.
    let (t, p) = nearest_reachable(&m, (2, 2), &[(12, 6), (5, 1), (6, 1)]).unwrap();
    assert_eq!(t, (6, 1));
    assert_eq!(p.len(), 12);
    assert_valid_path(&m, &p, (2, 2), (6, 1));
    // Equal distances: the earlier target wins.
    let (t, _) = nearest_reachable(&m, (2, 2), &[(3, 2), (1, 2)]).unwrap();
    assert_eq!(t, (3, 2));
    let (t, _) = nearest_reachable(&m, (2, 2), &[(1, 2), (3, 2)]).unwrap();
    assert_eq!(t, (1, 2));
    assert_eq!(nearest_reachable(&m, (2, 2), &[(2, 2), (1, 1)]), Some(((2, 2), vec![(2, 2)])));
    assert_eq!(nearest_reachable(&m, (2, 2), &[(12, 6), (4, 4)]), None);
    assert_eq!(nearest_reachable(&m, (2, 2), &[]), None);
}

#[test]
fn fixture_nearby_tiles_reach_the_last_row_and_column() {
    let m = Maze::load(&fixture_assets()).unwrap();
    let near = m.nearby_tiles((11, 6), 2);
    assert_eq!(near.len(), 4 * 4);
    assert!(near.contains(&(12, 7)) && near.contains(&(9, 4)));
    // x-major order, as in the original.
    assert_eq!(&near[..3], &[(9, 4), (9, 5), (9, 6)]);
    assert_eq!(m.nearby_tiles((0, 0), 100).len(), 13 * 8);
}

#[test]
fn fixture_seed_agrees_with_the_fixture_maze() {
    let m = Maze::load(&fixture_assets()).unwrap();
    let seed = fixture_seed();
    let env: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(seed.join("environment/0.json")).unwrap()).unwrap();
    let tile = |who: &str| (env[who]["x"].as_u64().unwrap() as usize, env[who]["y"].as_u64().unwrap() as usize);
    assert!(!m.is_walkable(tile("Ana Ruiz").0, tile("Ana Ruiz").1), "Ana starts on a wall tile like John");
    assert!(m.is_walkable(tile("Theo Park").0, tile("Theo Park").1));
    for who in ["Ana Ruiz", "Theo Park"] {
        let mem =
            SpatialMemory::load(&seed.join(format!("personas/{who}/bootstrap_memory/spatial_memory.json"))).unwrap();
        for (w, sectors) in &mem.tree {
            for (s, arenas) in sectors {
                for (a, objects) in arenas {
                    for o in objects {
                        assert!(
                            m.has_address(&format!("{w}:{s}:{a}:{o}")),
                            "{who} knows {w}:{s}:{a}:{o}, which is not on the map"
                        );
                    }
                }
            }
        }
        let scratch: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(seed.join(format!("personas/{who}/bootstrap_memory/scratch.json"))).unwrap(),
        )
        .unwrap();
        let area = scratch["living_area"].as_str().unwrap();
        assert!(m.has_address(area), "{who}'s living area {area}");
    }
}

#[test]
fn fixture_spatial_memory_perceives_and_round_trips() {
    let m = Maze::load(&fixture_assets()).unwrap();
    let path = fixture_seed().join("personas/Ana Ruiz/bootstrap_memory/spatial_memory.json");
    let mut mem = SpatialMemory::load(&path).unwrap();
    assert!(mem.arenas_in("Tiny Town", "Ruiz flat").iter().all(|a| *a != "kitchen"));

    // Saving an unchanged memory reproduces the file byte for byte.
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("spatial_memory.json");
    mem.save(&out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&path).unwrap());

    // Standing in her bedroom with vision 8 she sees the kitchen; it is appended, order kept.
    let added = mem.perceive(&m, (2, 2), 8);
    assert_eq!(added, 4, "kitchen + its three objects");
    assert_eq!(
        mem.arenas_in("Tiny Town", "Ruiz flat"),
        vec!["Ana Ruiz's bedroom", "living room", "bathroom", "Theo Park's room", "kitchen"]
    );
    assert_eq!(
        mem.objects_in("Tiny Town", "Ruiz flat", "kitchen"),
        vec!["cooking area", "kitchen sink", "refrigerator"]
    );
    assert_eq!(mem.perceive(&m, (2, 2), 8), 0, "nothing new the second time");
    mem.save(&out).unwrap();
    assert_eq!(SpatialMemory::load(&out).unwrap(), mem);

    // A small radius sees only what is near.
    let mut small = SpatialMemory::new();
    small.perceive(&m, (2, 2), 1);
    assert_eq!(small.arenas_in("Tiny Town", "Ruiz flat"), vec!["Ana Ruiz's bedroom"]);
    assert_eq!(small.objects_in("Tiny Town", "Ruiz flat", "Ana Ruiz's bedroom"), vec!["bed", "closet", "desk"]);

    // The path tester's rule: same sector and arena only.
    let mut tester = SpatialMemory::new();
    tester.perceive_same_arena(&m, (2, 5), 8);
    assert_eq!(tester.arenas_in("Tiny Town", "Ruiz flat"), vec!["living room"]);
    assert_eq!(
        tester.objects_in("Tiny Town", "Ruiz flat", "living room"),
        vec!["common room sofa", "shelf", "common room table"]
    );
}

// ---------------------------------------------------------------------------------------------
// The original map (../shared).

/// The layout drawn in user_agent.md §6.1: `#` collision; a letter is an arena (upper case =
/// floor, lower case = an object tile); `.` is walkable with no arena.
const LIN_HOUSE: [&str; 22] = [
    "....#..#..####",
    ".####..#..####",
    "#cccCCCk##bbb#",
    "#CCCCCCk####B#",
    "#Cc##cCK##bbB#",
    "#CC##CCk##BBB#",
    "#CcCCcCKK##BB#",
    "#CCCCCCCC....#",
    "#..######..##.",
    "#..##...#..#..",
    "#jJJJ###EEEe#.",
    ".##jjj#eee#eE#",
    ".#jJJJ#EEEEEe#",
    ".#########..##",
    "#.............",
    "#.G####ggggG.#",
    "#.gggggggGGg.#",
    "#.g####gg##g.#",
    "#.g####gg##g.#",
    "#.gggggggggG.#",
    "#............#",
    ".############.",
];

const HOUSE: &str = "the Ville:Lin family's house";

fn arena_of(letter: char) -> &'static str {
    match letter.to_ascii_lowercase() {
        'j' => "Mei and John Lin's bedroom",
        'e' => "Eddy Lin's bedroom",
        'c' => "common room",
        'k' => "kitchen",
        'b' => "bathroom",
        'g' => "garden",
        _ => unreachable!(),
    }
}

#[test]
fn shared_map_matches_the_documented_layout() {
    let Some(assets) = shared_assets("shared_map_matches_the_documented_layout") else { return };
    let m = Maze::load(&assets).unwrap();
    assert_eq!((m.width, m.height, m.world.as_str(), m.name.as_str()), (14, 22, "the Ville", "the ville"));
    for (y, row) in LIN_HOUSE.iter().enumerate() {
        for (x, ch) in row.chars().enumerate() {
            let t = m.tile(x, y).unwrap();
            match ch {
                '#' => assert!(t.collision, "({x},{y}) should be a wall"),
                '.' => assert!(!t.collision && t.arena.is_empty(), "({x},{y}) {t:?}"),
                c => {
                    assert!(!t.collision, "({x},{y})");
                    assert_eq!(t.arena, arena_of(c), "({x},{y})");
                    assert_eq!(!t.game_object.is_empty(), c.is_ascii_lowercase(), "({x},{y}) {t:?}");
                }
            }
        }
    }
    // John's seed start tile is a wall of his bedroom.
    let start = m.tile(5, 10).unwrap();
    assert!(start.collision && start.arena == "Mei and John Lin's bedroom");
}

#[test]
fn shared_object_tiles_resolve_to_their_addresses() {
    let Some(assets) = shared_assets("shared_object_tiles_resolve_to_their_addresses") else { return };
    let m = Maze::load(&assets).unwrap();
    let expected: &[(&str, &str, &[Pos])] = &[
        ("Mei and John Lin's bedroom", "bed", &[(4, 11), (5, 11)]),
        ("Mei and John Lin's bedroom", "desk", &[(3, 11)]),
        ("Mei and John Lin's bedroom", "closet", &[(1, 10), (2, 12)]),
        ("Eddy Lin's bedroom", "bed", &[(7, 11), (8, 11)]),
        ("Eddy Lin's bedroom", "desk", &[(9, 11)]),
        ("Eddy Lin's bedroom", "closet", &[(11, 10), (11, 11), (12, 12)]),
        ("common room", "shelf", &[(1, 2), (2, 2), (3, 2)]),
        ("common room", "common room table", &[(2, 4), (2, 6), (5, 4), (5, 6)]),
        ("kitchen", "kitchen sink", &[(7, 2)]),
        ("kitchen", "cooking area", &[(7, 3)]),
        ("kitchen", "refrigerator", &[(7, 5)]),
        ("bathroom", "toilet", &[(10, 2)]),
        ("bathroom", "bathroom sink", &[(11, 2), (12, 2)]),
        ("bathroom", "shower", &[(10, 4), (11, 4)]),
    ];
    for (arena, object, tiles) in expected {
        let addr = format!("{HOUSE}:{arena}:{object}");
        assert_eq!(m.address_tiles(&addr), *tiles, "{addr}");
        for &(x, y) in *tiles {
            assert_eq!(m.tile_address(x, y, Level::Object).unwrap(), addr);
            assert!(m.is_walkable(x, y), "{addr} at ({x},{y})");
        }
    }
    let garden = m.address_tiles(&format!("{HOUSE}:garden:house garden"));
    assert_eq!(garden.len(), 29);
    assert!(garden.iter().all(|&(x, y)| (15..=19).contains(&y) && m.is_walkable(x, y)));
    assert_eq!(m.spawn_tiles("sp-A"), &[(4, 11), (7, 11)]);
    assert_eq!(m.spawn_tiles("sp-B"), &[(5, 11), (8, 11)]);
    assert_eq!(
        m.arenas(HOUSE),
        vec!["common room", "kitchen", "bathroom", "Mei and John Lin's bedroom", "Eddy Lin's bedroom", "garden"]
    );
}

#[test]
fn shared_paths_between_all_object_tiles_are_valid_and_shortest() {
    let Some(assets) = shared_assets("shared_paths_between_all_object_tiles_are_valid_and_shortest") else { return };
    let m = Maze::load(&assets).unwrap();
    let mut objects: Vec<Pos> = Vec::new();
    for y in 0..m.height {
        for x in 0..m.width {
            if !m.tile(x, y).unwrap().game_object.is_empty() {
                objects.push((x, y));
            }
        }
    }
    assert_eq!(objects.len(), 55);
    let starts = [(5, 10), (8, 10)]; // the seeds' start tiles of John and Eddy
    let (nodes, d) = floyd(&m, &starts);
    let idx = |p: Pos| nodes.iter().position(|n| *n == p).unwrap();
    let mut checked = 0;
    for &a in objects.iter().chain(starts.iter()) {
        for &b in &objects {
            let path = shortest_path(&m, a, b).unwrap_or_else(|| panic!("no path {a:?} -> {b:?}"));
            assert_valid_path(&m, &path, a, b);
            assert_eq!(path.len() as u32 - 1, d[idx(a)][idx(b)], "{a:?} -> {b:?}: {path:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 57 * 55);
    // Known lengths: John's wall start is next to his bed; the kitchen sink is far.
    assert_eq!(shortest_path(&m, (5, 10), (5, 11)).unwrap(), vec![(5, 10), (5, 11)]);
    // The outside pocket in the top-left corner is not connected to the house.
    assert_eq!(shortest_path(&m, (5, 11), (0, 0)), None);

    // nearest_reachable agrees with the independent distances for every object address.
    for addr in m.addresses().filter(|a| a.matches(':').count() == 3).collect::<Vec<_>>() {
        let targets = m.address_tiles(addr);
        let (t, p) = nearest_reachable(&m, (5, 10), targets).unwrap();
        let best = targets.iter().map(|&t| d[idx((5, 10))][idx(t)]).min().unwrap();
        assert_eq!(p.len() as u32 - 1, best, "{addr}");
        assert_eq!(d[idx((5, 10))][idx(t)], best);
        assert_valid_path(&m, &p, (5, 10), t);
    }
}

#[test]
fn shared_nearby_tiles_and_perception() {
    let Some(assets) = shared_assets("shared_nearby_tiles_and_perception") else { return };
    let m = Maze::load(&assets).unwrap();
    let near = m.nearby_tiles((13, 21), 1);
    assert_eq!(near, vec![(12, 20), (12, 21), (13, 20), (13, 21)]);
    assert_eq!(m.nearby_tiles((5, 10), 8).len(), 14 * 17);

    // The first perceive from John's start adds the kitchen, missing from his bootstrap tree.
    let Some(front) = shared_frontend() else { return };
    let p = front.join("storage/base_the_ville_persona_1/personas/John Lin/bootstrap_memory/spatial_memory.json");
    let mut mem = SpatialMemory::load(&p).unwrap();
    assert!(!mem.arenas_in("the Ville", "Lin family's house").contains(&"kitchen"));
    mem.perceive(&m, (5, 10), 8);
    assert!(mem.arenas_in("the Ville", "Lin family's house").contains(&"kitchen"));
    assert_eq!(
        mem.objects_in("the Ville", "Lin family's house", "kitchen"),
        vec!["kitchen sink", "cooking area", "refrigerator"]
    );
}

#[test]
fn shared_seed_spatial_memories_round_trip() {
    let Some(front) = shared_frontend().filter(|f| f.join("storage").is_dir()) else {
        println!(
            "PROPERSIM-SKIP: shared_seed_spatial_memories_round_trip: ../shared/frontend_server/storage is missing"
        );
        return;
    };
    let d = tempfile::tempdir().unwrap();
    for n in 1..=32 {
        for who in ["John Lin", "Eddy Lin"] {
            let p = front.join(format!(
                "storage/base_the_ville_persona_{n}/personas/{who}/bootstrap_memory/spatial_memory.json"
            ));
            let mem = SpatialMemory::load(&p).unwrap();
            let out = d.path().join("s.json");
            mem.save(&out).unwrap();
            assert_eq!(SpatialMemory::load(&out).unwrap(), mem, "{}", p.display());
            let original: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            let ours: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
            assert_eq!(original, ours);
        }
    }
}

#[test]
fn shared_full_ville_loads() {
    let Some(assets) = shared_assets("shared_full_ville_loads") else { return };
    let m = Maze::load_variant(&assets, "maze_meta_info_theville.json", "maze_original").unwrap();
    assert_eq!((m.width, m.height), (140, 100));
    assert!(!m.address_tiles("the Ville:Hobbs Cafe:cafe").is_empty());
    assert!(!m.address_tiles("the Ville:Lin family's house:kitchen:refrigerator").is_empty());
    assert_eq!(m.nearby_tiles((139, 99), 1), vec![(138, 98), (138, 99), (139, 98), (139, 99)]);
    // Paths on the big map work too: from the Lin kitchen to the cafe counter.
    let from = m.address_tiles("the Ville:Lin family's house:kitchen:refrigerator")[0];
    let to = m.address_tiles("the Ville:Hobbs Cafe:cafe:behind the cafe counter");
    let (t, p) = nearest_reachable(&m, from, to).unwrap();
    assert_valid_path(&m, &p, from, t);
    assert!(p.len() > 20);
    // BFS is exact: no target is closer than the one chosen.
    for &other in to {
        if let Some(q) = shortest_path(&m, from, other) {
            assert!(q.len() >= p.len());
        }
    }
}

/// Timing figures, not assertions on time: `cargo test --release --test world -- --ignored
/// --nocapture bench_paths`.
#[test]
#[ignore]
fn bench_paths() {
    let Some(assets) = shared_assets("bench_paths") else { return };
    let m = Maze::load(&assets).unwrap();
    let objects: Vec<Pos> =
        m.addresses().filter(|a| a.matches(':').count() == 3).flat_map(|a| m.address_tiles(a).to_vec()).collect();
    let t0 = std::time::Instant::now();
    let mut n = 0u64;
    for _ in 0..20 {
        for &a in &objects {
            for &b in &objects {
                n += shortest_path(&m, a, b).map_or(0, |p| p.len() as u64).min(1);
            }
        }
    }
    let per = t0.elapsed().as_secs_f64() * 1e6 / (20 * objects.len() * objects.len()) as f64;
    println!("shortest_path on 14x22: {per:.2} us per call ({n} paths)");
    let addrs: Vec<&str> = m.addresses().filter(|a| a.matches(':').count() == 3).collect();
    let t0 = std::time::Instant::now();
    let reps = 2000;
    for _ in 0..reps {
        for a in &addrs {
            let _ = nearest_reachable(&m, (5, 10), m.address_tiles(a));
        }
    }
    let per = t0.elapsed().as_secs_f64() * 1e6 / (reps * addrs.len()) as f64;
    println!("nearest_reachable (address lookup + BFS) on 14x22: {per:.2} us per call");
    let t0 = std::time::Instant::now();
    let big = Maze::load_variant(&assets, "maze_meta_info_theville.json", "maze_original").unwrap();
    println!("load 140x100: {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    let t0 = std::time::Instant::now();
    let far = shortest_path(
        &big,
        big.address_tiles("the Ville:Lin family's house:kitchen:refrigerator")[0],
        big.address_tiles("the Ville:Hobbs Cafe:cafe:behind the cafe counter")[0],
    );
    println!(
        "one cross-town path on 140x100: {:.1} us, {} tiles",
        t0.elapsed().as_secs_f64() * 1e6,
        far.map_or(0, |p| p.len())
    );
}
