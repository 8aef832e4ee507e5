//! Connections to the directories, kept open between requests and shared by the request
//! threads. Every configured storage-role directory can answer an authentication (each
//! storage holds a full copy); they are tried in order, skipping for a while one that just
//! failed, so that losing a node does not stop logins.

use crate::config::{Config, Role};
use crate::directory::{self, Directory};
use crate::error::{Error, Result};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// After a temporary failure, try a directory last for this long.
const SUSPECT_FOR: Duration = Duration::from_secs(10);

struct Source {
    name: String,
    url: String,
    idle: Mutex<Vec<Box<dyn Directory>>>,
    suspect_until: Mutex<Option<Instant>>,
}

/// A pool of directory connections.
pub struct DirectoryPool {
    sources: Vec<Source>,
    timeout: Duration,
    max_idle: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl DirectoryPool {
    /// The storage-role directories of `config` (smtp-role copies hold no passwords).
    pub fn new(config: &Config, max_idle: usize) -> Result<DirectoryPool> {
        let sources: Vec<Source> = config
            .directories
            .iter()
            .filter(|d| d.role == Role::Storage)
            .map(|d| Source {
                name: d.name.clone(),
                url: d.url.clone(),
                idle: Mutex::new(Vec::new()),
                suspect_until: Mutex::new(None),
            })
            .collect();
        if sources.is_empty() {
            return Err(Error::config(
                "no storage-role [[directory]] configured (or give --db)",
            ));
        }
        Ok(DirectoryPool {
            sources,
            timeout: config.db_timeout(),
            max_idle: max_idle.max(1),
        })
    }

    /// Run `f` on a connection to the first directory that answers. A temporary error moves
    /// on to the next directory; the last error is returned when none answers.
    pub fn with<T>(&self, mut f: impl FnMut(&mut dyn Directory) -> Result<T>) -> Result<T> {
        let now = Instant::now();
        let mut order: Vec<&Source> = self.sources.iter().collect();
        // Stable: healthy ones first, in configured order.
        order.sort_by_key(|s| lock(&s.suspect_until).is_some_and(|t| t > now));
        let mut last: Option<Error> = None;
        for source in order {
            // A pooled connection may have died with its server: on a temporary failure
            // retry once on a fresh connection before moving on.
            let mut fresh_tried = false;
            while !fresh_tried {
                let pooled = lock(&source.idle).pop();
                let mut conn = match pooled {
                    Some(c) => c,
                    None => {
                        fresh_tried = true;
                        match directory::open(&source.url, self.timeout) {
                            Ok(c) => c,
                            Err(e) => {
                                log::warn!("directory {}: {e}", source.name);
                                if e.is_temporary() {
                                    *lock(&source.suspect_until) =
                                        Some(Instant::now() + SUSPECT_FOR);
                                }
                                last = Some(e);
                                break;
                            }
                        }
                    }
                };
                match f(conn.as_mut()) {
                    Ok(v) => {
                        *lock(&source.suspect_until) = None;
                        self.put_back(source, conn);
                        return Ok(v);
                    }
                    Err(e) if e.is_temporary() => {
                        // Drop the connection: it may be broken.
                        log::warn!("directory {}: {e}", source.name);
                        if fresh_tried {
                            *lock(&source.suspect_until) = Some(Instant::now() + SUSPECT_FOR);
                        } else {
                            // Stale pooled connections of this source are likely dead too.
                            lock(&source.idle).clear();
                        }
                        last = Some(e);
                    }
                    Err(e) => {
                        self.put_back(source, conn);
                        return Err(e);
                    }
                }
            }
        }
        Err(last
            .map(|e| {
                if e.is_temporary() {
                    e
                } else {
                    Error::temporary(format!("no directory answered: {e}"))
                }
            })
            .unwrap_or_else(|| Error::temporary("no directory answered")))
    }

    fn put_back(&self, source: &Source, conn: Box<dyn Directory>) {
        let mut idle = lock(&source.idle);
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }
}
