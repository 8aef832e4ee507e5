//! The per-domain record of what was in sync after the last successful run, kept by both
//! ends (the sender in its state directory, the receiver in its own), so that a reversed
//! direction still knows what was in sync.

use super::entry::{digest, Digester, Entry, EntryRef};
use super::wire::{Dec, Enc};
use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"mailsync-manifest 1\n";

/// A manifest: the node pair it is about, its digest, and the entries (sorted by path).
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    pub pair: String,
    pub digest: String,
    pub entries: Vec<Entry>,
}

/// Reads a file through a window of at most a few hundred KiB, decoding one item at a
/// time (a record is never held whole in memory).
struct Reader {
    file: std::fs::File,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
}

const WINDOW: usize = 256 << 10;

impl Reader {
    /// Make at least `want` bytes available from `pos` (fewer at the end of the file).
    fn fill(&mut self, want: usize) -> Result<()> {
        use std::io::Read;
        if self.buf.len() - self.pos >= want || self.eof {
            return Ok(());
        }
        self.buf.drain(..self.pos);
        self.pos = 0;
        let target = want.max(WINDOW);
        while self.buf.len() < target && !self.eof {
            let old = self.buf.len();
            self.buf.resize(target, 0);
            let n = self
                .file
                .read(&mut self.buf[old..])
                .map_err(|e| Error::io("cannot read a manifest", e))?;
            self.buf.truncate(old + n);
            if n == 0 {
                self.eof = true;
            }
        }
        Ok(())
    }

    /// Decode one item; reads more when the window ends inside it.
    fn next<T>(&mut self, f: impl Fn(&mut Dec) -> Result<T>) -> Result<T> {
        let mut want = 1 << 10;
        loop {
            self.fill(want)?;
            let mut d = Dec::new(&self.buf[self.pos..]);
            match f(&mut d) {
                Ok(v) => {
                    self.pos += d.position();
                    return Ok(v);
                }
                // Truncated by the window: widen it (items are bounded by the frame size).
                Err(_) if !self.eof && want < (64 << 20) => {
                    want = (self.buf.len() - self.pos) * 2 + 1
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Decode one entry in place and hand it to `g` (no allocation for its strings).
    fn next_entry<T>(&mut self, mut g: impl FnMut(EntryRef<'_>) -> T) -> Result<T> {
        let mut want = 1 << 10;
        loop {
            self.fill(want)?;
            let mut d = Dec::new(&self.buf[self.pos..]);
            match EntryRef::decode(&mut d) {
                Ok(e) => {
                    let n = d.position();
                    let v = g(e);
                    self.pos += n;
                    return Ok(v);
                }
                Err(_) if !self.eof && want < (64 << 20) => {
                    want = (self.buf.len() - self.pos) * 2 + 1
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A record loaded against a local listing (see [`Manifest::load_against`]).
#[derive(Debug, Default)]
pub struct Record {
    pub digest: String,
    pub in_local: Vec<bool>,
    pub extra: Vec<Entry>,
}

impl Record {
    /// The record's entries, sorted by path, as references.
    pub fn entries<'a>(&'a self, local: &'a [Entry]) -> Vec<&'a Entry> {
        let mut out = Vec::with_capacity(local.len() + self.extra.len());
        let mut x = self.extra.iter().peekable();
        for (e, _) in local.iter().zip(&self.in_local).filter(|(_, &k)| k) {
            while let Some(o) = x.next_if(|o| o.path < e.path) {
                out.push(o);
            }
            out.push(e);
        }
        out.extend(x);
        out
    }
}

/// The key of a node pair, the same in both directions.
pub fn pair_key(a: &str, b: &str) -> String {
    if a <= b {
        format!("{a}|{b}")
    } else {
        format!("{b}|{a}")
    }
}

/// Where the state of `domain` lives in `state_dir`.
pub fn path_for(state_dir: &Path, domain: &str, what: &str) -> PathBuf {
    state_dir.join(format!("{domain}.{what}"))
}

impl Manifest {
    pub fn new(pair: &str, mut entries: Vec<Entry>) -> Manifest {
        entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        entries.dedup_by(|a, b| a.path == b.path);
        let digest = digest(&entries, pair);
        Manifest {
            pair: pair.to_string(),
            digest,
            entries,
        }
    }

    pub fn load(path: &Path) -> Result<Option<Manifest>> {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        };
        let decode = || -> Result<Manifest> {
            let rest = data
                .strip_prefix(MAGIC)
                .ok_or_else(|| Error::bad_input("not a manifest"))?;
            let mut d = Dec::new(rest);
            let pair = d.string()?;
            let dg = d.string()?;
            let n = d.uv()?;
            let mut entries = Vec::with_capacity(n.min(1 << 20) as usize);
            for _ in 0..n {
                entries.push(Entry::decode(&mut d)?);
            }
            let m = Manifest::new(&pair, entries);
            if m.digest != dg {
                return Err(Error::bad_input("digest mismatch"));
            }
            Ok(m)
        };
        match decode() {
            Ok(m) => Ok(Some(m)),
            Err(e) => {
                log::warn!(
                    "{}: unusable manifest ({}); treating the domain as never synced",
                    path.display(),
                    e.message()
                );
                Ok(None)
            }
        }
    }

    /// Load the record of `pair` against the local listing `local` (sorted by path),
    /// without keeping a copy of the entries that equal a local one: the record is then
    /// `local[i]` for every `in_local[i]`, plus `extra` (sorted). Decoded one entry at a
    /// time, the digest computed on the way. None when there is no usable record for
    /// `pair`.
    pub fn load_against(path: &Path, pair: &str, local: &[Entry]) -> Result<Option<Record>> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        };
        let mut r = Reader {
            file,
            buf: Vec::new(),
            pos: 0,
            eof: false,
        };
        let mut decode = || -> Result<Option<Record>> {
            r.fill(MAGIC.len())?;
            if !r.buf[r.pos..].starts_with(MAGIC) {
                return Err(Error::bad_input("not a manifest"));
            }
            r.pos += MAGIC.len();
            if r.next(|d| Ok(d.str()? != pair))? {
                return Ok(None);
            }
            let dg = r.next(|d| d.string())?;
            let n = r.next(|d| d.uv())?;
            let mut digester = Digester::new(pair);
            let mut in_local = vec![false; local.len()];
            let mut extra = Vec::new();
            let mut j = 0;
            let mut last = String::new();
            for k in 0..n {
                let ordered = r.next_entry(|e| {
                    if k > 0 && last.as_str() >= e.path {
                        return false;
                    }
                    digester.add_ref(&e);
                    while j < local.len() && local[j].path.as_str() < e.path {
                        j += 1;
                    }
                    if j < local.len() && local[j].recorded_eq_ref(&e) {
                        in_local[j] = true;
                    } else {
                        extra.push(e.to_entry());
                    }
                    last.clear();
                    last.push_str(e.path);
                    true
                })?;
                if !ordered {
                    return Err(Error::bad_input("entries out of order"));
                }
            }
            if digester.finish() != dg {
                return Err(Error::bad_input("digest mismatch"));
            }
            Ok(Some(Record {
                digest: dg,
                in_local,
                extra,
            }))
        };
        match decode() {
            Ok(r) => Ok(r),
            Err(e) => {
                log::warn!(
                    "{}: unusable manifest ({}); treating the domain as never synced",
                    path.display(),
                    e.message()
                );
                Ok(None)
            }
        }
    }

    /// Write durably, streamed (never a second copy of the record in memory).
    pub fn save(&self, path: &Path) -> Result<()> {
        super::fsops::write_file_atomic_with(path, true, |w| {
            let mut e = Enc::new();
            e.buf.extend_from_slice(MAGIC);
            e.str(&self.pair).str(&self.digest);
            e.uv(self.entries.len() as u64);
            for en in &self.entries {
                en.encode(&mut e);
                if e.len() >= 64 << 10 {
                    w.write_all(&e.buf)?;
                    e.buf.clear();
                }
            }
            w.write_all(&e.buf)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::entry::Kind;

    fn file(path: String, size: u64) -> Entry {
        Entry {
            path,
            kind: Kind::File,
            size,
            mtime: 1_600_000_000,
            mtime_ns: 0,
            mode: 0o600,
            uid: 0,
            gid: 0,
            ino: 7,
            target: None,
        }
    }

    #[test]
    fn load_against_streams_a_record_larger_than_its_window() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("d.manifest");
        // ~1.5 MB on disk: several windows.
        let entries: Vec<Entry> = (0..20_000)
            .map(|i| file(format!("u/Maildir/cur/{i:08}.M1P1.host,S={i}:2,S"), i))
            .collect();
        let m = Manifest::new("a|b", entries.clone());
        m.save(&path).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 4 * WINDOW as u64);
        let full = Manifest::load(&path).unwrap().unwrap();
        assert_eq!(full.digest, m.digest);

        // Everything equal to the local listing: nothing kept twice.
        let local = m.entries.clone();
        let r = Manifest::load_against(&path, "a|b", &local)
            .unwrap()
            .unwrap();
        assert_eq!(r.digest, m.digest);
        assert!(r.in_local.iter().all(|&x| x) && r.extra.is_empty());
        assert_eq!(r.entries(&local).len(), local.len());

        // A local listing with one entry gone and one changed: both come from the record.
        let mut local2 = local.clone();
        local2.remove(10);
        local2[500].size += 1;
        let r = Manifest::load_against(&path, "a|b", &local2)
            .unwrap()
            .unwrap();
        assert_eq!(r.extra.len(), 2);
        let all: Vec<&str> = r.entries(&local2).iter().map(|e| e.path.as_str()).collect();
        let want: Vec<&str> = m.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(all, want);
        assert_eq!(r.entries(&local2)[501].size, m.entries[501].size);

        // Another pair, a damaged file: no record.
        assert!(Manifest::load_against(&path, "a|c", &local)
            .unwrap()
            .is_none());
        let mut data = std::fs::read(&path).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0x55;
        std::fs::write(&path, &data).unwrap();
        assert!(Manifest::load_against(&path, "a|b", &local)
            .unwrap()
            .is_none());
    }

    /// A truncated record, one whose entries are out of order (even with a digest that
    /// matches them), or a file that is not a record: no record (so no deletes).
    #[test]
    fn truncated_or_disordered_records_are_untrusted() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("d.manifest");
        let entries: Vec<Entry> = (0..3_000)
            .map(|i| file(format!("u/Maildir/cur/{i:08}.M1P1.host,S={i}:2,S"), i))
            .collect();
        let m = Manifest::new("a|b", entries);
        m.save(&path).unwrap();
        let local = m.entries.clone();
        let good = std::fs::read(&path).unwrap();
        for cut in [good.len() - 1, good.len() / 2, MAGIC.len() + 3, 5] {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert!(Manifest::load_against(&path, "a|b", &local)
                .unwrap()
                .is_none());
            assert!(Manifest::load(&path).unwrap().is_none());
        }
        // Two entries swapped, the digest computed over the entries in that order.
        let mut swapped = m.entries.clone();
        swapped.swap(100, 101);
        let bad = Manifest {
            pair: "a|b".into(),
            digest: digest(&swapped, "a|b"),
            entries: swapped,
        };
        bad.save(&path).unwrap();
        assert!(Manifest::load_against(&path, "a|b", &local)
            .unwrap()
            .is_none());
        std::fs::write(&path, b"mailsync-scan-cache 1\n\x00").unwrap();
        assert!(Manifest::load_against(&path, "a|b", &local)
            .unwrap()
            .is_none());
        // The good record again: loaded, every entry matched in place.
        std::fs::write(&path, &good).unwrap();
        let r = Manifest::load_against(&path, "a|b", &local)
            .unwrap()
            .unwrap();
        assert_eq!(r.digest, m.digest);
        assert!(r.in_local.iter().all(|&x| x) && r.extra.is_empty());
    }
}
