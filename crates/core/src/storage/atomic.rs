//! Crash-safe file writes: write a temporary file beside the target and rename it over the
//! target. A reader (or a killed run) sees either the old file or the new one, never half of one.
//!
//! A killed process loses nothing the kernel already has, so plain writes survive `kill -9`. A
//! power loss is different: data not yet on disk is gone, in any order. The engine therefore
//! flushes, once per step, what its next checkpoint vouches for ([`sync_all_at_once`]) before
//! writing it; everything else is rewritten or re-derived on resume.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Prefix and suffix of the temporary files [`write_atomic`] renames into place; a killed
/// process leaves them behind, and [`sweep_temp_files`] removes them.
const TEMP_PREFIX: &str = ".propersim-";
const TEMP_SUFFIX: &str = ".tmp";

/// The mode of files we write through a temporary file: what `fs::write` gives (0666 less the
/// umask, so 0644 under the usual 022), not the temporary file's private 0600.
pub fn file_permissions() -> fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    fs::Permissions::from_mode(0o666)
}

/// The mode of folders we build under a temporary name and rename into place: what
/// `fs::create_dir` gives (0777 less the umask), not the temporary folder's private 0700.
pub fn dir_permissions() -> fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    fs::Permissions::from_mode(0o777)
}

/// Write `bytes` to `path` atomically, creating parent folders. The file gets the mode a plain
/// write would give it ([`file_permissions`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = with_parent(dir, || {
        tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .suffix(TEMP_SUFFIX)
            .permissions(file_permissions())
            .tempfile_in(dir)
    })
    .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

/// Flush files' data and folders' entries to disk, all at once: the flushes run concurrently,
/// so the filesystem commits them together (one journal commit on ext4 instead of one per file,
/// about 4 ms instead of 25 for a step's files). They run on a small pool of flusher threads
/// kept for the whole process (see [`FlushPool`]): a thread per flush per step cost more CPU
/// than the rest of a scripted step. On a filesystem that keeps everything in memory (tmpfs),
/// where nothing survives a power loss and a flush does nothing, nothing is flushed. Missing
/// paths are skipped.
pub fn sync_all_at_once(files: &[PathBuf], dirs: &[PathBuf]) -> Result<()> {
    let jobs: Vec<(PathBuf, bool)> = files
        .iter()
        .map(|p| (p.clone(), false))
        .chain(dirs.iter().map(|p| (p.clone(), true)))
        .filter(|(p, is_dir)| !in_memory_fs(p, *is_dir))
        .collect();
    match jobs.len() {
        0 => Ok(()),
        1 => sync_path(&jobs[0].0, jobs[0].1),
        _ => FlushPool::global().run(jobs),
    }
}

/// Whether `dir` is on a filesystem held in memory only (tmpfs, ramfs), where
/// [`sync_all_at_once`] flushes nothing.
pub fn in_memory_dir(dir: &Path) -> bool {
    in_memory_fs(dir, true)
}

/// Whether `path`'s folder is on a filesystem held in memory only (tmpfs, ramfs), where a flush
/// is a no-op. Decided once per folder and remembered.
fn in_memory_fs(path: &Path, is_dir: bool) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock};
        static KNOWN: OnceLock<Mutex<HashMap<PathBuf, bool>>> = OnceLock::new();
        // A file's folder, or the folder itself: a sim has a handful, asked once per step each.
        let dir = if is_dir { path } else { path.parent().unwrap_or(path) };
        let known = KNOWN.get_or_init(Default::default);
        if let Some(&m) = known.lock().unwrap_or_else(|e| e.into_inner()).get(dir) {
            return m;
        }
        let m = statfs_magic(dir).is_some_and(|f| f == TMPFS_MAGIC || f == RAMFS_MAGIC);
        let mut known = known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() > 4096 {
            known.clear();
        }
        known.insert(dir.to_path_buf(), m);
        m
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (path, is_dir);
        false
    }
}

#[cfg(target_os = "linux")]
const TMPFS_MAGIC: i64 = 0x0102_1994;
#[cfg(target_os = "linux")]
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// The filesystem type (`f_type` of statfs(2)) holding `dir`, or `None` if it cannot be told.
#[cfg(target_os = "linux")]
fn statfs_magic(dir: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` is a buffer of the type statfs fills.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statfs succeeded, so it filled `st`.
    // `f_type`'s integer type differs between platforms.
    #[allow(clippy::unnecessary_cast)]
    Some(unsafe { st.assume_init() }.f_type as i64)
}

/// Threads that flush files for [`sync_all_at_once`], started as needed and kept for the
/// process, so a step's flushes run concurrently without starting a thread for each.
struct FlushPool {
    state: std::sync::Mutex<PoolState>,
    work: std::sync::Condvar,
}

#[derive(Default)]
struct PoolState {
    queue: std::collections::VecDeque<(PathBuf, bool, std::sync::Arc<Batch>)>,
    threads: usize,
    idle: usize,
}

/// One call's flushes: how many are left, and the first error.
#[derive(Default)]
struct Batch {
    left: std::sync::Mutex<(usize, Option<anyhow::Error>)>,
    done: std::sync::Condvar,
}

/// Flusher threads at most; more flushes than this wait their turn.
const MAX_FLUSHERS: usize = 32;

impl FlushPool {
    fn global() -> &'static FlushPool {
        static POOL: std::sync::OnceLock<FlushPool> = std::sync::OnceLock::new();
        POOL.get_or_init(|| FlushPool { state: Default::default(), work: Default::default() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Flush every `(path, is_dir)` concurrently and wait for all of them.
    fn run(&'static self, jobs: Vec<(PathBuf, bool)>) -> Result<()> {
        let batch = std::sync::Arc::new(Batch::default());
        batch.left.lock().unwrap_or_else(|e| e.into_inner()).0 = jobs.len();
        {
            let mut st = self.lock();
            st.queue.extend(jobs.into_iter().map(|(p, d)| (p, d, batch.clone())));
            // A thread per queued flush: the idle ones, and new ones for the rest.
            let want = (st.threads + st.queue.len().saturating_sub(st.idle)).min(MAX_FLUSHERS);
            while st.threads < want {
                match std::thread::Builder::new().name("propersim-flush".into()).spawn(move || self.work_loop()) {
                    Ok(_) => st.threads += 1,
                    Err(_) if st.threads > 0 => break,
                    Err(e) => {
                        // No thread at all: flush here, one after the other.
                        let jobs: Vec<_> = std::mem::take(&mut st.queue).into_iter().collect();
                        drop(st);
                        tracing::debug!(error = %e, "no flusher thread; flushing on the caller");
                        for (p, d, b) in jobs {
                            let r = sync_path(&p, d);
                            b.finish(r);
                        }
                        return batch.wait();
                    }
                }
            }
        }
        self.work.notify_all();
        batch.wait()
    }

    fn work_loop(&self) {
        let mut st = self.lock();
        loop {
            if let Some((p, d, b)) = st.queue.pop_front() {
                drop(st);
                b.finish(sync_path(&p, d));
                st = self.lock();
            } else {
                st.idle += 1;
                st = self.work.wait(st).unwrap_or_else(|e| e.into_inner());
                st.idle -= 1;
            }
        }
    }
}

impl Batch {
    fn finish(&self, r: Result<()>) {
        let mut left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        left.0 -= 1;
        if let Err(e) = r {
            left.1.get_or_insert(e);
        }
        if left.0 == 0 {
            self.done.notify_all();
        }
    }

    fn wait(&self) -> Result<()> {
        let mut left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        while left.0 > 0 {
            left = self.done.wait(left).unwrap_or_else(|e| e.into_inner());
        }
        left.1.take().map_or(Ok(()), Err)
    }
}

/// Flush a file's data to disk (after appends whose lines a checkpoint is about to count).
/// A missing file is skipped.
pub fn sync_file(path: &Path) -> Result<()> {
    sync_path(path, false)
}

/// Flush a folder's entries to disk (after a file was created or renamed in it). A missing
/// folder is skipped.
pub fn sync_dir(dir: &Path) -> Result<()> {
    sync_path(dir, true)
}

fn sync_path(path: &Path, all: bool) -> Result<()> {
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    if all { f.sync_all() } else { f.sync_data() }.with_context(|| format!("syncing {}", path.display()))
}

/// Remove the temporary files of [`write_atomic`] under `dir`, recursively: each is a write
/// whose process was killed before the rename. Only call this while nothing else writes there.
/// Returns how many were removed.
pub fn sweep_temp_files(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for e in entries {
        let e = e?;
        let ty = e.file_type()?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if ty.is_dir() {
            removed += sweep_temp_files(&e.path())?;
        } else if ty.is_file() && name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX) {
            match fs::remove_file(e.path()) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(err).with_context(|| format!("removing {}", e.path().display()))
                }
                _ => removed += 1,
            }
        }
    }
    Ok(removed)
}

/// Run `open`; if the folder is missing, create it and try once more. (Cheaper than creating
/// the folder before every write: a run writes several files a step into folders that exist.)
fn with_parent<T>(dir: &Path, open: impl Fn() -> std::io::Result<T>) -> Result<T> {
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            Ok(open()?)
        }
        r => Ok(r?),
    }
}

/// Serialize `value` in Python's `json.dumps(indent=2)` format and write it atomically.
pub fn write_json_py(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    write_atomic(path, super::pyjson::to_string_indent2(value)?.as_bytes())
}

/// Append one line to a JSONL file. Each append is a single `write` of a whole line on a file
/// opened in append mode, so a crash leaves at most a torn final line, which readers skip.
pub fn append_jsonl(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    append_bytes(path, &jsonl_bytes([value])?)
}

/// Append whole lines with one `write` (see [`append_jsonl`]).
pub fn append_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    open_append(path)?.write_all(bytes).with_context(|| format!("appending to {}", path.display()))
}

/// Open `path` for appending, creating it and its folder if missing. For a writer that keeps
/// the file open across many appends (each still one `write` of whole lines).
pub fn open_append(path: &Path) -> Result<fs::File> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    with_parent(dir, || fs::OpenOptions::new().create(true).append(true).open(path))
        .with_context(|| format!("opening {}", path.display()))
}

/// Items as JSONL: one compact JSON value per line, each ending in a newline.
pub fn jsonl_bytes<'a, T: serde::Serialize + 'a>(items: impl IntoIterator<Item = &'a T>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for it in items {
        serde_json::to_writer(&mut out, it)?;
        out.push(b'\n');
    }
    Ok(out)
}

/// How many complete (newline-terminated) lines `path` holds; 0 if it does not exist.
pub fn count_lines(path: &Path) -> Result<usize> {
    match fs::read(path) {
        Ok(b) => Ok(b.iter().filter(|&&c| c == b'\n').count()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Cut `path` after its first `n` complete lines (dropping later lines and a torn tail), in
/// place. The caller has checked that it has at least `n` (see [`count_lines`]).
pub fn truncate_lines(path: &Path, n: usize) -> Result<()> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && n == 0 => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let end = if n == 0 {
        0
    } else {
        match bytes.iter().enumerate().filter(|(_, &c)| c == b'\n').nth(n - 1) {
            Some((i, _)) => i + 1,
            None => anyhow::bail!("{} has fewer than {n} complete lines", path.display()),
        }
    };
    if end < bytes.len() {
        fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(end as u64))
            .with_context(|| format!("truncating {}", path.display()))?;
    }
    Ok(())
}

/// Read a JSONL file, skipping a torn (unparseable) last line left by a crash.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        match serde_json::from_str(l) {
            Ok(v) => out.push(v),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
            Err(e) => return Err(e).with_context(|| format!("{} line {}", path.display(), i + 1)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "two");
        let names: Vec<_> = fs::read_dir(p.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn atomic_write_gives_a_plain_writes_mode() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let plain = d.path().join("plain");
        fs::write(&plain, b"x").unwrap();
        let atomic = d.path().join("atomic");
        write_atomic(&atomic, b"x").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // Under any umask but 077, the temporary file's own 0600 would differ.
        assert_eq!(mode(&atomic), mode(&plain));
    }

    #[test]
    fn lines_are_counted_and_cut_after_the_last_complete_one() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.jsonl");
        assert_eq!(count_lines(&p).unwrap(), 0);
        truncate_lines(&p, 0).unwrap();
        fs::write(&p, "a\nb\nc\ntorn").unwrap();
        assert_eq!(count_lines(&p).unwrap(), 3);
        truncate_lines(&p, 3).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "a\nb\nc\n", "the torn tail goes");
        truncate_lines(&p, 1).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "a\n");
        assert!(truncate_lines(&p, 2).is_err(), "a file too short is not made up");
        truncate_lines(&p, 0).unwrap();
        assert_eq!(fs::read(&p).unwrap().len(), 0);
    }

    #[test]
    fn syncs_and_stale_temporaries() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/c.json");
        write_atomic(&p, b"{}").unwrap();
        sync_all_at_once(&[p.clone(), d.path().join("missing")], &[d.path().join("sub"), d.path().to_path_buf()])
            .unwrap();
        fs::write(d.path().join("sub/.propersim-abc.tmp"), b"").unwrap();
        fs::write(d.path().join(".propersim-x.tmp"), b"half").unwrap();
        fs::write(d.path().join("keep.tmp"), b"").unwrap();
        assert_eq!(sweep_temp_files(d.path()).unwrap(), 2);
        assert!(d.path().join("keep.tmp").exists() && p.exists());
        assert!(!d.path().join("sub/.propersim-abc.tmp").exists());
    }

    #[test]
    fn concurrent_batches_share_the_flushers() {
        let d = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = (0..12)
            .map(|i| {
                let p = d.path().join(format!("f{i}"));
                fs::write(&p, b"x").unwrap();
                p
            })
            .collect();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20 {
                        sync_all_at_once(&files, &[d.path().to_path_buf()]).unwrap();
                    }
                });
            }
        });
        // A path that cannot be opened (not a missing one) is an error, and the pool goes on.
        let bad = d.path().join("f0/below-a-file");
        assert!(sync_all_at_once(&[bad, files[1].clone()], &[]).is_err() || in_memory_dir(d.path()));
        sync_all_at_once(&files, &[]).unwrap();
    }

    #[test]
    fn jsonl_skips_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.jsonl");
        append_jsonl(&p, &serde_json::json!({"a": 1})).unwrap();
        append_jsonl(&p, &serde_json::json!({"a": 2})).unwrap();
        let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"a\": 3").unwrap();
        let v: Vec<serde_json::Value> = read_jsonl(&p).unwrap();
        assert_eq!(v.len(), 2);
    }
}
