//! Getting the original's data onto a user's machine: the map assets (matrix files, Tiled map,
//! tilesets, character sprites, speech bubbles) and the 32 persona seeds, downloaded from the
//! public ProPerSim repository at a pinned commit.
//!
//! Nothing is trusted from the archive but the bytes of the files we asked for: every file we take
//! is listed with its SHA-256 in the committed `assets/manifest.sha256`; anything else in the
//! archive is ignored. Files are unpacked into hidden temporary folders beside the targets and
//! only renamed into place once every file has been found and verified, so a bad download, a
//! tampered archive or a crash leaves the targets as they were (apart from whole, verified
//! folders already renamed in, if the process dies during the final renames).

use std::collections::HashMap;
use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

/// The ProPerSim commit the manifest was made from.
pub const PROPERSIM_COMMIT: &str = "013b9eefd618b075875a2ce0ce6089138c30c82f";

/// The manifest shipped with the program (generated from that commit's files).
const BUILTIN_MANIFEST: &str = include_str!("../assets/manifest.sha256");

/// Archive members live under `<top>/environment/frontend_server/`; manifest paths are relative
/// to that folder.
const ARCHIVE_ROOT: &str = "environment/frontend_server/";

/// Refuse downloads beyond this size (the real archive is about 35 MB).
const MAX_DOWNLOAD: u64 = 1 << 30;

/// GitHub's tarball of the pinned commit.
pub fn default_url() -> String {
    format!("https://codeload.github.com/jiho283/ProPerSim/tar.gz/{PROPERSIM_COMMIT}")
}

/// Which folder a manifest file goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// `--assets` (default `environment/`), laid out like the original `static_dirs/assets`.
    Assets,
    /// `--storage` (default `storage/`), where the `base_the_ville_persona_*` seeds go.
    Storage,
}

/// One verified file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Path relative to `environment/frontend_server/`, e.g. `static_dirs/assets/the_ville/...`.
    pub path: String,
    pub sha256: [u8; 32],
}

impl ManifestEntry {
    /// Where the file goes: its target folder and the path inside it.
    pub fn destination(&self) -> (Target, String) {
        destination(&self.path).unwrap_or((Target::Assets, self.path.clone()))
    }
}

/// Map a manifest path to its target: `static_dirs/assets/X` → assets `X`, `static_dirs/img/X`
/// → assets `img/X` (the landing page avatar; the original serves it as `/static/img/`),
/// `storage/X` → storage `X`.
fn destination(path: &str) -> Option<(Target, String)> {
    if let Some(rest) = path.strip_prefix("static_dirs/assets/") {
        Some((Target::Assets, rest.to_string()))
    } else if let Some(rest) = path.strip_prefix("static_dirs/img/") {
        Some((Target::Assets, format!("img/{rest}")))
    } else {
        path.strip_prefix("storage/").map(|rest| (Target::Storage, rest.to_string()))
    }
}

/// A relative path made only of normal components (no `..`, no absolute or empty parts).
fn is_clean_relative(path: &str) -> bool {
    !path.is_empty() && !path.contains('\\') && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// The list of files to take and their checksums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// The manifest committed with the program.
    pub fn builtin() -> Result<Manifest> {
        Manifest::parse(BUILTIN_MANIFEST).context("the built-in assets/manifest.sha256")
    }

    /// Parse `sha256sum`-style lines: `<64 hex>  <path>`; `#` comments and blank lines are
    /// skipped. Every path must be clean and map to a target.
    pub fn parse(text: &str) -> Result<Manifest> {
        let mut entries = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (hash, path) =
                line.split_once("  ").ok_or_else(|| anyhow!("manifest line {}: expected `<sha256>  <path>`", i + 1))?;
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(hash, &mut sha256)
                .map_err(|e| anyhow!("manifest line {}: bad sha256 {hash:?}: {e}", i + 1))?;
            if !is_clean_relative(path) || destination(path).is_none() {
                bail!("manifest line {}: path {path:?} must be a clean path under static_dirs/assets/, static_dirs/img/ or storage/", i + 1);
            }
            if !seen.insert(path.to_string()) {
                bail!("manifest line {}: {path:?} is listed twice", i + 1);
            }
            entries.push(ManifestEntry { path: path.to_string(), sha256 });
        }
        if entries.is_empty() {
            bail!("the manifest lists no files");
        }
        Ok(Manifest { entries })
    }

    /// Hash every file under `root/static_dirs` and `root/storage` (root = a
    /// `frontend_server` folder). This is how the committed manifest is made.
    pub fn from_dir(root: &Path) -> Result<Manifest> {
        let mut entries = Vec::new();
        for top in ["static_dirs", "storage"] {
            let mut stack = vec![root.join(top)];
            while let Some(dir) = stack.pop() {
                for e in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
                    let e = e.with_context(|| format!("listing {}", dir.display()))?;
                    let p = e.path();
                    if e.file_type()?.is_dir() {
                        stack.push(p);
                        continue;
                    }
                    let rel = p
                        .strip_prefix(root)?
                        .to_str()
                        .with_context(|| format!("{} is not valid UTF-8", p.display()))?
                        .replace('\\', "/");
                    if destination(&rel).is_none() {
                        continue;
                    }
                    let bytes = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                    entries.push(ManifestEntry { path: rel, sha256: Sha256::digest(&bytes).into() });
                }
            }
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Manifest { entries })
    }

    /// The manifest text (sorted, `sha256sum` compatible), after `#` header lines.
    pub fn to_text(&self, header: &[&str]) -> String {
        let mut s = String::new();
        for h in header {
            s.push_str("# ");
            s.push_str(h);
            s.push('\n');
        }
        for e in &self.entries {
            s.push_str(&hex::encode(e.sha256));
            s.push_str("  ");
            s.push_str(&e.path);
            s.push('\n');
        }
        s
    }

    pub fn entries(&self) -> &[ManifestEntry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Files of one target that are not present as regular files, as manifest paths.
    pub fn missing_in(&self, target: Target, dir: &Path) -> Vec<&str> {
        self.entries
            .iter()
            .filter_map(|e| {
                let (t, rel) = e.destination();
                (t == target && !dir.join(&rel).is_file()).then_some(e.path.as_str())
            })
            .collect()
    }
}

/// What `fetch` needs.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// `http(s)://` URL of a `.tar.gz` laid out like GitHub's archive, a `file://` URL, or a
    /// local path to such an archive.
    pub url: String,
    pub assets_dir: PathBuf,
    pub storage_dir: PathBuf,
    /// The verified checksums; every file listed must be in the archive and match.
    pub manifest: Manifest,
    /// Show a progress bar while downloading (only when stderr is a terminal).
    pub progress: bool,
}

impl FetchOptions {
    /// The pinned GitHub URL and the built-in manifest, with a progress bar.
    pub fn new(assets_dir: impl Into<PathBuf>, storage_dir: impl Into<PathBuf>) -> Result<FetchOptions> {
        Ok(FetchOptions {
            url: default_url(),
            assets_dir: assets_dir.into(),
            storage_dir: storage_dir.into(),
            manifest: Manifest::builtin()?,
            progress: true,
        })
    }
}

/// What `fetch` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchReport {
    pub url: String,
    /// Size of the archive as downloaded (compressed).
    pub archive_bytes: u64,
    /// Verified files installed (all of the manifest).
    pub files: usize,
    /// Their total size.
    pub file_bytes: u64,
    /// Archive members that are not in the manifest and were left out.
    pub ignored_members: usize,
    pub assets_dir: PathBuf,
    pub storage_dir: PathBuf,
}

impl std::fmt::Display for FetchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "installed {} verified files ({:.1} MB) from {} ({:.1} MB downloaded) into {} and {}",
            self.files,
            self.file_bytes as f64 / 1e6,
            self.url,
            self.archive_bytes as f64 / 1e6,
            self.assets_dir.display(),
            self.storage_dir.display()
        )
    }
}

/// Are the map assets and the 32 seeds all there? (`run` fetches on first use when not.)
/// The landing-page avatar (`img/`) is optional, so an assets folder pointed straight at an
/// original checkout's `static_dirs/assets` counts as present.
pub fn assets_present(assets_dir: &Path, storage_dir: &Path) -> bool {
    map_present(assets_dir) && seeds_present(storage_dir)
}

/// Every map asset of the built-in manifest (except the optional `img/`) is in `assets_dir`.
pub fn map_present(assets_dir: &Path) -> bool {
    Manifest::builtin()
        .is_ok_and(|m| m.missing_in(Target::Assets, assets_dir).iter().all(|p| p.starts_with("static_dirs/img/")))
}

/// Every file of the 32 persona seeds is in `seeds_dir`.
pub fn seeds_present(seeds_dir: &Path) -> bool {
    Manifest::builtin().is_ok_and(|m| m.missing_in(Target::Storage, seeds_dir).is_empty())
}

/// Download the archive, verify every manifest file, and install them into `assets_dir` and
/// `storage_dir`. Top-level folders we install (`the_ville`, `characters`, `speech_bubble`,
/// `img`, `base_the_ville_persona_N`) replace existing ones of the same name; other contents of
/// the targets (user sims, `.gitkeep`) are untouched. Blocking; safe to call from inside or
/// outside a tokio runtime (the download runs on its own thread).
pub fn fetch(opts: &FetchOptions) -> Result<FetchReport> {
    let assets_stage = Stage::beside(&opts.assets_dir)?;
    let storage_stage = Stage::beside(&opts.storage_dir)?;
    let archive = assets_stage.dir.path().join("archive.tar.gz");
    let archive_bytes = obtain_archive(&opts.url, &archive, opts.progress)?;

    let unpacked = unpack_verified(&archive, &opts.manifest, &assets_stage, &storage_stage)
        .with_context(|| format!("unpacking {} (nothing was installed)", opts.url))?;
    fs::remove_file(&archive).with_context(|| format!("removing {}", archive.display()))?;

    assets_stage.install(&opts.assets_dir)?;
    storage_stage.install(&opts.storage_dir)?;
    Ok(FetchReport {
        url: opts.url.clone(),
        archive_bytes,
        files: opts.manifest.len(),
        file_bytes: unpacked.bytes,
        ignored_members: unpacked.ignored,
        assets_dir: opts.assets_dir.clone(),
        storage_dir: opts.storage_dir.clone(),
    })
}

/// A hidden temporary folder beside a target (same file system, so renames are atomic), with
/// `new/` for the verified files and `old/` for what they replace. Removed when dropped.
struct Stage {
    dir: tempfile::TempDir,
}

impl Stage {
    fn beside(target: &Path) -> Result<Stage> {
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
        remove_stale_stages(&parent);
        let dir = tempfile::Builder::new()
            .prefix(STAGE_PREFIX)
            .tempdir_in(&parent)
            .with_context(|| format!("creating a temporary folder in {}", parent.display()))?;
        fs::create_dir(dir.path().join("new"))?;
        fs::create_dir(dir.path().join("old"))?;
        Ok(Stage { dir })
    }

    fn new_dir(&self) -> PathBuf {
        self.dir.path().join("new")
    }

    /// Move every top-level entry of `new/` into `target`, replacing same-named entries (moved
    /// to `old/`, deleted with the stage). A target that does not exist yet is created by one
    /// rename of `new/` itself.
    fn install(&self, target: &Path) -> Result<()> {
        let new = self.new_dir();
        if !target.exists() {
            return fs::rename(&new, target)
                .with_context(|| format!("moving verified files into {}", target.display()));
        }
        let old = self.dir.path().join("old");
        let mut names: Vec<_> = fs::read_dir(&new)?.map(|e| e.map(|e| e.file_name())).collect::<io::Result<_>>()?;
        names.sort();
        for name in names {
            let dest = target.join(&name);
            let replaced = dest.symlink_metadata().is_ok();
            if replaced {
                fs::rename(&dest, old.join(&name))
                    .with_context(|| format!("moving the old {} aside", dest.display()))?;
            }
            if let Err(e) = fs::rename(new.join(&name), &dest) {
                if replaced {
                    // Put the old one back so the target stays whole.
                    let _ = fs::rename(old.join(&name), &dest);
                }
                return Err(e).with_context(|| format!("moving verified files into {}", dest.display()));
            }
        }
        Ok(())
    }
}

const STAGE_PREFIX: &str = ".propersim-fetch-";

/// A fetch killed outright (SIGKILL, power loss) cannot remove its stage folder. Remove such
/// leftovers once they are an hour old, so a concurrent fetch's folder is never touched.
fn remove_stale_stages(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let stale = e.file_name().to_string_lossy().starts_with(STAGE_PREFIX)
            && e.file_type().is_ok_and(|t| t.is_dir())
            && e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(3600));
        if stale {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Download `url` to `dest` (or copy a local archive). Returns the archive size.
fn obtain_archive(url: &str, dest: &Path, progress: bool) -> Result<u64> {
    if let Some(local) =
        url.strip_prefix("file://").map(PathBuf::from).or_else(|| (!url.contains("://")).then(|| PathBuf::from(url)))
    {
        return fs::copy(&local, dest).with_context(|| format!("reading the archive {}", local.display()));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("unsupported assets URL {url:?}: use http(s)://, file:// or a local path");
    }
    // reqwest is async-only in this build; give it a private runtime on its own thread so that
    // callers inside a tokio runtime can use this blocking function too.
    let (url_owned, dest_owned) = (url.to_string(), dest.to_path_buf());
    std::thread::spawn(move || -> Result<u64> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the download runtime")?;
        rt.block_on(download(&url_owned, &dest_owned, progress))
    })
    .join()
    .map_err(|_| anyhow!("the download thread panicked"))?
}

async fn download(url: &str, dest: &Path, progress: bool) -> Result<u64> {
    use futures::StreamExt;
    let client = reqwest::Client::builder()
        .user_agent(concat!("propersim/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(120))
        .build()
        .context("building the HTTP client")?;
    let resp = client.get(url).send().await.with_context(|| format!("downloading {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        bail!("downloading {url}: the server answered HTTP {status}");
    }
    let total = resp.content_length();
    if total.is_some_and(|t| t > MAX_DOWNLOAD) {
        bail!(
            "downloading {url}: the archive is {} bytes, more than the {MAX_DOWNLOAD}-byte limit",
            total.unwrap_or(0)
        );
    }
    let bar = (progress && io::stderr().is_terminal()).then(|| progress_bar(total));
    let mut file = io::BufWriter::new(fs::File::create(dest).with_context(|| format!("creating {}", dest.display()))?);
    let mut got: u64 = 0;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("downloading {url} (after {got} bytes)"))?;
        got += chunk.len() as u64;
        if got > MAX_DOWNLOAD {
            bail!("downloading {url}: more than the {MAX_DOWNLOAD}-byte limit");
        }
        file.write_all(&chunk).with_context(|| format!("writing {}", dest.display()))?;
        if let Some(b) = &bar {
            b.set_position(got);
        }
    }
    file.flush().with_context(|| format!("writing {}", dest.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some(t) = total {
        if got != t {
            bail!("downloading {url}: got {got} of {t} bytes");
        }
    }
    Ok(got)
}

fn progress_bar(total: Option<u64>) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressStyle};
    match total {
        Some(t) => {
            let b = ProgressBar::new(t);
            if let Ok(style) = ProgressStyle::with_template(
                "ProPerSim assets {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                b.set_style(style);
            }
            b
        }
        None => {
            let b = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("ProPerSim assets {spinner} {bytes} {bytes_per_sec}") {
                b.set_style(style);
            }
            b.enable_steady_tick(Duration::from_millis(120));
            b
        }
    }
}

struct Unpacked {
    bytes: u64,
    ignored: usize,
}

/// A writer that hashes what goes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Read the archive, write each manifest file into its stage and check its hash; fail on a
/// mismatch, a duplicate, a member of the wrong type, or a file missing from the archive.
fn unpack_verified(archive: &Path, manifest: &Manifest, assets: &Stage, storage: &Stage) -> Result<Unpacked> {
    let file = fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(file)));
    let wanted: HashMap<&str, &ManifestEntry> = manifest.entries().iter().map(|e| (e.path.as_str(), e)).collect();
    let mut found: HashMap<&str, bool> = HashMap::new();
    let mut out = Unpacked { bytes: 0, ignored: 0 };

    for member in tar.entries().context("reading the archive (is it a .tar.gz?)")? {
        let mut member = member.context("reading the archive (truncated or not a .tar.gz?)")?;
        let raw = member.path_bytes().into_owned();
        let Ok(name) = std::str::from_utf8(&raw) else {
            out.ignored += 1;
            continue;
        };
        // Strip the single top folder (`ProPerSim-<commit>/`) GitHub puts in front.
        let rel = name.split_once('/').map(|(_, r)| r).unwrap_or("").strip_prefix(ARCHIVE_ROOT);
        let Some(entry) = rel.and_then(|r| wanted.get(r)) else {
            out.ignored += 1;
            continue;
        };
        let path = entry.path.as_str();
        let kind = member.header().entry_type();
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            bail!("{path}: the archive holds a {kind:?} entry where a regular file was expected");
        }
        if found.insert(path, true).is_some() {
            bail!("{path}: appears twice in the archive");
        }
        let (target, dest_rel) = entry.destination();
        let stage = if target == Target::Assets { assets } else { storage };
        let dest = stage.new_dir().join(&dest_rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let f = fs::File::create(&dest).with_context(|| format!("creating {}", dest.display()))?;
        let mut w = HashingWriter { inner: io::BufWriter::new(f), hasher: Sha256::new(), written: 0 };
        io::copy(&mut (&mut member).take(MAX_DOWNLOAD), &mut w).with_context(|| format!("unpacking {path}"))?;
        w.flush().with_context(|| format!("writing {}", dest.display()))?;
        let got: [u8; 32] = w.hasher.finalize().into();
        if got != entry.sha256 {
            bail!(
                "checksum mismatch for {path}: expected sha256 {}, got {} (the archive is not the pinned ProPerSim commit {PROPERSIM_COMMIT}, or it was corrupted)",
                hex::encode(entry.sha256),
                hex::encode(got)
            );
        }
        out.bytes += w.written;
    }

    let missing: Vec<&str> =
        manifest.entries().iter().map(|e| e.path.as_str()).filter(|p| !found.contains_key(p)).collect();
    if !missing.is_empty() {
        let shown = missing.iter().take(10).copied().collect::<Vec<_>>().join(", ");
        let more = if missing.len() > 10 { format!(" and {} more", missing.len() - 10) } else { String::new() };
        bail!("the archive lacks {} required file(s): {shown}{more}", missing.len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_manifest_parses_and_maps_everything() {
        let m = Manifest::builtin().unwrap();
        assert_eq!(m.entries().iter().filter(|e| e.destination().0 == Target::Storage).count(), 32 * 18);
        assert!(m
            .entries()
            .iter()
            .any(|e| e.destination() == (Target::Assets, "the_ville/matrix/maze/collision_maze.csv".into())));
        assert!(m.entries().iter().any(|e| e.destination() == (Target::Assets, "img/atlas.png".into())));
        // Round trip through the text form.
        assert_eq!(Manifest::parse(&m.to_text(&["header"])).unwrap(), m);
    }

    #[test]
    fn manifest_refuses_unsafe_or_malformed_lines() {
        let h = "0".repeat(64);
        assert!(Manifest::parse(&format!("{h}  storage/../../etc/passwd\n")).is_err());
        assert!(Manifest::parse(&format!("{h}  /storage/x\n")).is_err());
        assert!(Manifest::parse(&format!("{h}  other/x\n")).is_err());
        assert!(Manifest::parse("zz  storage/x\n").is_err());
        assert!(Manifest::parse(&format!("{h}  storage/x\n{h}  storage/x\n")).is_err());
        assert!(Manifest::parse("# only a comment\n").is_err());
        assert_eq!(Manifest::parse(&format!("# c\n\n{h}  storage/a b/c.json\n")).unwrap().len(), 1);
    }

    /// Options whose archive is a file that does not exist, with everything else under `d`.
    fn missing_archive(d: &Path) -> FetchOptions {
        FetchOptions {
            url: d.join("nope.tar.gz").display().to_string(),
            assets_dir: d.join("env"),
            storage_dir: d.join("storage"),
            manifest: Manifest::builtin().unwrap(),
            progress: false,
        }
    }

    #[test]
    fn missing_archive_path_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let opts = missing_archive(d.path());
        let err = format!("{:#}", fetch(&opts).unwrap_err());
        assert!(err.contains("nope.tar.gz"), "{err}");
        let left: Vec<_> = fs::read_dir(d.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn stale_stage_folders_of_killed_fetches_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let old = d.path().join(".propersim-fetch-old");
        let fresh = d.path().join(".propersim-fetch-fresh");
        fs::create_dir_all(old.join("new/the_ville")).unwrap();
        fs::create_dir(&fresh).unwrap();
        let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
        fs::File::open(&old).unwrap().set_modified(two_hours_ago).unwrap();
        let opts = missing_archive(d.path());
        assert!(fetch(&opts).is_err());
        assert!(!old.exists(), "an hour-old stage is a leftover");
        assert!(fresh.exists(), "a recent stage may belong to a running fetch");
    }
}
