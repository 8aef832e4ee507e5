//! The one error type of the toolkit. Its [`ErrorKind`] decides the exit code
//! (design §3.3) and whether a failure is temporary (retry later) or final.

use std::fmt;

/// What went wrong, as far as the caller (Exim, Dovecot, nginx, cron, an admin) cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The thing asked for does not exist (unknown domain, mailbox, user). Exit 1.
    NotFound,
    /// Wrong password or refused login. Exit 1.
    Denied,
    /// The input is malformed (bad name, bad option, bad protocol frame). Exit 64.
    BadInput,
    /// A failure that may go away: database down or hung, timeout, lock held. Exit 75.
    Temporary,
    /// The configuration is wrong or unreadable. Exit 78.
    Config,
    /// Anything else: local I/O failure, a bug. Exit 70 (EX_SOFTWARE) for admins,
    /// treated as temporary by the helpers (a failure must never look like "not found").
    Internal,
}

/// sysexits(3) codes used by the toolkit.
pub mod exit {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const USAGE: i32 = 64;
    pub const SOFTWARE: i32 = 70;
    pub const TEMPFAIL: i32 = 75;
    pub const CONFIG: i32 = 78;
}

impl ErrorKind {
    /// Exit code for mailmap / mailctl / mailsync (design §3.3).
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::NotFound | ErrorKind::Denied => exit::NOT_FOUND,
            ErrorKind::BadInput => exit::USAGE,
            ErrorKind::Temporary => exit::TEMPFAIL,
            ErrorKind::Config => exit::CONFIG,
            ErrorKind::Internal => exit::SOFTWARE,
        }
    }

    /// True when retrying later may succeed: Exim must defer, Dovecot/nginx must say
    /// "try again later". Internal errors count as temporary: never let them look final.
    pub fn is_temporary(self) -> bool {
        matches!(self, ErrorKind::Temporary | ErrorKind::Internal)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::Denied => "denied",
            ErrorKind::BadInput => "bad input",
            ErrorKind::Temporary => "temporary failure",
            ErrorKind::Config => "configuration error",
            ErrorKind::Internal => "internal error",
        })
    }
}

/// The toolkit's error: a kind plus a message meant for a person (it says what to do).
/// Messages never contain secrets.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Denied, message)
    }
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadInput, message)
    }
    pub fn temporary(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Temporary, message)
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Wrap a local I/O error with what we were doing (`context`, e.g. "reading /etc/x").
    pub fn io(context: impl fmt::Display, err: std::io::Error) -> Self {
        let kind = match err.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => ErrorKind::Temporary,
            std::io::ErrorKind::Interrupted => ErrorKind::Temporary,
            _ => ErrorKind::Internal,
        };
        let message = format!("{context}: {err}");
        Self::with_source(kind, message, err)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    pub fn exit_code(&self) -> i32 {
        self.kind.exit_code()
    }
    pub fn is_temporary(&self) -> bool {
        self.kind.is_temporary()
    }

    /// Prefix the message with more context, keeping the kind.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_contract() {
        assert_eq!(Error::not_found("x").exit_code(), 1);
        assert_eq!(Error::bad_input("x").exit_code(), 64);
        assert_eq!(Error::temporary("x").exit_code(), 75);
        assert_eq!(Error::config("x").exit_code(), 78);
        assert!(Error::internal("x").is_temporary());
        assert!(!Error::not_found("x").is_temporary());
        assert!(!Error::config("x").is_temporary());
        assert_eq!(Error::denied("x").exit_code(), 1);
        assert_eq!(Error::internal("x").exit_code(), 70);
    }

    #[test]
    fn io_errors_are_never_not_found() {
        use std::io::{Error as IoError, ErrorKind as IoKind};
        let e = Error::io("reading /x", IoError::from(IoKind::TimedOut));
        assert_eq!(e.kind(), ErrorKind::Temporary);
        let e = Error::io("reading /x", IoError::from(IoKind::NotFound));
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert!(e.is_temporary());
        assert!(e.to_string().starts_with("reading /x: "));
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn context_keeps_the_kind() {
        let e = Error::temporary("connection refused").context("directory storage-01");
        assert_eq!(e.kind(), ErrorKind::Temporary);
        assert_eq!(e.to_string(), "directory storage-01: connection refused");
    }
}
