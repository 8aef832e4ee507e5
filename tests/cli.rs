//! The command-line plumbing every binary shares: `--config` / `--db` as global options,
//! and the exit-code mapping.
mod support;

use clap::Parser;
use mailcluster::cli::{report, CommonArgs};
use mailcluster::Error;
use std::path::Path;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(clap::Subcommand)]
enum Cmd {
    Route { domain: mailcluster::names::Domain },
}

#[test]
fn common_options_are_global() {
    let cli = Cli::try_parse_from([
        "x",
        "route",
        "Branch.Domain.RU",
        "--config",
        "/etc/m.toml",
        "--db",
        "sqlite:/tmp/d.sqlite",
    ])
    .unwrap();
    assert_eq!(cli.common.config.as_deref(), Some(Path::new("/etc/m.toml")));
    assert_eq!(cli.common.db.as_deref(), Some("sqlite:/tmp/d.sqlite"));
    let Some(Cmd::Route { domain }) = cli.cmd else {
        panic!("no subcommand")
    };
    assert_eq!(domain.as_str(), "branch.domain.ru");
    // A hostile name is refused by clap with the name's own message.
    let err = Cli::try_parse_from(["x", "route", "a'b.ru"]).err().unwrap();
    assert!(err.to_string().contains("invalid domain"), "{err}");
}

#[test]
fn usage_errors_exit_64_and_help_0() {
    use mailcluster::cli::usage_exit_code;
    let e = Cli::try_parse_from(["x", "--bogus"]).err().unwrap();
    assert_eq!(usage_exit_code(&e), 64);
    let e = Cli::try_parse_from(["x", "route"]).err().unwrap();
    assert_eq!(usage_exit_code(&e), 64);
    let e = Cli::try_parse_from(["x", "--help"]).err().unwrap();
    assert_eq!(usage_exit_code(&e), 0);
}

#[test]
fn report_maps_kinds_to_exit_codes() {
    assert_eq!(report("test", &Error::not_found("no such domain")), 1);
    assert_eq!(report("test", &Error::bad_input("bad")), 64);
    assert_eq!(report("test", &Error::temporary("database down")), 75);
    assert_eq!(report("test", &Error::config("bad file")), 78);
}

#[test]
fn load_with_db_and_no_system_file_uses_defaults() {
    // CI and developer machines have no system configuration file.
    let system = mailcluster::config::default_config_path();
    assert!(
        !system.exists(),
        "this test expects no {}",
        system.display()
    );
    assert!(std::env::var_os(mailcluster::config::CONFIG_ENV).is_none());
    let c = CommonArgs {
        config: None,
        db: Some("sqlite:/nonexistent/x.sqlite".to_string()),
    }
    .load()
    .unwrap();
    assert_eq!(c.directories.len(), 1);
    assert_eq!(c.mail.root, Path::new("/usr/mail"));
    let e = CommonArgs::default().load().unwrap_err();
    assert_eq!(e.kind(), mailcluster::ErrorKind::Config);
    assert!(e.to_string().contains("--config"), "{e}");
}

/// Run the real `mailctl` with a clean environment plus `env`.
fn mailctl(args: &[&str], env: &[(&str, &Path)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mailctl"));
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_mode(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn the_binaries_read_config_then_env_then_system_path() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let conf = |name: &str| {
        let path = dir.join(format!("{name}.toml"));
        let text = format!(
            "[[directory]]\nname = \"{name}\"\nurl = \"sqlite:{}\"\n",
            dir.join(format!("{name}.sqlite")).display()
        );
        write_mode(&path, &text, 0o644);
        path
    };
    let (env_conf, arg_conf) = (conf("env"), conf("arg"));
    let env = [("MAILCLUSTER_CONFIG", env_conf.as_path())];

    let (code, out, err) = mailctl(&["schema", "init"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(dir.join("env.sqlite").exists());
    assert!(!dir.join("arg.sqlite").exists());

    let arg = arg_conf.to_str().unwrap();
    let (code, out, err) = mailctl(&["schema", "init", "--config", arg], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(dir.join("arg.sqlite").exists());

    // --db replaces the configured directories.
    let db = format!("sqlite:{}", dir.join("db.sqlite").display());
    let (code, out, err) = mailctl(&["schema", "init", "--config", arg, "--db", &db], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(dir.join("db.sqlite").exists());
}

#[test]
fn the_binaries_exit_78_on_bad_files_without_showing_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    write_mode(&bad, "node = \"a.b\"\nnode_name = \"x\"\n", 0o644);
    let (code, _, err) = mailctl(&["schema", "check", "--config", bad.to_str().unwrap()], &[]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains(&format!("{}:2:", bad.display())), "{err}");
    assert!(err.contains("node_name"), "{err}");

    let secret = tmp.path().join("secret.toml");
    write_mode(
        &secret,
        "[[directory]]\nname = \"pg\"\nurl = \"postgresql://mail:Zz9SecretPw@127.0.0.1:1/mail\"\n",
        0o644,
    );
    let (code, out, err) = mailctl(
        &["schema", "check", "--config", secret.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("chmod 640"), "{err}");
    assert!(
        !err.contains("Zz9SecretPw") && !out.contains("Zz9SecretPw"),
        "{err}"
    );

    // A missing file named explicitly is a configuration error too.
    let missing = tmp.path().join("missing.toml");
    let (code, _, err) = mailctl(&["schema", "check"], &[("MAILCLUSTER_CONFIG", &missing)]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("missing.toml"), "{err}");
}

#[test]
fn every_binary_has_help_and_version() {
    for (name, exe) in [
        ("mailmap", env!("CARGO_BIN_EXE_mailmap")),
        ("mailauth", env!("CARGO_BIN_EXE_mailauth")),
        ("mailsync", env!("CARGO_BIN_EXE_mailsync")),
        ("mailctl", env!("CARGO_BIN_EXE_mailctl")),
    ] {
        for arg in ["--help", "--version"] {
            let out = std::process::Command::new(exe)
                .arg(arg)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(0), "{name} {arg}: {stdout}");
            assert!(!stdout.trim().is_empty(), "{name} {arg}");
        }
        let out = std::process::Command::new(exe)
            .arg("--version")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    }
}
