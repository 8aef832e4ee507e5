//! File-system operations shared by both ends: path validation (never leave the root,
//! never follow a symlink), atomic durable writes, Dovecot's uidlist dotlock, attributes.

use super::dirat::DirAt;
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
    // Owner first: chown may clear set-id bits. Not tried when it cannot succeed (only
    // root gives a file another owner; a receiver running as the mail user gets its own).
    if may_chown_to(e.uid) {
        let _ = std::os::unix::fs::fchown(file, Some(e.uid), Some(e.gid));
    }
    file.set_permissions(fs::Permissions::from_mode(e.mode & 0o7777))
        .map_err(|err| Error::io("setting mode", err))?;
    let t = time_of(e);
    file.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .map_err(|err| Error::io("setting mtime", err))
}

/// Whether `chown` to `uid` can succeed for this process: as root, or to its own uid.
fn may_chown_to(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    euid == 0 || euid == uid
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
    create_new_io(path).map_err(|e| Error::io(format!("cannot create {}", path.display()), e))
}

/// [`create_new`] with the system's error.
fn create_new_io(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Open an existing regular file for reading without following a symlink.
pub fn open_read(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Freeing a file (its last name replaced or removed) costs the thread that drops the last
/// reference to it: the truncation, and on a file system mounted with `discard` (ext4
/// without a journal) a synchronous discard request per freed extent (~0.1 ms on a VM).
/// Where a replaced or deleted file's name goes on a critical path (the receiver's control
/// files and expunged messages, the state files), it is held first by an `O_PATH`
/// descriptor ([`hold`]) and handed after to [`release_later`], whose thread closes it:
/// the freeing happens there. Linux only (elsewhere [`hold`] holds nothing: freed inline).
fn hold(path: &Path) -> Option<File> {
    #[cfg(target_os = "linux")]
    {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
            .open(path)
            .ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        None
    }
}

/// Files held by [`hold`] waiting for the closing thread; when it is this far behind, the
/// caller closes its own (bounds the descriptors held).
const RELEASE_QUEUE: usize = 256;

/// Close `held` (see [`hold`]) in a background thread, started at the first call.
pub(super) fn release_later(held: Option<File>) {
    static CLOSER: std::sync::OnceLock<Option<std::sync::mpsc::SyncSender<File>>> =
        std::sync::OnceLock::new();
    let Some(file) = held else {
        return;
    };
    let closer = CLOSER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<File>(RELEASE_QUEUE);
        std::thread::Builder::new()
            .name("release".into())
            .spawn(move || rx.into_iter().for_each(drop))
            .ok()
            .map(|_| tx)
    });
    // Full or gone: closed here (the error holds the file).
    if let Some(tx) = closer {
        let _ = tx.try_send(file);
    }
}

/// `rename(from, to)`, the file it replaces (if any) freed by the closing thread.
pub fn rename_freeing_later(from: &Path, to: &Path) -> std::io::Result<()> {
    let replaced = hold(to);
    fs::rename(from, to)?;
    release_later(replaced);
    Ok(())
}

/// Replaced files are kept as spares (see [`open_spare`]) where names can be exchanged.
pub const SPARES: bool = cfg!(target_os = "linux");

/// Name, in a Maildir folder's `tmp/`, of the spare kept for the control file `name`.
pub fn spare_name(name: &str) -> String {
    format!(".mailsync-spare.{name}")
}

/// The spare at `path` (in a Maildir's `tmp/`), opened to be written from its start; a new
/// one when there is none. A control file's replacement is written into its spare, and the
/// two names are exchanged ([`exchange`]): the file replaced becomes the next spare.
///
/// So replacing a control file neither allocates nor frees an inode. Freeing costs a
/// discard on this host's ext4, and, worse, ext4 without a journal skips the inodes freed
/// in the last minutes when it allocates one (`recently_deleted`, one buffer lookup each):
/// with thousands of control files replaced per run, every file created later scanned past
/// them (BENCHMARKS.md, round 14). A spare linked elsewhere too, or not a regular file, is
/// removed and a new one made; `None` when that fails (the caller makes a temporary file).
pub fn open_spare(at: &DirAt, rel: &str) -> Option<File> {
    use std::os::unix::fs::MetadataExt;
    match at.open_write(rel) {
        Ok(f) => match f.metadata() {
            Ok(m) if m.is_file() && m.nlink() == 1 => return Some(f),
            _ => {
                drop(f);
                at.unlink(rel).ok()?;
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(_) => at.unlink(rel).ok()?,
    }
    at.create_new(rel).ok()
}

/// Put `from` in place at `to`, and the file `to` named (if any) at `from`, in one atomic
/// step (`renameat2(RENAME_EXCHANGE)`). When `to` does not exist, `from` is renamed there.
pub fn exchange(at: &DirAt, from: &str, to: &str) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let swap = || at.rename2(from, to, libc::RENAME_EXCHANGE);
        match swap() {
            Ok(()) => {
                // A directory made at `to` since the scan: put back where it was (a rename
                // would have refused it).
                if at.is_dir(from).unwrap_or(false) {
                    let _ = swap();
                    return Err(std::io::Error::from_raw_os_error(libc::EISDIR));
                }
                Ok(())
            }
            Err(e) => match e.raw_os_error() {
                // `to` does not exist (or `from` does not: the rename says so).
                Some(libc::ENOENT) => at.rename(from, to),
                // A file system without exchange: a rename, the file replaced freed.
                Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {
                    at.rename_freeing_later(from, to)
                }
                _ => Err(e),
            },
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        at.rename_freeing_later(from, to)
    }
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
        rename_freeing_later(&tmp, path)
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

/// How written files are made durable before they are renamed into place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// `fsync` each file, and each directory a rename landed in (in parallel).
    PerFile,
    /// Linux: one `syncfs` of the mail filesystem per batch of files, and one for the
    /// renames, instead of an `fsync` per file and per directory. The same guarantee at a
    /// fraction of the cost (on ext4 each `fsync` writes and waits for its inode's block);
    /// it also writes out what other processes left dirty on that filesystem. Files on
    /// another filesystem (a Maildir under a mount point) are fsynced one by one.
    Filesystem,
}

impl SyncMode {
    /// [`SyncMode::Filesystem`] where `syncfs` exists (Linux), else [`SyncMode::PerFile`].
    pub fn best() -> SyncMode {
        if cfg!(target_os = "linux") {
            SyncMode::Filesystem
        } else {
            SyncMode::PerFile
        }
    }

    /// `file` or `filesystem` (the latter only where it is supported).
    pub fn parse(s: &str) -> Result<SyncMode> {
        match s {
            "file" => Ok(SyncMode::PerFile),
            "filesystem" if cfg!(target_os = "linux") => Ok(SyncMode::Filesystem),
            "filesystem" => Err(Error::config(
                "fsync = \"filesystem\" needs syncfs(2), which only Linux has; use \"file\"",
            )),
            _ => Err(Error::config(format!(
                "fsync must be \"file\" or \"filesystem\", not {s:?}"
            ))),
        }
    }
}

/// Make the whole filesystem holding `dir` durable (`syncfs`; Linux only). Since Linux
/// 5.8 it reports a write error of any file on it since `dir` was opened.
#[cfg(target_os = "linux")]
pub fn sync_filesystem(dir: &File) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: syncfs on a descriptor we own; no memory is involved.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Make the whole filesystem holding `dir` durable: not available here.
#[cfg(not(target_os = "linux"))]
pub fn sync_filesystem(_dir: &File) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "syncfs is not available on this system",
    ))
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

/// Where a dotlock is: an absolute path, or a path inside a held directory.
enum Loc<'a> {
    Abs(PathBuf),
    At(&'a DirAt, String),
}

impl Loc<'_> {
    fn describe(&self) -> String {
        match self {
            Loc::Abs(p) => p.display().to_string(),
            Loc::At(at, rel) => at.join(rel).display().to_string(),
        }
    }

    fn create_new(&self) -> std::io::Result<File> {
        match self {
            Loc::Abs(p) => create_new_io(p),
            Loc::At(at, rel) => at.create_new(rel),
        }
    }

    fn remove(&self) {
        let _ = match self {
            Loc::Abs(p) => fs::remove_file(p),
            Loc::At(at, rel) => at.unlink(rel),
        };
    }

    fn open_read(&self) -> std::io::Result<File> {
        match self {
            Loc::Abs(p) => open_read(p),
            Loc::At(at, rel) => at.open_read(rel),
        }
    }

    /// How long ago the file was last modified.
    fn age(&self) -> Option<Duration> {
        let modified = match self {
            Loc::Abs(p) => fs::symlink_metadata(p).and_then(|m| m.modified()).ok()?,
            Loc::At(at, rel) => {
                let st = at.lstat(rel).ok()?;
                #[allow(clippy::unnecessary_cast)]
                let secs = u64::try_from(st.st_mtime as i64).ok()?;
                UNIX_EPOCH + Duration::from_secs(secs)
            }
        };
        modified.elapsed().ok()
    }
}

/// Dovecot's `dovecot-uidlist.lock` dotlock in a Maildir directory, held while alive.
pub struct UidlistLock<'a> {
    loc: Loc<'a>,
}

/// Give up waiting for a held uidlist lock after this long.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);
/// Dovecot treats a uidlist dotlock older than this as stale.
pub const LOCK_STALE: Duration = Duration::from_secs(120);

/// Prefix of a [`LockSource`] file (inside [`TMP_PREFIX`]: never listed nor replicated).
pub const LOCK_SOURCE_PREFIX: &str = ".mailsync-tmp.lock.";

/// A file holding this process's dotlock content (`pid:host`), hard-linked as
/// `dovecot-uidlist.lock` to take a lock instead of creating a new file each time: `link()`
/// fails with EEXIST exactly as `open(O_CREAT|O_EXCL)` does (it is how Dovecot itself takes
/// dotlocks when `dotlock_use_excl` is off), but allocates no inode, and the unlink that
/// releases the lock frees none. On this host's ext4 an inode allocation scans past every
/// recently freed inode of its group, so a lock created and freed per control file made
/// every later file creation slower (BENCHMARKS.md). One per domain directory and process,
/// removed when dropped; a leftover (kill -9) carries a dead pid and is removed by
/// [`remove_stale_lock_sources`].
pub struct LockSource {
    dir: PathBuf,
    name: String,
    file: File,
    /// When the file's mtime was last set (a lock's age is its mtime: kept fresh).
    touched: std::sync::Mutex<Instant>,
}

impl LockSource {
    /// Create one in `dir` (a domain directory: the same file system as its Maildirs).
    pub fn create(dir: &Path) -> Result<LockSource> {
        let name = format!(
            "{LOCK_SOURCE_PREFIX}{}.{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let path = dir.join(&name);
        let mut file = create_new(&path)?;
        if let Err(e) = file.write_all(lock_content().as_bytes()) {
            let _ = fs::remove_file(&path);
            return Err(Error::io(format!("writing {}", path.display()), e));
        }
        Ok(LockSource {
            dir: dir.to_path_buf(),
            name,
            file,
            touched: std::sync::Mutex::new(Instant::now()),
        })
    }

    /// Link it as `lock`. Keeps its mtime recent first (a dotlock older than
    /// [`LOCK_STALE`] may be taken over).
    fn link_as(&self, lock: &Loc) -> std::io::Result<()> {
        if let Ok(mut t) = self.touched.lock() {
            if t.elapsed() > Duration::from_secs(20) {
                let now = SystemTime::now();
                self.file
                    .set_times(fs::FileTimes::new().set_modified(now).set_accessed(now))?;
                *t = Instant::now();
            }
        }
        match lock {
            Loc::At(at, rel) if at.path() == self.dir => at.hard_link(&self.name, rel),
            Loc::At(at, rel) => fs::hard_link(self.dir.join(&self.name), at.join(rel)),
            Loc::Abs(p) => fs::hard_link(self.dir.join(&self.name), p),
        }
    }
}

impl Drop for LockSource {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.dir.join(&self.name));
    }
}

/// Remove lock sources left in `dir` by processes that no longer exist (`names`: the
/// file names of the leftovers found there).
pub fn remove_stale_lock_sources<'a>(dir: &Path, names: impl Iterator<Item = &'a str>) {
    for name in names {
        let Some(rest) = name.strip_prefix(LOCK_SOURCE_PREFIX) else {
            continue;
        };
        let pid = rest.split('.').next().and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(pid_is_dead) {
            let _ = fs::remove_file(dir.join(name));
        }
    }
}

fn lock_content() -> String {
    // Dovecot's dotlock content: "pid:host" (a dead pid on this host = stale).
    format!("{}:{}", std::process::id(), this_host())
}

impl UidlistLock<'static> {
    pub fn acquire(maildir: &Path) -> Result<UidlistLock<'static>> {
        Self::take(Loc::Abs(maildir.join("dovecot-uidlist.lock")), None)
    }
}

impl<'a> UidlistLock<'a> {
    /// The lock of the Maildir `maildir` (a path inside `at`; "" is `at` itself), taken
    /// by linking `source` (no inode allocated) when given; by creating the lock file
    /// otherwise, or when the link is not possible (another file system, no hard links).
    pub fn acquire_at(
        at: &'a DirAt,
        maildir: &str,
        source: Option<&LockSource>,
    ) -> Result<UidlistLock<'a>> {
        let rel = if maildir.is_empty() {
            "dovecot-uidlist.lock".to_string()
        } else {
            format!("{maildir}/dovecot-uidlist.lock")
        };
        Self::take(Loc::At(at, rel), source)
    }

    fn take(loc: Loc<'a>, source: Option<&LockSource>) -> Result<UidlistLock<'a>> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(5);
        let mut source = source;
        loop {
            let r = match source {
                Some(s) => match s.link_as(&loc) {
                    Ok(()) => return Ok(UidlistLock { loc }),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e),
                    Err(_) => {
                        source = None;
                        continue;
                    }
                },
                None => loc.create_new(),
            };
            match r {
                Ok(mut f) => {
                    let _ = f.write_all(lock_content().as_bytes());
                    return Ok(UidlistLock { loc });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if holder_is_dead(&loc) {
                        loc.remove();
                        continue;
                    }
                    // A lock left by a dead process: Dovecot's rule, older than the stale
                    // timeout and not touched.
                    if loc.age().is_some_and(|age| age > LOCK_STALE) {
                        loc.remove();
                        continue;
                    }
                    if start.elapsed() > LOCK_WAIT {
                        return Err(Error::temporary(format!(
                            "{} is held by another process; try again later",
                            loc.describe()
                        )));
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(Error::io(format!("cannot create {}", loc.describe()), e));
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
fn holder_is_dead(lock: &Loc) -> bool {
    let Ok((data, _)) = lock.open_read().and_then(|f| read_bounded_from(f, 256)) else {
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
    pid_is_dead(pid)
}

/// No process `pid` exists on this host.
fn pid_is_dead(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence.
    let r = unsafe { libc::kill(pid, 0) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

impl Drop for UidlistLock<'_> {
    fn drop(&mut self) {
        self.loc.remove();
    }
}

/// Read a small file whole (bounded), without following symlinks.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<(Vec<u8>, fs::Metadata)> {
    read_bounded_from(open_read(path)?, max).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => {
            std::io::Error::other(format!("{} is larger than {max} bytes", path.display()))
        }
        _ => e,
    })
}

/// [`read_bounded`] of a file open for reading; a file larger than `max` is an error of
/// kind [`std::io::ErrorKind::InvalidData`].
pub fn read_bounded_from(f: File, max: u64) -> std::io::Result<(Vec<u8>, fs::Metadata)> {
    use std::io::Read;
    let meta = f.metadata()?;
    if meta.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    f.take(max).read_to_end(&mut data)?;
    Ok((data, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_source_is_linked_as_the_dotlock() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let dom = tmp.path();
        let md = dom.join("u/Maildir");
        fs::create_dir_all(&md).unwrap();
        let src = LockSource::create(dom).unwrap();
        let lock_path = md.join("dovecot-uidlist.lock");
        let src_path = dom.join(&src.name);
        let at = DirAt::open(dom).unwrap();
        {
            let _l = UidlistLock::acquire_at(&at, "u/Maildir", Some(&src)).unwrap();
            let m = fs::metadata(&lock_path).unwrap();
            // The same inode as the source: nothing allocated.
            assert_eq!(m.ino(), fs::metadata(&src_path).unwrap().ino());
            assert_eq!(m.nlink(), 2);
            let content = fs::read_to_string(&lock_path).unwrap();
            assert_eq!(content, lock_content());
            // Held: a second taker waits, then gives up (not waited for here: a live pid
            // and a fresh mtime are never stale).
            assert!(!holder_is_dead(&Loc::Abs(lock_path.clone())));
            assert!(!holder_is_dead(&Loc::At(
                &at,
                "u/Maildir/dovecot-uidlist.lock".into()
            )));
        }
        assert!(!lock_path.exists());
        // Without a source, and by absolute path: a lock file of its own.
        {
            let _l = UidlistLock::acquire(&md).unwrap();
            assert_eq!(fs::metadata(&lock_path).unwrap().nlink(), 1);
            assert_eq!(fs::read_to_string(&lock_path).unwrap(), lock_content());
        }
        assert!(!lock_path.exists());
        assert!(src_path.exists());
        drop(src);
        assert!(!src_path.exists());

        // Leftovers: a dead pid's source is removed, a live one's is kept.
        let dead = format!("{LOCK_SOURCE_PREFIX}{}.0", i32::MAX - 1);
        let live = format!("{LOCK_SOURCE_PREFIX}{}.0", std::process::id());
        fs::write(dom.join(&dead), "x").unwrap();
        fs::write(dom.join(&live), "x").unwrap();
        remove_stale_lock_sources(dom, [dead.as_str(), live.as_str()].into_iter());
        assert!(!dom.join(&dead).exists());
        assert!(dom.join(&live).exists());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn exchange_swaps_files_and_leaves_a_directory_alone() {
        let t = tempfile::tempdir().unwrap();
        let at = DirAt::open(t.path()).unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::write(&a, "new").unwrap();
        fs::write(&b, "old").unwrap();
        exchange(&at, "a", "b").unwrap();
        assert_eq!(fs::read_to_string(&b).unwrap(), "new");
        assert_eq!(fs::read_to_string(&a).unwrap(), "old");
        // Nothing at the destination: a rename.
        let c = t.path().join("c");
        exchange(&at, "a", "c").unwrap();
        assert!(!a.exists());
        assert_eq!(fs::read_to_string(&c).unwrap(), "old");
        // A directory at the destination stays there, and the file where it was.
        let d = t.path().join("d");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("inside"), "x").unwrap();
        let e = exchange(&at, "c", "d").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EISDIR));
        assert!(d.join("inside").exists());
        assert_eq!(fs::read_to_string(&c).unwrap(), "old");
    }

    /// A held file whose name is removed stays open (not freed) until the closing thread
    /// drops it; that thread does so promptly.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_held_file_is_freed_by_the_closing_thread() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("dovecot-uidlist");
        fs::write(&path, b"3 V1 N2\n").unwrap();
        // Descriptors of this process naming the removed file.
        let open_on = || {
            fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .filter(|l| l.starts_with(tmp.path()))
                .count()
        };
        let held = hold(&path);
        assert!(held.is_some());
        fs::remove_file(&path).unwrap();
        assert_eq!(open_on(), 1, "the removed file is still referenced");
        release_later(held);
        let start = Instant::now();
        while open_on() > 0 {
            assert!(start.elapsed() < Duration::from_secs(10), "never closed");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Nothing held, nothing to close.
        assert!(hold(&tmp.path().join("absent")).is_none());
        release_later(None);
    }

    #[test]
    fn the_sync_mode_setting_is_parsed() {
        assert_eq!(SyncMode::parse("file").unwrap(), SyncMode::PerFile);
        if cfg!(target_os = "linux") {
            assert_eq!(SyncMode::best(), SyncMode::Filesystem);
            assert_eq!(SyncMode::parse("filesystem").unwrap(), SyncMode::Filesystem);
            // syncfs of the filesystem holding a directory: it exists and succeeds.
            let tmp = tempfile::tempdir().unwrap();
            sync_filesystem(&File::open(tmp.path()).unwrap()).unwrap();
        } else {
            assert_eq!(SyncMode::best(), SyncMode::PerFile);
            assert!(SyncMode::parse("filesystem").is_err());
        }
        for bad in ["", "File", "fs", "none", "filesystem "] {
            let err = SyncMode::parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 78, "{bad:?}");
            assert!(
                err.message().contains("\"file\" or \"filesystem\""),
                "{bad:?}"
            );
        }
    }

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
