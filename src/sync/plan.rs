//! The Maildir-aware plan: from the local listing, the remote listing and the record of what
//! was in sync, the operations that make the remote equal to the local side without
//! destroying mail that exists in one place only.

use super::entry::{message_key, Entry, Kind};

/// One operation applied by the receiver, in order. Operations borrow the listings they
/// were planned from (no per-message copies: memory stays bounded per message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// Create the directory (or fix its mode).
    Mkdir(&'a Entry),
    /// Hard-link the remote file `from` to `to.path`.
    Link { from: &'a str, to: &'a Entry },
    /// Rename a remote file (flag change, new→cur, folder move).
    Rename { from: &'a str, to: &'a str },
    /// Send the file's content (messages into `tmp/` then renamed; control files under the
    /// uidlist lock).
    Put(&'a Entry),
    /// Remove a remote file that was in sync and is gone here.
    Delete(&'a str),
    /// Remove a remote directory that was in sync and is gone here (if empty).
    Rmdir(&'a str),
}

/// The plan for one domain.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    pub ops: Vec<Op<'a>>,
    /// Remote files never in sync and absent here: kept, reported.
    pub conflicts: Vec<&'a Entry>,
    /// Deletes that the record allowed but the safety rules withheld.
    pub withheld: usize,
    /// Paths to copy back here (`--adopt`).
    pub fetch: Vec<&'a Entry>,
    /// Unresolvable clashes (a file here where the remote has a directory, ...).
    pub problems: Vec<String>,
}

impl Plan<'_> {
    pub fn count(&self, f: impl Fn(&Op) -> bool) -> usize {
        self.ops.iter().filter(|o| f(o)).count()
    }
    pub fn puts(&self) -> usize {
        self.count(|o| matches!(o, Op::Put(_)))
    }
    pub fn put_bytes(&self) -> u64 {
        self.ops
            .iter()
            .map(|o| match o {
                Op::Put(e) => e.size,
                _ => 0,
            })
            .sum()
    }
    pub fn renames(&self) -> usize {
        self.count(|o| matches!(o, Op::Rename { .. }))
    }
    pub fn links(&self) -> usize {
        self.count(|o| matches!(o, Op::Link { .. }))
    }
    pub fn deletes(&self) -> usize {
        self.count(|o| matches!(o, Op::Delete(_)))
    }
}

/// Inputs besides the listings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rules {
    /// Deletes are allowed (trusted record, clean local scan, local not emptied).
    pub allow_delete: bool,
    /// Copy remote-only never-synced files back here.
    pub adopt: bool,
}

type Key<'a> = (&'a str, &'a str);

/// Find `path` in a listing sorted by path.
fn find<'e, E: std::borrow::Borrow<Entry>>(list: &'e [E], path: &str) -> Option<&'e Entry> {
    list.binary_search_by(|e| e.borrow().path.as_str().cmp(path))
        .ok()
        .map(|i| list[i].borrow())
}

/// Compare message keys, whole or by base name only.
fn cmp_key(a: Key, b: Key, base_only: bool) -> std::cmp::Ordering {
    if base_only {
        a.1.cmp(b.1)
    } else {
        a.cmp(&b)
    }
}

/// A message file in an index: its position and where its key lies in its path (parsed
/// once: comparisons then cost no parsing). 16 bytes a message.
#[derive(Debug, Clone, Copy)]
struct MsgRef {
    i: u32,
    folder_len: u32,
    base_start: u32,
    base_len: u32,
}

fn key_at<'x, E: std::borrow::Borrow<Entry>>(list: &'x [E], m: &MsgRef) -> Key<'x> {
    let p = list[m.i as usize].borrow().path.as_str();
    let (bs, bl) = (m.base_start as usize, m.base_len as usize);
    (&p[..m.folder_len as usize], &p[bs..bs + bl])
}

/// A message index: the message files of `list`, sorted by key (or base name).
fn msg_index<E: std::borrow::Borrow<Entry>>(list: &[E], base_only: bool) -> Vec<MsgRef> {
    let mut v: Vec<MsgRef> = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let e = e.borrow();
        if e.kind != Kind::File {
            continue;
        }
        if let Some((folder, base)) = message_key(&e.path) {
            let start = base.as_ptr() as usize - e.path.as_ptr() as usize;
            v.push(MsgRef {
                i: i as u32,
                folder_len: folder.len() as u32,
                base_start: start as u32,
                base_len: base.len() as u32,
            });
        }
    }
    v.sort_by(|a, b| cmp_key(key_at(list, a), key_at(list, b), base_only));
    v
}

/// The positions in a message index whose key (or base name) equals `k`.
fn msg_range<E: std::borrow::Borrow<Entry>>(
    list: &[E],
    idx: &[MsgRef],
    base_only: bool,
    k: Key,
) -> std::ops::Range<usize> {
    let ord = |m: &MsgRef| cmp_key(key_at(list, m), k, base_only);
    let lo = idx.partition_point(|m| ord(m) == std::cmp::Ordering::Less);
    let hi = lo + idx[lo..].partition_point(|m| ord(m) == std::cmp::Ordering::Equal);
    lo..hi
}

/// Compute the plan. `local`, `remote` and `synced` are full listings sorted by path;
/// `synced` is the trusted record (None: no trustworthy record, so nothing is ever
/// deleted).
pub fn plan<'a>(
    local: &'a [Entry],
    remote: &[&'a Entry],
    synced: Option<&[&Entry]>,
    rules: Rules,
) -> Plan<'a> {
    let mut p = Plan::default();
    let allow_delete = rules.allow_delete && synced.is_some();
    let synced = synced.unwrap_or(&[]);
    debug_assert!(local.windows(2).all(|w| w[0].path <= w[1].path));
    debug_assert!(remote.windows(2).all(|w| w[0].path <= w[1].path));
    debug_assert!(synced.windows(2).all(|w| w[0].path <= w[1].path));

    // Indexes: sorted positions, binary searches (no per-message hash maps).
    let rmsg = msg_index(remote, false);
    let rbase = msg_index(remote, true);
    let smsg = msg_index(synced, false);
    let lmsg = msg_index(local, false);
    let rmsg_get = |k: Key| -> Option<&'a Entry> {
        // The last one, as a map built in order would keep.
        let r = msg_range(remote, &rmsg, false, k);
        r.last().map(|i| remote[rmsg[i].i as usize])
    };
    let in_smsg = |k: Key| !msg_range(synced, &smsg, false, k).is_empty();
    let in_lmsg = |k: Key| !msg_range(local, &lmsg, false, k).is_empty();
    let in_spath = |path: &str| find(synced, path).is_some();

    // Remote messages that will go away (candidates for moves), and those already moved:
    // one flag a remote entry.
    let mut leaving = vec![false; remote.len()];
    let mut moved = vec![false; remote.len()];
    if allow_delete {
        for m in &rmsg {
            let k = key_at(remote, m);
            if !in_lmsg(k) && in_smsg(k) {
                leaving[m.i as usize] = true;
            }
        }
    }

    // 1. Directories, parents first (paths are sorted).
    for l in local.iter().filter(|e| e.kind == Kind::Dir) {
        match find(remote, &l.path) {
            Some(r) if r.kind == Kind::Dir => {
                if r.mode & 0o7777 != l.mode & 0o7777 {
                    p.ops.push(Op::Mkdir(l));
                }
            }
            Some(_) => p.problems.push(format!(
                "{}: a directory here, not a directory on the remote",
                l.path
            )),
            None => p.ops.push(Op::Mkdir(l)),
        }
    }

    // 2. Messages: links, renames/moves, then puts.
    let mut links = Vec::new();
    let mut renames = Vec::new();
    let mut puts: Vec<&'a Entry> = Vec::new();
    let mut others = Vec::new();
    for l in local.iter().filter(|e| e.kind != Kind::Dir) {
        let Some(k) = (if l.kind == Kind::File {
            message_key(&l.path)
        } else {
            None
        }) else {
            others.push(l);
            continue;
        };
        if let Some(r) = rmsg_get(k) {
            if r.path == l.path {
                if r.size != l.size {
                    puts.push(l);
                }
            } else {
                renames.push(Op::Rename {
                    from: &r.path,
                    to: &l.path,
                });
            }
            continue;
        }
        // Same base name in another remote folder: a move (it is leaving there) or a copy.
        let cands = rbase[msg_range(remote, &rbase, true, k)]
            .iter()
            .map(|m| m.i);
        if let Some(i) = cands
            .clone()
            .find(|&i| leaving[i as usize] && !moved[i as usize])
        {
            moved[i as usize] = true;
            renames.push(Op::Rename {
                from: &remote[i as usize].path,
                to: &l.path,
            });
            continue;
        }
        if let Some(i) = cands
            .clone()
            .find(|&i| remote[i as usize].size == l.size && !moved[i as usize])
        {
            links.push(Op::Link {
                from: &remote[i as usize].path,
                to: l,
            });
            continue;
        }
        puts.push(l);
    }
    p.ops.extend(links);
    p.ops.extend(renames);
    // Hard links among the files sent: where each inode lands on the remote. Only inodes
    // that a put shares with another file matter.
    let mut put_inos: Vec<u64> = puts.iter().map(|l| l.ino).filter(|&i| i != 0).collect();
    put_inos.sort_unstable();
    let mut ino_at: std::collections::HashMap<u64, &'a str> = std::collections::HashMap::new();
    if !put_inos.is_empty() {
        for l in local.iter().filter(|e| e.kind == Kind::File) {
            if l.ino != 0
                && put_inos.binary_search(&l.ino).is_ok()
                && message_key(&l.path).is_some()
                && find(remote, &l.path).is_some_and(|r| r.kind == Kind::File && r.size == l.size)
            {
                ino_at.entry(l.ino).or_insert(&l.path);
            }
        }
    }
    let shared = |ino: u64| {
        let r = put_inos.partition_point(|&i| i < ino);
        put_inos.get(r + 1) == Some(&ino)
    };
    for l in puts {
        if l.ino != 0 {
            if let Some(first) = ino_at.get(&l.ino) {
                p.ops.push(Op::Link { from: first, to: l });
                continue;
            }
            if shared(l.ino) {
                ino_at.insert(l.ino, &l.path);
            }
        }
        p.ops.push(Op::Put(l));
    }
    drop(put_inos);

    // 3. Remote messages gone here.
    let mut deletes = Vec::new();
    let mut rest_remote: Vec<&'a Entry> = Vec::new();
    for (i, &r) in remote.iter().enumerate() {
        if r.kind == Kind::Dir || find(local, &r.path).is_some() {
            continue;
        }
        let key = if r.kind == Kind::File {
            message_key(&r.path)
        } else {
            None
        };
        match key {
            Some(k) => {
                if in_lmsg(k) || moved[i] {
                    continue; // renamed to its local name above
                }
                if in_smsg(k) {
                    if allow_delete {
                        deletes.push(Op::Delete(&r.path));
                    } else {
                        p.withheld += 1;
                    }
                } else {
                    p.conflicts.push(r);
                }
            }
            None => rest_remote.push(r),
        }
    }

    // Expunges before the control files that no longer list them.
    p.ops.append(&mut deletes);

    // 4. Other files (control files, sieve, symlinks): whole, after the messages.
    for l in others {
        match find(remote, &l.path) {
            Some(r) if r.kind == Kind::Dir => p.problems.push(format!(
                "{}: a file here, a directory on the remote",
                l.path
            )),
            Some(r) if r.same(l) => {}
            _ => p.ops.push(Op::Put(l)),
        }
    }
    for r in rest_remote {
        if in_spath(&r.path) {
            if allow_delete {
                deletes.push(Op::Delete(&r.path));
            } else {
                p.withheld += 1;
            }
        } else {
            p.conflicts.push(r);
        }
    }
    p.ops.extend(deletes);

    // 5. Remote directories gone here, deepest first.
    if allow_delete {
        let mut dirs: Vec<&'a Entry> = remote
            .iter()
            .copied()
            .filter(|e| e.kind == Kind::Dir && find(local, &e.path).is_none() && in_spath(&e.path))
            .collect();
        dirs.sort_by(|a, b| b.path.cmp(&a.path));
        p.ops.extend(dirs.into_iter().map(|d| Op::Rmdir(&d.path)));
    }

    if rules.adopt {
        p.fetch = p.conflicts.clone();
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str, size: u64) -> Entry {
        Entry {
            path: path.to_string(),
            kind: Kind::File,
            size,
            mtime: 1,
            mtime_ns: 0,
            mode: 0o600,
            uid: 0,
            gid: 0,
            ino: 0,
            target: None,
        }
    }

    fn refs(v: &[Entry]) -> Vec<&Entry> {
        v.iter().collect()
    }

    const ALL: Rules = Rules {
        allow_delete: true,
        adopt: false,
    };

    #[test]
    fn flag_change_is_a_rename() {
        let l = vec![f("u/Maildir/cur/1.a,S=5:2,S", 5)];
        let r = vec![f("u/Maildir/new/1.a,S=5", 5)];
        let p = plan(&l, &refs(&r), Some(&refs(&r)), ALL);
        assert_eq!(
            p.ops,
            vec![Op::Rename {
                from: &r[0].path,
                to: &l[0].path
            }]
        );
    }

    #[test]
    fn folder_move_is_a_rename_and_copy_is_a_link() {
        let r = vec![f("u/Maildir/cur/1.a:2,S", 5), f("u/Maildir/cur/2.a:2,S", 5)];
        let mut l = vec![
            f("u/Maildir/.Archive/cur/1.a:2,S", 5),
            f("u/Maildir/.Copy/cur/2.a:2,S", 5),
            f("u/Maildir/cur/2.a:2,S", 5),
        ];
        l.sort_by(|a, b| a.path.cmp(&b.path));
        let p = plan(&l, &refs(&r), Some(&refs(&r)), ALL);
        assert_eq!(p.renames(), 1);
        assert_eq!(p.links(), 1);
        assert_eq!(p.puts(), 0);
        assert_eq!(p.deletes(), 0);
    }

    #[test]
    fn deletes_only_what_was_in_sync() {
        let r = vec![f("u/Maildir/cur/1.a:2,", 5), f("u/Maildir/new/2.b", 5)];
        let synced = vec![f("u/Maildir/cur/1.a:2,", 5)];
        let p = plan(&[], &refs(&r), Some(&refs(&synced)), ALL);
        assert_eq!(p.ops, vec![Op::Delete(&r[0].path)]);
        assert_eq!(p.conflicts.len(), 1);
        // No record: nothing deleted.
        let p = plan(&[], &refs(&r), None, ALL);
        assert_eq!(p.deletes(), 0);
        assert_eq!(p.conflicts.len(), 2);
        // Deletes withheld.
        let p = plan(&[], &refs(&r), Some(&refs(&synced)), Rules::default());
        assert_eq!(p.deletes(), 0);
        assert_eq!(p.withheld, 1);
    }
}
