//! The code's structure, checked from its text (ARCHITECTURE.md, "Crates" and "Code map"):
//! the root crate's modules use only modules below them, and no two files of a crate import each
//! other, directly or around a loop. The crates' own order needs no test: cargo refuses a
//! dependency cycle between crates.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The root crate's top-level modules, lowest first: each may use the ones before it (and the
/// lower crates), never one after it.
const ROOT_LAYERS: [&str; 9] =
    ["assets", "memory", "user", "assistant", "tracking", "report", "sim", "web", "bench_llm"];

/// Each crate's source folder.
const CRATES: [&str; 6] =
    ["src", "crates/core/src", "crates/kernels/src", "crates/model/src", "crates/llm/src", "crates/train/src"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A crate's files, each as its module path (`["sim", "engine"]`; `[]` for lib.rs/main.rs).
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut out = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap().with_extension("");
        let mut path: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        if matches!(path.last().map(String::as_str), Some("mod" | "lib" | "main")) {
            path.pop();
        }
        // main.rs is the binary, a crate of its own over the library.
        if f.file_name().is_some_and(|n| n == "main.rs") {
            continue;
        }
        out.insert(path, f);
    }
    out
}

/// A file's code as a release build sees it: unit tests and comments dropped.
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap();
    let comment = regex::Regex::new(r"//[^\n]*").unwrap();
    comment.replace_all(code, "").into_owned()
}

/// The files of its crate that `module` names through `crate::`, `super::` or `self::` paths.
fn imports(module: &[String], text: &str, files: &BTreeMap<Vec<String>, PathBuf>) -> BTreeSet<Vec<String>> {
    let path = regex::Regex::new(r"\b(crate|super|self)((?:::[a-z_][a-z0-9_]*)+)").unwrap();
    let mut out = BTreeSet::new();
    for c in path.captures_iter(text) {
        let mut segs: Vec<&str> = c[2].split("::").skip(1).collect();
        // The module a path starts from: `self` is this module, `super` its parent.
        let mut base: Vec<String> = match &c[1] {
            "crate" => Vec::new(),
            "self" => module.to_vec(),
            _ => module[..module.len().saturating_sub(1)].to_vec(),
        };
        while segs.first() == Some(&"super") {
            base.pop();
            segs.remove(0);
        }
        base.extend(segs.iter().map(|s| s.to_string()));
        // The longest prefix that is a file of this crate.
        let target = (0..=base.len()).rev().map(|n| base[..n].to_vec()).find(|p| files.contains_key(p));
        if let Some(t) = target.filter(|t| t.as_slice() != module && !t.is_empty()) {
            out.insert(t);
        }
    }
    out
}

fn graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let files = modules(src);
    files.iter().map(|(m, f)| (m.clone(), imports(m, &code(f), &files))).collect()
}

/// The strongly connected components of more than one file (Tarjan).
fn cycles(g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    struct T<'a> {
        g: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on: BTreeSet<&'a Vec<String>>,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a Vec<String>) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let Some((w, _)) = t.g.get_key_value(w) else { continue };
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                t.out.push(comp);
            }
        }
    }
    let mut t =
        T { g, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on: BTreeSet::new(), out: Vec::new() };
    for v in g.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_file_imports_one_that_imports_it_back() {
    let mut found = Vec::new();
    for src in CRATES {
        for comp in cycles(&graph(&repo().join(src))) {
            found.push(format!("{src}: {}", comp.iter().map(|m| m.join("::")).collect::<Vec<_>>().join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "import cycles between files:\n{}", found.join("\n"));
}

#[test]
fn root_modules_use_only_the_modules_below_them() {
    let g = graph(&repo().join("src"));
    let rank = |m: &Vec<String>| m.first().and_then(|top| ROOT_LAYERS.iter().position(|l| l == top));
    let mut wrong = Vec::new();
    for (from, tos) in &g {
        let Some(rf) = rank(from) else { continue };
        for to in tos {
            if rank(to).is_some_and(|rt| rt > rf) {
                wrong.push(format!("{} uses {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(wrong.is_empty(), "modules reaching up a layer:\n{}", wrong.join("\n"));
    // Every top-level module of the root crate has a place in the order.
    let tops: BTreeSet<&String> = g.keys().filter_map(|m| m.first()).collect();
    for t in tops {
        assert!(ROOT_LAYERS.contains(&t.as_str()), "{t} is not in ROOT_LAYERS");
    }
}

#[test]
fn the_checks_catch_what_they_look_for() {
    // A two-file loop is found...
    let m = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    let g = BTreeMap::from([
        (m("a"), BTreeSet::from([m("b")])),
        (m("b"), BTreeSet::from([m("a")])),
        (m("c"), BTreeSet::from([m("a")])),
    ]);
    assert_eq!(cycles(&g).len(), 1);
    // ...and so is a path up a layer, written the ways code names modules.
    let files =
        BTreeMap::from([(m("sim"), PathBuf::new()), (m("web"), PathBuf::new()), (m("sim::follow"), PathBuf::new())]);
    let found = imports(&m("sim::follow"), "impl crate::web::LiveSim for F {}", &files);
    assert_eq!(found, BTreeSet::from([m("web")]));
    let found = imports(&m("sim::follow"), "use super::super::web;", &files);
    assert_eq!(found, BTreeSet::from([m("web")]));
}
