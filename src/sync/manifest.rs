//! The per-domain record of what was in sync after the last successful run, kept by both
//! ends (the sender in its state directory, the receiver in its own), so that a reversed
//! direction still knows what was in sync.

use super::entry::{digest, Digester, Entry};
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
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        };
        let decode = || -> Result<Option<Record>> {
            let rest = data
                .strip_prefix(MAGIC)
                .ok_or_else(|| Error::bad_input("not a manifest"))?;
            let mut d = Dec::new(rest);
            if d.str()? != pair {
                return Ok(None);
            }
            let dg = d.string()?;
            let n = d.uv()?;
            let mut digester = Digester::new(pair);
            let mut in_local = vec![false; local.len()];
            let mut extra = Vec::new();
            let mut j = 0;
            let mut last: Option<String> = None;
            for _ in 0..n {
                let e = Entry::decode(&mut d)?;
                if last.as_deref().is_some_and(|l| l >= e.path.as_str()) {
                    return Err(Error::bad_input("entries out of order"));
                }
                digester.add(&e);
                while j < local.len() && local[j].path < e.path {
                    j += 1;
                }
                if j < local.len() && local[j].recorded_eq(&e) {
                    in_local[j] = true;
                    last = Some(e.path);
                } else {
                    last = Some(e.path.clone());
                    extra.push(e);
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
