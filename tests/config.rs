//! Configuration loading: errors with file and line, unknown keys, secrets and file modes,
//! path templates, the node-name check, and the --config / $MAILCLUSTER_CONFIG precedence.
mod support;

use mailcluster::cli::CommonArgs;
use mailcluster::config::{Config, Role};
use mailcluster::names::{Domain, LocalPart, Strictness};
use mailcluster::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn load_err(text: &str, mode: u32) -> (PathBuf, mailcluster::Error, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "mailcluster.toml", text, mode);
    let err = Config::load(&path).unwrap_err();
    (path, err, dir)
}

const GOOD: &str = r#"
node = "storage-01.domain.ru"
db_timeout = 2.5

[[directory]]
name = "storage-01"
url  = "host=/run/postgresql dbname=mail user=mail"
role = "storage"

[[directory]]
name = "smtp-01"
url  = "sqlite:/var/db/mailcluster.sqlite"
role = "smtp"

[mail]
home = "/srv/mail/{ldomain}.{mdomain}/{mailbox}"
maildir = "Maildir"
root = "/srv/mail"
uid = 8
gid = 8

[ports]
imap = 1143

[auth]
listen = "127.0.0.1:8080"
"#;

#[test]
fn a_good_file_loads_in_order_with_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "m.toml", GOOD, 0o644);
    let c = Config::load(&path).unwrap();
    assert_eq!(c.node_name().unwrap(), "storage-01.domain.ru");
    assert_eq!(c.db_timeout().as_millis(), 2500);
    assert_eq!(
        c.directory_urls(),
        vec![
            ("storage-01", "host=/run/postgresql dbname=mail user=mail"),
            ("smtp-01", "sqlite:/var/db/mailcluster.sqlite")
        ]
    );
    assert_eq!(c.directories[1].role, Role::Smtp);
    assert_eq!((c.ports.imap, c.ports.pop3, c.ports.smtp), (1143, 110, 25));
    assert_eq!(c.file(), Some(path.as_path()));
    assert!(c.secrets().is_empty());
    let m = LocalPart::parse("Ivanov+news", Strictness::Lookup).unwrap();
    let d = Domain::parse("Branch.Domain.RU", Strictness::Lookup).unwrap();
    assert_eq!(
        c.home(&m, &d).unwrap(),
        Path::new("/srv/mail/branch.domain.ru/ivanov")
    );
    assert_eq!(
        c.maildir(&m, &d).unwrap(),
        Path::new("/srv/mail/branch.domain.ru/ivanov/Maildir")
    );
    assert_eq!(
        c.domain_dir(&d).unwrap(),
        Path::new("/srv/mail/branch.domain.ru")
    );

    // Without [mail] root, the root is the fixed part of the home template.
    let path = write(
        dir.path(),
        "h.toml",
        "[mail]\nhome = \"/tmp/t/mail/{domain}/{mailbox}\"\nmaildir = \"/tmp/t/mail/md/{domain}/{mailbox}\"\n",
        0o644,
    );
    let h = Config::load(&path).unwrap();
    assert_eq!(h.mail.root, Path::new("/tmp/t/mail"));
    assert_eq!(
        h.maildir(&m, &d).unwrap(),
        Path::new("/tmp/t/mail/md/branch.domain.ru/ivanov")
    );

    // Built-in defaults: the seed's layout.
    let c = Config::default();
    assert_eq!(
        c.maildir(&m, &d).unwrap(),
        Path::new("/usr/mail/branch.domain.ru/ivanov/Maildir")
    );
}

#[test]
fn malformed_files_name_file_line_and_expectation() {
    let (path, e, _d) = load_err("node = \"a.b\"\n\n[mail]\nuid = \"eight\"\n", 0o644);
    assert_eq!(e.kind(), ErrorKind::Config);
    assert_eq!(e.exit_code(), 78);
    let m = e.to_string();
    assert!(m.starts_with(&format!("{}:4:", path.display())), "{m}");
    assert!(m.contains("expected"), "{m}");

    let (path, e, _d) = load_err("node = \"a.b\"\n[[directory]\nname = 1\n", 0o644);
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(
        e.to_string().starts_with(&format!("{}:2:", path.display())),
        "{e}"
    );

    let (_, e, _d) = load_err("db_timeout = -1\n", 0o644);
    assert!(e.to_string().contains(":1: db_timeout"), "{e}");

    let (_, e, _d) = load_err("\n\nnode = \"storage 01\"\n", 0o644);
    assert!(e.to_string().contains(":3: node"), "{e}");

    let (_, e, _d) = load_err("[mail]\nhome = \"/usr/mail/{domain}/{user}\"\n", 0o644);
    assert!(e.to_string().contains(":2:"), "{e}");
    assert!(e.to_string().contains("unknown variable {user}"), "{e}");

    let (_, e, _d) = load_err("[mail]\nroot = \"/srv/mail\"\n", 0o644);
    assert!(
        e.to_string()
            .contains("not a directory under the mail root"),
        "{e}"
    );

    let (_, e, _d) = load_err("node = \"a.b\"\n\u{0}\n", 0o644);
    assert_eq!(e.kind(), ErrorKind::Config);

    let missing = Config::load(Path::new("/nonexistent/mailcluster.toml")).unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::Config);
    assert!(missing
        .to_string()
        .contains("/nonexistent/mailcluster.toml"));
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    for (text, line, key) in [
        ("node = \"a.b\"\nnodes = \"x\"\n", 2, "nodes"),
        ("[mail]\nhome_dir = \"/x\"\n", 2, "home_dir"),
        (
            "[[directory]]\nname = \"a\"\nurl = \"sqlite:/x\"\nrol = \"smtp\"\n",
            4,
            "rol",
        ),
        ("[ports]\nimaps = 993\n", 2, "imaps"),
        ("[directory]\nname = \"a\"\n", 1, "[[directory]]"),
    ] {
        let (_, e, _d) = load_err(text, 0o644);
        let m = e.to_string();
        assert_eq!(e.kind(), ErrorKind::Config, "{m}");
        assert!(m.contains(&format!(":{line}:")), "{text:?}: {m}");
        assert!(m.contains(key), "{text:?}: {m}");
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthSection {
    #[serde(default)]
    listen: String,
    #[serde(default)]
    shared_secret: String,
}

#[test]
fn sections_are_read_with_lines_and_unknown_keys_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "m.toml", GOOD, 0o600);
    let c = Config::load(&path).unwrap();
    let auth: AuthSection = c.section("auth").unwrap();
    assert_eq!(auth.listen, "127.0.0.1:8080");
    assert_eq!(auth.shared_secret, "");
    let sync: AuthSection = c.section("sync").unwrap();
    assert_eq!(sync.listen, "");

    // A configuration built in code reads its in-memory tables.
    let mut built = Config::default();
    built
        .auth
        .insert("listen".into(), toml::Value::String("[::1]:80".into()));
    let auth: AuthSection = built.section("auth").unwrap();
    assert_eq!(auth.listen, "[::1]:80");

    let text = "[auth]\nlisten = \"x\"\nshared_secret = \"hunter2hunter2\"\nlisetn = 1\n";
    let path = write(dir.path(), "s.toml", text, 0o600);
    let c = Config::load(&path).unwrap();
    let e = c.section::<AuthSection>("auth").unwrap_err();
    let m = e.to_string();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(m.contains(":4:") && m.contains("lisetn"), "{m}");
    assert!(!m.contains("hunter2"), "{m}");
}

#[test]
fn secrets_require_a_file_not_readable_by_everyone() {
    let cases = [
        (
            "[[directory]]\nname = \"smtp-01\"\nurl = \"postgresql://mail:Pa55w0rdXY@smtp-01/mail\"\n",
            "Pa55w0rdXY",
            "[[directory]] \"smtp-01\"",
        ),
        (
            "[[directory]]\nname = \"s\"\nurl = \"host=db user=mail password='Pa55 w0rdXY'\"\n",
            "Pa55 w0rdXY",
            "[[directory]] \"s\"",
        ),
        (
            "[auth]\nshared_secret = \"Pa55w0rdXY\"\n",
            "Pa55w0rdXY",
            "auth.shared_secret",
        ),
        (
            "[sync]\n[sync.remote]\npassword = \"Pa55w0rdXY\"\n",
            "Pa55w0rdXY",
            "sync.remote.password",
        ),
    ];
    for (text, secret, place) in cases {
        for mode in [0o644, 0o604] {
            let (path, e, _d) = load_err(text, mode);
            let m = e.to_string();
            assert_eq!(e.kind(), ErrorKind::Config, "{m}");
            assert!(!m.contains(secret), "secret leaked: {m}");
            assert!(m.contains(place), "{m}");
            assert!(m.contains(&format!("chmod 640 {}", path.display())), "{m}");
            assert!(m.contains("chgrp"), "{m}");
        }
        // Group-readable is the intended mode.
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "m.toml", text, 0o640);
        let c = Config::load(&path).unwrap();
        assert_eq!(c.secrets().len(), 1);
    }
    // No secret: world-readable is fine; world-writable never.
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "m.toml", "node = \"a.b\"\n", 0o644);
    Config::load(&path).unwrap();
    let path = write(dir.path(), "w.toml", "node = \"a.b\"\n", 0o646);
    let e = Config::load(&path).unwrap_err();
    assert!(e.to_string().contains("writable by everyone"), "{e}");
}

#[test]
fn errors_in_a_file_with_secrets_never_show_them() {
    // A type error on the line of a secret: serde would quote the value.
    let text = "[[directory]]\nname = \"a\"\nurl = \"postgresql://u:Zz9SecretValue@h/db\"\nrole = \"Zz9SecretValue\"\n";
    let (_, e, _d) = load_err(text, 0o600);
    let m = e.to_string();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(m.contains(":4:"), "{m}");
    assert!(!m.contains("Zz9SecretValue"), "{m}");
}

#[test]
fn node_name_defaults_to_the_host_name() {
    let c = Config::default();
    let host = hostname::get()
        .unwrap()
        .to_string_lossy()
        .to_ascii_lowercase();
    assert_eq!(c.node_name().unwrap(), host.trim_end_matches('.'));
}

#[test]
fn open_directory_without_any_is_a_config_error() {
    let c = Config::default();
    let e = c.open_directory().err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("--db"), "{e}");
    assert!(e.to_string().contains("[[directory]]"), "{e}");
}

#[test]
fn config_path_precedence() {
    // The only test in this binary that touches the environment.
    let dir = tempfile::tempdir().unwrap();
    let env_file = write(dir.path(), "env.toml", "node = \"env.example\"\n", 0o644);
    let arg_file = write(dir.path(), "arg.toml", "node = \"arg.example\"\n", 0o644);
    std::env::set_var(mailcluster::config::CONFIG_ENV, &env_file);
    let by_env = CommonArgs::default();
    assert_eq!(by_env.load().unwrap().node_name().unwrap(), "env.example");
    let by_arg = CommonArgs {
        config: Some(arg_file.clone()),
        db: None,
    };
    assert_eq!(by_arg.load().unwrap().node_name().unwrap(), "arg.example");
    // --db replaces the configured directories with one storage directory.
    let with_db = CommonArgs {
        config: Some(arg_file),
        db: Some("sqlite:/tmp/x.sqlite".to_string()),
    };
    let c = with_db.load().unwrap();
    assert_eq!(c.directories.len(), 1);
    assert_eq!(c.directories[0].url, "sqlite:/tmp/x.sqlite");
    assert_eq!(c.directories[0].role, Role::Storage);
    // An explicitly named file that is missing is an error, even with --db.
    std::env::set_var(
        mailcluster::config::CONFIG_ENV,
        dir.path().join("missing.toml"),
    );
    let e = CommonArgs {
        config: None,
        db: Some("sqlite:/tmp/x.sqlite".to_string()),
    }
    .load()
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    std::env::remove_var(mailcluster::config::CONFIG_ENV);
}

#[test]
fn the_example_file_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mailcluster.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = Config::parse(&text, &path).unwrap();
    assert_eq!(c.node.as_deref(), Some("storage-01.domain.ru"));
    assert_eq!(c.directories.len(), 2);
    assert!(c.secrets().is_empty());
    let d = Config::default();
    assert_eq!(c.mail.home, d.mail.home);
    assert_eq!(c.mail.maildir, d.mail.maildir);
    assert_eq!(c.mail.root, d.mail.root);
    assert_eq!((c.mail.uid, c.mail.gid), (d.mail.uid, d.mail.gid));
    assert_eq!(c.db_timeout(), d.db_timeout());
}

#[test]
fn the_other_example_files_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for (name, dirs, role) in [
        ("smtp-node.toml", 1, Role::Smtp),
        ("proxy.toml", 2, Role::Storage),
    ] {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let c = Config::parse(&text, &path).unwrap();
        assert_eq!(c.directories.len(), dirs, "{name}");
        assert!(c.directories.iter().all(|d| d.role == role), "{name}");
        assert!(c.secrets().is_empty(), "{name}");
    }
}
