//! What `mailctl` prints: plain-text tables for people, one JSON document with `--json`
//! for scripts, notes on stderr. Each `print_*` returns the exit code its report means.

use super::drift::DriftReport;
use super::ops::{DomainView, MailboxView, MoveReport, NodeView, RejoinReport};
use super::Outcome;
use crate::error::{Error, Result};
use serde::Serialize;

/// Exit code of a change that did not reach every database (recorded as drift).
const EXIT_PARTIAL: i32 = 75;

const DOMAIN_HEADERS: [&str; 6] = ["domain", "kind", "active", "primary", "backup", "mailboxes"];
const MAILBOX_HEADERS: [&str; 4] = ["mailbox", "active", "domain active", "password"];

/// One JSON document on stdout.
pub fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(value)
        .map_err(|e| Error::internal(format!("encoding JSON: {e}")))?;
    println!("{s}");
    Ok(())
}

/// A plain-text table with a header line, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    for line in table_lines(headers, rows) {
        println!("{line}");
    }
}

fn table_lines(headers: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let w = widths.get(i).copied().unwrap_or(0);
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    std::iter::once(line(headers.to_vec()))
        .chain(
            rows.iter()
                .map(|r| line(r.iter().map(String::as_str).collect())),
        )
        .collect()
}

fn yn(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn or_dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

fn joined_or(v: &[String], empty: &str) -> String {
    if v.is_empty() {
        empty.to_string()
    } else {
        v.join(", ")
    }
}

/// Where a listing was read from (stderr, so stdout stays the table).
pub fn read_from(source: &str) {
    eprintln!("(read from {source})");
}

/// Domains as a table.
pub fn domains(v: &[DomainView]) {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|d| {
            vec![
                d.domain.clone(),
                d.kind.to_string(),
                yn(d.active),
                d.primary.clone(),
                or_dash(&d.backup),
                d.mailboxes.to_string(),
            ]
        })
        .collect();
    table(&DOMAIN_HEADERS, &rows);
}

/// Mailboxes as a table (whether a password is set, never the password).
pub fn mailboxes(v: &[MailboxView]) {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|m| {
            vec![
                m.address.clone(),
                yn(m.active),
                yn(m.domain_active),
                match m.has_password {
                    None => "(smtp db)".into(),
                    Some(false) => "none".into(),
                    Some(true) => m.scheme.clone().unwrap_or_default(),
                },
            ]
        })
        .collect();
    table(&MAILBOX_HEADERS, &rows);
}

/// A domain and its mailboxes.
pub fn domain_show(json: bool, source: &str, d: &DomainView, m: &[MailboxView]) -> Result<()> {
    if json {
        #[derive(Serialize)]
        struct Show<'a> {
            domain: &'a DomainView,
            mailboxes: &'a [MailboxView],
        }
        return print_json(&Show {
            domain: d,
            mailboxes: m,
        });
    }
    read_from(source);
    domains(std::slice::from_ref(d));
    if !m.is_empty() {
        println!();
        mailboxes(m);
    }
    Ok(())
}

/// A domain's route.
pub fn route(d: &DomainView) {
    table(
        &["domain", "primary", "backup"],
        &[vec![
            d.domain.clone(),
            d.primary.clone(),
            or_dash(&d.backup),
        ]],
    );
}

/// Nodes with their databases and service health.
pub fn nodes(v: &[NodeView]) {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|n| {
            let databases: Vec<String> = n
                .databases
                .iter()
                .map(|d| format!("{}:{}", d.name, if d.reachable { "up" } else { "DOWN" }))
                .collect();
            let services: Vec<String> = n
                .services
                .iter()
                .map(|s| format!("{}:{}", s.service, s.state))
                .collect();
            vec![
                n.node.clone(),
                n.primary_of.to_string(),
                n.backup_of.to_string(),
                n.mailboxes.to_string(),
                if databases.is_empty() {
                    "-".into()
                } else {
                    databases.join(" ")
                },
                if services.is_empty() {
                    "-".into()
                } else {
                    services.join(" ")
                },
            ]
        })
        .collect();
    table(
        &[
            "node",
            "primary of",
            "backup of",
            "mailboxes",
            "databases",
            "services",
        ],
        &rows,
    );
}

/// What applying a change did; 75 when a database was left out (recorded as drift).
pub fn outcome(json: bool, o: &Outcome) -> Result<i32> {
    if json {
        print_json(o)?;
    } else {
        for n in &o.notes {
            eprintln!("note: {n}");
        }
        for c in &o.changes {
            println!("{c}");
        }
        println!(
            "applied to: {} ({})",
            joined_or(&o.applied, "none"),
            o.method
        );
        for m in &o.missing {
            println!(
                "NOT applied to {}: {} (recorded; repair with `mailctl drift --repair --from NAME` \
                 or `mailctl rejoin`)",
                m.database, m.reason
            );
        }
    }
    Ok(if o.missing.is_empty() {
        0
    } else {
        EXIT_PARTIAL
    })
}

fn next_steps(steps: &[String]) {
    if !steps.is_empty() {
        println!("next steps:");
        for (i, s) in steps.iter().enumerate() {
            println!("  {}. {s}", i + 1);
        }
    }
}

/// What failover / switchover / failback did.
pub fn moves(json: bool, r: &MoveReport) -> Result<i32> {
    if json {
        print_json(r)?;
        return Ok(if r.outcome.missing.is_empty() {
            0
        } else {
            EXIT_PARTIAL
        });
    }
    let rows: Vec<Vec<String>> = r
        .moves
        .iter()
        .map(|m| {
            vec![
                m.domain.clone(),
                m.from.clone(),
                m.to.clone(),
                or_dash(&m.backup),
            ]
        })
        .collect();
    table(&["domain", "from", "to", "backup"], &rows);
    if !r.synced.is_empty() {
        println!("synced with mailsync first: {}", r.synced.join(", "));
    }
    for s in &r.skipped {
        println!("not moved: {s}");
    }
    let code = outcome(false, &r.outcome)?;
    next_steps(&r.next_steps);
    // A failover that recorded the failed node's change as pending did its job.
    Ok(if r.next_steps.is_empty() { code } else { 0 })
}

/// What rejoin did.
pub fn rejoin(json: bool, r: &RejoinReport) -> Result<i32> {
    if json {
        print_json(r)?;
        return Ok(0);
    }
    for p in &r.pending_applied {
        println!("applied pending: {p}");
    }
    for c in &r.drift.repaired {
        println!("repaired {c}");
    }
    println!(
        "{} ({}) is level with {}",
        r.node,
        r.databases.join(", "),
        r.reference
    );
    next_steps(&r.next_steps);
    Ok(0)
}

/// Drift between the databases; 1 when there is any.
pub fn drift(json: bool, r: &DriftReport) -> Result<i32> {
    if json {
        print_json(r)?;
    } else {
        for n in &r.notes {
            eprintln!("note: {n}");
        }
        println!(
            "reference: {}; compared: {}",
            r.reference,
            joined_or(&r.compared, "none")
        );
        for c in &r.repaired {
            println!("repaired {c}");
        }
        if !r.items.is_empty() {
            let rows: Vec<Vec<String>> = r
                .items
                .iter()
                .map(|i| {
                    vec![
                        i.database.clone(),
                        i.object.clone(),
                        i.problem.to_string(),
                        i.detail.clone(),
                    ]
                })
                .collect();
            table(&["database", "object", "problem", "detail"], &rows);
        }
        for u in &r.unreachable {
            println!("unreachable: {}: {}", u.database, u.reason);
        }
        for p in &r.pending {
            println!("pending for {}: {} ({})", p.database, p.change, p.reason);
        }
        if r.is_clean() {
            println!("no drift");
        }
    }
    Ok(if r.is_clean() { 0 } else { 1 })
}

/// Lines, or JSON `{ "ok": .., "lines": [..] }`.
pub fn lines(json: bool, ok: bool, lines: &[String]) -> Result<()> {
    if json {
        print_json(&serde_json::json!({ "ok": ok, "lines": lines }))
    } else {
        for l in lines {
            println!("{l}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_all_but_the_last_column() {
        let rows = vec![
            vec!["a.example".to_string(), "yes".to_string(), "x".to_string()],
            vec!["b".to_string(), "no".to_string(), "longer".to_string()],
        ];
        assert_eq!(
            table_lines(&["domain", "active", "note"], &rows),
            vec![
                "domain     active  note",
                "a.example  yes     x",
                "b          no      longer",
            ]
        );
    }

    #[test]
    fn short_rows_do_not_panic() {
        let rows = vec![vec!["only".to_string()]];
        assert_eq!(table_lines(&["a", "b"], &rows), vec!["a     b", "only"]);
    }
}
