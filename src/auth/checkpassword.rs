//! Dovecot checkpassword (passdb + userdb), 2.3 dialect (protocols.md §1).
//!
//! Dovecot runs `mailauth checkpassword [--config PATH] /usr/lib/dovecot/checkpassword-reply`
//! with `user\0password\0timestamp\0` on fd 3 (at most 512 bytes). For an authentication we
//! verify the password; for a lookup (`AUTHORIZED=1`: userdb lookup, LMTP, doveadm) we only
//! look the user up and set `AUTHORIZED=2`. On success the reply is `USER` (canonical),
//! `HOME` and `EXTRA` naming `userdb_uid`, `userdb_gid`, `userdb_mail` (and `proxy host port
//! nopassword` in proxy mode): written on fd 4 in-process when the reply program is Dovecot's
//! `checkpassword-reply` ([`finish`]: one process less per login), else passed to the reply
//! program (the last argument) by `exec`.
//!
//! Two entry points: `mailauth checkpassword` (daemon, else the directory directly) and the
//! small client `mailauth-checkpassword` ([`client_main`]: daemon only, handing over to
//! `mailauth checkpassword` without one), whose start-up is the per-login cost.
//!
//! Exit codes (Dovecot 2.3.14+): 1 = failed login (wrong password, unknown or disabled user,
//! unusable fd-3 data during authentication); 3 = unknown user in a lookup; 111 = temporary
//! failure, bad usage, configuration error. Nothing here ever prints or logs the password.

use super::api::{ApiAnswer, PassdbRequest, UserdbRequest};
use super::authenticator::{AuthContext, AuthSettings, Authenticator, Outcome, UserInfo};
use crate::error::{Error, ErrorKind, Result};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// Dovecot's `CHECKPASSWORD_MAX_REQUEST_LEN`.
pub const MAX_REQUEST_LEN: usize = 512;
/// Exit: login failed (authentication).
pub const EXIT_FAILED: i32 = 1;
/// Exit: user unknown (lookup).
pub const EXIT_UNKNOWN: i32 = 3;
/// Exit: temporary failure / bad usage / configuration error.
pub const EXIT_TEMPFAIL: i32 = 111;
/// Largest daemon answer read.
const MAX_DAEMON_REPLY: usize = 64 * 1024;

/// Authentication (password present) or lookup (`AUTHORIZED=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Authenticate,
    Lookup,
}

impl Mode {
    /// From the value of `AUTHORIZED`. Anything but unset/empty or `1` is bad usage.
    pub fn from_authorized(value: Option<&str>) -> Result<Mode> {
        match value {
            None | Some("") => Ok(Mode::Authenticate),
            Some("1") => Ok(Mode::Lookup),
            Some(_) => Err(Error::bad_input("AUTHORIZED has a value other than 1")),
        }
    }

    /// Exit code for "no such user / bad credentials" in this mode.
    pub fn refusal_code(self) -> i32 {
        match self {
            Mode::Authenticate => EXIT_FAILED,
            Mode::Lookup => EXIT_UNKNOWN,
        }
    }
}

/// The fd-3 request.
pub struct Request {
    pub user: String,
    pub password: Vec<u8>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Why fd-3 data is unusable (the login fails; not a temporary error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadRequest {
    TooLong,
    NoNul,
    UserNotUtf8,
    EmptyUser,
}

impl std::fmt::Display for BadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BadRequest::TooLong => "request on fd 3 longer than 512 bytes",
            BadRequest::NoNul => "request on fd 3 is not NUL-terminated",
            BadRequest::UserNotUtf8 => "user name on fd 3 is not UTF-8",
            BadRequest::EmptyUser => "empty user name on fd 3",
        })
    }
}

/// Parse `user\0password\0[timestamp\0]`.
pub fn parse_request(buf: &[u8]) -> std::result::Result<Request, BadRequest> {
    if buf.len() > MAX_REQUEST_LEN {
        return Err(BadRequest::TooLong);
    }
    let mut parts = buf.splitn(3, |&b| b == 0);
    let user = parts.next().unwrap_or_default();
    let Some(rest) = parts.next() else {
        return Err(BadRequest::NoNul);
    };
    // The password must be NUL-terminated too (Dovecot always sends three NULs).
    if parts.next().is_none() {
        return Err(BadRequest::NoNul);
    }
    let user = std::str::from_utf8(user).map_err(|_| BadRequest::UserNotUtf8)?;
    if user.is_empty() {
        return Err(BadRequest::EmptyUser);
    }
    Ok(Request {
        user: user.to_string(),
        password: rest.to_vec(),
    })
}

/// Read the request from `fd` (normally 3): at most 513 bytes, until EOF or the third NUL,
/// within `timeout`. An fd that is not open, a read error or the timeout is bad usage or a
/// temporary failure (`Err`); the bytes are returned unparsed.
#[cfg(unix)]
pub fn read_fd(fd: i32, timeout: Duration) -> Result<Vec<u8>> {
    // SAFETY: fcntl(F_GETFD) only queries the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(Error::bad_input(format!(
            "file descriptor {fd} is not open (run me from Dovecot's checkpassword driver)"
        )));
    }
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::with_capacity(MAX_REQUEST_LEN + 1);
    let mut chunk = [0u8; MAX_REQUEST_LEN + 1];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Error::temporary("timeout reading fd 3"));
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = remaining.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::io("poll fd 3", e));
        }
        if r == 0 {
            continue;
        }
        let want = MAX_REQUEST_LEN + 1 - buf.len();
        // SAFETY: reading into a live buffer of at least `want` bytes.
        let n = unsafe { libc::read(fd, chunk.as_mut_ptr().cast(), want) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if matches!(
                e.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
            ) {
                continue;
            }
            return Err(Error::io("read fd 3", e));
        }
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n as usize]);
        if buf.len() > MAX_REQUEST_LEN || buf.iter().filter(|&&b| b == 0).count() >= 3 {
            break;
        }
    }
    chunk.fill(0);
    Ok(buf)
}

/// What the binary must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// exec the reply program with these variables added to the environment.
    Exec(Vec<(String, String)>),
    Exit(i32),
}

/// Environment for the reply program.
pub fn reply_env(info: &UserInfo, mode: Mode) -> Vec<(String, String)> {
    let mut env = vec![
        ("USER".to_string(), info.user.clone()),
        ("HOME".to_string(), info.home.clone()),
        ("userdb_uid".to_string(), info.uid.to_string()),
        ("userdb_gid".to_string(), info.gid.to_string()),
        ("userdb_mail".to_string(), info.mail.clone()),
    ];
    let mut extra = vec!["userdb_uid", "userdb_gid", "userdb_mail"];
    if mode == Mode::Authenticate {
        if let Some(p) = &info.proxy {
            env.push(("proxy".into(), "y".into()));
            env.push(("host".into(), p.host.clone()));
            env.push(("port".into(), p.port.to_string()));
            env.push(("nopassword".into(), "y".into()));
            extra.extend(["proxy", "host", "port", "nopassword"]);
        }
    }
    env.push(("EXTRA".to_string(), extra.join(" ")));
    if mode == Mode::Lookup {
        env.push(("AUTHORIZED".to_string(), "2".to_string()));
    }
    env
}

/// Turn an outcome (or failure) into the action, logging the reason (never the password).
pub fn action(mode: Mode, user: &str, result: Result<Outcome>) -> Action {
    match result {
        Ok(Outcome::Ok(info)) => {
            if info.user.contains(['\t', '\n']) || info.home.contains(['\t', '\n']) {
                log::error!("refusing a user or home containing TAB/LF");
                return Action::Exit(EXIT_TEMPFAIL);
            }
            Action::Exec(reply_env(&info, mode))
        }
        Ok(Outcome::UserUnknown) => Action::Exit(mode.refusal_code()),
        Ok(Outcome::PasswordMismatch(_)) | Ok(Outcome::UserDisabled) => Action::Exit(EXIT_FAILED),
        Err(e) => {
            log::error!(
                "temporary failure for {}: {e}",
                crate::names::printable(user)
            );
            Action::Exit(EXIT_TEMPFAIL)
        }
    }
}

/// Ask `mailauth serve` over its unix socket. `Ok(None)`: the daemon is not there (no
/// socket, connection refused): use the directory directly. A daemon that accepts but does
/// not answer within `timeout` is a temporary failure.
pub fn ask_daemon(
    socket: &Path,
    timeout: Duration,
    path: &str,
    body: &[u8],
) -> Result<Option<Outcome>> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let deadline = Instant::now() + timeout;
    let addr = SockAddr::unix(socket).map_err(|e| Error::io("auth socket path", e))?;
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None)
        .map_err(|e| Error::io("creating a unix socket", e))?;
    if let Err(e) = sock.connect_timeout(&addr, timeout) {
        return match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                log::debug!("auth daemon {} not running: {e}", socket.display());
                Ok(None)
            }
            _ => Err(Error::temporary(format!(
                "auth daemon {}: connect: {e}",
                socket.display()
            ))),
        };
    }
    let mut stream = std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(sock));
    let io_err = |what: &str, e: std::io::Error| {
        Error::temporary(format!("auth daemon {}: {what}: {e}", socket.display()))
    };
    let set = |s: &std::os::unix::net::UnixStream| -> Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::temporary("auth daemon: timeout"));
        }
        s.set_read_timeout(Some(left))
            .and_then(|_| s.set_write_timeout(Some(left)))
            .map_err(|e| io_err("timeout", e))
    };
    set(&stream)?;
    let mut req = format!(
        "POST {path} HTTP/1.0\r\nHost: mailauth\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    let written = stream.write_all(&req);
    req.fill(0);
    written.map_err(|e| io_err("write", e))?;
    let mut resp = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        set(&stream)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                resp.extend_from_slice(&chunk[..n]);
                if resp.len() > MAX_DAEMON_REPLY {
                    return Err(Error::temporary("auth daemon: answer too large"));
                }
                if let Some(done) = complete_response(&resp) {
                    resp.truncate(done);
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", e)),
        }
    }
    parse_response(&resp).map(Some)
}

/// If `resp` holds a full response with a Content-Length, its total length.
fn complete_response(resp: &[u8]) -> Option<usize> {
    let head_end = find(resp, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&resp[..head_end]).ok()?;
    let len: usize = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })?;
    (resp.len() >= head_end + len).then_some(head_end + len)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_response(resp: &[u8]) -> Result<Outcome> {
    let bad = || Error::temporary("auth daemon: malformed answer");
    let head_end = find(resp, b"\r\n\r\n").ok_or_else(bad)?;
    let status_line = resp[..head_end]
        .split(|&b| b == b'\n')
        .next()
        .ok_or_else(bad)?;
    let status: u16 = std::str::from_utf8(status_line)
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let body = &resp[head_end + 4..];
    let answer: ApiAnswer = serde_json::from_slice(body).map_err(|_| bad())?;
    if status != 200 {
        return Err(Error::temporary(format!(
            "auth daemon: HTTP {status}: {}",
            answer.reason.as_deref().unwrap_or("internal failure")
        )));
    }
    answer.into_outcome()
}

/// The JSON body and path of a daemon request (the body holds the password: zero it after
/// use).
fn daemon_request(mode: Mode, req: &Request, ctx: &AuthContext) -> Result<(&'static str, Vec<u8>)> {
    let body = match mode {
        Mode::Authenticate => {
            let (password, password_b64) = match std::str::from_utf8(&req.password) {
                Ok(p) => (Some(p.to_string()), None),
                Err(_) => {
                    use base64::Engine;
                    (
                        None,
                        Some(base64::engine::general_purpose::STANDARD.encode(&req.password)),
                    )
                }
            };
            serde_json::to_vec(&PassdbRequest {
                user: req.user.clone(),
                password,
                password_b64,
                service: ctx.service.clone(),
                remote_ip: ctx.remote_ip.clone(),
                local_ip: ctx.local_ip.clone(),
            })
        }
        Mode::Lookup => serde_json::to_vec(&UserdbRequest {
            user: req.user.clone(),
        }),
    }
    .map_err(|_| Error::internal("cannot encode the request"))?;
    let path = match mode {
        Mode::Authenticate => "/passdb",
        Mode::Lookup => "/userdb",
    };
    Ok((path, body))
}

/// Ask the daemon when `[auth] socket` is set and present. `Ok(None)`: no socket
/// configured, or the daemon is not running (use the directory directly).
pub fn ask_configured_daemon(
    settings: &AuthSettings,
    mode: Mode,
    req: &Request,
    ctx: &AuthContext,
) -> Result<Option<Outcome>> {
    let Some(socket) = settings.socket.as_deref() else {
        return Ok(None);
    };
    if !socket.exists() {
        log::debug!("auth daemon socket {} is absent", socket.display());
        return Ok(None);
    }
    let (path, mut body) = daemon_request(mode, req, ctx)?;
    let r = ask_daemon(socket, settings.socket_timeout(), path, &body);
    body.fill(0);
    r
}

/// Answer a request: through the daemon when `[auth] socket` is set and answers, else
/// directly with an [`Authenticator`] built from `config`.
pub fn answer(
    config: crate::config::Config,
    mode: Mode,
    req: &Request,
    ctx: &AuthContext,
) -> Result<Outcome> {
    let settings: AuthSettings = config.section("auth")?;
    if let Some(outcome) = ask_configured_daemon(&settings, mode, req, ctx)? {
        return Ok(outcome);
    }
    let auth = Authenticator::new(config)?;
    match mode {
        Mode::Authenticate => auth.passdb(&req.user, &req.password, ctx),
        Mode::Lookup => auth.userdb(&req.user),
    }
}

/// File name of Dovecot's reply program, whose whole job [`finish`] does in-process.
pub const DOVECOT_REPLY: &str = "checkpassword-reply";
/// The descriptor Dovecot reads the reply from.
pub const REPLY_FD: i32 = 4;

/// Dovecot's `str_append_tabescaped`: `\x01` → `\x011`, TAB → `\x01t`, CR → `\x01r`,
/// LF → `\x01n`.
fn push_tabescaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\x01' => out.push_str("\x011"),
            '\t' => out.push_str("\x01t"),
            '\r' => out.push_str("\x01r"),
            '\n' => out.push_str("\x01n"),
            c => out.push(c),
        }
    }
}

/// The text Dovecot 2.3's `checkpassword-reply` writes on fd 4 for the environment `vars`
/// (as made by [`reply_env`]): `user=USER`, `userdb_home=HOME`, then every variable named
/// in `EXTRA` as `lowercase(name)=value`, each followed by a TAB and tab-escaped, then
/// `userdb_uid`/`userdb_gid` of this process if EXTRA did not name them. `None` if USER or
/// HOME holds a TAB (checkpassword-reply refuses those too).
pub fn reply_text(vars: &[(String, String)]) -> Option<String> {
    let get = |k: &str| vars.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v);
    let mut out = String::with_capacity(256);
    for (var, key) in [("USER", "user"), ("HOME", "userdb_home")] {
        if let Some(v) = get(var) {
            if v.contains('\t') {
                return None;
            }
            out.push_str(key);
            out.push('=');
            push_tabescaped(&mut out, v);
            out.push('\t');
        }
    }
    let (mut uid, mut gid) = (false, false);
    if let Some(extra) = get("EXTRA") {
        for name in extra.split(' ') {
            let Some(v) = get(name) else { continue };
            let key = name.to_ascii_lowercase();
            uid |= key == "userdb_uid";
            gid |= key == "userdb_gid";
            push_tabescaped(&mut out, &key);
            out.push('=');
            push_tabescaped(&mut out, v);
            out.push('\t');
        }
    }
    // reply_env always names both; like checkpassword-reply, fall back to our own ids.
    #[cfg(unix)]
    {
        use std::fmt::Write as _;
        if !uid {
            // SAFETY: getuid/getgid cannot fail.
            let _ = write!(out, "userdb_uid={}\t", unsafe { libc::getuid() });
        }
        if !gid {
            // SAFETY: as above.
            let _ = write!(out, "userdb_gid={}\t", unsafe { libc::getgid() });
        }
    }
    Some(out)
}

/// Report a successful request to Dovecot. When the reply program is Dovecot's
/// `checkpassword-reply` and fd 4 is open, write what it would write (see [`reply_text`])
/// ourselves and return its exit code (0, or 2 for a lookup) — one exec less per login
/// (Dovecot only reads fd 4 and the exit status, protocols.md §1). Any other reply program
/// (for example a wrapper) is exec'd with `vars` in its environment, as the checkpassword
/// interface describes; returns only if that fails (111).
#[cfg(unix)]
pub fn finish(reply: &std::ffi::OsStr, mode: Mode, vars: Vec<(String, String)>) -> i32 {
    let is_dovecot_reply = Path::new(reply)
        .file_name()
        .is_some_and(|n| n == DOVECOT_REPLY);
    // SAFETY: fcntl(F_GETFD) only queries the descriptor's flags.
    if is_dovecot_reply && unsafe { libc::fcntl(REPLY_FD, libc::F_GETFD) } != -1 {
        let Some(text) = reply_text(&vars) else {
            log::error!("checkpassword: USER or HOME contains TAB");
            return EXIT_TEMPFAIL;
        };
        return match write_fd(REPLY_FD, text.as_bytes()) {
            Ok(()) => match mode {
                Mode::Authenticate => 0,
                Mode::Lookup => 2,
            },
            Err(e) => {
                log::error!("checkpassword: writing the reply to fd 4: {e}");
                EXIT_TEMPFAIL
            }
        };
    }
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(reply).envs(vars).exec();
    log::error!(
        "checkpassword: cannot run the reply program {}: {err}",
        Path::new(reply).display()
    );
    EXIT_TEMPFAIL
}

/// Write all of `data` to `fd` (retrying on EINTR and short writes).
#[cfg(unix)]
fn write_fd(fd: i32, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        // SAFETY: writing from a live buffer of `data.len()` bytes.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// Name of the full program the small client hands over to.
pub const FULL_PROGRAM: &str = "mailauth";

/// Parsed command line of `mailauth-checkpassword`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClientArgs {
    pub config: Option<std::path::PathBuf>,
    pub verbose: bool,
    /// Everything from the first non-option on (Dovecot appends the reply program; the
    /// last element is used).
    pub rest: Vec<std::ffi::OsString>,
}

/// What `mailauth-checkpassword` was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientCommand {
    Run(ClientArgs),
    Help,
    Version,
}

/// Usage text of `mailauth-checkpassword`.
pub const CLIENT_USAGE: &str = "\
Usage: mailauth-checkpassword [--config PATH] [-v] REPLY-PROGRAM

Dovecot 2.3 checkpassword passdb/userdb that asks `mailauth serve` over its unix socket
([auth] socket). Reads `user\\0password\\0\\0` on fd 3. When no daemon is configured or
running, it hands over to `mailauth checkpassword` (next to this program), which reads
the directory itself. Exit 1 = login failed, 3 = unknown user (lookup), 111 = temporary
failure.

Options:
  --config PATH   configuration file [default: $MAILCLUSTER_CONFIG, else the system path]
  -v, --verbose   log debug messages (to stderr, i.e. Dovecot's log)
  -h, --help      print this help
  -V, --version   print the version
";

/// Parse the client's arguments (without argv[0]). Hand-written rather than clap: this
/// program runs once per login and its start-up time is the point (see BENCHMARKS.md).
pub fn parse_client_args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> std::result::Result<ClientCommand, String> {
    let mut out = ClientArgs::default();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let Some(s) = a.to_str() else {
            out.rest.push(a);
            out.rest.extend(it);
            break;
        };
        match s {
            "--config" => match it.next() {
                Some(p) if !p.is_empty() => out.config = Some(p.into()),
                _ => return Err("--config needs a path".into()),
            },
            "-v" | "--verbose" => out.verbose = true,
            "-h" | "--help" => return Ok(ClientCommand::Help),
            "-V" | "--version" => return Ok(ClientCommand::Version),
            "--" => {
                out.rest.extend(it);
                break;
            }
            _ if s.starts_with("--config=") => {
                let p = &s["--config=".len()..];
                if p.is_empty() {
                    return Err("--config needs a path".into());
                }
                out.config = Some(p.into());
            }
            _ if s.starts_with('-') && s.len() > 1 => {
                return Err(format!("unknown option {}", crate::names::printable(s)));
            }
            _ => {
                out.rest.push(a);
                out.rest.extend(it);
                break;
            }
        }
    }
    if out.rest.is_empty() {
        return Err("no reply program given (Dovecot appends it)".into());
    }
    Ok(ClientCommand::Run(out))
}

/// What Dovecot's invocation says: the reply program (the last argument, which Dovecot
/// appends) and the mode (`AUTHORIZED`). On a problem, logs it and gives the exit code.
pub fn invocation<T: AsRef<std::ffi::OsStr>>(
    args: &[T],
) -> std::result::Result<(&std::ffi::OsStr, Mode), i32> {
    let Some(reply) = args.last() else {
        log::error!("checkpassword: no reply program given (Dovecot appends it)");
        return Err(EXIT_TEMPFAIL);
    };
    let authorized = std::env::var("AUTHORIZED").ok();
    match Mode::from_authorized(authorized.as_deref()) {
        Ok(mode) => Ok((reply.as_ref(), mode)),
        Err(e) => {
            log::error!("checkpassword: {e}");
            Err(EXIT_TEMPFAIL)
        }
    }
}

/// `mailauth-checkpassword`: the small checkpassword client of `mailauth serve`. It links
/// no database or TLS code and starts no runtime: read fd 3, read `[auth]` from the
/// configuration, one request over the unix socket, answer Dovecot on fd 4. When no
/// socket is configured, or the daemon is not running, it execs `mailauth checkpassword`
/// (same directory) with the request on a fresh fd 3, which reads the directory itself.
/// Returns the exit code (or does not return: exec).
#[cfg(unix)]
pub fn client_main(a: &ClientArgs) -> i32 {
    let (reply, mode) = match invocation(&a.rest) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let mut raw = match read_fd(3, Duration::from_secs(5)) {
        Ok(r) => r,
        Err(e) => {
            log::error!("checkpassword: {e}");
            return EXIT_TEMPFAIL;
        }
    };
    let req = match parse_request(&raw) {
        Ok(r) => r,
        Err(why) => {
            raw.fill(0);
            log::warn!("checkpassword: {why}");
            return mode.refusal_code();
        }
    };
    let common = crate::cli::CommonArgs {
        config: a.config.clone(),
        db: None,
    };
    let settings = common
        .load()
        .and_then(|config| config.section::<AuthSettings>("auth"));
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            raw.fill(0);
            log::error!("checkpassword: {e}");
            return EXIT_TEMPFAIL;
        }
    };
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let ctx = AuthContext {
        service: env("SERVICE"),
        remote_ip: env("TCPREMOTEIP"),
        local_ip: env("TCPLOCALIP"),
    };
    match ask_configured_daemon(&settings, mode, &req, &ctx) {
        Ok(Some(outcome)) => {
            raw.fill(0);
            match action(mode, &req.user, Ok(outcome)) {
                Action::Exit(code) => code,
                Action::Exec(vars) => finish(reply, mode, vars),
            }
        }
        Ok(None) => {
            let code = exec_full(a, &raw);
            raw.fill(0);
            code
        }
        Err(e) => {
            raw.fill(0);
            match action(mode, &req.user, Err(e)) {
                Action::Exit(code) => code,
                Action::Exec(_) => EXIT_TEMPFAIL,
            }
        }
    }
}

/// Hand the request over to `mailauth checkpassword` (the program [`FULL_PROGRAM`] next to
/// this one): `raw` goes into a new pipe that becomes fd 3. Returns 111 if that fails.
#[cfg(unix)]
fn exec_full(a: &ClientArgs, raw: &[u8]) -> i32 {
    use std::os::unix::process::CommandExt;
    let full = match std::env::current_exe() {
        Ok(p) => p.with_file_name(FULL_PROGRAM),
        Err(e) => {
            log::error!("checkpassword: cannot find my own path: {e}");
            return EXIT_TEMPFAIL;
        }
    };
    let mut fds = [-1i32; 2];
    // SAFETY: pipe() fills two descriptors.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        log::error!("checkpassword: pipe: {}", std::io::Error::last_os_error());
        return EXIT_TEMPFAIL;
    }
    let [rd, wr] = fds;
    // At most 513 bytes: less than any pipe buffer, so this cannot block.
    let written = write_fd(wr, raw);
    // SAFETY: closing our write end; moving the read end to fd 3 (dup2 clears
    // FD_CLOEXEC on the copy), then closing the original.
    let moved = unsafe {
        libc::close(wr);
        if rd == 3 {
            libc::fcntl(3, libc::F_SETFD, 0) != -1
        } else {
            let ok = libc::dup2(rd, 3) == 3;
            libc::close(rd);
            ok
        }
    };
    if let Err(e) = written {
        log::error!("checkpassword: pipe write: {e}");
        return EXIT_TEMPFAIL;
    }
    if !moved {
        log::error!("checkpassword: dup2: {}", std::io::Error::last_os_error());
        return EXIT_TEMPFAIL;
    }
    log::debug!("checkpassword: handing over to {}", full.display());
    let mut cmd = std::process::Command::new(&full);
    if let Some(c) = &a.config {
        cmd.arg("--config").arg(c);
    }
    if a.verbose {
        cmd.arg("--verbose");
    }
    cmd.arg("checkpassword").args(&a.rest);
    let err = cmd.exec();
    log::error!("checkpassword: cannot run {}: {err}", full.display());
    EXIT_TEMPFAIL
}

/// Map an error met before a verdict (usage, configuration) to the checkpassword code.
pub fn error_code(e: &Error) -> i32 {
    match e.kind() {
        ErrorKind::NotFound | ErrorKind::Denied => EXIT_FAILED,
        _ => EXIT_TEMPFAIL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fd3() {
        let r = parse_request(b"a@b.ru\0pw\0\0").unwrap();
        assert_eq!(
            (r.user.as_str(), r.password.as_slice()),
            ("a@b.ru", &b"pw"[..])
        );
        let r = parse_request(b"a@b.ru\0\0\0").unwrap();
        assert!(r.password.is_empty());
        let r = parse_request(b"a@b.ru\0p\xffw\x00123\0").unwrap();
        assert_eq!(r.password, b"p\xffw");
        assert_eq!(parse_request(b"a@b.ru").unwrap_err(), BadRequest::NoNul);
        assert_eq!(parse_request(b"a@b.ru\0pw").unwrap_err(), BadRequest::NoNul);
        assert_eq!(
            parse_request(b"\xff\0pw\0").unwrap_err(),
            BadRequest::UserNotUtf8
        );
        assert_eq!(parse_request(b"\0pw\0").unwrap_err(), BadRequest::EmptyUser);
        assert_eq!(
            parse_request(&[b'a'; 600]).unwrap_err(),
            BadRequest::TooLong
        );
        assert!(!format!("{:?}", parse_request(b"u@x.ru\0hunter2\0").unwrap()).contains("hunter2"));
    }

    #[test]
    fn modes() {
        assert_eq!(Mode::from_authorized(None).unwrap(), Mode::Authenticate);
        assert_eq!(Mode::from_authorized(Some("1")).unwrap(), Mode::Lookup);
        assert!(Mode::from_authorized(Some("2")).is_err());
    }

    #[test]
    fn http_answers() {
        let r = b"HTTP/1.0 200 OK\r\nContent-Length: 25\r\n\r\n{\"result\":\"user_unknown\"}";
        assert_eq!(complete_response(r), Some(r.len()));
        assert_eq!(parse_response(r).unwrap(), Outcome::UserUnknown);
        let r = b"HTTP/1.0 503 x\r\n\r\n{\"result\":\"internal_failure\"}";
        assert!(parse_response(r).unwrap_err().is_temporary());
        let r = b"HTTP/1.0 200 OK\r\n\r\n{\"result\":\"ok\"}";
        assert!(parse_response(r).unwrap_err().is_temporary());
        assert!(parse_response(b"garbage").unwrap_err().is_temporary());
    }

    #[test]
    fn reply_text_is_checkpassword_reply() {
        let info = UserInfo {
            user: "a@b.ru".into(),
            home: "/m/b.ru/a\x01\r\n".into(),
            mail: "maildir:/m/b.ru/a/Maildir".into(),
            uid: 8,
            gid: 12,
            proxy: Some(super::super::authenticator::ProxyTarget {
                host: "10.0.0.2".into(),
                port: 143,
            }),
        };
        assert_eq!(
            reply_text(&reply_env(&info, Mode::Authenticate)).unwrap(),
            "user=a@b.ru\tuserdb_home=/m/b.ru/a\x011\x01r\x01n\tuserdb_uid=8\tuserdb_gid=12\t\
             userdb_mail=maildir:/m/b.ru/a/Maildir\tproxy=y\thost=10.0.0.2\tport=143\t\
             nopassword=y\t"
        );
        let lookup = reply_text(&reply_env(&info, Mode::Lookup)).unwrap();
        assert!(
            lookup.ends_with("userdb_mail=maildir:/m/b.ru/a/Maildir\t"),
            "{lookup}"
        );
        let tab = vec![("USER".to_string(), "a\tb".to_string())];
        assert!(reply_text(&tab).is_none());
    }

    #[test]
    fn client_arguments() {
        use std::ffi::OsString;
        let p = |v: &[&str]| parse_client_args(v.iter().map(OsString::from));
        let ClientCommand::Run(a) =
            p(&["--config", "/c.toml", "-v", "/r/checkpassword-reply"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(a.config.as_deref(), Some(Path::new("/c.toml")));
        assert!(a.verbose);
        assert_eq!(a.rest, vec![OsString::from("/r/checkpassword-reply")]);
        let ClientCommand::Run(a) = p(&["--config=/c", "x", "-y", "reply"]).unwrap() else {
            panic!()
        };
        assert_eq!(a.rest.len(), 3);
        assert_eq!(a.config.as_deref(), Some(Path::new("/c")));
        assert_eq!(p(&["-h"]).unwrap(), ClientCommand::Help);
        assert_eq!(p(&["--version"]).unwrap(), ClientCommand::Version);
        for bad in [
            &[][..],
            &["--config"],
            &["--config="],
            &["--bogus", "r"],
            &["-v"],
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }
}
