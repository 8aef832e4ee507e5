//! What a domain tree holds: entries (directories, files, symlinks) with the attributes we
//! keep, and the Maildir reading of a path (message key = folder + base name).

use super::wire::{Dec, Enc};
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};

/// Entry kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Dir = 0,
    File = 1,
    Symlink = 2,
}

impl Kind {
    pub fn from_u8(v: u8) -> Result<Kind> {
        match v {
            0 => Ok(Kind::Dir),
            1 => Ok(Kind::File),
            2 => Ok(Kind::Symlink),
            _ => Err(Error::bad_input("protocol error: bad entry kind")),
        }
    }
}

/// One entry of a domain tree. `path` is relative to the domain directory, `/`-separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    pub size: u64,
    pub mtime: i64,
    pub mtime_ns: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Inode on the local disk (not sent; used to recreate hard links).
    pub ino: u64,
    /// Symlink target.
    pub target: Option<String>,
}

impl Entry {
    /// A domain's own directory when there is nothing on disk to describe it: mode 0755,
    /// time 0, owner root.
    pub fn bare_dir() -> Entry {
        Entry {
            path: String::new(),
            kind: Kind::Dir,
            size: 0,
            mtime: 0,
            mtime_ns: 0,
            mode: 0o755,
            uid: 0,
            gid: 0,
            ino: 0,
            target: None,
        }
    }

    /// Same content and attributes as far as replication cares (not owner, not inode).
    pub fn same(&self, other: &Entry) -> bool {
        if self.kind == Kind::Symlink || other.kind == Kind::Symlink {
            // Symlink times and modes are not kept; the target is what matters.
            return self.kind == other.kind && self.target == other.target;
        }
        if self.kind == Kind::Dir || other.kind == Kind::Dir {
            // Directory mtimes are not replicated (Dovecot watches them for changes).
            return self.kind == other.kind && (self.mode & 0o7777) == (other.mode & 0o7777);
        }
        self.kind == other.kind
            && self.size == other.size
            && self.mtime == other.mtime
            && self.mtime_ns == other.mtime_ns
            && (self.mode & 0o7777) == (other.mode & 0o7777)
            && self.target == other.target
    }

    pub fn is_message(&self) -> bool {
        // message_key(..).is_some(), without finding the key: the parent is `cur` or `new`.
        self.kind == Kind::File
            && self.path.rsplit_once('/').is_some_and(|(dir, _)| {
                let sub = dir.rsplit_once('/').map_or(dir, |(_, s)| s);
                sub == "cur" || sub == "new"
            })
    }

    pub fn encode(&self, e: &mut Enc) {
        e.str(&self.path)
            .u8(self.kind as u8)
            .uv(self.size)
            .iv(self.mtime)
            .uv(u64::from(self.mtime_ns))
            .uv(u64::from(self.mode))
            .uv(u64::from(self.uid))
            .uv(u64::from(self.gid));
        if self.kind == Kind::Symlink {
            e.str(self.target.as_deref().unwrap_or(""));
        }
    }

    pub fn decode(d: &mut Dec) -> Result<Entry> {
        Ok(EntryRef::decode(d)?.to_entry())
    }

    /// A view of this entry (for code that also handles entries decoded in place).
    pub fn as_ref(&self) -> EntryRef<'_> {
        EntryRef {
            path: &self.path,
            kind: self.kind,
            size: self.size,
            mtime: self.mtime,
            mtime_ns: self.mtime_ns,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            target: self.target.as_deref(),
        }
    }
}

/// An entry decoded in place (its strings borrowed from the buffer): no allocation for
/// the many entries of a record that are only compared.
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    pub path: &'a str,
    pub kind: Kind,
    pub size: u64,
    pub mtime: i64,
    pub mtime_ns: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub target: Option<&'a str>,
}

impl<'a> EntryRef<'a> {
    pub fn decode(d: &mut Dec<'a>) -> Result<EntryRef<'a>> {
        let path = d.str()?;
        let kind = Kind::from_u8(d.u8()?)?;
        let size = d.uv()?;
        let mtime = d.iv()?;
        let mtime_ns = d.u32()?;
        let mode = d.u32()?;
        let uid = d.u32()?;
        let gid = d.u32()?;
        let target = if kind == Kind::Symlink {
            Some(d.str()?)
        } else {
            None
        };
        Ok(EntryRef {
            path,
            kind,
            size,
            mtime,
            mtime_ns,
            mode,
            uid,
            gid,
            target,
        })
    }

    pub fn to_entry(&self) -> Entry {
        Entry {
            path: self.path.to_string(),
            kind: self.kind,
            size: self.size,
            mtime: self.mtime,
            mtime_ns: self.mtime_ns,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            ino: 0,
            target: self.target.map(str::to_string),
        }
    }
}

/// The Maildir message key of a path: (folder, base name) when the path is a file directly
/// inside a `cur/` or `new/` directory. The base name is the part before `:2,` (or before
/// the first `:` for other info versions).
pub fn message_key(path: &str) -> Option<(&str, &str)> {
    let (dir, name) = path.rsplit_once('/')?;
    let folder = match dir.rsplit_once('/') {
        Some((folder, sub)) if sub == "cur" || sub == "new" => folder,
        None if dir == "cur" || dir == "new" => "",
        _ => return None,
    };
    Some((folder, base_name(name)))
}

/// The base name of a Maildir file name (before the `:` that starts the info).
pub fn base_name(name: &str) -> &str {
    match name.find(':') {
        Some(i) => &name[..i],
        None => name,
    }
}

/// The file name part of a path.
pub fn file_name(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, n)| n)
}

/// The parent directory part of a path ("" for top level).
pub fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

/// Control files replaced under Dovecot's uidlist lock.
pub fn needs_uidlist_lock(path: &str) -> bool {
    matches!(file_name(path), "dovecot-uidlist" | "dovecot-keywords")
}

/// Digest of a set of entries (sorted by path): identifies a manifest.
pub fn digest(entries: &[Entry], pair: &str) -> String {
    let mut d = Digester::new(pair);
    for e in entries {
        d.add(e);
    }
    d.finish()
}

/// [`digest`] fed one entry at a time (a record streamed from disk). The bytes of the
/// entries are gathered in a buffer and hashed a block of buffer at a time (the same
/// byte stream, so the same digest, as one hash update per field).
pub struct Digester {
    h: Sha256,
    buf: Vec<u8>,
}

const DIGEST_BUF: usize = 16 << 10;

impl Digester {
    pub fn new(pair: &str) -> Digester {
        let mut buf = Vec::with_capacity(DIGEST_BUF + 4096);
        buf.extend_from_slice(pair.as_bytes());
        buf.push(0);
        Digester {
            h: Sha256::new(),
            buf,
        }
    }

    pub fn add(&mut self, e: &Entry) {
        self.add_ref(&e.as_ref())
    }

    pub fn add_ref(&mut self, e: &EntryRef) {
        let b = &mut self.buf;
        b.extend_from_slice(e.path.as_bytes());
        b.extend_from_slice(&[0, e.kind as u8]);
        if e.kind == Kind::File {
            b.extend_from_slice(&e.size.to_le_bytes());
            b.extend_from_slice(&e.mtime.to_le_bytes());
            b.extend_from_slice(&e.mtime_ns.to_le_bytes());
        }
        if e.kind != Kind::Symlink {
            b.extend_from_slice(&(e.mode & 0o7777).to_le_bytes());
        }
        if let Some(t) = e.target {
            b.extend_from_slice(t.as_bytes());
        }
        b.push(0);
        if b.len() >= DIGEST_BUF {
            self.h.update(&self.buf);
            self.buf.clear();
        }
    }

    pub fn finish(mut self) -> String {
        self.h.update(&self.buf);
        hex::encode(&self.h.finalize()[..16])
    }
}

impl Entry {
    /// Equal in every attribute a record keeps (all but the local inode).
    pub fn recorded_eq(&self, o: &Entry) -> bool {
        self.recorded_eq_ref(&o.as_ref())
    }

    /// Equal in every attribute the record's digest covers, i.e. what "in sync" means (the
    /// path, and what [`Entry::same`] compares): not the owner, not a directory's mtime, not
    /// the inode. A record entry that equals a listed one this way is represented by the
    /// listed one (same digest): a receiver that cannot give files the sender's owner (not
    /// root, or other numeric ids), or a directory whose mtime moved, costs no extra copy.
    pub fn in_sync_eq_ref(&self, o: &EntryRef) -> bool {
        if self.path != o.path || self.kind != o.kind || self.target.as_deref() != o.target {
            return false;
        }
        match self.kind {
            Kind::Symlink => true,
            Kind::Dir => (self.mode & 0o7777) == (o.mode & 0o7777),
            Kind::File => {
                self.size == o.size
                    && self.mtime == o.mtime
                    && self.mtime_ns == o.mtime_ns
                    && (self.mode & 0o7777) == (o.mode & 0o7777)
            }
        }
    }

    /// [`Entry::recorded_eq`] with an entry decoded in place.
    pub fn recorded_eq_ref(&self, o: &EntryRef) -> bool {
        self.path == o.path
            && self.kind == o.kind
            && self.size == o.size
            && self.mtime == o.mtime
            && self.mtime_ns == o.mtime_ns
            && self.mode == o.mode
            && self.uid == o.uid
            && self.gid == o.gid
            && self.target.as_deref() == o.target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffered digest hashes the same bytes as one update per field did (records
    /// written by older versions, and older peers, compare digests with ours).
    #[test]
    fn buffered_digest_equals_per_field_digest() {
        let reference = |entries: &[Entry], pair: &str| {
            let mut h = Sha256::new();
            h.update(pair.as_bytes());
            h.update([0]);
            for e in entries {
                h.update(e.path.as_bytes());
                h.update([0, e.kind as u8]);
                if e.kind == Kind::File {
                    h.update(e.size.to_le_bytes());
                    h.update(e.mtime.to_le_bytes());
                    h.update(e.mtime_ns.to_le_bytes());
                }
                if e.kind != Kind::Symlink {
                    h.update((e.mode & 0o7777).to_le_bytes());
                }
                if let Some(t) = &e.target {
                    h.update(t.as_bytes());
                }
                h.update([0]);
            }
            hex::encode(&h.finalize()[..16])
        };
        let mut entries = Vec::new();
        for i in 0..3000u64 {
            let mut e = Entry::bare_dir();
            e.path = format!("u{}/Maildir/cur/{i:08}.M1P1.host,S={i}:2,S", i % 7);
            e.kind = match i % 11 {
                0 => Kind::Dir,
                1 => Kind::Symlink,
                _ => Kind::File,
            };
            e.size = i * 31;
            e.mtime = 1_600_000_000 + i as i64;
            e.mtime_ns = i as u32;
            if e.kind == Kind::Symlink {
                e.target = Some(format!("../t{i}"));
            }
            entries.push(e);
        }
        for n in [0, 1, 2, 500, 3000] {
            assert_eq!(
                digest(&entries[..n], "a|b"),
                reference(&entries[..n], "a|b")
            );
        }
    }

    #[test]
    fn message_keys() {
        assert_eq!(
            message_key("bob/Maildir/cur/1.M2P3.h,S=10:2,S"),
            Some(("bob/Maildir", "1.M2P3.h,S=10"))
        );
        assert_eq!(
            message_key("bob/Maildir/.Sent/new/1.M2P3.h"),
            Some(("bob/Maildir/.Sent", "1.M2P3.h"))
        );
        assert_eq!(message_key("bob/Maildir/dovecot-uidlist"), None);
        assert_eq!(message_key("bob/Maildir/tmp/x"), None);
        assert_eq!(message_key("cur/x:2,"), Some(("", "x")));
        // is_message says the same as message_key, for files.
        for p in [
            "bob/Maildir/cur/1.M2P3.h,S=10:2,S",
            "bob/Maildir/.Sent/new/1.M2P3.h",
            "bob/Maildir/dovecot-uidlist",
            "bob/Maildir/tmp/x",
            "cur/x:2,",
            "new/x",
            "cur",
            "x",
            "a/xcur/y",
            "a/cur/b/y",
        ] {
            let mut e = Entry::bare_dir();
            e.kind = Kind::File;
            e.path = p.to_string();
            assert_eq!(e.is_message(), message_key(p).is_some(), "{p}");
        }
    }
}
