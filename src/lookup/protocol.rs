//! The line protocol of `mailmap serve`, made for Exim's `${readsocket}`:
//!
//! ```text
//! request:  VERB SP ARGUMENT [CR] [LF]      (then EOF: readsocket shuts down its write side)
//! answer:   OK SP VALUE LF | NOTFOUND LF | TEMPFAIL [SP REASON] LF | ERROR SP REASON LF
//! ```
//! then the server closes the connection. Verbs: `local-domain`, `route`, `recipient`,
//! `rcpt-route`, `backup-domain`, `backup-route`, `home`, `maildir` (as the subcommands), `ping`.
//! The argument is the rest of the line (it may contain spaces: it is then simply not a valid
//! name, so NOTFOUND). A request with more than one line, bytes that are not UTF-8, or longer
//! than the bound is answered NOTFOUND (no valid name looks like that). An unknown verb is
//! an ERROR, which the snippets treat like TEMPFAIL (defer, never bounce).

use super::Query;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Query(Query),
    Ping,
    /// Statistics (cache entries, database state).
    Stats,
    /// Syntactically hopeless input: answered NOTFOUND.
    Invalid,
    /// Unknown verb: answered ERROR.
    Unknown,
}

/// An answer on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Ok(String),
    NotFound,
    TempFail(String),
    Error(String),
}

impl Response {
    pub fn to_line(&self) -> String {
        match self {
            Response::Ok(v) => format!("OK {}\n", one_line(v)),
            Response::NotFound => "NOTFOUND\n".to_string(),
            Response::TempFail(r) if r.is_empty() => "TEMPFAIL\n".to_string(),
            Response::TempFail(r) => format!("TEMPFAIL {}\n", one_line(r)),
            Response::Error(r) => format!("ERROR {}\n", one_line(r)),
        }
    }

    /// Parse an answer line (for clients and tests).
    pub fn parse(line: &str) -> Option<Response> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        Some(match word {
            "OK" => Response::Ok(rest.to_string()),
            "NOTFOUND" => Response::NotFound,
            "TEMPFAIL" => Response::TempFail(rest.to_string()),
            "ERROR" => Response::Error(rest.to_string()),
            _ => return None,
        })
    }
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(512)
        .collect()
}

/// Parse the raw bytes of a request (everything the client sent before EOF or the first
/// LF). `complete` is false when the request was cut at the length bound.
pub fn parse_request(raw: &[u8], complete: bool) -> Request {
    if !complete {
        return Request::Invalid;
    }
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let Ok(line) = std::str::from_utf8(raw) else {
        return Request::Invalid;
    };
    if line.contains(['\n', '\r', '\0']) {
        return Request::Invalid;
    }
    let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
    match verb {
        "ping" => Request::Ping,
        "stats" => Request::Stats,
        _ => match Query::from_verb(verb, arg) {
            Some(q) => Request::Query(q),
            None => Request::Unknown,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(
            parse_request(b"route a.b.ru\n", true),
            Request::Query(Query::Route {
                domain: "a.b.ru".into()
            })
        );
        assert_eq!(
            parse_request(b"rcpt-route \"a b\"@x.ru", true),
            Request::Query(Query::RcptRoute {
                address: "\"a b\"@x.ru".into()
            })
        );
        assert_eq!(
            parse_request(b"route a.b.ru\nroute c.d", true),
            Request::Invalid
        );
        assert_eq!(parse_request(b"route \xff", true), Request::Invalid);
        assert_eq!(parse_request(b"route a.b.ru", false), Request::Invalid);
        assert_eq!(parse_request(b"drop table", true), Request::Unknown);
        assert_eq!(parse_request(b"ping\r\n", true), Request::Ping);
    }

    #[test]
    fn responses() {
        for r in [
            Response::Ok("h1 : h2".into()),
            Response::NotFound,
            Response::TempFail("database down".into()),
            Response::Error("x".into()),
        ] {
            assert_eq!(Response::parse(&r.to_line()), Some(r));
        }
        assert_eq!(Response::Ok("a\nb".into()).to_line(), "OK a b\n");
    }
}
