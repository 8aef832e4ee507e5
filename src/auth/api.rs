//! The JSON API (passdb / userdb / users) used by `mailauth checkpassword` (through the
//! daemon's unix socket) and by the Dovecot 2.4 Lua passdb/userdb. `mailauth serve` routes
//! these paths to [`handle`]; this module does the work and knows nothing about HTTP.
//!
//! # Contract
//!
//! Every request body is at most [`MAX_REQUEST_BODY`] bytes of JSON; unknown keys are
//! ignored. Every JSON answer is an object with a `result` field.
//!
//! ## `POST /passdb` — verify a login
//! Request: `{"user": "ivanov@branch.domain.ru", "password": "...", "service": "imap",
//! "remote_ip": "192.0.2.1", "local_ip": "192.0.2.2"}` (`service`, `remote_ip`, `local_ip`
//! optional; a password that is not UTF-8 may be sent as `"password_b64"` instead).
//! Answers (HTTP 200):
//! - `{"result":"ok","user":"ivanov@branch.domain.ru","home":"/usr/mail/branch.domain.ru/ivanov",
//!   "mail":"maildir:/usr/mail/branch.domain.ru/ivanov/Maildir","uid":8,"gid":8}` and, in proxy
//!   mode when the user's primary node is another node, `"proxy":{"host":"10.0.0.2","port":143}`.
//!   `user` is canonical (lower case, `+tag` removed): use it as the login name.
//! - `{"result":"password_mismatch","reason":"..."}` — wrong password, or the stored value is
//!   unusable (unknown scheme, malformed; `reason` says which, never the password).
//! - `{"result":"user_unknown"}` — no such mailbox (or a name that cannot be one).
//! - `{"result":"user_disabled","reason":"..."}` — right password, but the mailbox or its
//!   domain is disabled. Treat it like a failed login (Lua: `PASSDB_RESULT_USER_DISABLED`).
//!
//! ## `POST /userdb` — describe a user (LMTP delivery, doveadm)
//! Request: `{"user": "..."}`. Answers `ok` with the same fields as passdb (never `proxy`), or
//! `user_unknown`. A disabled mailbox still answers `ok`, so mail already accepted is delivered.
//!
//! ## `GET /users` — iteration
//! `text/plain`, one canonical user per line, sorted (all mailboxes, disabled ones included).
//!
//! ## Failures
//! - Database down, hung or timing out: HTTP 503 `{"result":"internal_failure","reason":"..."}`.
//!   Clients must treat any status other than 200, and any body they cannot parse, as
//!   `internal_failure` (Dovecot: "temporary failure"; never a login).
//! - Malformed request: HTTP 400 `{"result":"internal_failure","reason":"..."}`.
//! - Unknown path: HTTP 404 `{"result":"internal_failure","reason":"no such endpoint"}`.

use super::authenticator::{AuthContext, Authenticator, Outcome, ProxyTarget, UserInfo};
use crate::error::{Error, Result};
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Largest request body accepted.
pub const MAX_REQUEST_BODY: usize = 4096;

/// An answer for the HTTP layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// The paths [`handle`] serves.
pub const PATHS: &[&str] = &["/passdb", "/userdb", "/users"];

/// `POST /passdb` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PassdbRequest {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_b64: Option<String>,
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub remote_ip: String,
    #[serde(default)]
    pub local_ip: String,
}

/// `POST /userdb` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserdbRequest {
    pub user: String,
}

/// The JSON answer of `/passdb` and `/userdb`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiAnswer {
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ApiAnswer {
    fn from_outcome(outcome: Outcome) -> ApiAnswer {
        match outcome {
            Outcome::Ok(info) => ApiAnswer {
                result: "ok".into(),
                user: Some(info.user),
                home: Some(info.home),
                mail: Some(info.mail),
                uid: Some(info.uid),
                gid: Some(info.gid),
                proxy: info.proxy,
                reason: None,
            },
            Outcome::PasswordMismatch(why) => ApiAnswer {
                result: "password_mismatch".into(),
                reason: Some(why),
                ..Default::default()
            },
            Outcome::UserUnknown => ApiAnswer {
                result: "user_unknown".into(),
                ..Default::default()
            },
            Outcome::UserDisabled => ApiAnswer {
                result: "user_disabled".into(),
                reason: Some("mailbox or domain disabled".into()),
                ..Default::default()
            },
        }
    }

    /// Back to an [`Outcome`] (client side). An `internal_failure`, an unknown result or a
    /// missing field is a temporary error.
    pub fn into_outcome(self) -> Result<Outcome> {
        match self.result.as_str() {
            "ok" => {
                let (Some(user), Some(home), Some(mail), Some(uid), Some(gid)) =
                    (self.user, self.home, self.mail, self.uid, self.gid)
                else {
                    return Err(Error::temporary("auth daemon: incomplete ok answer"));
                };
                Ok(Outcome::Ok(UserInfo {
                    user,
                    home,
                    mail,
                    uid,
                    gid,
                    proxy: self.proxy,
                }))
            }
            "password_mismatch" => Ok(Outcome::PasswordMismatch(
                self.reason.unwrap_or_else(|| "password mismatch".into()),
            )),
            "user_unknown" => Ok(Outcome::UserUnknown),
            "user_disabled" => Ok(Outcome::UserDisabled),
            _ => Err(Error::temporary(format!(
                "auth daemon: {}",
                self.reason
                    .as_deref()
                    .map(crate::names::printable)
                    .unwrap_or_else(|| "internal failure".into())
            ))),
        }
    }
}

fn json(status: u16, answer: &ApiAnswer) -> ApiResponse {
    ApiResponse {
        status,
        content_type: "application/json",
        body: serde_json::to_vec(answer).unwrap_or_else(|_| {
            br#"{"result":"internal_failure","reason":"serialisation"}"#.to_vec()
        }),
    }
}

fn failure(status: u16, reason: impl Into<String>) -> ApiResponse {
    json(
        status,
        &ApiAnswer {
            result: "internal_failure".into(),
            reason: Some(reason.into()),
            ..Default::default()
        },
    )
}

fn outcome_response(r: Result<Outcome>) -> ApiResponse {
    match r {
        Ok(o) => json(200, &ApiAnswer::from_outcome(o)),
        Err(e) => {
            log::warn!("{e}");
            failure(503, e.message().to_string())
        }
    }
}

/// Serve one API request. `path` is the request path without query string.
pub fn handle(auth: &Authenticator, path: &str, body: &[u8]) -> ApiResponse {
    if body.len() > MAX_REQUEST_BODY {
        return failure(400, "request body too large");
    }
    match path {
        "/passdb" => {
            let req: PassdbRequest = match serde_json::from_slice(body) {
                Ok(r) => r,
                Err(_) => return failure(400, "malformed passdb request"),
            };
            let password: Vec<u8> = match (&req.password, &req.password_b64) {
                (Some(p), _) => p.as_bytes().to_vec(),
                (None, Some(b)) => match base64::engine::general_purpose::STANDARD.decode(b) {
                    Ok(p) => p,
                    Err(_) => return failure(400, "malformed password_b64"),
                },
                (None, None) => return failure(400, "passdb request without password"),
            };
            let ctx = AuthContext {
                service: req.service,
                remote_ip: req.remote_ip,
                local_ip: req.local_ip,
            };
            outcome_response(auth.passdb(&req.user, &password, &ctx))
        }
        "/userdb" => {
            let req: UserdbRequest = match serde_json::from_slice(body) {
                Ok(r) => r,
                Err(_) => return failure(400, "malformed userdb request"),
            };
            outcome_response(auth.userdb(&req.user))
        }
        "/users" => match auth.users() {
            Ok(users) => {
                let mut body = Vec::new();
                for u in users {
                    body.extend_from_slice(u.user.as_bytes());
                    body.push(b'\n');
                }
                ApiResponse {
                    status: 200,
                    content_type: "text/plain",
                    body,
                }
            }
            Err(e) => {
                log::warn!("{e}");
                failure(503, e.message().to_string())
            }
        },
        _ => failure(404, "no such endpoint"),
    }
}

#[cfg(test)]
mod tests {
    /// The daemon shares one Authenticator between its worker threads.
    #[test]
    fn authenticator_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::Authenticator>();
    }
}
