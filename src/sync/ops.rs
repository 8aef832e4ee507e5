//! Encoding of operations on the wire and their application on the receiving side.

use super::dirat::DirAt;
use super::durable::{Durability, Failure, FsHandle, Job};
use super::entry::{message_key, parent, Entry, Kind};
use super::fsops::{self, check_parents, check_rel, LockSource, SyncMode, UidlistLock};
use super::plan::Op;
use super::wire::{t, Conn, Dec, Enc};
use crate::error::{Error, Result};
use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Record tags inside an OPS frame.
pub mod tag {
    pub const MKDIR: u8 = 1;
    pub const LINK: u8 = 2;
    pub const RENAME: u8 = 3;
    /// Put with the data inline.
    pub const PUT_INLINE: u8 = 4;
    /// Put whose data follows in DATA frames, ended by an empty one.
    pub const PUT_STREAM: u8 = 5;
    pub const DELETE: u8 = 6;
    pub const RMDIR: u8 = 7;
}

/// The data of one file, piece by piece, borrowed (no copy per piece).
pub trait Chunks {
    /// The next piece; `None` at the end (also after an error).
    fn next_chunk(&mut self) -> Option<Result<&[u8]>>;
    /// Consume what is left (keeps a stream in step after a failure).
    fn drain(&mut self) {
        while let Some(c) = self.next_chunk() {
            let _ = c;
        }
    }
}

/// A file whose data is one slice (inline in an OPS frame).
pub struct OneChunk<'a>(pub Option<&'a [u8]>);

impl Chunks for OneChunk<'_> {
    fn next_chunk(&mut self) -> Option<Result<&[u8]>> {
        self.0.take().map(Ok)
    }
}

/// The DATA frames of one streamed file, borrowed from the connection's buffer, up to the
/// empty frame that ends it. A failure ends the stream: the reader gets it, and a copy stays
/// in `failed` for the caller (which must stop: the stream is out of step).
pub struct DataFrames<'a> {
    conn: &'a mut Conn,
    done: bool,
    pub failed: Option<Error>,
}

impl<'a> DataFrames<'a> {
    pub fn new(conn: &'a mut Conn) -> DataFrames<'a> {
        DataFrames {
            conn,
            done: false,
            failed: None,
        }
    }
}

impl Chunks for DataFrames<'_> {
    fn next_chunk(&mut self) -> Option<Result<&[u8]>> {
        if self.done {
            return None;
        }
        match self.conn.expect(t::DATA) {
            Ok([]) => {
                self.done = true;
                None
            }
            Ok(p) => Some(Ok(p)),
            Err(e) => {
                self.done = true;
                self.failed = Some(Error::new(e.kind(), e.message().to_string()));
                Some(Err(e))
            }
        }
    }
}

/// Message data is written in pieces of this size. One `write()` of a whole 100 KiB message
/// makes Linux (6.x, ext4 with large folios) ask for one page-cache folio of that order; on
/// a host whose memory is full of page cache and fragmented, each such allocation ran
/// direct compaction in the receiver's thread (~20 % of its CPU on an initial copy,
/// BENCHMARKS.md round 6). Pieces of 16 KiB (order 2) never stalled there, and cost a few
/// more system calls. Elsewhere it only means a few more writes.
const WRITE_PIECE: usize = 16 << 10;

/// Encode a non-Put operation.
pub fn encode_op(op: &Op, e: &mut Enc) {
    match op {
        Op::Mkdir(en) => {
            e.u8(tag::MKDIR);
            en.encode(e);
        }
        Op::Link { from, to } => {
            e.u8(tag::LINK).str(from);
            to.encode(e);
        }
        Op::Rename { from, to } => {
            e.u8(tag::RENAME).str(from).str(to);
        }
        Op::Delete(p) => {
            e.u8(tag::DELETE).str(p);
        }
        Op::Rmdir(p) => {
            e.u8(tag::RMDIR).str(p);
        }
        // Puts are encoded by the sender together with their data.
        Op::Put(_) => {}
    }
}

/// Control files written but not yet renamed into place (flushed past this many).
const MAX_DEFERRED: usize = 4096;
/// A control file written (and submitted to the pool to be made durable), renamed into
/// place at the next flush.
struct Deferred {
    rel: String,
    /// Where it was written, relative to the domain directory, and absolute.
    tmp_rel: String,
    tmp: PathBuf,
    dest: PathBuf,
    dir: PathBuf,
    lock: bool,
    /// `tmp` is the file's spare: exchanged with `dest` (see fsops::open_spare).
    spare: bool,
    /// Written on the filesystem synced in batches (not fsynced on its own).
    on_fs: bool,
    /// What the tree held at `rel` before (restored if the replacement fails).
    prev: Option<Entry>,
}

/// Message files are handed to the pool together as soon as it has nothing left to do and
/// at least [`GROUP_FILES`] files or [`GROUP_BYTES`] bytes wait (a group commit: the next
/// sync takes what was written during the previous one), or past this many files or this
/// many bytes; the rest at the end of the domain's operations. Each `syncfs` costs CPU
/// whatever it writes (~0.3 ms here): a day run's domain (~25 new messages) is synced once
/// at its end, not in small groups as they come (BENCHMARKS.md, round 15).
const BATCH_FILES: usize = 1024;
const BATCH_BYTES: u64 = 64 << 20;
const GROUP_FILES: usize = 64;
const GROUP_BYTES: u64 = 4 << 20;

/// Syncs left for the end of a flush: directories to fsync, and whether to sync the
/// filesystem ([`SyncMode::Filesystem`]).
#[derive(Default)]
struct Late {
    dirs: BTreeSet<PathBuf>,
    fs: bool,
}
/// Errors kept verbatim (more are only counted).
const MAX_ERRORS: usize = 50;

/// An applier's durability pool, handed from one domain's applier to the next
/// ([`Applier::take_pool`], [`Applier::with_pool`]) so that its threads are started once.
pub struct Pool(Durability);

/// The receiver's domain tree as operations change it: the scan's sorted listing (entries
/// removed in place) plus the entries added since. No per-message hash map or copy.
#[derive(Debug, Default)]
pub struct Tree {
    /// The scan, sorted by path; `gone[i]` marks removed entries (paths stay for the search).
    base: Vec<Entry>,
    gone: Vec<bool>,
    added: std::collections::BTreeMap<String, Entry>,
}

impl Tree {
    /// `entries` sorted by path.
    pub fn new(entries: Vec<Entry>) -> Tree {
        debug_assert!(entries.windows(2).all(|w| w[0].path <= w[1].path));
        Tree {
            gone: vec![false; entries.len()],
            base: entries,
            added: Default::default(),
        }
    }

    fn slot(&self, path: &str) -> Option<usize> {
        self.base
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
    }

    /// `dir` and each of its ancestors are directories in the scan's listing, not removed
    /// since.
    pub fn listed_dir_chain(&self, dir: &str) -> bool {
        let is_dir = |p: &str| {
            self.slot(p)
                .is_some_and(|i| !self.gone[i] && self.base[i].kind == Kind::Dir)
        };
        dir.match_indices('/').all(|(i, _)| is_dir(&dir[..i])) && is_dir(dir)
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.added.get(path).or_else(|| {
            self.slot(path)
                .filter(|&i| !self.gone[i])
                .map(|i| &self.base[i])
        })
    }

    pub fn insert(&mut self, path: String, e: Entry) {
        if let Some(i) = self.slot(&path) {
            self.base[i] = e;
            self.gone[i] = false;
        } else {
            self.added.insert(path, e);
        }
    }

    pub fn remove(&mut self, path: &str) -> Option<Entry> {
        if let Some(e) = self.added.remove(path) {
            return Some(e);
        }
        let i = self.slot(path).filter(|&i| !self.gone[i])?;
        self.gone[i] = true;
        Some(self.base[i].clone())
    }

    /// Every entry, sorted by path.
    pub fn into_sorted(self) -> Vec<Entry> {
        let mut out = Vec::with_capacity(self.base.len() + self.added.len());
        let mut added = self.added.into_values().peekable();
        for (e, gone) in self.base.into_iter().zip(self.gone) {
            if gone {
                continue;
            }
            while let Some(a) = added.next_if(|a| a.path < e.path) {
                out.push(a);
            }
            out.push(e);
        }
        out.extend(added);
        out
    }

    /// The entries added since the scan.
    pub fn into_added(self) -> impl Iterator<Item = Entry> {
        self.added.into_values()
    }
}

/// The `tmp/` of the Maildir folder `folder` (a path relative to the domain).
fn tmp_of(folder: &str) -> String {
    if folder.is_empty() {
        "tmp".to_string()
    } else {
        format!("{folder}/tmp")
    }
}

/// Applies operations inside one domain directory and tracks the resulting tree.
pub struct Applier {
    pub base: PathBuf,
    /// `base`, open: the operations' paths are relative to it (see dirat).
    at: Option<Arc<DirAt>>,
    /// The domain tree as it is now (scan + applied operations), by path.
    pub tree: Tree,
    known_dirs: HashSet<String>,
    durability: Option<Durability>,
    pending: usize,
    /// Where the message files written since the last flush land (renamed there by the
    /// pool): an operation on one of these paths waits for the flush first.
    pending_paths: HashSet<String>,
    /// Control files written and being made durable, renamed into place at the next flush.
    deferred: Vec<Deferred>,
    /// Linked as the uidlist dotlock (None: not made yet; Some(None): could not be made,
    /// locks are created as files).
    lock_source: Option<Option<LockSource>>,
    sync: SyncMode,
    /// With [`SyncMode::Filesystem`]: the domain directory (opened at the first put; None:
    /// not yet, Some(None): cannot be used, files are fsynced one by one).
    fs: Option<Option<Arc<FsHandle>>>,
    /// Message files written on `fs` and not yet handed to the pool (`tmp`, `dest`).
    batch: Vec<(PathBuf, PathBuf)>,
    batch_bytes: u64,
    /// Files were written on `fs` since the last batch was handed to the pool.
    fs_unsynced: bool,
    /// A batch could not be handed to the pool: what was written on `fs` is not durable.
    fs_failed: bool,
    pub errors: Vec<String>,
    pub error_count: usize,
    pub applied: u64,
}

impl Applier {
    pub fn new(base: PathBuf, entries: Vec<Entry>) -> Applier {
        Applier {
            base,
            at: None,
            tree: Tree::new(entries),
            known_dirs: HashSet::new(),
            durability: None,
            pending: 0,
            pending_paths: HashSet::new(),
            deferred: Vec::new(),
            lock_source: None,
            sync: SyncMode::best(),
            fs: None,
            batch: Vec::new(),
            batch_bytes: 0,
            fs_unsynced: false,
            fs_failed: false,
            errors: Vec::new(),
            error_count: 0,
            applied: 0,
        }
    }

    pub fn fail(&mut self, err: Error) {
        self.error_count += 1;
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(err.message().to_string());
        }
    }

    /// The domain directory, open (opened at the first use).
    fn at(&mut self) -> Result<Arc<DirAt>> {
        if let Some(at) = &self.at {
            return Ok(at.clone());
        }
        let at = Arc::new(
            DirAt::open(&self.base)
                .map_err(|e| Error::io(format!("cannot open {}", self.base.display()), e))?,
        );
        self.at = Some(at.clone());
        Ok(at)
    }

    /// `rel`, checked ([`Applier::check`]), as an absolute path.
    fn path(&mut self, rel: &str) -> Result<PathBuf> {
        self.check(rel)?;
        Ok(self.base.join(rel))
    }

    /// Check a path received: relative, inside the domain, no symlink on the way.
    fn check(&mut self, rel: &str) -> Result<()> {
        check_rel(rel)?;
        // A parent the scan listed as a directory (lstat: no symlink followed on the way
        // down) needs no second lstat of each of its components.
        let parent = super::entry::parent(rel);
        if !parent.is_empty()
            && !self.known_dirs.contains(parent)
            && self.tree.listed_dir_chain(parent)
        {
            self.known_dirs.insert(parent.to_string());
        }
        check_parents(&self.base, rel, &mut self.known_dirs)
    }

    /// Apply one decoded non-data operation record.
    pub fn apply_record(&mut self, d: &mut Dec) -> Result<Option<Entry>> {
        let tag = d.u8()?;
        match tag {
            tag::MKDIR => {
                let e = Entry::decode(d)?;
                let r = self.mkdir(&e);
                self.done(r);
            }
            tag::LINK => {
                let from = d.string()?;
                let to = Entry::decode(d)?;
                self.flush_for(&[&from, &to.path]);
                let r = self.link(&from, &to);
                self.done(r);
            }
            tag::RENAME => {
                let from = d.string()?;
                let to = d.string()?;
                self.flush_for(&[&from, &to]);
                let r = self.rename(&from, &to);
                self.done(r);
            }
            tag::DELETE => {
                let p = d.string()?;
                self.flush_for(&[&p]);
                let r = self.delete(&p);
                self.done(r);
            }
            tag::RMDIR => {
                let p = d.string()?;
                self.flush();
                let r = self.rmdir(&p);
                self.done(r);
            }
            tag::PUT_INLINE => {
                let e = Entry::decode(d)?;
                let data = d.bytes()?;
                let r = self.put(e, &mut OneChunk(Some(data)));
                self.done(r);
            }
            tag::PUT_STREAM => {
                // The caller feeds the data frames.
                return Ok(Some(Entry::decode(d)?));
            }
            _ => return Err(Error::bad_input("protocol error: unknown operation")),
        }
        Ok(None)
    }

    /// Flush first when an operation touches a message file not yet in place (a link
    /// from a file sent in this run, as for hard links among new files). Others need not
    /// wait: the plan renames, links and deletes files that were on this side before.
    fn flush_for(&mut self, paths: &[&str]) {
        if paths.iter().any(|p| self.pending_paths.contains(*p)) {
            self.flush();
        }
    }

    pub fn done(&mut self, r: Result<()>) {
        match r {
            Ok(()) => self.applied += 1,
            Err(e) => self.fail(e),
        }
    }

    fn mkdir(&mut self, e: &Entry) -> Result<()> {
        let p = self.path(&e.path)?;
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(Error::bad_input(format!(
                    "{}: exists and is not a directory",
                    p.display()
                )))
            }
            Err(_) => {
                fs::create_dir(&p)
                    .map_err(|err| Error::io(format!("cannot create {}", p.display()), err))?;
                let _ = std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid));
            }
        }
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&p, fs::Permissions::from_mode(e.mode & 0o7777))
            .map_err(|err| Error::io(format!("chmod {}", p.display()), err))?;
        self.known_dirs.insert(e.path.clone());
        let mut t = e.clone();
        t.ino = 0;
        self.tree.insert(e.path.clone(), t);
        Ok(())
    }

    fn link(&mut self, from: &str, to: &Entry) -> Result<()> {
        let src = self.path(from)?;
        let dst = self.path(&to.path)?;
        let at = self.at()?;
        let st = at
            .lstat(from)
            .map_err(|e| Error::io(format!("cannot link from {}", src.display()), e))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Error::bad_input(format!(
                "{}: not a regular file",
                src.display()
            )));
        }
        at.hard_link(from, &to.path)
            .map_err(|e| Error::io(format!("cannot link {}", dst.display()), e))?;
        if let Some(s) = self.tree.get(from).cloned() {
            let mut n = s;
            n.path = to.path.clone();
            self.tree.insert(to.path.clone(), n);
        }
        Ok(())
    }

    /// What the scan (and this run since) found at `rel`, when it is not a directory: no
    /// `lstat` needed before renaming or deleting it. A directory there is refused, and a
    /// path the tree does not hold is checked on disk.
    fn known_non_dir(&self, rel: &str) -> bool {
        self.tree.get(rel).is_some_and(|e| e.kind != Kind::Dir)
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        self.check(from)?;
        self.check(to)?;
        let at = self.at()?;
        if !self.known_non_dir(from)
            && at
                .is_dir(from)
                .map_err(|e| Error::io(format!("cannot rename {}", at.join(from).display()), e))?
        {
            return Err(Error::bad_input(format!(
                "{}: is a directory",
                at.join(from).display()
            )));
        }
        at.rename(from, to)
            .map_err(|e| Error::io(format!("cannot rename to {}", at.join(to).display()), e))?;
        if let Some(mut e) = self.tree.remove(from) {
            e.path = to.to_string();
            self.tree.insert(to.to_string(), e);
        }
        Ok(())
    }

    fn delete(&mut self, rel: &str) -> Result<()> {
        self.check(rel)?;
        let at = self.at()?;
        if !self.known_non_dir(rel) {
            match at.is_dir(rel) {
                Ok(true) => {
                    return Err(Error::bad_input(format!(
                        "{}: is a directory",
                        at.join(rel).display()
                    )))
                }
                Ok(false) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("cannot stat {}", at.join(rel).display()),
                        e,
                    ))
                }
            }
        }
        // The file is freed by another thread (see fsops::hold).
        match at.remove_file_freeing_later(rel) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::io(
                    format!("cannot delete {}", at.join(rel).display()),
                    e,
                ))
            }
        }
        self.tree.remove(rel);
        Ok(())
    }

    fn rmdir(&mut self, rel: &str) -> Result<()> {
        let p = self.path(rel)?;
        // Not empty (tmp/ contents are never listed) or already gone: leave it.
        if fs::remove_dir(&p).is_ok() {
            self.tree.remove(rel);
            self.known_dirs.remove(rel);
        }
        Ok(())
    }

    /// Where the spare of the control file `rel` is kept: the `tmp/` of its directory (a
    /// Maildir folder), when there is one.
    fn spare_for(&mut self, at: &DirAt, rel: &str) -> Option<String> {
        if !fsops::SPARES {
            return None;
        }
        let tmp_rel = tmp_of(parent(rel));
        if !self.known_dirs.contains(&tmp_rel) {
            if !self.tree.get(&tmp_rel).is_some_and(|x| x.kind == Kind::Dir) {
                return None;
            }
            if !at.is_dir(&tmp_rel).unwrap_or(false) {
                return None;
            }
            self.known_dirs.insert(tmp_rel.clone());
        }
        Some(format!(
            "{tmp_rel}/{}",
            fsops::spare_name(super::entry::file_name(rel))
        ))
    }

    /// A Maildir's `tmp/` (created when missing; never a symlink).
    fn tmp_dir(&self, td: PathBuf) -> Result<()> {
        match fs::symlink_metadata(&td) {
            Ok(m) if m.file_type().is_dir() => Ok(()),
            Ok(_) => Err(Error::bad_input(format!(
                "{}: not a directory",
                td.display()
            ))),
            Err(_) => fs::create_dir(&td)
                .map_err(|err| Error::io(format!("cannot create {}", td.display()), err)),
        }
    }

    /// Write a file from `chunks`. Messages go to the Maildir's `tmp/` and are made durable
    /// and renamed in batches; other files are replaced at once (under the uidlist lock for
    /// Dovecot's control files).
    pub fn put(&mut self, mut e: Entry, chunks: &mut dyn Chunks) -> Result<()> {
        let dest = self.path(&e.path)?;
        // A directory at the destination: refused now (the tree knows what the scan and
        // this run found; one made since by someone else makes the final rename fail).
        if self.tree.get(&e.path).is_some_and(|x| x.kind == Kind::Dir) {
            // Drain the data, then fail.
            while let Some(c) = chunks.next_chunk() {
                c?;
            }
            return Err(Error::bad_input(format!(
                "{}: is a directory",
                dest.display()
            )));
        }
        let is_message = message_key(&e.path).is_some();
        if e.kind == Kind::Symlink {
            while let Some(c) = chunks.next_chunk() {
                c?;
            }
            self.flush();
            let target = e.target.clone().unwrap_or_default();
            let dir = dest.parent().unwrap_or(Path::new("."));
            let tmp = dir.join(fsops::tmp_name());
            std::os::unix::fs::symlink(&target, &tmp)
                .map_err(|err| Error::io(format!("cannot create {}", tmp.display()), err))?;
            let _ = std::os::unix::fs::lchown(&tmp, Some(e.uid), Some(e.gid));
            if let Err(err) = fs::rename(&tmp, &dest) {
                let _ = fs::remove_file(&tmp);
                return Err(Error::io(
                    format!("cannot rename to {}", dest.display()),
                    err,
                ));
            }
            e.ino = 0;
            self.tree.insert(e.path.clone(), e);
            return Ok(());
        }
        let at = self.at()?;
        // Where the temporary file goes (relative to the domain directory).
        let tmp_dir_rel = if is_message {
            let rel = tmp_of(parent(parent(&e.path)));
            if !self.known_dirs.contains(&rel) {
                self.tmp_dir(self.base.join(&rel))?;
                self.known_dirs.insert(rel.clone());
            }
            rel
        } else {
            parent(&e.path).to_string()
        };
        let tmp_dir = self.base.join(&tmp_dir_rel);
        // A control file is written into its spare when it has one (see fsops::open_spare).
        let spare = if is_message {
            None
        } else {
            self.spare_for(&at, &e.path)
                .and_then(|p| fsops::open_spare(&at, &p).map(|f| (p, f)))
        };
        let is_spare = spare.is_some();
        let (tmp_rel, mut file) = match spare {
            Some(s) => s,
            None => {
                let tmp_rel = if tmp_dir_rel.is_empty() {
                    fsops::tmp_name()
                } else {
                    format!("{tmp_dir_rel}/{}", fsops::tmp_name())
                };
                let file = at.create_new(&tmp_rel).map_err(|err| {
                    Error::io(
                        format!("cannot create {}", at.join(&tmp_rel).display()),
                        err,
                    )
                })?;
                (tmp_rel, file)
            }
        };
        let tmp = self.base.join(&tmp_rel);
        let mut size = 0u64;
        let result = (|| {
            while let Some(c) = chunks.next_chunk() {
                let c = c?;
                size += c.len() as u64;
                for piece in c.chunks(WRITE_PIECE) {
                    file.write_all(piece)
                        .map_err(|err| Error::io(format!("writing {}", tmp.display()), err))?;
                }
            }
            e.size = size;
            if is_spare {
                // Whatever the spare held beyond the new content goes.
                file.set_len(size)
                    .map_err(|err| Error::io(format!("writing {}", tmp.display()), err))?;
            }
            fsops::set_attrs(&file, &e)
        })();
        if let Err(err) = result {
            // Drain what is left so the stream stays in step.
            chunks.drain();
            let _ = fs::remove_file(&tmp);
            return Err(err);
        }
        e.ino = 0;
        // On the filesystem synced in batches: no fsync of its own (nor an early start of
        // its writeback: one sync of many files merges their writes, BENCHMARKS.md round 12).
        let on_fs = self.on_batch_fs(&file);
        if is_message && on_fs {
            drop(file);
            self.batch.push((tmp, dest));
            self.batch_bytes += size;
            self.fs_unsynced = true;
            self.pending += 1;
            self.pending_paths.insert(e.path.clone());
            self.tree.insert(e.path.clone(), e);
            let (files, bytes) = (self.batch.len(), self.batch_bytes);
            if files >= BATCH_FILES
                || bytes >= BATCH_BYTES
                || ((files >= GROUP_FILES || bytes >= GROUP_BYTES)
                    && self.durability.as_ref().map_or(true, Durability::idle))
            {
                self.submit_batch();
            }
            return Ok(());
        }
        if is_message {
            let d = self.durability.get_or_insert_with(Durability::new);
            d.submit(Job::Message { file, tmp, dest })?;
            self.pending += 1;
            self.pending_paths.insert(e.path.clone());
            self.tree.insert(e.path.clone(), e);
            return Ok(());
        }
        // Control and other files: made durable now (in the pool, or with the next batch),
        // renamed into place at the next flush, after the messages they describe, under the
        // uidlist lock.
        if on_fs {
            drop(file);
            self.fs_unsynced = true;
        } else {
            let d = self.durability.get_or_insert_with(Durability::new);
            if let Err(err) = d.submit(Job::File {
                file,
                tmp: tmp.clone(),
            }) {
                let _ = fs::remove_file(&tmp);
                return Err(err);
            }
        }
        let prev = self.tree.get(&e.path).cloned();
        self.deferred.push(Deferred {
            lock: super::entry::needs_uidlist_lock(&e.path),
            rel: e.path.clone(),
            tmp_rel,
            tmp,
            dest,
            dir: tmp_dir,
            spare: is_spare,
            on_fs,
            prev,
        });
        self.tree.insert(e.path.clone(), e);
        if self.deferred.len() >= MAX_DEFERRED {
            self.flush();
        }
        Ok(())
    }

    /// Make everything written so far durable and in place: wait for the message files
    /// (fsynced and renamed by the pool), fsync their directories, then rename the control
    /// files (already fsynced) into place, each under its uidlist lock, and fsync their
    /// directories. Directories are fsynced in parallel.
    pub fn flush(&mut self) {
        let late = self.flush_but_last_dirs();
        self.sync_late(late);
    }

    /// [`Applier::flush`] at the end of a domain's operations, except that the last step
    /// (fsync the directories the control files were just renamed in) is only started:
    /// [`Applier::wait_finished`] waits for it, so that the caller can answer meanwhile.
    /// The messages the control files describe are durable before those are renamed into
    /// place, as with `flush`.
    pub fn finish(&mut self) {
        let late = self.flush_but_last_dirs();
        if let Some(e) = self.submit_late(late) {
            self.fail(e);
        }
    }

    /// Wait for what [`Applier::finish`] started; its errors (none: all is durable).
    pub fn wait_finished(&mut self) -> Vec<Error> {
        self.durability
            .as_ref()
            .map_or_else(Vec::new, Durability::barrier_errors)
    }

    /// Make files durable this way (default: [`SyncMode::best`]).
    pub fn with_sync(mut self, sync: SyncMode) -> Applier {
        self.sync = sync;
        self
    }

    /// With [`SyncMode::Filesystem`], whether `file` (just written) is on the domain
    /// directory's filesystem, made durable in batches.
    fn on_batch_fs(&mut self, file: &File) -> bool {
        use std::os::unix::fs::MetadataExt;
        if self.sync != SyncMode::Filesystem {
            return false;
        }
        let base = &self.base;
        let fs = self
            .fs
            .get_or_insert_with(|| FsHandle::open(base).map(Arc::new));
        match (fs, file.metadata()) {
            (Some(fs), Ok(m)) => m.dev() == fs.dev,
            _ => false,
        }
    }

    /// Hand the pool the message files of the batch, and with them every file written on
    /// the filesystem since the last batch: one filesystem sync, then their renames.
    fn submit_batch(&mut self) {
        if !self.fs_unsynced {
            return;
        }
        let Some(Some(fs)) = self.fs.clone() else {
            return;
        };
        self.fs_unsynced = false;
        self.batch_bytes = 0;
        let moves = std::mem::take(&mut self.batch);
        let d = self.durability.get_or_insert_with(Durability::new);
        if let Err(Job::Batch { moves, .. }) = d.try_submit(Job::Batch { fs, moves }) {
            self.fs_failed = true;
            self.fail(Error::internal("the fsync pool is gone"));
            for (tmp, dest) in moves {
                let _ = fs::remove_file(&tmp);
                self.forget(&dest);
            }
        }
    }

    /// Give this applier the durability pool of a previous one (its threads are reused).
    pub fn with_pool(mut self, pool: Option<Pool>) -> Applier {
        if self.durability.is_none() {
            self.durability = pool.map(|p| p.0);
        }
        self
    }

    /// The durability pool, for the next applier (only once everything is waited for).
    pub fn take_pool(&mut self) -> Option<Pool> {
        self.durability.take().map(Pool)
    }

    /// Everything written in place and durable but the last syncs, which it returns: those
    /// of the last renames (of the messages when no control file follows them, else of the
    /// control files).
    fn flush_but_last_dirs(&mut self) -> Late {
        if self.pending == 0 && self.deferred.is_empty() {
            return Late::default();
        }
        self.submit_batch();
        self.pending = 0;
        self.pending_paths.clear();
        let Some(settled) = self.durability.as_ref().map(Durability::barrier) else {
            return Late::default();
        };
        let mut fs_failed = std::mem::take(&mut self.fs_failed);
        let mut failed_tmp = HashSet::new();
        for f in settled.failures {
            match f {
                Failure::Message(dest, err) => {
                    self.fail(err);
                    self.forget(&dest);
                }
                Failure::File(tmp, err) => {
                    self.fail(err);
                    failed_tmp.insert(tmp);
                }
                Failure::Dir(err) => self.fail(err),
                Failure::Filesystem(dests, err) => {
                    self.fail(err);
                    for dest in &dests {
                        self.forget(dest);
                    }
                    fs_failed = true;
                }
            }
        }
        let landed = Late {
            dirs: settled.dirs,
            fs: settled.fs_renamed,
        };
        let deferred = std::mem::take(&mut self.deferred);
        if deferred.is_empty() {
            return landed;
        }
        // The messages are in place: durably so before the control files describing them.
        self.sync_late(landed);
        if self.lock_source.is_none() && deferred.iter().any(|c| c.lock) {
            self.lock_source = Some(LockSource::create(&self.base).ok());
        }
        let holder = self.lock_source.take();
        let source = holder.as_ref().and_then(Option::as_ref);
        // Unusable: every replacement fails with this error.
        let at = self.at().map_err(|e| e.message().to_string());
        let mut late = Late::default();
        for c in deferred {
            let r = if failed_tmp.contains(&c.tmp) || (c.on_fs && fs_failed) {
                Err(None)
            } else {
                (|| {
                    let at = at.as_ref().map_err(|m| Error::temporary(m.clone()))?;
                    let _lock = if c.lock {
                        Some(UidlistLock::acquire_at(at, parent(&c.rel), source)?)
                    } else {
                        None
                    };
                    // The file replaced becomes the spare, or is freed by another thread
                    // (see fsops::hold).
                    if c.spare {
                        fsops::exchange(at, &c.tmp_rel, &c.rel)
                    } else {
                        at.rename_freeing_later(&c.tmp_rel, &c.rel)
                    }
                    .map_err(|err| Error::io(format!("cannot rename to {}", c.dest.display()), err))
                })()
                .map_err(Some)
            };
            match r {
                Ok(()) if c.on_fs => late.fs = true,
                Ok(()) => {
                    late.dirs.insert(c.dir);
                }
                Err(err) => {
                    let _ = fs::remove_file(&c.tmp);
                    if let Some(err) = err {
                        self.fail(err);
                    }
                    // Not replaced: the tree keeps what was there.
                    self.applied = self.applied.saturating_sub(1);
                    match c.prev {
                        Some(p) => self.tree.insert(c.rel, p),
                        None => {
                            self.tree.remove(&c.rel);
                        }
                    }
                }
            }
        }
        self.lock_source = holder;
        late
    }

    /// Do the syncs of `late`: in parallel in the pool (here when there is only one).
    fn sync_late(&mut self, late: Late) {
        if late.dirs.len() + usize::from(late.fs) <= 1 {
            let mut errors = Vec::new();
            for d in &late.dirs {
                errors.extend(fsops::sync_dir(d).err());
            }
            if late.fs {
                if let Some(Some(fs)) = &self.fs {
                    errors.extend(fs.sync().err());
                }
            }
            for e in errors {
                self.fail(e);
            }
            return;
        }
        let mut errors: Vec<Error> = self.submit_late(late).into_iter().collect();
        errors.extend(self.wait_finished());
        for e in errors {
            self.fail(e);
        }
    }

    /// Give the pool the syncs of `late` (none when empty); the error that stopped the
    /// submissions, if any.
    fn submit_late(&mut self, late: Late) -> Option<Error> {
        let fs = match &self.fs {
            Some(Some(fs)) if late.fs => Some(fs.clone()),
            _ => None,
        };
        if late.dirs.is_empty() && fs.is_none() {
            return None;
        }
        let d = self.durability.get_or_insert_with(Durability::new);
        let jobs = late
            .dirs
            .into_iter()
            .map(Job::Dir)
            .chain(fs.map(|fs| Job::Batch {
                fs,
                moves: Vec::new(),
            }));
        for job in jobs {
            if let Err(e) = d.submit(job) {
                return Some(e);
            }
        }
        None
    }

    fn forget(&mut self, dest: &Path) {
        if let Ok(rel) = dest.strip_prefix(&self.base) {
            if let Some(rel) = rel.to_str() {
                self.tree.remove(rel);
                self.applied = self.applied.saturating_sub(1);
            }
        }
    }

    /// The tree as a sorted list.
    pub fn into_entries(self) -> Vec<Entry> {
        self.tree.into_sorted()
    }
}
