//! Throwaway Dovecot 2.3 instances for tests (recipe: shared/reference/recipes.md §3).
//!
//! * [`Dovecot::start`]`(root, body)` writes `root/dovecot.conf` (a private base config:
//!   empty `base_dir`, own log, `auth_failure_delay = 0`, anvil penalty socket disabled, IMAP
//!   and POP3 on free 127.0.0.1 ports) followed by `body` (normally [`snippet`]s), then runs
//!   `dovecot -F -c CONF` as a child. Dropping the value kills the child and waits.
//!   For an instance shared by a whole test binary, keep it in a `static OnceLock` and call
//!   [`stop_at_exit`].
//! * [`snippet`]`(rel, paths)`: a file of `dovecot-snippets/` as printed, with only its paths
//!   replaced ([`Paths`]).
//! * [`doveadm_pw`]: a stored password produced by the real `doveadm pw`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The snippet directory of this repository.
pub const SNIPPETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dovecot-snippets");

/// The paths a snippet mentions, and what to put instead.
#[derive(Debug, Clone)]
pub struct Paths {
    /// replaces `/usr/local/bin/mailauth`
    pub mailauth: PathBuf,
    /// replaces `/etc/mailcluster/mailcluster.toml`
    pub config: PathBuf,
    /// replaces `/var/lib/mailcluster/users.passwd`
    pub passwd_file: PathBuf,
    /// replaces `/usr/mail`
    pub mail_root: PathBuf,
}

/// A snippet file (`storage/10-mailcluster-auth.conf`, ...) with its paths substituted.
pub fn snippet(rel: &str, paths: &Paths) -> String {
    let path = Path::new(SNIPPETS).join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.replace(
        "/usr/local/bin/mailauth",
        &paths.mailauth.display().to_string(),
    )
    .replace(
        "/etc/mailcluster/mailcluster.toml",
        &paths.config.display().to_string(),
    )
    .replace(
        "/var/lib/mailcluster/users.passwd",
        &paths.passwd_file.display().to_string(),
    )
    .replace("/usr/mail", &paths.mail_root.display().to_string())
}

/// `doveadm pw -s SCHEME` with the password on stdin (twice: doveadm asks to retype it).
/// Run `doveadm -c CONF ARGS...` (stdin empty).
pub fn doveadm_with<S: AsRef<std::ffi::OsStr>>(conf: &Path, args: &[S]) -> Output {
    Command::new("doveadm")
        .arg("-c")
        .arg(conf)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run doveadm")
}

/// A finished command's exit code (-1 for a signal) and its stdout then stderr.
pub fn code_and_text(o: &Output) -> (i32, String) {
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

pub fn doveadm_pw(scheme: &str, password: &str) -> String {
    let mut child = Command::new("doveadm")
        .args(["pw", "-s", scheme])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run doveadm pw");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        let _ = write!(stdin, "{password}\n{password}\n");
    }
    let out = child.wait_with_output().expect("doveadm pw");
    assert!(
        out.status.success(),
        "doveadm pw -s {scheme}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout).expect("utf8");
    // The stored form is the last line (a PLAIN value may contain spaces).
    s.trim_end_matches(['\n', '\r'])
        .lines()
        .last()
        .expect("doveadm pw printed nothing")
        .to_string()
}

/// `doveadm pw -t STORED` (the password on stdin): does Dovecot accept our stored form?
pub fn doveadm_pw_test(stored: &str, password: &str) -> bool {
    let mut child = Command::new("doveadm")
        .args(["pw", "-t", stored])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run doveadm pw -t");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        let _ = writeln!(stdin, "{password}");
    }
    let out = child.wait_with_output().expect("doveadm pw -t");
    out.status.success()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// uid/gid of a system user.
pub fn user_ids(name: &str) -> (u32, u32) {
    let c = std::ffi::CString::new(name).expect("name");
    // SAFETY: getpwnam with a NUL-terminated name; ids copied out at once.
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        assert!(!pw.is_null(), "no user {name}");
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}

/// chown a path to a system user.
pub fn chown_to(path: &Path, user: &str) {
    let (u, g) = user_ids(user);
    std::os::unix::fs::chown(path, Some(u), Some(g)).expect("chown");
}

/// A running private Dovecot.
pub struct Dovecot {
    pub root: PathBuf,
    pub conf: PathBuf,
    pub imap_port: u16,
    pub pop3_port: u16,
    child: Mutex<Option<Child>>,
}

static AT_EXIT: Mutex<Vec<&'static Dovecot>> = Mutex::new(Vec::new());

/// Stop `d` when the test binary exits (for instances kept in a `static`).
pub fn stop_at_exit(d: &'static Dovecot) {
    extern "C" fn stop_all() {
        if let Ok(list) = AT_EXIT.lock() {
            for d in list.iter() {
                d.stop();
            }
        }
    }
    let mut list = AT_EXIT.lock().unwrap_or_else(|p| p.into_inner());
    if list.is_empty() {
        // SAFETY: registering a plain extern "C" fn without captured state.
        unsafe {
            libc::atexit(stop_all);
        }
    }
    list.push(d);
}

impl Dovecot {
    /// Write the config under `root` (which must be traversable by the dovecot and mail
    /// users: mode 0755) and start Dovecot; returns once IMAP answers.
    pub fn start(root: &Path, body: &str) -> Dovecot {
        for attempt in 0..3 {
            let imap_port = free_port();
            let pop3_port = free_port();
            let run = root.join("run");
            let _ = std::fs::remove_dir_all(&run);
            let log = root.join("dovecot.log");
            let conf = root.join("dovecot.conf");
            let name = root
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let text = format!(
                r#"# Private Dovecot for tests (recipes.md §3), then the snippets under test.
instance_name = mc-{name}
base_dir = {run}
state_dir = {state}
log_path = {log}
info_log_path = {log}
protocols = imap pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_failure_delay = 0
auth_verbose = yes
default_login_user = dovenull
default_internal_user = dovecot
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
protocol lmtp {{
  postmaster_address = postmaster@example.test
}}

{body}
"#,
                run = run.display(),
                state = root.join("state").display(),
                log = log.display(),
            );
            std::fs::write(&conf, text).expect("write dovecot.conf");
            let check = Command::new("dovecot")
                .arg("-c")
                .arg(&conf)
                .arg("-n")
                .output()
                .expect("dovecot -n");
            assert!(
                check.status.success(),
                "dovecot -n rejects the config:\n{}",
                String::from_utf8_lossy(&check.stderr)
            );
            let child = Command::new("dovecot")
                .arg("-F")
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn dovecot -F");
            let d = Dovecot {
                root: root.to_path_buf(),
                conf,
                imap_port,
                pop3_port,
                child: Mutex::new(Some(child)),
            };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if d.exited() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", imap_port)).is_ok()
                    && run.join("auth-userdb").exists()
                {
                    return d;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let log_text = d.log();
            d.stop();
            if attempt < 2 && log_text.contains("in use") {
                continue;
            }
            panic!("dovecot did not start:\n{log_text}");
        }
        unreachable!()
    }

    fn exited(&self) -> bool {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Kill the master (SIGTERM) and wait for it. Idempotent.
    pub fn stop(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut c) = guard.take() {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let start = Instant::now();
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if start.elapsed() < Duration::from_secs(5) => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }

    /// The Dovecot log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("dovecot.log")).unwrap_or_default()
    }

    /// Run `doveadm -c CONF ARGS...`.
    pub fn doveadm(&self, args: &[&str]) -> Output {
        doveadm_with(&self.conf, args)
    }

    /// `doveadm auth test -x service=imap USER PASS`: (exit code, stdout+stderr).
    pub fn auth_test(&self, user: &str, password: &str) -> (i32, String) {
        let o = self.doveadm(&[
            "auth",
            "test",
            "-x",
            "service=imap",
            "-x",
            "rip=127.0.0.2",
            user,
            password,
        ]);
        code_and_text(&o)
    }

    /// `doveadm user USER`: (exit code, output).
    pub fn user(&self, user: &str) -> (i32, String) {
        let o = self.doveadm(&["user", user]);
        code_and_text(&o)
    }

    /// The base_dir (sockets).
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A tiny IMAP client: LOGIN then SELECT INBOX; returns (login ok, EXISTS count).
pub fn imap_login_select(port: u16, user: &str, password: &str) -> (bool, Option<u32>) {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect imap");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("greeting");
    let quote = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
    write!(w, "a1 LOGIN {} {}\r\n", quote(user), quote(password)).expect("write");
    let tagged = |r: &mut BufReader<TcpStream>, tag: &str| -> (String, Vec<String>) {
        let mut untagged = Vec::new();
        loop {
            let mut l = String::new();
            if r.read_line(&mut l).unwrap_or(0) == 0 {
                return (String::new(), untagged);
            }
            if l.starts_with(tag) {
                return (l, untagged);
            }
            untagged.push(l);
        }
    };
    let (resp, _) = tagged(&mut r, "a1 ");
    if !resp.starts_with("a1 OK") {
        return (false, None);
    }
    write!(w, "a2 SELECT INBOX\r\n").expect("write");
    let (resp, untagged) = tagged(&mut r, "a2 ");
    let exists = untagged.iter().find_map(|l| {
        let l = l.trim_end();
        l.strip_prefix("* ")
            .and_then(|x| x.strip_suffix(" EXISTS"))
            .and_then(|n| n.parse().ok())
    });
    let _ = write!(w, "a3 LOGOUT\r\n");
    let mut rest = String::new();
    let _ = r.read_to_string(&mut rest);
    (resp.starts_with("a2 OK"), exists)
}

/// Deliver one message over LMTP on a unix socket; returns the reply to DATA (or the first
/// failing reply).
pub fn lmtp_deliver(socket: &Path, from: &str, to: &str, body: &str) -> String {
    use std::os::unix::net::UnixStream;
    let s = UnixStream::connect(socket).expect("connect lmtp");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let read_reply = |r: &mut BufReader<UnixStream>| -> String {
        let mut all = String::new();
        loop {
            let mut l = String::new();
            if r.read_line(&mut l).unwrap_or(0) == 0 {
                return all;
            }
            all.push_str(&l);
            if l.len() < 4 || l.as_bytes()[3] != b'-' {
                return all;
            }
        }
    };
    let greeting = read_reply(&mut r);
    assert!(greeting.starts_with("220"), "{greeting}");
    for cmd in [
        "LHLO test.local".to_string(),
        format!("MAIL FROM:<{from}>"),
        format!("RCPT TO:<{to}>"),
    ] {
        write!(w, "{cmd}\r\n").expect("write");
        let reply = read_reply(&mut r);
        if !reply.starts_with('2') {
            return reply;
        }
    }
    write!(w, "DATA\r\n").expect("write");
    let reply = read_reply(&mut r);
    if !reply.starts_with("354") {
        return reply;
    }
    write!(w, "{}\r\n.\r\n", body.replace('\n', "\r\n")).expect("write");
    let reply = read_reply(&mut r);
    let _ = write!(w, "QUIT\r\n");
    reply
}

/// Put the `mailauth` and `mailauth-checkpassword` binaries under `root` (hard links, else
/// copies), so that Dovecot's auth process (user `dovecot`) can run them even when the build
/// directory is not traversable by that user. Returns the path of `mailauth` (the client is
/// next to it, as the snippets expect).
pub fn install_mailauth(root: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    for (src, name) in [
        (env!("CARGO_BIN_EXE_mailauth"), "mailauth"),
        (
            env!("CARGO_BIN_EXE_mailauth-checkpassword"),
            "mailauth-checkpassword",
        ),
    ] {
        let dst = root.join(name);
        let _ = std::fs::remove_file(&dst);
        if std::fs::hard_link(src, &dst).is_err() {
            std::fs::copy(src, &dst).expect("copy mailauth");
        }
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    root.join("mailauth")
}
