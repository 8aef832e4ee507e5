//! The Maildir-aware plan: from the local listing, the remote listing and the record of what
//! was in sync, the operations that make the remote equal to the local side without
//! destroying mail that exists in one place only.

use super::entry::{message_key, Entry, Kind};
use std::collections::{HashMap, HashSet};

/// One operation applied by the receiver, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create the directory (or fix its mode).
    Mkdir(Entry),
    /// Hard-link the remote file `from` to `to.path`.
    Link { from: String, to: Entry },
    /// Rename a remote file (flag change, new→cur, folder move).
    Rename { from: String, to: String },
    /// Send the file's content (messages into `tmp/` then renamed; control files under the
    /// uidlist lock).
    Put(Entry),
    /// Remove a remote file that was in sync and is gone here.
    Delete(String),
    /// Remove a remote directory that was in sync and is gone here (if empty).
    Rmdir(String),
}

/// The plan for one domain.
#[derive(Debug, Default)]
pub struct Plan {
    pub ops: Vec<Op>,
    /// Remote files never in sync and absent here: kept, reported.
    pub conflicts: Vec<Entry>,
    /// Deletes that the record allowed but the safety rules withheld.
    pub withheld: usize,
    /// Paths to copy back here (`--adopt`).
    pub fetch: Vec<Entry>,
    /// Unresolvable clashes (a file here where the remote has a directory, ...).
    pub problems: Vec<String>,
}

impl Plan {
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

/// Compute the plan. `local` and `remote` are full listings; `synced` the trusted record
/// (None: no trustworthy record, so nothing is ever deleted).
pub fn plan(local: &[Entry], remote: &[Entry], synced: Option<&[Entry]>, rules: Rules) -> Plan {
    let mut p = Plan::default();
    let allow_delete = rules.allow_delete && synced.is_some();

    // Index the remote.
    let rpath: HashMap<&str, &Entry> = remote.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut rmsg: HashMap<Key, &Entry> = HashMap::new();
    let mut rbase: HashMap<&str, Vec<&Entry>> = HashMap::new();
    for e in remote.iter().filter(|e| e.kind == Kind::File) {
        if let Some(k) = message_key(&e.path) {
            rmsg.insert(k, e);
            rbase.entry(k.1).or_default().push(e);
        }
    }
    // Index the record.
    let mut smsg: HashSet<Key> = HashSet::new();
    let mut spath: HashSet<&str> = HashSet::new();
    for e in synced.unwrap_or(&[]) {
        spath.insert(e.path.as_str());
        if e.kind == Kind::File {
            if let Some(k) = message_key(&e.path) {
                smsg.insert(k);
            }
        }
    }
    // Index the local side.
    let lpath: HashMap<&str, &Entry> = local.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut lmsg: HashSet<Key> = HashSet::new();
    for e in local.iter().filter(|e| e.kind == Kind::File) {
        if let Some(k) = message_key(&e.path) {
            lmsg.insert(k);
        }
    }

    // Remote messages that will go away (candidates for moves).
    let mut leaving: HashSet<&str> = HashSet::new();
    for (k, e) in &rmsg {
        if !lmsg.contains(k) && smsg.contains(k) && allow_delete {
            leaving.insert(e.path.as_str());
        }
    }

    // 1. Directories, parents first (paths are sorted).
    for l in local.iter().filter(|e| e.kind == Kind::Dir) {
        match rpath.get(l.path.as_str()) {
            Some(r) if r.kind == Kind::Dir => {
                if r.mode & 0o7777 != l.mode & 0o7777 {
                    p.ops.push(Op::Mkdir(l.clone()));
                }
            }
            Some(_) => p.problems.push(format!(
                "{}: a directory here, not a directory on the remote",
                l.path
            )),
            None => p.ops.push(Op::Mkdir(l.clone())),
        }
    }

    // 2. Messages: links, renames/moves, then puts.
    let mut links = Vec::new();
    let mut renames = Vec::new();
    let mut puts: Vec<&Entry> = Vec::new();
    let mut moved: HashSet<&str> = HashSet::new();
    // Where each local inode lands on the remote (to recreate hard links).
    let mut ino_at: HashMap<u64, String> = HashMap::new();
    for l in local.iter().filter(|e| e.kind == Kind::File) {
        if l.ino != 0
            && message_key(&l.path).is_some()
            && rpath
                .get(l.path.as_str())
                .is_some_and(|r| r.kind == Kind::File && r.size == l.size)
        {
            ino_at.entry(l.ino).or_insert_with(|| l.path.clone());
        }
    }
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
        if let Some(r) = rmsg.get(&k) {
            if r.path == l.path {
                if r.size != l.size {
                    puts.push(l);
                }
            } else {
                renames.push(Op::Rename {
                    from: r.path.clone(),
                    to: l.path.clone(),
                });
            }
            continue;
        }
        // Same base name in another remote folder: a move (it is leaving there) or a copy.
        let candidates = rbase.get(k.1).map(Vec::as_slice).unwrap_or(&[]);
        if let Some(r) = candidates
            .iter()
            .find(|r| leaving.contains(r.path.as_str()) && !moved.contains(r.path.as_str()))
        {
            moved.insert(r.path.as_str());
            renames.push(Op::Rename {
                from: r.path.clone(),
                to: l.path.clone(),
            });
            continue;
        }
        if let Some(r) = candidates
            .iter()
            .find(|r| r.size == l.size && !moved.contains(r.path.as_str()))
        {
            links.push(Op::Link {
                from: r.path.clone(),
                to: l.clone(),
            });
            continue;
        }
        puts.push(l);
    }
    p.ops.extend(links);
    p.ops.extend(renames);
    for l in puts {
        if l.ino != 0 {
            if let Some(first) = ino_at.get(&l.ino) {
                p.ops.push(Op::Link {
                    from: first.clone(),
                    to: l.clone(),
                });
                continue;
            }
            ino_at.insert(l.ino, l.path.clone());
        }
        p.ops.push(Op::Put(l.clone()));
    }

    // 3. Remote messages gone here.
    let mut deletes = Vec::new();
    let mut rest_remote: Vec<&Entry> = Vec::new();
    for r in remote.iter().filter(|e| e.kind != Kind::Dir) {
        if lpath.contains_key(r.path.as_str()) {
            continue;
        }
        let key = if r.kind == Kind::File {
            message_key(&r.path)
        } else {
            None
        };
        match key {
            Some(k) => {
                if lmsg.contains(&k) || moved.contains(r.path.as_str()) {
                    continue; // renamed to its local name above
                }
                if smsg.contains(&k) {
                    if allow_delete {
                        deletes.push(Op::Delete(r.path.clone()));
                    } else {
                        p.withheld += 1;
                    }
                } else {
                    p.conflicts.push(r.clone());
                }
            }
            None => rest_remote.push(r),
        }
    }

    // Expunges before the control files that no longer list them.
    p.ops.append(&mut deletes);

    // 4. Other files (control files, sieve, symlinks): whole, after the messages.
    for l in others {
        match rpath.get(l.path.as_str()) {
            Some(r) if r.kind == Kind::Dir => p.problems.push(format!(
                "{}: a file here, a directory on the remote",
                l.path
            )),
            Some(r) if r.same(l) => {}
            _ => p.ops.push(Op::Put(l.clone())),
        }
    }
    for r in rest_remote {
        if spath.contains(r.path.as_str()) {
            if allow_delete {
                deletes.push(Op::Delete(r.path.clone()));
            } else {
                p.withheld += 1;
            }
        } else {
            p.conflicts.push(r.clone());
        }
    }
    p.ops.extend(deletes);

    // 5. Remote directories gone here, deepest first.
    if allow_delete {
        let mut dirs: Vec<&Entry> = remote
            .iter()
            .filter(|e| {
                e.kind == Kind::Dir
                    && !lpath.contains_key(e.path.as_str())
                    && spath.contains(e.path.as_str())
            })
            .collect();
        dirs.sort_by(|a, b| b.path.cmp(&a.path));
        p.ops
            .extend(dirs.into_iter().map(|d| Op::Rmdir(d.path.clone())));
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

    const ALL: Rules = Rules {
        allow_delete: true,
        adopt: false,
    };

    #[test]
    fn flag_change_is_a_rename() {
        let l = vec![f("u/Maildir/cur/1.a,S=5:2,S", 5)];
        let r = vec![f("u/Maildir/new/1.a,S=5", 5)];
        let p = plan(&l, &r, Some(&r), ALL);
        assert_eq!(
            p.ops,
            vec![Op::Rename {
                from: r[0].path.clone(),
                to: l[0].path.clone()
            }]
        );
    }

    #[test]
    fn folder_move_is_a_rename_and_copy_is_a_link() {
        let r = vec![f("u/Maildir/cur/1.a:2,S", 5), f("u/Maildir/cur/2.a:2,S", 5)];
        let l = vec![
            f("u/Maildir/.Archive/cur/1.a:2,S", 5),
            f("u/Maildir/.Copy/cur/2.a:2,S", 5),
            f("u/Maildir/cur/2.a:2,S", 5),
        ];
        let p = plan(&l, &r, Some(&r), ALL);
        assert_eq!(p.renames(), 1);
        assert_eq!(p.links(), 1);
        assert_eq!(p.puts(), 0);
        assert_eq!(p.deletes(), 0);
    }

    #[test]
    fn deletes_only_what_was_in_sync() {
        let r = vec![f("u/Maildir/cur/1.a:2,", 5), f("u/Maildir/new/2.b", 5)];
        let synced = vec![f("u/Maildir/cur/1.a:2,", 5)];
        let p = plan(&[], &r, Some(&synced), ALL);
        assert_eq!(p.ops, vec![Op::Delete(r[0].path.clone())]);
        assert_eq!(p.conflicts.len(), 1);
        // No record: nothing deleted.
        let p = plan(&[], &r, None, ALL);
        assert_eq!(p.deletes(), 0);
        assert_eq!(p.conflicts.len(), 2);
        // Deletes withheld.
        let p = plan(&[], &r, Some(&synced), Rules::default());
        assert_eq!(p.deletes(), 0);
        assert_eq!(p.withheld, 1);
    }
}
