//! The Dockerfile, checked without a container engine: its build stage must copy everything the
//! compiler reads before `cargo build` runs. That is Cargo.toml, Cargo.lock, src/, build.rs, each
//! workspace member's folder, the folders our `include_str!`/`include_bytes!` read (found by
//! scanning every crate's src/), and every target Cargo.toml declares (cargo refuses a manifest
//! whose declared bench is missing). The dependency-only layer needs every member's manifest and
//! may stand stubs in for the declared targets and the members' `src/lib.rs`. The image runs as a non-root user and has
//! a HEALTHCHECK.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Dockerfile instructions: continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(t);
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The stages, each a list of instructions starting with its FROM.
fn stages(text: &str) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    for i in instructions(text) {
        if keyword(&i) == "FROM" || out.is_empty() {
            out.push(Vec::new());
        }
        out.last_mut().unwrap().push(i);
    }
    out
}

fn keyword(i: &str) -> String {
    i.split_whitespace().next().unwrap_or_default().to_ascii_uppercase()
}

/// The build-context sources of a `COPY` (none for `COPY --from=`), without a leading `./`.
fn copy_sources(i: &str) -> Vec<String> {
    let words: Vec<&str> = i.split_whitespace().skip(1).collect();
    if words.iter().any(|w| w.starts_with("--from")) {
        return Vec::new();
    }
    let args: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
    args.split_last()
        .map(|(_, srcs)| srcs.iter().map(|s| s.trim_start_matches("./").trim_end_matches('/').to_string()).collect())
        .unwrap_or_default()
}

fn covered(path: &str, copied: &BTreeSet<String>) -> bool {
    copied.iter().any(|c| c == "." || path == c || path.starts_with(&format!("{c}/")))
}

/// What the build stage of `dockerfile` lacks: for the last `cargo build` of the stage that
/// builds, every one of `need.all` must be copied before it; for an earlier (dependency-only)
/// one, each of `need.manifests` must be copied and each of `need.stubs` copied or made in that
/// same RUN.
fn missing(dockerfile: &str, need: &Needed) -> Vec<String> {
    let Some(stage) = stages(dockerfile).into_iter().find(|s| s.iter().any(|i| i.contains("cargo build"))) else {
        return vec!["no stage runs `cargo build`".into()];
    };
    let builds: Vec<usize> = (0..stage.len()).filter(|&k| stage[k].contains("cargo build")).collect();
    let mut problems = Vec::new();
    let mut copied = BTreeSet::new();
    for (k, i) in stage.iter().enumerate() {
        if keyword(i) == "COPY" || keyword(i) == "ADD" {
            copied.extend(copy_sources(i));
        }
        if !builds.contains(&k) {
            continue;
        }
        let last = Some(&k) == builds.last();
        for p in if last { &need.all } else { &need.manifests } {
            if !covered(p, &copied) {
                problems.push(format!("{p} is not copied before `{i}`"));
            }
        }
        if !last {
            for t in &need.stubs {
                if !covered(t, &copied) && !i.contains(t.as_str()) {
                    problems.push(format!("{t} (a target Cargo needs) is neither copied nor stubbed before `{i}`"));
                }
            }
        }
    }
    problems
}

/// `path` (relative to `dir`, inside the repository) as a repository-relative path.
fn normalize(dir: &Path, path: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in dir.join(path).components() {
        match c {
            Component::ParentDir => {
                parts.pop();
            }
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The files and folders the non-test code of src/ compiles in: the literal paths of
/// `include_str!`/`include_bytes!`, and for a macro that includes under `CARGO_MANIFEST_DIR`,
/// the folder each of its invocations names first (`files!("templates": ...)`).
fn compiled_in() -> BTreeSet<String> {
    let lit = regex::Regex::new(r#"include_(?:str|bytes)!\(\s*"([^"]+)"\s*\)"#).unwrap();
    let dynamic = regex::Regex::new(r#"include_(?:str|bytes)!\(\s*concat!\(\s*env!\("CARGO_MANIFEST_DIR"\)"#).unwrap();
    let macro_def = regex::Regex::new(r"macro_rules!\s*(\w+)").unwrap();
    let mut files = Vec::new();
    rust_files(&repo().join("src"), &mut files);
    for m in members() {
        rust_files(&repo().join(m).join("src"), &mut files);
    }
    let mut out = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        // Unit tests sit after `#[cfg(test)]`; they are not in a release build.
        let code = text.split("#[cfg(test)]").next().unwrap();
        let rel_dir = f.parent().unwrap().strip_prefix(repo()).unwrap().to_path_buf();
        for c in lit.captures_iter(code) {
            out.insert(normalize(&rel_dir, &c[1]));
        }
        for m in dynamic.find_iter(code) {
            let name = macro_def
                .captures_iter(&code[..m.start()])
                .last()
                .unwrap_or_else(|| panic!("{}: an include under CARGO_MANIFEST_DIR outside a macro", f.display()))[1]
                .to_string();
            let call = regex::Regex::new(&format!(r#"\b{name}!\(\s*"([^"]+)"\s*:"#)).unwrap();
            out.extend(call.captures_iter(code).map(|c| c[1].trim_matches('/').to_string()));
        }
    }
    out
}

/// The target files Cargo.toml declares explicitly ([[bin]], [[bench]], [[test]], [[example]]).
fn declared_targets() -> Vec<String> {
    let manifest: toml::Value = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap().parse().unwrap();
    let mut out = Vec::new();
    for (kind, dir) in [("bin", "src/bin"), ("bench", "benches"), ("test", "tests"), ("example", "examples")] {
        for t in manifest.get(kind).and_then(|v| v.as_array()).into_iter().flatten() {
            let path = match t.get("path").and_then(|p| p.as_str()) {
                Some(p) => p.to_string(),
                None => format!("{dir}/{}.rs", t["name"].as_str().unwrap()),
            };
            out.push(path.trim_start_matches("./").to_string());
        }
    }
    out
}

/// The workspace's member crates (`[workspace] members`), as folders.
fn members() -> Vec<String> {
    let manifest: toml::Value = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap().parse().unwrap();
    let list = manifest.get("workspace").and_then(|w| w.get("members")).and_then(|m| m.as_array());
    list.into_iter().flatten().map(|m| m.as_str().unwrap().trim_end_matches('/').to_string()).collect()
}

/// What the build stage must copy (or stub) before its builds.
struct Needed {
    /// Before the full build.
    all: Vec<String>,
    /// Before a dependency-only build: the manifests and the lock file.
    manifests: Vec<String>,
    /// Before a dependency-only build, copied or made in its RUN: the declared targets and the
    /// members' libraries.
    stubs: Vec<String>,
}

fn needed() -> Needed {
    let members = members();
    let mut manifests = vec!["Cargo.toml".to_string(), "Cargo.lock".into()];
    manifests.extend(members.iter().map(|m| format!("{m}/Cargo.toml")));
    let mut stubs = declared_targets();
    stubs.extend(members.iter().map(|m| format!("{m}/src/lib.rs")));
    let mut all = vec!["Cargo.toml".to_string(), "Cargo.lock".into(), "src".into()];
    // Cargo runs a build script it finds beside Cargo.toml without being told.
    if repo().join("build.rs").is_file() {
        all.push("build.rs".into());
    }
    all.extend(members);
    all.extend(compiled_in());
    all.extend(declared_targets());
    Needed { all, manifests, stubs }
}

#[test]
fn the_scan_finds_what_we_compile_in() {
    let inc = compiled_in();
    for want in ["assets/manifest.sha256", "templates", "static"] {
        assert!(inc.contains(want), "{want} not found among {inc:?}");
    }
    assert!(!inc.contains("propersim.toml"), "a unit test's include counted: {inc:?}");
    assert!(declared_targets().contains(&"benches/sweep.rs".to_string()), "{:?}", declared_targets());
    assert!(members().contains(&"crates/core".to_string()), "{:?}", members());
    let need = needed();
    for p in need.all.iter().chain(&need.manifests).chain(&need.stubs) {
        assert!(repo().join(p).exists(), "{p} is needed but does not exist");
    }
}

#[test]
fn the_build_stage_copies_everything_it_compiles_before_building() {
    let need = needed();
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let problems = missing(&text, &need);
    assert!(problems.is_empty(), "Dockerfile:\n{}", problems.join("\n"));

    // The check catches the Dockerfile that copied only Cargo.toml, Cargo.lock, src and assets.
    let old = "FROM rust:1.95-bookworm AS build\nWORKDIR /src\nCOPY Cargo.toml Cargo.lock ./\nCOPY src ./src\n\
               COPY assets ./assets\nRUN cargo build --release --locked\nFROM debian:bookworm-slim\n";
    let problems = missing(old, &need).join("\n");
    for p in [
        "templates is not copied",
        "static is not copied",
        "benches/sweep.rs is not copied",
        "crates/llm is not copied",
    ] {
        assert!(problems.contains(p), "{p}: {problems}");
    }
    // And a dependency layer that builds before the declared bench, or a member's manifest and
    // library, exist.
    let stubless =
        "FROM rust AS build\nCOPY Cargo.toml Cargo.lock ./\nRUN mkdir src && touch src/lib.rs && cargo build\n\
                    COPY . .\nRUN cargo build --release\n";
    let problems = missing(stubless, &need).join("\n");
    for p in ["benches/sweep.rs (a target", "crates/train/Cargo.toml is not copied", "crates/core/src/lib.rs (a target"]
    {
        assert!(problems.contains(p), "{p}: {problems}");
    }
}

#[test]
fn the_image_runs_unprivileged_with_a_healthcheck_and_phaser() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let st = stages(&text);
    let last = st.last().unwrap();
    let user = last.iter().rfind(|i| keyword(i) == "USER").expect("a USER in the final stage");
    let who = user.split_whitespace().nth(1).unwrap();
    assert!(!matches!(who, "root" | "0") && !who.starts_with("0:"), "{user}");
    assert!(last.iter().any(|i| keyword(i) == "HEALTHCHECK" && i.contains("CMD")), "no HEALTHCHECK");
    assert!(
        last.iter().any(|i| keyword(i) == "COPY" && i.contains("phaser.min.js") && i.contains("node_modules/phaser")),
        "the pages' Phaser is not in the image"
    );
    // npm ci needs the lock file beside package.json.
    assert!(st.iter().flatten().any(|i| copy_sources(i).contains(&"package-lock.json".to_string())));
}
