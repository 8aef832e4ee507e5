//! The receiver's durability pool: files written by the applier are made durable (an fsync
//! each, or one `syncfs` per batch) and message files renamed into place, off the thread that
//! reads the stream; directories are fsynced in parallel. [`Durability::barrier`] waits for
//! all of it.

use super::dirat::DirAt;
use super::fsops;
use crate::error::{Error, Result};
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Most message files written but not yet durable and renamed (open descriptors).
const QUEUE: usize = 256;
/// Threads making message files durable (fsync costs ~0.6-5 ms a file; they overlap).
const SYNC_THREADS: usize = 12;

/// Work for the durability pool.
pub(super) enum Job {
    /// fsync a message file written in `tmp/`, then rename it into place.
    Message {
        file: File,
        tmp: PathBuf,
        dest: PathBuf,
    },
    /// fsync a file written beside its destination (a control file, renamed later, under
    /// its lock, after the messages it describes).
    File { file: File, tmp: PathBuf },
    /// fsync a directory (renames and creations in it).
    Dir(PathBuf),
    /// [`SyncMode::Filesystem`]: `syncfs` the filesystem of `fs` (every file written on it
    /// so far), then rename these message files (`tmp`, `dest`) into place.
    Batch {
        fs: Arc<FsHandle>,
        moves: Vec<(PathBuf, PathBuf)>,
    },
}

/// What failed in the pool.
pub(super) enum Failure {
    /// A message that is not in place (its destination).
    Message(PathBuf, Error),
    /// A control file that is not durable (its temporary name).
    File(PathBuf, Error),
    Dir(Error),
    /// A filesystem sync failed: these message files are not in place (their destinations),
    /// and nothing written on that filesystem before it may be counted durable.
    Filesystem(Vec<PathBuf>, Error),
}

#[derive(Default)]
struct DurState {
    in_flight: usize,
    /// What finished since the last barrier.
    done: Settled,
}

/// What the pool did since the last barrier.
#[derive(Default)]
pub(super) struct Settled {
    /// Directories messages were renamed into (fsync each).
    pub(super) dirs: BTreeSet<PathBuf>,
    /// Messages were renamed into place by a batch (sync the filesystem).
    pub(super) fs_renamed: bool,
    pub(super) failures: Vec<Failure>,
}

/// A pool that makes written files durable (an fsync each, or a filesystem sync per batch)
/// and renames messages into place while the receiver goes on reading, and fsyncs
/// directories in parallel; [`Durability::barrier`] waits for all of it. One fsync at a time
/// costs ~0.3-5 ms here; in parallel they overlap.
pub(super) struct Durability {
    tx: Option<std::sync::mpsc::SyncSender<Job>>,
    rx: std::sync::Arc<std::sync::Mutex<std::sync::mpsc::Receiver<Job>>>,
    /// Started as needed (one more while every one is busy), up to [`SYNC_THREADS`]: a
    /// domain of a day's activity keeps a few busy, not twelve.
    workers: Vec<std::thread::JoinHandle<()>>,
    state: std::sync::Arc<(std::sync::Mutex<DurState>, std::sync::Condvar)>,
}

fn run_job(job: Job, st: &std::sync::Mutex<DurState>) {
    let outcome = match job {
        Job::Message { file, tmp, dest } => {
            let r = file
                .sync_all()
                .map_err(|e| Error::io(format!("fsync {}", tmp.display()), e))
                .and_then(|_| {
                    fs::rename(&tmp, &dest)
                        .map_err(|e| Error::io(format!("cannot rename to {}", dest.display()), e))
                });
            drop(file);
            match r {
                Ok(()) => Ok(dest.parent().map(Path::to_path_buf)),
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    Err(Failure::Message(dest, e))
                }
            }
        }
        Job::File { file, tmp } => match file.sync_all() {
            Ok(()) => Ok(None),
            Err(e) => Err(Failure::File(
                tmp.clone(),
                Error::io(format!("fsync {}", tmp.display()), e),
            )),
        },
        Job::Dir(dir) => fsops::sync_dir(&dir).map(|()| None).map_err(Failure::Dir),
        Job::Batch { fs, moves } => {
            let outcome = run_batch(&fs, moves);
            if let Ok(mut st) = st.lock() {
                let (renamed, failures) = outcome;
                st.done.fs_renamed |= renamed;
                st.done.failures.extend(failures);
                st.in_flight -= 1;
            }
            return;
        }
    };
    if let Ok(mut st) = st.lock() {
        match outcome {
            Ok(Some(d)) => {
                st.done.dirs.insert(d);
            }
            Ok(None) => {}
            Err(f) => st.done.failures.push(f),
        }
        st.in_flight -= 1;
    }
}

/// The domain directory, open, whose filesystem [`SyncMode::Filesystem`] syncs.
pub(super) struct FsHandle {
    dir: File,
    path: PathBuf,
    /// The same directory, for renames relative to it (see dirat).
    at: Option<DirAt>,
    pub(super) dev: u64,
}

impl FsHandle {
    pub(super) fn open(path: &Path) -> Option<FsHandle> {
        use std::os::unix::fs::MetadataExt;
        let dir = File::open(path).ok()?;
        let m = dir.metadata().ok()?;
        m.is_dir().then(|| FsHandle {
            dev: m.dev(),
            dir,
            path: path.to_path_buf(),
            at: DirAt::open(path).ok(),
        })
    }

    /// Rename `from` to `to` (absolute paths), relative to the directory when both are
    /// inside it.
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        fn inside<'a>(p: &'a Path, dir: &Path) -> Option<&'a str> {
            p.strip_prefix(dir).ok().and_then(Path::to_str)
        }
        match (&self.at, inside(from, &self.path), inside(to, &self.path)) {
            (Some(at), Some(f), Some(t)) => at.rename(f, t),
            _ => fs::rename(from, to),
        }
    }

    pub(super) fn sync(&self) -> Result<()> {
        fsops::sync_filesystem(&self.dir).map_err(|e| {
            Error::io(
                format!("syncfs of the filesystem of {}", self.path.display()),
                e,
            )
        })
    }
}

/// [`Job::Batch`]: (whether any file was renamed, the failures).
fn run_batch(fs: &FsHandle, moves: Vec<(PathBuf, PathBuf)>) -> (bool, Vec<Failure>) {
    if let Err(err) = fs.sync() {
        for (tmp, _) in &moves {
            let _ = fs::remove_file(tmp);
        }
        let dests = moves.into_iter().map(|(_, dest)| dest).collect();
        return (false, vec![Failure::Filesystem(dests, err)]);
    }
    let mut renamed = false;
    let mut failures = Vec::new();
    for (tmp, dest) in moves {
        match fs.rename(&tmp, &dest) {
            Ok(()) => renamed = true,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                let err = Error::io(format!("cannot rename to {}", dest.display()), e);
                failures.push(Failure::Message(dest, err));
            }
        }
    }
    (renamed, failures)
}

impl Durability {
    pub(super) fn new() -> Durability {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let state = std::sync::Arc::new((
            std::sync::Mutex::new(DurState::default()),
            std::sync::Condvar::new(),
        ));
        Durability {
            tx: Some(tx),
            rx,
            workers: Vec::new(),
            state,
        }
    }

    fn spawn_worker(&mut self) {
        let rx = self.rx.clone();
        let state = self.state.clone();
        self.workers.push(std::thread::spawn(move || loop {
            let next = match rx.lock() {
                Ok(r) => r.recv(),
                Err(_) => return,
            };
            let Ok(job) = next else { return };
            let (lock, cv) = &*state;
            run_job(job, lock);
            cv.notify_all();
        }));
    }

    pub(super) fn submit(&mut self, job: Job) -> Result<()> {
        self.try_submit(job)
            .map_err(|_| Error::internal("the fsync pool is gone"))
    }

    /// [`Durability::submit`], the job given back when the pool is gone.
    pub(super) fn try_submit(&mut self, job: Job) -> std::result::Result<(), Job> {
        let busy = match self.state.0.lock() {
            Ok(mut st) => {
                st.in_flight += 1;
                st.in_flight
            }
            Err(_) => usize::MAX,
        };
        if busy > self.workers.len() && self.workers.len() < SYNC_THREADS {
            self.spawn_worker();
        }
        let (lock, _) = &*self.state;
        let sent = match self.tx.as_ref() {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        };
        if sent.is_err() {
            if let Ok(mut st) = lock.lock() {
                st.in_flight -= 1;
            }
        }
        sent
    }

    /// Nothing submitted is still being done.
    pub(super) fn idle(&self) -> bool {
        self.state.0.lock().is_ok_and(|st| st.in_flight == 0)
    }

    /// [`Durability::barrier`], the failures as errors (the directories dropped).
    pub(super) fn barrier_errors(&self) -> Vec<Error> {
        self.barrier()
            .failures
            .into_iter()
            .map(|f| match f {
                Failure::Message(_, e)
                | Failure::File(_, e)
                | Failure::Dir(e)
                | Failure::Filesystem(_, e) => e,
            })
            .collect()
    }

    /// Wait for every submitted job.
    pub(super) fn barrier(&self) -> Settled {
        let (lock, cv) = &*self.state;
        let Ok(mut st) = lock.lock() else {
            return Settled::default();
        };
        while st.in_flight > 0 {
            st = match cv.wait(st) {
                Ok(s) => s,
                Err(_) => return Settled::default(),
            };
        }
        std::mem::take(&mut st.done)
    }
}

impl Drop for Durability {
    fn drop(&mut self) {
        self.tx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
