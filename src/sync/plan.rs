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
    /// The remote entries at no local path (sorted by path).
    pub remote_only: Vec<&'a Entry>,
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

/// Call `f` with the position of every message file of `list` (sorted by path) whose key is
/// `k`: the paths `FOLDER/cur/BASE` and `FOLDER/new/BASE`, bare or followed by `:` and the
/// info. Two binary searches: no index over the whole listing.
fn each_with_key<E: std::borrow::Borrow<Entry>>(list: &[E], k: Key, mut f: impl FnMut(usize)) {
    let (folder, base) = k;
    let mut prefix = String::with_capacity(folder.len() + base.len() + 5);
    for sub in ["cur/", "new/"] {
        prefix.clear();
        if !folder.is_empty() {
            prefix.push_str(folder);
            prefix.push('/');
        }
        prefix.push_str(sub);
        prefix.push_str(base);
        let lo = list.partition_point(|e| e.borrow().path.as_str() < prefix.as_str());
        for (i, e) in list[lo..].iter().enumerate() {
            let e = e.borrow();
            let Some(rest) = e.path.strip_prefix(prefix.as_str()) else {
                break;
            };
            if e.kind == Kind::File
                && (rest.is_empty() || (rest.starts_with(':') && !rest.contains('/')))
            {
                f(lo + i);
            }
        }
    }
}

/// Some message file of `list` has the key `k`.
fn has_key<E: std::borrow::Borrow<Entry>>(list: &[E], k: Key) -> bool {
    let mut found = false;
    each_with_key(list, k, |_| found = true);
    found
}

/// How a local message reaches the remote (first pass of the plan).
#[derive(Clone, Copy)]
enum Msg {
    /// At the same path on the remote but of another size: sent again.
    Resend,
    /// The remote file of the same key (flag change, new -> cur): a rename.
    Key(usize),
    /// Needs the remote files of the same base name (a move from another folder, a copy).
    Base,
}

/// Compute the plan. `local`, `remote` and `synced` are full listings sorted by path;
/// `synced` is the trusted record (None: no trustworthy record, so nothing is ever
/// deleted).
///
/// Linear in the listings: one merge of `local` and `remote` by path; only the entries
/// found on one side only (what changed since the record, a few per cent on a day of
/// activity) are then looked up by message key, with binary searches, and the remote is
/// indexed by base name only for the local messages that need it (moves and copies).
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

    // 0. Merge by path: the remote entry at each local path; the remote entries at no
    // local path (in the common case the record and the remote listing hold the very
    // entries of the local listing: pointer equality, no string comparison).
    let mut at: Vec<Option<&'a Entry>> = Vec::with_capacity(local.len());
    let mut r_only: Vec<usize> = Vec::new();
    {
        let mut j = 0;
        for l in local {
            while j < remote.len()
                && !std::ptr::eq(remote[j], l)
                && remote[j].path.as_str() < l.path.as_str()
            {
                r_only.push(j);
                j += 1;
            }
            if j < remote.len() && (std::ptr::eq(remote[j], l) || remote[j].path == l.path) {
                at.push(Some(remote[j]));
                j += 1;
            } else {
                at.push(None);
            }
        }
        r_only.extend(j..remote.len());
    }
    let in_local = |path: &str| find(local, path).is_some();

    // 1. Directories, parents first (paths are sorted).
    for (l, r) in local.iter().zip(&at).filter(|(e, _)| e.kind == Kind::Dir) {
        match r {
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

    // 2. Messages: links, renames/moves, then puts. First pass: what each local message
    // matches on the remote. `taken`: remote files renamed to a local name of the same key;
    // `moved`: remote files moved to another folder (links are made before renames, so a
    // taken file can still be the source of a link; a moved one is gone from its place).
    let mut taken: std::collections::HashSet<usize> = std::collections::HashSet::new();
    let mut moved: std::collections::HashSet<usize> = std::collections::HashSet::new();
    let mut msgs: Vec<(&'a Entry, Key<'a>, Msg)> = Vec::new();
    let mut others: Vec<(&'a Entry, Option<&'a Entry>)> = Vec::new();
    let mut need_base: std::collections::HashSet<&'a str> = std::collections::HashSet::new();
    for (l, r) in local.iter().zip(&at).filter(|(e, _)| e.kind != Kind::Dir) {
        // The very entry on both sides (in sync since the record): nothing to do, message
        // or not (most of a listing; its key is not even computed).
        if r.is_some_and(|r| std::ptr::eq(r, l)) {
            continue;
        }
        let key = if l.kind == Kind::File {
            message_key(&l.path)
        } else {
            None
        };
        let Some(k) = key else {
            others.push((l, *r));
            continue;
        };
        if let Some(r) = r.filter(|r| r.kind == Kind::File) {
            if r.size != l.size {
                msgs.push((l, k, Msg::Resend));
            }
            continue;
        }
        // The remote file of the same key (the last one, as before), unless it stays at a
        // local path of its own or was taken already.
        let mut found = None;
        each_with_key(remote, k, |i| {
            if !taken.contains(&i) && !in_local(&remote[i].path) {
                found = Some(i);
            }
        });
        match found {
            Some(i) => {
                taken.insert(i);
                msgs.push((l, k, Msg::Key(i)));
            }
            None => {
                need_base.insert(k.1);
                msgs.push((l, k, Msg::Base));
            }
        }
    }
    // The remote message files of the base names needed, in path order.
    let mut by_base: std::collections::HashMap<&str, Vec<usize>> = std::collections::HashMap::new();
    if !need_base.is_empty() {
        for (i, r) in remote.iter().enumerate() {
            if r.kind != Kind::File {
                continue;
            }
            if let Some((_, base)) = message_key(&r.path) {
                if need_base.contains(base) {
                    by_base.entry(base).or_default().push(i);
                }
            }
        }
    }
    // A remote message will go away here (a move's source): not here, in sync before.
    let leaving = |i: usize| -> bool {
        allow_delete
            && message_key(&remote[i].path)
                .is_some_and(|k| !has_key(local, k) && has_key(synced, k))
    };
    let mut links = Vec::new();
    let mut renames = Vec::new();
    let mut puts: Vec<&'a Entry> = Vec::new();
    for &(l, k, m) in &msgs {
        match m {
            Msg::Resend => puts.push(l),
            Msg::Key(i) => renames.push(Op::Rename {
                from: &remote[i].path,
                to: &l.path,
            }),
            Msg::Base => {
                // Same base name in another remote folder: a move (it is leaving there)
                // or a copy.
                let cands: &[usize] = by_base.get(k.1).map_or(&[], Vec::as_slice);
                if let Some(&i) = cands.iter().find(|&&i| !moved.contains(&i) && leaving(i)) {
                    moved.insert(i);
                    renames.push(Op::Rename {
                        from: &remote[i].path,
                        to: &l.path,
                    });
                    continue;
                }
                if let Some(&i) = cands
                    .iter()
                    .find(|&&i| remote[i].size == l.size && !moved.contains(&i))
                {
                    links.push(Op::Link {
                        from: &remote[i].path,
                        to: l,
                    });
                    continue;
                }
                puts.push(l);
            }
        }
    }
    drop(msgs);
    p.ops.extend(links);
    p.ops.extend(renames);
    // Hard links among the files sent: where each inode lands on the remote. Only inodes
    // that a put shares with another file matter.
    let mut put_inos: Vec<u64> = puts.iter().map(|l| l.ino).filter(|&i| i != 0).collect();
    put_inos.sort_unstable();
    let mut ino_at: std::collections::HashMap<u64, &'a str> = std::collections::HashMap::new();
    if !put_inos.is_empty() {
        for (l, r) in local.iter().zip(&at) {
            if l.kind == Kind::File
                && l.ino != 0
                && put_inos.binary_search(&l.ino).is_ok()
                && message_key(&l.path).is_some()
                && r.is_some_and(|r| r.kind == Kind::File && r.size == l.size)
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

    // 3. Remote files gone here (at no local path).
    let mut deletes = Vec::new();
    let mut rest_remote: Vec<&'a Entry> = Vec::new();
    for &i in &r_only {
        let r = remote[i];
        if r.kind == Kind::Dir {
            continue;
        }
        let key = if r.kind == Kind::File {
            message_key(&r.path)
        } else {
            None
        };
        match key {
            Some(k) => {
                if moved.contains(&i) || has_key(local, k) {
                    continue; // renamed to its local name above
                }
                if has_key(synced, k) {
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
    for (l, r) in others {
        match r {
            Some(r) if r.kind == Kind::Dir => p.problems.push(format!(
                "{}: a file here, a directory on the remote",
                l.path
            )),
            Some(r) if r.same(l) => {}
            _ => p.ops.push(Op::Put(l)),
        }
    }
    for r in rest_remote {
        if find(synced, &r.path).is_some() {
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
        let mut dirs: Vec<&'a Entry> = r_only
            .iter()
            .map(|&i| remote[i])
            .filter(|e| e.kind == Kind::Dir && find(synced, &e.path).is_some())
            .collect();
        dirs.sort_by(|a, b| b.path.cmp(&a.path));
        p.ops.extend(dirs.into_iter().map(|d| Op::Rmdir(&d.path)));
    }

    if rules.adopt {
        p.fetch = p.conflicts.clone();
    }
    p.remote_only = r_only.into_iter().map(|i| remote[i]).collect();
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
    fn a_copy_links_from_an_original_whose_flags_changed_the_same_day() {
        // Remote: the original. Here: its flags changed, and a copy in another folder.
        let r = vec![f("u/Maildir/cur/1.a:2,S", 5)];
        let mut l = vec![
            f("u/Maildir/.Copy/cur/1.a:2,S", 5),
            f("u/Maildir/cur/1.a:2,FS", 5),
        ];
        l.sort_by(|a, b| a.path.cmp(&b.path));
        let p = plan(&l, &refs(&r), Some(&refs(&r)), ALL);
        assert_eq!(p.puts(), 0);
        // The link is made before the rename takes its source away.
        assert_eq!(
            p.ops,
            vec![
                Op::Link {
                    from: &r[0].path,
                    to: &l[0]
                },
                Op::Rename {
                    from: &r[0].path,
                    to: &l[1].path
                }
            ]
        );
    }

    #[test]
    fn a_remote_file_staying_at_its_path_is_never_renamed_away() {
        // A duplicate key here (new/ and cur/): the remote cur/ file stays where it is.
        let r = vec![f("u/Maildir/cur/1.a:2,S", 5)];
        let l = vec![f("u/Maildir/cur/1.a:2,S", 5), f("u/Maildir/new/1.a", 5)];
        let p = plan(&l, &refs(&r), Some(&refs(&r)), ALL);
        assert_eq!(p.renames(), 0);
        assert_eq!(
            p.ops,
            vec![Op::Link {
                from: &r[0].path,
                to: &l[1]
            }]
        );
        assert!(p.remote_only.is_empty());
    }

    #[test]
    fn keys_match_whole_base_names_only() {
        // "1.a" is a prefix of "1.ab": not the same message.
        let r = vec![f("u/Maildir/cur/1.ab:2,S", 5)];
        let l = vec![f("u/Maildir/cur/1.a:2,S", 5)];
        let p = plan(&l, &refs(&r), Some(&refs(&r)), ALL);
        assert_eq!(p.ops, vec![Op::Put(&l[0]), Op::Delete(&r[0].path)]);
        assert_eq!(p.remote_only, vec![&r[0]]);
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
