//! mailmap: the lookups Exim calls (local domains, routes, recipients, paths), the line
//! protocol of `mailmap serve`, its cache, and the daemon itself.
//!
//! Every question is a [`Query`]; [`Resolver::resolve`] answers it from a [`Directory`]
//! with `Ok(Some(answer))` (found), `Ok(None)` (not found) or an error (temporary, config).
//! Input is hostile: names are parsed with [`Strictness::Lookup`], so anything that is not a
//! valid domain / local part is simply *not found* and never reaches SQL.
//!
//! Decisions (documented in the README, section `mailmap`):
//! - A disabled domain (ldomain, mdomain or co_domain inactive) is not found for every
//!   query: it receives no mail and is not routed.
//! - Subaddresses: `user+tag@domain` is the mailbox `user@domain` (answers name the mailbox).
//! - co_domain recipients: the seed's `mail` table cannot hold them (it references ldomain /
//!   mdomain), so an active co_domain accepts every syntactically valid local part; the
//!   storage (Dovecot, at LMTP time) decides whether the user exists.
//! - The legacy pseudo-mailbox `dir` is never a recipient.

use crate::config::Config;
use crate::directory::{Directory, DomainRecord, DomainSource};
use crate::error::{Error, ErrorKind, Result};
use crate::names::{parse_node_name, Address, Domain, LocalPart, Strictness};
use std::collections::BTreeMap;
use std::time::Duration;

pub mod cache;
pub mod protocol;
pub mod serve;

/// The `[map]` section of the configuration.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MapConfig {
    /// Unix socket of `mailmap serve` (default `/var/run/mailmap/mailmap.sock`).
    pub socket: Option<std::path::PathBuf>,
    /// TCP address of `mailmap serve` instead of the socket (loopback only, e.g. `127.0.0.1:7025`).
    pub listen: Option<String>,
    /// Mode of the socket file, octal string (default "0660").
    pub socket_mode: String,
    /// Group of the socket file (name or number), e.g. Exim's group `Debian-exim` / `mail`.
    pub socket_group: Option<String>,
    /// Seconds a found answer is served from the cache without asking the database.
    pub positive_ttl: f64,
    /// Seconds a not-found answer is served from the cache.
    pub negative_ttl: f64,
    /// Seconds a found answer may still be served while the database is down (default 1 h).
    pub stale_max: f64,
    /// After a database failure, seconds before the next connection attempt (answers come
    /// from the cache, or TEMPFAIL, meanwhile).
    pub retry_interval: f64,
    /// Seconds without any database round trip after which the daemon probes the
    /// database (so an outage is noticed while answers come from the cache).
    pub health_interval: f64,
    /// Cache size bound (entries).
    pub max_entries: usize,
    /// Simultaneous clients; more are answered TEMPFAIL at once.
    pub max_clients: usize,
    /// Seconds one connection may take (read request + answer).
    pub client_timeout: f64,
    /// Longest request line in bytes.
    pub max_request: usize,
    /// Node name → host put into route lists (an IP address or another name), for nodes
    /// whose `maps` name is not what the SMTP node should connect to. Unlisted names are
    /// used as they are.
    pub hosts: BTreeMap<String, String>,
}

impl Default for MapConfig {
    fn default() -> Self {
        MapConfig {
            socket: None,
            listen: None,
            socket_mode: "0660".to_string(),
            socket_group: None,
            positive_ttl: 60.0,
            negative_ttl: 10.0,
            stale_max: 3600.0,
            retry_interval: 2.0,
            health_interval: 5.0,
            max_entries: 200_000,
            max_clients: 64,
            client_timeout: 5.0,
            max_request: 1024,
            hosts: BTreeMap::new(),
        }
    }
}

/// Default socket path of `mailmap serve`.
pub const DEFAULT_SOCKET: &str = "/var/run/mailmap/mailmap.sock";

pub(crate) fn secs(value: f64, default: f64) -> Duration {
    let v = if value.is_finite() && value >= 0.0 {
        value.min(86_400.0 * 7.0)
    } else {
        default
    };
    Duration::from_secs_f64(v)
}

impl MapConfig {
    pub fn positive_ttl(&self) -> Duration {
        secs(self.positive_ttl, 60.0)
    }
    pub fn negative_ttl(&self) -> Duration {
        secs(self.negative_ttl, 10.0)
    }
    pub fn stale_max(&self) -> Duration {
        secs(self.stale_max, 3600.0)
    }
    pub fn retry_interval(&self) -> Duration {
        secs(self.retry_interval, 2.0)
    }
    pub fn health_interval(&self) -> Duration {
        secs(self.health_interval, 5.0).max(Duration::from_millis(200))
    }
    pub fn client_timeout(&self) -> Duration {
        secs(self.client_timeout, 5.0).max(Duration::from_millis(100))
    }
    pub fn socket_mode(&self) -> Result<u32> {
        u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                Error::config(format!(
                    "[map] socket_mode {:?} is not an octal file mode such as \"0660\"",
                    self.socket_mode
                ))
            })
    }
}

/// One question mailmap answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Query {
    /// Active domain whose primary is this node (or `node`): answer = the domain.
    LocalDomain {
        domain: String,
        node: Option<String>,
    },
    /// Active domain whose BACKUP is this node (or `node`) and whose primary is another
    /// node: answer = the domain (storage Exim's `domainlist backup_domains`).
    BackupDomain {
        domain: String,
        node: Option<String>,
    },
    /// Host list `primary : backup` of an active domain.
    Route { domain: String },
    /// Active mailbox in an active domain: answer = the mailbox address.
    Recipient { address: String },
    /// The host list of the recipient's domain, only if the recipient exists (SMTP nodes).
    RcptRoute { address: String },
    /// On a storage that is the domain's BACKUP (not its primary): the primary's host,
    /// only if the recipient exists. Mail is queued for the primary.
    BackupRoute {
        address: String,
        node: Option<String>,
    },
    /// The mailbox's home directory.
    Home { address: String },
    /// The mailbox's Maildir.
    Maildir { address: String },
}

impl Query {
    /// The protocol verb.
    pub fn verb(&self) -> &'static str {
        match self {
            Query::LocalDomain { .. } => "local-domain",
            Query::BackupDomain { .. } => "backup-domain",
            Query::Route { .. } => "route",
            Query::Recipient { .. } => "recipient",
            Query::RcptRoute { .. } => "rcpt-route",
            Query::BackupRoute { .. } => "backup-route",
            Query::Home { .. } => "home",
            Query::Maildir { .. } => "maildir",
        }
    }

    /// Build a query from a verb and its argument (the protocol's request line).
    pub fn from_verb(verb: &str, arg: &str) -> Option<Query> {
        let a = arg.to_string();
        Some(match verb {
            "local-domain" => Query::LocalDomain {
                domain: a,
                node: None,
            },
            "backup-domain" => Query::BackupDomain {
                domain: a,
                node: None,
            },
            "route" => Query::Route { domain: a },
            "recipient" => Query::Recipient { address: a },
            "rcpt-route" => Query::RcptRoute { address: a },
            "backup-route" => Query::BackupRoute {
                address: a,
                node: None,
            },
            "home" => Query::Home { address: a },
            "maildir" => Query::Maildir { address: a },
            _ => return None,
        })
    }
}

/// Answers queries: the configuration (node name, path templates) plus `[map.hosts]`.
#[derive(Debug, Clone)]
pub struct Resolver {
    config: Config,
    /// Node name → host in route lists.
    hosts: BTreeMap<String, String>,
}

impl Resolver {
    pub fn from_config(config: &Config, map: &MapConfig) -> Result<Resolver> {
        let mut hosts = BTreeMap::new();
        for (node, host) in &map.hosts {
            let node = parse_node_name(node, Strictness::Admin)
                .map_err(|e| Error::config(format!("[map.hosts]: {e}")))?;
            let h = parse_host(host).ok_or_else(|| {
                Error::config(format!("[map.hosts] {node}: invalid host {host:?}"))
            })?;
            hosts.insert(node, h);
        }
        Ok(Resolver {
            config: config.clone(),
            hosts,
        })
    }

    /// `--node` if given, else this node's name from the configuration (or the host name).
    fn node(&self, explicit: &Option<String>) -> Result<String> {
        match explicit {
            Some(n) => parse_node_name(n, Strictness::Admin),
            None => self.config.node_name(),
        }
    }

    /// Before answering "not ours": the node name must appear in maps/co_maps, or a
    /// misspelt name (a short host name against FQDNs) would make every domain foreign and
    /// a storage would relay its own mail away. An empty routing table passes.
    fn check_node(&self, dir: &mut dyn Directory, node: &str) -> Result<()> {
        let known = dir.node_names()?;
        if known.is_empty() || known.contains(node) {
            return Ok(());
        }
        Err(Error::config(format!(
            "this node's name {node:?} appears nowhere in maps/co_maps (known: {}); set node = \"...\" \
             in the configuration or pass --node",
            known.iter().cloned().collect::<Vec<_>>().join(", ")
        )))
    }

    /// Answer one query. Ok(None) = not found. Errors are temporary or configuration errors,
    /// never "not found".
    pub fn resolve(&self, dir: &mut dyn Directory, query: &Query) -> Result<Option<String>> {
        match self.resolve_inner(dir, query) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            other => other,
        }
    }

    fn resolve_inner(&self, dir: &mut dyn Directory, query: &Query) -> Result<Option<String>> {
        match query {
            Query::LocalDomain { domain, node } => {
                let node = self.node(node)?;
                let answer = active_domain(dir, domain)?
                    .filter(|rec| rec.primary == node)
                    .map(|rec| rec.domain.to_string());
                if answer.is_none() {
                    self.check_node(dir, &node)?;
                }
                Ok(answer)
            }
            Query::BackupDomain { domain, node } => {
                let node = self.node(node)?;
                let answer = active_domain(dir, domain)?
                    .filter(|rec| {
                        rec.primary != node && rec.backup.as_deref() == Some(node.as_str())
                    })
                    .map(|rec| rec.domain.to_string());
                if answer.is_none() {
                    self.check_node(dir, &node)?;
                }
                Ok(answer)
            }
            Query::Route { domain } => {
                let Some(rec) = active_domain(dir, domain)? else {
                    return Ok(None);
                };
                self.host_list(&rec).map(Some)
            }
            Query::Recipient { address } => Ok(recipient(dir, address)?.map(|(mb, _)| mb)),
            Query::RcptRoute { address } => match recipient(dir, address)? {
                Some((_, rec)) => self.host_list(&rec).map(Some),
                None => Ok(None),
            },
            Query::BackupRoute { address, node } => {
                let node = self.node(node)?;
                match recipient(dir, address)? {
                    Some((_, rec))
                        if rec.primary != node && rec.backup.as_deref() == Some(node.as_str()) =>
                    {
                        self.host(&rec.primary).map(Some)
                    }
                    _ => Ok(None),
                }
            }
            Query::Home { address } => Ok(self.paths(dir, address)?.map(|(h, _)| h)),
            Query::Maildir { address } => Ok(self.paths(dir, address)?.map(|(_, m)| m)),
        }
    }

    /// Active domains (all, or those whose primary is `node`), sorted.
    pub fn domains(&self, dir: &mut dyn Directory, node: Option<&str>) -> Result<Vec<String>> {
        let node = match node {
            Some(n) => Some(parse_node_name(n, Strictness::Admin)?),
            None => None,
        };
        let mut out: Vec<String> = dir
            .domains(node.as_deref())?
            .into_iter()
            .filter(|r| r.active && node.as_deref().map_or(true, |n| r.primary == n))
            .map(|r| r.domain.to_string())
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn host(&self, node: &str) -> Result<String> {
        // Names come from the database: never let one break the host list (':' or spaces).
        let name = parse_node_name(node, Strictness::Admin).map_err(|_| {
            Error::temporary(format!(
                "invalid node name {} in the routing table; fix maps/co_maps",
                crate::names::printable(node)
            ))
        })?;
        Ok(self.hosts.get(&name).cloned().unwrap_or(name))
    }

    /// `primary : backup` (primary alone when the backup is empty or the same).
    fn host_list(&self, rec: &DomainRecord) -> Result<String> {
        let primary = self.host(&rec.primary)?;
        match rec
            .backup
            .as_deref()
            .filter(|b| !b.is_empty() && *b != rec.primary)
        {
            Some(b) => {
                let backup = self.host(b)?;
                if backup == primary {
                    Ok(primary)
                } else {
                    Ok(format!("{primary} : {backup}"))
                }
            }
            None => Ok(primary),
        }
    }

    fn paths(&self, dir: &mut dyn Directory, address: &str) -> Result<Option<(String, String)>> {
        let Ok(addr) = Address::parse(address, Strictness::Lookup) else {
            return Ok(None);
        };
        if addr.local.is_legacy_dir() {
            return Ok(None);
        }
        let Some(rec) = dir.route(&addr.domain)? else {
            return Ok(None);
        };
        if rec.source == DomainSource::Ldomain {
            let lp = LocalPart::parse_mailbox(addr.local.mailbox(), Strictness::Lookup)?;
            if dir.mailbox(&lp, &addr.domain)?.is_none() {
                return Ok(None);
            }
        }
        let home = self.config.home(&addr.local, &addr.domain)?;
        let maildir = self.config.maildir(&addr.local, &addr.domain)?;
        Ok(Some((
            home.to_string_lossy().into_owned(),
            maildir.to_string_lossy().into_owned(),
        )))
    }
}

/// A host for a route list: a validated host name or an IPv4/IPv6 address.
fn parse_host(input: &str) -> Option<String> {
    if let Ok(ip) = input.parse::<std::net::IpAddr>() {
        return Some(match ip {
            // Exim host lists are colon-separated: IPv6 needs the `<;`-free bracket-less
            // form only in a list with another separator; refuse it for simplicity.
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(_) => return None,
        });
    }
    parse_node_name(input, Strictness::Lookup).ok()
}

fn active_domain(dir: &mut dyn Directory, domain: &str) -> Result<Option<DomainRecord>> {
    let Ok(domain) = Domain::parse(domain, Strictness::Lookup) else {
        return Ok(None);
    };
    Ok(dir.route(&domain)?.filter(|r| r.active))
}

/// The recipient's mailbox address and its domain's record, when both are active.
fn recipient(dir: &mut dyn Directory, address: &str) -> Result<Option<(String, DomainRecord)>> {
    let Ok(addr) = Address::parse(address, Strictness::Lookup) else {
        return Ok(None);
    };
    if addr.local.is_legacy_dir() {
        return Ok(None);
    }
    let mailbox = addr.mailbox_address();
    let Ok(lp) = LocalPart::parse_mailbox(addr.local.mailbox(), Strictness::Lookup) else {
        // Not a possible mailbox name: only a co_domain (which holds no mailboxes) accepts it.
        return Ok(dir
            .route(&addr.domain)?
            .filter(|r| r.active && r.source == DomainSource::CoDomain)
            .map(|rec| (mailbox, rec)));
    };
    // Route and mailbox together: one round trip on PostgreSQL.
    let (rec, mb) = dir.route_and_mailbox(&lp, &addr.domain)?;
    let Some(rec) = rec.filter(|r| r.active) else {
        return Ok(None);
    };
    match rec.source {
        DomainSource::CoDomain => Ok(Some((mailbox, rec))),
        DomainSource::Ldomain => match mb {
            Some(m) if m.is_active() => Ok(Some((mailbox, rec))),
            _ => Ok(None),
        },
    }
}

/// One-shot lookup for the command line, on the first reachable configured directory.
pub fn lookup_once(config: &Config, resolver: &Resolver, query: &Query) -> Result<Option<String>> {
    let mut dir = config.open_directory()?;
    resolver.resolve(dir.as_mut(), query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_validated() {
        assert_eq!(parse_host("192.0.2.1").as_deref(), Some("192.0.2.1"));
        assert_eq!(
            parse_host("Storage-01.domain.ru").as_deref(),
            Some("storage-01.domain.ru")
        );
        assert!(parse_host("a : b").is_none());
        assert!(parse_host("::1").is_none());
    }

    #[test]
    fn verbs_round_trip() {
        for v in [
            "local-domain",
            "backup-domain",
            "route",
            "recipient",
            "rcpt-route",
            "backup-route",
            "home",
            "maildir",
        ] {
            assert_eq!(Query::from_verb(v, "x").unwrap().verb(), v);
        }
        assert!(Query::from_verb("drop", "x").is_none());
    }
}
