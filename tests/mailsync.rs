//! mailsync end to end: the real binary, local transport (child `mailsync serve`) for most
//! tests, a throwaway OpenSSH sshd for the SSH ones.
mod support;

use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_mailsync");
const D: &str = "branch.example.ru";

struct Env {
    _tmp: tempfile::TempDir,
    a: PathBuf,
    b: PathBuf,
    sa: PathBuf,
    sb: PathBuf,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().to_path_buf();
    for d in ["a", "b", "sa", "sb"] {
        fs::create_dir(p.join(d)).unwrap();
    }
    Env {
        a: p.join("a"),
        b: p.join("b"),
        sa: p.join("sa"),
        sb: p.join("sb"),
        _tmp: tmp,
    }
}

fn maildir(root: &Path, user: &str, folder: &str) -> PathBuf {
    let mut p = root.join(D).join(user).join("Maildir");
    if !folder.is_empty() {
        p = p.join(format!(".{folder}"));
    }
    for s in ["cur", "new", "tmp"] {
        fs::create_dir_all(p.join(s)).unwrap();
    }
    if !folder.is_empty() {
        fs::write(p.join("maildirfolder"), "").unwrap();
    }
    p
}

fn set_mtime(p: &Path, secs: u64) {
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(t))
        .unwrap();
}

/// Deliver a message (Dovecot-style name with S=), returns its path.
fn deliver(md: &Path, sub: &str, base: &str, body: &[u8], info: &str) -> PathBuf {
    let name = format!("{base},S={}{info}", body.len());
    let p = md.join(sub).join(name);
    fs::write(&p, body).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    set_mtime(&p, 1_600_000_000 + body.len() as u64);
    p
}

fn uidlist(md: &Path, next: u32) {
    let mut s = format!("3 V1600000000 N{next} G0123456789abcdef\n");
    for e in fs::read_dir(md.join("cur")).unwrap().flatten() {
        s.push_str(&format!("1 :{}\n", e.file_name().to_string_lossy()));
    }
    fs::write(md.join("dovecot-uidlist"), s).unwrap();
}

/// `len` bytes of printable text (cheap to make in a debug build).
fn text(rng: &mut rand::rngs::StdRng, len: usize) -> Vec<u8> {
    let seed: Vec<u8> = (0..61).map(|_| rng.gen_range(32..127u8)).collect();
    seed.iter().copied().cycle().take(len).collect()
}

/// A small but varied tree.
fn populate(root: &Path, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for user in ["alice", "bob"] {
        for folder in ["", "Sent", "Archive"] {
            let md = maildir(root, user, folder);
            for i in 0..6 {
                let len = rng.gen_range(10..3000);
                let body = text(&mut rng, len);
                let base = format!("16000{i:05}.M{}P{}.host", rng.gen_range(0..999_999), i);
                if i % 2 == 0 {
                    deliver(&md, "cur", &base, &body, ":2,S");
                } else {
                    deliver(&md, "new", &base, &body, "");
                }
            }
            uidlist(&md, 100);
        }
        fs::write(
            root.join(D).join(user).join("Maildir/subscriptions"),
            "Sent\nArchive\n",
        )
        .unwrap();
    }
    // A big one (streamed, not inline).
    let md = maildir(root, "alice", "");
    deliver(
        &md,
        "cur",
        "1600099999.M1P1.host",
        &vec![b'x'; 400_000],
        ":2,",
    );
    // A Dovecot COPY: hard link with the same base name in another folder.
    let src = deliver(
        &md,
        "cur",
        "1600088888.M1P1.host",
        b"copied message",
        ":2,S",
    );
    let dst = root
        .join(D)
        .join("alice/Maildir/.Archive/cur")
        .join(src.file_name().unwrap());
    fs::hard_link(&src, &dst).unwrap();
    // Sieve with its active-script symlink; something in tmp/ and a lock file.
    let home = root.join(D).join("alice");
    fs::create_dir_all(home.join("sieve")).unwrap();
    fs::write(home.join("sieve/main.sieve"), "keep;\n").unwrap();
    std::os::unix::fs::symlink("sieve/main.sieve", home.join(".dovecot.sieve")).unwrap();
    fs::write(md.join("tmp/1600.partial.host"), "half").unwrap();
    fs::write(md.join("dovecot-uidlist.lock"), "").unwrap();
    let _ = fs::remove_file(md.join("dovecot-uidlist.lock"));
}

#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: char,
    mode: u32,
    mtime: Option<(i64, i64)>,
    content: Vec<u8>,
}

/// Names, kinds, modes, mtimes (files), contents, and hard-link groups of a domain tree
/// (tmp/ contents and our state excluded).
fn snapshot(dir: &Path) -> (BTreeMap<String, Node>, BTreeSet<Vec<String>>) {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel.contains("/tmp/") || rel.starts_with(".mailsync") {
            continue;
        }
        let m = fs::symlink_metadata(e.path()).unwrap();
        let (kind, content, mtime) = if m.is_dir() {
            ('d', vec![], None)
        } else if m.file_type().is_symlink() {
            (
                'l',
                fs::read_link(e.path())
                    .unwrap()
                    .to_string_lossy()
                    .as_bytes()
                    .to_vec(),
                None,
            )
        } else {
            inodes.entry(m.ino()).or_default().push(rel.clone());
            (
                'f',
                fs::read(e.path()).unwrap(),
                Some((m.mtime(), m.mtime_nsec())),
            )
        };
        out.insert(
            rel,
            Node {
                kind,
                mode: m.mode() & 0o7777,
                mtime,
                content,
            },
        );
    }
    let links = inodes
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    (out, links)
}

fn assert_equal(a: &Path, b: &Path) {
    assert_equal_in(a, b, D)
}

fn assert_equal_in(a: &Path, b: &Path, domain: &str) {
    let (sa, la) = snapshot(&a.join(domain));
    let (sb, lb) = snapshot(&b.join(domain));
    let only_a: Vec<_> = sa
        .keys()
        .filter(|k| !sb.contains_key(*k))
        .take(10)
        .collect();
    let only_b: Vec<_> = sb
        .keys()
        .filter(|k| !sa.contains_key(*k))
        .take(10)
        .collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "names differ: only in source {only_a:?}, only in copy {only_b:?}"
    );
    for (k, v) in &sa {
        let w = &sb[k];
        assert!(
            v == w,
            "{k} differs: {:?}/{:o}/{:?} vs {:?}/{:o}/{:?}",
            v.kind,
            v.mode,
            v.mtime,
            w.kind,
            w.mode,
            w.mtime
        );
    }
    assert_eq!(la, lb, "hard links differ");
}

/// Run mailsync; returns (exit code, JSON report or Null, stderr).
fn sync(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--json")
        .env_remove("MAILCLUSTER_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A → B with the local transport.
fn a_to_b(e: &Env, extra: &[&str]) -> (i32, Value, String) {
    let (a, b) = (e.a.to_str().unwrap(), e.b.to_str().unwrap());
    let mut args = vec!["--root", a, "--domain", D, b];
    args.extend_from_slice(extra);
    sync(&args)
}

/// B → A (the direction reversed after a failover).
fn b_to_a(e: &Env, extra: &[&str]) -> (i32, Value, String) {
    let (a, b) = (e.a.to_str().unwrap(), e.b.to_str().unwrap());
    let mut args = vec!["--root", b, "--domain", D, a];
    args.extend_from_slice(extra);
    sync(&args)
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

fn ok(r: (i32, Value, String)) -> Value {
    assert_eq!(r.0, 0, "exit code; stderr: {}; report: {}", r.2, r.1);
    r.1
}

#[test]
fn initial_copy_is_equal_and_second_run_sends_nothing() {
    let e = env();
    populate(&e.a, 1);
    let v = ok(a_to_b(&e, &[]));
    assert_equal(&e.a, &e.b);
    assert!(n(&v, "files_sent") > 30);
    assert_eq!(n(&v, "links"), 1, "{v}");
    // tmp/ contents never copied.
    assert!(!e
        .b
        .join(D)
        .join("alice/Maildir/tmp/1600.partial.host")
        .exists());
    let v = ok(a_to_b(&e, &[]));
    assert_eq!(n(&v, "files_sent"), 0);
    assert_eq!(n(&v, "bytes_sent"), 0);
    assert_eq!(n(&v, "renames") + n(&v, "deletes") + n(&v, "links"), 0);
    // Compressed: same result, nothing to send either.
    let v = ok(a_to_b(&e, &["--compress"]));
    assert_eq!(n(&v, "files_sent"), 0);
    assert_equal(&e.a, &e.b);
}

#[test]
fn changes_travel_as_renames_without_bodies() {
    let e = env();
    populate(&e.a, 2);
    ok(a_to_b(&e, &[]));
    let inbox = e.a.join(D).join("bob/Maildir");
    // Flag change, new -> cur, folder move, expunge, copy, new delivery.
    let cur: Vec<PathBuf> = fs::read_dir(inbox.join("cur"))
        .unwrap()
        .map(|x| x.unwrap().path())
        .collect();
    let new: Vec<PathBuf> = fs::read_dir(inbox.join("new"))
        .unwrap()
        .map(|x| x.unwrap().path())
        .collect();
    let flag = &cur[0];
    fs::rename(flag, flag.to_string_lossy().replace(":2,S", ":2,RS")).unwrap();
    let seen = &new[0];
    let name = seen.file_name().unwrap().to_string_lossy().into_owned();
    fs::rename(seen, inbox.join("cur").join(format!("{name}:2,S"))).unwrap();
    let moved = &cur[1];
    fs::rename(
        moved,
        inbox.join(".Archive/cur").join(moved.file_name().unwrap()),
    )
    .unwrap();
    fs::remove_file(&cur[2]).unwrap();
    let copied = &new[1];
    fs::hard_link(
        copied,
        inbox.join(".Sent/new").join(copied.file_name().unwrap()),
    )
    .unwrap();
    let body = b"a brand new message\r\n";
    deliver(&inbox, "new", "1700000000.M5P5.host", body, "");
    uidlist(&inbox, 200);
    let uidlist_len = fs::metadata(inbox.join("dovecot-uidlist")).unwrap().len();
    let v = ok(a_to_b(&e, &[]));
    assert_equal(&e.a, &e.b);
    assert_eq!(n(&v, "renames"), 3, "{v}");
    assert_eq!(n(&v, "links"), 1, "{v}");
    assert_eq!(n(&v, "deletes"), 1, "{v}");
    assert_eq!(n(&v, "files_sent"), 2, "{v}");
    // Only the new message and the changed uidlist: no message body travelled for renames.
    assert_eq!(n(&v, "bytes_sent"), body.len() as u64 + uidlist_len, "{v}");
    let v = ok(a_to_b(&e, &[]));
    assert_eq!(n(&v, "files_sent") + n(&v, "renames") + n(&v, "deletes"), 0);
}

/// A replaced control file keeps its inode as the spare of the next replacement (no inode
/// allocated or freed per control file); a spare linked elsewhere is never written into.
#[cfg(target_os = "linux")]
#[test]
fn replaced_control_files_trade_places_with_their_spares() {
    let e = env();
    populate(&e.a, 4);
    ok(a_to_b(&e, &[]));
    let src = e.a.join(D).join("bob/Maildir");
    let dst = e.b.join(D).join("bob/Maildir");
    let spare = dst.join("tmp/.mailsync-spare.dovecot-uidlist");
    let ino = |p: &Path| fs::symlink_metadata(p).unwrap().ino();
    assert!(!spare.exists(), "no spare before a replacement");

    let first = ino(&dst.join("dovecot-uidlist"));
    let old = fs::read(dst.join("dovecot-uidlist")).unwrap();
    deliver(&src, "cur", "1700000001.M1P1.host", b"one\r\n", ":2,S");
    uidlist(&src, 201);
    ok(a_to_b(&e, &[]));
    assert_equal(&e.a, &e.b);
    // The file replaced is the spare now, with its old content.
    assert_eq!(ino(&spare), first);
    assert_eq!(fs::read(&spare).unwrap(), old);
    let second = ino(&dst.join("dovecot-uidlist"));

    // A longer, then a shorter content: written into the spare, cut to its length.
    for (i, next) in [(2, 202), (3, 150)] {
        let before = ino(&dst.join("dovecot-uidlist"));
        let spare_before = ino(&spare);
        if next > 200 {
            deliver(
                &src,
                "cur",
                &format!("170000000{i}.M1P1.host"),
                b"two\r\n",
                ":2,S",
            );
            uidlist(&src, next);
        } else {
            fs::write(src.join("dovecot-uidlist"), "3 V1600000000 N150 G0\n").unwrap();
        }
        ok(a_to_b(&e, &[]));
        assert_equal(&e.a, &e.b);
        assert_eq!(ino(&dst.join("dovecot-uidlist")), spare_before);
        assert_eq!(ino(&spare), before);
    }
    assert!([first, second].contains(&ino(&dst.join("dovecot-uidlist"))));

    // A spare with another name elsewhere (a hard-linked snapshot) is left alone.
    let snapshot = e.b.join("snapshot-uidlist");
    fs::hard_link(&spare, &snapshot).unwrap();
    let kept = fs::read(&snapshot).unwrap();
    uidlist(&src, 300);
    ok(a_to_b(&e, &[]));
    assert_equal(&e.a, &e.b);
    assert_eq!(fs::read(&snapshot).unwrap(), kept);
    assert_ne!(ino(&dst.join("dovecot-uidlist")), ino(&snapshot));
}

#[test]
fn domains_prepared_ahead_and_records_saved_behind_stay_in_sync() {
    // One worker: every domain after the first is scanned (and its record loaded) while
    // the remote applies the one before, on both ends (the sender names the next domain in
    // its request; the receiver's view of a domain it had to create is not used), and each
    // record is written while the next domain starts. A flag change needs the uidlist lock
    // on both ends (taken by linking a lock source, removed at the end).
    let e = env();
    let names = ["d1.example.ru", "d2.example.ru", D];
    for (i, name) in names.iter().enumerate() {
        populate(&e.a, 10 + i as u64);
        if *name != D {
            fs::rename(e.a.join(D), e.a.join(name)).unwrap();
        }
    }
    let run = |e: &Env| {
        let (a, b) = (e.a.to_str().unwrap(), e.b.to_str().unwrap());
        let mut args = vec!["--root", a, "--jobs", "1"];
        for nm in names {
            args.extend(["--domain", nm]);
        }
        args.push(b);
        sync(&args)
    };
    let v = ok(run(&e));
    assert_eq!(n(&v, "domains"), 3);
    for nm in names {
        assert_equal_in(&e.a, &e.b, nm);
        for root in [&e.a, &e.b] {
            assert!(root.join(format!(".mailsync/{nm}.manifest")).exists());
        }
    }
    // A day in every domain: a flag change, a delivery, a rewritten uidlist.
    let mut sent = 0;
    for (i, nm) in names.iter().enumerate() {
        let inbox = e.a.join(nm).join("bob/Maildir");
        let mut cur: Vec<PathBuf> = fs::read_dir(inbox.join("cur"))
            .unwrap()
            .map(|x| x.unwrap().path())
            .collect();
        cur.sort();
        fs::rename(&cur[0], cur[0].to_string_lossy().replace(":2,S", ":2,RS")).unwrap();
        let body = format!("new mail {i}\r\n");
        deliver(
            &inbox,
            "new",
            &format!("17000000{i}.M1P1.host"),
            body.as_bytes(),
            "",
        );
        uidlist(&inbox, 300);
        sent += body.len() as u64 + fs::metadata(inbox.join("dovecot-uidlist")).unwrap().len();
    }
    let v = ok(run(&e));
    assert_eq!(n(&v, "renames"), 3, "{v}");
    assert_eq!(n(&v, "files_sent"), 6, "{v}");
    assert_eq!(n(&v, "bytes_sent"), sent, "{v}");
    for nm in names {
        assert_equal_in(&e.a, &e.b, nm);
    }
    // Both records were written: the next run trusts them and has nothing to do.
    let v = ok(run(&e));
    assert_eq!(n(&v, "files_sent") + n(&v, "renames") + n(&v, "deletes"), 0);
    for d in v["per_domain"].as_array().unwrap() {
        assert_eq!(d["trusted_record"], Value::Bool(true), "{d}");
    }
    // No lock source left behind on either end.
    for root in [&e.a, &e.b] {
        for nm in names {
            let left: Vec<String> = fs::read_dir(root.join(nm))
                .unwrap()
                .map(|x| x.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|x| x.starts_with(".mailsync-tmp"))
                .collect();
            assert!(left.is_empty(), "{nm}: {left:?}");
        }
    }
}

/// The receiver's two ways to make files durable: `--fsync file` (fsync each file and
/// directory; the only one off Linux) and the default here, `filesystem` (syncfs per batch).
#[test]
fn per_file_fsync_mode_copies_the_same() {
    let e = env();
    populate(&e.a, 11);
    let serve = format!("{BIN} serve --no-fence --fsync file");
    let v = ok(a_to_b(&e, &["--remote-command", &serve]));
    assert!(n(&v, "files_sent") > 30, "{v}");
    assert_equal(&e.a, &e.b);
    let inbox = e.a.join(D).join("bob/Maildir");
    let body = b"delivered between runs\r\n";
    deliver(&inbox, "new", "1700000100.M7P7.host", body, "");
    uidlist(&inbox, 300);
    let v = ok(a_to_b(&e, &["--remote-command", &serve]));
    assert_eq!(n(&v, "files_sent"), 2, "{v}");
    assert_equal(&e.a, &e.b);
    // Then the default mode on the same copy: nothing left to do.
    let v = ok(a_to_b(&e, &[]));
    assert_eq!(n(&v, "files_sent") + n(&v, "renames") + n(&v, "deletes"), 0);
    // A bad setting is a configuration error that names the choices.
    let out = Command::new(BIN)
        .args([
            "serve",
            "--root",
            e.b.to_str().unwrap(),
            "--fsync",
            "sometimes",
        ])
        .env_remove("MAILCLUSTER_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"file\" or \"filesystem\""), "{err}");
}

#[test]
fn remote_only_mail_survives_and_is_adopted() {
    let e = env();
    populate(&e.a, 3);
    ok(a_to_b(&e, &[]));
    // Delivered on B only (during a failover).
    let bmd = e.b.join(D).join("alice/Maildir");
    let only = deliver(&bmd, "new", "1800000000.M9P9.other", b"only on b", "");
    let v = ok(a_to_b(&e, &[]));
    assert!(only.exists());
    assert_eq!(n(&v, "conflicts"), 1);
    assert_eq!(n(&v, "deletes"), 0);
    // --strict makes it a failure; status lists it.
    let (rc, _, _) = a_to_b(&e, &["--strict"]);
    assert_ne!(rc, 0);
    let st = Command::new(BIN)
        .args(["status", "--root", e.a.to_str().unwrap()])
        .output()
        .unwrap();
    let st = String::from_utf8_lossy(&st.stdout);
    assert!(st.contains("1800000000.M9P9.other"), "{st}");
    // --adopt copies it back here.
    let v = ok(a_to_b(&e, &["--adopt"]));
    assert_eq!(n(&v, "adopted"), 1, "{v}");
    let here =
        e.a.join(D)
            .join("alice/Maildir/new")
            .join(only.file_name().unwrap());
    assert_eq!(fs::read(&here).unwrap(), b"only on b");
    assert_equal(&e.a, &e.b);
    let v = ok(a_to_b(&e, &[]));
    assert_eq!(n(&v, "conflicts"), 0);
}

#[test]
fn scan_errors_and_emptied_domains_delete_nothing() {
    let e = env();
    populate(&e.a, 4);
    ok(a_to_b(&e, &[]));
    let md = e.a.join(D).join("alice/Maildir");
    let victim = fs::read_dir(md.join("cur"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    fs::remove_file(victim.path()).unwrap();
    // A name the scanner cannot handle is a scan error (root ignores permissions).
    use std::os::unix::ffi::OsStrExt;
    let bad = md
        .join("cur")
        .join(std::ffi::OsStr::from_bytes(b"bad\xff:2,S"));
    fs::write(&bad, "x").unwrap();
    let (rc, v, _) = a_to_b(&e, &[]);
    assert_ne!(rc, 0);
    assert_eq!(n(&v, "deletes"), 0);
    assert!(e
        .b
        .join(D)
        .join("alice/Maildir/cur")
        .join(victim.file_name())
        .exists());
    fs::remove_file(&bad).unwrap();
    // Emptied local domain (e.g. an unmounted disk): nothing deleted either.
    for entry in fs::read_dir(e.a.join(D)).unwrap() {
        fs::remove_dir_all(entry.unwrap().path()).unwrap();
    }
    let (rc, v, _) = a_to_b(&e, &[]);
    assert_ne!(rc, 0);
    assert_eq!(n(&v, "deletes"), 0);
    let (b, _) = snapshot(&e.b.join(D));
    assert!(b.len() > 30);
    // Missing local domain directory: same.
    fs::remove_dir(e.a.join(D)).unwrap();
    let (rc, v, _) = a_to_b(&e, &[]);
    assert_ne!(rc, 0);
    assert_eq!(n(&v, "deletes"), 0);
    assert_eq!(snapshot(&e.b.join(D)).0.len(), b.len());
}

#[test]
fn direction_reversal_keeps_expunges_and_flags() {
    let e = env();
    populate(&e.a, 5);
    ok(a_to_b(&e, &[]));
    // Failover: B is primary now; users change flags and expunge there.
    let md = e.b.join(D).join("bob/Maildir");
    let cur: Vec<PathBuf> = fs::read_dir(md.join("cur"))
        .unwrap()
        .map(|x| x.unwrap().path())
        .collect();
    let flagged = PathBuf::from(cur[0].to_string_lossy().replace(":2,S", ":2,FS"));
    fs::rename(&cur[0], &flagged).unwrap();
    fs::remove_file(&cur[1]).unwrap();
    let v = ok(b_to_a(&e, &[]));
    assert_equal(&e.a, &e.b);
    assert_eq!(n(&v, "deletes"), 1, "{v}");
    assert_eq!(n(&v, "renames"), 1, "{v}");
    assert_eq!(n(&v, "conflicts"), 0, "{v}");
    assert!(flagged.exists());
    // And back again: nothing comes back, nothing is reverted.
    let v = ok(a_to_b(&e, &[]));
    assert_eq!(
        n(&v, "files_sent") + n(&v, "renames") + n(&v, "deletes"),
        0,
        "{v}"
    );
    assert!(!cur[1].exists());
}

#[test]
fn a_second_run_says_already_running() {
    let e = env();
    populate(&e.a, 6);
    let host = hostname::get()
        .unwrap()
        .into_string()
        .unwrap()
        .to_lowercase();
    let name = format!("{host}-{}", e.b.display());
    let _held = mailcluster::sync::RunLock::acquire(&e.a.join(".mailsync"), &name).unwrap();
    let (rc, _, err) = a_to_b(&e, &[]);
    assert_eq!(rc, 75, "{err}");
    assert!(err.contains("already running"), "{err}");
}

#[test]
fn dry_run_changes_nothing() {
    let e = env();
    populate(&e.a, 7);
    let v = ok(a_to_b(&e, &["--dry-run"]));
    assert!(n(&v, "files_sent") > 30);
    assert!(!e.b.join(D).exists());
}

/// Drive `mailsync serve` by hand with hostile input.
#[test]
fn serve_never_leaves_its_root() {
    use mailcluster::sync::entry::{Entry, Kind};
    use mailcluster::sync::wire::{t, Dec, Enc};
    let e = env();
    let outside = e.sb.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::create_dir_all(e.b.join(D)).unwrap();
    std::os::unix::fs::symlink(&outside, e.b.join(D).join("evil")).unwrap();
    let cmd = vec![
        BIN.to_string(),
        "serve".to_string(),
        "--no-fence".to_string(),
    ];
    let (conn, keep) = mailcluster::sync::transport::local(&cmd, &e.b, 0).unwrap();
    let mut s =
        mailcluster::sync::client::Session::start(conn, "b".into(), false, Some(keep)).unwrap();
    let dir = Entry::bare_dir();
    // A domain name that is a path: refused.
    let mut f = Enc::new();
    f.str("../sb");
    dir.encode(&mut f);
    f.u8(0).str("x|y").uv(0);
    s.conn.send_flush(t::DOMAIN, &f.buf).unwrap();
    let p = s.conn.expect(t::DOMAIN_INFO).unwrap();
    assert_eq!(Dec::new(p).u8().unwrap(), 1);
    // A real domain, then hostile operations.
    let mut f = Enc::new();
    f.str(D);
    dir.encode(&mut f);
    f.u8(0).str("x|y").uv(0);
    s.conn.send_flush(t::DOMAIN, &f.buf).unwrap();
    let p = s.conn.expect(t::DOMAIN_INFO).unwrap();
    assert_eq!(Dec::new(p).u8().unwrap(), 0);
    s.conn.send_flush(t::LIST_REQ, &[1]).unwrap();
    loop {
        let (ty, _) = s.conn.recv().unwrap();
        if ty == t::LIST_END {
            break;
        }
    }
    let mut ops = Enc::new();
    let put = |ops: &mut Enc, path: &str| {
        let mut en = dir.clone();
        en.path = path.to_string();
        en.kind = Kind::File;
        en.mode = 0o600;
        ops.u8(4);
        en.encode(ops);
        ops.bytes(b"pwned");
    };
    put(&mut ops, "../../sb/outside/x1");
    put(&mut ops, "/tmp/x2");
    put(&mut ops, "evil/x3");
    put(&mut ops, "evil/cur/x4");
    ops.u8(3).str("evil").str("../../x5");
    ops.u8(6).str("evil/..");
    s.conn.send(t::OPS, &ops.buf).unwrap();
    s.conn.send_flush(t::END_OPS, &[]).unwrap();
    let p = s.conn.expect(t::OPS_RESULT).unwrap();
    let mut d = Dec::new(p);
    let applied = d.uv().unwrap();
    let errors = d.uv().unwrap();
    assert_eq!((applied, errors), (0, 6));
    s.conn.send_flush(t::ABORT, &[]).unwrap();
    s.close().unwrap();
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    assert!(!Path::new("/tmp/x2").exists());
    assert!(fs::symlink_metadata(e.b.join(D).join("evil"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn kill_9_never_leaves_partial_files_and_the_next_run_converges() {
    let e = env();
    populate(&e.a, 8);
    let md = e.a.join(D).join("alice/Maildir");
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let (a, b) = (e.a.to_str().unwrap(), e.b.to_str().unwrap());
    for round in 0..24 {
        // New mail (some big), flag changes and expunges between runs.
        for i in 0..8 {
            let len = if i == 0 {
                300_000
            } else {
                rng.gen_range(100..20_000)
            };
            let body = text(&mut rng, len);
            deliver(
                &md,
                "new",
                &format!("17{round:04}{i:04}.M1P1.host"),
                &body,
                "",
            );
        }
        let cur: Vec<PathBuf> = fs::read_dir(md.join("cur"))
            .unwrap()
            .map(|x| x.unwrap().path())
            .collect();
        if cur.len() > 5 {
            let _ = fs::remove_file(&cur[rng.gen_range(0..cur.len())]);
        }
        for x in fs::read_dir(md.join("new")).unwrap().take(3) {
            let p = x.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            fs::rename(&p, md.join("cur").join(format!("{name}:2,S"))).unwrap();
        }
        let mut child = Command::new(BIN)
            .args(["--root", a, "--domain", D, b])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..120_000)));
        let _ = child.kill();
        let _ = child.wait();
        // The receiver notices the closed pipe and stops; give it a moment.
        std::thread::sleep(Duration::from_millis(20));
        check_no_partial_files(&e.a, &e.b);
    }
    // Converges (serve may still be finishing: a retry is fine; up to 10 s on a loaded machine).
    let mut v = a_to_b(&e, &[]);
    for _ in 0..33 {
        if v.0 == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        v = a_to_b(&e, &[]);
    }
    ok(v);
    assert_equal(&e.a, &e.b);
    let v = ok(a_to_b(&e, &[]));
    assert_eq!(n(&v, "files_sent"), 0);
}

/// Every file in B's cur/ and new/ is complete: equal to A's file of the same base name.
fn check_no_partial_files(a: &Path, b: &Path) {
    let mut by_base: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for e in walkdir::WalkDir::new(a.join(D)) {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().is_file() {
            let base = name.split(':').next().unwrap().to_string();
            by_base.insert(base, fs::read(e.path()).unwrap());
        }
    }
    for e in walkdir::WalkDir::new(b.join(D)) {
        let Ok(e) = e else { continue };
        let parent = e
            .path()
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if !e.file_type().is_file() || (parent != "cur" && parent != "new") {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let base = name.split(':').next().unwrap();
        assert!(
            !name.starts_with(".mailsync-tmp"),
            "temp file visible: {}",
            e.path().display()
        );
        if let Some(want) = by_base.get(base) {
            assert_eq!(
                &fs::read(e.path()).unwrap(),
                want,
                "partial {}",
                e.path().display()
            );
        }
    }
}

#[test]
fn promote_raises_next_uid() {
    let e = env();
    populate(&e.a, 9);
    let out = Command::new(BIN)
        .args([
            "promote",
            "--domain",
            D,
            "--root",
            e.a.to_str().unwrap(),
            "--margin",
            "5000",
        ])
        .env_remove("MAILCLUSTER_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = fs::read_to_string(e.a.join(D).join("bob/Maildir/dovecot-uidlist")).unwrap();
    assert!(text.starts_with("3 V1600000000 N5100 G"), "{text}");
}

fn ssh_args<'a>(s: &'a support::sshd::Sshd, port: &'a str) -> Vec<&'a str> {
    vec![
        "--port",
        port,
        "-i",
        s.client_key.to_str().unwrap(),
        "--known-hosts",
        s.known_hosts.to_str().unwrap(),
        "--user",
        "root",
    ]
}

/// A sync of `e.a` to `e.b` over the test sshd (`mailsync serve --no-fence` on the far end):
/// `--domain` for each of `domains`, then `extra` options, then the node pair and the SSH
/// options.
fn ssh_sync_args(
    e: &Env,
    s: &support::sshd::Sshd,
    domains: &[&str],
    extra: &[&str],
) -> Vec<String> {
    let port = s.port.to_string();
    let mut args: Vec<String> = vec![
        "--root".into(),
        e.a.to_str().unwrap().into(),
        "--remote-root".into(),
        e.b.to_str().unwrap().into(),
        "--state-dir".into(),
        e.sa.to_str().unwrap().into(),
        "--remote-command".into(),
        format!("{BIN} serve --no-fence"),
    ];
    for d in domains {
        args.extend(["--domain".to_string(), d.to_string()]);
    }
    args.extend(extra.iter().map(|x| x.to_string()));
    args.extend(["node-a".to_string(), "127.0.0.1".to_string()]);
    args.extend(ssh_args(s, &port).into_iter().map(String::from));
    args
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn over_ssh_copies_and_checks_host_keys() {
    let s = support::sshd::sshd();
    let e = env();
    populate(&e.a, 10);
    let owned = ssh_sync_args(&e, s, &[D], &[]);
    let args = strs(&owned);
    let v = ok(sync(&args));
    assert!(n(&v, "wire_bytes") > n(&v, "bytes_sent") / 2);
    assert_equal(&e.a, &e.b);
    let mut compressed = args.clone();
    compressed.push("--compress");
    let v = ok(sync(&compressed));
    assert_eq!(n(&v, "files_sent"), 0);

    // A remote command that does not exist: the remote shell's message comes back.
    let mut missing = args.clone();
    let rc_i = missing
        .iter()
        .position(|x| *x == "--remote-command")
        .unwrap();
    missing[rc_i + 1] = "/nonexistent/mailsync serve";
    let (rc, v, _) = sync(&missing);
    assert_ne!(rc, 0);
    let msg = v["per_domain"][0]["errors"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("/nonexistent/mailsync"), "{msg}");

    // Unknown host key: refused, with the line to add.
    let empty = e.sa.join("empty_known_hosts");
    fs::write(&empty, "").unwrap();
    let mut bad = args.clone();
    let kh = bad.iter().position(|x| *x == "--known-hosts").unwrap();
    let empty_s = empty.to_str().unwrap().to_string();
    bad[kh + 1] = &empty_s;
    let (rc, v, _) = sync(&bad);
    assert_ne!(rc, 0);
    let msg = v["per_domain"][0]["errors"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("not in") && msg.contains(&s.host_key), "{msg}");
    // Changed host key: refused.
    let wrong = e.sa.join("wrong_known_hosts");
    let other = e.sa.join("otherkey");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(st.success());
    let other_pub = fs::read_to_string(other.with_extension("pub")).unwrap();
    let other_key: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    fs::write(
        &wrong,
        format!("[127.0.0.1]:{} {}\n", s.port, other_key.join(" ")),
    )
    .unwrap();
    let wrong_s = wrong.to_str().unwrap().to_string();
    bad[kh + 1] = &wrong_s;
    let (rc, v, _) = sync(&bad);
    assert_ne!(rc, 0);
    let msg = v["per_domain"][0]["errors"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("CHANGED"), "{msg}");
}

/// Another domain under `root`: a copy (`cp -a`) of the test domain D.
fn copy_domain(root: &Path, other: &str) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(root.join(D))
        .arg(root.join(other))
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn over_ssh_parallel_domains() {
    let s = support::sshd::sshd();
    let e = env();
    populate(&e.a, 11);
    // Two more domains, copies of the first.
    for other in ["two.example.ru", "three.example.ru"] {
        copy_domain(&e.a, other);
    }
    let owned = ssh_sync_args(
        &e,
        s,
        &[D, "two.example.ru", "three.example.ru"],
        &["--jobs", "3", "--compress"],
    );
    let v = ok(sync(&strs(&owned)));
    assert_eq!(n(&v, "domains"), 3);
    assert_equal(&e.a, &e.b);
    let (x, _) = snapshot(&e.a.join("three.example.ru"));
    let (y, _) = snapshot(&e.b.join("three.example.ru"));
    assert_eq!(x, y);
    let _ = SystemTime::now();
}

#[test]
fn over_ssh_one_session_carries_many_domains_pipelined() {
    // One worker over SSH: the sender sends the receiver a hint of the next domain while the
    // receiver is already answering the current one (its listing arrives as the hint goes
    // out). Flushing an ssh2 stream discards what was received and not yet read: the
    // transport must never do that, or both ends wait for each other.
    let s = support::sshd::sshd();
    let e = env();
    populate(&e.a, 12);
    let names = [
        "d1.example.ru",
        "d2.example.ru",
        "d3.example.ru",
        "d4.example.ru",
    ];
    for other in names {
        copy_domain(&e.a, other);
    }
    let domains: Vec<&str> = std::iter::once(D).chain(names).collect();
    for compress in [false, true, false] {
        let extra: &[&str] = if compress {
            &["--jobs", "1", "--compress"]
        } else {
            &["--jobs", "1"]
        };
        let owned = ssh_sync_args(&e, s, &domains, extra);
        let args = strs(&owned);
        let v = ok(sync(&args));
        assert_eq!(n(&v, "domains"), 5);
        for nm in names.iter().chain([&D]) {
            assert_equal_in(&e.a, &e.b, nm);
        }
        // Something to do next time in every domain (a rewritten uidlist, a delivery).
        for (i, nm) in names.iter().enumerate() {
            let inbox = e.a.join(nm).join("bob/Maildir");
            deliver(
                &inbox,
                "new",
                &format!("1700000{i}{compress}.M1P1.host"),
                b"hi\r\n",
                "",
            );
            uidlist(&inbox, 400);
        }
    }
}

#[test]
fn fencing_on_both_ends_and_domains_from_the_directory() {
    let e = env();
    let db = support::fixtures::sqlite_seed(&e.sa);
    let s1 = "storage-01.domain.ru";
    // Domains whose primary is storage-01, each with a little mail.
    let mine = [
        "msk.domain.ru",
        "kzn.domain.ru",
        "ekb.domain.ru",
        "old.domain.ru",
        "both.domain.ru",
    ];
    for d in mine {
        let md = e.a.join(d).join("u/Maildir/cur");
        fs::create_dir_all(&md).unwrap();
        fs::write(md.join("1.M1P1.h,S=2:2,S"), "hi").unwrap();
    }
    fs::create_dir_all(e.a.join("spb.domain.ru/u/Maildir/cur")).unwrap();
    let (a, b) = (e.a.to_str().unwrap(), e.b.to_str().unwrap());
    // The seed's call: LOCAL REMOTE, domains from the directory.
    let v = ok(sync(&["--db", &db, "--root", a, s1, b]));
    let got: BTreeSet<String> = v["per_domain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["domain"].as_str().unwrap().to_string())
        .collect();
    let mut want: BTreeSet<String> = mine.iter().map(|s| s.to_string()).collect();
    // An inactive domain is still replicated (its mail still exists); here it has no
    // directory on either side, which is fine.
    want.insert("gone.example.net".to_string());
    assert_eq!(got, want);
    assert!(e
        .b
        .join("msk.domain.ru/u/Maildir/cur/1.M1P1.h,S=2:2,S")
        .exists());
    assert!(!e.b.join("spb.domain.ru").exists());
    // The sender refuses a domain it is not the primary of; the others still go.
    let (rc, v, _) = sync(&[
        "--db",
        &db,
        "--root",
        a,
        "--domain",
        "spb.domain.ru",
        "--domain",
        "msk.domain.ru",
        s1,
        b,
    ]);
    assert_ne!(rc, 0);
    let per = v["per_domain"].as_array().unwrap();
    let spb = per.iter().find(|d| d["domain"] == "spb.domain.ru").unwrap();
    assert!(
        spb["errors"][0].as_str().unwrap().contains("fencing"),
        "{spb}"
    );
    let msk = per.iter().find(|d| d["domain"] == "msk.domain.ru").unwrap();
    assert_eq!(msk["ok"], true, "{msk}");
    // The receiver refuses a domain its own directory says it is the primary of.
    let serve = format!("{BIN} serve --db {db} --node {s1}");
    let (rc, v, _) = sync(&[
        "--root",
        a,
        "--domain",
        "msk.domain.ru",
        "--remote-command",
        &serve,
        "storage-02.domain.ru",
        b,
    ]);
    assert_ne!(rc, 0);
    let err = v["per_domain"][0]["errors"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("refused") && err.contains("fencing"), "{err}");
}

#[test]
fn over_ssh_with_a_forced_command_key() {
    let s = support::sshd::sshd();
    let e = env();
    populate(&e.a, 12);
    let port = s.port.to_string();
    let (a, sa) = (e.a.to_str().unwrap(), e.sa.to_str().unwrap());
    let key = s.restricted_key.to_str().unwrap();
    // The sender's own command and --remote-root are replaced by the forced command.
    let args = vec![
        "--root",
        a,
        "--remote-root",
        "/nonexistent",
        "--domain",
        D,
        "--state-dir",
        sa,
        "--port",
        &port,
        "-i",
        key,
        "--known-hosts",
        s.known_hosts.to_str().unwrap(),
        "--user",
        "root",
        "node-a",
        "127.0.0.1",
    ];
    let v = ok(sync(&args));
    assert!(n(&v, "files_sent") > 30);
    assert_equal(&e.a, &s.restricted_root);
    // The key runs nothing else: a shell command is fed to `mailsync serve` and fails.
    let out = Command::new("ssh")
        .args(["-p", &port, "-i", key, "-o"])
        .arg(format!("UserKnownHostsFile={}", s.known_hosts.display()))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
        ])
        .args(["-F", "/dev/null", "root@127.0.0.1", "id"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("uid=0"));
    assert!(!out.status.success());
}

#[test]
fn bwlimit_caps_the_sending_rate() {
    let e = env();
    let md = maildir(&e.a, "alice", "");
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let body: Vec<u8> = (0..300_000).map(|_| rng.gen()).collect();
    deliver(&md, "new", "1600000000.M1P1.host", &body, "");
    // 100 KiB/s: the limiter sleeps until every byte written is due, so the run cannot
    // end before bytes_sent / rate seconds (a lower bound only: no timing luck involved).
    let start = std::time::Instant::now();
    let v = ok(a_to_b(&e, &["--bwlimit", "100K"]));
    let took = start.elapsed().as_secs_f64();
    let sent = n(&v, "bytes_sent");
    assert_eq!(sent, 300_000, "{v}");
    let floor = sent as f64 / (100.0 * 1024.0);
    assert!(
        took >= floor,
        "{took:.2}s for {sent} bytes at 100K/s (floor {floor:.2}s)"
    );
    assert_equal(&e.a, &e.b);
    // A rate that does not parse is bad input (exit 64), before anything is sent.
    let (code, _, err) = a_to_b(&e, &["--bwlimit", "fast"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("rate"), "{err}");
}

/// Poll `cond` every 50 ms for up to `secs` seconds.
fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

#[test]
fn watch_repeats_rounds_until_sigterm() {
    let e = env();
    populate(&e.a, 7);
    let (a, b) = (e.a.to_str().unwrap(), e.b.to_str().unwrap());
    let mut child = Command::new(BIN)
        .args(["--root", a, "--domain", D, "--watch", "1", "--json", b])
        .env_remove("MAILCLUSTER_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = child.id() as i32;
    let stdout = child.stdout.take().unwrap();
    let mut child = Kill(child);
    // The first round copies the tree; a message delivered afterwards arrives in a later
    // round without starting mailsync again.
    let uidlist = e.b.join(D).join("alice/Maildir/dovecot-uidlist");
    assert!(wait_for(60, || uidlist.exists()), "no first round");
    let md = maildir(&e.a, "alice", "");
    let p = deliver(&md, "new", "1700000000.M1P1.host", b"later", "");
    let there = e.b.join(p.strip_prefix(&e.a).unwrap());
    assert!(
        wait_for(60, || there.exists()),
        "not replicated by a later round"
    );
    // SIGTERM ends it between rounds, with the last round's status.
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let mut status = None;
    assert!(wait_for(60, || {
        status = child.0.try_wait().unwrap();
        status.is_some()
    }));
    assert_eq!(status.unwrap().code(), Some(0));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut { stdout }, &mut out).unwrap();
    let rounds: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rounds.len() >= 2, "{out}");
    assert!(rounds.iter().all(|r| r["ok"] == true), "{out}");
    assert_equal(&e.a, &e.b);
}

#[test]
fn a_closed_stdout_is_not_a_crash() {
    use std::os::fd::FromRawFd;
    let e = env();
    populate(&e.a, 6);
    let (a, b) = (e.a.to_str().unwrap(), e.b.to_str().unwrap());
    // stdout: a pipe whose read end is closed before mailsync starts (`mailsync | head -0`,
    // without the race): every write gets EPIPE.
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe { libc::close(fds[0]) };
    let stdout = unsafe { Stdio::from_raw_fd(fds[1]) };
    let out = Command::new(BIN)
        .args(["--root", a, "--domain", D, "--json", b])
        .env_remove("MAILCLUSTER_CONFIG")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The copy was made all the same.
    assert_equal(&e.a, &e.b);
}
