//! mailsync: replicate each domain's Maildirs from its primary to its backup.
//!
//! `mailsync [LOCAL [REMOTE]]` keeps the seed's `mailrsync.pl local remote` call working;
//! `serve`, `status` and `promote` are subcommands.
use clap::{Args, Parser, Subcommand};
use mailcluster::cli::{self, CommonArgs};
use mailcluster::config::Config;
use mailcluster::directory::Directory;
use mailcluster::error::{Error, Result};
use mailcluster::logging::{self, LogTarget};
use mailcluster::names::{self, Domain, Strictness};
use mailcluster::sync::{self, scan::Filter, transport, Job, RunOptions, SyncConfig, Target};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Replicate Maildirs between the two storage nodes (primary -> backup), rename-aware,
/// with safe deletes, over SSH.
#[derive(Parser)]
#[command(
    name = "mailsync",
    version,
    about = "Replicate Maildirs from each domain's primary storage node to its backup \
             (rename-aware, safe deletes, over SSH)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct RunArgs {
    /// This node's name as in maps.storage1 [default: `node` from the configuration, else the
    /// host name]
    local: Option<String>,
    /// Destination: a host (over SSH) or an absolute path (a local directory)
    /// [default: each domain's backup node]
    remote: Option<String>,
    /// Local mail root [default: [mail] root]
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Mail root on the remote [default: the local root]
    #[arg(long, value_name = "DIR")]
    remote_root: Option<PathBuf>,
    /// Only this domain (repeatable) [default: every domain whose primary is this node]
    #[arg(long = "domain", value_name = "D")]
    domains: Vec<String>,
    /// Domains replicated in parallel (one connection each) [default: 3]
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Show what would be done; change nothing
    #[arg(long)]
    dry_run: bool,
    /// Copy messages that exist only on the remote (never synced) back here
    #[arg(long)]
    adopt: bool,
    /// zstd-compress the stream
    #[arg(long)]
    compress: bool,
    /// Bandwidth limit (bytes/s; suffix K, M, G; plain numbers are KiB/s)
    #[arg(long, value_name = "RATE")]
    bwlimit: Option<String>,
    /// SSH private key [default: [sync] identity, else ~/.ssh/id_ed25519]
    #[arg(short = 'i', long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// known_hosts file [default: [sync] known_hosts, else ~/.ssh/known_hosts]
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// SSH port [default: 22]
    #[arg(long, value_name = "N")]
    port: Option<u16>,
    /// SSH user [default: root]
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// Command run on the remote; `--root DIR` is appended [default: "mailsync serve"]
    #[arg(long, value_name = "CMD")]
    remote_command: Option<String>,
    /// Where the per-domain records live [default: ROOT/.mailsync]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Print one JSON object instead of the summary line
    #[arg(long)]
    json: bool,
    /// Show a progress bar (default when stderr is a terminal)
    #[arg(long, overrides_with = "no_progress")]
    progress: bool,
    /// Never show a progress bar
    #[arg(long)]
    no_progress: bool,
    /// Treat kept remote-only messages (conflicts) as failures
    #[arg(long)]
    strict: bool,
    /// Keep running: a round every SECS seconds (default 60) until SIGTERM/SIGINT. A round
    /// with nothing to do costs a stat per directory (cached listings), so short intervals
    /// are cheap; see the README for why this is a loop and not inotify.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "60")]
    watch: Option<u64>,
    /// Log debug messages
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// The receiving end (run by the sender over SSH, or as a child process)
    Serve {
        /// Mail root; nothing outside it is ever touched
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
        /// Where the receiver keeps its records [default: ROOT/.mailsync]
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// This node's name [default: `node` from the configuration, else the host name]
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        /// Do not check the directory (same-host mirrors only)
        #[arg(long)]
        no_fence: bool,
        /// How received files are made durable before they are renamed into place and
        /// recorded: `filesystem` (one syncfs per batch; Linux, the default there) or
        /// `file` (fsync each file and directory) [default: `fsync` in [sync]]
        #[arg(long, value_name = "MODE")]
        fsync: Option<String>,
    },
    /// Last run per domain, with the kept remote-only messages (conflicts)
    Status {
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// After an unplanned failover: raise the next UID of every dovecot-uidlist of the
    /// domains by a margin, so UIDs handed out by the lost primary are never reused
    Promote {
        #[arg(long = "domain", value_name = "D", required = true)]
        domains: Vec<String>,
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// UIDs to skip [default: [sync] promote_margin, else 100000]
        #[arg(long, value_name = "N")]
        margin: Option<u32>,
    },
}

fn load_config(common: &CommonArgs) -> Result<Config> {
    let (path, explicit) = common.config_path();
    if !explicit && common.db.is_none() && !path.exists() {
        return Ok(Config::default());
    }
    common.load()
}

fn node_name(given: Option<&str>, config: &Config) -> Result<String> {
    let raw = match given.or(config.node.as_deref()) {
        Some(n) => n.to_string(),
        None => hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .ok_or_else(|| Error::config("cannot tell this node's name; set `node`"))?,
    };
    names::parse_node_name(&raw, Strictness::Admin)
}

fn open_directory(config: &Config) -> Result<Option<Box<dyn Directory>>> {
    if config.directories.is_empty() {
        return Ok(None);
    }
    config.open_directory().map(Some)
}

fn home_file(name: &str) -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".ssh").join(name)
}

/// glibc gives each thread that allocates an arena of its own (up to 8 per core), and an
/// arena keeps what its thread freed: the sender's workers and their helpers (scans ahead,
/// record writers) left ~5 MB more resident with `--jobs 3` than two shared arenas do, and
/// no slower (BENCHMARKS.md, round 13). Other C libraries are left alone.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first in main, before any other thread exists; mallopt only sets a
    // tunable of the allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() {
    limit_malloc_arenas();
    let cli: Cli = cli::parse();
    let verbose = cli.run.verbose;
    let result = match cli.cmd {
        Some(Cmd::Serve {
            root,
            state_dir,
            node,
            no_fence,
            fsync,
        }) => {
            logging::init("mailsync", LogTarget::Auto, verbose);
            serve(&cli.common, root, state_dir, node, no_fence, fsync)
        }
        Some(Cmd::Status {
            root,
            state_dir,
            json,
        }) => {
            logging::init("mailsync", LogTarget::Stderr, verbose);
            status(&cli.common, root, state_dir, json)
        }
        Some(Cmd::Promote {
            domains,
            root,
            margin,
        }) => {
            logging::init("mailsync", LogTarget::Stderr, verbose);
            promote(&cli.common, domains, root, margin)
        }
        None => {
            logging::init("mailsync", LogTarget::Auto, verbose);
            run(&cli.common, cli.run)
        }
    };
    cli::exit("mailsync", result)
}

fn serve(
    common: &CommonArgs,
    root: PathBuf,
    state_dir: Option<PathBuf>,
    node: Option<String>,
    no_fence: bool,
    fsync: Option<String>,
) -> Result<i32> {
    let config = load_config(common)?;
    let node = node_name(node.as_deref(), &config)?;
    let sc: SyncConfig = config.section("sync")?;
    let sync = sync_mode(fsync.as_deref().or(sc.fsync.as_deref()))?;
    // The same records in both roles, so that a reversed direction finds them.
    let state_dir = state_dir
        .or(sc.state_dir)
        .unwrap_or_else(|| root.join(".mailsync"));
    let fence: Option<sync::server::Fence> = if no_fence || config.directories.is_empty() {
        None
    } else {
        let mut dir: Option<Box<dyn Directory>> = None;
        let node = node.clone();
        Some(Box::new(move |domain: &Domain| -> Result<()> {
            if dir.is_none() {
                dir = open_directory(&config)?;
            }
            let Some(d) = dir.as_mut() else {
                return Ok(());
            };
            if let Some(rec) = d.route(domain)? {
                if rec.primary == node {
                    return Err(Error::denied(format!(
                        "this node ({node}) is the primary of {domain} in its own directory; \
                         refusing to receive it (fencing)"
                    )));
                }
            }
            Ok(())
        }))
    };
    // Input read ahead (up to 8 MiB) so that sshd need not hold it (see ReadAhead).
    let input = sync::wire::ReadAhead::new(std::io::stdin(), 64 << 10, 128);
    let mut conn = sync::wire::Conn::new(input, std::io::stdout());
    sync::server::serve(
        &mut conn,
        sync::server::ServeOptions {
            root,
            state_dir,
            node,
            fence,
            sync,
        },
    )?;
    Ok(0)
}

/// The `fsync` setting (default: the best this system has).
fn sync_mode(setting: Option<&str>) -> Result<sync::SyncMode> {
    setting.map_or(Ok(sync::SyncMode::best()), sync::SyncMode::parse)
}

fn run(common: &CommonArgs, mut a: RunArgs) -> Result<i32> {
    // `mailsync /abs/path`: a single absolute path is the destination.
    if a.remote.is_none() && a.local.as_deref().is_some_and(|l| l.starts_with('/')) {
        a.remote = a.local.take();
    }
    let config = load_config(common)?;
    let sc: SyncConfig = config.section("sync")?;
    let node = node_name(a.local.as_deref(), &config)?;
    let root = a.root.clone().unwrap_or_else(|| config.mail.root.clone());
    let state_dir = a
        .state_dir
        .clone()
        .or_else(|| sc.state_dir.clone())
        .unwrap_or_else(|| root.join(".mailsync"));
    let jobs = a.jobs.or(sc.jobs).unwrap_or(sync::DEFAULT_JOBS);
    if jobs == 0 {
        return Err(Error::bad_input("--jobs must be at least 1"));
    }
    let bwlimit = match a.bwlimit.as_deref().or(sc.bwlimit.as_deref()) {
        Some(r) => sync::parse_rate(r)?,
        None => 0,
    };
    let target = a.remote.as_deref().map(|r| {
        if r.starts_with('/') {
            Target::Path(PathBuf::from(r))
        } else {
            Target::Host(r.to_string())
        }
    });
    if let Some(Target::Host(h)) = &target {
        names::parse_node_name(h, Strictness::Admin)
            .or_else(|_| {
                h.parse::<std::net::IpAddr>()
                    .map(|_| h.clone())
                    .map_err(|_| Error::bad_input(format!("bad remote host {h:?}")))
            })
            .map_err(|_| Error::bad_input(format!("bad remote host {h:?}")))?;
    }

    // One run per node pair.
    let pair_name = match &target {
        Some(t) => format!("{node}-{t}"),
        None => format!("{node}-backups"),
    };
    let _lock = sync::RunLock::acquire(&state_dir, &pair_name)?;
    let local_command = match a.remote_command.as_deref().or(sc.remote_command.as_deref()) {
        Some(c) if matches!(target, Some(Target::Path(_))) => {
            c.split_whitespace().map(str::to_string).collect()
        }
        _ => {
            let exe = std::env::current_exe()
                .map_err(|e| Error::io("cannot find the mailsync program", e))?;
            vec![
                exe.to_string_lossy().into_owned(),
                "serve".to_string(),
                "--no-fence".to_string(),
            ]
        }
    };
    let ssh = transport::SshOptions {
        port: a.port.or(sc.port).unwrap_or(22),
        user: a
            .user
            .clone()
            .or(sc.user.clone())
            .unwrap_or_else(|| "root".to_string()),
        identity: a
            .identity
            .clone()
            .or(sc.identity.clone())
            .unwrap_or_else(|| home_file("id_ed25519")),
        known_hosts: a
            .known_hosts
            .clone()
            .or(sc.known_hosts.clone())
            .unwrap_or_else(|| home_file("known_hosts")),
        command: a
            .remote_command
            .clone()
            .or(sc.remote_command.clone())
            .unwrap_or_else(|| "mailsync serve".to_string()),
        timeout: Duration::from_secs(sc.timeout.unwrap_or(30).clamp(1, 3600)),
    };
    let progress = if a.no_progress {
        false
    } else {
        a.progress || (std::io::stderr().is_terminal() && !a.json)
    };
    let opts = RunOptions {
        send: sync::SendOptions {
            root: root.clone(),
            state_dir,
            node,
            filter: Filter::new(sc.excludes.clone(), sc.index_files),
            dry_run: a.dry_run,
            adopt: a.adopt,
            sync: sync_mode(sc.fsync.as_deref())?,
        },
        jobs,
        compress: a.compress || sc.compress,
        bwlimit,
        local_command,
        ssh,
        remote_root: a
            .remote_root
            .clone()
            .or(sc.remote_root.clone())
            .unwrap_or(root),
        progress,
    };
    let stop = Arc::new(AtomicBool::new(false));
    if a.watch.is_some() {
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, Arc::clone(&stop))
                .map_err(|e| Error::io("cannot install a signal handler", e))?;
        }
    }
    loop {
        let code = match domain_jobs(&config, &a, &opts.send.node, &target) {
            Ok((jobs_list, refused)) => round(&a, &opts, jobs_list, refused),
            // In --watch mode a failing directory is retried next round.
            Err(e) if a.watch.is_some() => {
                eprintln!("mailsync: {}", e.message());
                Ok(mailcluster::error::exit::TEMPFAIL)
            }
            Err(e) => Err(e),
        }?;
        let Some(every) = a.watch else {
            return Ok(code);
        };
        // Sleep until the next round, waking for a stop signal.
        let until = std::time::Instant::now() + Duration::from_secs(every.max(1));
        while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(code);
        }
    }
}

/// Domains refused before sending, with the reason.
type Refused = Vec<(String, String)>;

/// The domains of one round, their destinations, and those refused by the sender-side
/// fence (re-read from the directory every round of `--watch`).
fn domain_jobs(
    config: &Config,
    a: &RunArgs,
    node: &str,
    target: &Option<Target>,
) -> Result<(Vec<Job>, Refused)> {
    let mut dir = open_directory(config)?;
    let mut jobs_list = Vec::new();
    let mut refused = Vec::new();
    if a.domains.is_empty() {
        let d = dir.as_mut().ok_or_else(|| {
            Error::config("no directory configured: give --domain, or --db / [[directory]]")
        })?;
        for rec in d.domains(Some(node))? {
            let t = match (target, &rec.backup) {
                (Some(t), _) => t.clone(),
                (None, Some(b)) => Target::Host(b.clone()),
                (None, None) => {
                    refused.push((
                        rec.domain.to_string(),
                        "no backup node (storage2)".to_string(),
                    ));
                    continue;
                }
            };
            jobs_list.push(Job {
                domain: rec.domain,
                target: t,
            });
        }
    } else {
        for raw in &a.domains {
            let domain = Domain::parse(raw, Strictness::Admin)?;
            let rec = match dir.as_mut() {
                Some(d) => d.route(&domain)?,
                None => None,
            };
            if dir.is_some() {
                match &rec {
                    None => {
                        refused.push((domain.to_string(), "unknown to the directory".into()));
                        continue;
                    }
                    Some(r) if r.primary != node => {
                        refused.push((
                            domain.to_string(),
                            format!(
                                "this node ({node}) is not its primary ({}); refusing to send it \
                                 (fencing)",
                                r.primary
                            ),
                        ));
                        continue;
                    }
                    _ => {}
                }
            }
            let t =
                match (target, rec.and_then(|r| r.backup)) {
                    (Some(t), _) => t.clone(),
                    (None, Some(b)) => Target::Host(b),
                    (None, None) => return Err(Error::bad_input(
                        "give REMOTE (a host or an absolute path): no directory to find the backup",
                    )),
                };
            jobs_list.push(Job { domain, target: t });
        }
    }
    drop(dir);
    Ok((jobs_list, refused))
}

/// One round: replicate the domains, print the report; the exit code.
fn round(
    a: &RunArgs,
    opts: &RunOptions,
    jobs_list: Vec<Job>,
    refused: Vec<(String, String)>,
) -> Result<i32> {
    let mut report = sync::run(jobs_list, opts);
    for (domain, why) in refused {
        report.domains += 1;
        report.errors += 1;
        report.ok = false;
        report.per_domain.push(sync::DomainReport {
            domain,
            errors: vec![why],
            ..Default::default()
        });
    }
    if a.json {
        // One object per line in --watch mode (one per round).
        let json = if a.watch.is_some() {
            serde_json::to_string(&report)
        } else {
            serde_json::to_string_pretty(&report)
        };
        mailcluster::cli::print_stdout(&json.map_err(|e| Error::internal(format!("json: {e}")))?)?;
    } else {
        for d in report.per_domain.iter().filter(|d| !d.ok) {
            for e in &d.errors {
                eprintln!("mailsync: {}: {e}", d.domain);
            }
        }
        mailcluster::cli::print_stdout(&report.summary())?;
    }
    if !report.ok {
        return Ok(mailcluster::error::exit::TEMPFAIL);
    }
    if a.strict && report.conflicts > 0 {
        return Ok(mailcluster::error::exit::NOT_FOUND);
    }
    Ok(0)
}

fn status(
    common: &CommonArgs,
    root: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    json: bool,
) -> Result<i32> {
    let config = load_config(common)?;
    let sc: SyncConfig = config.section("sync")?;
    let root = root.unwrap_or_else(|| config.mail.root.clone());
    let state_dir = state_dir
        .or(sc.state_dir)
        .unwrap_or_else(|| root.join(".mailsync"));
    let reps = sync::status(&state_dir)?;
    let text = if json {
        serde_json::to_string_pretty(&reps).map_err(|e| Error::internal(format!("json: {e}")))?
    } else {
        let mut lines = Vec::new();
        for r in &reps {
            lines.push(format!(
                "{}\t{}\t{}\tfinished={}\tsent={}\trenames={}\tdeletes={}\tconflicts={}",
                r.domain,
                r.remote,
                if r.ok { "ok" } else { "FAILED" },
                r.finished,
                r.files_sent,
                r.renames,
                r.deletes,
                r.conflicts.len()
            ));
            for c in &r.conflicts {
                lines.push(format!("  conflict (kept, only on the remote): {c}"));
            }
            for e in &r.errors {
                lines.push(format!("  error: {e}"));
            }
        }
        lines.join("\n")
    };
    if !text.is_empty() {
        mailcluster::cli::print_stdout(&text)?;
    }
    Ok(if reps.iter().all(|r| r.ok) { 0 } else { 1 })
}

fn promote(
    common: &CommonArgs,
    domains: Vec<String>,
    root: Option<PathBuf>,
    margin: Option<u32>,
) -> Result<i32> {
    let config = load_config(common)?;
    let sc: SyncConfig = config.section("sync")?;
    let root = root.unwrap_or_else(|| config.mail.root.clone());
    let margin = margin
        .or(sc.promote_margin)
        .unwrap_or(sync::promote::DEFAULT_MARGIN);
    let mut failed = false;
    for raw in &domains {
        let domain = Domain::parse(raw, Strictness::Admin)?;
        let base = root.join(domain.as_str());
        if !base.is_dir() {
            eprintln!("mailsync: {}: no such directory", base.display());
            failed = true;
            continue;
        }
        for path in sync::promote::find_uidlists(&base) {
            match sync::promote::promote_uidlist(&path, margin) {
                Ok((old, new)) => println!("{}: next UID {old} -> {new}", path.display()),
                Err(e) => {
                    eprintln!("mailsync: {}: {e}", path.display());
                    failed = true;
                }
            }
        }
    }
    Ok(if failed {
        mailcluster::error::exit::TEMPFAIL
    } else {
        0
    })
}
