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
