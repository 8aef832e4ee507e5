//! mailsync chapters: a tiny Maildir on storage-01 replicated to storage-02 with the
//! library's sender and receiver (`mailsync serve`), speaking the same framed protocol as
//! the local transport does over a child's stdin/stdout (here: a socket pair and a thread),
//! then deliveries, flag changes and expunges, and the way back after a failover.

use crate::{domain, Story, STORAGE1, STORAGE2};
use mailcluster::directory;
use mailcluster::names::Domain;
use mailcluster::sync::client::{self, DomainReport, SendOptions, Session};
use mailcluster::sync::promote::{self, DEFAULT_MARGIN};
use mailcluster::sync::scan::Filter;
use mailcluster::sync::server::{self, Fence, ServeOptions};
use mailcluster::sync::wire::Conn;
use mailcluster::sync::SyncMode;
use mailcluster::{Error, Result};
use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// One storage node's mail root (its /usr/mail) and directory database.
pub struct Node {
    pub name: &'static str,
    pub root: PathBuf,
    pub db_url: String,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(what, e)
}

/// The Maildir of ivanov@msk.domain.ru under a node's root.
fn maildir(root: &Path) -> PathBuf {
    root.join("msk.domain.ru/ivanov/Maildir")
}

/// A message body of a fixed size, and its Dovecot-style file name base.
fn message(n: u32, subject: &str) -> (String, Vec<u8>) {
    let body = format!(
        "From: boss@spb.domain.ru\r\nTo: ivanov@msk.domain.ru\r\nSubject: {subject}\r\n\
         Message-ID: <{n}@demo>\r\n\r\n{}\r\n",
        "Quarterly report attached. ".repeat(40)
    )
    .into_bytes();
    let base = format!(
        "17328672{n:02}.M{n}P1000.storage-01,S={},W={}",
        body.len(),
        body.len() + 40
    );
    (base, body)
}

/// Dovecot's `dovecot-uidlist`: header (version 3, UIDVALIDITY, next UID), then `UID :name`.
fn uidlist(next: u32, records: &[(u32, &str)]) -> Vec<u8> {
    let mut s = format!("3 V1732867200 N{next} G0123456789abcdef\n");
    for (uid, n) in records {
        s.push_str(&format!("{uid} :{n}\n"));
    }
    s.into_bytes()
}

/// Write a file with a fixed mtime (Dovecot's INTERNALDATE is the file's mtime).
fn put(path: &Path, data: &[u8], mtime: u64) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    std::fs::write(path, data).map_err(io(format!("writing {}", path.display())))?;
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .map_err(io(format!("opening {}", path.display())))?;
    f.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
        .map_err(io(format!("setting the mtime of {}", path.display())))
}

fn rename(dir: &Path, from: &str, to: &str) -> Result<()> {
    std::fs::rename(dir.join(from), dir.join(to)).map_err(io(format!("renaming {from}")))
}

/// Every file under a domain directory (state and tmp/ left out): path → (content, mtime).
fn tree(root: &Path, dom: &str) -> BTreeMap<String, (Vec<u8>, u64)> {
    let mut out = BTreeMap::new();
    let base = root.join(dom);
    for e in walkdir::WalkDir::new(&base).into_iter().flatten() {
        if !e.file_type().is_file() {
            continue;
        }
        let rel = e
            .path()
            .strip_prefix(&base)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if rel.contains("/tmp/") || rel.starts_with(".mailsync") {
            continue;
        }
        let data = std::fs::read(e.path()).unwrap_or_default();
        let mtime = e
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0);
        out.insert(rel, (data, mtime));
    }
    out
}

/// The receiving end's fence, as `mailsync serve` builds it: refuse a domain this node's
/// own directory says it is the primary of.
fn fence(node: &'static str, url: String) -> Fence {
    Box::new(move |d: &Domain| -> Result<()> {
        let mut dir = directory::open(&url, Duration::from_secs(5))?;
        if let Some(rec) = dir.route(d)? {
            if rec.primary == node {
                return Err(Error::denied(format!(
                    "this node ({node}) is the primary of {d} in its own directory; refusing \
                     to receive it (fencing)"
                )));
            }
        }
        Ok(())
    })
}

/// One `mailsync` run of one domain from `from` to `to`: the receiver (`mailsync serve
/// --root`) in a thread, the sender here, one framed protocol over a socket pair.
pub fn sync(from: &Node, to: &Node, dom: &Domain) -> Result<DomainReport> {
    let (a, b) = UnixStream::pair().map_err(io("creating a socket pair".into()))?;
    let a2 = a.try_clone().map_err(io("cloning a socket".into()))?;
    let opts = ServeOptions {
        root: to.root.clone(),
        state_dir: to.root.join(".mailsync"),
        node: to.name.to_string(),
        fence: Some(fence(to.name, to.db_url.clone())),
        sync: SyncMode::best(),
    };
    let receiver = std::thread::spawn(move || {
        let mut conn = Conn::new(a2, a);
        server::serve(&mut conn, opts)
    });
    let b2 = b.try_clone().map_err(io("cloning a socket".into()))?;
    let mut sess = Session::start(Conn::new(b2, b), to.name.to_string(), false, None)?;
    let send = SendOptions {
        root: from.root.clone(),
        state_dir: from.root.join(".mailsync"),
        node: from.name.to_string(),
        filter: Filter::new(Vec::new(), false),
        dry_run: false,
        adopt: false,
        sync: SyncMode::best(),
    };
    let report = client::sync_domain(&mut sess, &send, dom);
    let closed = sess.close();
    let served = receiver
        .join()
        .map_err(|_| Error::internal("the receiving thread panicked"))?;
    let report = report?;
    closed?;
    served?;
    Ok(report)
}

fn summary(r: &DomainReport) -> String {
    format!(
        "{} file(s) sent, {} bytes of data, {} rename(s), {} link(s), {} delete(s){}",
        r.files_sent,
        r.bytes_sent,
        r.renames,
        r.links,
        r.deletes,
        if r.conflicts.is_empty() {
            String::new()
        } else {
            format!(", {} kept (only there)", r.conflicts.len())
        }
    )
}

/// Chapter: storage-01 replicates msk.domain.ru to storage-02.
pub fn replicate(story: &mut Story, s1: &Node, s2: &Node) -> Result<()> {
    story.chapter("mailsync: storage-01 replicates msk.domain.ru to storage-02 (cron)");
    println!("   (the seed's cron line `mailrsync.pl storage-01 storage-02` becomes");
    println!("   `mailsync {STORAGE1} {STORAGE2}`; here sender and `mailsync serve` talk over");
    println!("   a socket pair, the same protocol as over SSH or a child's stdin/stdout)");
    let msk = domain("msk.domain.ru")?;
    let md = maildir(&s1.root);
    for root in [&s1.root, &s2.root] {
        std::fs::create_dir_all(root).map_err(io(format!("creating {}", root.display())))?;
    }
    let (m1, b1) = message(1, "Report");
    let (m2, b2) = message(2, "Lunch");
    let (m3, b3) = message(3, "Holidays");
    put(&md.join(format!("cur/{m1}:2,S")), &b1, 1_732_867_201)?;
    put(&md.join(format!("cur/{m2}:2,")), &b2, 1_732_867_202)?;
    put(&md.join(format!("new/{m3}")), &b3, 1_732_867_203)?;
    put(&md.join(".Sent/maildirfolder"), b"", 1_732_867_200)?;
    put(&md.join(".Sent/cur/.keep"), b"", 1_732_867_200)?;
    std::fs::create_dir_all(md.join("tmp")).map_err(io("creating tmp/".into()))?;
    put(
        &md.join("dovecot-uidlist"),
        &uidlist(4, &[(1, &m1), (2, &m2), (3, &m3)]),
        1_732_867_203,
    )?;
    println!("   storage-01: ivanov's Maildir holds 3 messages (one in new/), a .Sent folder,");
    println!("   Dovecot's dovecot-uidlist (IMAP UIDs, POP3 UIDLs).");

    let r = sync(s1, s2, &msk)?;
    let same = tree(&s1.root, "msk.domain.ru") == tree(&s2.root, "msk.domain.ru");
    story.check(
        r.ok && same && r.files_sent == 6,
        format!("first run: {}", summary(&r)),
    );
    story.check(
        same,
        "storage-02's copy equals storage-01's (names, contents, mtimes)".to_string(),
    );

    // A day of mail: one delivery, Dovecot moves new/ -> cur/, flags, expunges.
    let (m4, b4) = message(4, "New order");
    put(&md.join(format!("new/{m4}")), &b4, 1_732_867_204)?;
    rename(&md, &format!("new/{m3}"), &format!("cur/{m3}:2,S"))?;
    rename(&md, &format!("cur/{m1}:2,S"), &format!("cur/{m1}:2,RS"))?;
    std::fs::remove_file(md.join(format!("cur/{m2}:2,"))).map_err(io("expunging".into()))?;
    let uid = uidlist(5, &[(1, &m1), (3, &m3), (4, &m4)]);
    put(&md.join("dovecot-uidlist"), &uid, 1_732_867_205)?;
    println!("   On storage-01: a new message arrives, Dovecot moves one new/ -> cur/ (seen),");
    println!("   ivanov answers one (flag R) and expunges another.");
    let r = sync(s1, s2, &msk)?;
    let same = tree(&s1.root, "msk.domain.ru") == tree(&s2.root, "msk.domain.ru");
    let data = (b4.len() + uid.len()) as u64;
    story.check(
        r.ok && same && r.renames == 2 && r.deletes == 1 && r.bytes_sent == data,
        format!("second run: {}", summary(&r)),
    );
    story.check(
        r.bytes_sent == data,
        format!(
            "data sent = the new message ({} bytes) + dovecot-uidlist ({} bytes): renames sent no bodies",
            b4.len(),
            uid.len()
        ),
    );
    let r = sync(s1, s2, &msk)?;
    story.check(
        r.ok && r.files_sent == 0 && r.bytes_sent == 0 && r.renames == 0 && r.deletes == 0,
        format!("third run, nothing changed: {}", summary(&r)),
    );

    // Fencing: storage-02 is the primary of spb.domain.ru; it refuses to receive it.
    let spb = domain("spb.domain.ru")?;
    put(
        &s1.root.join("spb.domain.ru/smirnova/Maildir/cur/.keep"),
        b"",
        1_732_867_200,
    )?;
    let r = sync(s1, s2, &spb)?;
    story.check(
        !r.ok && r.errors.iter().any(|e| e.contains("fencing")),
        "pushing spb.domain.ru into storage-02 (its primary) is refused (fencing)".to_string(),
    );
    if let Some(e) = r.errors.first() {
        println!("     {e}");
    }
    std::fs::remove_dir_all(s1.root.join("spb.domain.ru")).map_err(io("cleaning up".into()))?;
    Ok(())
}

/// During the failover: `mailsync promote` on storage-02, then mail delivered to its copy
/// and a flag changed there. Returns the new message's file name and UID.
pub fn deliver_during_failover(story: &mut Story, s2: &Node) -> Result<(String, u32)> {
    let md = maildir(&s2.root);
    let (old, next) = promote::promote_uidlist(&md.join("dovecot-uidlist"), DEFAULT_MARGIN)?;
    story.check(
        old == 5 && next == 5 + DEFAULT_MARGIN,
        format!(
            "`mailsync promote msk.domain.ru` on storage-02: next IMAP UID {old} -> {next} \
             (UIDs storage-01 may have handed out after the last sync are never reused)"
        ),
    );
    let (m1, _) = message(1, "Report");
    let (m3, _) = message(3, "Holidays");
    let (m4, _) = message(4, "New order");
    let (m5, b5) = message(5, "Delivered during the failover");
    // What Dovecot on storage-02 does: deliver with the next UID, a flag change.
    put(&md.join(format!("new/{m5}")), &b5, 1_732_867_206)?;
    put(
        &md.join("dovecot-uidlist"),
        &uidlist(next + 1, &[(1, &m1), (3, &m3), (4, &m4), (next, &m5)]),
        1_732_867_206,
    )?;
    rename(&md, &format!("cur/{m1}:2,RS"), &format!("cur/{m1}:2,FRS"))?;
    story.check(
        true,
        format!("storage-02 (now primary) receives a message for ivanov (UID {next}); ivanov flags another"),
    );
    Ok((m5, next))
}

/// After rejoin, before failback: mailsync storage-02 -> storage-01 (the direction reversed).
pub fn sync_back(story: &mut Story, s1: &Node, s2: &Node, new_msg: &(String, u32)) -> Result<()> {
    let (new_msg, uid) = (new_msg.0.as_str(), new_msg.1);
    let msk = domain("msk.domain.ru")?;
    let r = sync(s2, s1, &msk)?;
    let t1 = tree(&s1.root, "msk.domain.ru");
    let same = t1 == tree(&s2.root, "msk.domain.ru");
    let (m1, _) = message(1, "Report");
    let (m2, _) = message(2, "Lunch");
    let arrived = t1.contains_key(&format!("ivanov/Maildir/new/{new_msg}"));
    let flagged = t1.contains_key(&format!("ivanov/Maildir/cur/{m1}:2,FRS"));
    let expunged_back = t1.keys().any(|k| k.contains(&m2));
    story.check(
        r.ok && same && arrived && flagged && !expunged_back,
        format!(
            "`mailsync {STORAGE2} {STORAGE1}` (reversed): {}",
            summary(&r)
        ),
    );
    story.check(
        arrived && flagged && !expunged_back,
        "the new message and the flag reached storage-01; the expunged message stayed gone"
            .to_string(),
    );
    let list = t1
        .get("ivanov/Maildir/dovecot-uidlist")
        .map(|(d, _)| String::from_utf8_lossy(d).to_string())
        .unwrap_or_default();
    story.check(
        list.contains(&format!("{uid} :{new_msg}")),
        format!(
            "storage-01's dovecot-uidlist came along: the message keeps UID {uid} (POP3 UIDLs too)"
        ),
    );
    Ok(())
}
