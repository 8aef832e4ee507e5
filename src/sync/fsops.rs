//! File-system operations shared by both ends: path validation (never leave the root,
//! never follow a symlink), atomic durable writes, Dovecot's uidlist dotlock, attributes.

use super::entry::Entry;
use super::scan::TMP_PREFIX;
use crate::error::{Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Check a relative path received from the other end: `/`-separated, no empty, `.` or `..`
/// component, no NUL, not absolute, bounded length.
pub fn check_rel(path: &str) -> Result<()> {
    if path.is_empty() || path.len() > 4096 || path.starts_with('/') || path.contains('\0') {
        return Err(Error::bad_input(format!(
            "refusing path {:?}: not a relative path inside the domain",
            crate::names::printable(path)
        )));
    }
    for c in path.split('/') {
        if c.is_empty() || c == "." || c == ".." || c.len() > 255 {
            return Err(Error::bad_input(format!(
                "refusing path {:?}: bad component",
                crate::names::printable(path)
            )));
        }
    }
    Ok(())
}

/// Verify that every directory component of `rel` under `base` is a real directory (not a
/// symlink). `known` caches directories already checked in this session.
pub fn check_parents(
    base: &Path,
    rel: &str,
    known: &mut std::collections::HashSet<String>,
) -> Result<()> {
    let parent = super::entry::parent(rel);
    if parent.is_empty() || known.contains(parent) {
        return Ok(());
    }
    let mut acc = String::new();
    for c in parent.split('/') {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(c);
        if known.contains(&acc) {
            continue;
        }
        let p = base.join(&acc);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_dir() => {
                known.insert(acc.clone());
            }
            Ok(_) => {
                return Err(Error::bad_input(format!(
                    "refusing {}: a component is not a directory (symlinks are not followed)",
                    p.display()
                )))
            }
            Err(e) => return Err(Error::io(format!("cannot stat {}", p.display()), e)),
        }
    }
    Ok(())
}

fn time_of(e: &Entry) -> SystemTime {
    if e.mtime >= 0 {
        UNIX_EPOCH + Duration::new(e.mtime as u64, e.mtime_ns)
    } else {
        UNIX_EPOCH - Duration::from_secs(e.mtime.unsigned_abs())
    }
}

/// Apply mode, owner (when permitted) and mtime to an open file.
pub fn set_attrs(file: &File, e: &Entry) -> Result<()> {
    // Owner first: chown may clear set-id bits.
    let _ = std::os::unix::fs::fchown(file, Some(e.uid), Some(e.gid));
    file.set_permissions(fs::Permissions::from_mode(e.mode & 0o7777))
        .map_err(|err| Error::io("setting mode", err))?;
    let t = time_of(e);
    file.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .map_err(|err| Error::io("setting mtime", err))
}

/// A unique temporary name.
pub fn tmp_name() -> String {
    format!(
        "{TMP_PREFIX}{}.{:016x}",
        std::process::id(),
        rand::random::<u64>()
    )
}

/// Create a new file for writing (never follows or replaces anything).
pub fn create_new(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))
}

/// Open an existing regular file for reading without following a symlink.
pub fn open_read(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Write `data` to `path` atomically (temp file in the same directory, rename); with
/// `durable`, fsync the file and the directory.
pub fn write_file_atomic(path: &Path, data: &[u8], durable: bool) -> Result<()> {
    write_file_atomic_with(path, durable, |w| w.write_all(data))
}

/// [`write_file_atomic`] with the content written by `fill` through a buffered writer
/// (large records are streamed, never held whole in memory).
pub fn write_file_atomic_with(
    path: &Path,
    durable: bool,
    fill: impl FnOnce(&mut std::io::BufWriter<&mut File>) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let tmp = dir.join(tmp_name());
    let result = (|| {
        let mut f = create_new(&tmp)?;
        {
            let mut w = std::io::BufWriter::with_capacity(64 << 10, &mut f);
            fill(&mut w)
                .and_then(|()| w.flush())
                .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        }
        if durable {
            f.sync_all()
                .map_err(|e| Error::io(format!("fsync {}", tmp.display()), e))?;
        }
        fs::rename(&tmp, path)
            .map_err(|e| Error::io(format!("cannot rename to {}", path.display()), e))?;
        if durable {
            sync_dir(dir)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsync a directory (makes renames and creations in it durable).
pub fn sync_dir(dir: &Path) -> Result<()> {
    match File::open(dir) {
        Ok(f) => f
            .sync_all()
            .map_err(|e| Error::io(format!("fsync {}", dir.display()), e)),
        Err(e) => Err(Error::io(format!("cannot open {}", dir.display()), e)),
    }
}

/// Dovecot's `dovecot-uidlist.lock` dotlock in a Maildir directory, held while alive.
pub struct UidlistLock {
    path: PathBuf,
}

/// Give up waiting for a held uidlist lock after this long.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);
/// Dovecot treats a uidlist dotlock older than this as stale.
pub const LOCK_STALE: Duration = Duration::from_secs(120);

impl UidlistLock {
    pub fn acquire(maildir: &Path) -> Result<UidlistLock> {
        let path = maildir.join("dovecot-uidlist.lock");
        let start = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
            {
                Ok(mut f) => {
                    // Dovecot's dotlock content: "pid:host" (a dead pid on this host = stale).
                    let _ =
                        f.write_all(format!("{}:{}", std::process::id(), this_host()).as_bytes());
                    return Ok(UidlistLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if holder_is_dead(&path) {
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    // A lock left by a dead process: Dovecot's rule, older than the stale
                    // timeout and not touched.
                    if let Ok(m) = fs::symlink_metadata(&path) {
                        if let Ok(age) = m
                            .modified()
                            .and_then(|t| t.elapsed().map_err(|_| std::io::ErrorKind::Other.into()))
                        {
                            if age > LOCK_STALE {
                                let _ = fs::remove_file(&path);
                                continue;
                            }
                        }
                    }
                    if start.elapsed() > LOCK_WAIT {
                        return Err(Error::temporary(format!(
                            "{} is held by another process; try again later",
                            path.display()
                        )));
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(Error::io(format!("cannot create {}", path.display()), e));
                }
            }
        }
    }
}

fn this_host() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default()
    })
}

/// A dotlock whose content names a process on this host that no longer exists is stale
/// (Dovecot's rule too): e.g. left by a `kill -9`.
fn holder_is_dead(path: &Path) -> bool {
    let Ok((data, _)) = read_bounded(path, 256) else {
        return false;
    };
    let text = String::from_utf8_lossy(&data);
    let (pid, host) = match text.trim().split_once(':') {
        Some((p, h)) => (p, Some(h)),
        None => (text.trim(), None),
    };
    if host.is_some_and(|h| h != this_host()) {
        return false;
    }
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence.
    let r = unsafe { libc::kill(pid, 0) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

impl Drop for UidlistLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Read a small file whole (bounded), without following symlinks.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<(Vec<u8>, fs::Metadata)> {
    use std::io::Read;
    let f = open_read(path)?;
    let meta = f.metadata()?;
    if meta.len() > max {
        return Err(std::io::Error::other(format!(
            "{} is larger than {max} bytes",
            path.display()
        )));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    f.take(max).read_to_end(&mut data)?;
    Ok((data, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_checked() {
        for ok in ["a", "a/b", "bob/Maildir/cur/1.x:2,S"] {
            assert!(check_rel(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/a", "a/../b", "..", "a//b", "a/./b", "a/", "a\0b"] {
            assert!(check_rel(bad).is_err(), "{bad:?}");
        }
    }
}
