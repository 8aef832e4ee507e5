//! The per-domain record of what was in sync after the last successful run, kept by both
//! ends (the sender in its state directory, the receiver in its own), so that a reversed
//! direction still knows what was in sync.

use super::entry::{digest, Digester, Entry, EntryRef};
use super::wire::{Dec, Enc};
use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Format 1: the entries' SHA-256 digest (the one both ends compare) is recomputed at
/// every load to check the file. Still read; no longer written.
const MAGIC: &[u8] = b"mailsync-manifest 1\n";
/// Format 2: the same body, then a 64-bit checksum of every byte before it ([`Sum`]):
/// a load checks the file without hashing every entry again. Older versions do not
/// know this magic: for them the domain has no record (full compare, no deletes).
const MAGIC2: &[u8] = b"mailsync-manifest 2\n";

/// A fast 64-bit checksum (four lanes of xxHash64's round, its final mix) that tells a
/// damaged or truncated record from an intact one. Not a defence against forgery: who
/// can write the state directory can write any record.
#[derive(Clone)]
pub(crate) struct Sum {
    v: [u64; 4],
    tail: [u8; 32],
    n: usize,
    total: u64,
}

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;

fn round(v: u64, w: u64) -> u64 {
    v.wrapping_add(w.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

impl Sum {
    pub(crate) fn new() -> Sum {
        Sum {
            v: [P1.wrapping_add(P2), P2, 0, 0u64.wrapping_sub(P1)],
            tail: [0; 32],
            n: 0,
            total: 0,
        }
    }

    fn block(v: &mut [u64; 4], b: &[u8]) {
        for (i, lane) in v.iter_mut().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            *lane = round(*lane, u64::from_le_bytes(w));
        }
    }

    pub(crate) fn update(&mut self, mut data: &[u8]) {
        self.total = self.total.wrapping_add(data.len() as u64);
        if self.n > 0 {
            let k = (32 - self.n).min(data.len());
            self.tail[self.n..self.n + k].copy_from_slice(&data[..k]);
            self.n += k;
            data = &data[k..];
            if self.n < 32 {
                return;
            }
            let t = self.tail;
            Self::block(&mut self.v, &t);
            self.n = 0;
        }
        let mut blocks = data.chunks_exact(32);
        for b in &mut blocks {
            Self::block(&mut self.v, b);
        }
        let rest = blocks.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.n = rest.len();
    }

    pub(crate) fn finish(&self) -> u64 {
        let v = self.v;
        let mut h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        for lane in v {
            h = (h ^ round(0, lane)).wrapping_mul(P1).wrapping_add(P3);
        }
        h = h.wrapping_add(self.total);
        for &b in &self.tail[..self.n] {
            h = (h ^ u64::from(b).wrapping_mul(P3))
                .rotate_left(11)
                .wrapping_mul(P1);
        }
        h ^= h >> 33;
        h = h.wrapping_mul(P2);
        h ^= h >> 29;
        h = h.wrapping_mul(P3);
        h ^ (h >> 32)
    }
}

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
    /// Format 2: the checksum of the bytes consumed, up to `buf[hashed]`.
    sum: Option<Sum>,
    hashed: usize,
}

const WINDOW: usize = 256 << 10;

impl Reader {
    /// Make at least `want` bytes available from `pos` (fewer at the end of the file).
    fn fill(&mut self, want: usize) -> Result<()> {
        use std::io::Read;
        if self.buf.len() - self.pos >= want || self.eof {
            return Ok(());
        }
        self.hash_consumed();
        self.buf.drain(..self.pos);
        self.pos = 0;
        self.hashed = 0;
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

    /// Add the bytes consumed since the last call to the checksum (format 2).
    fn hash_consumed(&mut self) {
        if let Some(s) = self.sum.as_mut() {
            s.update(&self.buf[self.hashed..self.pos]);
            self.hashed = self.pos;
        }
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
            let rest = match data.strip_prefix(MAGIC2) {
                Some(_) => {
                    if data.len() < MAGIC2.len() + 8 {
                        return Err(Error::bad_input("truncated"));
                    }
                    let (body, sum) = data.split_at(data.len() - 8);
                    let mut s = Sum::new();
                    s.update(body);
                    if sum != s.finish().to_le_bytes() {
                        return Err(Error::bad_input("checksum mismatch"));
                    }
                    &body[MAGIC2.len()..]
                }
                None => data
                    .strip_prefix(MAGIC)
                    .ok_or_else(|| Error::bad_input("not a manifest"))?,
            };
            let mut d = Dec::new(rest);
            let pair = d.string()?;
            let dg = d.string()?;
            let n = d.uv()?;
            let mut entries = Vec::with_capacity(n.min(1 << 20) as usize);
            for _ in 0..n {
                entries.push(Entry::decode(&mut d)?);
            }
            if !d.at_end() {
                return Err(Error::bad_input("trailing data"));
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
    /// without keeping a copy of the entries that equal a local one in all that "in sync"
    /// covers ([`Entry::in_sync_eq_ref`]: the digest's fields; not owner, inode or a
    /// directory's mtime, so the digest is unchanged): the record is then
    /// `local[i]` for every `in_local[i]`, plus `extra` (sorted). Decoded one entry at a
    /// time, in place, the file checked on the way (format 2: its checksum; format 1: its
    /// digest, recomputed). None when there is no usable record for `pair`.
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
            sum: None,
            hashed: 0,
        };
        let mut decode = || -> Result<Option<Record>> {
            r.fill(MAGIC.len())?;
            let v2 = r.buf[r.pos..].starts_with(MAGIC2);
            if !v2 && !r.buf[r.pos..].starts_with(MAGIC) {
                return Err(Error::bad_input("not a manifest"));
            }
            if v2 {
                r.sum = Some(Sum::new());
            }
            r.pos += MAGIC.len();
            if r.next(|d| Ok(d.str()? != pair))? {
                return Ok(None);
            }
            let dg = r.next(|d| d.string())?;
            let n = r.next(|d| d.uv())?;
            // Format 1: the digest is recomputed to check the file.
            let mut digester = (!v2).then(|| Digester::new(pair));
            let mut in_local = vec![false; local.len()];
            let mut extra = Vec::new();
            let mut j = 0;
            let mut last = String::new();
            for k in 0..n {
                let ordered = r.next_entry(|e| {
                    if k > 0 && last.as_str() >= e.path {
                        return false;
                    }
                    if let Some(dg) = digester.as_mut() {
                        dg.add_ref(&e);
                    }
                    while j < local.len() && local[j].path.as_str() < e.path {
                        j += 1;
                    }
                    if j < local.len() && local[j].in_sync_eq_ref(&e) {
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
            match digester {
                Some(digester) => {
                    if digester.finish() != dg {
                        return Err(Error::bad_input("digest mismatch"));
                    }
                }
                None => {
                    r.hash_consumed();
                    let want = r.sum.as_ref().map(Sum::finish);
                    r.fill(9)?;
                    let rest = &r.buf[r.pos..];
                    if rest.len() != 8
                        || Some(u64::from_le_bytes(rest.try_into().unwrap_or_default())) != want
                    {
                        return Err(Error::bad_input("checksum mismatch"));
                    }
                }
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

    /// Write durably, streamed (never a second copy of the record in memory), in format 2.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.save_as(path, MAGIC2, true)
    }

    /// [`Manifest::save`] without waiting for the disk: the receiver's record, written
    /// while the sender waits. Its files are durable before it is written, and losing it
    /// (an OS crash before the kernel writes it) leaves the previous record, or a damaged
    /// file, which counts as no record: an older record only claims what was in sync then
    /// (the next run compares full listings, the digests differ), no record deletes
    /// nothing. Either way no deletion is wrongly allowed.
    pub fn save_lazily(&self, path: &Path) -> Result<()> {
        self.save_as(path, MAGIC2, false)
    }

    fn save_as(&self, path: &Path, magic: &[u8], durable: bool) -> Result<()> {
        let v2 = magic == MAGIC2;
        super::fsops::write_file_atomic_with(path, durable, |w| {
            let mut sum = Sum::new();
            let mut e = Enc::new();
            e.buf.extend_from_slice(magic);
            e.str(&self.pair).str(&self.digest);
            e.uv(self.entries.len() as u64);
            for en in &self.entries {
                en.encode(&mut e);
                if e.len() >= 64 << 10 {
                    sum.update(&e.buf);
                    w.write_all(&e.buf)?;
                    e.buf.clear();
                }
            }
            sum.update(&e.buf);
            if v2 {
                e.buf.extend_from_slice(&sum.finish().to_le_bytes());
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

        // Another owner (a receiver that is not root, or other numeric ids) and a moved
        // directory mtime are not part of "in sync": represented by the listing, no copy.
        let mut local3 = local.clone();
        for e in local3.iter_mut() {
            e.uid = 1001;
            e.gid = 1001;
            e.ino += 7;
        }
        let mut dir = local3[0].clone();
        dir.kind = Kind::Dir;
        dir.path = "0-dir".to_string();
        dir.size = 0;
        let mut m3_entries = vec![dir.clone()];
        m3_entries.extend(m.entries.iter().cloned());
        let m3 = Manifest::new("a|b", m3_entries);
        m3.save(&path).unwrap();
        dir.mtime += 3600;
        local3.insert(0, dir);
        let r = Manifest::load_against(&path, "a|b", &local3)
            .unwrap()
            .unwrap();
        assert_eq!(r.digest, m3.digest);
        assert!(r.in_local.iter().all(|&x| x) && r.extra.is_empty());
        assert_eq!(
            Manifest::new("a|b", r.entries(&local3).into_iter().cloned().collect()).digest,
            m3.digest
        );
        // A mode change is: kept apart.
        local3[3].mode ^= 0o040;
        let r = Manifest::load_against(&path, "a|b", &local3)
            .unwrap()
            .unwrap();
        assert_eq!(r.extra.len(), 1);
        m.save(&path).unwrap();

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

    /// Format 1 records (written by earlier versions) are still read and checked by their
    /// digest; format 2 is what is written now. A damaged byte anywhere in either, a
    /// record cut short or with bytes appended, or another pair's: no record.
    #[test]
    fn both_formats_are_read_and_any_damage_is_caught() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("d.manifest");
        let entries: Vec<Entry> = (0..40)
            .map(|i| file(format!("u/Maildir/cur/{i:04}.M1P1.h,S={i}:2,S"), i))
            .collect();
        let m = Manifest::new("a|b", entries);
        let local = m.entries.clone();
        let load = |path: &Path| Manifest::load_against(path, "a|b", &local).unwrap();
        for magic in [MAGIC, MAGIC2] {
            m.save_as(&path, magic, true).unwrap();
            let good = std::fs::read(&path).unwrap();
            assert!(good.starts_with(magic));
            let r = load(&path).unwrap();
            assert_eq!(r.digest, m.digest);
            assert!(r.in_local.iter().all(|&x| x) && r.extra.is_empty());
            assert_eq!(Manifest::load(&path).unwrap().unwrap().digest, m.digest);
            assert!(Manifest::load_against(&path, "a|c", &local)
                .unwrap()
                .is_none());
            // Every byte damaged in turn (format 1: its digest leaves owners out, so only
            // the bytes of a path there).
            let flips: Vec<usize> = if magic == MAGIC2 {
                (0..good.len()).collect()
            } else {
                let at = good
                    .windows(18)
                    .position(|w| w == b"u/Maildir/cur/0007")
                    .unwrap();
                (at..at + 25).collect()
            };
            for i in flips {
                let mut bad = good.clone();
                bad[i] ^= 0x01;
                std::fs::write(&path, &bad).unwrap();
                let r = load(&path);
                // A flipped bit in the pair's text may make it another (foreign) pair:
                // no record either way.
                assert!(
                    r.is_none(),
                    "damage at byte {i} of {} not caught",
                    good.len()
                );
                assert!(Manifest::load(&path)
                    .unwrap()
                    .map_or(true, |x| x.pair != "a|b"
                        || x.digest != m.digest
                        || x.entries != m.entries));
            }
            for cut in 0..good.len() {
                std::fs::write(&path, &good[..cut]).unwrap();
                assert!(load(&path).is_none(), "cut at {cut} not caught");
            }
            // Bytes appended (format 1 never looked past its entries).
            let mut longer = good.clone();
            longer.extend_from_slice(b"x");
            std::fs::write(&path, &longer).unwrap();
            assert_eq!(load(&path).is_none(), magic == MAGIC2);
        }
        // The checksum over chunks of any size equals the one over the whole.
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut whole = Sum::new();
        whole.update(&data);
        for step in [1, 3, 31, 32, 33, 100] {
            let mut s = Sum::new();
            for c in data.chunks(step) {
                s.update(c);
            }
            assert_eq!(s.finish(), whole.finish());
        }
    }
}
