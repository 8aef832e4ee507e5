//! Drift: differences between the node databases, by natural keys (domain and mailbox
//! names; row ids differ per database), and their repair from a reference database.

use super::{Cluster, Session};
use crate::config::Role;
use crate::directory::txn::{Change, Snapshot};
use crate::error::{Error, Result};
use crate::names::{Domain, LocalPart, Strictness};
use serde::Serialize;

/// One difference of one database against the reference.
#[derive(Debug, Clone, Serialize)]
pub struct DriftItem {
    pub database: String,
    /// `domain NAME` or `mailbox ADDRESS`.
    pub object: String,
    /// `missing`, `extra` or `differs`.
    pub problem: &'static str,
    pub detail: String,
    /// The change that repairs it (None when it cannot be repaired from this reference).
    #[serde(skip)]
    pub repair: Option<Change>,
}

/// A change recorded for a database that did not get it.
#[derive(Debug, Clone, Serialize)]
pub struct PendingNote {
    pub database: String,
    pub change: String,
    pub reason: String,
}

/// What `mailctl drift` found (and repaired).
#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    pub reference: String,
    pub compared: Vec<String>,
    pub unreachable: Vec<super::Missing>,
    pub items: Vec<DriftItem>,
    pub pending: Vec<PendingNote>,
    pub repaired: Vec<String>,
    pub notes: Vec<String>,
}

impl DriftReport {
    /// No difference, nothing unreachable, nothing pending.
    pub fn is_clean(&self) -> bool {
        self.items.is_empty() && self.unreachable.is_empty() && self.pending.is_empty()
    }
}

fn order(c: &Change) -> u8 {
    match c {
        Change::AddDomain { .. } => 0,
        Change::SetRoute { .. } => 1,
        Change::SetDomainActive { .. } => 2,
        Change::AddMailbox { .. } => 3,
        Change::SetMailboxActive { .. } | Change::SetPassword { .. } => 4,
        Change::RemoveMailbox { .. } => 5,
        Change::RemoveDomain { .. } => 6,
    }
}

fn show_backup(b: &Option<String>) -> &str {
    b.as_deref().unwrap_or("none")
}

/// Compare `other` against the reference `refs`.
pub fn compare(
    database: &str,
    refs: (&Snapshot, Role),
    other: (&Snapshot, Role),
) -> Vec<DriftItem> {
    let (r, rrole) = refs;
    let (o, orole) = other;
    let mut items = Vec::new();
    let mut push =
        |object: String, problem: &'static str, detail: String, repair: Option<Change>| {
            items.push(DriftItem {
                database: database.to_string(),
                object,
                problem,
                detail,
                repair,
            })
        };
    for ((name, kind), rd) in &r.domains {
        let Ok(domain) = Domain::parse(name, Strictness::Admin) else {
            continue;
        };
        match o.domains.get(&(name.clone(), *kind)) {
            None => push(
                format!("domain {name}"),
                "missing",
                format!(
                    "{kind}, primary {}, backup {}, {}",
                    rd.primary,
                    show_backup(&rd.backup),
                    if rd.active { "active" } else { "disabled" }
                ),
                Some(Change::AddDomain {
                    domain,
                    kind: *kind,
                    primary: rd.primary.clone(),
                    backup: rd.backup.clone(),
                    active: rd.active,
                }),
            ),
            Some(od) => {
                if od.primary != rd.primary || od.backup != rd.backup {
                    push(
                        format!("domain {name}"),
                        "differs",
                        format!(
                            "route {} / {} here, {} / {} in the reference",
                            od.primary,
                            show_backup(&od.backup),
                            rd.primary,
                            show_backup(&rd.backup)
                        ),
                        Some(Change::SetRoute {
                            domain: domain.clone(),
                            primary: rd.primary.clone(),
                            backup: rd.backup.clone(),
                        }),
                    );
                }
                if od.active != rd.active {
                    push(
                        format!("domain {name}"),
                        "differs",
                        format!(
                            "{} here, {} in the reference",
                            if od.active { "active" } else { "disabled" },
                            if rd.active { "active" } else { "disabled" }
                        ),
                        Some(Change::SetDomainActive {
                            domain,
                            active: rd.active,
                        }),
                    );
                }
            }
        }
    }
    for (name, kind) in o.domains.keys() {
        if r.domains.contains_key(&(name.clone(), *kind)) {
            continue;
        }
        let repair = Domain::parse(name, Strictness::Admin)
            .ok()
            .map(|domain| Change::RemoveDomain { domain });
        push(
            format!("domain {name}"),
            "extra",
            format!("{kind} not in the reference"),
            repair,
        );
    }
    let passwords = rrole == Role::Storage && orole == Role::Storage;
    for ((dom, mbx), rm) in &r.mailboxes {
        let (Ok(domain), Ok(mailbox)) = (
            Domain::parse(dom, Strictness::Admin),
            LocalPart::parse_mailbox(mbx, Strictness::Admin),
        ) else {
            continue;
        };
        let object = format!("mailbox {mbx}@{dom}");
        match o.mailboxes.get(&(dom.clone(), mbx.clone())) {
            None => {
                let password = if passwords { rm.password.clone() } else { None };
                let detail = if rrole == Role::Smtp && orole == Role::Storage {
                    "not here (the reference is an smtp-role database without passwords: repair \
                     from a storage database to copy the password)"
                        .to_string()
                } else {
                    "not here".to_string()
                };
                push(
                    object,
                    "missing",
                    detail,
                    Some(Change::AddMailbox {
                        mailbox,
                        domain,
                        password,
                        active: rm.active,
                    }),
                );
            }
            Some(om) => {
                if om.active != rm.active {
                    push(
                        object.clone(),
                        "differs",
                        format!(
                            "{} here, {} in the reference",
                            if om.active { "active" } else { "disabled" },
                            if rm.active { "active" } else { "disabled" }
                        ),
                        Some(Change::SetMailboxActive {
                            mailbox: mailbox.clone(),
                            domain: domain.clone(),
                            active: rm.active,
                        }),
                    );
                }
                if passwords && om.password != rm.password {
                    push(
                        object,
                        "differs",
                        "stored password differs".to_string(),
                        Some(Change::SetPassword {
                            mailbox,
                            domain,
                            password: rm.password.clone(),
                        }),
                    );
                }
            }
        }
    }
    for (dom, mbx) in o.mailboxes.keys() {
        if r.mailboxes.contains_key(&(dom.clone(), mbx.clone())) {
            continue;
        }
        // A mailbox of a domain that is itself extra goes with the domain.
        let domain_extra = !r.domains.keys().any(|(n, _)| n == dom);
        let repair = match (
            Domain::parse(dom, Strictness::Admin),
            LocalPart::parse_mailbox(mbx, Strictness::Admin),
        ) {
            (Ok(domain), Ok(mailbox)) if !domain_extra => {
                Some(Change::RemoveMailbox { mailbox, domain })
            }
            _ => None,
        };
        push(
            format!("mailbox {mbx}@{dom}"),
            "extra",
            if domain_extra {
                "not in the reference (removed with its domain)".to_string()
            } else {
                "not in the reference".to_string()
            },
            repair,
        );
    }
    items
}

impl Cluster {
    fn pick_reference(&self, session: &Session, from: Option<&str>) -> Result<usize> {
        match from {
            Some(name) => {
                let d = self.directory(name)?;
                session
                    .dbs
                    .iter()
                    .position(|db| db.name() == d.name)
                    .ok_or_else(|| {
                        let why = session
                            .down
                            .iter()
                            .find(|(n, _)| *n == d.name)
                            .map(|(_, e)| e.to_string())
                            .unwrap_or_default();
                        Error::temporary(format!(
                            "the reference database {} does not answer: {why}",
                            d.name
                        ))
                    })
            }
            None => {
                if session.dbs.is_empty() {
                    return Err(Error::temporary("no database answers"));
                }
                // Prefer a database that missed nothing.
                for (i, db) in session.dbs.iter().enumerate() {
                    if self.state.pending(db.name())?.is_empty() {
                        return Ok(i);
                    }
                }
                Ok(0)
            }
        }
    }

    /// Compare every database against `from` (or the first reachable one).
    pub fn drift(&self, from: Option<&str>) -> Result<DriftReport> {
        let mut session = self.session()?;
        self.drift_in(&mut session, from)
    }

    /// [`Cluster::drift`] within a session.
    pub fn drift_in(&self, session: &mut Session, from: Option<&str>) -> Result<DriftReport> {
        let ri = self.pick_reference(session, from)?;
        let reference = session.dbs[ri].name().to_string();
        let rrole = session.dbs[ri].role();
        let rsnap = session.dbs[ri].snapshot()?;
        let mut report = DriftReport {
            reference: reference.clone(),
            compared: Vec::new(),
            unreachable: session
                .down
                .iter()
                .map(|(n, e)| super::Missing {
                    database: n.clone(),
                    reason: e.to_string(),
                })
                .collect(),
            items: Vec::new(),
            pending: Vec::new(),
            repaired: Vec::new(),
            notes: std::mem::take(&mut session.notes),
        };
        for (i, db) in session.dbs.iter_mut().enumerate() {
            if i == ri {
                continue;
            }
            let snap = db.snapshot()?;
            report.compared.push(db.name().to_string());
            report
                .items
                .extend(compare(db.name(), (&rsnap, rrole), (&snap, db.role())));
        }
        for (name, _) in &session.down {
            for p in self.state.pending(name)? {
                report.pending.push(PendingNote {
                    database: name.clone(),
                    change: p.change.to_string(),
                    reason: p.reason,
                });
            }
        }
        let reference_pending = self.state.pending(&reference)?;
        if !reference_pending.is_empty() {
            report.notes.push(format!(
                "the reference {reference} itself missed {} change(s) (listed under pending): \
                 compare or repair from another database",
                reference_pending.len()
            ));
        }
        // Pending records of reachable databases that show no drift are stale.
        for db in &session.dbs {
            let name = db.name().to_string();
            if name != reference && !report.items.iter().any(|i| i.database == name) {
                self.state.clear_pending(&name)?;
            } else {
                for p in self.state.pending(&name)? {
                    report.pending.push(PendingNote {
                        database: name.clone(),
                        change: p.change.to_string(),
                        reason: p.reason,
                    });
                }
            }
        }
        Ok(report)
    }

    /// Repair every reachable database (or only `only`) from `from`, then compare again.
    pub fn repair(&self, from: &str, only: Option<&[String]>) -> Result<DriftReport> {
        let mut session = self.session()?;
        self.repair_in(&mut session, from, only)
    }

    /// [`Cluster::repair`] within a session.
    pub fn repair_in(
        &self,
        session: &mut Session,
        from: &str,
        only: Option<&[String]>,
    ) -> Result<DriftReport> {
        let before = self.drift_in(session, Some(from))?;
        let mut notes = before.notes.clone();
        let mut repaired = Vec::new();
        for db in session.dbs.iter_mut() {
            let name = db.name().to_string();
            if name == before.reference {
                continue;
            }
            if let Some(only) = only {
                if !only.iter().any(|o| o.eq_ignore_ascii_case(&name)) {
                    continue;
                }
            }
            let mut changes: Vec<Change> = before
                .items
                .iter()
                .filter(|i| i.database == name)
                .filter_map(|i| i.repair.clone())
                .collect();
            if changes.is_empty() {
                continue;
            }
            changes.sort_by_key(order);
            let r = (|| {
                db.begin()?;
                for c in &changes {
                    db.apply(c)?;
                }
                db.commit()
            })();
            match r {
                Ok(()) => {
                    for c in &changes {
                        self.state
                            .history(&format!("repair {name} from {from}: {c}"));
                        repaired.push(format!("{name}: {c}"));
                    }
                }
                Err(e) => {
                    db.rollback();
                    notes.push(format!(
                        "repair of {name} failed, nothing changed there: {e}"
                    ));
                }
            }
        }
        let mut after = self.drift_in(session, Some(from))?;
        after.repaired = repaired;
        notes.append(&mut after.notes);
        after.notes = notes;
        Ok(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::txn::{DomainKind, DomainState, MailboxState};

    fn snap(domains: &[(&str, &str, &str)], mailboxes: &[(&str, &str, Option<&str>)]) -> Snapshot {
        let mut s = Snapshot::default();
        for (d, p, b) in domains {
            s.domains.insert(
                (d.to_string(), DomainKind::Ldomain),
                DomainState {
                    active: true,
                    primary: p.to_string(),
                    backup: Some(b.to_string()),
                    storage2: b.to_string(),
                },
            );
        }
        for (d, m, pw) in mailboxes {
            s.mailboxes.insert(
                (d.to_string(), m.to_string()),
                MailboxState {
                    active: true,
                    password: pw.map(str::to_string),
                },
            );
        }
        s
    }

    #[test]
    fn compares_by_natural_keys_and_plans_repairs() {
        let r = snap(
            &[("a.x.ru", "n1", "n2"), ("b.x.ru", "n1", "n2")],
            &[
                ("a.x.ru", "u1", Some("{P}1")),
                ("a.x.ru", "u2", Some("{P}2")),
            ],
        );
        let o = snap(
            &[("a.x.ru", "n2", "n1"), ("c.x.ru", "n1", "n2")],
            &[("a.x.ru", "u1", Some("{P}other")), ("c.x.ru", "z", None)],
        );
        let items = compare("db2", (&r, Role::Storage), (&o, Role::Storage));
        let got: Vec<(String, &str)> = items
            .iter()
            .map(|i| (i.object.clone(), i.problem))
            .collect();
        assert!(got.contains(&("domain a.x.ru".into(), "differs")));
        assert!(got.contains(&("domain b.x.ru".into(), "missing")));
        assert!(got.contains(&("domain c.x.ru".into(), "extra")));
        assert!(got.contains(&("mailbox u1@a.x.ru".into(), "differs")));
        assert!(got.contains(&("mailbox u2@a.x.ru".into(), "missing")));
        assert!(got.contains(&("mailbox z@c.x.ru".into(), "extra")));
        // The extra domain's mailbox goes with the domain; no separate repair.
        let z = items
            .iter()
            .find(|i| i.object == "mailbox z@c.x.ru")
            .unwrap();
        assert!(z.repair.is_none());
        // Passwords are not compared against an smtp-role database.
        let items = compare("smtp", (&r, Role::Storage), (&o, Role::Smtp));
        assert!(!items.iter().any(|i| i.detail.contains("password")));
        // Identical snapshots: nothing.
        assert!(compare("same", (&r, Role::Storage), (&r, Role::Storage)).is_empty());
    }
}
