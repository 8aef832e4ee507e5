//! Configuration: TOML read from `--config PATH`, else `$MAILCLUSTER_CONFIG`, else the
//! system path (`/etc/mailcluster/mailcluster.toml`, `/usr/local/etc/...` on FreeBSD).
//! Shape: design §3.2. Sections owned by one binary (`[map]`, `[auth]`, `[sync]`, `[ctl]`)
//! are read by that binary's module with [`Config::section`], so that an error in them
//! still names the file and line.

use crate::directory::Directory;
use crate::error::{Error, ErrorKind, Result};
use crate::names::{Domain, LocalPart, Strictness};
use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "MAILCLUSTER_CONFIG";

/// The system configuration path for this OS.
pub fn default_config_path() -> PathBuf {
    if cfg!(any(
        target_os = "freebsd",
        target_os = "openbsd",
        target_os = "netbsd",
        target_os = "dragonfly"
    )) {
        PathBuf::from("/usr/local/etc/mailcluster/mailcluster.toml")
    } else {
        PathBuf::from("/etc/mailcluster/mailcluster.toml")
    }
}

/// Role of a node database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Full tables (storage nodes).
    #[default]
    Storage,
    /// `mail` table without the `password` column (SMTP nodes).
    Smtp,
}

/// One node database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub role: Role,
}

/// Where mail lives on a storage node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// Home directory template. Variables: `{domain}` (full domain), `{ldomain}` (its first
    /// label), `{mdomain}` (the rest), `{mailbox}` (see [`crate::paths`]). Must be absolute,
    /// contain `{mailbox}` and stay under `root`.
    pub home: String,
    /// The Maildir, relative to the home directory (same variables; empty = the home), or an
    /// absolute template under `root`.
    pub maildir: String,
    /// The mail root (the directory holding one directory per domain), for mailsync. When
    /// the file does not set it: the fixed leading part of `home`.
    pub root: PathBuf,
    /// The virtual mail user and group that own Maildirs (userdb uid/gid).
    pub uid: u32,
    pub gid: u32,
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            home: "/usr/mail/{domain}/{mailbox}".to_string(),
            maildir: "Maildir".to_string(),
            root: PathBuf::from("/usr/mail"),
            uid: 8,
            gid: 8,
        }
    }
}

/// Backend ports per protocol (what nginx is told to connect to on a storage).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortsConfig {
    pub imap: u16,
    pub pop3: u16,
    pub smtp: u16,
}

impl Default for PortsConfig {
    fn default() -> Self {
        PortsConfig {
            imap: 143,
            pop3: 110,
            smtp: 25,
        }
    }
}

/// The parsed configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's name as it appears in `maps.storage1` / `storage2`. Defaults to the host
    /// name (see [`Config::node_name`]).
    #[serde(default)]
    pub node: Option<String>,
    /// Bound on every database wait, in seconds (default 5).
    #[serde(default = "default_db_timeout")]
    pub db_timeout: f64,
    /// The node databases, in file order: the first reachable one is read.
    #[serde(default, rename = "directory")]
    pub directories: Vec<DirectoryConfig>,
    #[serde(default)]
    pub mail: MailConfig,
    #[serde(default)]
    pub ports: PortsConfig,
    /// Sections read by their own modules.
    #[serde(default)]
    pub map: toml::Table,
    #[serde(default)]
    pub auth: toml::Table,
    #[serde(default)]
    pub sync: toml::Table,
    #[serde(default)]
    pub ctl: toml::Table,
    /// The file this came from (None for built-in defaults) and its text.
    #[serde(skip)]
    pub source: Option<(PathBuf, String)>,
}

fn default_db_timeout() -> f64 {
    5.0
}

/// Largest configuration file read (a bound on hostile input).
pub const MAX_CONFIG_SIZE: u64 = 1024 * 1024;

/// Longest accepted `db_timeout`, in seconds.
pub const MAX_DB_TIMEOUT: f64 = 3600.0;

impl Default for Config {
    fn default() -> Self {
        Config {
            node: None,
            db_timeout: default_db_timeout(),
            directories: Vec::new(),
            mail: MailConfig::default(),
            ports: PortsConfig::default(),
            map: toml::Table::new(),
            auth: toml::Table::new(),
            sync: toml::Table::new(),
            ctl: toml::Table::new(),
            source: None,
        }
    }
}

impl Config {
    /// Parse configuration text; `path` is used in error messages. Checks everything but the
    /// file's permissions (see [`Config::load`]).
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        // Syntax first, so that secrets can be found (and kept out of every message below).
        let doc: toml::Table = toml::from_str(text).map_err(|e| toml_error(path, text, &e, &[]))?;
        let secrets = find_secrets(&doc);
        let values: Vec<&str> = secrets.iter().map(|s| s.value.as_str()).collect();
        let mut config: Config =
            toml::from_str(text).map_err(|e| toml_error(path, text, &e, &values))?;
        config.source = Some((path.to_path_buf(), text.to_string()));
        // Without `[mail] root`, the root is the fixed part of the home template.
        let root_given = doc
            .get("mail")
            .and_then(|m| m.as_table())
            .is_some_and(|m| m.contains_key("root"));
        if !root_given {
            config.mail.root = crate::paths::implied_root(&config.mail.home);
        }
        config
            .validate(text)
            .map_err(|e| Error::config(redact(e.message(), &values)))?;
        Ok(config)
    }

    /// Read a configuration file. A file holding a secret (see [`Config::secrets`]) must not
    /// be readable by everyone, and no configuration file may be writable by everyone.
    pub fn load(path: &Path) -> Result<Config> {
        let (text, mode) = read_bounded(path)?;
        let doc: Option<toml::Table> = toml::from_str(&text).ok();
        if let Some(mode) = mode {
            check_mode(
                path,
                mode,
                doc.as_ref().map(find_secrets).unwrap_or_default(),
            )?;
        }
        Self::parse(&text, path)
    }

    /// The file this configuration was read from.
    pub fn file(&self) -> Option<&Path> {
        self.source.as_ref().map(|(p, _)| p.as_path())
    }

    /// The file for messages: its path, or a note that none was read.
    pub fn file_display(&self) -> String {
        match self.file() {
            Some(p) => p.display().to_string(),
            None => format!(
                "the configuration file (none was read; create {} or pass --config)",
                default_config_path().display()
            ),
        }
    }

    /// Where secrets live in this configuration (descriptions only, never the values).
    pub fn secrets(&self) -> Vec<String> {
        let Some((_, text)) = &self.source else {
            return Vec::new();
        };
        match toml::from_str::<toml::Table>(text) {
            Ok(doc) => find_secrets(&doc).into_iter().map(|s| s.place).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Deserialize one of the module-owned sections (`map`, `auth`, `sync`, `ctl`).
    /// Missing section → `T::default()`. Errors name the file and line; use
    /// `#[serde(deny_unknown_fields)]` on `T` so that a misspelt key is refused with its line.
    pub fn section<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T> {
        let Some((path, text)) = &self.source else {
            // Built in code (no file): read the in-memory table.
            let table = match name {
                "map" => &self.map,
                "auth" => &self.auth,
                "sync" => &self.sync,
                "ctl" => &self.ctl,
                _ => return Ok(T::default()),
            };
            if table.is_empty() {
                return Ok(T::default());
            }
            return T::deserialize(toml::Value::Table(table.clone()))
                .map_err(|e| Error::config(format!("[{name}] {}", e.message())));
        };
        let doc: toml::Table = toml::from_str(text).map_err(|e| toml_error(path, text, &e, &[]))?;
        let secrets = find_secrets(&doc);
        let values: Vec<&str> = secrets.iter().map(|s| s.value.as_str()).collect();
        // Deserialize straight from the document so that errors carry their span.
        let de = toml::Deserializer::new(text);
        let seed = SectionVisitor::<T> {
            name,
            _t: PhantomData,
        };
        match serde::Deserializer::deserialize_map(de, seed) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Ok(T::default()),
            Err(e) => {
                let e = toml_error(path, text, &e, &values);
                // "FILE:LINE: message" → "FILE:LINE: [name]: message"
                let m = e.message();
                let at = m.find(": ").map(|i| i + 2).unwrap_or(0);
                Err(Error::config(format!("{}[{name}] {}", &m[..at], &m[at..])))
            }
        }
    }

    /// Bound on database waits.
    pub fn db_timeout(&self) -> Duration {
        if self.db_timeout.is_finite() && self.db_timeout > 0.0 {
            Duration::from_secs_f64(self.db_timeout.min(MAX_DB_TIMEOUT))
        } else {
            crate::directory::DEFAULT_TIMEOUT
        }
    }

    /// This node's name as it must appear in `maps.storage1` / `storage2`: `node` from the
    /// file, else the host name. Lower-case, validated.
    pub fn node_name(&self) -> Result<String> {
        if let Some(node) = &self.node {
            return crate::names::parse_node_name(node, Strictness::Admin).map_err(|e| {
                Error::config(format!("{}: node: {}", self.file_display(), e.message()))
            });
        }
        let host = hostname::get().map_err(|e| {
            Error::config(format!(
                "cannot read the host name ({e}): set node = \"...\" in {}",
                self.file_display()
            ))
        })?;
        let host = host.to_string_lossy();
        crate::names::parse_node_name(&host, Strictness::Admin).map_err(|e| {
            Error::config(format!(
                "the host name is not usable as this node's name ({}): set node = \"...\" in {}",
                e.message(),
                self.file_display()
            ))
        })
    }

    /// Check that this node's name appears in the directory's `maps` / `co_maps` (as a
    /// primary or a backup). A short host name against FQDNs in `maps` would otherwise make
    /// every domain look foreign and reject all mail. An empty routing table passes (nothing
    /// to compare with). Directory failures keep their kind (temporary stays temporary).
    ///
    /// Call it where this node's name decides an answer (local-domain checks and sync on a
    /// storage); an SMTP node's or the proxy's name never appears in `maps`.
    pub fn check_node(&self, directory: &mut dyn Directory) -> Result<()> {
        let node = self.node_name()?;
        let known = directory.node_names()?;
        check_node_against(&node, &known, self.node.is_some(), &self.file_display())
    }

    /// The home directory of `mailbox@domain` from `[mail] home` (a `+tag` is ignored).
    pub fn home(&self, mailbox: &LocalPart, domain: &Domain) -> Result<PathBuf> {
        let vars = crate::paths::Vars::new(mailbox, domain);
        crate::paths::home(&self.mail.home, &self.mail.root, &vars)
    }

    /// The Maildir of `mailbox@domain`: `[mail] maildir` under its home.
    pub fn maildir(&self, mailbox: &LocalPart, domain: &Domain) -> Result<PathBuf> {
        let vars = crate::paths::Vars::new(mailbox, domain);
        let home = crate::paths::home(&self.mail.home, &self.mail.root, &vars)?;
        crate::paths::maildir(&home, &self.mail.root, &self.mail.maildir, &vars)
    }

    /// The directory holding all of `domain`'s mailboxes (the unit mailsync replicates).
    pub fn domain_dir(&self, domain: &Domain) -> Result<PathBuf> {
        crate::paths::domain_dir(&self.mail.home, &self.mail.root, domain)
    }

    /// `(name, url)` of every configured directory, in file order.
    pub fn directory_urls(&self) -> Vec<(&str, &str)> {
        self.directories
            .iter()
            .map(|d| (d.name.as_str(), d.url.as_str()))
            .collect()
    }

    /// The configured directories as one [`Directory`] that reads the first reachable one,
    /// trying `[[directory]]` entries in file order (see [`FirstReachable`]). Connections are
    /// made on first use, so this fails only when no directory is configured.
    pub fn open_directory(&self) -> Result<Box<dyn Directory>> {
        self.open_directory_where(|_| true)
    }

    /// Open the first reachable directory of the given role (e.g. [`Role::Storage`] when
    /// passwords are needed).
    pub fn open_directory_role(&self, role: Role) -> Result<Box<dyn Directory>> {
        self.open_directory_where(|d| d.role == role)
    }

    fn open_directory_where(
        &self,
        wanted: impl Fn(&DirectoryConfig) -> bool,
    ) -> Result<Box<dyn Directory>> {
        let candidates: Vec<&DirectoryConfig> =
            self.directories.iter().filter(|d| wanted(d)).collect();
        if candidates.is_empty() {
            let what = if self.directories.is_empty() {
                "no directory is configured"
            } else {
                "no directory of the needed role is configured"
            };
            return Err(Error::config(format!(
                "{what}: pass --db URL (e.g. --db sqlite:/var/db/mailcluster.sqlite) or add a \
                 [[directory]] table with name, url and role to {}",
                self.file_display()
            )));
        }
        Ok(Box::new(FirstReachable::new(
            candidates.into_iter().cloned().collect(),
            self.db_timeout(),
        )))
    }

    /// Check what serde cannot: names, templates, bounds. `text` gives line numbers.
    fn validate(&self, text: &str) -> Result<()> {
        let file = self.file_display();
        let spans: SpanDoc = toml::from_str(text).unwrap_or_default();
        let at = |span: Option<std::ops::Range<usize>>| match span {
            Some(s) => format!("{file}:{}", line_of(text, s.start)),
            None => file.clone(),
        };
        if let Some(node) = &self.node {
            if let Err(e) = crate::names::parse_node_name(node, Strictness::Admin) {
                return Err(Error::config(format!(
                    "{}: node: {}: expected this node's name exactly as in maps.storage1, \
                     e.g. node = \"storage-01.domain.ru\"",
                    at(spans.node.map(|s| s.span())),
                    e.message()
                )));
            }
        }
        if !(self.db_timeout.is_finite()
            && self.db_timeout > 0.0
            && self.db_timeout <= MAX_DB_TIMEOUT)
        {
            return Err(Error::config(format!(
                "{}: db_timeout = {}: expected seconds, more than 0 and at most {MAX_DB_TIMEOUT}",
                at(spans.db_timeout.map(|s| s.span())),
                self.db_timeout
            )));
        }
        let mut names = BTreeSet::new();
        for (i, d) in self.directories.iter().enumerate() {
            let span = spans.directory.get(i).and_then(|s| s.span.clone());
            if d.name.trim().is_empty() || d.name.len() > 64 || d.name.chars().any(char::is_control)
            {
                return Err(Error::config(format!(
                    "{}: [[directory]] name: expected a short name such as \"storage-01\"",
                    at(span)
                )));
            }
            if !names.insert(d.name.as_str()) {
                return Err(Error::config(format!(
                    "{}: [[directory]] name {:?} appears twice: names must be unique",
                    at(span),
                    d.name
                )));
            }
            if d.url.trim().is_empty() || d.url.contains('\0') || d.url.len() > 4096 {
                return Err(Error::config(format!(
                    "{}: [[directory]] {:?} url: expected sqlite:PATH, postgresql://... or \
                     \"host=/run/postgresql dbname=mail user=mail\"",
                    at(span),
                    d.name
                )));
            }
        }
        let mail_span = spans.mail.and_then(|m| m.span);
        if let Err(why) =
            crate::paths::validate(&self.mail.home, &self.mail.maildir, &self.mail.root)
        {
            return Err(Error::config(format!("{}: {why}", at(mail_span))));
        }
        if self.mail.uid == 0 || self.mail.gid == 0 {
            return Err(Error::config(format!(
                "{}: [mail] uid/gid: expected the virtual mail user's ids (not root: Dovecot \
                 refuses root mail access), e.g. uid = 8, gid = 8 for Debian's 'mail'",
                at(mail_span)
            )));
        }
        for (name, port) in [
            ("imap", self.ports.imap),
            ("pop3", self.ports.pop3),
            ("smtp", self.ports.smtp),
        ] {
            if port == 0 {
                return Err(Error::config(format!(
                    "{file}: [ports] {name} = 0: expected a TCP port (1-65535)"
                )));
            }
        }
        Ok(())
    }
}

/// Several node databases read as one: every call goes to the database that answered last
/// (at first the first in file order); when it fails with a temporary or configuration
/// error (down, hung past the timeout, unreadable), the call is retried on the next one, in
/// order, and that one is kept. "Not found" is an answer, never a reason to ask elsewhere.
/// When every database fails, the error is temporary (configuration when each failure was a
/// configuration error) and names each database tried, with passwords hidden.
///
/// File order is the order of preference (a node lists its own database first): a
/// long-running reader that moved down the list goes back to the first database once
/// [`RETRY_PREFERRED_AFTER`] has passed, so one outage does not pin it to a remote copy
/// for good. While the preferred database is still down, that retry costs one failed
/// attempt (at most the timeout) per period.
pub struct FirstReachable {
    entries: Vec<(DirectoryConfig, Option<Box<dyn Directory>>)>,
    current: usize,
    timeout: Duration,
    /// When the reader last moved away from the first database.
    moved_at: Option<Instant>,
    retry_preferred_after: Duration,
}

/// How long [`FirstReachable`] stays on a fallback database before trying the first again.
pub const RETRY_PREFERRED_AFTER: Duration = Duration::from_secs(60);

impl FirstReachable {
    /// Directories to read, in order of preference; none is contacted yet.
    pub fn new(directories: Vec<DirectoryConfig>, timeout: Duration) -> FirstReachable {
        FirstReachable {
            entries: directories.into_iter().map(|d| (d, None)).collect(),
            current: 0,
            timeout,
            moved_at: None,
            retry_preferred_after: RETRY_PREFERRED_AFTER,
        }
    }

    /// Try the first database again this long after moving away from it (default
    /// [`RETRY_PREFERRED_AFTER`]).
    pub fn retry_preferred_after(mut self, after: Duration) -> FirstReachable {
        self.retry_preferred_after = after;
        self
    }

    /// The name of the directory that answered last (or will be tried first).
    pub fn current_name(&self) -> Option<&str> {
        self.entries.get(self.current).map(|(d, _)| d.name.as_str())
    }

    fn call<T>(&mut self, mut f: impl FnMut(&mut dyn Directory) -> Result<T>) -> Result<T> {
        let retrying_first = self.current != 0
            && self
                .moved_at
                .map_or(true, |t| t.elapsed() >= self.retry_preferred_after);
        if retrying_first {
            self.current = 0;
        }
        let n = self.entries.len();
        let mut failures = Vec::new();
        let mut all_config = true;
        for k in 0..n {
            let i = (self.current + k) % n;
            let (config, slot) = &mut self.entries[i];
            let result = match slot {
                Some(dir) => f(dir.as_mut()),
                None => match crate::directory::open(&config.url, self.timeout) {
                    Ok(dir) => f(slot.insert(dir).as_mut()),
                    Err(e) => Err(e),
                },
            };
            match result {
                Err(e) if e.is_temporary() || e.kind() == ErrorKind::Config => {
                    // Drop the connection: the next use reconnects.
                    *slot = None;
                    if e.kind() != ErrorKind::Config {
                        all_config = false;
                    }
                    let what = format!("{} ({}): {}", config.name, redact_url(&config.url), e);
                    if n > 1 {
                        log::warn!("directory {what}");
                    }
                    failures.push(what);
                }
                other => {
                    if k > 0 {
                        log::warn!(
                            "reading directory {} instead: {}",
                            config.name,
                            failures.join("; ")
                        );
                    }
                    if i == 0 {
                        if retrying_first {
                            log::info!("reading directory {} again", config.name);
                        }
                        self.moved_at = None;
                    } else if i != self.current || self.moved_at.is_none() {
                        self.moved_at = Some(Instant::now());
                    }
                    self.current = i;
                    return other;
                }
            }
        }
        let message = if n == 1 {
            format!("directory {}", failures.join(""))
        } else {
            format!("no directory reachable: {}", failures.join("; "))
        };
        Err(if all_config {
            Error::config(message)
        } else {
            Error::temporary(message)
        })
    }
}

impl Directory for FirstReachable {
    fn describe(&self) -> String {
        let names: Vec<&str> = self.entries.iter().map(|(d, _)| d.name.as_str()).collect();
        match self.entries.get(self.current) {
            Some((d, Some(dir))) if self.entries.len() == 1 => {
                format!("{} ({})", d.name, dir.describe())
            }
            _ if self.entries.len() == 1 => {
                format!("{} ({})", names[0], { redact_url(&self.entries[0].0.url) })
            }
            _ => format!(
                "{} (first reachable of {})",
                self.current_name().unwrap_or("-"),
                names.join(", ")
            ),
        }
    }
    fn is_local_domain(&mut self, domain: &Domain, node: &str) -> Result<bool> {
        self.call(|d| d.is_local_domain(domain, node))
    }
    fn route(&mut self, domain: &Domain) -> Result<Option<crate::directory::DomainRecord>> {
        self.call(|d| d.route(domain))
    }
    fn mailbox(
        &mut self,
        mailbox: &LocalPart,
        domain: &Domain,
    ) -> Result<Option<crate::directory::MailboxRecord>> {
        self.call(|d| d.mailbox(mailbox, domain))
    }
    fn route_and_mailbox(
        &mut self,
        mailbox: &LocalPart,
        domain: &Domain,
    ) -> Result<(
        Option<crate::directory::DomainRecord>,
        Option<crate::directory::MailboxRecord>,
    )> {
        self.call(|d| d.route_and_mailbox(mailbox, domain))
    }
    fn domains(&mut self, primary: Option<&str>) -> Result<Vec<crate::directory::DomainRecord>> {
        self.call(|d| d.domains(primary))
    }
    fn mailboxes(&mut self) -> Result<Vec<crate::directory::MailboxRecord>> {
        self.call(|d| d.mailboxes())
    }
    fn node_names(&mut self) -> Result<BTreeSet<String>> {
        self.call(|d| d.node_names())
    }
    fn ping(&mut self) -> Result<()> {
        self.call(|d| d.ping())
    }
}

/// The node-name check behind [`Config::check_node`], on a set of known names.
pub fn check_node_against(
    node: &str,
    known: &BTreeSet<String>,
    explicit: bool,
    file: &str,
) -> Result<()> {
    if known.is_empty() || known.contains(node) {
        return Ok(());
    }
    let shown: Vec<&str> = known.iter().take(10).map(String::as_str).collect();
    let more = if known.len() > shown.len() {
        ", ..."
    } else {
        ""
    };
    let origin = if explicit {
        "set by node in the configuration"
    } else {
        "the host name; node is not set in the configuration"
    };
    // A short host name against FQDNs: suggest the FQDN it matches.
    let prefix = format!("{node}.");
    let candidates: Vec<&str> = known
        .iter()
        .filter(|k| k.starts_with(&prefix))
        .map(String::as_str)
        .collect();
    let suggestion = match candidates.as_slice() {
        [one] => format!("set node = \"{one}\" in {file}"),
        _ => format!("set node = \"...\" in {file} to this node's name as written in maps"),
    };
    Err(Error::config(format!(
        "node \"{node}\" ({origin}) appears nowhere in maps (known: {}{more}); {suggestion}",
        shown.join(", ")
    )))
}

/// Line (1-based) of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn toml_error(path: &Path, text: &str, e: &toml::de::Error, secrets: &[&str]) -> Error {
    let message = redact(e.message().trim_end(), secrets);
    let mut message = message.replace('\n', " ");
    if let Some(span) = e.span() {
        let line = text[span.start.min(text.len())..]
            .lines()
            .next()
            .unwrap_or("");
        if line.trim_start().starts_with("[directory]") {
            message.push_str(" (write [[directory]], with double brackets, once per directory)");
        }
    }
    match e.span() {
        Some(span) => Error::config(format!(
            "{}:{}: {message}",
            path.display(),
            line_of(text, span.start)
        )),
        None => Error::config(format!("{}: {message}", path.display())),
    }
}

/// Read at most [`MAX_CONFIG_SIZE`] bytes; returns the text and the file mode (Unix).
fn read_bounded(path: &Path) -> Result<(String, Option<u32>)> {
    use std::io::Read;
    let cannot = |e: std::io::Error| {
        Error::config(format!(
            "cannot read configuration file {}: {e} (give the path with --config)",
            path.display()
        ))
    };
    let file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(Error::config(format!(
            "configuration file {} is not a regular file",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_CONFIG_SIZE {
        return Err(Error::config(format!(
            "configuration file {} is larger than {MAX_CONFIG_SIZE} bytes",
            path.display()
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = line_of(
            &String::from_utf8_lossy(&e.as_bytes()[..e.utf8_error().valid_up_to()]),
            usize::MAX,
        );
        Error::config(format!(
            "{}:{line}: expected UTF-8 text (TOML)",
            path.display()
        ))
    })?;
    #[cfg(unix)]
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        Some(meta.permissions().mode())
    };
    #[cfg(not(unix))]
    let mode = None;
    Ok((text, mode))
}

/// The group that should own a configuration file holding secrets: the group Exim's
/// `${run}` helpers run with (they get no supplementary groups).
pub fn secret_group() -> &'static str {
    if cfg!(target_os = "linux") {
        "Debian-exim"
    } else {
        "mail"
    }
}

fn check_mode(path: &Path, mode: u32, secrets: Vec<Secret>) -> Result<()> {
    let file = path.display();
    if mode & 0o002 != 0 {
        return Err(Error::config(format!(
            "configuration file {file} is writable by everyone (mode {:04o}): anyone could \
             reroute mail; fix: chmod o-w {file}",
            mode & 0o7777
        )));
    }
    if mode & 0o004 != 0 && !secrets.is_empty() {
        let places: Vec<&str> = secrets.iter().map(|s| s.place.as_str()).collect();
        return Err(Error::config(format!(
            "configuration file {file} holds a secret ({}) but is readable by everyone \
             (mode {:04o}); fix: chmod 640 {file}; chgrp {} {file} (the group the helpers run \
             under; see the README's configuration section)",
            places.join(", "),
            mode & 0o7777,
            secret_group()
        )));
    }
    Ok(())
}

/// A secret found in the file: where (for messages) and its value (to redact it).
#[derive(Debug, Clone)]
struct Secret {
    place: String,
    value: String,
}

/// Keys whose string value is a secret: a word `password`, `passwd`, `passphrase`, `secret`
/// or `token` in the key (split at `_` and `-`), unless the key names a file, path, scheme,
/// header or name (`password_file`, `secret_path`, `password_scheme`, `secret_header`).
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let words: Vec<&str> = key.split(['_', '-']).collect();
    let secret_word = words.iter().any(|w| {
        matches!(
            *w,
            "password" | "passwd" | "passphrase" | "secret" | "token"
        )
    });
    let names_a_place = matches!(
        words.last(),
        Some(&("file" | "path" | "dir" | "scheme" | "command" | "cmd" | "header" | "name"))
    );
    secret_word && !names_a_place
}

fn find_secrets(doc: &toml::Table) -> Vec<Secret> {
    let mut out = Vec::new();
    if let Some(toml::Value::Array(dirs)) = doc.get("directory") {
        for (i, d) in dirs.iter().enumerate() {
            let Some(t) = d.as_table() else { continue };
            if let Some(url) = t.get("url").and_then(|u| u.as_str()) {
                if let Some(pw) = url_password(url) {
                    let name = t
                        .get("name")
                        .and_then(|n| n.as_str())
                        .map(|n| format!("{n:?}"))
                        .unwrap_or_else(|| format!("#{}", i + 1));
                    out.push(Secret {
                        place: format!("the password in [[directory]] {name} url"),
                        value: pw,
                    });
                }
            }
        }
    }
    walk_secrets(doc, "", &mut out);
    out
}

fn walk_secrets(table: &toml::Table, prefix: &str, out: &mut Vec<Secret>) {
    for (k, v) in table {
        let place = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => walk_secrets(t, &place, out),
            toml::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let here = format!("{place}[{i}]");
                    match item {
                        toml::Value::Table(t) => walk_secrets(t, &here, out),
                        toml::Value::String(s) if is_secret_key(k) && !s.is_empty() => {
                            out.push(Secret {
                                place: here,
                                value: s.clone(),
                            })
                        }
                        _ => {}
                    }
                }
            }
            toml::Value::String(s) if is_secret_key(k) && !s.is_empty() => out.push(Secret {
                place,
                value: s.clone(),
            }),
            _ => {}
        }
    }
}

/// Replace every secret value in `message` by `********`.
fn redact(message: &str, secrets: &[&str]) -> String {
    let mut out = message.to_string();
    for s in secrets {
        if !s.is_empty() {
            out = out.replace(s, "********");
        }
    }
    out
}

/// The password in a connection string, if any: `postgresql://user:PASSWORD@host/db`,
/// `?password=...`, or libpq `password=...`.
pub fn url_password(url: &str) -> Option<String> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        let rest = &url[url.find("://")? + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if let Some(at) = authority.rfind('@') {
            if let Some((_, pw)) = authority[..at].split_once(':') {
                if !pw.is_empty() {
                    return Some(pw.to_string());
                }
            }
        }
        let query = rest.split_once('?').map(|(_, q)| q).unwrap_or("");
        for pair in query.split('&') {
            if let Some((k, v)) = pair.split_once('=') {
                if k.eq_ignore_ascii_case("password") && !v.is_empty() {
                    return Some(v.to_string());
                }
            }
        }
        None
    } else if lower.starts_with("sqlite:") {
        None
    } else {
        conninfo_pairs(url)
            .into_iter()
            .find(|(k, v)| k.eq_ignore_ascii_case("password") && !v.is_empty())
            .map(|(_, v)| v)
    }
}

/// libpq `key=value` pairs (values may be single-quoted with `\` escapes).
fn conninfo_pairs(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n)
                        }
                    }
                    '\'' => break,
                    _ => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                    continue;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key, value));
    }
    out
}

/// A connection string safe to show: the password replaced by `********`.
pub fn redact_url(url: &str) -> String {
    match url_password(url) {
        Some(pw) => url.replace(&pw, "********"),
        None => url.to_string(),
    }
}

/// Spans of the keys [`Config::validate`] reports on (for line numbers).
#[derive(Default, Deserialize)]
struct SpanDoc {
    node: Option<toml::Spanned<toml::Value>>,
    db_timeout: Option<toml::Spanned<toml::Value>>,
    #[serde(default)]
    directory: Vec<SpannedTable>,
    mail: Option<SpannedTable>,
}

/// A table's span (from its first key).
#[derive(Default)]
struct SpannedTable {
    span: Option<std::ops::Range<usize>>,
}

impl<'de> Deserialize<'de> for SpannedTable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SpannedTable;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<SpannedTable, A::Error> {
                let mut span = None;
                while let Some(key) = map.next_key::<toml::Spanned<String>>()? {
                    if span.is_none() {
                        span = Some(key.span());
                    }
                    map.next_value::<IgnoredAny>()?;
                }
                Ok(SpannedTable { span })
            }
        }
        d.deserialize_map(V)
    }
}

/// Deserializes one top-level section of a document, ignoring the rest.
struct SectionVisitor<'a, T> {
    name: &'a str,
    _t: PhantomData<T>,
}

impl<'de, T: DeserializeOwned> Visitor<'de> for SectionVisitor<'_, T> {
    type Value = Option<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML document")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Option<T>, A::Error> {
        let mut out = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == self.name {
                out = Some(map.next_value::<T>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_passwords_in_connection_strings() {
        assert_eq!(
            url_password("postgresql://mail:s3cr%t@db.example:5432/mail").as_deref(),
            Some("s3cr%t")
        );
        assert_eq!(url_password("postgresql://mail@db/mail"), None);
        assert_eq!(
            url_password("postgres://db/mail?user=mail&password=pw").as_deref(),
            Some("pw")
        );
        assert_eq!(
            url_password("host=/run/postgresql dbname=mail user=mail password='a b\\'c'")
                .as_deref(),
            Some("a b'c")
        );
        assert_eq!(
            url_password("host=/run/postgresql dbname=mail user=mail"),
            None
        );
        assert_eq!(url_password("sqlite:/var/db/password=x"), None);
        assert_eq!(
            redact_url("postgresql://mail:pw1@db/mail"),
            "postgresql://mail:********@db/mail"
        );
    }

    #[test]
    fn secret_keys() {
        for k in [
            "password",
            "secret",
            "shared_secret",
            "db-password",
            "api_token",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "password_file",
            "secret_header",
            "default_password_scheme",
            "secret_path",
            "key",
            "user",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn node_check_suggests_the_fqdn() {
        let known: BTreeSet<String> = ["storage-01.domain.ru", "storage-02.domain.ru"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(check_node_against("storage-01.domain.ru", &known, true, "F").is_ok());
        assert!(check_node_against("x", &BTreeSet::new(), true, "F").is_ok());
        let e = check_node_against("storage-01", &known, false, "/etc/m.toml").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        let m = e.to_string();
        assert!(m.contains("node \"storage-01\""), "{m}");
        assert!(
            m.contains("storage-01.domain.ru, storage-02.domain.ru"),
            "{m}"
        );
        assert!(
            m.contains("set node = \"storage-01.domain.ru\" in /etc/m.toml"),
            "{m}"
        );
    }
}
