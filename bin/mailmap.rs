//! mailmap: the lookups Exim calls, and the socket daemon with its cache.
//!
//! Prints only the answer on stdout. Exit codes: 0 found, 1 not found, 64 usage,
//! 75 temporary failure, 78 configuration error. Diagnostics go to stderr only on a
//! terminal or with --verbose; otherwise to syslog (Exim's `${run}` captures stderr).
use clap::{Parser, Subcommand};
use mailcluster::cli::CommonArgs;
use mailcluster::error::{exit, Error, Result};
use mailcluster::logging::{self, LogTarget};
use mailcluster::lookup::serve::{self, Endpoint, Server};
use mailcluster::lookup::{self, MapConfig, Query, Resolver};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

/// mailmap (mailcluster): domain, route and recipient lookups for Exim.
#[derive(Parser)]
#[command(name = "mailmap", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Log to stderr at debug level.
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print DOMAIN if it is active and this node (or --node) is its primary.
    LocalDomain {
        domain: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Print DOMAIN if it is active and this node (or --node) is its backup, not its primary.
    BackupDomain {
        domain: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Print the host list "primary : backup" of an active domain (ldomain or co_domain).
    Route { domain: String },
    /// Print the mailbox address if the recipient's mailbox and domain are active.
    Recipient { address: String },
    /// Print the host list of the recipient's domain, only if the recipient exists.
    RcptRoute { address: String },
    /// On a storage that is the domain's backup: print the primary, if the recipient exists.
    BackupRoute {
        address: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Print the mailbox's home directory.
    Home { address: String },
    /// Print the mailbox's Maildir.
    Maildir { address: String },
    /// List active domains (all, or those whose primary is --node), one per line.
    Domains {
        #[arg(long)]
        node: Option<String>,
    },
    /// Answer the same questions over a unix socket (or loopback TCP) with a cache.
    Serve {
        /// Unix socket path [default: [map] socket, else /var/run/mailmap/mailmap.sock].
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Listen on a loopback TCP address instead, e.g. 127.0.0.1:7025.
        #[arg(long, value_name = "IP:PORT", conflicts_with = "socket")]
        listen: Option<String>,
    },
    /// Send one request line to a running `serve` and print its answer (for scripts/tests).
    Ask {
        /// The request, e.g. `route branch.domain.ru`.
        request: Vec<String>,
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        #[arg(long, value_name = "IP:PORT", conflicts_with = "socket")]
        listen: Option<String>,
    },
}

fn interactive(verbose: bool) -> bool {
    verbose || std::io::stderr().is_terminal()
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind as K;
            let code = match e.kind() {
                K::DisplayHelp
                | K::DisplayVersion
                | K::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    0
                }
                _ => {
                    if std::io::stderr().is_terminal() {
                        let _ = e.print();
                    } else {
                        logging::init("mailmap", LogTarget::Syslog, false);
                        log::error!("usage: {}", e.to_string().lines().next().unwrap_or(""));
                    }
                    exit::USAGE
                }
            };
            std::process::exit(code);
        }
    };
    let verbose = cli.verbose;
    logging::init(
        "mailmap",
        if verbose {
            LogTarget::Stderr
        } else {
            LogTarget::Auto
        },
        verbose,
    );
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if interactive(verbose) {
                eprintln!("mailmap: {e}");
            } else if e.is_temporary() {
                log::warn!("{e}");
            } else {
                log::error!("{e}");
            }
            e.exit_code()
        }
    };
    std::process::exit(code);
}

fn print(answer: Option<String>) -> Result<i32> {
    match answer {
        Some(a) => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{a}")
                .and_then(|_| out.flush())
                .map_err(|e| Error::io("writing the answer", e))?;
            Ok(exit::OK)
        }
        None => Ok(exit::NOT_FOUND),
    }
}

fn run(cli: Cli) -> Result<i32> {
    let query = match cli.command {
        Command::LocalDomain { domain, node } => Query::LocalDomain { domain, node },
        Command::BackupDomain { domain, node } => Query::BackupDomain { domain, node },
        Command::Route { domain } => Query::Route { domain },
        Command::Recipient { address } => Query::Recipient { address },
        Command::RcptRoute { address } => Query::RcptRoute { address },
        Command::BackupRoute { address, node } => Query::BackupRoute { address, node },
        Command::Home { address } => Query::Home { address },
        Command::Maildir { address } => Query::Maildir { address },
        Command::Domains { node } => {
            let config = cli.common.load()?;
            let map: MapConfig = config.section("map")?;
            let resolver = Resolver::from_config(&config, &map)?;
            let mut dir = config.open_directory()?;
            let list = resolver.domains(dir.as_mut(), node.as_deref())?;
            let mut out = std::io::stdout().lock();
            for d in &list {
                writeln!(out, "{d}").map_err(|e| Error::io("writing the list", e))?;
            }
            out.flush().map_err(|e| Error::io("writing the list", e))?;
            return Ok(exit::OK);
        }
        Command::Serve { socket, listen } => {
            let config = cli.common.load()?;
            let map: MapConfig = config.section("map")?;
            let endpoint = Endpoint::choose(socket, listen, &map)?;
            let common = cli.common.clone();
            let server = Server::bind(config, &endpoint, Box::new(move || common.load()))?;
            server.install_signal_handlers()?;
            server.run()?;
            return Ok(exit::OK);
        }
        Command::Ask {
            request,
            socket,
            listen,
        } => {
            let map: MapConfig = match cli.common.load() {
                Ok(c) => c.section("map")?,
                Err(_) => MapConfig::default(),
            };
            let endpoint = Endpoint::choose(socket, listen, &map)?;
            let line = request.join(" ");
            let answer = serve::ask(&endpoint, &line, Duration::from_secs(10))?;
            return match answer {
                serve::Response::Ok(v) => print(Some(v)),
                serve::Response::NotFound => Ok(exit::NOT_FOUND),
                serve::Response::TempFail(r) => Err(Error::temporary(format!("server: {r}"))),
                serve::Response::Error(r) => Err(Error::bad_input(format!("server: {r}"))),
            };
        }
    };
    let config = cli.common.load()?;
    let map: MapConfig = config.section("map")?;
    let resolver = Resolver::from_config(&config, &map)?;
    print(lookup::lookup_once(&config, &resolver, &query)?)
}
