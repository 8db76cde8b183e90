//! Writing files so that a reader never sees half of one.
//!
//! Every writer of this crate encodes the whole file in memory first, then calls
//! [`write_atomic`]: the bytes go to a fresh temporary file in the target's folder
//! (same file system, so the final rename is atomic), are flushed to disk, and the
//! temporary file is renamed over the target. On any failure the temporary file is
//! removed and the target is left as it was.

use crate::error::{IoError, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically (temporary file + rename); see the module docs.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// Like [`write_atomic`], but the content is produced by `fill` writing into the
/// temporary file. If `fill` fails, nothing is left behind.
pub(crate) fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| IoError::invalid(path, "the output path has no file name"))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // A unique, hidden name next to the target: pid + process-wide counter, and
    // `create_new` so that an existing file is never clobbered.
    let (tmp, mut file) = loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut name = std::ffi::OsString::from(".");
        name.push(file_name);
        name.push(format!(".{}.{n}.tmp", std::process::id()));
        let tmp = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(IoError::io(path, "create a temporary file next to", e)),
        }
    };
    let result = fill(&mut file)
        .and_then(|()| file.sync_all())
        .map_err(|e| IoError::io(path, "write", e))
        .and_then(|()| {
            drop(file);
            fs::rename(&tmp, path).map_err(|e| IoError::io(path, "rename the temporary file to", e))
        });
    if result.is_err() {
        // Best effort: the error that matters is the one above.
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("calseg-io-atomic-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_and_replaces() {
        let d = scratch("ok");
        let p = d.join("a.bin");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        assert_eq!(entries(&d), vec!["a.bin".to_string()]);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn failing_fill_leaves_nothing() {
        let d = scratch("fail");
        let p = d.join("out.nii.gz");
        let err = write_atomic_with(&p, |f| {
            f.write_all(b"half of a file")?;
            Err(std::io::Error::other("disk full (simulated)"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("out.nii.gz"), "{err}");
        assert!(err.to_string().contains("disk full"), "{err}");
        assert!(entries(&d).is_empty(), "left behind: {:?}", entries(&d));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn failing_fill_keeps_previous_target() {
        let d = scratch("keep");
        let p = d.join("x.npy");
        write_atomic(&p, b"old").unwrap();
        assert!(write_atomic_with(&p, |_| Err(std::io::Error::other("boom"))).is_err());
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(entries(&d), vec!["x.npy".to_string()]);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn failing_rename_leaves_no_temp() {
        let d = scratch("rename");
        // The target is a non-empty directory: rename over it fails.
        let p = d.join("target.nii");
        fs::create_dir_all(p.join("inside")).unwrap();
        let err = write_atomic(&p, b"data").unwrap_err();
        assert!(err.to_string().contains("target.nii"), "{err}");
        assert_eq!(entries(&d), vec!["target.nii".to_string()]);
        assert!(p.is_dir());
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn missing_folder_is_a_typed_error() {
        let d = scratch("nofolder");
        let p = d.join("no/such/folder/out.png");
        let err = write_atomic(&p, b"x").unwrap_err();
        assert!(matches!(err, IoError::Io { .. }));
        assert!(err.to_string().contains("out.png"));
        fs::remove_dir_all(d).unwrap();
    }
}
