//! Scanning a domain tree: never follows symlinks, records errors, skips `tmp/` contents,
//! lock files and excludes, and reuses the previous listing of directories whose mtime did
//! not change (message files are immutable: a name seen before is not stat'ed again).

use super::dirat::{DirAt, Type};
use super::entry::{Entry, Kind};
use super::wire::{Dec, Enc};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Prefix of our own temporary files (never listed, cleaned up by the receiver).
pub const TMP_PREFIX: &str = ".mailsync-tmp.";
/// Deepest directory nesting accepted.
const MAX_DEPTH: usize = 64;
/// Most entries accepted in one domain.
const MAX_ENTRIES: usize = 20_000_000;

/// Dovecot index and cache files (rebuildable): excluded unless `index_files` is on.
pub const INDEX_PATTERNS: &[&str] = &[
    "dovecot.index*",
    "dovecot.list.index*",
    "dovecot.mailbox.log*",
    "dovecot-uidvalidity*",
    "dovecot.lda-dupes*",
];

/// What to skip.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Glob patterns (`*`, `?`): on the file name, or on the whole path when they hold `/`.
    pub excludes: Vec<String>,
}

impl Filter {
    pub fn new(mut excludes: Vec<String>, index_files: bool) -> Filter {
        if !index_files {
            excludes.extend(INDEX_PATTERNS.iter().map(|s| s.to_string()));
        }
        Filter { excludes }
    }

    /// [`Filter::skip`] for `name` in the directory `dir` (the path is made only for a
    /// pattern that needs it).
    pub fn skip_in(&self, dir: &str, name: &str, is_dir: bool) -> bool {
        if self.excludes.iter().any(|p| p.contains('/')) {
            let path = if dir.is_empty() {
                name.to_string()
            } else {
                format!("{dir}/{name}")
            };
            return self.skip(&path, name, is_dir);
        }
        self.skip("", name, is_dir)
    }

    /// True when `name` (at `path`) must not be replicated.
    pub fn skip(&self, path: &str, name: &str, is_dir: bool) -> bool {
        if name.starts_with(TMP_PREFIX) || name == ".mailsync" {
            return true;
        }
        if !is_dir && name.ends_with(".lock") {
            return true;
        }
        self.excludes.iter().any(|p| {
            if p.contains('/') {
                glob(p.as_bytes(), path.as_bytes())
            } else {
                glob(p.as_bytes(), name.as_bytes())
            }
        })
    }
}

/// `*` and `?` glob match.
pub fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// A directory's listing kept between runs.
#[derive(Debug, Clone, Default)]
pub struct CachedDir {
    pub mtime: i64,
    pub mtime_ns: u32,
    /// The listing was taken well after the last change (no same-tick race).
    pub stable: bool,
    pub files: Vec<Entry>,
    pub subdirs: Vec<String>,
}

/// Per-domain listing cache.
#[derive(Debug, Clone, Default)]
pub struct Cache {
    pub dirs: HashMap<String, CachedDir>,
    /// Differs from the cache the scan started from (else saving it again is useless).
    pub dirty: bool,
}

/// Format 2: a file is stored by its name (not its path: the directory's path is stored
/// once), front-coded against the previous name of its directory (Maildir names share
/// their leading digits), with its mode, owner and group only where they differ from the
/// previous file's. A cache in another format counts as none (one run stats every file).
const CACHE_MAGIC: &[u8] = b"mailsync-scan-cache 2\n";

/// Bits of a cached file's flags byte (beside its kind, in the low two bits).
const SAME_MODE: u8 = 1 << 2;
const SAME_UID: u8 = 1 << 3;
const SAME_GID: u8 = 1 << 4;

/// Length of the common prefix of `a` and `b`, cut back to a character boundary of `b`.
fn shared_prefix(a: &str, b: &str) -> usize {
    let mut n = a
        .as_bytes()
        .iter()
        .zip(b.as_bytes())
        .take_while(|(x, y)| x == y)
        .count();
    while !b.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// Encode the files of the directory `dir` ([`CACHE_MAGIC`] format 2).
fn encode_files<'a>(e: &mut Enc, dir: &str, files: &[&'a Entry]) {
    let cut = if dir.is_empty() { 0 } else { dir.len() + 1 };
    e.uv(files.len() as u64);
    let mut prev: Option<&'a Entry> = None;
    for &f in files {
        let name = &f.path[cut..];
        let prev_name = prev.map_or("", |p| &p.path[cut..]);
        let shared = shared_prefix(prev_name, name);
        let mut flags = f.kind as u8;
        if let Some(p) = prev {
            flags |= if p.mode == f.mode { SAME_MODE } else { 0 }
                | if p.uid == f.uid { SAME_UID } else { 0 }
                | if p.gid == f.gid { SAME_GID } else { 0 };
        }
        e.uv(shared as u64)
            .str(&name[shared..])
            .u8(flags)
            .uv(f.size)
            .iv(f.mtime)
            .uv(u64::from(f.mtime_ns));
        if flags & SAME_MODE == 0 {
            e.uv(u64::from(f.mode));
        }
        if flags & SAME_UID == 0 {
            e.uv(u64::from(f.uid));
        }
        if flags & SAME_GID == 0 {
            e.uv(u64::from(f.gid));
        }
        if f.kind == Kind::Symlink {
            e.str(f.target.as_deref().unwrap_or(""));
        }
        e.uv(f.ino);
        prev = Some(f);
    }
}

/// Decode the files of the directory `dir` written by [`encode_files`].
fn decode_files(d: &mut Dec, dir: &str) -> Result<Vec<Entry>> {
    let n = d.uv()?;
    // Exact size (no growth slack); bounded in case the file is damaged.
    let mut files: Vec<Entry> = Vec::with_capacity(n.min(1 << 16) as usize);
    let mut name = String::new();
    for _ in 0..n {
        let shared = usize::try_from(d.uv()?).unwrap_or(usize::MAX);
        if shared > name.len() || !name.is_char_boundary(shared) {
            return Err(Error::bad_input("bad cache"));
        }
        name.truncate(shared);
        name.push_str(d.str()?);
        let flags = d.u8()?;
        if flags & !(3 | SAME_MODE | SAME_UID | SAME_GID) != 0 {
            return Err(Error::bad_input("bad cache"));
        }
        let kind = Kind::from_u8(flags & 3)?;
        let size = d.uv()?;
        let mtime = d.iv()?;
        let mtime_ns = d.u32()?;
        let prev = files.last();
        let mut attr = |same: u8, of: fn(&Entry) -> u32| -> Result<u32> {
            match prev {
                Some(p) if flags & same != 0 => Ok(of(p)),
                _ if flags & same != 0 => Err(Error::bad_input("bad cache")),
                _ => d.u32(),
            }
        };
        let mode = attr(SAME_MODE, |p| p.mode)?;
        let uid = attr(SAME_UID, |p| p.uid)?;
        let gid = attr(SAME_GID, |p| p.gid)?;
        let target = if kind == Kind::Symlink {
            Some(d.string()?)
        } else {
            None
        };
        let ino = d.uv()?;
        let mut path = String::with_capacity(dir.len() + 1 + name.len());
        if !dir.is_empty() {
            path.push_str(dir);
            path.push('/');
        }
        path.push_str(&name);
        files.push(Entry {
            path,
            kind,
            size,
            mtime,
            mtime_ns,
            mode,
            uid,
            gid,
            ino,
            target,
        });
    }
    Ok(files)
}

impl Cache {
    pub fn load(path: &Path) -> Cache {
        let Ok(data) = fs::read(path) else {
            return Cache::default();
        };
        Self::decode(&data).unwrap_or_default()
    }

    fn decode(data: &[u8]) -> Result<Cache> {
        let rest = data
            .strip_prefix(CACHE_MAGIC)
            .ok_or_else(|| Error::bad_input("bad cache"))?;
        let mut d = Dec::new(rest);
        let n = d.uv()?;
        let mut dirs = HashMap::new();
        for _ in 0..n {
            let path = d.string()?;
            let mtime = d.iv()?;
            let mtime_ns = d.u32()?;
            let stable = d.u8()? != 0;
            let files = decode_files(&mut d, &path)?;
            let ns = d.uv()?;
            let mut subdirs = Vec::with_capacity(ns.min(1 << 16) as usize);
            for _ in 0..ns {
                subdirs.push(d.string()?);
            }
            dirs.insert(
                path,
                CachedDir {
                    mtime,
                    mtime_ns,
                    stable,
                    files,
                    subdirs,
                },
            );
        }
        Ok(Cache { dirs, dirty: false })
    }

    /// Save the cache of a scan: the directories' metadata kept here, their files taken
    /// from the scan's `entries` (the cache holds no second copy of the listing). Streamed.
    pub fn save(&self, path: &Path, entries: &[Entry]) -> Result<()> {
        // The files of each cached directory: the entries whose parent it is. `entries`
        // is sorted by path, so those under `dir/` are one run of it, found by binary
        // search (sub-directories, also listed as entries, are in `subdirs`).
        let children = |dir: &str| {
            let run = if dir.is_empty() {
                entries
            } else {
                // Exactly the paths p with "dir/" <= p < "dir0" ('0' follows '/').
                let (from, to) = (format!("{dir}/"), format!("{dir}0"));
                let lo = entries.partition_point(|e| e.path.as_str() < from.as_str());
                let hi = lo + entries[lo..].partition_point(|e| e.path.as_str() < to.as_str());
                &entries[lo..hi]
            };
            let cut = if dir.is_empty() { 0 } else { dir.len() + 1 };
            run.iter()
                .filter(move |e| e.kind != Kind::Dir && !e.path[cut..].contains('/'))
        };
        super::fsops::write_file_atomic_with(path, false, |w| {
            let mut e = Enc::new();
            e.buf.extend_from_slice(CACHE_MAGIC);
            e.uv(self.dirs.len() as u64);
            for (p, c) in &self.dirs {
                e.str(p)
                    .iv(c.mtime)
                    .uv(u64::from(c.mtime_ns))
                    .u8(u8::from(c.stable));
                let files = children(p).filter(|f| {
                    c.subdirs
                        .binary_search_by(|s| s.as_str().cmp(super::entry::file_name(&f.path)))
                        .is_err()
                });
                let files: Vec<&Entry> = files.collect();
                encode_files(&mut e, p, &files);
                e.uv(c.subdirs.len() as u64);
                for s in &c.subdirs {
                    e.str(s);
                }
                if e.len() >= 64 << 10 {
                    w.write_all(&e.buf)?;
                    e.buf.clear();
                }
            }
            w.write_all(&e.buf)
        })
    }
}

/// The result of scanning one domain directory.
#[derive(Debug, Default)]
pub struct Scan {
    /// Entries sorted by path (the domain directory itself is not included).
    pub entries: Vec<Entry>,
    /// Everything that went wrong (unreadable directories, failed stats).
    pub errors: Vec<String>,
    /// Our own leftover temporary files (relative paths) from an interrupted run.
    pub leftovers: Vec<String>,
    /// The domain directory does not exist.
    pub missing: bool,
    /// Files stat'ed this run (for tests of the cache).
    pub stats: u64,
}

impl Scan {
    /// Number of message files.
    pub fn messages(&self) -> usize {
        self.entries.iter().filter(|e| e.is_message()).count()
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Build an entry from `lstat` metadata.
pub fn entry_from_meta(path: String, meta: &fs::Metadata, target: Option<String>) -> Entry {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else {
        Kind::File
    };
    Entry {
        path,
        kind,
        size: if kind == Kind::File { meta.size() } else { 0 },
        mtime: meta.mtime(),
        mtime_ns: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        ino: meta.ino(),
        target,
    }
}

/// Build an entry from `fstatat` results (as [`entry_from_meta`] does from `lstat`).
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
fn entry_from_stat(path: String, st: &libc::stat, target: Option<String>) -> Entry {
    let fmt = st.st_mode & libc::S_IFMT;
    let kind = if fmt == libc::S_IFDIR {
        Kind::Dir
    } else if fmt == libc::S_IFLNK {
        Kind::Symlink
    } else {
        Kind::File
    };
    Entry {
        path,
        kind,
        size: if kind == Kind::File {
            st.st_size as u64
        } else {
            0
        },
        mtime: st.st_mtime as i64,
        mtime_ns: (st.st_mtime_nsec as i64).clamp(0, 999_999_999) as u32,
        mode: u32::from(st.st_mode) & 0o7777,
        uid: st.st_uid as u32,
        gid: st.st_gid as u32,
        ino: st.st_ino as u64,
        target,
    }
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Scan `domain_dir`. `old` is the previous run's cache (may be empty; its listings move
/// into the scan); the new cache (directory metadata; save it with [`Cache::save`] and the
/// scan's entries) is returned with the scan.
pub fn scan(domain_dir: &Path, filter: &Filter, mut old: Cache) -> (Scan, Cache) {
    let mut out = Scan::default();
    let mut new = Cache::default();
    match fs::symlink_metadata(domain_dir) {
        Ok(m) if m.file_type().is_dir() => {}
        Ok(_) => {
            out.errors.push(format!(
                "{} is not a directory (symlinks are not followed)",
                domain_dir.display()
            ));
            return (out, new);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out.missing = true;
            return (out, new);
        }
        Err(e) => {
            out.errors
                .push(format!("cannot stat {}: {e}", domain_dir.display()));
            return (out, new);
        }
    }
    // The domain directory, open: entries are listed and stat'ed relative to it, so each
    // walks the few components inside the domain, not the whole root again.
    let fd = match DirAt::open(domain_dir) {
        Ok(fd) => fd,
        Err(e) => {
            out.errors
                .push(format!("cannot open {}: {e}", domain_dir.display()));
            return (out, new);
        }
    };
    let horizon = now_secs() - 2;
    // The listing will hold about what the cache holds: no growth slack.
    out.entries.reserve(
        old.dirs
            .values()
            .map(|c| c.files.len() + c.subdirs.len())
            .sum::<usize>()
            + 1,
    );
    let mut stack: Vec<(String, usize)> = vec![(String::new(), 0)];
    while let Some((rel, depth)) = stack.pop() {
        let abs = || -> PathBuf {
            if rel.is_empty() {
                domain_dir.to_path_buf()
            } else {
                domain_dir.join(&rel)
            }
        };
        let meta = match fd.lstat(&rel) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel.is_empty() => continue,
            Err(e) => {
                out.errors
                    .push(format!("cannot stat {}: {e}", abs().display()));
                continue;
            }
        };
        if !is_dir(&meta) {
            // Replaced by something else between listing and now: list it as what it is.
            if let Some(e) = stat_entry(&fd, domain_dir, &rel, &mut out) {
                out.entries.push(e);
            }
            continue;
        }
        if !rel.is_empty() {
            out.entries.push(entry_from_stat(rel.clone(), &meta, None));
        }
        let name = super::entry::file_name(&rel);
        if name == "tmp" && !rel.is_empty() {
            // Maildir tmp/: the directory is replicated, never its contents.
            continue;
        }
        if depth >= MAX_DEPTH {
            out.errors
                .push(format!("{}: nested too deep, not listed", abs().display()));
            continue;
        }
        let dir_entry = entry_from_stat(String::new(), &meta, None);
        let is_msg_dir = name == "cur" || name == "new";
        let cached = old.dirs.remove(&rel);
        let (files, subdirs) = match cached {
            Some(c)
                if c.stable && c.mtime == dir_entry.mtime && c.mtime_ns == dir_entry.mtime_ns =>
            {
                let files = if is_msg_dir {
                    c.files
                } else {
                    let files: Vec<Entry> = c
                        .files
                        .iter()
                        .filter_map(|f| stat_entry(&fd, domain_dir, &f.path, &mut out))
                        .collect();
                    if files.len() != c.files.len()
                        || files.iter().zip(&c.files).any(|(a, b)| !a.recorded_eq(b))
                    {
                        new.dirty = true;
                    }
                    files
                };
                (files, c.subdirs)
            }
            _ => {
                new.dirty = true;
                // Message files listed before are immutable: moved over from the cache
                // (no stat, no copy), found by name in its sorted listing.
                let prev = match cached {
                    Some(c) if is_msg_dir => c.files,
                    _ => Vec::new(),
                };
                list_dir(&fd, domain_dir, &abs(), &rel, filter, prev, &mut out)
            }
        };
        new.dirs.insert(
            rel.clone(),
            CachedDir {
                mtime: dir_entry.mtime,
                mtime_ns: dir_entry.mtime_ns,
                stable: dir_entry.mtime < horizon,
                files: Vec::new(),
                subdirs: subdirs.clone(),
            },
        );
        out.entries.extend(files);
        for s in subdirs.into_iter().rev() {
            let child = if rel.is_empty() {
                s
            } else {
                format!("{rel}/{s}")
            };
            stack.push((child, depth + 1));
        }
        if out.entries.len() > MAX_ENTRIES {
            out.errors
                .push(format!("{}: too many entries", domain_dir.display()));
            break;
        }
    }
    out.entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    out.entries.shrink_to_fit();
    if !old.dirs.is_empty() {
        new.dirty = true; // directories gone since
    }
    (out, new)
}

/// Stat `rel` (relative to the domain directory `fd`, which is `domain_dir`).
fn stat_entry(fd: &DirAt, domain_dir: &Path, rel: &str, out: &mut Scan) -> Option<Entry> {
    out.stats += 1;
    let abs = || domain_dir.join(rel);
    match fd.lstat(rel) {
        Ok(m) => {
            let fmt = m.st_mode & libc::S_IFMT;
            if fmt == libc::S_IFLNK {
                match fd.readlink(rel) {
                    Ok(t) => match String::from_utf8(t) {
                        Ok(t) => Some(entry_from_stat(rel.to_string(), &m, Some(t))),
                        Err(_) => {
                            out.errors
                                .push(format!("{}: symlink target is not UTF-8", abs().display()));
                            None
                        }
                    },
                    Err(e) => {
                        out.errors
                            .push(format!("cannot read {}: {e}", abs().display()));
                        None
                    }
                }
            } else if fmt == libc::S_IFREG || fmt == libc::S_IFDIR {
                Some(entry_from_stat(rel.to_string(), &m, None))
            } else {
                None
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            out.errors
                .push(format!("cannot stat {}: {e}", abs().display()));
            None
        }
    }
}

/// List one directory. `prev`: the previous listing of a message directory, sorted by
/// path (message files are immutable: a name listed before is taken from it, moved, with
/// no stat and no copy); empty otherwise.
fn list_dir(
    fd: &DirAt,
    domain_dir: &Path,
    abs: &Path,
    rel: &str,
    filter: &Filter,
    mut prev: Vec<Entry>,
    out: &mut Scan,
) -> (Vec<Entry>, Vec<String>) {
    let mut files = Vec::new();
    let mut subdirs = Vec::new();
    let join = |name: &str| {
        if rel.is_empty() {
            name.to_string()
        } else {
            let mut p = String::with_capacity(rel.len() + 1 + name.len());
            p.push_str(rel);
            p.push('/');
            p.push_str(name);
            p
        }
    };
    // Files to take from `prev` or stat: (name, is a regular file).
    let mut found: Vec<(String, bool)> = Vec::new();
    let listed = fd.list(rel, |name, ty| {
        let Ok(name) = std::str::from_utf8(name) else {
            out.errors.push(format!(
                "{}: a file name is not UTF-8 ({:?}); not replicated",
                abs.display(),
                String::from_utf8_lossy(name)
            ));
            return;
        };
        let Some(ty) = ty else {
            // Gone between the listing and its stat.
            return;
        };
        if name.starts_with(super::scan::TMP_PREFIX) {
            out.leftovers.push(join(name));
            return;
        }
        if filter.skip_in(rel, name, ty == Type::Dir) {
            return;
        }
        match ty {
            Type::Dir => subdirs.push(name.to_string()),
            Type::File | Type::Symlink => found.push((name.to_string(), ty == Type::File)),
            Type::Other => {}
        }
    });
    if let Err(e) = listed {
        out.errors
            .push(format!("cannot list {}: {e}", abs.display()));
        return (files, subdirs);
    }
    // A merge of the names found with the previous listing, both sorted by name (the
    // previous listing is sorted by path: one directory, so by name too).
    if !prev.is_empty() {
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if !prev.windows(2).all(|w| w[0].path <= w[1].path) {
            prev.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        }
    }
    let mut prev = prev.into_iter().peekable();
    files.reserve_exact(found.len());
    // The name in a previous entry's path: every one is `rel/name` (a wrong cut would only
    // mean a name not found, so stat'ed).
    let cut = if rel.is_empty() { 0 } else { rel.len() + 1 };
    let name_of = |p: &Entry| -> usize { cut.min(p.path.len()) };
    // Files listed before under another name: a message renamed in place (a flag change
    // only rewrites the info after `:`), by base name; found names not listed before.
    let mut renamed: HashMap<String, Entry> = HashMap::new();
    let mut not_found = |p: Entry| {
        let name = &p.path[name_of(&p)..];
        let base = super::entry::base_name(name);
        if base.len() < name.len() {
            renamed.insert(base.to_string(), p);
        }
    };
    let mut unmatched: Vec<(String, bool)> = Vec::new();
    for (name, is_file) in found {
        let before = |p: &Entry| &p.path[name_of(p)..] < name.as_str();
        while let Some(p) = prev.next_if(before) {
            not_found(p);
        }
        if is_file {
            if let Some(p) = prev.next_if(|p| p.path[name_of(p)..] == *name) {
                files.push(p);
                continue;
            }
        }
        unmatched.push((name, is_file));
    }
    prev.for_each(&mut not_found);
    for (name, is_file) in unmatched {
        let path = join(&name);
        // Renaming keeps a file's size, times, mode, owner and inode: no stat needed.
        let base = super::entry::base_name(&name);
        if is_file && base.len() < name.len() {
            if let Some(mut p) = renamed.remove(base).filter(|p| p.kind == Kind::File) {
                p.path = path;
                files.push(p);
                continue;
            }
        }
        if let Some(e) = stat_entry(fd, domain_dir, &path, out) {
            if e.kind == Kind::Dir {
                subdirs.push(name);
            } else {
                files.push(e);
            }
        }
    }
    subdirs.sort();
    (files, subdirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_messages_are_not_stated_again() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        for sub in ["u/Maildir/cur", "u/Maildir/new", "u/Maildir/tmp"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        for i in 0..5 {
            fs::write(d.join(format!("u/Maildir/cur/{i}.M1P1.h:2,S")), "x").unwrap();
        }
        fs::write(d.join("u/Maildir/tmp/partial"), "x").unwrap();
        fs::write(d.join("u/Maildir/dovecot-uidlist.lock"), "").unwrap();
        fs::write(d.join("u/Maildir/dovecot-uidlist"), "3 V1 N1\n").unwrap();
        let f = Filter::new(vec![], false);
        let (s1, c1) = scan(d, &f, Cache::default());
        let state = tempfile::tempdir().unwrap();
        c1.save(&state.path().join("cache"), &s1.entries).unwrap();
        let c1 = Cache::load(&state.path().join("cache"));
        assert!(s1.errors.is_empty());
        // 5 messages + the uidlist; nothing from tmp/, no lock file.
        assert_eq!(s1.stats, 6);
        assert_eq!(s1.messages(), 5);
        assert!(!s1
            .entries
            .iter()
            .any(|e| e.path.contains("tmp/") || e.path.ends_with(".lock")));
        // A flag change: the directory is listed again, and the renamed message is not
        // stat'ed (its base name says it is the file listed before); only the control
        // file is, which may change in place.
        let old = s1
            .entries
            .iter()
            .find(|e| e.path.ends_with("0.M1P1.h:2,S"))
            .unwrap()
            .clone();
        fs::rename(
            d.join("u/Maildir/cur/0.M1P1.h:2,S"),
            d.join("u/Maildir/cur/0.M1P1.h:2,RS"),
        )
        .unwrap();
        let (s2, c2) = scan(d, &f, c1);
        assert_eq!(s2.stats, 1);
        assert_eq!(s2.messages(), 5);
        let renamed = s2
            .entries
            .iter()
            .find(|e| e.path.ends_with("0.M1P1.h:2,RS"))
            .unwrap();
        assert_eq!(
            (
                renamed.size,
                renamed.mtime,
                renamed.mtime_ns,
                renamed.ino,
                renamed.mode
            ),
            (old.size, old.mtime, old.mtime_ns, old.ino, old.mode)
        );
        // A new message: stat'ed (and the control file).
        fs::write(d.join("u/Maildir/cur/9.M1P1.h:2,"), "y").unwrap();
        c2.save(&state.path().join("cache"), &s2.entries).unwrap();
        let (s3, _) = scan(d, &f, Cache::load(&state.path().join("cache")));
        assert_eq!(s3.stats, 2);
        assert_eq!(s3.messages(), 6);
    }

    #[test]
    fn cache_round_trip_keeps_every_attribute() {
        let e = |path: &str, kind: Kind, mode: u32, uid: u32, ino: u64| Entry {
            path: path.to_string(),
            kind,
            size: ino * 7,
            mtime: 1_700_000_000 + ino as i64,
            mtime_ns: 999_999_999 - ino as u32,
            mode,
            uid,
            gid: uid + 1,
            ino,
            target: (kind == Kind::Symlink).then(|| "../x".to_string()),
        };
        // Names sharing prefixes, one that splits a two-byte character, a symlink, owners
        // and modes that change from one file to the next, and files at the top.
        let mut entries = vec![
            e("a", Kind::File, 0o600, 8, 1),
            e("u", Kind::Dir, 0o700, 8, 2),
            e("u/cur", Kind::Dir, 0o700, 8, 3),
            e("u/cur/1700.M1P1.h:2,S", Kind::File, 0o600, 8, 4),
            e("u/cur/1700.M1P2.h:2,S", Kind::File, 0o600, 8, 5),
            e("u/cur/1700.M2P1.h:2,RS", Kind::File, 0o640, 9, 6),
            e("u/cur/é1", Kind::File, 0o640, 9, 7),
            e("u/cur/è2", Kind::File, 0o600, 8, 8),
            e("u/link", Kind::Symlink, 0o777, 8, 9),
        ];
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let mut cache = Cache::default();
        for (dir, subdirs) in [("", vec!["u"]), ("u", vec!["cur"]), ("u/cur", vec![])] {
            cache.dirs.insert(
                dir.to_string(),
                CachedDir {
                    mtime: 5,
                    mtime_ns: 6,
                    stable: true,
                    files: Vec::new(),
                    subdirs: subdirs.into_iter().map(String::from).collect(),
                },
            );
        }
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("cache");
        cache.save(&path, &entries).unwrap();
        let back = Cache::load(&path);
        let mut files: Vec<Entry> = back
            .dirs
            .values()
            .flat_map(|c| c.files.iter().cloned())
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let want: Vec<Entry> = entries
            .iter()
            .filter(|x| x.kind != Kind::Dir)
            .cloned()
            .collect();
        assert_eq!(files, want);
        assert_eq!(back.dirs["u"].subdirs, vec!["cur".to_string()]);
        assert!(back.dirs["u/cur"].stable);
        // A damaged cache counts as none.
        let data = fs::read(&path).unwrap();
        fs::write(&path, &data[..data.len() - 3]).unwrap();
        assert!(Cache::load(&path).dirs.is_empty());
    }

    #[test]
    fn globs() {
        assert!(glob(b"dovecot.index*", b"dovecot.index.log"));
        assert!(glob(b"*.tmp", b"a.tmp"));
        assert!(!glob(b"*.tmp", b"a.tmpx"));
        assert!(glob(b"a?c", b"abc"));
        assert!(glob(b"*", b""));
        assert!(!glob(b"x", b""));
    }
}
