//! Whether a node's services answer, for `mailctl node list`, with the library's health
//! check ([`crate::auth::health::check_greeting`]): a service is up only when it sends its
//! greeting (`* OK`, `+OK`, `220`) in time — a bare TCP connect is not enough.

use crate::auth::health::{check_greeting, Protocol};
use crate::config::PortsConfig;
use serde::Serialize;
use std::net::ToSocketAddrs;
use std::time::Duration;

/// One service of one node.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceHealth {
    pub service: &'static str,
    pub port: u16,
    /// "up", "down" or "unresolvable".
    pub state: &'static str,
    /// Why it is not up (None when up).
    pub reason: Option<String>,
}

/// Probe IMAP, POP3 and SMTP on `node` (at `address` when `[auth.nodes]` names one)
/// within `timeout` each.
pub fn probe(
    node: &str,
    address: Option<&str>,
    ports: &PortsConfig,
    timeout: Duration,
) -> Vec<ServiceHealth> {
    let host = address.unwrap_or(node);
    [
        ("imap", Protocol::Imap, ports.imap),
        ("pop3", Protocol::Pop3, ports.pop3),
        ("smtp", Protocol::Smtp, ports.smtp),
    ]
    .into_iter()
    .map(|(service, proto, port)| {
        let addrs: Vec<_> = match (host, port).to_socket_addrs() {
            Ok(a) => a.take(4).collect(),
            Err(_) => Vec::new(),
        };
        let (state, reason) = if addrs.is_empty() {
            ("unresolvable", Some(format!("cannot resolve {host}")))
        } else {
            let mut last = String::new();
            let mut up = false;
            for a in addrs {
                match check_greeting(a, proto, timeout) {
                    Ok(()) => {
                        up = true;
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            if up {
                ("up", None)
            } else {
                ("down", Some(last))
            }
        };
        ServiceHealth {
            service,
            port,
            state,
            reason,
        }
    })
    .collect()
}
