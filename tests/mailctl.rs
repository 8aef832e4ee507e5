//! mailctl against four real PostgreSQL databases standing for the four nodes (two
//! storage, two smtp role) on a throwaway cluster with two-phase commit enabled, plus
//! SQLite. Every command runs the real binary.
mod support;

use mailcluster::admin::state::{self, Decision, Participant, State, TxnLog};
use mailcluster::config::Role;
use mailcluster::directory::txn::{self, AdminDb, Change, DomainKind};
use mailcluster::names::{Domain, Strictness};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::fixtures::{self, S1, S2};
use support::pg::{Db, Pg};

const NAMES: [&str; 4] = ["storage-01", "storage-02", "smtp-01", "smtp-02"];

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    state: PathBuf,
    /// (directory name, database) in config order.
    dbs: Vec<(String, Db)>,
    pg: &'static Pg,
}

fn write_config(root: &Path, dirs: &[(&str, String, &str)], extra: &str) -> PathBuf {
    let mut text = format!("node = \"{S1}\"\ndb_timeout = 3\n");
    for (name, url, role) in dirs {
        text.push_str(&format!(
            "[[directory]]\nname = \"{name}\"\nurl = \"{url}\"\nrole = \"{role}\"\n"
        ));
    }
    text.push_str(&format!(
        "[ctl]\nstate_dir = \"{}\"\nlock_wait = 60\n{extra}",
        root.join("state").display()
    ));
    let path = root.join("mailcluster.toml");
    std::fs::write(&path, text).unwrap();
    // It may hold database passwords: not world-readable.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A configuration naming one storage and one SMTP directory, in a new temporary directory
/// (kept while the returned guard lives).
fn storage_and_smtp(storage_url: &str, smtp_url: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &[
            ("storage-01", storage_url.to_string(), "storage"),
            ("smtp-01", smtp_url.to_string(), "smtp"),
        ],
        "",
    );
    (dir, config)
}

/// `mailctl domain add DOMAIN --primary storage-01`.
fn domain_add(config: &Path, domain: &str) -> Run {
    mailctl_at(config, &["domain", "add", domain, "--primary", S1], None)
}

/// Four seed-shaped databases on the 2PC cluster, and a configuration naming them.
fn four_nodes(tag: &str, extra: &str) -> Env {
    let pg = support::pg_2pc::cluster();
    let dbs = vec![
        (
            NAMES[0].to_string(),
            fixtures::load_pg(pg, &format!("{tag}_s1")),
        ),
        (
            NAMES[1].to_string(),
            fixtures::load_pg(pg, &format!("{tag}_s2")),
        ),
        (
            NAMES[2].to_string(),
            fixtures::load_pg_smtp(pg, &format!("{tag}_m1")),
        ),
        (
            NAMES[3].to_string(),
            fixtures::load_pg_smtp(pg, &format!("{tag}_m2")),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let dirs: Vec<(&str, String, &str)> = dbs
        .iter()
        .enumerate()
        .map(|(i, (n, db))| {
            (
                n.as_str(),
                db.url.clone(),
                if i < 2 { "storage" } else { "smtp" },
            )
        })
        .collect();
    let config = write_config(&root, &dirs, extra);
    Env {
        state: root.join("state"),
        _dir: dir,
        root,
        config,
        dbs,
        pg,
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn mailctl_at(config: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailctl"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("MAILCLUSTER_CONFIG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn mailctl");
    if let Some(input) = stdin {
        let mut si = child.stdin.take().unwrap();
        si.write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Env {
    fn run(&self, args: &[&str]) -> Run {
        mailctl_at(&self.config, args, None)
    }
    fn run_in(&self, args: &[&str], stdin: &str) -> Run {
        mailctl_at(&self.config, args, Some(stdin))
    }
    fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(r.code, 0, "mailctl {args:?}: {}\n{}", r.stdout, r.stderr);
        r
    }
    fn db(&self, name: &str) -> &Db {
        &self.dbs.iter().find(|(n, _)| n == name).unwrap().1
    }
    fn sql(&self, name: &str, q: &str) -> String {
        self.pg.psql(&self.db(name).name, q).trim().to_string()
    }
    fn sql_all(&self, q: &str) -> Vec<String> {
        NAMES.iter().map(|n| self.sql(n, q)).collect()
    }
    fn block(&self, name: &str) {
        self.pg.psql_as(
            "postgres",
            "postgres",
            &format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS false;",
                self.db(name).name
            ),
        );
    }
    fn unblock(&self, name: &str) {
        self.pg.psql_as(
            "postgres",
            "postgres",
            &format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS true;",
                self.db(name).name
            ),
        );
    }
    /// Every routing row (maps and co_maps) as stored, in a stable order.
    fn routes(&self, name: &str) -> String {
        self.sql(
            name,
            "SELECT l.domain || '.' || m.domain || '=' || mp.storage1 || '/' || mp.storage2 \
             FROM maps mp JOIN ldomain l ON mp.ldomain_id = l.id \
             JOIN mdomain m ON mp.mdomain_id = m.id \
             UNION ALL SELECT 'co:' || c.domain || '=' || cm.storage1 || '/' || cm.storage2 \
             FROM co_maps cm JOIN co_domain c ON cm.domain_id = c.id ORDER BY 1",
        )
    }
    fn route(&self, name: &str, domain: &str) -> (String, Option<String>) {
        let mut dir =
            mailcluster::directory::open(&self.db(name).url, Duration::from_secs(3)).unwrap();
        let d = Domain::parse(domain, Strictness::Lookup).unwrap();
        let r = dir.route(&d).unwrap().expect("domain known");
        (r.primary, r.backup)
    }
}

fn count(env: &Env, q: &str) -> Vec<String> {
    env.sql_all(q)
}

#[test]
fn every_command_against_four_databases() {
    let env = four_nodes(
        "every",
        &format!("[auth.nodes]\n\"{S1}\" = \"127.0.0.1\"\n[ports]\npop3 = 1\nimap = 1\nsmtp = 1\n"),
    );
    // Schema across all four, each with its role.
    let r = env.ok(&["schema", "init"]);
    for n in NAMES {
        assert!(
            r.stdout.contains(&format!("{n}: schema ok")),
            "{}",
            r.stdout
        );
    }
    assert!(
        r.stdout.contains("smtp-02: schema ok (smtp role)"),
        "{}",
        r.stdout
    );
    let r = env.ok(&["schema", "check"]);
    assert!(
        r.stdout
            .contains("storage-01: mail.password is varchar(128): holds SHA512-CRYPT"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("smtp-01: missing"), "{}", r.stdout);
    // Domains.
    let r = env.ok(&[
        "domain",
        "add",
        "tver.domain.ru",
        "--primary",
        S1,
        "--backup",
        S2,
    ]);
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
    env.ok(&[
        "domain",
        "add",
        "partner.org",
        "--co",
        "--primary",
        S2,
        "--backup",
        S1,
    ]);
    assert_eq!(
        count(&env, "SELECT storage1 || '/' || storage2 FROM maps mp JOIN ldomain l ON mp.ldomain_id = l.id WHERE l.domain = 'tver'"),
        vec![format!("{S1}/{S2}"); 4]
    );
    assert_eq!(
        count(&env, "SELECT count(*) FROM co_domain c JOIN co_maps cm ON cm.domain_id = c.id WHERE c.domain = 'partner.org'"),
        vec!["1"; 4]
    );
    // No seed-style `dir` rows for new domains.
    assert_eq!(
        count(&env, "SELECT count(*) FROM mail JOIN ldomain l ON mail.ldomain_id = l.id WHERE l.domain = 'tver'"),
        vec!["0"; 4]
    );
    // Mailboxes: password from stdin, hashed with SHA512-CRYPT on storage, none on smtp.
    env.run_in(
        &["mailbox", "add", "Anna@Tver.Domain.RU", "--password-stdin"],
        "anna-secret\n",
    );
    for n in &NAMES[..2] {
        let h = env.sql(n, "SELECT password FROM mail WHERE mailbox = 'anna'");
        let bare = h.strip_prefix("{SHA512-CRYPT}").expect("scheme prefix");
        assert!(
            sha_crypt::sha512_check("anna-secret", bare).is_ok(),
            "{n}: {h}"
        );
    }
    for n in &NAMES[2..] {
        assert_eq!(
            env.sql(n, "SELECT count(*) FROM mail WHERE mailbox = 'anna'"),
            "1"
        );
        assert_eq!(
            env.sql(n, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'mail' AND column_name = 'password'"),
            "0",
            "smtp-role databases never get a password column"
        );
    }
    let r = env.run_in(
        &[
            "mailbox",
            "passwd",
            "anna@tver.domain.ru",
            "--password-stdin",
        ],
        "new-secret\n",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let h1 = env.sql(
        "storage-01",
        "SELECT password FROM mail WHERE mailbox = 'anna'",
    );
    let h2 = env.sql(
        "storage-02",
        "SELECT password FROM mail WHERE mailbox = 'anna'",
    );
    assert_eq!(h1, h2, "the same hash everywhere (drift compares them)");
    assert!(
        sha_crypt::sha512_check("new-secret", h1.strip_prefix("{SHA512-CRYPT}").unwrap()).is_ok()
    );
    env.ok(&["mailbox", "disable", "anna@tver.domain.ru"]);
    assert_eq!(
        count(&env, "SELECT active FROM mail WHERE mailbox = 'anna'"),
        vec!["f"; 4]
    );
    env.ok(&["mailbox", "enable", "anna@tver.domain.ru"]);
    assert_eq!(
        count(&env, "SELECT active FROM mail WHERE mailbox = 'anna'"),
        vec!["t"; 4]
    );
    env.ok(&["domain", "disable", "tver.domain.ru"]);
    assert_eq!(
        count(&env, "SELECT active FROM ldomain WHERE domain = 'tver'"),
        vec!["f"; 4]
    );
    env.ok(&["domain", "enable", "tver.domain.ru"]);
    let r = env.ok(&["domain", "enable", "shop.closed.ru"]);
    assert!(r.stderr.contains("closed.ru is disabled"), "{}", r.stderr);
    let r = env.ok(&[
        "route",
        "set",
        "tver.domain.ru",
        "--primary",
        "storgae-01.domain.ru",
    ]);
    assert!(
        r.stderr.contains("warning: node storgae-01.domain.ru"),
        "{}",
        r.stderr
    );
    env.ok(&[
        "route",
        "set",
        "tver.domain.ru",
        "--primary",
        S2,
        "--backup",
        S1,
    ]);
    assert_eq!(
        env.route("smtp-02", "tver.domain.ru"),
        (S2.to_string(), Some(S1.to_string()))
    );
    let r = env.ok(&["--json", "route", "show", "tver.domain.ru"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["primary"], S2);
    // Listings (tables and JSON).
    let r = env.ok(&["domain", "list"]);
    assert!(r.stdout.contains("tver.domain.ru") && r.stdout.contains("partner.org"));
    let r = env.ok(&["--json", "mailbox", "list", "tver.domain.ru"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v[0]["address"], "anna@tver.domain.ru");
    assert_eq!(v[0]["scheme"], "SHA512-CRYPT");
    assert!(!r.stdout.contains("$6$"), "listings never show hashes");
    let r = env.ok(&[
        "--json",
        "mailbox",
        "show",
        "anna@tver.domain.ru",
        "--from",
        "smtp-01",
    ]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["has_password"], serde_json::Value::Null);
    let r = env.ok(&["domain", "show", "msk.domain.ru"]);
    assert!(r.stdout.contains("ivanov@msk.domain.ru"));
    let s1 = node_json(&env.ok(&["--json", "node", "list", "--no-probe"]), S1);
    assert_eq!(s1["databases"][0]["name"], "storage-01");
    assert!(s1["primary_of"].as_u64().unwrap() >= 5);
    let s1 = node_json(&env.ok(&["--json", "node", "list"]), S1);
    assert_eq!(s1["services"][1]["service"], "pop3");
    assert_eq!(
        s1["services"][1]["state"], "down",
        "nothing listens on 127.0.0.1:1"
    );
    let r = env.ok(&["node", "list"]);
    assert!(r.stdout.contains("pop3:down"), "{}", r.stdout);
    // Destructive commands refuse without --yes off a terminal, and say what happens to Maildirs.
    let r = env.run(&["mailbox", "remove", "anna@tver.domain.ru"]);
    assert_fails(&r, 64, &["Maildir", "NOT deleted"]);
    assert_eq!(mailbox_rows(&env, "anna"), vec!["1"; 4]);
    env.ok(&["--yes", "mailbox", "remove", "anna@tver.domain.ru"]);
    assert_eq!(mailbox_rows(&env, "anna"), vec!["0"; 4]);
    let r = env.ok(&["--yes", "domain", "remove", "tver.domain.ru"]);
    assert!(
        r.stderr.contains(S2) && r.stderr.contains(S1),
        "{}",
        r.stderr
    );
    env.ok(&["--yes", "domain", "remove", "partner.org"]);
    assert_eq!(
        count(&env, "SELECT count(*) FROM ldomain WHERE domain = 'tver'"),
        vec!["0"; 4]
    );
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM co_domain WHERE domain = 'partner.org'"
        ),
        vec!["0"; 4]
    );
    // The seed rows are untouched and all four agree.
    let r = env.ok(&["drift"]);
    assert!(r.stdout.contains("no drift"), "{}", r.stdout);
    // Bad names are refused before anything is written.
    for bad in [
        "x'; drop table mail; --.ru",
        "${run{/bin/true}}.ru",
        "a b.domain.ru",
    ] {
        let r = env.run(&["domain", "add", bad, "--primary", S1]);
        assert_eq!(r.code, 64, "{bad}: {}", r.stderr);
    }
    let r = env.run_in(
        &["mailbox", "add", "dir@msk.domain.ru", "--password-stdin"],
        "x\n",
    );
    assert_eq!(r.code, 64);
    let r = env.run(&["route", "set", "msk.domain.ru", "--primary", "bad node"]);
    assert_eq!(r.code, 64);
    assert_eq!(count(&env, "SELECT count(*) FROM mail"), vec!["17"; 4]);
    // Unknown things are "not found" (1), never a temporary failure.
    assert_eq!(env.run(&["domain", "show", "nope.domain.ru"]).code, 1);
    assert_eq!(env.run(&["domain", "enable", "nope.domain.ru"]).code, 1);
}

#[test]
fn unreachable_database_changes_nothing_then_partial_drift_and_repair() {
    let env = four_nodes("unreach", "");
    let before = env.sql_all("SELECT count(*) FROM ldomain");
    env.block("smtp-02");
    let r = env.run(&[
        "domain",
        "add",
        "tula.domain.ru",
        "--primary",
        S1,
        "--backup",
        S2,
    ]);
    assert_fails(&r, 75, &["smtp-02", "nothing was changed"]);
    for n in &NAMES[..3] {
        assert_eq!(
            env.sql(n, "SELECT count(*) FROM ldomain WHERE domain = 'tula'"),
            "0"
        );
        assert_eq!(
            env.sql(
                n,
                "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"
            ),
            "0"
        );
    }
    let r = env.run(&[
        "--partial",
        "domain",
        "add",
        "tula.domain.ru",
        "--primary",
        S1,
        "--backup",
        S2,
    ]);
    assert_eq!(r.code, 75, "partial with a missing database: {}", r.stderr);
    assert!(r.stdout.contains("NOT applied to smtp-02"), "{}", r.stdout);
    env.unblock("smtp-02");
    assert_eq!(
        env.sql("smtp-02", "SELECT count(*) FROM ldomain"),
        before[3]
    );
    let r = env.run(&["--json", "drift"]);
    assert_eq!(r.code, 1);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "exactly the missing row: {items:?}");
    assert_eq!(items[0]["database"], "smtp-02");
    assert_eq!(items[0]["object"], "domain tula.domain.ru");
    assert_eq!(items[0]["problem"], "missing");
    assert_eq!(
        env.run(&["drift", "--repair"]).code,
        64,
        "--repair needs --from"
    );
    let r = env.ok(&["drift", "--repair", "--from", "storage-01"]);
    assert!(r.stdout.contains("repaired smtp-02"), "{}", r.stdout);
    assert_eq!(
        env.route("smtp-02", "tula.domain.ru"),
        (S1.to_string(), Some(S2.to_string()))
    );
    let r = env.ok(&["--json", "drift"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["items"].as_array().unwrap().is_empty());
    assert!(v["pending"].as_array().unwrap().is_empty());
    // When the first database is the one that missed a change, drift compares against one
    // that did not.
    env.block("storage-01");
    let r = env.run(&["--partial", "domain", "disable", "msk.domain.ru"]);
    assert_eq!(r.code, 75, "{}", r.stderr);
    env.unblock("storage-01");
    let r = env.run(&["--json", "drift"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["reference"], "storage-02");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["database"], "storage-01");
    assert_eq!(items[0]["object"], "domain msk.domain.ru");
    env.ok(&["drift", "--repair", "--from", "storage-02"]);
    assert_eq!(
        count(&env, "SELECT active FROM ldomain WHERE domain = 'msk'"),
        vec!["f"; 4]
    );
    env.ok(&["drift"]);
    // A row only one database has (a hand edit) is removed by a repair only with --yes.
    env.sql(
        "smtp-01",
        "INSERT INTO ldomain (domain, active) VALUES ('rogue', TRUE); \
         INSERT INTO maps (ldomain_id, mdomain_id, storage1, storage2) \
         SELECT l.id, m.id, 'x.example', '' FROM ldomain l, mdomain m \
         WHERE l.domain = 'rogue' AND m.domain = 'domain.ru';",
    );
    let r = env.run(&["drift", "--repair", "--from", "storage-01"]);
    assert_eq!(r.code, 64, "{}", r.stderr);
    assert!(
        r.stderr.contains("domain rogue.domain.ru from smtp-01"),
        "{}",
        r.stderr
    );
    assert_eq!(
        env.sql(
            "smtp-01",
            "SELECT count(*) FROM ldomain WHERE domain = 'rogue'"
        ),
        "1"
    );
    env.ok(&["--yes", "drift", "--repair", "--from", "storage-01"]);
    assert_eq!(
        env.sql(
            "smtp-01",
            "SELECT count(*) FROM ldomain WHERE domain = 'rogue'"
        ),
        "0"
    );
    env.ok(&["drift"]);
}

/// The entry of `node` in the output of `mailctl --json node list`.
fn node_json(r: &Run, node: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v.as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node"] == node))
        .cloned()
        .unwrap_or_else(|| panic!("{node} not in: {}", r.stdout))
}

/// Rows of `mail` named `mailbox`, in each database.
fn mailbox_rows(env: &Env, mailbox: &str) -> Vec<String> {
    count(
        env,
        &format!("SELECT count(*) FROM mail WHERE mailbox = '{mailbox}'"),
    )
}

/// `r` exited with `code` and its error names every one of `needles`.
fn assert_fails(r: &Run, code: i32, needles: &[&str]) {
    assert_eq!(r.code, code, "{}", r.stderr);
    for n in needles {
        assert!(r.stderr.contains(n), "{n:?} not in: {}", r.stderr);
    }
}

/// Prepared transactions left in each database.
fn prepared_left(env: &Env) -> Vec<String> {
    count(
        env,
        "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
    )
}

/// Simulate a crash between PREPARE TRANSACTION and COMMIT PREPARED.
fn leave_prepared(env: &Env, id: &str, domain: &str) -> Vec<Participant> {
    let change = Change::AddDomain {
        domain: Domain::parse(domain, Strictness::Admin).unwrap(),
        kind: DomainKind::Ldomain,
        primary: S1.to_string(),
        backup: Some(S2.to_string()),
        active: true,
    };
    let mut parts = Vec::new();
    for (i, (name, db)) in env.dbs.iter().enumerate() {
        let role = if i < 2 { Role::Storage } else { Role::Smtp };
        let mut h = AdminDb::open(name, &db.url, role, Duration::from_secs(3)).unwrap();
        let gid = txn::gid(id, i).unwrap();
        h.begin().unwrap();
        h.apply(&change).unwrap();
        h.prepare(&gid).unwrap();
        parts.push(Participant {
            database: name.clone(),
            gid: Some(gid),
            resolved: false,
        });
    }
    parts
}

#[test]
fn prepared_transactions_left_behind_are_resolved_by_the_next_run() {
    let env = four_nodes("leftover", "");
    // Crash before the decision: no log entry saying commit → rolled back.
    leave_prepared(&env, &state::new_change_id(), "orel.domain.ru");
    assert_eq!(prepared_left(&env), vec!["1"; 4]);
    let r = env.ok(&["domain", "list"]);
    assert!(!r.stdout.contains("orel"));
    let r = env.run(&["drift"]);
    assert!(r.stderr.contains("rolled back"), "{}", r.stderr);
    assert_eq!(prepared_left(&env), vec!["0"; 4]);
    assert_eq!(
        count(&env, "SELECT count(*) FROM ldomain WHERE domain = 'orel'"),
        vec!["0"; 4]
    );
    // Crash after the decision was logged: committed everywhere by the next run.
    let id = &state::new_change_id();
    let parts = leave_prepared(&env, id, "kursk.domain.ru");
    let state = State::open(&env.state).unwrap();
    state
        .save_txn(&TxnLog {
            id: id.to_string(),
            created: 1,
            summary: vec!["add kursk".into()],
            decision: Decision::Commit,
            participants: parts,
        })
        .unwrap();
    let r = env.ok(&["recover"]);
    assert!(r.stdout.contains("committed"), "{}", r.stdout);
    assert_eq!(prepared_left(&env), vec!["0"; 4]);
    assert_eq!(
        count(&env, "SELECT count(*) FROM ldomain WHERE domain = 'kursk'"),
        vec!["1"; 4]
    );
    assert!(
        state.load_txn(id).unwrap().is_none(),
        "decision log entry retired"
    );
    env.ok(&["drift"]);
    // A participant failing after others prepared: the prepared ones are rolled back.
    env.sql(
        "storage-02",
        "INSERT INTO mail (mailbox, ldomain_id, mdomain_id, active) \
         SELECT 'zoe', l.id, m.id, TRUE FROM ldomain l, mdomain m \
         WHERE l.domain = 'msk' AND m.domain = 'domain.ru';",
    );
    let r = env.run(&["mailbox", "add", "zoe@msk.domain.ru", "--no-password"]);
    assert_fails(&r, 64, &["storage-02", "nothing was changed"]);
    assert_eq!(mailbox_rows(&env, "zoe"), vec!["0", "1", "0", "0"]);
    assert_eq!(prepared_left(&env), vec!["0"; 4]);
    assert!(
        state.txns().unwrap().is_empty(),
        "no decision-log entry left"
    );
}

#[test]
fn failover_rejoin_failback() {
    let env = four_nodes("failover", "");
    let original: Vec<String> = NAMES.iter().map(|n| env.routes(n)).collect();
    env.block("storage-01");
    let r = env.ok(&["failover", "--from", S1]);
    assert!(r.stdout.contains("mailsync promote"), "{}", r.stdout);
    assert!(
        r.stdout.contains("ekb.domain.ru: no backup"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("mailctl rejoin {S1}")),
        "{}",
        r.stdout
    );
    for n in &NAMES[1..] {
        assert_eq!(
            env.route(n, "msk.domain.ru"),
            (S2.to_string(), Some(S1.to_string())),
            "{n}"
        );
        assert_eq!(env.route(n, "gone.example.net").0, S2, "{n}");
        assert_eq!(env.route(n, "ekb.domain.ru").0, S1, "{n}: no backup, stays");
    }
    assert_eq!(
        mailmap_route(&env.config, "msk.domain.ru"),
        format!("{S2} : {S1}")
    );
    // mailauth on storage-01's side (proxy mode) now sends ivanov to the new primary.
    let auth_cfg = env.root.join("auth.toml");
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str(&format!(
        "[auth]\nproxy_mode = true\n[auth.nodes]\n\"{S1}\" = \"10.0.0.1\"\n\"{S2}\" = \"10.0.0.2\"\n"
    ));
    std::fs::write(&auth_cfg, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&auth_cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        mailauth_proxy_host(&auth_cfg, "ivanov@msk.domain.ru", "ivanov-pw").as_deref(),
        Some("10.0.0.2")
    );
    let r = env.run(&["drift"]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("pending for storage-01"), "{}", r.stdout);
    env.unblock("storage-01");
    // The returning node still believes it is primary until rejoin; mailctl does not read it.
    assert_eq!(env.route("storage-01", "msk.domain.ru").0, S1);
    let r = env.ok(&["route", "show", "msk.domain.ru"]);
    assert!(r.stderr.contains("read from storage-02"), "{}", r.stderr);
    assert!(
        r.stdout.contains(&format!("msk.domain.ru  {S2}")),
        "{}",
        r.stdout
    );
    let r = env.ok(&["rejoin", S1]);
    assert!(r.stdout.contains("level with"), "{}", r.stdout);
    assert_eq!(
        env.route("storage-01", "msk.domain.ru"),
        (S2.to_string(), Some(S1.to_string()))
    );
    env.ok(&["drift"]);
    // A failing mailsync leaves maps unchanged.
    let bad = write_config(
        &env.root,
        &env.dbs
            .iter()
            .enumerate()
            .map(|(i, (n, db))| {
                (
                    n.as_str(),
                    db.url.clone(),
                    if i < 2 { "storage" } else { "smtp" },
                )
            })
            .collect::<Vec<_>>(),
        "mailsync = \"/bin/false\"\n",
    );
    let r = mailctl_at(&bad, &["failback", S1], None);
    assert_eq!(r.code, 75, "{}", r.stderr);
    assert!(r.stderr.contains("maps are unchanged"), "{}", r.stderr);
    assert_eq!(env.route("smtp-01", "msk.domain.ru").0, S2);
    let r = mailctl_at(&bad, &["failback", S1, "--skip-sync"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let restored: Vec<String> = NAMES.iter().map(|n| env.routes(n)).collect();
    assert_eq!(
        restored, original,
        "failback restores the original maps rows exactly"
    );
    assert_eq!(
        mailauth_proxy_host(&auth_cfg, "ivanov@msk.domain.ru", "ivanov-pw"),
        None,
        "served by storage-01 again"
    );
    assert_eq!(
        mailmap_route(&env.config, "msk.domain.ru"),
        format!("{S1} : {S2}")
    );
    assert_eq!(
        mailctl_at(&bad, &["failback", S1], None).code,
        1,
        "nothing left to fail back"
    );
    // Planned switchover and back.
    let r = mailctl_at(
        &bad,
        &[
            "switchover",
            "--from",
            S2,
            "--domain",
            "spb.domain.ru",
            "--skip-sync",
        ],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        env.route("smtp-02", "spb.domain.ru"),
        (S1.to_string(), Some(S2.to_string()))
    );
    let r = mailctl_at(
        &bad,
        &["switchover", "--from", S1, "--domain", "spb.domain.ru"],
        None,
    );
    assert_eq!(r.code, 75, "mailsync /bin/false fails: {}", r.stderr);
    assert_eq!(env.route("smtp-02", "spb.domain.ru").0, S1);
}

#[test]
fn passwords_never_in_argv_nor_logs() {
    let env = four_nodes("secret", "");
    let secret = "Zq9-unique-Secret-4711";
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailctl"))
        .arg("--config")
        .arg(&env.config)
        .args([
            "-v",
            "mailbox",
            "add",
            "kira@msk.domain.ru",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let scan = || -> Vec<String> {
        let mut hits = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
                if String::from_utf8_lossy(&c).contains(secret) {
                    hits.push(e.path().display().to_string());
                }
            }
        }
        hits
    };
    assert!(scan().is_empty());
    let mut si = child.stdin.take().unwrap();
    si.write_all(format!("{secret}\n").as_bytes()).unwrap();
    drop(si);
    let mut seen = Vec::new();
    while child.try_wait().unwrap().is_none() {
        seen.extend(scan());
        std::thread::sleep(Duration::from_millis(2));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(seen.is_empty(), "password in argv of {seen:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(secret));
    for e in walk(&env.state) {
        let text = std::fs::read_to_string(&e).unwrap_or_default();
        assert!(!text.contains(secret), "{}", e.display());
    }
    // A bad password prompt refuses rather than taking argv: no terminal, no --password-stdin.
    let r = env.run(&["mailbox", "add", "lev@msk.domain.ru"]);
    assert_eq!(r.code, 64, "{}", r.stderr);
    assert!(r.stderr.contains("--password-stdin"), "{}", r.stderr);
}

/// `mailauth checkpassword` (proxy mode, as node S1) for `user`: the proxy host it
/// answers (None: served locally). Panics unless the login succeeds.
fn mailauth_proxy_host(config: &Path, user: &str, pw: &str) -> Option<String> {
    use std::os::unix::io::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("fd3");
    std::fs::write(&input, format!("{user}\0{pw}\0\0")).unwrap();
    let file = std::fs::File::open(&input).unwrap();
    let fd = file.as_raw_fd();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailauth"));
    cmd.arg("--config")
        .arg(config)
        .args(["checkpassword", "/usr/bin/env"])
        .env_clear()
        .stdin(Stdio::null());
    // SAFETY: only the async-signal-safe dup2/fcntl between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec: clear it then.
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    drop(file);
    assert!(
        out.status.success(),
        "mailauth: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("host="))
        .map(str::to_string)
}

/// `mailmap route DOMAIN` (Exim's route list) with `config`.
fn mailmap_route(config: &Path, domain: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mailmap"))
        .arg("--config")
        .arg(config)
        .args(["route", domain])
        .env_remove("MAILCLUSTER_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mailmap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn hash_that_does_not_fit_is_refused_with_the_fix() {
    let env = four_nodes("narrow", "");
    env.sql(
        "storage-02",
        "ALTER TABLE mail ALTER COLUMN password TYPE varchar(100)",
    );
    let r = env.run_in(
        &["mailbox", "add", "oleg@msk.domain.ru", "--password-stdin"],
        "pw-oleg\n",
    );
    assert_fails(&r, 64, &["storage-02", "mailctl schema upgrade"]);
    assert_eq!(mailbox_rows(&env, "oleg"), vec!["0"; 4]);
    let r = env.run(&["schema", "check"]);
    assert!(
        r.stdout.contains("storage-02") && r.stdout.contains("varchar(100)"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    env.ok(&["schema", "upgrade"]);
    env.ok(&["schema", "check"]);
    let r = env.run_in(
        &["mailbox", "add", "oleg@msk.domain.ru", "--password-stdin"],
        "pw-oleg\n",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(mailbox_rows(&env, "oleg"), vec!["1"; 4]);
}

#[test]
fn without_prepared_transactions_the_error_says_how_to_enable_them() {
    let pg = support::pg::shared(); // max_prepared_transactions = 0 (the default)
    let a = fixtures::load_pg(pg, "noprep_a");
    let b = fixtures::load_pg_smtp(pg, "noprep_b");
    let (_dir, config) = storage_and_smtp(&a.url, &b.url);
    let r = domain_add(&config, "vlg.domain.ru");
    assert_fails(&r, 78, &["max_prepared_transactions = 10", "restart"]);
    assert!(r.stderr.contains("--partial"));
    assert_eq!(
        pg.psql(&a.name, "SELECT count(*) FROM ldomain WHERE domain = 'vlg'")
            .trim(),
        "0"
    );
    let r = mailctl_at(
        &config,
        &[
            "--partial",
            "domain",
            "add",
            "vlg.domain.ru",
            "--primary",
            S1,
        ],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        pg.psql(&b.name, "SELECT count(*) FROM ldomain WHERE domain = 'vlg'")
            .trim(),
        "1"
    );
}

#[test]
fn sqlite_directories_join_with_ordinary_transactions() {
    let pg = support::pg_2pc::cluster();
    let s1 = fixtures::load_pg(pg, "mixed_s1");
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let lite = fixtures::sqlite_seed(d1.path());
    let lite_smtp = fixtures::sqlite_seed_smtp(d2.path());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &[
            ("storage-01", s1.url.clone(), "storage"),
            ("storage-02", lite.clone(), "storage"),
            ("smtp-01", lite_smtp.clone(), "smtp"),
        ],
        "",
    );
    let ok = |args: &[&str], stdin: Option<&str>| {
        let r = mailctl_at(&config, args, stdin);
        assert_eq!(r.code, 0, "{args:?}: {}{}", r.stdout, r.stderr);
        r
    };
    ok(
        &[
            "domain",
            "add",
            "omsk.domain.ru",
            "--primary",
            S2,
            "--backup",
            S1,
        ],
        None,
    );
    ok(
        &["mailbox", "add", "ira@omsk.domain.ru", "--password-stdin"],
        Some("ira-pw\n"),
    );
    let conn = rusqlite::Connection::open(lite.strip_prefix("sqlite:").unwrap()).unwrap();
    let h: String = conn
        .query_row("SELECT password FROM mail WHERE mailbox = 'ira'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(h.starts_with("{SHA512-CRYPT}$6$"));
    let conn = rusqlite::Connection::open(lite_smtp.strip_prefix("sqlite:").unwrap()).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM mail WHERE mailbox = 'ira'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, 1);
    let mut d = mailcluster::directory::open(&lite_smtp, Duration::from_secs(3)).unwrap();
    let r = d
        .route(&Domain::parse("omsk.domain.ru", Strictness::Lookup).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(r.primary, S2);
    // A failure on one participant (the mailbox exists already) changes nothing anywhere.
    let r = mailctl_at(
        &config,
        &["mailbox", "add", "ira@omsk.domain.ru", "--no-password"],
        None,
    );
    assert_eq!(r.code, 64, "{}", r.stderr);
    assert_eq!(
        pg.psql(
            &s1.name,
            "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"
        )
        .trim(),
        "0"
    );
    ok(&["failover", "--from", S2], None);
    let mut d = mailcluster::directory::open(&lite, Duration::from_secs(3)).unwrap();
    let r = d
        .route(&Domain::parse("omsk.domain.ru", Strictness::Lookup).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(r.primary, S1);
    let r = ok(&["drift"], None);
    assert!(r.stdout.contains("no drift"), "{}", r.stdout);
    // A single SQLite directory given with --db.
    let d3 = tempfile::tempdir().unwrap();
    let single = fixtures::sqlite_seed(d3.path());
    let r = Command::new(env!("CARGO_BIN_EXE_mailctl"))
        .args([
            "--db",
            &single,
            "domain",
            "add",
            "ufa.domain.ru",
            "--primary",
            S1,
        ])
        .env("MAILCLUSTER_CONFIG", &config)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

#[test]
fn hung_database_is_a_bounded_temporary_failure() {
    let shared = support::pg_2pc::cluster();
    let s1 = fixtures::load_pg(shared, "hung_s1");
    let private = Pg::start_private();
    private.psql_as(
        "postgres",
        "postgres",
        "ALTER SYSTEM SET max_prepared_transactions = 5;",
    );
    private.stop();
    private.start();
    let m1 = fixtures::load_pg_smtp(&private, "hung_m1");
    let (_dir, config) = storage_and_smtp(&s1.url, &m1.tcp_url);
    let r = domain_add(&config, "kaluga.domain.ru");
    assert_eq!(r.code, 0, "{}", r.stderr);
    private.hang();
    let start = std::time::Instant::now();
    let r = domain_add(&config, "bryansk.domain.ru");
    let took = start.elapsed();
    private.resume();
    assert_eq!(r.code, 75, "{}", r.stderr);
    assert!(r.stderr.contains("smtp-01"), "{}", r.stderr);
    assert!(!r.stderr.contains(support::pg::PASSWORD), "{}", r.stderr);
    assert!(took < Duration::from_secs(15), "bounded: {took:?}");
    assert_eq!(
        shared
            .psql(
                &s1.name,
                "SELECT count(*) FROM ldomain WHERE domain = 'bryansk'"
            )
            .trim(),
        "0"
    );
    let r = mailctl_at(&config, &["drift"], None);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

#[test]
fn node_list_reports_service_health() {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dove_root = dir.path().join("dovecot");
    std::fs::create_dir(&dove_root).unwrap();
    std::fs::set_permissions(&dove_root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = support::dovecot::Dovecot::start(
        &dove_root,
        "passdb {\n  driver = static\n  args = nopassword=y\n}\n\
         userdb {\n  driver = static\n  args = uid=nobody gid=nogroup home=/nonexistent\n}\n",
    );
    let db_dir = dir.path().join("db");
    std::fs::create_dir(&db_dir).unwrap();
    let url = fixtures::sqlite_seed(&db_dir);
    let config = write_config(
        dir.path(),
        &[("storage-01", url, "storage")],
        &format!(
            "[auth.nodes]\n\"{S1}\" = \"127.0.0.1\"\n[ports]\nimap = {}\npop3 = {}\nsmtp = 1\n",
            d.imap_port, d.pop3_port
        ),
    );
    let r = mailctl_at(&config, &["--json", "node", "list"], None);
    d.stop();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let s1 = v
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == S1)
        .unwrap();
    let state = |i: usize| s1["services"][i]["state"].as_str().unwrap().to_string();
    assert_eq!(
        (state(0), state(1), state(2)),
        ("up".into(), "up".into(), "down".into()),
        "{s1}"
    );
    assert_eq!(s1["databases"][0]["reachable"], true);
}

/// A pseudo-terminal pair: (master fd, slave path).
fn open_pty() -> (i32, std::ffi::CString) {
    // SAFETY: plain libc calls on a descriptor we own; ptsname's buffer is copied at once.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(master >= 0, "posix_openpt");
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let name = libc::ptsname(master);
        assert!(!name.is_null());
        (master, std::ffi::CStr::from_ptr(name).to_owned())
    }
}

#[test]
fn password_prompt_on_a_terminal_does_not_echo() {
    use std::os::unix::process::CommandExt;
    use std::sync::{Arc, Mutex};
    let pg = support::pg_2pc::cluster();
    let s1 = fixtures::load_pg(pg, "tty_s1");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("storage-01", s1.url.clone(), "storage")], "");
    let (master, slave) = open_pty();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailctl"));
    cmd.arg("--config")
        .arg(&config)
        .args(["mailbox", "add", "tanya@msk.domain.ru"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: async-signal-safe calls only: a new session whose controlling terminal is
    // the pty's slave side (what /dev/tty then opens).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::open(slave.as_ptr(), libc::O_RDWR);
            if fd < 0 || libc::ioctl(fd, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            loop {
                // SAFETY: reading into a live buffer from our master descriptor.
                let n = unsafe { libc::read(master, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n as usize]);
            }
        })
    };
    let wait_for = |text: &str| {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if String::from_utf8_lossy(&seen.lock().unwrap()).contains(text) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "no {text:?} on the terminal: {:?}",
            String::from_utf8_lossy(&seen.lock().unwrap())
        );
    };
    let type_line = |line: &str| {
        // SAFETY: writing a live buffer to our master descriptor.
        let n = unsafe { libc::write(master, line.as_ptr().cast(), line.len()) };
        assert_eq!(n, line.len() as isize);
    };
    wait_for("New password for tanya@msk.domain.ru: ");
    type_line("Tty-Secret-91\n");
    wait_for("Again: ");
    type_line("Tty-Secret-91\n");
    let out = child.wait_with_output().unwrap();
    // SAFETY: closing our master descriptor ends the reader.
    unsafe {
        libc::close(master);
    }
    let _ = reader.join();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let screen = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert!(!screen.contains("Tty-Secret-91"), "echoed: {screen:?}");
    let h = pg.psql(
        &s1.name,
        "SELECT password FROM mail WHERE mailbox = 'tanya'",
    );
    let bare = h.trim().strip_prefix("{SHA512-CRYPT}").unwrap().to_string();
    assert!(sha_crypt::sha512_check("Tty-Secret-91", &bare).is_ok());
}

#[test]
fn switchover_runs_the_real_mailsync_before_flipping_maps() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let a = root.join("a");
    let b = root.join("b");
    let cur = a.join("msk.domain.ru/ivanov/Maildir/cur");
    std::fs::create_dir_all(&cur).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(cur.join("1.M1P1.host,S=5:2,S"), "hello").unwrap();
    let db_dir = root.join("db");
    std::fs::create_dir(&db_dir).unwrap();
    let url = fixtures::sqlite_seed(&db_dir);
    // The target node's mail root stands in for storage-02 (mailsync's local transport).
    let config = write_config(
        root,
        &[("storage-01", url.clone(), "storage")],
        &format!(
            "mailsync_args = [\"--config\", \"{{config}}\", \"--domain\", \"{{domain}}\", \
             \"{{from}}\", \"{}\"]\n[mail]\nroot = \"{}\"\nhome = \"{}/{{domain}}/{{mailbox}}\"\n",
            b.display(),
            a.display(),
            a.display()
        ),
    );
    let r = mailctl_at(
        &config,
        &["switchover", "--from", S1, "--domain", "msk.domain.ru"],
        None,
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("synced with mailsync first: msk.domain.ru"),
        "{}",
        r.stdout
    );
    assert!(b
        .join("msk.domain.ru/ivanov/Maildir/cur/1.M1P1.host,S=5:2,S")
        .exists());
    let mut d = mailcluster::directory::open(&url, Duration::from_secs(3)).unwrap();
    let route = d
        .route(&Domain::parse("msk.domain.ru", Strictness::Lookup).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        (route.primary.as_str(), route.backup.as_deref()),
        (S2, Some(S1))
    );
}
