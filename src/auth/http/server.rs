//! A small HTTP/1.0 server: one request per connection (as nginx's auth_http client does),
//! bounded request head (bytes and header count), bounded body, bounded time per request;
//! a fixed pool of threads, each accepting and answering its own connections.
//! Listens on TCP addresses and (on Unix) on unix sockets (`unix:/path`).

use crate::error::{Error, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(unix)]
use std::os::unix::net::{UnixListener, UnixStream};

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Listen {
    /// `127.0.0.1:8185`, `[::1]:8185` or `unix:/run/mailauth/http.sock`.
    pub fn parse(s: &str) -> Result<Listen> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() || !path.starts_with('/') {
                return Err(Error::bad_input(format!(
                    "listen address {}: a unix socket needs an absolute path",
                    crate::names::printable(s)
                )));
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>().map(Listen::Tcp).map_err(|_| {
            Error::bad_input(format!(
                "listen address {}: expected IP:PORT (e.g. 127.0.0.1:8185) or unix:/path",
                crate::names::printable(s)
            ))
        })
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// An accepted connection.
pub enum Conn {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Conn {
    fn set_read_timeout(&self, t: Duration) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(Some(t)),
            #[cfg(unix)]
            Conn::Unix(s) => s.set_read_timeout(Some(t)),
        }
    }
    fn set_write_timeout(&self, t: Duration) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_write_timeout(Some(t)),
            #[cfg(unix)]
            Conn::Unix(s) => s.set_write_timeout(Some(t)),
        }
    }
}

/// The peer of a connection, for logs: its address, or "unix". Asked of the socket only when
/// displayed (most answers log none).
pub struct Peer<'a>(&'a Conn);

impl std::fmt::Display for Peer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Conn::Tcp(s) => match s.peer_addr() {
                Ok(a) => write!(f, "{}", a.ip()),
                Err(_) => f.write_str("?"),
            },
            #[cfg(unix)]
            Conn::Unix(_) => f.write_str("unix"),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            Conn::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.flush(),
            #[cfg(unix)]
            Conn::Unix(s) => s.flush(),
        }
    }
}

/// Bounds on one request.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request line + headers, bytes.
    pub max_head: usize,
    pub max_headers: usize,
    pub max_body: usize,
    /// Whole request read + answer.
    pub timeout: Duration,
}

/// A parsed request. Header names are lower-cased; values are raw bytes (nginx sends
/// non-ASCII bytes of passwords unescaped).
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// One header's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header<'a> {
    Missing,
    One(&'a [u8]),
    /// Sent more than once: never guess which one counts.
    Duplicated,
}

impl Request {
    pub fn header(&self, name: &str) -> Header<'_> {
        let mut found = Header::Missing;
        for (n, v) in &self.headers {
            if n.eq_ignore_ascii_case(name) {
                if found != Header::Missing {
                    return Header::Duplicated;
                }
                found = Header::One(v);
            }
        }
        found
    }
}

/// A response. Header values must not hold CR or LF (checked when written).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// A log line written once the response is sent, so that a slow log (a busy syslog
    /// socket, a disk stall) never delays an answer.
    pub log_line: Option<(log::Level, String)>,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            content_type: "text/plain; charset=utf-8",
            body: Vec::new(),
            log_line: None,
        }
    }
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.to_string(), value.into()));
        self
    }
    pub fn text(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }
    pub fn json(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.content_type = "application/json";
        self.body = body.into();
        self
    }
    /// Log `line` at `level` after the response is sent (see [`Response::log_line`]).
    pub fn log_after(mut self, level: log::Level, line: String) -> Response {
        self.log_line = Some((level, line));
        self
    }
    /// A request we refuse to parse. The `Auth-Status` makes it a clean failure for nginx.
    pub fn bad_request(status: u16, why: &str) -> Response {
        Response::new(status)
            .header("Auth-Status", "Invalid request")
            .text(format!("{why}\n"))
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.body.len());
        out.extend_from_slice(
            format!("HTTP/1.0 {} {}\r\n", self.status, reason(self.status)).as_bytes(),
        );
        for (n, v) in &self.headers {
            if n.bytes().any(|b| b == b'\r' || b == b'\n' || b == b':')
                || v.bytes().any(|b| b == b'\r' || b == b'\n')
            {
                continue; // never let a value split the response
            }
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(
            format!(
                "Content-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                self.content_type,
                self.body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(&self.body);
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Read and parse one request within `limits`. Err = the response to send instead.
pub fn read_request(conn: &mut Conn, limits: &Limits) -> std::result::Result<Request, Response> {
    let deadline = Instant::now() + limits.timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() > limits.max_head {
            return Err(Response::bad_request(431, "request head too large"));
        }
        let n = read_some(conn, &mut chunk, deadline)?;
        if n == 0 {
            return Err(Response::bad_request(400, "connection closed mid-request"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let (head_len, body_start) = head_end;
    if head_len > limits.max_head {
        return Err(Response::bad_request(431, "request head too large"));
    }
    let mut req = parse_head(&buf[..head_len], limits)?;
    let mut body = buf[body_start..].to_vec();
    let length = match req.header("content-length") {
        Header::Missing => 0,
        Header::Duplicated => return Err(Response::bad_request(400, "duplicated Content-Length")),
        Header::One(v) => std::str::from_utf8(v)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or_else(|| Response::bad_request(400, "bad Content-Length"))?,
    };
    if !matches!(req.header("transfer-encoding"), Header::Missing) {
        return Err(Response::bad_request(
            411,
            "chunked bodies are not accepted",
        ));
    }
    if length > limits.max_body {
        return Err(Response::bad_request(413, "body too large"));
    }
    while body.len() < length {
        let n = read_some(conn, &mut chunk, deadline)?;
        if n == 0 {
            return Err(Response::bad_request(400, "connection closed mid-body"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    req.body = body;
    Ok(req)
}

fn read_some(
    conn: &mut Conn,
    chunk: &mut [u8],
    deadline: Instant,
) -> std::result::Result<usize, Response> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Response::bad_request(408, "request timeout"));
        }
        conn.set_read_timeout(left)
            .map_err(|_| Response::bad_request(400, "socket error"))?;
        match conn.read(chunk) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Err(Response::bad_request(408, "request timeout"))
            }
            Err(_) => return Err(Response::bad_request(400, "read error")),
        }
    }
}

/// (end of head excluding the blank line, start of body).
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        // blank line: "\n\n" or "\n\r\n"
        if buf.get(nl + 1) == Some(&b'\n') {
            return Some((nl + 1, nl + 2));
        }
        if buf.get(nl + 1) == Some(&b'\r') && buf.get(nl + 2) == Some(&b'\n') {
            return Some((nl + 1, nl + 3));
        }
        i = nl + 1;
    }
    None
}

fn parse_head(head: &[u8], limits: &Limits) -> std::result::Result<Request, Response> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines
        .next()
        .ok_or_else(|| Response::bad_request(400, "empty request"))?;
    let first =
        std::str::from_utf8(first).map_err(|_| Response::bad_request(400, "bad request line"))?;
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Response::bad_request(400, "bad request line"));
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Err(Response::bad_request(400, "bad request line"));
    }
    if !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Response::bad_request(400, "bad request line"));
    }
    let path = target.split('?').next().unwrap_or(target).to_string();
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue; // the final blank line
        }
        if headers.len() >= limits.max_headers {
            return Err(Response::bad_request(431, "too many headers"));
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(Response::bad_request(
                400,
                "folded header lines are not accepted",
            ));
        }
        if line.contains(&b'\r') || line.contains(&0) {
            return Err(Response::bad_request(400, "control byte in a header"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| Response::bad_request(400, "header without ':'"))?;
        let name = &line[..colon];
        if name.is_empty()
            || !name
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Response::bad_request(400, "bad header name"));
        }
        let value = trim(&line[colon + 1..]);
        headers.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            value.to_vec(),
        ));
    }
    Ok(Request {
        method: method.to_string(),
        path,
        headers,
        body: Vec::new(),
    })
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map(|p| p + 1)
        .unwrap_or(start);
    &v[start..end.max(start)]
}

/// The request handler: (request, peer) → response.
pub type Handler = dyn Fn(&Request, &Peer<'_>) -> Response + Send + Sync;

/// Bound listeners (bind early so that errors are reported before running).
pub struct Bound {
    tcp: Vec<TcpListener>,
    #[cfg(unix)]
    unix: Vec<(UnixListener, PathBuf)>,
}

impl Bound {
    /// The TCP addresses actually bound (port 0 resolved).
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }
}

/// A listening socket and its backlog.
fn listen_socket(
    domain: socket2::Domain,
    addr: &socket2::SockAddr,
    backlog: usize,
) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    if domain != socket2::Domain::UNIX {
        // As std does: a restart must not wait for the old connections' TIME_WAIT.
        socket.set_reuse_address(true)?;
    }
    socket.bind(addr)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if domain != socket2::Domain::UNIX {
        defer_accept(&socket)?;
    }
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket)
}

/// Linux: a connection is handed to `accept` once its first request bytes are in (nginx's
/// `listen ... deferred`), so the accepting thread is woken once per request instead of
/// once for the connection and again for its data. Elsewhere (FreeBSD's equivalent is an
/// accept filter, a kernel module) connections are accepted as they come.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn defer_accept(socket: &socket2::Socket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // Seconds a connection may wait for its first bytes before it is accepted anyway (our
    // own request timeout then applies).
    let secs: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, and a pointer to an int with its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Bind every listen address with a listen queue of `backlog` connections; unix sockets
/// get permissions `socket_mode`.
pub fn bind(listens: &[Listen], socket_mode: u32, backlog: usize) -> Result<Bound> {
    let mut bound = Bound {
        tcp: Vec::new(),
        #[cfg(unix)]
        unix: Vec::new(),
    };
    for l in listens {
        match l {
            Listen::Tcp(addr) => {
                let listener = listen_socket(
                    socket2::Domain::for_address(*addr),
                    &socket2::SockAddr::from(*addr),
                    backlog,
                )
                .map_err(|e| Error::io(format!("listen on {addr}"), e))?;
                bound.tcp.push(listener.into());
            }
            #[cfg(unix)]
            Listen::Unix(path) => {
                use std::os::unix::fs::FileTypeExt;
                // Replace a stale socket, never any other file.
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if meta.file_type().is_socket() {
                        let _ = std::fs::remove_file(path);
                    } else {
                        return Err(Error::config(format!(
                            "listen on unix:{}: exists and is not a socket",
                            path.display()
                        )));
                    }
                }
                let listener = socket2::SockAddr::unix(path)
                    .and_then(|addr| listen_socket(socket2::Domain::UNIX, &addr, backlog))
                    .map_err(|e| Error::io(format!("listen on unix:{}", path.display()), e))?;
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(socket_mode))
                        .map_err(|e| Error::io(format!("chmod unix:{}", path.display()), e))?;
                }
                bound
                    .unix
                    .push((std::os::fd::OwnedFd::from(listener).into(), path.clone()));
            }
            #[cfg(not(unix))]
            Listen::Unix(path) => {
                let _ = (socket_mode, backlog);
                return Err(Error::config(format!(
                    "unix sockets are not supported here: {}",
                    path.display()
                )));
            }
        }
    }
    Ok(bound)
}

/// One listening socket, shared by the threads that accept on it.
enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(UnixListener),
}

impl Listener {
    fn accept(&self) -> std::io::Result<Conn> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                let _ = s.set_nodelay(true);
                Ok(Conn::Tcp(s))
            }
            #[cfg(unix)]
            Listener::Unix(l) => Ok(Conn::Unix(l.accept()?.0)),
        }
    }
}

/// Serve forever on `bound` with `workers` threads (at least one per listener).
///
/// Each thread accepts its own connections and answers them: no hand-over between an
/// accepting thread and a worker, which cost a thread wake-up (and, on a busy machine, a
/// wait for a CPU) per request. Several threads blocked in `accept` on one socket are woken
/// one at a time by the kernel. Connections that find every thread busy wait in the
/// socket's listen queue (`[auth.http] queue`), as they do in front of nginx's workers.
pub fn run(bound: Bound, workers: usize, limits: Limits, handler: Arc<Handler>) -> Result<()> {
    let mut listeners: Vec<Arc<Listener>> = bound
        .tcp
        .into_iter()
        .map(|l| Arc::new(Listener::Tcp(l)))
        .collect();
    #[cfg(unix)]
    listeners.extend(
        bound
            .unix
            .into_iter()
            .map(|(l, _path)| Arc::new(Listener::Unix(l))),
    );
    if listeners.is_empty() {
        return Err(Error::config("nothing to listen on"));
    }
    let limits = Arc::new(limits);
    let mut threads = Vec::new();
    for i in 0..workers.max(listeners.len()) {
        let listener = Arc::clone(&listeners[i % listeners.len()]);
        let handler = Arc::clone(&handler);
        let limits = Arc::clone(&limits);
        threads.push(
            std::thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || worker(&listener, &*handler, &limits))
                .map_err(|e| Error::io("starting a worker thread", e))?,
        );
    }
    listeners.clear();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn worker(listener: &Listener, handler: &Handler, limits: &Limits) {
    loop {
        match listener.accept() {
            Ok(conn) => serve_one(conn, handler, limits),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => {}
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Read one request, answer it, log it, close the connection.
fn serve_one(mut conn: Conn, handler: &Handler, limits: &Limits) {
    let start = Instant::now();
    let response = match read_request(&mut conn, limits) {
        Ok(req) => {
            let peer = Peer(&conn);
            // A panic in a handler must not take the worker (and its queue) down.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(&req, &peer))) {
                Ok(r) => r,
                Err(_) => {
                    log::error!("handler panicked on {} {}", req.method, req.path);
                    Response::new(500)
                        .header("Auth-Status", "Temporary server failure, try again later")
                }
            }
        }
        Err(r) => r,
    };
    let left = limits
        .timeout
        .saturating_sub(start.elapsed())
        .max(Duration::from_millis(100));
    let _ = conn.set_write_timeout(left);
    let _ = conn.write_all(&response.to_bytes());
    let _ = conn.flush();
    // Queued (the daemon's log has a writer thread: this does not wait for the log) before
    // the client sees the connection end, so that a SIGTERM right after the answer still
    // finds the line queued and writes it out.
    if let Some((level, line)) = response.log_line {
        log::log!(level, "{line}");
    }
    drop(conn);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_head: 8192,
            max_headers: 32,
            max_body: 1024,
            timeout: Duration::from_secs(2),
        }
    }

    #[test]
    fn parses_nginx_request() {
        let head = b"GET /auth HTTP/1.0\r\nHost: localhost\r\nAuth-Method: plain\r\nAuth-User: a@b.c\r\nAuth-Pass: p%20w+\xff\r\n";
        let r = parse_head(head, &limits()).unwrap();
        assert_eq!(r.path, "/auth");
        assert_eq!(r.header("auth-pass"), Header::One(b"p%20w+\xff"));
        assert_eq!(r.header("Auth-User"), Header::One(b"a@b.c"));
        assert_eq!(r.header("x"), Header::Missing);
    }

    #[test]
    fn refuses_hostile_heads() {
        let l = limits();
        assert!(parse_head(b"GET /auth HTTP/1.0\r\nA: b\rc\r\n", &l).is_err());
        assert!(parse_head(b"GET /auth HTTP/1.0\r\n folded\r\n", &l).is_err());
        assert!(parse_head(b"GET /auth HTTP/1.0\r\nno colon\r\n", &l).is_err());
        assert!(parse_head(b"GET  /auth HTTP/1.0\r\n", &l).is_err());
        assert!(parse_head(b"GET /auth\r\n", &l).is_err());
        let many: Vec<u8> = (0..40)
            .flat_map(|i| format!("H{i}: v\r\n").into_bytes())
            .collect();
        let mut head = b"GET / HTTP/1.0\r\n".to_vec();
        head.extend(many);
        assert_eq!(parse_head(&head, &l).unwrap_err().status, 431);
        let dup = parse_head(b"GET / HTTP/1.0\r\nA: 1\r\na: 2\r\n", &l).unwrap();
        assert_eq!(dup.header("a"), Header::Duplicated);
    }

    #[test]
    fn head_end() {
        assert_eq!(find_head_end(b"GET / HTTP/1.0\r\n\r\nbody"), Some((16, 18)));
        assert_eq!(find_head_end(b"GET / HTTP/1.0\n\nbody"), Some((15, 16)));
        assert_eq!(find_head_end(b"GET / HTTP/1.0\r\nA: b\r\n"), None);
    }

    #[test]
    fn response_never_splits() {
        let r = Response::new(200)
            .header("Auth-Status", "OK")
            .header("Auth-Pass", "a\r\nAuth-Status: OK");
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert_eq!(text.matches("Auth-Status").count(), 1);
        assert!(!text.contains("Auth-Pass"));
    }
}
