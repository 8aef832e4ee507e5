//! `mailsync promote`: after an unplanned failover, raise the next UID of every
//! `dovecot-uidlist` of a domain by a margin (under Dovecot's uidlist lock), so that UIDs the
//! lost primary handed out during the last sync window are never handed out again.

use super::fsops::{self, UidlistLock};
use crate::error::{Error, Result};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Default number of UIDs skipped.
pub const DEFAULT_MARGIN: u32 = 100_000;

/// Rewrite a uidlist text with the next UID raised by `margin`. Returns the new text and
/// (old next, new next).
pub fn raise_next_uid(text: &str, margin: u32) -> Result<(String, u32, u32)> {
    let (header, rest) = text.split_once('\n').unwrap_or((text, ""));
    let mut fields: Vec<String> = header.split(' ').map(str::to_string).collect();
    if fields.first().map(String::as_str) != Some("3") {
        return Err(Error::bad_input(format!(
            "unsupported dovecot-uidlist version in header {header:?}"
        )));
    }
    // Highest UID in the records.
    let max_uid = rest
        .lines()
        .filter_map(|l| l.split(' ').next()?.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    let mut old = None;
    for f in fields.iter_mut().skip(1) {
        if let Some(n) = f.strip_prefix('N') {
            let n: u32 = n
                .parse()
                .map_err(|_| Error::bad_input(format!("bad N field in {header:?}")))?;
            old = Some(n);
        }
    }
    let old = old.unwrap_or(0).max(max_uid.saturating_add(1)).max(1);
    let new = old
        .checked_add(margin)
        .ok_or_else(|| Error::bad_input("next UID would overflow"))?;
    let mut replaced = false;
    for f in fields.iter_mut().skip(1) {
        if f.starts_with('N') {
            *f = format!("N{new}");
            replaced = true;
        }
    }
    if !replaced {
        fields.push(format!("N{new}"));
    }
    let mut out = fields.join(" ");
    out.push('\n');
    out.push_str(rest);
    Ok((out, old, new))
}

/// Every `dovecot-uidlist` under `dir` (no symlinks followed, `tmp/` skipped).
pub fn find_uidlists(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| !(e.file_type().is_dir() && e.file_name() == "tmp"))
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file() && e.file_name() == "dovecot-uidlist")
        .map(|e| e.into_path())
        .collect()
}

/// Raise the next UID of one uidlist under its lock. Returns (old, new).
pub fn promote_uidlist(path: &Path, margin: u32) -> Result<(u32, u32)> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let _lock = UidlistLock::acquire(dir)?;
    let (data, meta) = fsops::read_bounded(path, 1 << 30)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    let text = String::from_utf8(data)
        .map_err(|_| Error::bad_input(format!("{} is not UTF-8", path.display())))?;
    let (out, old, new) = raise_next_uid(&text, margin)?;
    let tmp = dir.join(fsops::tmp_name());
    let r = (|| {
        use std::io::Write;
        let mut f = fsops::create_new(&tmp)?;
        f.write_all(out.as_bytes())
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        let _ = std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()));
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| Error::io("chmod", e))?;
        f.sync_all().map_err(|e| Error::io("fsync", e))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| Error::io(format!("cannot replace {}", path.display()), e))?;
        fsops::sync_dir(dir)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map(|_| (old, new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_next_uid() {
        let t = "3 V1234 N10 G0123abcd\n5 :a:2,S\n9 :b\n";
        let (out, old, new) = raise_next_uid(t, 1000).unwrap();
        assert_eq!((old, new), (10, 1010));
        assert_eq!(out, "3 V1234 N1010 G0123abcd\n5 :a:2,S\n9 :b\n");
        // N missing or too low: from the highest UID.
        let (out, old, _) = raise_next_uid("3 V1\n7 :x\n", 5).unwrap();
        assert_eq!(old, 8);
        assert!(out.starts_with("3 V1 N13\n"));
        assert!(raise_next_uid("1 2 3\n", 5).is_err());
    }
}
