//! mailctl chapters: a change written to every node's database at once, drift between the
//! databases and its repair, failover of a storage node, rejoin and failback.

use crate::logins::{self, NEW_MAILBOXES};
use crate::replication::{self, Node};
use crate::{domain, Cluster, Story, STORAGE1, STORAGE2};
use mailcluster::admin::{self, password, ApplyOptions};
use mailcluster::config::Config;
use mailcluster::directory::txn::{AdminDb, Change, Snapshot};
use mailcluster::directory::write::open_writer;
use mailcluster::directory::{self, Directory};
use mailcluster::names::{LocalPart, Strictness};
use mailcluster::{Error, Result};
use std::path::Path;

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

fn mailbox(s: &str) -> Result<LocalPart> {
    LocalPart::parse(s, Strictness::Admin)
}

fn open(cluster: &Cluster, i: usize) -> Result<Box<dyn Directory>> {
    directory::open(&cluster.urls[i].2, cluster.config.db_timeout())
}

/// Every database's snapshot, by name.
fn snapshots(cluster: &Cluster) -> Result<Vec<(String, Snapshot)>> {
    cluster
        .urls
        .iter()
        .map(|(name, role, url)| {
            let mut db = AdminDb::open(name, url, *role, cluster.config.db_timeout())?;
            Ok((name.to_string(), db.snapshot()?))
        })
        .collect()
}

/// Chapter: mailctl writes a change to every node's database, all or nothing.
pub fn add_everywhere(story: &mut Story, cluster: &Cluster) -> Result<admin::Cluster> {
    story.chapter("mailctl: one change, written to every node's database at once");
    let mut text = format!("node = \"{STORAGE1}\"\n");
    for (name, role, url) in &cluster.urls {
        let role = format!("{role:?}").to_lowercase();
        text.push_str(&format!(
            "\n[[directory]]\nname = \"{name}\"\nurl = \"{url}\"\nrole = \"{role}\"\n"
        ));
    }
    text.push_str(&format!(
        "\n[ctl]\nstate_dir = \"{}\"\npassword_scheme = \"SHA512-CRYPT\"\n",
        cluster.base.join("mailctl-state").display()
    ));
    let path = cluster.base.join("mailctl.toml");
    write_file(&path, &text)?;
    let admin = admin::Cluster::from_config(&Config::load(&path)?)?;
    println!(
        "   The admin's configuration lists all three databases ({}).",
        crate::rel(&path, &cluster.base)
    );
    println!("   `mailctl mailbox add` for two new people (passwords hashed by the library):");

    let mut changes = Vec::new();
    for (addr, pw, scheme) in NEW_MAILBOXES {
        let (m, d) = admin::ops::parse_mailbox_address(addr)?;
        // novikova: [ctl] password_scheme (SHA512-CRYPT); orlov as if it said BLF-CRYPT.
        let scheme = if *scheme == "SHA512-CRYPT" {
            admin.settings.password_scheme.as_str()
        } else {
            scheme
        };
        changes.push(Change::AddMailbox {
            mailbox: m,
            domain: d,
            password: Some(password::hash(scheme, pw)?),
            active: true,
        });
    }
    let out = admin.apply(&changes, &ApplyOptions::default())?;
    let mut applied = out.applied.clone();
    applied.sort();
    story.check(
        applied == ["smtp-01", "storage-01", "storage-02"] && out.missing.is_empty(),
        format!(
            "{} -> applied to {}",
            out.changes.join("; "),
            out.applied.join(", ")
        ),
    );
    println!(
        "     (method {}: every database does the work first, then all commit; PostgreSQL \
         ones with PREPARE TRANSACTION / COMMIT PREPARED, SQLite ones at the end)",
        out.method
    );
    for (name, snap) in snapshots(cluster)? {
        let shown: Vec<String> = NEW_MAILBOXES
            .iter()
            .map(|(addr, _, _)| {
                let (m, d) = addr.split_once('@').unwrap_or((addr, ""));
                match snap.mailboxes.get(&(d.to_string(), m.to_string())) {
                    None => format!("{m}: MISSING"),
                    Some(st) => match &st.password {
                        Some(p) => format!(
                            "{m}: {}",
                            p.split_once('}').map(|(s, _)| &s[1..]).unwrap_or("bare")
                        ),
                        None => format!("{m}: no password"),
                    },
                }
            })
            .collect();
        let ok = if name == "smtp-01" {
            shown.iter().all(|s| s.ends_with("no password"))
        } else {
            shown[0].ends_with("SHA512-CRYPT") && shown[1].ends_with("BLF-CRYPT")
        };
        story.check(ok, format!("{name:<11} {}", shown.join(", ")));
    }

    // All or nothing: one bad row aborts the whole change in every database.
    let bad = vec![
        Change::AddMailbox {
            mailbox: mailbox("volkov")?,
            domain: domain("kzn.domain.ru")?,
            password: Some(password::hash("SHA512-CRYPT", "volkov-pw")?),
            active: true,
        },
        Change::AddMailbox {
            mailbox: mailbox("volkov")?,
            domain: domain("nowhere.domain.ru")?,
            password: None,
            active: true,
        },
    ];
    match admin.apply(&bad, &ApplyOptions::default()) {
        Err(e) => {
            let left: usize = snapshots(cluster)?
                .iter()
                .filter(|(_, s)| {
                    s.mailboxes
                        .contains_key(&("kzn.domain.ru".to_string(), "volkov".to_string()))
                })
                .count();
            story.check(
                left == 0,
                "volkov@kzn + volkov@nowhere (no such domain) in one change: refused, \
                 volkov@kzn is in no database:"
                    .to_string(),
            );
            println!("     {e}");
        }
        Ok(o) => story.check(false, format!("a change with a bad row was applied: {o:?}")),
    }
    Ok(admin)
}

/// Chapter: someone edits one node's database by hand; `mailctl drift` finds it and repairs.
pub fn drift(story: &mut Story, cluster: &Cluster, admin: &admin::Cluster) -> Result<()> {
    story.chapter("mailctl drift: the databases disagree (a hand edit), found and repaired");
    let timeout = cluster.config.db_timeout();
    let mut s2 = open_writer(&cluster.urls[1].2, timeout)?;
    s2.set_route(&domain("kzn.domain.ru")?, STORAGE2, Some(STORAGE1))?;
    s2.set_mailbox_active(&mailbox("petrova")?, &domain("msk.domain.ru")?, false)?;
    let mut smtp = open_writer(&cluster.urls[2].2, timeout)?;
    smtp.remove_mailbox(&mailbox("smirnova")?, &domain("spb.domain.ru")?)?;
    println!(
        "   By hand, as the seed's admins did: on storage-02 kzn.domain.ru's route flipped and"
    );
    println!("   petrova disabled; on smtp-01 smirnova@spb.domain.ru deleted.");
    let gone = open(cluster, 2)?.mailbox(&mailbox("smirnova")?, &domain("spb.domain.ru")?)?;
    story.check(
        gone.is_none(),
        "smtp-01 now rejects mail for smirnova@spb.domain.ru (550 unknown user): silent damage"
            .to_string(),
    );

    let report = admin.drift(Some("storage-01"))?;
    println!(
        "   `mailctl drift --from storage-01` compares {} by domain and mailbox names:",
        report.compared.join(", ")
    );
    let mut found: Vec<(String, String, &str)> = Vec::new();
    for i in &report.items {
        println!(
            "     {:<11} {:<30} {:<8} {}",
            i.database, i.object, i.problem, i.detail
        );
        found.push((i.database.clone(), i.object.clone(), i.problem));
    }
    found.sort();
    let mut expect = vec![
        (
            "smtp-01".to_string(),
            "mailbox smirnova@spb.domain.ru".to_string(),
            "missing",
        ),
        (
            "storage-02".to_string(),
            "domain kzn.domain.ru".to_string(),
            "differs",
        ),
        (
            "storage-02".to_string(),
            "mailbox petrova@msk.domain.ru".to_string(),
            "differs",
        ),
    ];
    expect.sort();
    story.check(
        found == expect,
        format!("{} difference(s), exactly the hand edits", found.len()),
    );

    let after = admin.repair("storage-01", None)?;
    for r in &after.repaired {
        println!("     repaired {r}");
    }
    story.check(
        after.is_clean() && after.repaired.len() == 3,
        "`mailctl drift --repair --from storage-01`: every database equal again".to_string(),
    );
    let back = open(cluster, 2)?.mailbox(&mailbox("smirnova")?, &domain("spb.domain.ru")?)?;
    story.check(
        back.is_some_and(|r| r.password.is_none()),
        "smtp-01 knows smirnova@spb.domain.ru again (without a password: smtp role)".to_string(),
    );
    Ok(())
}

/// Where nginx's mail proxy sends ivanov (`Auth-Server:Auth-Port` from auth_http on the
/// proxy host, reading storage-01's database, else storage-02's). A fresh service each time:
/// a pooled SQLite connection would keep reading the file the demo moves away to stand for
/// storage-01's death, where a real dead database breaks the connection.
fn proxy_host(cluster: &Cluster) -> Result<String> {
    let svc = logins::proxy_service(
        cluster,
        &[cluster.urls[0].2.clone(), cluster.urls[1].2.clone()],
    )?;
    let r = logins::nginx_auth(&svc, "ivanov@msk.domain.ru", "ivanov-pw", "imap");
    Ok(
        match (
            logins::header(&r, "Auth-Server"),
            logins::header(&r, "Auth-Port"),
        ) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            _ => logins::headers(&r),
        },
    )
}

/// The routes of msk/kzn as smtp-01 sees them, and which storage calls msk local.
fn routing(story: &mut Story, cluster: &Cluster, primary: &str, backup: &str) -> Result<()> {
    let mut smtp = open(cluster, 2)?;
    for d in ["msk.domain.ru", "kzn.domain.ru"] {
        let r = smtp.route(&domain(d)?)?;
        let shown = r
            .as_ref()
            .map(|r| format!("{} : {}", r.primary, r.backup.as_deref().unwrap_or("-")))
            .unwrap_or_else(|| "unknown".to_string());
        story.check(
            r.is_some_and(|r| r.primary == primary && r.backup.as_deref() == Some(backup)),
            format!("smtp-01 routes {d} -> {shown}"),
        );
    }
    let msk = domain("msk.domain.ru")?;
    let local2 = open(cluster, 1)?.is_local_domain(&msk, STORAGE2)?;
    story.check(
        local2 == (primary == STORAGE2),
        format!(
            "storage-02's Exim: msk.domain.ru is {}",
            if local2 {
                "local (it accepts the mail)"
            } else {
                "not local"
            }
        ),
    );
    Ok(())
}

/// Chapter: storage-01 fails; its domains move to storage-02; it comes back and fails back.
pub fn failover(
    story: &mut Story,
    cluster: &Cluster,
    admin: &admin::Cluster,
    nodes: &[Node; 2],
) -> Result<()> {
    story.chapter("mailctl failover: storage-01 dies, its domains move to storage-02");
    let before = snapshots(cluster)?;

    let host = proxy_host(cluster)?;
    story.check(
        host.starts_with("10.0.0.1:"),
        format!("before: nginx sends ivanov@msk.domain.ru to {host} (storage-01)"),
    );

    // storage-01 dies: its database is gone with it.
    let db1 = cluster.base.join("storage-01.sqlite");
    let moved = cluster.base.join("storage-01.sqlite.down");
    std::fs::rename(&db1, &moved).map_err(|e| Error::io("stopping storage-01", e))?;
    println!("   storage-01 is down (its database file moved away). The admin runs");
    println!("   `mailctl failover --from {STORAGE1}`:");
    let report = admin.failover(STORAGE1, None, &[], false)?;
    let mut moved_domains: Vec<&str> = Vec::new();
    for m in &report.moves {
        println!(
            "     {}: primary {} -> {}, backup {}",
            m.domain,
            m.from,
            m.to,
            m.backup.as_deref().unwrap_or("-")
        );
        moved_domains.push(&m.domain);
    }
    moved_domains.sort();
    let mut applied = report.outcome.applied.clone();
    applied.sort();
    let missing: Vec<&str> = report
        .outcome
        .missing
        .iter()
        .map(|m| m.database.as_str())
        .collect();
    story.check(
        moved_domains == ["kzn.domain.ru", "msk.domain.ru"]
            && applied == ["smtp-01", "storage-02"]
            && missing == ["storage-01"],
        "applied to storage-02 and smtp-01; recorded as pending for storage-01's database"
            .to_string(),
    );
    for s in &report.next_steps {
        println!("     next: {s}");
    }
    routing(story, cluster, STORAGE2, STORAGE1)?;
    let host = proxy_host(cluster)?;
    story.check(
        host.starts_with("10.0.0.2:"),
        format!("nginx now sends ivanov@msk.domain.ru to {host} (storage-02); logins go on"),
    );
    let new_msg = replication::deliver_during_failover(story, &nodes[1])?;

    story.chapter("storage-01 returns: `mailctl rejoin` before its Exim starts, then failback");
    std::fs::rename(&moved, &db1).map_err(|e| Error::io("restarting storage-01", e))?;
    let msk = domain("msk.domain.ru")?;
    let stale = open(cluster, 0)?.is_local_domain(&msk, STORAGE1)?;
    story.check(
        stale,
        "storage-01's own database still says msk.domain.ru is local (stale): its Exim must wait"
            .to_string(),
    );
    let rejoin = admin.rejoin(STORAGE1, None)?;
    for p in &rejoin.pending_applied {
        println!("     pending change applied: {p}");
    }
    let stale = open(cluster, 0)?.is_local_domain(&msk, STORAGE1)?;
    story.check(
        !stale && rejoin.pending_applied.len() == 2,
        format!(
            "`mailctl rejoin {STORAGE1}`: level with {}; msk.domain.ru not local there any more",
            rejoin.reference
        ),
    );

    println!("   The domains go home: first their mail, storage-02 -> storage-01 (what");
    println!("   `mailctl failback` runs mailsync for before it flips maps):");
    replication::sync_back(story, &nodes[0], &nodes[1], &new_msg)?;
    println!("   `mailctl failback {STORAGE1} --skip-sync` (the mail was just synced):");
    let back = admin.failback(STORAGE1, true)?;
    for m in &back.moves {
        println!(
            "     {}: primary {} -> {}, backup {}",
            m.domain,
            m.from,
            m.to,
            m.backup.as_deref().unwrap_or("-")
        );
    }
    routing(story, cluster, STORAGE1, STORAGE2)?;
    let after = snapshots(cluster)?;
    story.check(
        after == before,
        "every database holds exactly the rows it had before the failover".to_string(),
    );
    let host = proxy_host(cluster)?;
    story.check(
        host.starts_with("10.0.0.1:"),
        format!("nginx sends ivanov@msk.domain.ru to {host} again"),
    );
    Ok(())
}
