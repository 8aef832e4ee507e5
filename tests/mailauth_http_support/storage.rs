//! Minimal Dovecot 2.3 storage instances for the mailauth http tests (beside
//! tests/support/dovecot.rs, whose instances run mailauth as their passdb): IMAP + POP3 on one loopback address, static
//! passdb/userdb (nginx has already checked the password through mailauth; what these prove
//! is *which* storage a login landed on, from each instance's log), own process group so a
//! test can SIGSTOP (hang) or kill the whole instance.
#![allow(dead_code)]
use crate::support::dovecot::{code_and_text, doveadm_with};
use crate::support::nginx::{kill_group, register_group, remove_at_exit};
use std::ffi::OsStr;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Storage {
    child: Child,
    /// Exim as the storage's SMTP service (optional).
    exim: Option<Child>,
    dir: tempfile::TempDir,
    pub name: String,
    pub ip: String,
    stopped: bool,
}

/// Ports (imap, pop3, smtp) free on every one of `ips`.
pub fn common_ports(ips: &[&str]) -> (u16, u16, u16) {
    let pick = || loop {
        let Ok(l) = TcpListener::bind((ips[0], 0)) else {
            continue;
        };
        let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
        if port != 0
            && ips[1..]
                .iter()
                .all(|ip| TcpListener::bind((*ip, port)).is_ok())
        {
            return port;
        }
    };
    let imap = pick();
    let pop3 = loop {
        let p = pick();
        if p != imap {
            break p;
        }
    };
    loop {
        let p = pick();
        if p != imap && p != pop3 {
            return (imap, pop3, p);
        }
    }
}

impl Storage {
    pub fn start(name: &str, ip: &str, imap: u16, pop3: u16) -> Storage {
        Self::start_with_smtp(name, ip, imap, pop3, None)
    }

    /// Also run an Exim daemon on `ip`:`smtp` (the storage's MTA, answering nginx's EHLO).
    pub fn start_with_smtp(
        name: &str,
        ip: &str,
        imap: u16,
        pop3: u16,
        smtp: Option<u16>,
    ) -> Storage {
        let auth = "passdb {\n  driver = static\n  args = nopassword=y\n}\nuserdb {\n  driver = static\n  args = uid=8 gid=8 home={root}/mail/%u\n}\n";
        Self::start_full(name, ip, imap, pop3, smtp, auth)
    }

    /// Dovecot whose passdb and userdb are the Lua script `script` asking mailauth at `url`
    /// (the Dovecot 2.4 path, run with 2.3's Lua auth).
    pub fn start_lua(
        name: &str,
        ip: &str,
        (imap, pop3): (u16, u16),
        script: &std::path::Path,
        url: &str,
    ) -> Storage {
        let auth = format!(
            "import_environment = $import_environment MAILAUTH_URL={url} MAILAUTH_TIMEOUT=3\n\
             passdb {{\n  driver = lua\n  args = file={s} blocking=yes\n}}\n\
             userdb {{\n  driver = lua\n  args = file={s} blocking=yes\n}}\n",
            s = script.display()
        );
        Self::start_full(name, ip, imap, pop3, None, &auth)
    }

    /// `doveadm auth test USER PASS` against this instance: (exit code, output).
    pub fn auth_test(&self, user: &str, pass: impl AsRef<OsStr>) -> (i32, String) {
        let conf = self.dir.path().join("dovecot.conf");
        let args = [
            OsStr::new("auth"),
            OsStr::new("test"),
            OsStr::new(user),
            pass.as_ref(),
        ];
        code_and_text(&doveadm_with(&conf, &args))
    }

    /// `doveadm user USER`: (exit code, output).
    pub fn user_lookup(&self, user: &str) -> (i32, String) {
        let conf = self.dir.path().join("dovecot.conf");
        code_and_text(&doveadm_with(&conf, &["user", user]))
    }

    fn start_full(
        name: &str,
        ip: &str,
        imap: u16,
        pop3: u16,
        smtp: Option<u16>,
        auth: &str,
    ) -> Storage {
        let dir = tempfile::Builder::new()
            .prefix("mailauth-dovecot.")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        remove_at_exit(root);
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755));
        }
        let mail = root.join("mail");
        std::fs::create_dir_all(&mail).expect("mail dir");
        let _ = Command::new("chown").arg("mail:mail").arg(&mail).status();
        let r = root.display();
        let conf = format!(
            r#"instance_name = {name}-{pid}
base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
info_log_path = {r}/dovecot.log
protocols = imap pop3
listen = {ip}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = 8
first_valid_gid = 8
mail_uid = mail
mail_gid = mail
mail_location = maildir:~/Maildir
login_greeting = {name} ready.
{auth}
service imap-login {{
  inet_listener imap {{
    address = {ip}
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {ip}
    port = {pop3}
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
"#,
            pid = std::process::id(),
            auth = auth.replace("{root}", &r.to_string()),
        );
        let conf_path = root.join("dovecot.conf");
        std::fs::write(&conf_path, conf).expect("write dovecot.conf");
        let child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(&conf_path)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dovecot");
        register_group(child.id());
        let exim = smtp.map(|port| start_exim(root, name, ip, port));
        let s = Storage {
            child,
            exim,
            dir,
            name: name.to_string(),
            ip: ip.to_string(),
            stopped: false,
        };
        let ok = crate::support::nginx::wait_until(Duration::from_secs(10), || {
            use std::io::Read;
            let Ok(mut c) = std::net::TcpStream::connect((ip, imap)) else {
                return false;
            };
            c.set_read_timeout(Some(Duration::from_millis(500))).ok();
            let mut buf = [0u8; 16];
            matches!(c.read(&mut buf), Ok(n) if n > 4 && buf.starts_with(b"* OK"))
        });
        assert!(ok, "dovecot {name} did not start: {}", s.log());
        s
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("dovecot.log")
    }

    /// Number of successful logins of `user` over `proto` ("imap-login"/"pop3-login").
    pub fn logins(&self, service: &str, user: &str) -> usize {
        let needle = format!("user=<{user}>");
        self.log()
            .lines()
            .filter(|l| l.contains(service) && l.contains("Login: ") && l.contains(&needle))
            .count()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child's process group.
        unsafe {
            libc::kill(-(self.child.id() as i32), sig);
        }
    }

    /// Freeze every process of the instance (the kernel still accepts connections).
    pub fn hang(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// EHLOs from nginx (server_name mail.example.test) that Exim logged. Health checks
    /// only read the greeting, so they do not count.
    pub fn smtp_connections(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("exim/log/mainlog"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("EHLO from mail.example.test"))
            .count()
    }

    /// Kill the whole instance.
    pub fn stop(&mut self) {
        if let Some(mut e) = self.exim.take() {
            kill_group(&mut e);
        }
        kill_group(&mut self.child);
        self.stopped = true;
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if !self.stopped {
            self.stop();
        }
    }
}

/// An Exim 4.96 daemon in the foreground on `ip`:`port` (private config, no /etc/exim4).
fn start_exim(root: &std::path::Path, name: &str, ip: &str, port: u16) -> Child {
    use std::os::unix::fs::PermissionsExt;
    let dir = root.join("exim");
    for sub in ["spool", "log"] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).expect("exim dir");
        // Exim drops to Debian-exim for its spool and log.
        let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777));
    }
    let d = dir.display();
    let conf = format!(
        r#"keep_environment =
exim_path = /usr/sbin/exim4
spool_directory = {d}/spool
log_file_path = {d}/log/%slog
primary_hostname = {name}.test
local_interfaces = <; {ip}
daemon_smtp_ports = {port}
tls_advertise_hosts =
acl_smtp_helo = helo
acl_smtp_rcpt = accept
begin acl
helo:
  accept logwrite = EHLO from $sender_helo_name
begin routers
begin transports
"#
    );
    let conf_path = dir.join("exim.conf");
    std::fs::write(&conf_path, conf).expect("write exim.conf");
    let child = Command::new("/usr/sbin/exim4")
        .arg("-C")
        .arg(&conf_path)
        .args(["-bdf", "-oP"])
        .arg(dir.join("exim.pid"))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn exim");
    register_group(child.id());
    let ok = crate::support::nginx::wait_until(Duration::from_secs(10), || {
        use std::io::Read;
        let Ok(mut c) = std::net::TcpStream::connect((ip, port)) else {
            return false;
        };
        c.set_read_timeout(Some(Duration::from_millis(500))).ok();
        let mut buf = [0u8; 8];
        matches!(c.read(&mut buf), Ok(n) if n >= 3 && buf.starts_with(b"220"))
    });
    assert!(ok, "exim on {ip}:{port} did not start");
    child
}
