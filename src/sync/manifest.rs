//! The per-domain record of what was in sync after the last successful run, kept by both
//! ends (the sender in its state directory, the receiver in its own), so that a reversed
//! direction still knows what was in sync.

use super::entry::{digest, Entry};
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
