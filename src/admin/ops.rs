//! The operations behind mailctl's commands: views for listing, and the node-level
//! procedures (failover, rejoin, switchover, failback).

use super::state::SavedRoute;
use super::{ApplyOptions, Cluster, Outcome, Session};
use crate::config::Role;
use crate::directory::txn::{Change, DomainKind, Snapshot};
use crate::error::{Error, ErrorKind, Result};
use crate::names::{parse_node_name, Domain, LocalPart, Strictness};
use serde::Serialize;
use std::collections::BTreeMap;

/// Parse a domain given to an admin command.
pub fn parse_domain(s: &str) -> Result<Domain> {
    Domain::parse(s, Strictness::Admin)
}

/// Parse a node name given to an admin command (it must fit `storage1`, 32 characters).
pub fn parse_node(s: &str) -> Result<String> {
    let n = parse_node_name(s, Strictness::Admin)?;
    if n.len() > 32 {
        return Err(Error::bad_input(format!(
            "node name {n} is longer than the seed's storage1/storage2 columns (32 characters)"
        )));
    }
    Ok(n)
}

/// Parse `mailbox@domain` given to an admin command (no subaddress, not `dir`).
pub fn parse_mailbox_address(s: &str) -> Result<(LocalPart, Domain)> {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return Err(Error::bad_input(format!(
            "invalid address {}: expected mailbox@domain",
            crate::names::printable(s)
        )));
    };
    let mailbox = LocalPart::parse_mailbox(local, Strictness::Admin)?;
    let domain = Domain::parse(domain, Strictness::Admin)?;
    if mailbox.is_legacy_dir() {
        return Err(Error::bad_input(
            "\"dir\" is the seed's legacy pseudo-mailbox, never a user",
        ));
    }
    if mailbox.as_str().len() > 32 {
        return Err(Error::bad_input(format!(
            "mailbox name {mailbox} is longer than the seed's mail.mailbox column (32 characters)"
        )));
    }
    Ok((mailbox, domain))
}

/// A domain for listing.
#[derive(Debug, Clone, Serialize)]
pub struct DomainView {
    pub domain: String,
    pub kind: DomainKind,
    pub active: bool,
    pub primary: String,
    pub backup: Option<String>,
    pub mailboxes: usize,
}

impl DomainView {
    /// "storage-01 (primary) and storage-02 (backup)", for notes about both copies.
    pub fn nodes_description(&self) -> String {
        match &self.backup {
            Some(b) => format!("{} (primary) and {b} (backup)", self.primary),
            None => format!("{} (primary)", self.primary),
        }
    }
}

/// A mailbox for listing (never the password; only whether there is one).
#[derive(Debug, Clone, Serialize)]
pub struct MailboxView {
    pub address: String,
    pub active: bool,
    pub domain_active: bool,
    /// None when read from an smtp-role database (no password column).
    pub has_password: Option<bool>,
    /// The stored scheme (`{SHA512-CRYPT}` → `SHA512-CRYPT`; bare hashes: `bare`).
    pub scheme: Option<String>,
}

/// A node for `node list`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub node: String,
    pub primary_of: usize,
    pub backup_of: usize,
    pub mailboxes: usize,
    pub databases: Vec<DatabaseState>,
    pub services: Vec<super::health::ServiceHealth>,
}

/// Whether a configured database answers.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseState {
    pub name: String,
    pub role: Role,
    pub reachable: bool,
    pub error: Option<String>,
}

fn domain_views(snap: &Snapshot) -> Vec<DomainView> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (d, _) in snap.mailboxes.keys() {
        *counts.entry(d.as_str()).or_default() += 1;
    }
    snap.domains
        .iter()
        .map(|((name, kind), st)| DomainView {
            domain: name.clone(),
            kind: *kind,
            active: st.active,
            primary: st.primary.clone(),
            backup: st.backup.clone(),
            mailboxes: if *kind == DomainKind::Ldomain {
                counts.get(name.as_str()).copied().unwrap_or(0)
            } else {
                0
            },
        })
        .collect()
}

fn mailbox_views(snap: &Snapshot, role: Role, domain: Option<&Domain>) -> Vec<MailboxView> {
    snap.mailboxes
        .iter()
        .filter(|((d, _), _)| domain.is_none_or_eq(d))
        .map(|((d, m), st)| {
            let domain_active = snap
                .domains
                .get(&(d.clone(), DomainKind::Ldomain))
                .is_some_and(|x| x.active);
            let (has_password, scheme) = if role == Role::Storage {
                let scheme = st.password.as_deref().map(|p| {
                    p.strip_prefix('{')
                        .and_then(|r| r.split_once('}'))
                        .map(|(s, _)| s.to_string())
                        .unwrap_or_else(|| "bare".to_string())
                });
                (Some(st.password.is_some()), scheme)
            } else {
                (None, None)
            };
            MailboxView {
                address: format!("{m}@{d}"),
                active: st.active,
                domain_active,
                has_password,
                scheme,
            }
        })
        .collect()
}

trait OptDomain {
    fn is_none_or_eq(&self, d: &str) -> bool;
}
impl OptDomain for Option<&Domain> {
    fn is_none_or_eq(&self, d: &str) -> bool {
        match self {
            None => true,
            Some(x) => x.as_str() == d,
        }
    }
}

/// Where a domain's and a mailbox's files are, from the `[mail]` home template.
pub fn home_path(template: &str, domain: &Domain, mailbox: &str) -> String {
    let (ldomain, mdomain) = domain.split_first().unwrap_or((domain.as_str(), ""));
    template
        .replace("{domain}", domain.as_str())
        .replace("{ldomain}", ldomain)
        .replace("{mdomain}", mdomain)
        .replace("{mailbox}", mailbox)
}

/// A domain moved by failover / switchover / failback.
#[derive(Debug, Clone, Serialize)]
pub struct Move {
    pub domain: String,
    pub from: String,
    pub to: String,
    pub backup: Option<String>,
}

/// What failover / switchover / failback did.
#[derive(Debug, Clone, Serialize)]
pub struct MoveReport {
    pub moves: Vec<Move>,
    pub synced: Vec<String>,
    /// Domains left where they are, and why.
    pub skipped: Vec<String>,
    pub outcome: Outcome,
    pub next_steps: Vec<String>,
}

/// What rejoin did.
#[derive(Debug, Clone, Serialize)]
pub struct RejoinReport {
    pub node: String,
    pub databases: Vec<String>,
    pub reference: String,
    pub pending_applied: Vec<String>,
    pub drift: super::drift::DriftReport,
    pub next_steps: Vec<String>,
}

impl Cluster {
    /// All domains, from `from` or the first reachable database.
    pub fn domain_list(&self, from: Option<&str>) -> Result<(String, Vec<DomainView>)> {
        let (name, _, snap) = self.read(from)?;
        Ok((name, domain_views(&snap)))
    }

    /// One domain and its mailboxes.
    pub fn domain_show(
        &self,
        domain: &Domain,
        from: Option<&str>,
    ) -> Result<(String, DomainView, Vec<MailboxView>)> {
        let (name, role, snap) = self.read(from)?;
        let view = domain_views(&snap)
            .into_iter()
            .filter(|v| v.domain == domain.as_str())
            .min_by_key(|v| v.kind)
            .ok_or_else(|| {
                Error::not_found(format!("domain {domain} does not exist (read from {name})"))
            })?;
        let mailboxes = mailbox_views(&snap, role, Some(domain));
        Ok((name, view, mailboxes))
    }

    /// Mailboxes, all or of one domain.
    pub fn mailbox_list(
        &self,
        domain: Option<&Domain>,
        from: Option<&str>,
    ) -> Result<(String, Vec<MailboxView>)> {
        let (name, role, snap) = self.read(from)?;
        if let Some(d) = domain {
            if !snap.domains.keys().any(|(n, _)| n == d.as_str()) {
                return Err(Error::not_found(format!(
                    "domain {d} does not exist (read from {name})"
                )));
            }
        }
        Ok((name, mailbox_views(&snap, role, domain)))
    }

    /// One mailbox.
    pub fn mailbox_show(
        &self,
        mailbox: &LocalPart,
        domain: &Domain,
        from: Option<&str>,
    ) -> Result<(String, MailboxView)> {
        let (name, role, snap) = self.read(from)?;
        let address = format!("{mailbox}@{domain}");
        mailbox_views(&snap, role, Some(domain))
            .into_iter()
            .find(|v| v.address == address)
            .map(|v| (name.clone(), v))
            .ok_or_else(|| {
                Error::not_found(format!(
                    "mailbox {address} does not exist (read from {name})"
                ))
            })
    }

    /// Node names among `nodes` that appear nowhere in the routing table (read from the
    /// first reachable database) and belong to no configured directory: likely typos.
    pub fn unknown_nodes(&self, nodes: &[&str]) -> Vec<String> {
        let Ok((_, _, snap)) = self.read(None) else {
            return Vec::new();
        };
        let mut known = std::collections::BTreeSet::new();
        for st in snap.domains.values() {
            known.insert(st.primary.clone());
            if let Some(b) = &st.backup {
                known.insert(b.clone());
            }
        }
        nodes
            .iter()
            .filter(|n| !known.contains(**n) && self.databases_of_node(n).is_empty())
            .map(|n| n.to_string())
            .collect()
    }

    /// The route of one domain (as `mailmap route` would answer it).
    pub fn route_show(&self, domain: &Domain, from: Option<&str>) -> Result<(String, DomainView)> {
        let (name, view, _) = self.domain_show(domain, from)?;
        Ok((name, view))
    }

    /// Nodes: domains and mailboxes per node, databases and services.
    pub fn node_list(&self, from: Option<&str>, probe: bool) -> Result<Vec<NodeView>> {
        let (_, _, snap) = self.read(from)?;
        let mut nodes: BTreeMap<String, NodeView> = BTreeMap::new();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (d, _) in snap.mailboxes.keys() {
            *counts.entry(d.as_str()).or_default() += 1;
        }
        let blank = |n: &str| NodeView {
            node: n.to_string(),
            primary_of: 0,
            backup_of: 0,
            mailboxes: 0,
            databases: Vec::new(),
            services: Vec::new(),
        };
        for ((name, kind), st) in &snap.domains {
            if !st.primary.is_empty() {
                let v = nodes
                    .entry(st.primary.clone())
                    .or_insert_with(|| blank(&st.primary));
                v.primary_of += 1;
                if *kind == DomainKind::Ldomain {
                    v.mailboxes += counts.get(name.as_str()).copied().unwrap_or(0);
                }
            }
            if let Some(b) = &st.backup {
                nodes.entry(b.clone()).or_insert_with(|| blank(b)).backup_of += 1;
            }
        }
        // Databases: attach to their node, or list them under their own name.
        let states: Vec<DatabaseState> = std::thread::scope(|s| {
            let hs: Vec<_> = self
                .directories
                .iter()
                .map(|d| {
                    s.spawn(move || {
                        let r = crate::directory::txn::AdminDb::open(
                            &d.name,
                            &d.url,
                            d.role,
                            self.timeout,
                        );
                        DatabaseState {
                            name: d.name.clone(),
                            role: d.role,
                            reachable: r.is_ok(),
                            error: r.err().map(|e| e.to_string()),
                        }
                    })
                })
                .collect();
            hs.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for st in states {
            let owner = nodes
                .keys()
                .find(|n| self.databases_of_node(n).contains(&st.name))
                .cloned()
                .unwrap_or_else(|| st.name.clone());
            nodes
                .entry(owner.clone())
                .or_insert_with(|| blank(&owner))
                .databases
                .push(st);
        }
        if probe {
            let t = self.timeout.min(std::time::Duration::from_secs(2));
            let ports = self.ports.clone();
            let addresses = &self.node_addresses;
            std::thread::scope(|s| {
                let hs: Vec<_> = nodes
                    .values_mut()
                    .map(|v| {
                        let ports = &ports;
                        s.spawn(move || {
                            let addr = addresses.get(&v.node).map(String::as_str);
                            v.services = super::health::probe(&v.node, addr, ports, t);
                        })
                    })
                    .collect();
                for h in hs {
                    let _ = h.join();
                }
            });
        }
        Ok(nodes.into_values().collect())
    }

    /// The reference for node operations: a reachable database not belonging to any of
    /// `exclude`, storage role preferred.
    fn reference_index(
        &self,
        session: &Session,
        exclude: &[String],
        from: Option<&str>,
    ) -> Result<usize> {
        if let Some(f) = from {
            let d = self.directory(f)?;
            return session
                .dbs
                .iter()
                .position(|db| db.name() == d.name)
                .ok_or_else(|| Error::temporary(format!("database {} does not answer", d.name)));
        }
        let ok = |i: &usize| !exclude.iter().any(|e| e == session.dbs[*i].name());
        let idx: Vec<usize> = (0..session.dbs.len()).filter(ok).collect();
        idx.iter()
            .copied()
            .find(|i| session.dbs[*i].role() == Role::Storage)
            .or_else(|| idx.first().copied())
            .ok_or_else(|| {
                Error::temporary(
                    "no other database answers to read the current state from".to_string(),
                )
            })
    }

    /// Unplanned failover: every domain whose primary is `node` (or the given ones) gets
    /// `to` (default: its backup) as primary and `node` as backup. `node`'s own databases
    /// may be unreachable: the change is recorded as pending for them (`rejoin`).
    pub fn failover(
        &self,
        node: &str,
        to: Option<&str>,
        only: &[Domain],
        partial: bool,
    ) -> Result<MoveReport> {
        let node = parse_node(node)?;
        let to = to.map(parse_node).transpose()?;
        let mut session = self.session()?;
        let node_dbs = self.databases_of_node(&node);
        let ri = self.reference_index(&session, &node_dbs, None)?;
        let snap = session.dbs[ri].snapshot()?;
        let (moves, saved, changes, skipped) = plan_moves(&snap, &node, to.as_deref(), only)?;
        self.state.save_routes(&node, &saved)?;
        let outcome = self.apply_in(
            &mut session,
            &changes,
            &ApplyOptions {
                partial,
                defer: node_dbs.clone(),
            },
        )?;
        let mut next = Vec::new();
        let mut by_target: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for m in &moves {
            by_target.entry(&m.to).or_default().push(&m.domain);
        }
        for (t, ds) in &by_target {
            let args: Vec<String> = ds.iter().map(|d| format!("--domain {d}")).collect();
            next.push(format!(
                "on {t}: `mailsync promote {}` (raises the next IMAP UID so that UIDs handed \
                 out in the lost window are never reused)",
                args.join(" ")
            ));
        }
        if !outcome.missing.is_empty() {
            next.push(format!(
                "when {node} comes back: start ONLY its PostgreSQL, run `mailctl rejoin {node}`, \
                 and only then start its Exim and Dovecot (otherwise it still believes it is \
                 primary and accepts mail for these domains)"
            ));
        } else {
            next.push(format!(
                "when {node} is back: start its PostgreSQL, run `mailctl rejoin {node}` before \
                 its Exim and Dovecot"
            ));
        }
        next.push(format!(
            "then pull mail delivered only to {node} before the failure back with mailsync, \
             and move the domains home with `mailctl failback {node}`"
        ));
        Ok(MoveReport {
            moves,
            synced: Vec::new(),
            skipped,
            outcome,
            next_steps: next,
        })
    }

    /// Bring a returning node's databases level (pending changes, then a repair from a
    /// reference database) before its services start.
    pub fn rejoin(&self, node: &str, from: Option<&str>) -> Result<RejoinReport> {
        let mut session = self.session()?;
        let mut dbs = self.databases_of_node(node);
        if dbs.is_empty() {
            if let Ok(d) = self.directory(node) {
                dbs.push(d.name.clone());
            }
        }
        if dbs.is_empty() {
            return Err(Error::bad_input(format!(
                "no [[directory]] belongs to node {} (a directory belongs to a node when its \
                 name is the node name or its first label)",
                crate::names::printable(node)
            )));
        }
        for (n, e) in &session.down {
            if dbs.contains(n) {
                return Err(Error::temporary(format!(
                    "database {n} of {node} still does not answer ({e}); start its PostgreSQL \
                     (not yet Exim or Dovecot) and run `mailctl rejoin {node}` again"
                )));
            }
        }
        let ri = self.reference_index(&session, &dbs, from)?;
        let reference = session.dbs[ri].name().to_string();
        if dbs.contains(&reference) {
            return Err(Error::bad_input(format!(
                "the reference must be another node's database, not {reference}"
            )));
        }
        let mut applied = Vec::new();
        for db in session.dbs.iter_mut() {
            if !dbs.iter().any(|d| d == db.name()) {
                continue;
            }
            for p in self.state.pending(db.name())? {
                let r = (|| {
                    db.begin()?;
                    db.apply(&p.change)?;
                    db.commit()
                })();
                match r {
                    Ok(()) => applied.push(format!("{}: {}", db.name(), p.change)),
                    Err(e) if super::is_benign(&e) => {
                        db.rollback();
                        applied.push(format!("{}: {} (already there: {e})", db.name(), p.change));
                    }
                    Err(e) => {
                        db.rollback();
                        return Err(e);
                    }
                }
            }
        }
        let drift = self.repair_in(&mut session, &reference, Some(&dbs))?;
        if drift.items.iter().any(|i| dbs.contains(&i.database)) {
            return Err(Error::internal(format!(
                "{node}'s databases still differ from {reference} after the repair; see \
                 `mailctl drift --from {reference}`"
            )));
        }
        for d in &dbs {
            self.state.clear_pending(d)?;
        }
        let next_steps = vec![
            format!("start Exim and Dovecot on {node}"),
            format!(
                "pull mail delivered to {node} before the failure back (mailsync), then \
                 `mailctl failback {node}` to make it primary of its domains again"
            ),
        ];
        Ok(RejoinReport {
            node: node.to_string(),
            databases: dbs,
            reference,
            pending_applied: applied,
            drift,
            next_steps,
        })
    }

    /// Planned move: sync the domains whose primary is `node` (or the given ones) to `to`
    /// (default: their backup) with mailsync, then flip `maps` everywhere, all or nothing.
    pub fn switchover(
        &self,
        node: &str,
        to: Option<&str>,
        only: &[Domain],
        skip_sync: bool,
    ) -> Result<MoveReport> {
        let node = parse_node(node)?;
        let to = to.map(parse_node).transpose()?;
        let mut session = self.session()?;
        let ri = self.reference_index(&session, &[], None)?;
        let snap = session.dbs[ri].snapshot()?;
        let (moves, _, changes, skipped) = plan_moves(&snap, &node, to.as_deref(), only)?;
        let synced = self.sync_before_flip(&moves, skip_sync)?;
        let outcome = self.apply_in(&mut session, &changes, &ApplyOptions::default())?;
        Ok(MoveReport {
            moves,
            synced,
            skipped,
            outcome,
            next_steps: Vec::new(),
        })
    }

    /// Planned return after a failover: restore the `maps` rows saved by `failover node`
    /// exactly, after syncing each domain from its current primary to `node`.
    pub fn failback(&self, node: &str, skip_sync: bool) -> Result<MoveReport> {
        let node = parse_node(node)?;
        let saved = self.state.saved_routes(&node)?;
        if saved.is_empty() {
            return Err(Error::not_found(format!(
                "no failover of {node} is recorded in {}; use `mailctl switchover` for a \
                 planned move",
                self.state.dir().display()
            )));
        }
        let mut session = self.session()?;
        let ri = self.reference_index(&session, &[], None)?;
        let snap = session.dbs[ri].snapshot()?;
        let mut moves = Vec::new();
        let mut changes = Vec::new();
        for r in &saved {
            let domain = parse_domain(&r.domain)?;
            let current = snap
                .domains
                .iter()
                .filter(|((n, _), _)| *n == r.domain)
                .min_by_key(|((_, k), _)| *k)
                .map(|(_, st)| st.primary.clone())
                .ok_or_else(|| {
                    Error::not_found(format!(
                        "domain {} no longer exists; nothing to fail back for it",
                        r.domain
                    ))
                })?;
            moves.push(Move {
                domain: r.domain.clone(),
                from: current,
                to: r.primary.clone(),
                backup: r.backup.clone(),
            });
            changes.push(Change::SetRoute {
                domain,
                primary: r.primary.clone(),
                backup: r.backup.clone(),
            });
        }
        let synced = self.sync_before_flip(&moves, skip_sync)?;
        let outcome = self.apply_in(&mut session, &changes, &ApplyOptions::default())?;
        let domains: Vec<String> = saved.iter().map(|r| r.domain.clone()).collect();
        self.state.forget_routes(&node, &domains)?;
        Ok(MoveReport {
            moves,
            synced,
            skipped: Vec::new(),
            outcome,
            next_steps: Vec::new(),
        })
    }

    /// Run mailsync for every move whose source differs from its target.
    fn sync_before_flip(&self, moves: &[Move], skip: bool) -> Result<Vec<String>> {
        let mut synced = Vec::new();
        if skip {
            return Ok(synced);
        }
        let program = match &self.settings.mailsync {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(|e| Error::io("locating mailctl", e))?
                .with_file_name("mailsync"),
        };
        for m in moves {
            if m.from == m.to || m.from.is_empty() {
                continue;
            }
            let mut args: Vec<String> = Vec::new();
            let mut skip_next = false;
            let tmpl = &self.settings.mailsync_args;
            for (i, a) in tmpl.iter().enumerate() {
                if skip_next {
                    skip_next = false;
                    continue;
                }
                if a == "--config"
                    && tmpl.get(i + 1).map(String::as_str) == Some("{config}")
                    && self.config_path.is_none()
                {
                    skip_next = true;
                    continue;
                }
                let cfg = self
                    .config_path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                args.push(
                    a.replace("{domain}", &m.domain)
                        .replace("{from}", &m.from)
                        .replace("{to}", &m.to)
                        .replace("{config}", &cfg),
                );
            }
            let status = std::process::Command::new(&program)
                .args(&args)
                .stdin(std::process::Stdio::null())
                .status()
                .map_err(|e| {
                    Error::config(format!(
                        "cannot run {} ({e}); set [ctl] mailsync, or sync yourself and pass \
                         --skip-sync",
                        program.display()
                    ))
                })?;
            if !status.success() {
                return Err(Error::new(
                    ErrorKind::Temporary,
                    format!(
                        "mailsync of {} from {} to {} failed ({status}); maps are unchanged in \
                         every database. Fix the sync and run again",
                        m.domain, m.from, m.to
                    ),
                ));
            }
            synced.push(m.domain.clone());
        }
        Ok(synced)
    }
}

/// Moves, the routes to save, the changes, and the domains skipped.
type Plan = (Vec<Move>, Vec<SavedRoute>, Vec<Change>, Vec<String>);

/// The moves of `node`'s primary domains, the routes to save, and the changes.
fn plan_moves(snap: &Snapshot, node: &str, to: Option<&str>, only: &[Domain]) -> Result<Plan> {
    let mut skipped = Vec::new();
    let mut moves = Vec::new();
    let mut saved = Vec::new();
    let mut changes = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for d in only {
        let st = snap
            .domains
            .iter()
            .filter(|((n, _), _)| n == d.as_str())
            .min_by_key(|((_, k), _)| *k)
            .map(|(_, st)| st)
            .ok_or_else(|| Error::not_found(format!("domain {d} does not exist")))?;
        if st.primary != node {
            return Err(Error::bad_input(format!(
                "the primary of {d} is {}, not {node}",
                st.primary
            )));
        }
    }
    for ((name, _kind), st) in &snap.domains {
        if st.primary != node || !seen.insert(name.clone()) {
            continue;
        }
        let domain = parse_domain(name)?;
        if !only.is_empty() && !only.contains(&domain) {
            continue;
        }
        let target = match to.map(str::to_string).or_else(|| st.backup.clone()) {
            Some(t) => t,
            None if only.is_empty() => {
                skipped.push(format!(
                    "{name}: no backup node, it stays on {node} (move it with --to NODE \
                     --domain {name})"
                ));
                continue;
            }
            None => {
                return Err(Error::bad_input(format!(
                    "{name} has no backup node; say where it goes with --to NODE"
                )))
            }
        };
        if target == node {
            return Err(Error::bad_input(format!(
                "{name}: the target {target} is the node being left"
            )));
        }
        saved.push(SavedRoute {
            domain: name.clone(),
            primary: st.primary.clone(),
            backup: Some(st.storage2.clone()).filter(|s| !s.is_empty()),
        });
        moves.push(Move {
            domain: name.clone(),
            from: node.to_string(),
            to: target.clone(),
            backup: Some(node.to_string()),
        });
        changes.push(Change::SetRoute {
            domain,
            primary: target,
            backup: Some(node.to_string()),
        });
    }
    if changes.is_empty() {
        return Err(Error::not_found(format!(
            "no domain has {node} as its primary{}",
            if skipped.is_empty() {
                String::new()
            } else {
                format!(" and a backup ({})", skipped.join("; "))
            }
        )));
    }
    Ok((moves, saved, changes, skipped))
}
