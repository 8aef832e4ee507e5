//! Talking to the admin: passwords from a terminal without echo (or from stdin for
//! scripts — never from argv), and confirmation of destructive commands.

use crate::error::{Error, Result};
use std::io::{BufRead, IsTerminal, Read, Write};

/// Read one line from `r`, at most `max` bytes (newline stripped).
fn read_bounded_line(r: &mut dyn Read, max: usize) -> Result<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match r.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => {
                if byte[0] == b'\n' {
                    break;
                }
                if buf.len() >= max {
                    return Err(Error::bad_input(format!(
                        "password longer than {max} bytes refused"
                    )));
                }
                buf.push(byte[0]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("reading the password", e)),
        }
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf).map_err(|_| Error::bad_input("the password is not valid UTF-8"))
}

/// The password from the first line of stdin (`--password-stdin`).
pub fn password_from_stdin() -> Result<String> {
    let stdin = std::io::stdin();
    let mut lock = stdin.lock();
    read_bounded_line(&mut lock, super::password::MAX_PASSWORD_LEN)
}

/// Turns terminal echo off until dropped.
struct NoEcho {
    fd: i32,
    saved: libc::termios,
}

impl NoEcho {
    fn new(fd: i32) -> Option<NoEcho> {
        // SAFETY: tcgetattr/tcsetattr on a descriptor we hold open, with a zeroed termios
        // that tcgetattr fills in.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut t) != 0 {
                return None;
            }
            let saved = t;
            t.c_lflag &= !(libc::ECHO | libc::ECHONL);
            t.c_lflag |= libc::ICANON;
            if libc::tcsetattr(fd, libc::TCSAFLUSH, &t) != 0 {
                return None;
            }
            Some(NoEcho { fd, saved })
        }
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        // SAFETY: restoring the attributes saved from the same descriptor.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSAFLUSH, &self.saved);
        }
    }
}

/// Ask for a new password twice on the controlling terminal, echo off.
pub fn new_password_from_tty(what: &str) -> Result<String> {
    use std::os::unix::io::AsRawFd;
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| {
            Error::bad_input(
                "no terminal to ask for the password: pipe it with --password-stdin \
                 (never on the command line)",
            )
        })?;
    let fd = tty.as_raw_fd();
    let mut ask = |prompt: &str| -> Result<String> {
        let _ = write!(tty, "{prompt}");
        let _ = tty.flush();
        let guard = NoEcho::new(fd);
        let line = read_bounded_line(&mut tty, super::password::MAX_PASSWORD_LEN);
        drop(guard);
        let _ = writeln!(tty);
        line
    };
    let first = ask(&format!("New password for {what}: "))?;
    let second = ask("Again: ")?;
    if first != second {
        return Err(Error::bad_input(
            "the two passwords differ; nothing was changed",
        ));
    }
    Ok(first)
}

/// The new password: from stdin with `from_stdin`, else from the terminal.
pub fn new_password(what: &str, from_stdin: bool) -> Result<String> {
    if from_stdin {
        password_from_stdin()
    } else {
        new_password_from_tty(what)
    }
}

/// Confirm a destructive action: `yes` skips the question; on a terminal ask; otherwise
/// refuse (scripts must say --yes).
pub fn confirm(question: &str, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::bad_input(format!(
            "{question}: refusing without --yes (not on a terminal)"
        )));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .take(64)
        .read_line(&mut line)
        .map_err(|e| Error::io("reading the answer", e))?;
    if matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(Error::bad_input("cancelled; nothing was changed"))
    }
}
