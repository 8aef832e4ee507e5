//! Whether a node's services answer, for `mailctl node list`: a bounded TCP connect to each
//! configured service port. (A thin adapter until the library's health checker in
//! `auth::health` is there.)

use crate::config::PortsConfig;
use serde::Serialize;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// One service of one node.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceHealth {
    pub service: &'static str,
    pub port: u16,
    /// "up", "down" or "unresolvable".
    pub state: &'static str,
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
        ("imap", ports.imap),
        ("pop3", ports.pop3),
        ("smtp", ports.smtp),
    ]
    .into_iter()
    .map(|(service, port)| {
        let state = match (host, port).to_socket_addrs() {
            Err(_) => "unresolvable",
            Ok(addrs) => {
                let addrs: Vec<_> = addrs.take(4).collect();
                if addrs.is_empty() {
                    "unresolvable"
                } else if addrs
                    .iter()
                    .any(|a| TcpStream::connect_timeout(a, timeout).is_ok())
                {
                    "up"
                } else {
                    "down"
                }
            }
        };
        ServiceHealth {
            service,
            port,
            state,
        }
    })
    .collect()
}
