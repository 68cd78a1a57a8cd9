//! `assets::fetch` end to end: a `.tar.gz` laid out like GitHub's archive of ProPerSim, built here
//! from `../shared/frontend_server`, served by a real axum server on 127.0.0.1 and downloaded
//! over real HTTP. Tests that need the shared data print `PROPERSIM-SKIP:` when it is missing.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use propersim::assets::{self, FetchOptions, Manifest, Target, PROPERSIM_COMMIT};

/// The original's `frontend_server` folder: `$PROPERSIM_SHARED` when set (the shared folder or
/// the frontend_server folder itself; nothing else is tried then), else `shared/frontend_server`
/// beside the repository or one level further up.
fn shared_frontend(test: &str) -> Option<PathBuf> {
    let found = match std::env::var_os("PROPERSIM_SHARED").map(PathBuf::from) {
        Some(p) => [p.join("frontend_server"), p].into_iter().find(|c| c.join("static_dirs").is_dir()),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .skip(1)
            .take(2)
            .map(|a| a.join("shared/frontend_server"))
            .find(|p| p.join("static_dirs").is_dir()),
    };
    if found.is_none() {
        println!("PROPERSIM-SKIP: {test}: ../shared/frontend_server (or $PROPERSIM_SHARED) is missing");
    }
    found
}

fn top() -> String {
    format!("ProPerSim-{PROPERSIM_COMMIT}")
}

/// Every regular file under `front/static_dirs` and `front/storage`, as sorted relative paths.
fn shared_files(front: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![front.join("static_dirs"), front.join("storage")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(front).unwrap().to_str().unwrap().to_string());
            }
        }
    }
    out.sort();
    out
}

/// How to spoil an archive.
#[derive(Clone, Copy)]
enum Spoil<'a> {
    None,
    /// Flip one byte of this file.
    Tamper(&'a str),
    /// Leave this file out.
    Omit(&'a str),
}

fn header(kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h
}

/// A `.tar.gz` shaped like `codeload.github.com/.../tar.gz/<commit>`: a pax global header,
/// directory entries, everything under `ProPerSim-<commit>/`, plus members we must ignore.
fn build_archive(front: &Path, spoil: Spoil) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    let comment = format!("52 comment={PROPERSIM_COMMIT}\n");
    let mut h = header(tar::EntryType::XGlobalHeader, comment.len() as u64);
    b.append_data(&mut h, "pax_global_header", comment.as_bytes()).unwrap();
    let mut h = header(tar::EntryType::Directory, 0);
    b.append_data(&mut h, format!("{}/", top()), &[][..]).unwrap();
    let readme = b"not needed\n";
    let mut h = header(tar::EntryType::Regular, readme.len() as u64);
    b.append_data(&mut h, format!("{}/README.md", top()), &readme[..]).unwrap();
    let extra =
        format!("{}/environment/frontend_server/static_dirs/assets/the_ville/visuals/not_in_manifest.txt", top());
    let mut h = header(tar::EntryType::Regular, readme.len() as u64);
    b.append_data(&mut h, &extra, &readme[..]).unwrap();
    // A symlink and a path escaping the folder: not in the manifest, so never written.
    let mut h = header(tar::EntryType::Symlink, 0);
    b.append_link(&mut h, format!("{}/environment/frontend_server/static_dirs/assets/evil", top()), "/etc").unwrap();
    let mut h = header(tar::EntryType::Regular, readme.len() as u64);
    let evil = b"x/../../escape.txt";
    h.as_old_mut().name[..evil.len()].copy_from_slice(evil);
    h.set_cksum();
    b.append(&h, &readme[..]).unwrap();

    for rel in shared_files(front) {
        if let Spoil::Omit(p) = spoil {
            if p == rel {
                continue;
            }
        }
        let mut data = fs::read(front.join(&rel)).unwrap();
        if let Spoil::Tamper(p) = spoil {
            if p == rel {
                let last = data.len() - 1;
                data[last] ^= 0x20;
            }
        }
        let mut h = header(tar::EntryType::Regular, data.len() as u64);
        b.append_data(&mut h, format!("{}/environment/frontend_server/{rel}", top()), &data[..]).unwrap();
    }
    let gz = b.into_inner().unwrap();
    gz.finish().unwrap()
}

fn good_archive(front: &Path) -> Vec<u8> {
    static GOOD: OnceLock<Vec<u8>> = OnceLock::new();
    GOOD.get_or_init(|| build_archive(front, Spoil::None)).clone()
}

/// A loopback HTTP server serving one archive at `/ProPerSim.tar.gz`; the body can be swapped.
struct Server {
    rt: tokio::runtime::Runtime,
    base: String,
    body: Arc<Mutex<Vec<u8>>>,
}

impl Server {
    fn start(body: Vec<u8>) -> Server {
        use axum::{extract::State, routing::get, Router};
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let body = Arc::new(Mutex::new(body));
        let app = Router::new()
            .route(
                "/ProPerSim.tar.gz",
                get(|State(b): State<Arc<Mutex<Vec<u8>>>>| async move { b.lock().unwrap().clone() }),
            )
            .with_state(body.clone());
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server { rt, base: format!("http://{addr}"), body }
    }

    fn url(&self) -> String {
        format!("{}/ProPerSim.tar.gz", self.base)
    }

    fn set(&self, body: Vec<u8>) {
        *self.body.lock().unwrap() = body;
    }
}

fn options(url: String, root: &Path) -> FetchOptions {
    FetchOptions {
        url,
        assets_dir: root.join("environment"),
        storage_dir: root.join("storage"),
        manifest: Manifest::builtin().unwrap(),
        progress: false,
    }
}

/// Names directly in `dir` (sorted).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|r| r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Every manifest file is installed where it belongs and equals the shared original.
fn assert_installed(front: &Path, opts: &FetchOptions) {
    for e in opts.manifest.entries() {
        let (target, rel) = e.destination();
        let dir = if target == Target::Assets { &opts.assets_dir } else { &opts.storage_dir };
        let got = fs::read(dir.join(&rel)).unwrap_or_else(|err| panic!("{}: {err}", dir.join(&rel).display()));
        assert!(got == fs::read(front.join(&e.path)).unwrap(), "{} differs from the original", e.path);
    }
}

#[test]
fn builtin_manifest_matches_the_shared_files() {
    let Some(front) = shared_frontend("builtin_manifest_matches_the_shared_files") else { return };
    let from_disk = Manifest::from_dir(&front).unwrap();
    assert_eq!(from_disk, Manifest::builtin().unwrap(), "assets/manifest.sha256 is out of date with ../shared");
    assert_eq!(from_disk.len(), shared_files(&front).len());
}

#[test]
fn fetch_over_http_installs_identical_files_and_replaces_cleanly() {
    let Some(front) = shared_frontend("fetch_over_http_installs_identical_files_and_replaces_cleanly") else { return };
    let server = Server::start(good_archive(&front));
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(server.url(), tmp.path());
    // Targets as in a fresh checkout: environment/.gitkeep, and a user's sim in storage/.
    fs::create_dir_all(&opts.assets_dir).unwrap();
    fs::write(opts.assets_dir.join(".gitkeep"), "").unwrap();
    let user_sim = opts.storage_dir.join("my_sim/reverie/meta.json");
    fs::create_dir_all(user_sim.parent().unwrap()).unwrap();
    fs::write(&user_sim, "{}").unwrap();
    assert!(!assets::assets_present(&opts.assets_dir, &opts.storage_dir));

    let report = assets::fetch(&opts).unwrap();
    assert_eq!(report.files, opts.manifest.len());
    assert!(report.to_string().starts_with(&format!("installed {} verified files", report.files)), "{report}");
    assert_eq!(report.ignored_members, 6, "pax header, top dir, README, extra file, symlink, escaping path");
    assert!(report.archive_bytes > 1_000_000 && report.file_bytes > report.archive_bytes / 2);
    assert_installed(&front, &opts);
    assert!(assets::assets_present(&opts.assets_dir, &opts.storage_dir));
    assert_eq!(names(&opts.assets_dir), vec![".gitkeep", "characters", "img", "speech_bubble", "the_ville"]);
    assert_eq!(names(&opts.storage_dir).len(), 33);
    assert_eq!(fs::read_to_string(&user_sim).unwrap(), "{}");
    assert!(
        !opts.assets_dir.join("evil").exists()
            && !opts.assets_dir.join("the_ville/visuals/not_in_manifest.txt").exists()
    );
    assert!(!tmp.path().join("escape.txt").exists() && !tmp.path().parent().unwrap().join("escape.txt").exists());
    assert_eq!(names(tmp.path()), vec!["environment", "storage"], "no temporary folders left");
    // The installed map is usable.
    let maze = propersim::world::Maze::load(&opts.assets_dir).unwrap();
    assert_eq!((maze.width, maze.height), (14, 22));

    // Fetching again replaces the installed folders with verified copies.
    fs::write(opts.assets_dir.join("the_ville/matrix/maze/collision_maze.csv"), "damaged").unwrap();
    assets::fetch(&opts).unwrap();
    assert_installed(&front, &opts);
    assert_eq!(names(tmp.path()), vec!["environment", "storage"]);

    // A tampered archive over a good install leaves the install exactly as it was.
    let victim = "storage/base_the_ville_persona_7/personas/John Lin/bootstrap_memory/scratch.json";
    server.set(build_archive(&front, Spoil::Tamper(victim)));
    let err = format!("{:#}", assets::fetch(&opts).unwrap_err());
    assert!(err.contains("checksum mismatch") && err.contains(victim), "{err}");
    assert_installed(&front, &opts);
    assert_eq!(fs::read_to_string(&user_sim).unwrap(), "{}");
    assert_eq!(names(tmp.path()), vec!["environment", "storage"], "no temporary folders left");
}

#[test]
fn tampered_archive_is_refused_and_leaves_nothing() {
    let Some(front) = shared_frontend("tampered_archive_is_refused_and_leaves_nothing") else { return };
    let victim = "static_dirs/assets/the_ville/matrix/maze/collision_maze.csv";
    let server = Server::start(build_archive(&front, Spoil::Tamper(victim)));
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(server.url(), tmp.path());
    let err = format!("{:#}", assets::fetch(&opts).unwrap_err());
    assert!(
        err.contains("checksum mismatch") && err.contains(victim) && err.contains("nothing was installed"),
        "{err}"
    );
    assert!(names(tmp.path()).is_empty(), "targets absent, no temporary folders: {:?}", names(tmp.path()));
}

#[test]
fn archive_missing_a_file_is_refused_and_leaves_nothing() {
    let Some(front) = shared_frontend("archive_missing_a_file_is_refused_and_leaves_nothing") else { return };
    let victim = "storage/base_the_ville_persona_32/personas/Eddy Lin/bootstrap_memory/evaluation_memory/nodes.json";
    let server = Server::start(build_archive(&front, Spoil::Omit(victim)));
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(server.url(), tmp.path());
    let err = format!("{:#}", assets::fetch(&opts).unwrap_err());
    assert!(err.contains("lacks 1 required file") && err.contains(victim), "{err}");
    assert!(names(tmp.path()).is_empty(), "{:?}", names(tmp.path()));
}

#[test]
fn http_and_format_errors_are_clear() {
    let server = Server::start(b"this is not a gzip stream".to_vec());
    let tmp = tempfile::tempdir().unwrap();

    // Called from inside a tokio runtime (as an async CLI would): must not panic.
    let url = format!("{}/nope.tar.gz", server.base);
    let err = server.rt.block_on(async { format!("{:#}", assets::fetch(&options(url, tmp.path())).unwrap_err()) });
    assert!(err.contains("404"), "{err}");
    assert!(names(tmp.path()).is_empty(), "{:?}", names(tmp.path()));

    let err = format!("{:#}", assets::fetch(&options(server.url(), tmp.path())).unwrap_err());
    assert!(err.contains(".tar.gz"), "{err}");
    assert!(names(tmp.path()).is_empty(), "{:?}", names(tmp.path()));

    // A truncated gzip stream of a real tar.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&[0u8; 4096]).unwrap();
    let mut bytes = gz.finish().unwrap();
    bytes.truncate(bytes.len() / 2);
    server.set(bytes);
    assert!(assets::fetch(&options(server.url(), tmp.path())).is_err());
    assert!(names(tmp.path()).is_empty(), "{:?}", names(tmp.path()));

    let err = format!("{:#}", assets::fetch(&options("ftp://example.org/x.tar.gz".into(), tmp.path())).unwrap_err());
    assert!(err.contains("unsupported"), "{err}");
    assert!(names(tmp.path()).is_empty(), "{:?}", names(tmp.path()));
}
