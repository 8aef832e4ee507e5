//! mailauth-checkpassword: the small Dovecot checkpassword client of `mailauth serve`.
//!
//! Dovecot forks and execs a checkpassword program for every login, so its start-up cost is
//! paid per login. This binary links no database, TLS or async code (no libssl/libcrypto
//! to load and relocate) and parses its two options by hand instead of building a clap
//! parser: it reads fd 3, asks the daemon over its unix socket and answers on fd 4.
//! Without a daemon it hands over to `mailauth checkpassword`
//! (`mailcluster::auth::checkpassword::client_main`).

use mailcluster::auth::checkpassword::{self, ClientCommand, EXIT_TEMPFAIL};
use mailcluster::logging::{self, LogTarget};

const PROG: &str = "mailauth-checkpassword";

fn main() {
    let cmd = match checkpassword::parse_client_args(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            // Dovecot treats anything but 1/3/111 oddly: bad usage is a temporary failure.
            eprintln!("{PROG}: {e}\n\n{}", checkpassword::CLIENT_USAGE);
            std::process::exit(EXIT_TEMPFAIL);
        }
    };
    let args = match cmd {
        ClientCommand::Help => {
            print!("{}", checkpassword::CLIENT_USAGE);
            return;
        }
        ClientCommand::Version => {
            println!("{PROG} {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        ClientCommand::Run(a) => a,
    };
    // stderr ends up in Dovecot's log (as errors): warnings and worse only.
    logging::init(PROG, LogTarget::Stderr, args.verbose);
    if !args.verbose {
        log::set_max_level(log::LevelFilter::Warn);
    }
    std::process::exit(checkpassword::client_main(&args));
}
