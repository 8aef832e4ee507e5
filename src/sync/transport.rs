//! Transports: a child process (`mailsync serve` on this host) or an SSH channel running
//! `mailsync serve` on the remote host. Both carry the same framed protocol.

use super::wire::Conn;
use crate::error::{Error, Result};
use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Something that must stay alive while a connection is used, and be finished after.
pub trait Transport: Send {
    /// Wait for the remote end to finish; report its failure.
    fn finish(&mut self) -> Result<()>;
}

/// A child process speaking the protocol on stdin/stdout.
pub struct ChildTransport {
    child: Option<Child>,
}

impl Transport for ChildTransport {
    fn finish(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            let status = c
                .wait()
                .map_err(|e| Error::io("waiting for mailsync serve", e))?;
            if !status.success() {
                return Err(Error::temporary(format!(
                    "mailsync serve ended with {status}"
                )));
            }
        }
        Ok(())
    }
}

impl Drop for ChildTransport {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Start `command... --root ROOT` as a child (no shell) and connect to it.
pub fn local(command: &[String], root: &Path, bwlimit: u64) -> Result<(Conn, Box<dyn Transport>)> {
    let (prog, args) = command
        .split_first()
        .ok_or_else(|| Error::config("empty remote command"))?;
    let mut child = Command::new(prog)
        .args(args)
        .arg("--root")
        .arg(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::io(format!("cannot start {prog}"), e))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::internal("child pipes missing"));
    };
    let conn = Conn::with_limit(stdout, stdin, bwlimit);
    Ok((conn, Box::new(ChildTransport { child: Some(child) })))
}

/// SSH connection settings.
#[derive(Debug, Clone)]
pub struct SshOptions {
    pub port: u16,
    pub user: String,
    pub identity: PathBuf,
    pub known_hosts: PathBuf,
    /// The remote command (default `mailsync serve`); `--root DIR` is appended, quoted.
    pub command: String,
    pub timeout: Duration,
}

/// Quote a word for a POSIX shell (sshd runs the command through the user's shell).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The SSH session and channel (kept alive while the connection is used).
pub struct SshTransport {
    session: ssh2::Session,
    channel: Option<ssh2::Channel>,
}

impl Transport for SshTransport {
    fn finish(&mut self) -> Result<()> {
        if let Some(mut ch) = self.channel.take() {
            let _ = ch.send_eof();
            let _ = ch.wait_close();
            let status = ch.exit_status().unwrap_or(-1);
            if status != 0 {
                let mut err = String::new();
                let _ = ch.stderr().take(4096).read_to_string(&mut err);
                return Err(Error::temporary(format!(
                    "remote mailsync serve exited with status {status}{}",
                    if err.trim().is_empty() {
                        String::new()
                    } else {
                        format!(": {}", err.trim())
                    }
                )));
            }
        }
        let _ = self.session.disconnect(None, "bye", None);
        Ok(())
    }
}

/// SSH ciphers in order of preference (see [`ssh`]).
const CIPHERS: &str = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,\
chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr";

fn ssh_err(what: &str, e: ssh2::Error) -> Error {
    Error::temporary(format!("{what}: {e}"))
}

/// Connect to `host`, verify its key against known_hosts, authenticate with the key, and
/// run the remote command. One session per call (per worker): libssh2 serialises all use
/// of a session behind one lock, and the protocol is half-duplex, so a single thread per
/// session never waits on itself.
pub fn ssh(
    host: &str,
    root: &Path,
    o: &SshOptions,
    bwlimit: u64,
) -> Result<(Conn, Box<dyn Transport>)> {
    let addrs: Vec<_> = (host, o.port)
        .to_socket_addrs()
        .map_err(|e| Error::temporary(format!("cannot resolve {host}: {e}")))?
        .collect();
    let mut last = None;
    let mut tcp = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, o.timeout) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let tcp = tcp.ok_or_else(|| {
        Error::temporary(format!(
            "cannot connect to {host} port {}: {}",
            o.port,
            last.map_or("no address".to_string(), |e| e.to_string())
        ))
    })?;
    let _ = tcp.set_nodelay(true);
    let mut sess = ssh2::Session::new().map_err(|e| ssh_err("ssh", e))?;
    sess.set_timeout(o.timeout.as_millis().min(u128::from(u32::MAX)) as u32);
    // Prefer ed25519 host keys (what known_hosts usually pins).
    let _ = sess.method_pref(
        ssh2::MethodType::HostKey,
        "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256,ssh-rsa",
    );
    // Ciphers: AES-GCM first. libssh2 puts chacha20-poly1305 first, and implements it in
    // portable C (its own chacha and poly1305), while AES-GCM goes through OpenSSL (AES-NI,
    // carry-less multiply): on this host the chacha path was ~4 % of a day run's CPU and
    // far more of an initial copy's (BENCHMARKS.md, round 5). Both are authenticated
    // ciphers OpenSSH offers by default; the others follow as fallbacks for servers that
    // restrict `Ciphers`.
    for dir in [ssh2::MethodType::CryptCs, ssh2::MethodType::CryptSc] {
        let _ = sess.method_pref(dir, CIPHERS);
    }
    // A second descriptor of the socket, to wait on it and set its options during `Setup`.
    let sock = tcp
        .try_clone()
        .map_err(|e| Error::temporary(format!("ssh: {e}")))?;
    sess.set_tcp_stream(tcp);
    sess.handshake()
        .map_err(|e| ssh_err(&format!("ssh handshake with {host}"), e))?;
    check_host_key(&sess, host, o.port, &o.known_hosts)?;
    sess.userauth_pubkey_file(&o.user, None, &o.identity, None)
        .map_err(|e| {
            Error::denied(format!(
                "ssh: {}@{host} refused the key {}: {e}",
                o.user,
                o.identity.display()
            ))
        })?;
    let root_str = root
        .to_str()
        .ok_or_else(|| Error::config("the remote root is not UTF-8"))?;
    let command = format!("{} --root {}", o.command, shell_quote(root_str));
    // Opening the channel and starting the command: step by step (see `Setup`).
    let setup = Setup::new(&sess, sock, o.timeout);
    let mut ch = setup.run(|| sess.channel_session(), "ssh channel")?;
    setup.run(|| ch.exec(&command), &format!("ssh exec on {host}"))?;
    sess.set_blocking(true);
    // The session timeout bounds every blocking call; a long apply phase on the remote
    // (fsync of a batch) must not trip it, so relax it after the handshake.
    sess.set_timeout(0);
    let reader = ch.stream(0);
    let writer = NoFlush(ch.stream(0));
    let conn = Conn::with_limit(reader, writer, bwlimit);
    Ok((
        conn,
        Box::new(SshTransport {
            session: sess,
            channel: Some(ch),
        }),
    ))
}

/// libssh2's "would block" (`LIBSSH2_ERROR_EAGAIN`).
const LIBSSH2_ERROR_EAGAIN: i32 = -37;

/// The steps after authentication (opening the channel, starting the command), made with
/// the session in non-blocking mode so that this end acknowledges what sshd sends at once.
///
/// Until the command starts, sshd leaves Nagle's algorithm on. Right after authentication it
/// sends an unsolicited notice (OpenSSH's `hostkeys-00@openssh.com`), and then its answer
/// to the channel request waits for the acknowledgement of that notice; the client, with
/// nothing to send, delays that acknowledgement (40 ms on Linux). Each time a step stops for
/// want of data, whatever arrived is acknowledged at once (`TCP_QUICKACK`): that took the
/// set-up of a connection here from ~80 ms to ~40 ms (BENCHMARKS.md, round 14). Where
/// `TCP_QUICKACK` does not exist (FreeBSD), the acknowledgement keeps its delay.
struct Setup<'a> {
    sess: &'a ssh2::Session,
    sock: TcpStream,
    deadline: std::time::Instant,
}

impl<'a> Setup<'a> {
    fn new(sess: &'a ssh2::Session, sock: TcpStream, timeout: Duration) -> Setup<'a> {
        sess.set_blocking(false);
        Setup {
            sess,
            sock,
            deadline: std::time::Instant::now() + timeout,
        }
    }

    /// Call `step` until it no longer asks to be called again, waiting on the socket in
    /// between (at most until the deadline).
    fn run<T>(
        &self,
        mut step: impl FnMut() -> std::result::Result<T, ssh2::Error>,
        what: &str,
    ) -> Result<T> {
        loop {
            match step() {
                Ok(v) => return Ok(v),
                Err(e) if e.code() == ssh2::ErrorCode::Session(LIBSSH2_ERROR_EAGAIN) => {
                    acknowledge_now(&self.sock);
                    self.wait(what)?;
                }
                Err(e) => return Err(ssh_err(what, e)),
            }
        }
    }

    /// Wait until the socket is ready in the directions libssh2 is blocked on.
    fn wait(&self, what: &str) -> Result<()> {
        use std::os::fd::AsRawFd;
        let left = self
            .deadline
            .saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(Error::temporary(format!("{what}: timed out")));
        }
        let dirs = self.sess.block_directions();
        let mut events = 0;
        if matches!(
            dirs,
            ssh2::BlockDirections::Inbound | ssh2::BlockDirections::Both
        ) {
            events |= libc::POLLIN;
        }
        if matches!(
            dirs,
            ssh2::BlockDirections::Outbound | ssh2::BlockDirections::Both
        ) {
            events |= libc::POLLOUT;
        }
        if events == 0 {
            events = libc::POLLIN;
        }
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::temporary(format!("{what}: {e}")));
            }
        }
        Ok(())
    }
}

/// Send the acknowledgement of what was received now rather than after the delayed-ACK
/// timer (a no-op where `TCP_QUICKACK` does not exist).
fn acknowledge_now(sock: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: a valid socket and an int option of the size given.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                std::ptr::addr_of!(one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = sock;
}

/// The writing half of an SSH channel. `flush()` does nothing: `ssh2`'s `Stream::flush` is
/// `libssh2_channel_flush_ex`, which *discards the data received and not yet read* on the
/// stream, and writes are sent as they are made (nothing to flush). With a flush after each
/// phase, a reply that arrived before the flush (the receiver answers as soon as it has a
/// request, while the sender may still be writing) would be lost and both ends would wait.
struct NoFlush(ssh2::Stream);

impl std::io::Write for NoFlush {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn check_host_key(sess: &ssh2::Session, host: &str, port: u16, known_hosts: &Path) -> Result<()> {
    let mut kh = sess.known_hosts().map_err(|e| ssh_err("known_hosts", e))?;
    if let Err(e) = kh.read_file(known_hosts, ssh2::KnownHostFileKind::OpenSSH) {
        if known_hosts.exists() {
            return Err(Error::config(format!(
                "cannot read {}: {e}",
                known_hosts.display()
            )));
        }
    }
    let (key, key_type) = sess
        .host_key()
        .ok_or_else(|| Error::temporary(format!("{host} sent no host key")))?;
    let name = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    let type_name = match key_type {
        ssh2::HostKeyType::Rsa => "ssh-rsa",
        ssh2::HostKeyType::Dss => "ssh-dss",
        ssh2::HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
        ssh2::HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
        ssh2::HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
        ssh2::HostKeyType::Ed25519 => "ssh-ed25519",
        _ => "unknown",
    };
    use base64::Engine;
    let line = format!(
        "{name} {type_name} {}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    match kh.check_port(host, port, key) {
        ssh2::CheckResult::Match => Ok(()),
        ssh2::CheckResult::NotFound => Err(Error::denied(format!(
            "the host key of {name} is not in {}; after checking it out of band, add:\n{line}",
            known_hosts.display()
        ))),
        ssh2::CheckResult::Mismatch => Err(Error::denied(format!(
            "THE HOST KEY OF {name} HAS CHANGED (not the one in {}); refusing. If the change is \
             legitimate, replace its line with:\n{line}",
            known_hosts.display()
        ))),
        ssh2::CheckResult::Failure => Err(Error::temporary(format!(
            "cannot check the host key of {name}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/usr/mail"), "/usr/mail");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(x)"), "'$(x)'");
    }
}
