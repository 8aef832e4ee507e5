//! Configuration: TOML read from `--config PATH`, else `$MAILCLUSTER_CONFIG`, else the
//! system path (`/etc/mailcluster/mailcluster.toml`, `/usr/local/etc/...` on FreeBSD).
//! Shape: design §3.2. Sections owned by one binary (`[map]`, `[auth]`, `[sync]`, `[ctl]`)
//! are read by that binary's module with [`Config::section`], so that an error in them
//! still names the file and line.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// label), `{mdomain}` (the rest), `{mailbox}`.
    pub home: String,
    /// The Maildir, relative to the home directory.
    pub maildir: String,
    /// The mail root (the directory holding one directory per domain), for mailsync.
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
pub struct Config {
    /// This node's name as it appears in `maps.storage1` / `storage2`. Defaults to the host name.
    #[serde(default)]
    pub node: Option<String>,
    /// Bound on every database wait, in seconds (default 5).
    #[serde(default = "default_db_timeout")]
    pub db_timeout: f64,
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
    /// Parse configuration text; `path` is used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let mut config: Config = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
        config.source = Some((path.to_path_buf(), text.to_string()));
        Ok(config)
    }

    /// Read a configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!(
                "cannot read configuration file {}: {e} (give the path with --config)",
                path.display()
            ))
        })?;
        Self::parse(&text, path)
    }

    /// Deserialize one of the module-owned sections (`map`, `auth`, `sync`, `ctl`).
    /// Missing section → `T::default()`. Errors name the file and line.
    pub fn section<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T> {
        let Some((path, text)) = &self.source else {
            return Ok(T::default());
        };
        // Re-parse the whole document so that spans point into the real file.
        let doc: toml::Table = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
        match doc.get(name) {
            None => Ok(T::default()),
            Some(value) => T::deserialize(value.clone()).map_err(|e| {
                Error::config(format!(
                    "{}: in section [{name}]: {}",
                    path.display(),
                    e.message()
                ))
            }),
        }
    }

    /// Bound on database waits.
    pub fn db_timeout(&self) -> Duration {
        if self.db_timeout.is_finite() && self.db_timeout > 0.0 {
            Duration::from_secs_f64(self.db_timeout.min(3600.0))
        } else {
            crate::directory::DEFAULT_TIMEOUT
        }
    }
}

fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> Error {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    match line {
        Some(line) => Error::config(format!("{}:{line}: {}", path.display(), e.message())),
        None => Error::config(format!("{}: {}", path.display(), e.message())),
    }
}
