//! nginx test support: a throwaway nginx mail proxy (recipes.md §4) in front of a
//! `mailauth serve` child (this crate's binary), both foreground children killed and
//! reaped on drop (also on panic).
//!
//! * [`MailauthServe::start`] writes a config file, runs `mailauth serve --listen
//!   127.0.0.1:0 --listen unix:…` and reads the bound address from its stdout.
//! * [`Nginx::start`] runs `nginx -g 'daemon off;'` with the mail module, IMAP/POP3/SMTP
//!   listeners on free 127.0.0.1 ports and `auth_http` pointing at the given address.
//! * [`http_get`] sends one raw HTTP/1.0 request (nginx's shape) and returns the headers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

pub const MAIL_MODULE: &str = "/usr/lib/nginx/modules/ngx_mail_module.so";

/// Process groups of children that may outlive their owner (kept in `static`s): killed at
/// process exit. Every child here runs in its own process group.
static GROUPS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Files to remove at process exit (sockets of services kept in `static`s).
static FILES: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Remove `path` (a file, or a directory tree) when the test process exits: for services
/// kept in `static`s, whose destructors never run.
pub fn remove_at_exit(path: &Path) {
    register_group_hook();
    if let Ok(mut f) = FILES.lock() {
        f.push(path.to_path_buf());
    }
}

extern "C" fn kill_groups() {
    let groups: Vec<i32> = GROUPS.lock().map(|g| g.clone()).unwrap_or_default();
    for g in &groups {
        // SAFETY: signalling process groups we created.
        unsafe {
            libc::kill(-g, libc::SIGCONT);
            libc::kill(-g, libc::SIGKILL);
        }
    }
    // Reap the group leaders (our children) and give the rest a moment to die, so that
    // nothing writes into the directories removed below.
    let deadline = Instant::now() + Duration::from_secs(2);
    for g in &groups {
        loop {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            let r = unsafe { libc::waitpid(*g, &mut status, libc::WNOHANG) };
            if r != 0 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let files: Vec<PathBuf> = FILES.lock().map(|f| f.clone()).unwrap_or_default();
    for f in &files {
        for _ in 0..20 {
            let r = if f.is_dir() {
                std::fs::remove_dir_all(f)
            } else {
                std::fs::remove_file(f)
            };
            if r.is_ok() || !f.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Remember `pgid` for the exit hook.
pub fn register_group(pgid: u32) {
    register_group_hook();
    if let Ok(mut g) = GROUPS.lock() {
        g.push(pgid as i32);
    }
}

fn register_group_hook() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        // SAFETY: registering a plain extern "C" fn with no captured state.
        unsafe {
            libc::atexit(kill_groups);
        }
    });
}

/// Forget `pgid` (its owner stopped it).
pub fn unregister_group(pgid: u32) {
    if let Ok(mut g) = GROUPS.lock() {
        g.retain(|x| *x != pgid as i32);
    }
}

/// Kill a child's whole process group and reap the child.
pub fn kill_group(child: &mut Child) {
    let pgid = child.id();
    // SAFETY: signalling the process group we created for this child.
    unsafe {
        libc::kill(-(pgid as i32), libc::SIGCONT);
        libc::kill(-(pgid as i32), libc::SIGKILL);
    }
    let _ = child.wait();
    unregister_group(pgid);
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A free TCP port on `ip` (bound then released; callers retry on a lost race).
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// Wait until `cond` holds (polling), at most `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `mailauth serve` child process.
pub struct MailauthServe {
    child: Child,
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// The unix socket it also listens on.
    pub socket: PathBuf,
    log: PathBuf,
}

impl MailauthServe {
    /// Start with this configuration text (TOML; the directories must be in it).
    pub fn start(config: &str) -> MailauthServe {
        let dir = tempfile::Builder::new()
            .prefix("mailauth-http.")
            .tempdir()
            .expect("tempdir");
        remove_at_exit(dir.path());
        let conf = dir.path().join("mailcluster.toml");
        std::fs::write(&conf, config).expect("write config");
        {
            // It may hold secrets (a database password, [auth.http] secret).
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600))
                .expect("chmod config");
        }
        let socket = dir.path().join("http.sock");
        let log = dir.path().join("mailauth.log");
        let logfile = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_mailauth"))
            .arg("--config")
            .arg(&conf)
            .args([
                "serve",
                "--log",
                "stderr",
                "--listen",
                "127.0.0.1:0",
                "--listen",
            ])
            .arg(format!("unix:{}", socket.display()))
            .env("RUST_LOG", "info")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(logfile))
            .spawn()
            .expect("spawn mailauth serve");
        register_group(child.id());
        let stdout: ChildStdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
        let Some(addr) = first.strip_prefix("listening on ") else {
            kill_group(&mut child);
            panic!(
                "mailauth serve did not start: {first:?}; log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let addr = addr.to_string();
        // Drain the rest of stdout in the background so the child never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        MailauthServe {
            child,
            dir,
            addr,
            socket,
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log once it holds `needle` (or after 10 s): a request's log line is written
    /// after its answer is sent, so it may land just after the client has read the answer.
    pub fn log_with(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) || std::time::Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Send SIGTERM and wait (at most 10 s) for the exit; its status code.
    pub fn terminate(&mut self) -> Option<i32> {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// `GET /auth` with these headers (nginx's shape; values sent raw).
    pub fn auth(&self, headers: &[(&str, &[u8])]) -> Vec<(String, String)> {
        let mut req = b"GET /auth HTTP/1.0\r\nHost: localhost\r\n".to_vec();
        for (n, v) in headers {
            req.extend_from_slice(n.as_bytes());
            req.extend_from_slice(b": ");
            req.extend_from_slice(v);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");
        parse_headers(&http_raw(&self.addr, &req))
    }
}

impl Drop for MailauthServe {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// Send raw bytes, read the whole answer (the server closes the connection).
pub fn http_raw(addr: &str, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect to mailauth");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// The headers of a raw HTTP response (status line first, as ("", line)).
pub fn parse_headers(raw: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(raw);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut out = Vec::new();
    for (i, line) in head.split("\r\n").enumerate() {
        if i == 0 {
            out.push((String::new(), line.to_string()));
        } else if let Some((n, v)) = line.split_once(':') {
            out.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// The value of header `name` in `headers`.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Options of the nginx mail proxy.
#[derive(Debug, Clone, Default)]
pub struct NginxOptions {
    /// `auth_http` target, e.g. `127.0.0.1:8185/auth`.
    pub auth_http: String,
    /// `auth_http_header X-Auth-Key <secret>`.
    pub secret: Option<String>,
    /// Offer `smtp_auth none` too (unauthenticated SMTP reaches auth_http as method none).
    pub smtp_none: bool,
}

/// A throwaway nginx mail proxy (foreground child).
pub struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    pub imap: u16,
    pub pop3: u16,
    pub smtp: u16,
}

impl Nginx {
    pub fn start(opts: &NginxOptions) -> Nginx {
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(opts) {
                Ok(n) => return n,
                Err(e) => last = e, // lost a port race: retry with new ports
            }
        }
        panic!("nginx did not start: {last}");
    }

    fn try_start(opts: &NginxOptions) -> Result<Nginx, String> {
        let dir = tempfile::Builder::new()
            .prefix("mailauth-nginx.")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let root = dir.path();
        remove_at_exit(root);
        // nginx workers (www-data) must traverse the prefix.
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755));
        }
        std::fs::create_dir_all(root.join("logs")).map_err(|e| e.to_string())?;
        let (imap, pop3, smtp) = (
            free_port("127.0.0.1"),
            free_port("127.0.0.1"),
            free_port("127.0.0.1"),
        );
        let user = if is_root() {
            "user www-data www-data;"
        } else {
            ""
        };
        let secret = opts
            .secret
            .as_ref()
            .map(|s| format!("    auth_http_header X-Auth-Key \"{s}\";\n"))
            .unwrap_or_default();
        let smtp_auth = if opts.smtp_none {
            "login plain none"
        } else {
            "login plain"
        };
        let r = root.display();
        let conf = format!(
            r#"load_module {MAIL_MODULE};
pid {r}/nginx.pid;
error_log {r}/logs/error.log info;
lock_file {r}/nginx.lock;
worker_processes 1;
{user}
events {{ worker_connections 256; }}
mail {{
    server_name mail.example.test;
    auth_http {auth};
    auth_http_timeout 20s;
{secret}    proxy_pass_error_message on;
    xclient off;
    server {{
        listen 127.0.0.1:{imap};
        protocol imap;
        proxy on;
        imap_auth plain login;
    }}
    server {{
        listen 127.0.0.1:{pop3};
        protocol pop3;
        proxy on;
        pop3_auth plain;
    }}
    server {{
        listen 127.0.0.1:{smtp};
        protocol smtp;
        proxy on;
        smtp_auth {smtp_auth};
    }}
}}
"#,
            auth = opts.auth_http,
        );
        let conf_path = root.join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let mut child = Command::new("nginx")
            .arg("-p")
            .arg(format!("{r}/"))
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn nginx: {e}"))?;
        register_group(child.id());
        let ready = wait_until(Duration::from_secs(10), || {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            greets(imap, b"* OK") && greets(pop3, b"+OK") && greets(smtp, b"220")
        });
        if !ready || matches!(child.try_wait(), Ok(Some(_))) {
            kill_group(&mut child);
            let log = std::fs::read_to_string(root.join("logs/error.log")).unwrap_or_default();
            return Err(format!("nginx not ready: {log}"));
        }
        Ok(Nginx {
            child,
            dir,
            imap,
            pop3,
            smtp,
        })
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/error.log")).unwrap_or_default()
    }
}

fn greets(port: u16, prefix: &[u8]) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_millis(500))).ok();
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if n >= prefix.len() && buf.starts_with(prefix))
}

impl Drop for Nginx {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// A line-based client for IMAP/POP3/SMTP through the proxy.
pub struct LineClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LineClient {
    pub fn connect(port: u16) -> LineClient {
        Self::connect_from("127.0.0.1", port)
    }

    /// Connect to 127.0.0.1:`port` from the local address `src` (any 127.x.y.z works on
    /// Linux loopback): nginx then reports `src` as Client-IP.
    pub fn connect_from(src: &str, port: u16) -> LineClient {
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let src: std::net::SocketAddr = format!("{src}:0").parse().expect("source address");
        sock.bind(&src.into()).expect("bind source address");
        let dst: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        sock.connect(&dst.into()).expect("connect");
        let s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let writer = s.try_clone().expect("clone");
        LineClient {
            reader: BufReader::new(s),
            writer,
        }
    }
    /// One line (without CRLF); "" at EOF.
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        let _ = self.reader.read_line(&mut l);
        l.trim_end_matches(['\r', '\n']).to_string()
    }
    pub fn send(&mut self, line: &str) {
        let _ = self.writer.write_all(format!("{line}\r\n").as_bytes());
    }
    /// Send `line`, read lines until one starts with `until` (or EOF); return them.
    pub fn command(&mut self, line: &str, until: &[&str]) -> Vec<String> {
        self.send(line);
        let mut out = Vec::new();
        loop {
            let l = self.line();
            let done = l.is_empty() || until.iter().any(|u| l.starts_with(u));
            out.push(l);
            if done {
                return out;
            }
        }
    }
}

/// IMAP LOGIN through `port`; returns the tagged answer line (`a1 OK ...`/`a1 NO ...`),
/// or the untagged BAD/EOF when nginx drops the connection.
pub fn imap_login(port: u16, user: &str, pass: &str) -> String {
    imap_login_from("127.0.0.1", port, user, pass)
}

/// [`imap_login`] from the local address `src`.
pub fn imap_login_from(src: &str, port: u16, user: &str, pass: &str) -> String {
    let mut c = LineClient::connect_from(src, port);
    let greeting = c.line();
    assert!(greeting.starts_with("* OK"), "greeting {greeting:?}");
    let lines = c.command(
        &format!("a1 LOGIN \"{user}\" \"{pass}\""),
        &["a1 ", "* BAD", "* BYE"],
    );
    let last = lines.last().cloned().unwrap_or_default();
    if last.starts_with("a1 OK") {
        c.command("a2 LOGOUT", &["a2 "]);
    }
    last
}

/// POP3 USER/PASS through `port`; returns the answer to PASS.
pub fn pop3_login(port: u16, user: &str, pass: &str) -> String {
    let mut c = LineClient::connect(port);
    let greeting = c.line();
    assert!(greeting.starts_with("+OK"), "greeting {greeting:?}");
    let u = c.command(&format!("USER {user}"), &["+OK", "-ERR"]);
    assert!(u[0].starts_with("+OK"), "USER: {u:?}");
    let p = c.command(&format!("PASS {pass}"), &["+OK", "-ERR"]);
    let last = p.last().cloned().unwrap_or_default();
    if last.starts_with("+OK") {
        c.command("QUIT", &["+OK", "-ERR"]);
    }
    last
}
