//! The mailcluster demo: a small two-storage cluster on the embedded SQLite default, in a
//! temporary directory, and the lookups Exim, Dovecot and nginx make against it.
//!
//!     cargo run --release --example demo
//!
//! It prints a story and checks every answer on the way; it exits 1 if one is wrong.
//! Chapters 1-8 (this file): the directory and the lookups. `logins.rs`: password schemes,
//! Dovecot's passdb/userdb, databases down. `mailctl.rs`: changes written to every node,
//! drift, failover, rejoin and failback. `replication.rs`: mailsync between the storages.

mod logins;
mod mailctl;
mod replication;

use mailcluster::config::{Config, DirectoryConfig, Role};
use mailcluster::directory::write::{open_writer, DirectoryWriter};
use mailcluster::directory::{schema, Directory, DomainSource};
use mailcluster::names::{Address, Domain, LocalPart, Strictness};
use mailcluster::{Error, ErrorKind, Result};
use std::path::{Path, PathBuf};

pub(crate) const STORAGE1: &str = "storage-01.domain.ru";
pub(crate) const STORAGE2: &str = "storage-02.domain.ru";

/// Branch domains: (domain, primary, backup, active). The last is a whole domain outside the
/// branch scheme (`co_domain`).
const DOMAINS: &[(&str, DomainSource, &str, &str, bool)] = &[
    (
        "msk.domain.ru",
        DomainSource::Ldomain,
        STORAGE1,
        STORAGE2,
        true,
    ),
    (
        "kzn.domain.ru",
        DomainSource::Ldomain,
        STORAGE1,
        STORAGE2,
        true,
    ),
    (
        "spb.domain.ru",
        DomainSource::Ldomain,
        STORAGE2,
        STORAGE1,
        true,
    ),
    (
        "nsk.domain.ru",
        DomainSource::Ldomain,
        STORAGE2,
        STORAGE1,
        false,
    ),
    (
        "partner.org",
        DomainSource::CoDomain,
        STORAGE2,
        STORAGE1,
        true,
    ),
];

/// Mailboxes: (address, password, active).
pub(crate) const MAILBOXES: &[(&str, &str, bool)] = &[
    ("ivanov@msk.domain.ru", "ivanov-pw", true),
    ("petrova@msk.domain.ru", "petrova-pw", true),
    ("sidorov@kzn.domain.ru", "sidorov-pw", false),
    ("smirnova@spb.domain.ru", "smirnova-pw", true),
    ("kuznetsov@nsk.domain.ru", "kuznetsov-pw", true),
];

/// The seed stores unsalted MD5 hex (Dovecot's PLAIN-MD5).
pub(crate) fn md5_hex(plain: &str) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(plain.as_bytes()))
}

pub(crate) struct Story {
    wrong: Vec<String>,
    chapter: u32,
}

impl Story {
    pub(crate) fn chapter(&mut self, title: &str) {
        self.chapter += 1;
        let n = self.chapter;
        let head = format!("{n}. {title}");
        println!("\n{head}\n{}", "-".repeat(head.chars().count()));
    }
    /// Print a line and check it against what the demo expects.
    pub(crate) fn check(&mut self, ok: bool, line: String) {
        if ok {
            println!("   {line}");
        } else {
            println!("   {line}   <-- UNEXPECTED");
            self.wrong.push(line);
        }
    }
}

/// What the later chapters need from the first ones.
pub(crate) struct Cluster {
    /// The temporary directory everything lives in.
    pub base: PathBuf,
    /// (directory name, role, URL) of storage-01, storage-02, smtp-01.
    pub urls: Vec<(&'static str, Role, String)>,
    /// storage-01's configuration.
    pub config: Config,
}

pub(crate) fn domain(s: &str) -> Result<Domain> {
    Domain::parse(s, Strictness::Admin)
}

fn main() {
    let mut story = Story {
        wrong: Vec::new(),
        chapter: 0,
    };
    match run(&mut story) {
        Ok(()) if story.wrong.is_empty() => {
            println!("\nEverything answered as expected.");
        }
        Ok(()) => {
            println!("\n{} answer(s) were not as expected.", story.wrong.len());
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("demo: {e}");
            std::process::exit(e.exit_code());
        }
    }
}

fn run(story: &mut Story) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("mailcluster-demo.")
        .tempdir()
        .map_err(|e| Error::io("creating a temporary directory", e))?;
    let base = tmp.path();
    println!(
        "mailcluster demo: a two-storage cluster in {}",
        base.display()
    );
    println!("(everything is removed when the demo ends)");

    // 1. One database per node, written by the admin tool to every node alike.
    story.chapter("Every node has its own directory database (SQLite here)");
    let nodes = [
        ("storage-01", Role::Storage),
        ("storage-02", Role::Storage),
        ("smtp-01", Role::Smtp),
    ];
    let mut urls = Vec::new();
    for (name, role) in nodes {
        let url = format!("sqlite:{}", base.join(format!("{name}.sqlite")).display());
        schema::init(&url, role)?;
        let mut w = open_writer(&url, mailcluster::directory::DEFAULT_TIMEOUT)?;
        populate(w.as_mut())?;
        println!(
            "   {name:<11} {role:<8} {url}",
            role = format!("{role:?}").to_lowercase()
        );
        urls.push((name, role, url));
    }
    println!(
        "   {} domains and {} mailboxes written to each; the smtp node stores no passwords",
        DOMAINS.len(),
        MAILBOXES.len()
    );

    // The configuration of storage-01 (as /etc/mailcluster/mailcluster.toml would say).
    let root = base.join("mail");
    let config_text = format!(
        "node = \"{STORAGE1}\"\n\n\
         [[directory]]\nname = \"storage-01\"\nurl = \"{}\"\nrole = \"storage\"\n\n\
         [mail]\nroot = \"{root}\"\nhome = \"{root}/{{domain}}/{{mailbox}}\"\nmaildir = \"Maildir\"\n",
        urls[0].2,
        root = root.display()
    );
    let config_path = base.join("storage-01.toml");
    std::fs::write(&config_path, &config_text)
        .map_err(|e| Error::io(format!("writing {}", config_path.display()), e))?;
    let config = Config::load(&config_path)?;
    println!(
        "\n   storage-01's configuration ({}):",
        config_path.display()
    );
    for line in config_text.lines() {
        println!("   | {line}");
    }

    // 2. Which domains each storage accepts (Exim's local_domains on a storage).
    story.chapter("Local domains per storage (Exim: domainlist local_domains)");
    let mut dirs: Vec<(&str, Box<dyn Directory>)> = Vec::new();
    for (name, _, url) in &urls {
        dirs.push((
            name,
            mailcluster::directory::open(url, config.db_timeout())?,
        ));
    }
    println!(
        "   {:<15} {:>12} {:>12}",
        "domain", "storage-01", "storage-02"
    );
    for (d, _, primary, _, active) in DOMAINS {
        let dom = domain(d)?;
        let a = dirs[0].1.is_local_domain(&dom, STORAGE1)?;
        let b = dirs[1].1.is_local_domain(&dom, STORAGE2)?;
        let expect = (
            *active && *primary == STORAGE1,
            *active && *primary == STORAGE2,
        );
        let yn = |x: bool| if x { "local" } else { "-" };
        let note = if *active { "" } else { "  (domain disabled)" };
        story.check(
            (a, b) == expect,
            format!("{:<15} {:>12} {:>12}{note}", d, yn(a), yn(b)),
        );
    }

    // 3. Routes, as an SMTP node sees them (Exim manualroute: primary, then backup).
    story.chapter("Routes from the SMTP node's own database (Exim: route_list)");
    let smtp = &mut dirs[2].1;
    for (d, source, primary, backup, _) in DOMAINS {
        let dom = domain(d)?;
        let route = smtp.route(&dom)?;
        let shown = match &route {
            Some(r) => format!(
                "{} : {}{}",
                r.primary,
                r.backup.as_deref().unwrap_or("-"),
                if r.active { "" } else { "  (inactive)" }
            ),
            None => "unknown".to_string(),
        };
        let ok = route.as_ref().is_some_and(|r| {
            r.primary == *primary && r.backup.as_deref() == Some(*backup) && r.source == *source
        });
        let kind = match source {
            DomainSource::Ldomain => "branch",
            DomainSource::CoDomain => "co_domain",
        };
        story.check(ok, format!("{d:<15} -> {shown}   [{kind}]"));
    }
    let unknown = smtp.route(&domain("nowhere.domain.ru")?)?;
    story.check(
        unknown.is_none(),
        "nowhere.domain.ru -> unknown: Exim rejects the recipient".to_string(),
    );

    // 4. Mailboxes, as Dovecot's passdb/userdb on a storage sees them.
    story.chapter("Mailboxes in storage-01's database (Dovecot: passdb and userdb)");
    let storage = &mut dirs[0].1;
    for (addr, password, active) in MAILBOXES {
        let a = Address::parse(addr, Strictness::Admin)?;
        let rec = storage.mailbox(&a.local, &a.domain)?;
        let Some(rec) = rec else {
            story.check(false, format!("{addr:<25} not found"));
            continue;
        };
        let domain_active = DOMAINS
            .iter()
            .any(|(d, _, _, _, act)| *d == a.domain.as_str() && *act);
        let state = match (rec.mailbox_active, rec.domain_active) {
            (true, true) => "active",
            (false, _) => "mailbox disabled",
            (true, false) => "domain disabled",
        };
        let pw_ok = rec.password.as_deref() == Some(md5_hex(password).as_str());
        story.check(
            rec.mailbox_active == *active && rec.domain_active == domain_active && pw_ok,
            format!(
                "{addr:<25} {state:<17} password {}",
                if pw_ok { "matches its MD5" } else { "DIFFERS" }
            ),
        );
    }
    for probe in [
        "nobody@msk.domain.ru",
        "dir@msk.domain.ru",
        "'; drop table mail; --@msk.domain.ru",
        "x@${run{/bin/true}}",
    ] {
        let found = match Address::parse(probe, Strictness::Lookup) {
            Ok(a) => storage.mailbox(&a.local, &a.domain)?.is_some(),
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        story.check(!found, format!("{probe:<25} not found"));
    }
    let smtp_rec = dirs[2].1.mailbox(
        &LocalPart::parse("ivanov", Strictness::Admin)?,
        &domain("msk.domain.ru")?,
    )?;
    story.check(
        smtp_rec.as_ref().is_some_and(|r| r.password.is_none()),
        "on smtp-01 ivanov@msk.domain.ru exists, without a password (recipient check only)"
            .to_string(),
    );

    // 5. Where mail lives.
    story.chapter("Home and Maildir paths from the [mail] template");
    for addr in ["ivanov@msk.domain.ru", "Smirnova+lists@SPB.domain.ru"] {
        let a = Address::parse(addr, Strictness::Lookup)?;
        let home = config.home(&a.local, &a.domain)?;
        let maildir = config.maildir(&a.local, &a.domain)?;
        let expect = root.join(a.domain.as_str()).join(a.local.mailbox());
        story.check(
            home == expect && maildir == expect.join("Maildir"),
            format!("{addr:<29} home {}", rel(&home, base)),
        );
        println!("   {:<29} maildir {}", "", rel(&maildir, base));
    }

    // 6. The node name check.
    story.chapter("Configuration checks: the node name, secrets");
    config.check_node(dirs[0].1.as_mut())?;
    story.check(
        true,
        format!("node = \"{STORAGE1}\": known in maps, accepted"),
    );
    let mut short = config.clone();
    short.node = Some("storage-01".to_string());
    match short.check_node(dirs[0].1.as_mut()) {
        Err(e) if e.kind() == ErrorKind::Config => {
            story.check(
                true,
                "node = \"storage-01\" (a short host name) is refused:".to_string(),
            );
            println!("     {e}");
            println!("     (exit code {}: configuration error)", e.exit_code());
        }
        other => story.check(false, format!("short node name: {other:?}")),
    }

    // A password in a file everyone can read is refused (and never shown).
    let secret_path = base.join("with-password.toml");
    let secret_text = format!(
        "node = \"{STORAGE1}\"\n\n[[directory]]\nname = \"smtp-01\"\n\
         url = \"postgresql://mail:S3cret-Pw@smtp-01.domain.ru/mail\"\nrole = \"smtp\"\n"
    );
    write_mode(&secret_path, &secret_text, 0o644)?;
    match Config::load(&secret_path) {
        Err(e) if e.kind() == ErrorKind::Config && !e.to_string().contains("S3cret-Pw") => {
            story.check(
                true,
                "a file with a database password, mode 644, is refused:".to_string(),
            );
            println!("     {e}");
        }
        other => story.check(false, format!("world-readable secret: {:?}", other.err())),
    }
    write_mode(&secret_path, &secret_text, 0o640)?;
    story.check(
        Config::load(&secret_path).is_ok(),
        "the same file with mode 640 is accepted".to_string(),
    );

    // 7. What each storage replicates.
    story.chapter("What mailsync replicates: each storage's domains, to their backup");
    for (i, node) in [(0, STORAGE1), (1, STORAGE2)] {
        let mut theirs = dirs[i].1.domains(Some(node))?;
        theirs.sort_by(|a, b| a.domain.cmp(&b.domain));
        let expect: Vec<&str> = {
            let mut v: Vec<&str> = DOMAINS
                .iter()
                .filter(|(_, _, p, _, _)| *p == node)
                .map(|(d, _, _, _, _)| *d)
                .collect();
            v.sort();
            v
        };
        let got: Vec<&str> = theirs.iter().map(|r| r.domain.as_str()).collect();
        let shown: Vec<String> = theirs
            .iter()
            .map(|r| {
                format!(
                    "{} -> {}",
                    r.domain,
                    r.backup.as_deref().unwrap_or("(no backup)")
                )
            })
            .collect();
        story.check(got == expect, format!("{node}: {}", shown.join(", ")));
    }

    // 8. Databases that cannot be reached.
    story.chapter("When a database is unreachable: the next one, else \"try again later\"");
    let down = DirectoryConfig {
        name: "storage-01-pg".to_string(),
        // Nothing listens on port 1: the connection is refused at once.
        url: "postgresql://mail@127.0.0.1:1/mail?connect_timeout=1".to_string(),
        role: Role::Storage,
    };
    let mut failing_over = config.clone();
    failing_over.db_timeout = 1.0;
    failing_over.directories = vec![
        down.clone(),
        DirectoryConfig {
            name: "storage-02".to_string(),
            url: urls[1].2.clone(),
            role: Role::Storage,
        },
    ];
    let mut reached = failing_over.open_directory()?;
    let route = reached.route(&domain("msk.domain.ru")?)?;
    story.check(
        route.is_some(),
        format!(
            "storage-01-pg is down; the answer came from {}",
            reached.describe()
        ),
    );
    let mut all_down = failing_over.clone();
    all_down.directories = vec![down];
    let mut nothing = all_down.open_directory()?;
    match nothing.route(&domain("msk.domain.ru")?) {
        Err(e) if e.kind() == ErrorKind::Temporary => {
            story.check(
                true,
                format!(
                    "no database reachable: exit {} (Exim defers, Dovecot says try later), never \"not found\":",
                    e.exit_code()
                ),
            );
            println!("     {e}");
        }
        Err(e) => story.check(false, format!("all down: {:?}: {e}", e.kind())),
        Ok(r) => story.check(false, format!("all down, yet an answer: {r:?}")),
    }

    let cluster = Cluster {
        base: base.to_path_buf(),
        urls,
        config,
    };
    logins::schemes(story)?;
    let admin = mailctl::add_everywhere(story, &cluster)?;
    logins::dovecot(story, &cluster)?;
    logins::nginx(story, &cluster)?;
    logins::all_down(story, &cluster)?;
    mailctl::drift(story, &cluster, &admin)?;
    // Each storage's mail root (its /usr/mail) for mailsync.
    let nodes = [
        replication::Node {
            name: STORAGE1,
            root: base.join("storage-01-mail"),
            db_url: cluster.urls[0].2.clone(),
        },
        replication::Node {
            name: STORAGE2,
            root: base.join("storage-02-mail"),
            db_url: cluster.urls[1].2.clone(),
        },
    ];
    replication::replicate(story, &nodes[0], &nodes[1])?;
    mailctl::failover(story, &cluster, &admin, &nodes)?;
    Ok(())
}

fn populate(w: &mut dyn DirectoryWriter) -> Result<()> {
    for (d, source, primary, backup, active) in DOMAINS {
        w.add_domain(&domain(d)?, *source, primary, Some(backup), *active)?;
    }
    for (addr, password, active) in MAILBOXES {
        let a = Address::parse(addr, Strictness::Admin)?;
        w.add_mailbox(&a.local, &a.domain, Some(&md5_hex(password)), *active)?;
    }
    Ok(())
}

pub(crate) fn write_mode(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("chmod {}", path.display()), e))
}

pub(crate) fn rel(p: &Path, base: &Path) -> String {
    match p.strip_prefix(base) {
        Ok(r) => format!("$TMP/{}", r.display()),
        Err(_) => p.display().to_string(),
    }
}
