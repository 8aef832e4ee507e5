//! `GET /auth`: nginx's `auth_http` protocol (shared/reference/protocols.md §2).
//!
//! Never grants on error: a directory failure, an overload, an unknown scheme or any other
//! internal problem answers a temporary failure in the client's protocol, never `OK`.

use super::server::{Header, Request, Response};
use super::verify;
use super::Service;
use crate::auth::health::Protocol;
use crate::auth::throttle::Block;
use crate::directory::{DomainRecord, MailboxRecord};
use crate::names::{Address, Domain, LocalPart, Strictness};
use std::net::IpAddr;

/// Longest Auth-User / Auth-Pass / Auth-Salt we decode (nginx limits a line to ~4 kB).
const MAX_FIELD: usize = 1024;

/// What happened, for the log line and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Wrong password, unknown or disabled user.
    Fail,
    /// Refused by the throttle without a password check.
    Blocked,
    /// Temporary failure (directory down, no healthy node, overload...).
    TempFail,
    /// Method not allowed (none, external, apop without plaintext...).
    Refused,
    /// Malformed request.
    Invalid,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Blocked => "blocked",
            Outcome::TempFail => "tempfail",
            Outcome::Refused => "refused",
            Outcome::Invalid => "invalid",
        }
    }
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::Fail,
        Outcome::Blocked,
        Outcome::TempFail,
        Outcome::Refused,
        Outcome::Invalid,
    ];
}

/// Decode `Auth-User` / `Auth-Pass` as nginx encodes them (`NGX_ESCAPE_MAIL_AUTH`): only
/// `%XX` is an escape; `+` and raw non-ASCII bytes stand for themselves. A `%` not followed
/// by two hex digits is an error.
pub fn decode(value: &[u8]) -> Option<Vec<u8>> {
    if value.len() > MAX_FIELD * 3 {
        return None;
    }
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%' {
            let hi = value.get(i + 1).and_then(|b| (*b as char).to_digit(16))?;
            let lo = value.get(i + 2).and_then(|b| (*b as char).to_digit(16))?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(value[i]);
            i += 1;
        }
    }
    (out.len() <= MAX_FIELD).then_some(out)
}

/// The per-request facts for the log line.
pub struct Logged {
    pub user: String,
    pub client: String,
    pub proto: &'static str,
    pub method: String,
    pub attempt: u32,
    pub outcome: Outcome,
    pub node: String,
    pub why: String,
}

struct Ctx {
    proto: Option<Protocol>,
    attempt: u32,
}

impl Ctx {
    fn temp_fail(&self) -> Response {
        let r = Response::new(200);
        match self.proto {
            Some(Protocol::Imap) => r.header(
                "Auth-Status",
                "[UNAVAILABLE] Temporary authentication failure, try again later",
            ),
            Some(Protocol::Pop3) => r.header(
                "Auth-Status",
                "[SYS/TEMP] Temporary authentication failure, try again later",
            ),
            Some(Protocol::Smtp) => r
                .header(
                    "Auth-Status",
                    "Temporary authentication failure, try again later",
                )
                .header("Auth-Error-Code", "454 4.7.0"),
            None => r.header(
                "Auth-Status",
                "Temporary authentication failure, try again later",
            ),
        }
    }

    fn fail(&self, wait: Option<u32>) -> Response {
        let mut r = Response::new(200);
        r = match self.proto {
            Some(Protocol::Imap) => r.header(
                "Auth-Status",
                "[AUTHENTICATIONFAILED] Invalid login or password",
            ),
            Some(Protocol::Pop3) => r.header("Auth-Status", "[AUTH] Invalid login or password"),
            Some(Protocol::Smtp) => r
                .header("Auth-Status", "Invalid login or password")
                .header("Auth-Error-Code", "535 5.7.8"),
            None => r.header("Auth-Status", "Invalid login or password"),
        };
        if let Some(w) = wait {
            r = r.header("Auth-Wait", w.to_string());
        }
        r
    }

    fn refused(&self, text: &str, smtp_code: &str) -> Response {
        let r = Response::new(200).header("Auth-Status", text);
        if self.proto == Some(Protocol::Smtp) {
            r.header("Auth-Error-Code", smtp_code)
        } else {
            r
        }
    }
}

fn one<'a>(req: &'a Request, name: &str) -> std::result::Result<Option<&'a [u8]>, String> {
    match req.header(name) {
        Header::Missing => Ok(None),
        Header::One(v) => Ok(Some(v)),
        Header::Duplicated => Err(format!("duplicated {name}")),
    }
}

fn ascii<'a>(req: &'a Request, name: &str) -> std::result::Result<Option<&'a str>, String> {
    match one(req, name)? {
        None => Ok(None),
        Some(v) => std::str::from_utf8(v)
            .ok()
            .filter(|s| s.is_ascii())
            .map(Some)
            .ok_or_else(|| format!("non-ASCII {name}")),
    }
}

/// Handle one `/auth` request. Returns the response and what to log.
pub fn handle(svc: &Service, req: &Request) -> (Response, Logged) {
    let mut log = Logged {
        user: String::new(),
        client: String::new(),
        proto: "-",
        method: String::new(),
        attempt: 0,
        outcome: Outcome::Invalid,
        node: "-".into(),
        why: String::new(),
    };
    let mut ctx = Ctx {
        proto: None,
        attempt: 1,
    };
    let response = match run(svc, req, &mut ctx, &mut log) {
        Ok(r) => r,
        Err((outcome, why)) => {
            log.outcome = outcome;
            log.why = why;
            match outcome {
                Outcome::TempFail => ctx.temp_fail(),
                _ => Response::new(200).header("Auth-Status", "Invalid request"),
            }
        }
    };
    (response, log)
}

type Step<T> = std::result::Result<T, (Outcome, String)>;

fn invalid<T>(why: impl Into<String>) -> Step<T> {
    Err((Outcome::Invalid, why.into()))
}

fn run(svc: &Service, req: &Request, ctx: &mut Ctx, log: &mut Logged) -> Step<Response> {
    if req.method != "GET" {
        return invalid("method is not GET");
    }
    let proto = ascii(req, "auth-protocol").or_else(invalid)?;
    ctx.proto = proto.and_then(Protocol::parse);
    let Some(proto) = ctx.proto else {
        return invalid("missing or unknown Auth-Protocol");
    };
    log.proto = proto.as_str();
    let client = ascii(req, "client-ip").or_else(invalid)?;
    let Some(client_ip) = client.and_then(|c| c.parse::<IpAddr>().ok()) else {
        return invalid("missing or invalid Client-IP");
    };
    log.client = client_ip.to_string();
    ctx.attempt = match ascii(req, "auth-login-attempt").or_else(invalid)? {
        None => 1,
        Some(a) => match a.parse::<u32>() {
            Ok(n) => n,
            Err(_) => return invalid("invalid Auth-Login-Attempt"),
        },
    };
    log.attempt = ctx.attempt;
    let Some(method) = ascii(req, "auth-method").or_else(invalid)? else {
        return invalid("missing Auth-Method");
    };
    log.method = method.chars().take(16).collect();

    match method {
        "plain" | "login" | "apop" | "cram-md5" => {}
        "none" => return smtp_none(svc, req, ctx, log),
        "external" => {
            log.outcome = Outcome::Refused;
            log.why = "external authentication is not supported".into();
            return Ok(ctx.refused("Authentication method not supported", "504 5.5.4"));
        }
        _ => return invalid("unknown Auth-Method"),
    }

    let Some(user) = one(req, "auth-user").or_else(invalid)?.and_then(decode) else {
        return invalid("missing or badly escaped Auth-User");
    };
    let Some(pass) = one(req, "auth-pass").or_else(invalid)?.and_then(decode) else {
        return invalid("missing or badly escaped Auth-Pass");
    };
    let user = String::from_utf8_lossy(&user).to_string();
    log.user = user.clone();
    let challenge = method == "apop" || method == "cram-md5";
    let salt = if challenge {
        match one(req, "auth-salt").or_else(invalid)? {
            Some(s) if !s.is_empty() && s.len() <= MAX_FIELD => Some(s.to_vec()),
            _ => return invalid("missing Auth-Salt"),
        }
    } else {
        None
    };
    // Throttle key: the name as typed, lower-cased (an invalid name is throttled too).
    let throttle_user = user.to_ascii_lowercase();

    if let Some(block) = svc.throttle.blocked(&throttle_user, client_ip) {
        log.outcome = Outcome::Blocked;
        log.why = match block {
            Block::Pair => "too many failures for this user from this address".into(),
            Block::Ip => "too many failures from this address".into(),
        };
        let wait = svc
            .throttle
            .wait(u32::MAX, ctx.attempt)
            .map(|_| svc.throttle.config().wait_max);
        return Ok(ctx.fail(wait));
    }

    let failure = |log: &mut Logged, why: &str| -> Step<Response> {
        let n = svc.throttle.failure(&throttle_user, client_ip, &pass);
        log.outcome = Outcome::Fail;
        log.why = why.to_string();
        Ok(ctx.fail(svc.throttle.wait(n, ctx.attempt)))
    };

    if user.len() > 320 || !user.is_ascii() {
        return failure(log, "invalid user name");
    }
    let Some((local, domain)) = user.rsplit_once('@') else {
        return failure(log, "user name is not an address");
    };
    let (Ok(local), Ok(domain)) = (
        LocalPart::parse_mailbox(local, Strictness::Lookup),
        Domain::parse(domain, Strictness::Lookup),
    ) else {
        return failure(log, "invalid user name");
    };
    let address = Address {
        local: local.clone(),
        domain: domain.clone(),
    };
    log.user = address.to_string();

    let key = address.to_string();
    let lookup = || -> Step<(Option<MailboxRecord>, Option<DomainRecord>)> {
        svc.pool
            .with(|dir| {
                let mailbox = dir.mailbox(&local, &domain)?;
                let route = match &mailbox {
                    Some(m) if m.is_active() => svc.route(dir, &domain)?,
                    _ => None,
                };
                Ok((mailbox, route))
            })
            .map_err(|e| (Outcome::TempFail, e.to_string()))
    };
    // A recent successful login of this user: its record from the cache, trusted only while
    // the directory answers (a trivial statement it answered, sent at most `db_lease` ago;
    // a database that is down or hung lets nobody in), and only for the password it holds
    // (any other is checked on the directory's current record).
    let (mut mailbox, mut route, mut cached) = match svc.cached_login(&address, &key) {
        Some((m, r)) => {
            svc.pool
                .answered_within(svc.db_lease)
                .map_err(|e| (Outcome::TempFail, e.to_string()))?;
            (Some(m), Some(r), true)
        }
        None => {
            let (m, r) = lookup()?;
            (m, r, false)
        }
    };
    // Unknown, disabled or password-less: spend the time of a check in the default
    // scheme anyway, so that the answer time does not tell which names exist.
    let decoy = |log: &mut Logged, why: &str| -> Step<Response> {
        if salt.is_none() {
            if let Some(_permit) = svc.gate.acquire() {
                let _ = verify::verify(&svc.decoy, &pass, svc.auth.default_scheme());
            }
        }
        failure(log, why)
    };
    let default_scheme = svc.auth.default_scheme();
    let (record, backend_pass) = loop {
        let Some(record) = mailbox.take() else {
            return decoy(log, "no such mailbox");
        };
        if !record.is_active() {
            return decoy(log, "mailbox or domain disabled");
        }
        let Some(stored) = record.password.as_deref().filter(|p| !p.is_empty()) else {
            return decoy(log, "no password stored");
        };
        let mut backend_pass: Option<String> = None;
        let ok = if let Some(salt) = &salt {
            match verify::plaintext(stored, default_scheme) {
                None => {
                    log.outcome = Outcome::Refused;
                    log.why = format!("{method} needs a stored plaintext password");
                    return Ok(ctx.refused("Authentication method not supported", "504 5.5.4"));
                }
                Some(plain) => {
                    backend_pass = Some(plain.to_string());
                    if method == "apop" {
                        verify::verify_apop(plain, salt, &pass)
                    } else {
                        verify::verify_cram_md5(plain, salt, &pass)
                    }
                }
            }
        } else {
            let Some(_permit) = svc.gate.acquire() else {
                return Err((Outcome::TempFail, "password hashing overloaded".into()));
            };
            verify::verify(stored, &pass, default_scheme)
                .map_err(|e| (Outcome::TempFail, e.to_string()))?
        };
        if ok {
            break (record, backend_pass);
        }
        if !cached {
            return failure(log, "wrong password");
        }
        // The cached record may be stale (a new password): decide on the current one.
        svc.forget_login(&key);
        (mailbox, route) = lookup()?;
        cached = false;
    };
    svc.throttle.success(&throttle_user, client_ip);

    let Some(route) = route else {
        return Err((
            Outcome::TempFail,
            format!("domain {domain} has no storage node"),
        ));
    };
    if !cached {
        svc.remember_login(&key, &record);
    }
    let (node, ip, port) = svc
        .choose_node(&route, proto)
        .map_err(|why| (Outcome::TempFail, why))?;
    log.node = node.clone();
    log.outcome = Outcome::Ok;
    let mut r = Response::new(200)
        .header("Auth-Status", "OK")
        .header("Auth-Server", ip.to_string())
        .header("Auth-Port", port.to_string())
        .header("Auth-User", address.to_string());
    if let Some(p) = backend_pass {
        if p.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err((Outcome::TempFail, "stored plaintext holds CR/LF".into()));
        }
        r = r.header("Auth-Pass", p);
    }
    Ok(r)
}

/// SMTP without authentication: refused unless `smtp_allow_none`; then routed by the
/// recipient's domain (its primary, or the backup when the primary does not answer).
fn smtp_none(svc: &Service, req: &Request, ctx: &Ctx, log: &mut Logged) -> Step<Response> {
    if ctx.proto != Some(Protocol::Smtp) || !svc.settings.smtp_allow_none {
        log.outcome = Outcome::Refused;
        log.why = "unauthenticated relaying is not allowed".into();
        return Ok(ctx.refused("Authentication required", "530 5.7.0"));
    }
    let rcpt = ascii(req, "auth-smtp-to").or_else(invalid)?.unwrap_or("");
    let addr = rcpt
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(a, _)| a)
        .unwrap_or("");
    log.user = format!("rcpt:{addr}");
    let domain = addr
        .rsplit_once('@')
        .and_then(|(_, d)| Domain::parse(d, Strictness::Lookup).ok());
    let Some(domain) = domain else {
        log.outcome = Outcome::Refused;
        log.why = "no valid recipient".into();
        return Ok(ctx.refused("Relay access denied", "550 5.7.1"));
    };
    let route = svc
        .pool
        .with(|dir| svc.route(dir, &domain))
        .map_err(|e| (Outcome::TempFail, e.to_string()))?;
    let Some(route) = route.filter(|r| r.active) else {
        log.outcome = Outcome::Refused;
        log.why = "recipient domain is not ours".into();
        return Ok(ctx.refused("Relay access denied", "550 5.7.1"));
    };
    let (node, ip, port) = svc
        .choose_node(&route, Protocol::Smtp)
        .map_err(|why| (Outcome::TempFail, why))?;
    log.node = node;
    log.outcome = Outcome::Ok;
    Ok(Response::new(200)
        .header("Auth-Status", "OK")
        .header("Auth-Server", ip.to_string())
        .header("Auth-Port", port.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_nginx_encodes() {
        assert_eq!(decode(b"p%25a%20s:s/+").unwrap(), b"p%a s:s/+");
        assert_eq!(decode(b"a+b").unwrap(), b"a+b");
        assert_eq!(decode(b"\xd0\xbf").unwrap(), "п".as_bytes());
        assert_eq!(decode(b"%0d%0A").unwrap(), b"\r\n");
        assert!(decode(b"%").is_none());
        assert!(decode(b"%2").is_none());
        assert!(decode(b"%zz").is_none());
        assert!(decode(&vec![b'a'; 5000]).is_none());
    }
}
