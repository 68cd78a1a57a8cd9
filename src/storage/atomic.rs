//! Crash-safe file writes: write a temporary file beside the target and rename it over the
//! target. A reader (or a killed run) sees either the old file or the new one, never half of one.
//! There is no fsync per file: it would cost milliseconds a step and only matters on power loss,
//! where a run still resumes from its checkpoint.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Write `bytes` to `path` atomically, creating parent folders.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = with_parent(dir, || tempfile::Builder::new().prefix(".propersim-").suffix(".tmp").tempfile_in(dir))
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
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
