//! Shared command-line plumbing: `--config` / `--db` handling and exit-code mapping.
//! Every binary parses with [`parse`] (usage errors exit 64), flattens [`CommonArgs`] into
//! its clap parser, calls [`CommonArgs::load`], and ends with [`exit`].

use crate::config::{default_config_path, Config, DirectoryConfig, Role, CONFIG_ENV};
use crate::directory::Directory;
use crate::error::{Error, Result};
use std::path::PathBuf;

/// Options every binary accepts.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// Configuration file [default: $MAILCLUSTER_CONFIG, else /etc/mailcluster/mailcluster.toml,
    /// /usr/local/etc/mailcluster/mailcluster.toml on FreeBSD]
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,

    /// Directory connection string, replacing the configured directories: sqlite:PATH,
    /// postgresql://..., or libpq "host=/run/postgresql dbname=mail user=mail"
    #[arg(long, value_name = "URL", global = true)]
    pub db: Option<String>,
}

impl CommonArgs {
    /// The configuration file to read: `--config`, else `$MAILCLUSTER_CONFIG`, else the
    /// system path. Returns (path, explicitly given).
    pub fn config_path(&self) -> (PathBuf, bool) {
        if let Some(p) = &self.config {
            return (p.clone(), true);
        }
        if let Some(p) = std::env::var_os(CONFIG_ENV) {
            if !p.is_empty() {
                return (PathBuf::from(p), true);
            }
        }
        (default_config_path(), false)
    }

    /// Load the configuration. A missing system file is fine when `--db` is given (built-in
    /// defaults are used); a missing file named explicitly is a configuration error.
    pub fn load(&self) -> Result<Config> {
        let (path, explicit) = self.config_path();
        let mut config = if !explicit && self.db.is_some() && !path.exists() {
            Config::default()
        } else {
            Config::load(&path)?
        };
        if let Some(url) = &self.db {
            if crate::config::url_password(url).is_some() {
                log::warn!(
                    "a password in --db is visible to every user in the process list: put the \
                     directory in the configuration file (mode 640) instead"
                );
            }
            config.directories = vec![DirectoryConfig {
                name: "cli".to_string(),
                url: url.clone(),
                role: Role::Storage,
            }];
        }
        Ok(config)
    }

    /// Load the configuration and open the first reachable directory.
    pub fn open(&self) -> Result<(Config, Box<dyn Directory>)> {
        let config = self.load()?;
        let directory = config.open_directory()?;
        Ok((config, directory))
    }
}

/// Parse the command line like `P::parse()`, but with the toolkit's exit codes: `--help`
/// and `--version` exit 0, a usage error exits 64 (EX_USAGE; clap's own code is 2).
pub fn parse<P: clap::Parser>() -> P {
    match P::try_parse() {
        Ok(p) => p,
        Err(e) => {
            let code = usage_exit_code(&e);
            let _ = e.print();
            std::process::exit(code)
        }
    }
}

/// The exit code for a clap error: 0 for `--help` / `--version`, else 64.
pub fn usage_exit_code(e: &clap::Error) -> i32 {
    use clap::error::ErrorKind as K;
    match e.kind() {
        K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand => {
            crate::error::exit::OK
        }
        _ => crate::error::exit::USAGE,
    }
}

/// Print an error the way a Unix tool does (`prog: message`) and return its exit code.
/// When logging goes to syslog the error is logged there too (stderr may be discarded).
pub fn report(prog: &str, err: &Error) -> i32 {
    if crate::logging::is_syslog() {
        log::error!("{err}");
    }
    eprintln!("{prog}: {err}");
    err.exit_code()
}

/// Exit the process with the code of `result` (Ok(code) or the error's code, reported).
/// Standard output is flushed first.
pub fn exit(prog: &str, result: Result<i32>) -> ! {
    let code = match result {
        Ok(code) => code,
        Err(err) => report(prog, &err),
    };
    let _ = std::io::Write::flush(&mut std::io::stdout());
    log::logger().flush();
    std::process::exit(code)
}

/// For a daemon that runs until it is stopped: on SIGTERM or SIGINT, log it, write out
/// the log records still queued ([`crate::logging::init_daemon`]) and exit 0.
pub fn exit_on_stop_signals(prog: &'static str) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| Error::io("installing the SIGTERM/SIGINT handler", e))?;
    std::thread::Builder::new()
        .name("stop-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                log::info!("{prog}: stopping on {name}");
                log::logger().flush();
                std::process::exit(0);
            }
        })
        .map(drop)
        .map_err(|e| Error::io("starting the signal thread", e))
}

/// Print `text` and a newline on stdout. A reader that went away (`mailsync --json | head`)
/// is not an error: the work is done and nobody wants the rest.
pub fn print_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(text.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::io("writing to standard output", e))
        }
        _ => Ok(()),
    }
}
