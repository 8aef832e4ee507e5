//! mailctl: administration of the mailcluster directory.
use clap::{Parser, Subcommand, ValueEnum};
use mailcluster::cli::{self, CommonArgs};
use mailcluster::config::Role;
use mailcluster::directory::schema;
use mailcluster::error::{exit, Error, Result};
use mailcluster::logging::{self, LogTarget};

/// mailctl (mailcluster): administration of the directory databases.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// Log debug details to stderr.
    #[arg(short, long, global = true)]
    verbose: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or check the directory tables (mail, ldomain, mdomain, maps, co_domain, co_maps).
    Schema {
        #[command(subcommand)]
        action: SchemaAction,
    },
}

#[derive(Subcommand)]
enum SchemaAction {
    /// Create the tables and indexes that are missing (idempotent; creates a missing
    /// SQLite file). Without --db: every configured directory, each with its role.
    Init {
        /// Role of the database (storage: full tables; smtp: mail without password).
        /// Default: storage for --db, the configured role otherwise.
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
    },
    /// Say whether the database has every table and column the toolkit needs.
    /// Exit 0 when it does, 78 naming what is missing otherwise, 75 when unreachable.
    Check {
        /// Role of the database (see `schema init`).
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Storage,
    Smtp,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Storage => Role::Storage,
            RoleArg::Smtp => Role::Smtp,
        }
    }
}

/// (name, url, role) of each directory to work on.
type Targets = Vec<(String, String, Role)>;

fn targets(common: &CommonArgs, role: Option<RoleArg>) -> Result<(Targets, std::time::Duration)> {
    let config = common.load()?;
    let timeout = config.db_timeout();
    let dirs: Targets = config
        .directories
        .iter()
        .map(|d| {
            (
                d.name.clone(),
                d.url.clone(),
                role.map_or(d.role, Role::from),
            )
        })
        .collect();
    if dirs.is_empty() {
        return Err(Error::config(
            "no directory: give --db URL or [[directory]] entries in the configuration",
        ));
    }
    Ok((dirs, timeout))
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Schema { action } => match action {
            SchemaAction::Init { role } => {
                let (dirs, timeout) = targets(&cli.common, role)?;
                for (name, url, role) in dirs {
                    schema::init_with_timeout(&url, role, timeout)
                        .map_err(|e| e.context(format!("directory {name}")))?;
                    println!("{name}: schema ok ({} role)", role_name(role));
                }
                Ok(exit::OK)
            }
            SchemaAction::Check { role } => {
                let (dirs, timeout) = targets(&cli.common, role)?;
                let mut code = exit::OK;
                for (name, url, role) in dirs {
                    let report = schema::check_with_timeout(&url, role, timeout)
                        .map_err(|e| e.context(format!("directory {name}")))?;
                    for line in report.to_string().lines() {
                        println!("{name}: {line}");
                    }
                    if !report.is_ok() {
                        code = exit::CONFIG;
                    }
                }
                Ok(code)
            }
        },
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Storage => "storage",
        Role::Smtp => "smtp",
    }
}

fn main() {
    let cli: Cli = cli::parse();
    logging::init("mailctl", LogTarget::Stderr, cli.verbose);
    cli::exit("mailctl", run(cli))
}
