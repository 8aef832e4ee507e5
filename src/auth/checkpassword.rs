//! Dovecot checkpassword (passdb + userdb), 2.3 dialect (protocols.md §1).
//!
//! Dovecot runs `mailauth checkpassword [--config PATH] /usr/lib/dovecot/checkpassword-reply`
//! with `user\0password\0timestamp\0` on fd 3 (at most 512 bytes). For an authentication we
//! verify the password; for a lookup (`AUTHORIZED=1`: userdb lookup, LMTP, doveadm) we only
//! look the user up and set `AUTHORIZED=2`. On success we `exec` the reply program (the
//! last argument) with `USER` (canonical), `HOME` and `EXTRA` naming `userdb_uid`,
//! `userdb_gid`, `userdb_mail` (and `proxy host port nopassword` in proxy mode).
//!
//! Exit codes (Dovecot 2.3.14+): 1 = failed login (wrong password, unknown or disabled user,
//! unusable fd-3 data during authentication); 3 = unknown user in a lookup; 111 = temporary
//! failure, bad usage, configuration error. Nothing here ever prints or logs the password.

use super::api::{ApiAnswer, PassdbRequest, UserdbRequest};
use super::authenticator::{AuthContext, Authenticator, Outcome, UserInfo};
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

/// Answer a request: through the daemon when `[auth] socket` is set and answers, else
/// directly with an [`Authenticator`] built from `config`.
pub fn answer(
    config: crate::config::Config,
    mode: Mode,
    req: &Request,
    ctx: &AuthContext,
) -> Result<Outcome> {
    let settings: super::authenticator::AuthSettings = config.section("auth")?;
    if let Some(socket) = settings.socket.as_deref() {
        if socket.exists() {
            let body = match mode {
                Mode::Authenticate => {
                    let (password, password_b64) = match std::str::from_utf8(&req.password) {
                        Ok(p) => (Some(p.to_string()), None),
                        Err(_) => {
                            use base64::Engine;
                            (
                                None,
                                Some(
                                    base64::engine::general_purpose::STANDARD.encode(&req.password),
                                ),
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
            let r = ask_daemon(socket, settings.socket_timeout(), path, &body);
            let mut body = body;
            body.fill(0);
            if let Some(outcome) = r? {
                return Ok(outcome);
            }
        }
    }
    let auth = Authenticator::new(config)?;
    match mode {
        Mode::Authenticate => auth.passdb(&req.user, &req.password, ctx),
        Mode::Lookup => auth.userdb(&req.user),
    }
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
}
