//! mailsync with a real Dovecot: UIDs survive the copy, and `promote` makes Dovecot hand out
//! UIDs above everything the old primary could have used.
mod support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::dovecot::{user_ids, Dovecot};

const BIN: &str = env!("CARGO_BIN_EXE_mailsync");
const D: &str = "uid.example.ru";

fn body(root: &Path) -> String {
    format!(
        "passdb {{\n  driver = static\n  args = nopassword=y\n}}\n\
         userdb {{\n  driver = static\n  args = uid=mail gid=mail home={}/%d/%n\n}}\n\
         mail_location = maildir:~/Maildir\nfirst_valid_uid = 1\nfirst_valid_gid = 1\n",
        root.display()
    )
}

/// IMAP: LOGIN, SELECT INBOX, UID FETCH 1:* (FLAGS). Returns (UIDVALIDITY, [(uid, flags)]).
fn uids(port: u16) -> (u32, Vec<(u32, String)>) {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let mut cmd = |tag: &str, c: &str| -> Vec<String> {
        write!(w, "{tag} {c}\r\n").unwrap();
        let mut out = Vec::new();
        loop {
            let mut l = String::new();
            assert!(r.read_line(&mut l).unwrap() > 0, "imap closed");
            if l.starts_with(&format!("{tag} ")) {
                assert!(l.starts_with(&format!("{tag} OK")), "{c}: {l}");
                return out;
            }
            out.push(l.trim_end().to_string());
        }
    };
    cmd("a1", "LOGIN u@uid.example.ru x");
    let sel = cmd("a2", "SELECT INBOX");
    let validity = sel
        .iter()
        .find_map(|l| {
            l.split("[UIDVALIDITY ")
                .nth(1)
                .and_then(|x| x.split(']').next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap();
    let mut list = Vec::new();
    for l in cmd("a3", "UID FETCH 1:* (FLAGS)") {
        // * 1 FETCH (UID 5 FLAGS (\Seen))  (order of items may vary)
        let uid = l
            .split("UID ")
            .nth(1)
            .and_then(|x| x.split([' ', ')']).next())
            .and_then(|n| n.parse().ok());
        let flags = l
            .split("FLAGS (")
            .nth(1)
            .and_then(|x| x.split(')').next())
            .unwrap_or("")
            .to_string();
        if let Some(uid) = uid {
            list.push((uid, flags));
        }
    }
    cmd("a4", "LOGOUT");
    list.sort();
    (validity, list)
}

fn chown_tree(p: &Path) {
    let (uid, gid) = user_ids("mail");
    for e in walkdir::WalkDir::new(p) {
        let e = e.unwrap();
        std::os::unix::fs::lchown(e.path(), Some(uid), Some(gid)).unwrap();
    }
}

fn drop_message(md: &Path, name: &str) {
    let p = md.join("new").join(name);
    fs::write(&p, format!("From: a@b\r\nSubject: {name}\r\n\r\nhello\r\n")).unwrap();
    let (uid, gid) = user_ids("mail");
    std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).unwrap();
}

#[test]
fn dovecot_sees_the_same_uids_on_the_copy_and_promote_skips_ahead() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    let (a, b) = (root.join("a"), root.join("b"));
    let md = a.join(D).join("u/Maildir");
    for s in ["cur", "new", "tmp"] {
        fs::create_dir_all(md.join(s)).unwrap();
    }
    for i in 0..6 {
        drop_message(&md, &format!("170000000{i}.M{i}P1.src"));
    }
    fs::create_dir_all(&b).unwrap();
    chown_tree(&a);

    // Dovecot on the source assigns UIDs; flag one, expunge one (UIDs are not contiguous).
    let dva = root.join("dovecot-a");
    fs::create_dir_all(&dva).unwrap();
    let dovecot = Dovecot::start(&dva, &body(&a));
    let (v1, before) = uids(dovecot.imap_port);
    assert_eq!(before.len(), 6);
    {
        let s = TcpStream::connect(("127.0.0.1", dovecot.imap_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        w.write_all(
            b"a1 LOGIN u@uid.example.ru x\r\na2 SELECT INBOX\r\na3 UID STORE 2 +FLAGS (\\Flagged)\r\n\
              a4 UID STORE 3 +FLAGS (\\Deleted)\r\na5 EXPUNGE\r\na6 LOGOUT\r\n",
        )
        .unwrap();
        let mut all = String::new();
        loop {
            let mut l = String::new();
            if r.read_line(&mut l).unwrap_or(0) == 0 {
                break;
            }
            all.push_str(&l);
            if l.starts_with("a6 ") {
                break;
            }
        }
        assert!(all.contains("a5 OK"), "{all}");
    }
    let (v2, source) = uids(dovecot.imap_port);
    drop(dovecot);
    assert_eq!(v1, v2);
    assert_eq!(source.len(), 5);

    // Copy, then let a Dovecot serve the copy.
    let out = Command::new(BIN)
        .args([
            "--root",
            a.to_str().unwrap(),
            "--domain",
            D,
            b.to_str().unwrap(),
        ])
        .env_remove("MAILCLUSTER_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dvb = root.join("dovecot-b");
    fs::create_dir_all(&dvb).unwrap();
    let dovecot = Dovecot::start(&dvb, &body(&b));
    let (vb, copy) = uids(dovecot.imap_port);
    assert_eq!(
        (vb, &copy),
        (v1, &source),
        "UIDVALIDITY and UIDs/flags kept"
    );
    let max_before = copy.iter().map(|x| x.0).max().unwrap();

    // Unplanned failover: promote the copy, then a new delivery.
    let out = Command::new(BIN)
        .args([
            "promote",
            "--domain",
            D,
            "--root",
            b.to_str().unwrap(),
            "--margin",
            "1000",
        ])
        .env_remove("MAILCLUSTER_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop_message(&b.join(D).join("u/Maildir"), "1800000000.M1P1.backup");
    let (vp, after) = uids(dovecot.imap_port);
    drop(dovecot);
    assert_eq!(vp, v1);
    let new_uid = after.iter().map(|x| x.0).max().unwrap();
    assert!(
        new_uid > max_before + 1000,
        "new UID {new_uid} must skip the window (old max {max_before})"
    );
}
