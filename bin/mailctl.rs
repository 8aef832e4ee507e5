//! mailctl: administer every node's database at once — schema, domains, mailboxes, routing,
//! failover and failback, drift. Parses arguments, calls `mailcluster::admin`, prints its
//! reports through `admin::render` (tables, or JSON with --json) and maps errors to exit codes.

use clap::{Parser, Subcommand};
use mailcluster::admin::ops;
use mailcluster::admin::{password, prompt, render, ApplyOptions, Cluster};
use mailcluster::cli::CommonArgs;
use mailcluster::config::Role;
use mailcluster::directory::txn::{Change, DomainKind};
use mailcluster::error::{Error, Result};

/// Administer every node's mail directory database at once.
#[derive(Parser)]
#[command(name = "mailctl", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Machine-readable output (JSON) for scripts.
    #[arg(long, global = true)]
    json: bool,
    /// Do not ask before destructive commands.
    #[arg(long, short = 'y', global = true)]
    yes: bool,
    /// Apply to the databases that answer, one by one, and record what is missing as drift
    /// (instead of all-or-nothing).
    #[arg(long, global = true)]
    partial: bool,
    /// More log output.
    #[arg(long, short = 'v', global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, check or upgrade the tables in every configured database.
    Schema {
        #[command(subcommand)]
        action: SchemaCmd,
    },
    /// Domains: third-level (ldomain.mdomain) or whole co_domains, with their nodes.
    Domain {
        #[command(subcommand)]
        action: DomainCmd,
    },
    /// Mailboxes.
    Mailbox {
        #[command(subcommand)]
        action: MailboxCmd,
    },
    /// The routing table (maps / co_maps): primary and backup node of a domain.
    Route {
        #[command(subcommand)]
        action: RouteCmd,
    },
    /// Nodes.
    Node {
        #[command(subcommand)]
        action: NodeCmd,
    },
    /// Unplanned: make the backup primary of every domain whose primary is NODE.
    Failover {
        /// The failed node (as in maps.storage1).
        #[arg(long = "from", value_name = "NODE")]
        node: String,
        /// The new primary (default: each domain's backup).
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
        /// Only these domains.
        #[arg(long = "domain", value_name = "DOMAIN")]
        domains: Vec<String>,
    },
    /// Bring a returning node's database(s) up to date, before its services start.
    Rejoin {
        node: String,
        /// Reference database (default: the first other storage database that answers).
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
    },
    /// Planned: sync NODE's domains to the target with mailsync, then make it primary.
    Switchover {
        #[arg(long = "from", value_name = "NODE")]
        node: String,
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
        #[arg(long = "domain", value_name = "DOMAIN")]
        domains: Vec<String>,
        /// Do not run mailsync (you synced yourself).
        #[arg(long)]
        skip_sync: bool,
    },
    /// Planned return of NODE after a failover: sync back, restore the saved maps rows.
    Failback {
        node: String,
        #[arg(long)]
        skip_sync: bool,
    },
    /// Compare all databases by domain and mailbox names; --repair fixes from --from.
    Drift {
        #[arg(long)]
        repair: bool,
        /// Reference database (required with --repair).
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
    },
    /// Resolve transactions an interrupted mailctl left prepared (every command does it too).
    Recover {
        /// Also those prepared by mailctl on another host (presumed abort unless this
        /// host's decision log says commit).
        #[arg(long)]
        foreign: bool,
    },
}

#[derive(Subcommand)]
enum SchemaCmd {
    /// Create the tables (idempotent).
    Init {
        /// Only the databases of this role (default: each with its configured role).
        #[arg(long)]
        role: Option<RoleArg>,
    },
    /// Say what is missing, and whether the password column holds the configured scheme.
    Check {
        #[arg(long)]
        role: Option<RoleArg>,
    },
    /// Widen mail.password so that the configured scheme's hashes fit.
    Upgrade,
}

#[derive(Clone, Copy, clap::ValueEnum)]
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

#[derive(Subcommand)]
enum DomainCmd {
    /// Add a domain: branch.company.ru (under company.ru), or --co for a whole domain.
    Add {
        domain: String,
        #[arg(long, value_name = "NODE")]
        primary: String,
        #[arg(long, value_name = "NODE")]
        backup: Option<String>,
        /// A co_domain (a whole domain outside the ldomain.mdomain scheme; routing only).
        #[arg(long)]
        co: bool,
        /// Add it disabled.
        #[arg(long)]
        disabled: bool,
    },
    List {
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
    },
    Show {
        domain: String,
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
    },
    Enable {
        domain: String,
    },
    Disable {
        domain: String,
    },
    /// Remove a domain and its mailboxes from every database (Maildirs stay on disk).
    Remove {
        domain: String,
    },
}

#[derive(Subcommand)]
enum MailboxCmd {
    /// Add a mailbox; the password is asked on the terminal (or read from stdin).
    Add {
        address: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        /// No password (the mailbox cannot log in until `mailbox passwd`).
        #[arg(long, conflicts_with = "password_stdin")]
        no_password: bool,
        #[arg(long)]
        disabled: bool,
    },
    List {
        /// Only this domain.
        domain: Option<String>,
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
    },
    Show {
        address: String,
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
    },
    /// Set the password (asked on the terminal, or from stdin).
    Passwd {
        address: String,
        #[arg(long)]
        password_stdin: bool,
    },
    Enable {
        address: String,
    },
    Disable {
        address: String,
    },
    /// Remove a mailbox from every database (its Maildir stays on disk).
    Remove {
        address: String,
    },
}

#[derive(Subcommand)]
enum RouteCmd {
    Show {
        domain: String,
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
    },
    Set {
        domain: String,
        #[arg(long, value_name = "NODE")]
        primary: String,
        #[arg(long, value_name = "NODE")]
        backup: Option<String>,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Domains and mailboxes per node, database reachability, service health.
    List {
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
        /// Do not probe the nodes' service ports.
        #[arg(long)]
        no_probe: bool,
    },
}

fn main() {
    let cli: Cli = mailcluster::cli::parse();
    mailcluster::logging::init(
        "mailctl",
        mailcluster::logging::LogTarget::Stderr,
        cli.verbose,
    );
    mailcluster::cli::exit("mailctl", run(cli))
}

/// The primary and optional backup node of a route, warning about names nobody has heard
/// of (a typo routes mail to nowhere).
fn parse_nodes(
    cluster: &Cluster,
    primary: &str,
    backup: Option<&str>,
) -> Result<(String, Option<String>)> {
    let primary = ops::parse_node(primary)?;
    let backup = backup.map(ops::parse_node).transpose()?;
    let mut nodes = vec![primary.as_str()];
    nodes.extend(backup.as_deref());
    for n in cluster.unknown_nodes(&nodes) {
        eprintln!(
            "warning: node {n} appears nowhere in the routing table and has no [[directory]]; \
             check the spelling (mail for the domain goes to that host)"
        );
    }
    Ok((primary, backup))
}

fn run(cli: Cli) -> Result<i32> {
    let config = cli.common.load()?;
    let json = cli.json;
    let opts = ApplyOptions {
        partial: cli.partial,
        defer: Vec::new(),
    };
    if let Command::Schema { action } = &cli.command {
        return schema(&config, action, json);
    }
    let cluster = Cluster::from_config(&config)?;
    let apply = |changes: Vec<Change>| -> Result<i32> {
        let o = cluster.apply(&changes, &opts)?;
        render::outcome(json, &o)
    };
    match cli.command {
        Command::Schema { .. } => Ok(0),
        Command::Domain { action } => match action {
            DomainCmd::Add {
                domain,
                primary,
                backup,
                co,
                disabled,
            } => {
                let domain = ops::parse_domain(&domain)?;
                let (primary, backup) = parse_nodes(&cluster, &primary, backup.as_deref())?;
                if !co && domain.split_first().is_none() {
                    return Err(Error::bad_input(format!(
                        "{domain} is a second-level domain: add a third-level domain under it \
                         (branch.{domain}), or the whole domain with --co"
                    )));
                }
                apply(vec![Change::AddDomain {
                    domain,
                    kind: if co {
                        DomainKind::CoDomain
                    } else {
                        DomainKind::Ldomain
                    },
                    primary,
                    backup,
                    active: !disabled,
                }])
            }
            DomainCmd::List { from } => {
                let (src, v) = cluster.domain_list(from.as_deref())?;
                if json {
                    render::print_json(&v)?;
                } else {
                    render::read_from(&src);
                    render::domains(&v);
                }
                Ok(0)
            }
            DomainCmd::Show { domain, from } => {
                let domain = ops::parse_domain(&domain)?;
                let (src, d, m) = cluster.domain_show(&domain, from.as_deref())?;
                render::domain_show(json, &src, &d, &m)?;
                Ok(0)
            }
            DomainCmd::Enable { domain } => {
                let domain = ops::parse_domain(&domain)?;
                let code = apply(vec![Change::SetDomainActive {
                    domain: domain.clone(),
                    active: true,
                }])?;
                if let Ok((_, d, _)) = cluster.domain_show(&domain, None) {
                    if !d.active {
                        let parent = domain.split_first().map(|(_, p)| p).unwrap_or("");
                        eprintln!(
                            "note: {domain} stays inactive: its second-level domain {parent} is \
                             disabled (mdomain.active, shared by all its third-level domains)"
                        );
                    }
                }
                Ok(code)
            }
            DomainCmd::Disable { domain } => apply(vec![Change::SetDomainActive {
                domain: ops::parse_domain(&domain)?,
                active: false,
            }]),
            DomainCmd::Remove { domain } => {
                let domain = ops::parse_domain(&domain)?;
                let (_, d, m) = cluster.domain_show(&domain, None)?;
                let dir = ops::home_path(&cluster.mail.home, &domain, "");
                let dir = dir.trim_end_matches('/');
                let nodes = d.nodes_description();
                let note = format!(
                    "the Maildirs of its {} mailbox(es) under {dir} on {nodes} are NOT deleted: \
                     mailctl only edits the databases and mailsync stops replicating the \
                     domain; archive or delete them by hand on both nodes",
                    m.len()
                );
                if !json {
                    eprintln!("{note}");
                }
                prompt::confirm(
                    &format!(
                        "remove domain {domain} and its {} mailbox(es) from every database?",
                        m.len()
                    ),
                    cli.yes,
                )?;
                apply(vec![Change::RemoveDomain { domain }])
            }
        },
        Command::Mailbox { action } => match action {
            MailboxCmd::Add {
                address,
                password_stdin,
                no_password,
                disabled,
            } => {
                let (mailbox, domain) = ops::parse_mailbox_address(&address)?;
                let password = if no_password {
                    None
                } else {
                    let plain =
                        prompt::new_password(&format!("{mailbox}@{domain}"), password_stdin)?;
                    Some(password::hash(&cluster.settings.password_scheme, &plain)?)
                };
                apply(vec![Change::AddMailbox {
                    mailbox,
                    domain,
                    password,
                    active: !disabled,
                }])
            }
            MailboxCmd::List { domain, from } => {
                let domain = domain.as_deref().map(ops::parse_domain).transpose()?;
                let (src, v) = cluster.mailbox_list(domain.as_ref(), from.as_deref())?;
                if json {
                    render::print_json(&v)?;
                } else {
                    render::read_from(&src);
                    render::mailboxes(&v);
                }
                Ok(0)
            }
            MailboxCmd::Show { address, from } => {
                let (mailbox, domain) = ops::parse_mailbox_address(&address)?;
                let (src, v) = cluster.mailbox_show(&mailbox, &domain, from.as_deref())?;
                if json {
                    render::print_json(&v)?;
                } else {
                    render::read_from(&src);
                    render::mailboxes(std::slice::from_ref(&v));
                    println!(
                        "home: {}",
                        ops::home_path(&cluster.mail.home, &domain, mailbox.as_str())
                    );
                }
                Ok(0)
            }
            MailboxCmd::Passwd {
                address,
                password_stdin,
            } => {
                let (mailbox, domain) = ops::parse_mailbox_address(&address)?;
                let plain = prompt::new_password(&format!("{mailbox}@{domain}"), password_stdin)?;
                let hash = password::hash(&cluster.settings.password_scheme, &plain)?;
                apply(vec![Change::SetPassword {
                    mailbox,
                    domain,
                    password: Some(hash),
                }])
            }
            MailboxCmd::Enable { address } => {
                let (mailbox, domain) = ops::parse_mailbox_address(&address)?;
                apply(vec![Change::SetMailboxActive {
                    mailbox,
                    domain,
                    active: true,
                }])
            }
            MailboxCmd::Disable { address } => {
                let (mailbox, domain) = ops::parse_mailbox_address(&address)?;
                apply(vec![Change::SetMailboxActive {
                    mailbox,
                    domain,
                    active: false,
                }])
            }
            MailboxCmd::Remove { address } => {
                let (mailbox, domain) = ops::parse_mailbox_address(&address)?;
                let (_, d) = cluster.route_show(&domain, None)?;
                let home = ops::home_path(&cluster.mail.home, &domain, mailbox.as_str());
                let nodes = d.nodes_description();
                if !json {
                    eprintln!(
                        "the Maildir {home} on {nodes} is NOT deleted: mailctl only edits the \
                         databases; mailsync keeps the backup's copy as it is; archive or delete \
                         it by hand on both nodes"
                    );
                }
                prompt::confirm(
                    &format!("remove mailbox {mailbox}@{domain} from every database?"),
                    cli.yes,
                )?;
                apply(vec![Change::RemoveMailbox { mailbox, domain }])
            }
        },
        Command::Route { action } => match action {
            RouteCmd::Show { domain, from } => {
                let domain = ops::parse_domain(&domain)?;
                let (src, d) = cluster.route_show(&domain, from.as_deref())?;
                if json {
                    render::print_json(&d)?;
                } else {
                    render::read_from(&src);
                    render::route(&d);
                }
                Ok(0)
            }
            RouteCmd::Set {
                domain,
                primary,
                backup,
            } => {
                let domain = ops::parse_domain(&domain)?;
                let (primary, backup) = parse_nodes(&cluster, &primary, backup.as_deref())?;
                apply(vec![Change::SetRoute {
                    domain,
                    primary,
                    backup,
                }])
            }
        },
        Command::Node { action } => match action {
            NodeCmd::List { from, no_probe } => {
                let v = cluster.node_list(from.as_deref(), !no_probe)?;
                if json {
                    render::print_json(&v)?;
                } else {
                    render::nodes(&v);
                }
                Ok(0)
            }
        },
        Command::Failover { node, to, domains } => {
            let domains = domains
                .iter()
                .map(|d| ops::parse_domain(d))
                .collect::<Result<Vec<_>>>()?;
            let r = cluster.failover(&node, to.as_deref(), &domains, cli.partial)?;
            render::moves(json, &r)
        }
        Command::Rejoin { node, from } => {
            let r = cluster.rejoin(&node, from.as_deref())?;
            render::rejoin(json, &r)
        }
        Command::Switchover {
            node,
            to,
            domains,
            skip_sync,
        } => {
            let domains = domains
                .iter()
                .map(|d| ops::parse_domain(d))
                .collect::<Result<Vec<_>>>()?;
            let r = cluster.switchover(&node, to.as_deref(), &domains, skip_sync)?;
            render::moves(json, &r)
        }
        Command::Failback { node, skip_sync } => {
            let r = cluster.failback(&node, skip_sync)?;
            render::moves(json, &r)
        }
        Command::Drift { repair, from } => {
            let r = if repair {
                let Some(from) = from else {
                    return Err(Error::bad_input(
                        "drift --repair needs --from NAME: the database whose content is right",
                    ));
                };
                let plan = cluster.drift(Some(&from))?;
                let removals: Vec<String> = plan
                    .items
                    .iter()
                    .filter(|i| i.problem == "extra" && i.repair.is_some())
                    .map(|i| format!("{} from {}", i.object, i.database))
                    .collect();
                if !removals.is_empty() {
                    eprintln!("the repair removes: {}", removals.join(", "));
                    prompt::confirm(
                        &format!(
                            "remove {} row(s) that {from} does not have?",
                            removals.len()
                        ),
                        cli.yes,
                    )?;
                }
                cluster.repair(&from, None)?
            } else {
                cluster.drift(from.as_deref())?
            };
            render::drift(json, &r)
        }
        Command::Recover { foreign } => {
            let mut cluster = cluster;
            cluster.foreign = foreign;
            let notes = cluster.recover_now()?;
            if json {
                render::print_json(&notes)?;
            } else if notes.is_empty() {
                println!("nothing to recover");
            } else {
                for n in notes {
                    println!("{n}");
                }
            }
            Ok(0)
        }
    }
}

fn schema(config: &mailcluster::config::Config, action: &SchemaCmd, json: bool) -> Result<i32> {
    use mailcluster::admin::schema;
    let (lines, ok) = match action {
        SchemaCmd::Init { role } => (schema::init(config, role.map(Role::from))?, true),
        SchemaCmd::Check { role } => schema::check(config, role.map(Role::from))?,
        SchemaCmd::Upgrade => (schema::upgrade(config)?, true),
    };
    render::lines(json, ok, &lines)?;
    Ok(if ok { 0 } else { 78 })
}
