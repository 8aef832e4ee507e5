//! mailauth: password schemes, Dovecot checkpassword (passdb + userdb), user iteration,
//! and the auth daemon (`serve`: nginx auth_http, the JSON API, metrics).
//! The library does the work (`mailcluster::auth`); this file parses arguments and maps
//! results to exit codes.

use clap::{Args, Parser, Subcommand};
use mailcluster::auth::authenticator::{AuthContext, Authenticator};
use mailcluster::auth::checkpassword::{self, Action, EXIT_TEMPFAIL};
use mailcluster::auth::{iterate, scheme};
use mailcluster::cli::CommonArgs;
use mailcluster::error::{Error, Result};
use mailcluster::logging::{self, LogTarget};
use std::ffi::OsString;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

const PROG: &str = "mailauth";

/// The auth daemon allocates a few dozen small blocks per request on each of its request
/// threads; mimalloc keeps a heap per thread, where glibc's malloc shares a few locked
/// arenas between threads (a sixth of the daemon's CPU, and lock waits, in
/// `bench/http/run.sh PERF=1` profiles).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mailauth (mailcluster): Dovecot password schemes, checkpassword passdb/userdb, user lists.
#[derive(Parser)]
#[command(name = "mailauth", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Log debug messages.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Dovecot 2.3 checkpassword passdb/userdb: reads `user\0password\0\0` on fd 3 and execs
    /// the reply program (the last argument) on success. Exit 1 = login failed, 3 = unknown
    /// user (lookup), 111 = temporary failure.
    Checkpassword(CheckpasswordArgs),
    /// Read a password on stdin (never argv) and print its stored form `{SCHEME}...`.
    Hash(HashArgs),
    /// Print every user (`mailbox@domain`), one per line.
    Users,
    /// Write every user as a Dovecot passwd-file (no passwords) for an iteration-only userdb
    /// (`doveadm ... -A`). Atomic replace.
    PasswdFile(PasswdFileArgs),
    /// Run the auth daemon: nginx auth_http (/auth), the JSON API for checkpassword and
    /// Dovecot's Lua passdb/userdb (/passdb, /userdb, /users) and /metrics.
    Serve(mailcluster::auth::http::ServeArgs),
}

#[derive(Args)]
struct CheckpasswordArgs {
    /// The reply program Dovecot appends (/usr/lib/dovecot/checkpassword-reply); only the
    /// last argument is used.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "REPLY"
    )]
    reply: Vec<OsString>,
}

#[derive(Args)]
struct HashArgs {
    /// Scheme of the stored form (Dovecot's names).
    #[arg(short, long, default_value = "SHA512-CRYPT")]
    scheme: String,
    /// Also verify the password against this stored value read from the environment
    /// variable MAILAUTH_STORED instead of hashing (exit 0 = match, 1 = mismatch).
    #[arg(long)]
    verify: bool,
    /// Benchmark: hash the password with the scheme, then verify it N times and print
    /// `SCHEME<TAB>stored length<TAB>microseconds per verify`.
    #[arg(long, value_name = "N")]
    bench: Option<u32>,
}

#[derive(Args)]
struct PasswdFileArgs {
    /// Where to write the file (replaced atomically).
    #[arg(short, long)]
    output: PathBuf,
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    let is_checkpassword = args.iter().skip(1).any(|a| a == "checkpassword");
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) if is_checkpassword => {
            // Dovecot treats anything but 1/3/111 oddly: bad usage is a temporary failure.
            eprintln!("{PROG}: {e}");
            std::process::exit(EXIT_TEMPFAIL);
        }
        Err(e) => {
            let code = mailcluster::cli::usage_exit_code(&e);
            let _ = e.print();
            std::process::exit(code)
        }
    };
    match &cli.command {
        Command::Checkpassword(a) => {
            // stderr ends up in Dovecot's log (as errors): warnings and worse only.
            logging::init(PROG, LogTarget::Stderr, cli.verbose);
            if !cli.verbose {
                log::set_max_level(log::LevelFilter::Warn);
            }
            let code = run_checkpassword(&cli.common, a);
            std::process::exit(code);
        }
        Command::Hash(a) => {
            logging::init(PROG, LogTarget::Stderr, cli.verbose);
            mailcluster::cli::exit(PROG, run_hash(a))
        }
        Command::Users => {
            logging::init(PROG, LogTarget::Auto, cli.verbose);
            mailcluster::cli::exit(PROG, run_users(&cli.common))
        }
        Command::PasswdFile(a) => {
            logging::init(PROG, LogTarget::Auto, cli.verbose);
            mailcluster::cli::exit(PROG, run_passwd_file(&cli.common, a))
        }
        Command::Serve(a) => {
            logging::init_daemon(PROG, a.log_target(), cli.verbose);
            let result = mailcluster::cli::exit_on_stop_signals(PROG)
                .and_then(|()| cli.common.load())
                .and_then(|config| mailcluster::auth::http::serve(&config, a))
                .map(|()| 0);
            mailcluster::cli::exit(PROG, result)
        }
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

/// Returns an exit code, or does not return (exec).
fn run_checkpassword(common: &CommonArgs, args: &CheckpasswordArgs) -> i32 {
    let (reply, mode) = match checkpassword::invocation(&args.reply) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let raw = match checkpassword::read_fd(3, Duration::from_secs(5)) {
        Ok(r) => r,
        Err(e) => {
            log::error!("checkpassword: {e}");
            return EXIT_TEMPFAIL;
        }
    };
    let req = match checkpassword::parse_request(&raw) {
        Ok(r) => r,
        Err(why) => {
            log::warn!("checkpassword: {why}");
            return mode.refusal_code();
        }
    };
    drop(raw);
    let config = match common.load() {
        Ok(c) => c,
        Err(e) => {
            log::error!("checkpassword: {e}");
            return EXIT_TEMPFAIL;
        }
    };
    let ctx = AuthContext {
        service: env("SERVICE"),
        remote_ip: env("TCPREMOTEIP"),
        local_ip: env("TCPLOCALIP"),
    };
    let result = checkpassword::answer(config, mode, &req, &ctx);
    match checkpassword::action(mode, &req.user, result) {
        Action::Exit(code) => code,
        Action::Exec(vars) => checkpassword::finish(reply, mode, vars),
    }
}

/// Read a password from stdin: one line (without its line end), at most 1024 bytes.
/// On a terminal, prompt on stderr and turn echo off.
fn read_password() -> Result<Vec<u8>> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    #[cfg(unix)]
    let saved = if tty {
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
        // SAFETY: termios calls on fd 0 with a zeroed, then filled, struct.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) == 0 {
                let old = t;
                t.c_lflag &= !libc::ECHO;
                libc::tcsetattr(0, libc::TCSANOW, &t);
                Some(old)
            } else {
                None
            }
        }
    } else {
        None
    };
    let mut buf = Vec::new();
    let r = stdin
        .lock()
        .take(scheme::MAX_PASSWORD_LEN as u64 + 2)
        .read_to_end(&mut buf);
    #[cfg(unix)]
    if let Some(old) = saved {
        // SAFETY: restoring the attributes read above.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &old);
        }
        eprintln!();
    }
    r.map_err(|e| Error::io("reading the password from stdin", e))?;
    if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
        buf.truncate(pos);
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    if buf.len() > scheme::MAX_PASSWORD_LEN {
        return Err(Error::bad_input("password longer than 1024 bytes"));
    }
    if buf.is_empty() {
        return Err(Error::bad_input("empty password on stdin"));
    }
    Ok(buf)
}

fn run_hash(args: &HashArgs) -> Result<i32> {
    let s: scheme::Scheme = args
        .scheme
        .parse()
        .map_err(|e: scheme::SchemeError| Error::bad_input(e.to_string()))?;
    let mut password = read_password()?;
    if args.verify {
        let stored = std::env::var("MAILAUTH_STORED")
            .map_err(|_| Error::bad_input("--verify needs MAILAUTH_STORED"))?;
        let r = scheme::verify(&password, &stored, s);
        password.fill(0);
        return match r {
            Ok(true) => Ok(0),
            Ok(false) => Err(Error::denied("password mismatch")),
            Err(e) => Err(Error::denied(e.to_string())),
        };
    }
    if let Some(n) = args.bench {
        let stored = scheme::generate(&password, s).map_err(|e| Error::internal(e.to_string()))?;
        let n = n.max(1);
        let start = std::time::Instant::now();
        for _ in 0..n {
            if scheme::verify(&password, &stored, s) != Ok(true) {
                return Err(Error::internal("benchmark: verify failed"));
            }
        }
        let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        password.fill(0);
        println!("{s}\t{}\t{us:.1}", stored.len());
        return Ok(0);
    }
    let stored = scheme::generate(&password, s);
    password.fill(0);
    let stored = stored.map_err(|e| Error::internal(e.to_string()))?;
    println!("{stored}");
    Ok(0)
}

fn run_users(common: &CommonArgs) -> Result<i32> {
    let auth = Authenticator::new(common.load()?)?;
    let users = auth.users()?;
    let mut out = std::io::stdout().lock();
    for u in users {
        writeln!(out, "{}", u.user).map_err(|e| Error::io("stdout", e))?;
    }
    Ok(0)
}

fn run_passwd_file(common: &CommonArgs, args: &PasswdFileArgs) -> Result<i32> {
    let auth = Authenticator::new(common.load()?)?;
    let users = auth.users()?;
    let text = iterate::passwd_file(&users)?;
    iterate::write_atomic(&args.output, text.as_bytes())?;
    log::info!("wrote {} users to {}", users.len(), args.output.display());
    Ok(0)
}
