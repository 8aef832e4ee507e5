use clap::{Parser, Subcommand};
use mailcluster::cli::{self, CommonArgs};
use mailcluster::logging::{self, LogTarget};

/// mailauth (mailcluster)
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the auth daemon: nginx auth_http (/auth), the JSON API for Dovecot's Lua
    /// passdb/userdb (/passdb, /userdb, /users) and /metrics
    Serve(mailcluster::auth::http::ServeArgs),
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let target = match args.log.as_str() {
                "stderr" => LogTarget::Stderr,
                "syslog" => LogTarget::Syslog,
                _ => LogTarget::Auto,
            };
            logging::init("mailauth", target, false);
            let result = cli
                .common
                .load()
                .and_then(|config| mailcluster::auth::http::serve(&config, &args))
                .map(|()| 0);
            cli::exit("mailauth", result)
        }
    }
}
