//! The sending end: one domain at a time over an open session.

use super::dirat::DirAt;
use super::entry::{needs_uidlist_lock, parent, Entry, Kind};
use super::fsops::UidlistLock;
use super::manifest::{self, Manifest, Record};
use super::ops::{encode_op, tag, Applier, Chunks, DataFrames};
use super::plan::{plan, Op, Rules};
use super::scan::{self, Cache, Filter, Scan};
use super::wire::{t, Conn, Dec, Enc, CHUNK, MAGIC, VERSION};
use crate::error::{Error, Result};
use crate::names::Domain;
use std::collections::{BTreeSet, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Files up to this size travel inline in an OPS frame.
const INLINE_MAX: u64 = 128 << 10;
/// An OPS frame is sent once it holds this much.
const FRAME_FILL: usize = 512 << 10;
/// Control files read whole under the uidlist lock are bounded.
const CONTROL_MAX: u64 = 256 << 20;

/// Settings of the sending end for one run.
#[derive(Debug, Clone)]
pub struct SendOptions {
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub node: String,
    pub filter: Filter,
    pub dry_run: bool,
    pub adopt: bool,
    /// How files adopted from the remote are made durable.
    pub sync: super::fsops::SyncMode,
}

/// What happened to one domain.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct DomainReport {
    pub domain: String,
    pub remote: String,
    /// The domain is in sync (conflicts, i.e. kept remote-only files, do not count).
    pub ok: bool,
    pub dry_run: bool,
    pub finished: u64,
    pub files_sent: u64,
    pub bytes_sent: u64,
    pub wire_bytes: u64,
    pub renames: u64,
    pub links: u64,
    pub deletes: u64,
    pub deletes_withheld: u64,
    pub conflicts: Vec<String>,
    pub adopted: u64,
    pub vanished: u64,
    pub trusted_record: bool,
    pub local_messages: u64,
    pub errors: Vec<String>,
    pub seconds: f64,
}

impl DomainReport {
    fn error(&mut self, msg: impl Into<String>) {
        self.ok = false;
        if self.errors.len() < 50 {
            self.errors.push(msg.into());
        }
    }
}

/// An open connection to a receiving `mailsync serve`.
pub struct Session {
    pub conn: Conn,
    pub remote_node: String,
    pub remote: String,
    /// Keeps the transport (child process, SSH session) alive.
    pub keep: Option<Box<dyn super::transport::Transport>>,
    /// The record of the previous domain being written (durably) while the next one
    /// starts; waited for before another is written and when the session closes.
    saving: Saving,
}

/// A record being written; waited for when dropped.
#[derive(Default)]
struct Saving(Option<std::thread::JoinHandle<()>>);

impl Saving {
    fn wait(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Saving {
    fn drop(&mut self) {
        self.wait();
    }
}

impl Session {
    /// Handshake over a fresh connection.
    pub fn start(
        mut conn: Conn,
        remote: String,
        compress: bool,
        keep: Option<Box<dyn super::transport::Transport>>,
    ) -> Result<Session> {
        let mut e = Enc::new();
        e.bytes(MAGIC).uv(u64::from(VERSION)).u8(u8::from(compress));
        conn.send_flush(t::HELLO, &e.buf)?;
        let p = conn.expect(t::HELLO_OK)?;
        let mut d = Dec::new(p);
        if d.bytes()? != MAGIC {
            return Err(Error::bad_input(
                "protocol error: the remote is not mailsync",
            ));
        }
        let _version = d.u32()?;
        let remote_node = d.string()?;
        // Capabilities (none used now).
        if !d.at_end() {
            let _caps = d.uv()?;
        }
        if compress {
            conn.compress()?;
        }
        Ok(Session {
            conn,
            remote_node,
            remote,
            keep,
            saving: Saving::default(),
        })
    }

    /// Wait for the record being written.
    pub fn wait_saved(&mut self) {
        self.saving.wait();
    }

    /// Say goodbye and wait for the transport to finish.
    pub fn close(mut self) -> Result<()> {
        self.wait_saved();
        let _ = self.conn.send_flush(t::BYE, &[]);
        drop(self.conn);
        match self.keep.take() {
            Some(mut k) => k.finish(),
            None => Ok(()),
        }
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// This end's view of a domain, made before the remote is asked (workers prepare the next
/// domain while the remote applies the current one): the scan, and when the node pair is
/// known, the record and the intent log.
pub struct Prepared {
    local: Scan,
    /// Message files in `local` (counted here, off the connection's critical path).
    messages: u64,
    record: Option<(String, Result<Option<Record>>, BTreeSet<String>)>,
    seconds: f64,
}

/// Scan `domain` here (saving its scan cache), and with `pair`, load its record.
pub fn prepare(opts: &SendOptions, domain: &Domain, pair: Option<&str>) -> Prepared {
    let start = Instant::now();
    let base = opts.root.join(domain.as_str());
    let cache_path = manifest::path_for(&opts.state_dir, domain.as_str(), "scan");
    let local = {
        let old = Cache::load(&cache_path);
        let (s, cache) = scan::scan(&base, &opts.filter, old);
        if !opts.dry_run && s.errors.is_empty() && cache.dirty {
            let _ = std::fs::create_dir_all(&opts.state_dir);
            let _ = cache.save(&cache_path, &s.entries);
        }
        s
    };
    // Lock sources (see fsops::LockSource) left by a killed run of ours.
    super::fsops::remove_stale_lock_sources(
        &base,
        local
            .leftovers
            .iter()
            .filter(|l| !l.contains('/'))
            .map(String::as_str),
    );
    let record = pair.map(|pair| load_record(opts, domain, pair, &local.entries));
    Prepared {
        messages: local.messages() as u64,
        local,
        record,
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// The intent log of `domain`: paths sent in a run that has not completed.
fn sent_path(opts: &SendOptions, domain: &Domain) -> PathBuf {
    manifest::path_for(&opts.state_dir, domain.as_str(), "sent")
}

/// Our record, held as "these local entries, plus what differs" (no second copy), and the
/// paths this end sent in runs that did not complete (an intent log written before the
/// operations go out: they came from here, so they are ours to delete).
fn load_record(
    opts: &SendOptions,
    domain: &Domain,
    pair: &str,
    local: &[Entry],
) -> (String, Result<Option<Record>>, BTreeSet<String>) {
    let manifest_path = manifest::path_for(&opts.state_dir, domain.as_str(), "manifest");
    let own = Manifest::load_against(&manifest_path, pair, local);
    let sent = load_sent(&sent_path(opts, domain), pair);
    (pair.to_string(), own, sent)
}

/// Synchronise one domain. Transport failures are errors (the session is unusable); all
/// else is in the report.
pub fn sync_domain(
    sess: &mut Session,
    opts: &SendOptions,
    domain: &Domain,
) -> Result<DomainReport> {
    sync_prepared(sess, opts, domain, None, None)
}

/// [`sync_domain`] with this end's view made beforehand by [`prepare`]. `next`: the domain
/// this session will send next, told to the remote so that it scans that one while it
/// applies this one.
pub fn sync_prepared(
    sess: &mut Session,
    opts: &SendOptions,
    domain: &Domain,
    prepared: Option<Prepared>,
    next: Option<&Domain>,
) -> Result<DomainReport> {
    let start = Instant::now();
    let wire0 = sess.conn.wire_bytes();
    let mut rep = DomainReport {
        domain: domain.to_string(),
        remote: sess.remote.clone(),
        ok: true,
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let r = sync_domain_inner(sess, opts, domain, prepared, next, &mut rep);
    rep.wire_bytes = sess.conn.wire_bytes() - wire0;
    rep.seconds = start.elapsed().as_secs_f64();
    rep.finished = now_unix();
    if let Err(e) = &r {
        rep.error(e.message().to_string());
    }
    if !opts.dry_run {
        if let Ok(json) = serde_json::to_vec_pretty(&rep) {
            let _ = super::fsops::write_file_atomic(
                &manifest::path_for(&opts.state_dir, domain.as_str(), "status"),
                &json,
                false,
            );
        }
    }
    r.map(|_| rep)
}

fn sync_domain_inner(
    sess: &mut Session,
    opts: &SendOptions,
    domain: &Domain,
    prepared: Option<Prepared>,
    next: Option<&Domain>,
    rep: &mut DomainReport,
) -> Result<()> {
    let base = opts.root.join(domain.as_str());
    let pair = manifest::pair_key(&opts.node, &sess.remote_node);
    std::fs::create_dir_all(&opts.state_dir).map_err(|e| {
        Error::io(
            format!("cannot create state directory {}", opts.state_dir.display()),
            e,
        )
    })?;
    let mut marks = Marks::new();
    let manifest_path = manifest::path_for(&opts.state_dir, domain.as_str(), "manifest");

    // Ask the remote.
    sess.conn
        .send_flush(t::DOMAIN, &domain_request(opts, domain, &pair, next).buf)?;
    // Local scan (unless made beforehand), while the remote scans its side.
    let prepared = prepared.unwrap_or_else(|| prepare(opts, domain, Some(&pair)));
    marks.mark("scan");
    marks.out.push(("prepared", prepared.seconds * 1e3));
    let local = prepared.local;
    rep.local_messages = prepared.messages;
    for e in &local.errors {
        rep.error(format!("local scan: {e}"));
    }
    let (own, sent_log) = match prepared.record {
        Some((p, own, sent)) if p == pair => (own?, sent),
        _ => {
            let (_, own, sent) = load_record(opts, domain, &pair, &local.entries);
            (own?, sent)
        }
    };
    let own_digest = own.as_ref().map(|m| m.digest.clone());
    let sent_path = sent_path(opts, domain);
    marks.mark("record");

    let (remote_digest, remote_has_record, _remote_missing) = {
        let p = sess.conn.expect(t::DOMAIN_INFO)?;
        let mut d = Dec::new(p);
        let status = d.u8()?;
        let msg = d.string()?;
        if status != 0 {
            rep.error(format!("remote refused: {msg}"));
            return Ok(());
        }
        (d.string()?, d.u8()? != 0, d.u8()? != 0)
    };
    marks.mark("wait-info");
    let mode: u8 = match &own {
        Some(m) if remote_has_record && m.digest == remote_digest => 0,
        _ if remote_has_record => 2,
        _ => 1,
    };
    sess.conn.send_flush(t::LIST_REQ, &[mode])?;
    let mut listed: Vec<Entry> = Vec::new();
    let mut removed: HashSet<String> = HashSet::new();
    let mut remote_record: Vec<Entry> = Vec::new();
    let remote_errors = loop {
        let (ty, p) = sess.conn.recv()?;
        let mut d = Dec::new(p);
        match ty {
            t::ENTRIES => {
                let section = d.u8()?;
                while !d.at_end() {
                    match section {
                        0 => listed.push(Entry::decode(&mut d)?),
                        1 => {
                            removed.insert(d.string()?);
                        }
                        2 => remote_record.push(Entry::decode(&mut d)?),
                        _ => return Err(Error::bad_input("protocol error: bad section")),
                    }
                }
            }
            t::LIST_END => {
                let n = d.uv()?;
                let mut errs = Vec::new();
                for _ in 0..n.min(50) {
                    errs.push(d.string()?);
                }
                break n.max(errs.len() as u64);
            }
            _ => {
                return Err(Error::bad_input(
                    "protocol error: unexpected frame in listing",
                ))
            }
        }
    };
    marks.mark("listing");
    if remote_errors > 0 {
        rep.error(format!("the remote could not list {remote_errors} item(s)"));
    }
    // The record of what was in sync, and the full remote listing: in mode 0 the record
    // plus the remote's changes, as references (no copy of the record).
    let local_entries = local.entries;
    remote_record.sort_by(|a, b| a.path.cmp(&b.path));
    let record: Option<Vec<&Entry>> = match mode {
        0 => own.as_ref().map(|r| r.entries(&local_entries)),
        2 => Some(remote_record.iter().collect()),
        _ => None,
    };
    listed.sort_by(|a, b| a.path.cmp(&b.path));
    let remote: Vec<&Entry> = match (mode, &record) {
        (0, Some(record)) => {
            // A merge of two sorted lists: the record minus what the remote removed or
            // changed, plus its changed entries.
            let mut removed: Vec<String> = removed.into_iter().collect();
            removed.sort_unstable();
            let mut r: Vec<&Entry> = Vec::with_capacity(record.len() + listed.len());
            let mut ch = listed.iter().peekable();
            let mut gone = removed.iter().peekable();
            for &e in record {
                while let Some(c) = ch.next_if(|c| c.path < e.path) {
                    r.push(c);
                }
                if ch.peek().is_some_and(|c| c.path == e.path) {
                    continue; // changed: the new version comes from `listed`
                }
                // Removed there (a merge: both sorted).
                while gone.next_if(|g| **g < e.path).is_some() {}
                if gone.peek().is_some_and(|g| **g == e.path) {
                    continue;
                }
                r.push(e);
            }
            r.extend(ch);
            r
        }
        _ => listed.iter().collect(),
    };
    // Paths this end sent in an interrupted run count as in sync (rare: a copy then).
    let placeholders: Vec<Entry> = sent_log.iter().map(|p| path_entry(p)).collect();
    let with_sent: Option<Vec<&Entry>> = if placeholders.is_empty() {
        None
    } else {
        let mut s: Vec<&Entry> = record.clone().unwrap_or_default();
        s.extend(placeholders.iter());
        s.sort_by(|a, b| a.path.cmp(&b.path));
        s.dedup_by(|a, b| a.path == b.path);
        Some(s)
    };
    let synced: Option<&[&Entry]> = with_sent.as_deref().or(record.as_deref());
    rep.trusted_record = synced.is_some();

    // Safety rules for deletes.
    let local_has_files = local_entries.iter().any(|e| e.kind != Kind::Dir);
    let remote_has_files = remote.iter().any(|e| e.kind != Kind::Dir);
    let mut allow_delete = local.errors.is_empty() && !local.missing;
    if !local_has_files && remote_has_files {
        allow_delete = false;
        rep.error(if local.missing {
            format!(
                "the local domain directory {} is missing but the remote has files; nothing deleted",
                base.display()
            )
        } else {
            "the local domain is empty but the remote is not; nothing deleted".to_string()
        });
    }
    let p = plan(
        &local_entries,
        &remote,
        synced,
        Rules {
            allow_delete,
            adopt: opts.adopt,
        },
    );
    marks.mark("plan");
    // Remote paths that stay but are not ours (conflicts, withheld deletes, remote-only
    // directories): left out of both records.
    let mut exclusions: Vec<String> = p.remote_only.iter().map(|e| e.path.clone()).collect();
    for pr in &p.problems {
        rep.error(pr.clone());
    }
    rep.deletes_withheld = p.withheld as u64;
    rep.conflicts = p.conflicts.iter().map(|e| e.path.clone()).collect();
    let fetch: Vec<String> = p.fetch.iter().map(|e| e.path.clone()).collect();
    if opts.dry_run {
        rep.files_sent = p.puts() as u64;
        rep.bytes_sent = p.put_bytes();
        rep.renames = p.renames() as u64;
        rep.links = p.links() as u64;
        rep.deletes = p.deletes() as u64;
        sess.conn.send_flush(t::ABORT, &[])?;
        return Ok(());
    }

    // Record what is about to be sent before it goes out (the paths of earlier
    // interrupted runs stay in the log).
    let new_paths = p.ops.iter().filter_map(|op| match op {
        Op::Put(e) | Op::Link { to: e, .. } => Some(e.path.as_str()),
        Op::Rename { to, .. } => Some(*to),
        _ => None,
    });
    let mut new_paths = new_paths.peekable();
    if new_paths.peek().is_some() {
        save_sent(
            &sent_path,
            &pair,
            sent_log.iter().map(String::as_str).chain(new_paths),
        )?;
    }
    drop(sent_log);

    // Stream the operations. Files whose attributes changed since the scan are recorded
    // as read; vanished files are left out of the record.
    let mut updates: Vec<(usize, Entry)> = Vec::new();
    let mut gone: Vec<usize> = Vec::new();
    // One frame buffer, sized once (a frame is sent past FRAME_FILL: at most that plus one
    // inline file), reused: no growth by doubling.
    let mut frame = Enc::with_capacity(FRAME_FILL + INLINE_MAX as usize + (4 << 10));
    // Control files are read under Dovecot's uidlist lock, taken by linking this file.
    let lock_source = if p
        .ops
        .iter()
        .any(|op| matches!(op, Op::Put(e) if needs_uidlist_lock(&e.path)))
    {
        super::fsops::LockSource::create(&base).ok()
    } else {
        None
    };
    // Files are opened relative to the domain directory (see dirat).
    let at = if p.ops.iter().any(|op| matches!(op, Op::Put(_))) {
        DirAt::open(&base).ok()
    } else {
        None
    };
    for op in &p.ops {
        match op {
            Op::Put(entry) => {
                let i = local_entries
                    .binary_search_by(|e| e.path.as_str().cmp(&entry.path))
                    .ok();
                match send_put(
                    &mut sess.conn,
                    &mut frame,
                    &base,
                    at.as_ref(),
                    entry,
                    lock_source.as_ref(),
                )? {
                    Some(sent) => {
                        rep.files_sent += 1;
                        rep.bytes_sent += sent.size;
                        if let Some(i) = i {
                            if sent != **entry {
                                updates.push((i, sent));
                            }
                        }
                    }
                    None => {
                        rep.vanished += 1;
                        if let Some(i) = i {
                            gone.push(i);
                        }
                    }
                }
            }
            other => {
                match other {
                    Op::Rename { .. } => rep.renames += 1,
                    Op::Link { .. } => rep.links += 1,
                    Op::Delete(_) => rep.deletes += 1,
                    _ => {}
                }
                encode_op(other, &mut frame);
            }
        }
        if frame.len() > FRAME_FILL {
            sess.conn.send(t::OPS, &frame.buf)?;
            frame.buf.clear();
        }
    }
    if !frame.is_empty() {
        sess.conn.send(t::OPS, &frame.buf)?;
    }
    drop(frame);
    drop(lock_source);
    drop(p);
    drop(remote);
    drop(with_sent);
    drop(record);
    drop(own);
    drop(placeholders);
    drop(remote_record);
    drop(listed);
    marks.mark("ops");
    sess.conn.send_flush(t::END_OPS, &[])?;
    {
        let p = sess.conn.expect(t::OPS_RESULT)?;
        let mut d = Dec::new(p);
        let _applied = d.uv()?;
        let nerr = d.uv()?;
        let n = d.uv()?;
        for _ in 0..n.min(50) {
            let m = d.string()?;
            rep.error(format!("remote: {m}"));
        }
        if nerr > n {
            rep.error(format!("remote: {} more error(s)", nerr - n));
        }
    }
    marks.mark("wait-apply");
    let mut local_entries = local_entries;
    for (i, e) in updates {
        local_entries[i] = e;
    }
    if !gone.is_empty() {
        gone.sort_unstable();
        let mut i = 0;
        local_entries.retain(|_| {
            i += 1;
            gone.binary_search(&(i - 1)).is_err()
        });
    }

    // Copy remote-only files back here.
    let mut adopted: HashSet<String> = HashSet::new();
    if !fetch.is_empty() && rep.ok {
        let mut e = Enc::new();
        e.uv(fetch.len() as u64);
        for f in &fetch {
            e.str(f);
        }
        sess.conn.send_flush(t::FETCH, &e.buf)?;
        let mut applier = Applier::new(base.clone(), Vec::new()).with_sync(opts.sync);
        for f in &fetch {
            let payload = sess.conn.expect(t::FILE)?;
            let mut d = Dec::new(payload);
            if d.u8()? != 0 {
                let m = d.string()?;
                rep.error(format!("adopting {}: {m}", f));
                continue;
            }
            let entry = Entry::decode(&mut d)?;
            if entry.path != *f {
                return Err(Error::bad_input("protocol error: unexpected file"));
            }
            let target = base.join(&entry.path);
            let parent_ok = super::fsops::check_rel(&entry.path).is_ok()
                && target
                    .parent()
                    .is_some_and(|p| std::fs::create_dir_all(p).is_ok());
            let exists = std::fs::symlink_metadata(&target).is_ok();
            // A connection failure mid-file fails the put (nothing half-written is kept)
            // and then the domain: the stream is out of step.
            let lost = |e: Error| Error::temporary(e.message().to_string());
            let mut chunks = DataFrames::new(&mut sess.conn);
            if !parent_ok || exists {
                chunks.drain();
                if let Some(e) = chunks.failed.take() {
                    return Err(lost(e));
                }
                if !exists {
                    rep.error(format!("adopting {}: cannot create its directory", f));
                }
                continue;
            }
            let r = applier.put(entry.clone(), &mut chunks);
            chunks.drain();
            if let Some(e) = chunks.failed.take() {
                return Err(lost(e));
            }
            match r {
                Ok(()) => {
                    adopted.insert(entry.path.clone());
                }
                Err(err) => rep.error(format!("adopting {}: {}", f, err.message())),
            }
        }
        sess.conn.expect(t::FETCH_END)?;
        applier.flush();
        for err in &applier.errors {
            rep.error(format!("adopting: {err}"));
        }
        if applier.error_count > 0 {
            adopted.clear();
        }
        for e in applier.tree.into_added() {
            if adopted.contains(&e.path) {
                local_entries.push(e);
            }
        }
        rep.adopted = adopted.len() as u64;
        rep.conflicts.retain(|c| !adopted.contains(c));
    }

    if !rep.ok {
        sess.conn.send_flush(t::ABORT, &[])?;
        return Ok(());
    }
    // Commit: both ends record what is now in sync.
    exclusions.retain(|x| !adopted.contains(x));
    // COMMIT frames: `more u8`, count, paths (split to stay under the frame bound).
    for (i, chunk) in exclusions.chunks(10_000).enumerate() {
        let mut e = Enc::new();
        e.u8(1).uv(chunk.len() as u64);
        for c in chunk {
            e.str(c);
        }
        if i == 0 || !chunk.is_empty() {
            sess.conn.send(t::COMMIT, &e.buf)?;
        }
    }
    sess.conn.send_flush(t::COMMIT, &[0, 0])?;
    // The local listing, with directories created for adopted files (made while the remote
    // makes its own).
    let m = Manifest::new(&pair, local_entries);
    let remote_digest = {
        let p = sess.conn.expect(t::COMMIT_OK)?;
        let mut d = Dec::new(p);
        let status = d.u8()?;
        let v = d.string()?;
        if status != 0 {
            rep.error(format!("remote could not record the sync: {v}"));
            return Ok(());
        }
        v
    };
    marks.mark("commit");
    if m.digest != remote_digest {
        rep.error(
            "the two ends disagree on what is in sync (a file changed during the run?); \
             the next run compares full listings",
        );
        let _ = std::fs::remove_file(&manifest_path);
        return Ok(());
    }
    // Written by a helper thread while the next domain starts (one at a time). Until it
    // is, the old record stays, whose digest no longer matches the remote's: a run that
    // found it so (after a crash) would compare full listings, as after any interrupted
    // commit; the intent log is removed only once the record is durable.
    sess.wait_saved();
    let unchanged = own_digest.as_deref() == Some(m.digest.as_str());
    let domain_name = domain.to_string();
    sess.saving.0 = Some(std::thread::spawn(move || {
        if !unchanged {
            if let Err(e) = m.save(&manifest_path) {
                log::warn!("{domain_name}: {}", e.message());
                return;
            }
        }
        let _ = std::fs::remove_file(&sent_path);
    }));
    marks.mark("save");
    marks.report_to_stderr(domain.as_str());
    Ok(())
}

/// Time spent in each phase of a domain, printed to stderr when `MAILSYNC_PHASES` is set
/// (profiling aid: BENCHMARKS.md).
pub(crate) struct Marks {
    last: Instant,
    out: Vec<(&'static str, f64)>,
}

impl Marks {
    pub(crate) fn report_to_stderr(&self, what: &str) {
        if std::env::var_os("MAILSYNC_PHASES").is_some() {
            eprintln!("{what}: phases {}", self.report());
        }
    }

    pub(crate) fn new() -> Marks {
        Marks {
            last: Instant::now(),
            out: Vec::new(),
        }
    }
    pub(crate) fn mark(&mut self, what: &'static str) {
        let now = Instant::now();
        self.out
            .push((what, now.duration_since(self.last).as_secs_f64() * 1e3));
        self.last = now;
    }
    fn report(&self) -> String {
        self.out
            .iter()
            .map(|(w, ms)| format!("{w}={ms:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The DOMAIN request: name, this end's directory entry (mode and
/// owner for a new directory), dry run, node pair, excludes, and the domain to come next in
/// this session (empty: none; a receiver that does not know this field ignores it).
fn domain_request(opts: &SendOptions, domain: &Domain, pair: &str, next: Option<&Domain>) -> Enc {
    let base = opts.root.join(domain.as_str());
    let mut e = Enc::new();
    e.str(domain.as_str());
    let local_dir = std::fs::symlink_metadata(&base)
        .ok()
        .map(|m| scan::entry_from_meta(String::new(), &m, None));
    let dir_entry = local_dir.unwrap_or_else(Entry::bare_dir);
    dir_entry.encode(&mut e);
    e.u8(u8::from(opts.dry_run)).str(pair);
    e.uv(opts.filter.excludes.len() as u64);
    for x in &opts.filter.excludes {
        e.str(x);
    }
    e.str(next.map_or("", |d| d.as_str()));
    e
}

/// Send one file. Returns the entry as sent (attributes at read time), or None when the
/// file vanished (renamed by a reader since the scan: the next run picks up its new name).
fn send_put(
    conn: &mut Conn,
    frame: &mut Enc,
    base: &Path,
    at: Option<&DirAt>,
    entry: &Entry,
    lock_source: Option<&super::fsops::LockSource>,
) -> Result<Option<Entry>> {
    let abs = base.join(&entry.path);
    let open = || match at {
        Some(at) => at.open_read(&entry.path),
        None => super::fsops::open_read(&abs),
    };
    if entry.kind == Kind::Symlink {
        frame.u8(tag::PUT_INLINE);
        entry.encode(frame);
        frame.bytes(&[]);
        return Ok(Some(entry.clone()));
    }
    if needs_uidlist_lock(&entry.path) {
        // Read consistently: Dovecot's own lock, held briefly.
        let read = {
            let _lock = match at {
                Some(at) => UidlistLock::acquire_at(at, parent(&entry.path), lock_source)?,
                None => UidlistLock::acquire(abs.parent().unwrap_or(Path::new(".")))?,
            };
            open().and_then(|f| super::fsops::read_bounded_from(f, CONTROL_MAX))
        };
        return match read {
            Ok((data, meta)) => {
                let sent = with_meta(entry, &meta);
                frame.u8(tag::PUT_INLINE);
                sent.encode(frame);
                frame.bytes(&data);
                Ok(Some(sent))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("cannot read {}", abs.display()), e)),
        };
    }
    let mut f = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("cannot open {}", abs.display()), e)),
    };
    let meta = f
        .metadata()
        .map_err(|e| Error::io(format!("cannot stat {}", abs.display()), e))?;
    let mut sent = with_meta(entry, &meta);
    if meta.len() <= INLINE_MAX {
        let mut data = Vec::with_capacity(meta.len() as usize);
        Read::by_ref(&mut f)
            .take(INLINE_MAX + 1)
            .read_to_end(&mut data)
            .map_err(|e| Error::io(format!("cannot read {}", abs.display()), e))?;
        if data.len() as u64 <= INLINE_MAX {
            sent.size = data.len() as u64;
            frame.u8(tag::PUT_INLINE);
            sent.encode(frame);
            frame.bytes(&data);
            return Ok(Some(sent));
        }
        // Grew while reading: stream what we have and the rest.
        return stream_put(conn, frame, &mut f, sent, data, &abs).map(Some);
    }
    stream_put(conn, frame, &mut f, sent, Vec::new(), &abs).map(Some)
}

fn stream_put(
    conn: &mut Conn,
    frame: &mut Enc,
    f: &mut std::fs::File,
    mut sent: Entry,
    first: Vec<u8>,
    abs: &Path,
) -> Result<Entry> {
    frame.u8(tag::PUT_STREAM);
    sent.encode(frame);
    conn.send(t::OPS, &frame.buf)?;
    frame.buf.clear();
    let mut size = first.len() as u64;
    if !first.is_empty() {
        conn.send(t::DATA, &first)?;
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match f.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                // End the stream so the receiver stays in step, then fail the session.
                conn.send(t::DATA, &[])?;
                return Err(Error::io(format!("cannot read {}", abs.display()), e));
            }
        };
        if n == 0 {
            break;
        }
        size += n as u64;
        conn.send(t::DATA, &buf[..n])?;
    }
    conn.send(t::DATA, &[])?;
    sent.size = size;
    Ok(sent)
}

fn path_entry(path: &str) -> Entry {
    Entry {
        path: path.to_string(),
        kind: Kind::File,
        size: 0,
        mtime: 0,
        mtime_ns: 0,
        mode: 0,
        uid: 0,
        gid: 0,
        ino: 0,
        target: None,
    }
}

const SENT_MAGIC: &[u8] = b"mailsync-sent 1\n";

fn load_sent(path: &Path, pair: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let Ok(data) = std::fs::read(path) else {
        return out;
    };
    let Some(rest) = data.strip_prefix(SENT_MAGIC) else {
        return out;
    };
    let mut d = Dec::new(rest);
    if d.str().ok() != Some(pair) {
        return out;
    }
    while !d.at_end() {
        match d.string() {
            Ok(p) => {
                out.insert(p);
            }
            Err(_) => break,
        }
    }
    out
}

/// Written before the operations go out, without waiting for the disk: it is read back
/// after an interrupted run (a killed process, a cut connection), for which the page cache
/// keeps it. Lost to an OS crash, the paths it held count as never synced: kept on the
/// remote and reported as conflicts, never deleted.
fn save_sent<'a>(path: &Path, pair: &str, paths: impl Iterator<Item = &'a str>) -> Result<()> {
    super::fsops::write_file_atomic_with(path, false, |w| {
        let mut e = Enc::new();
        e.buf.extend_from_slice(SENT_MAGIC);
        e.str(pair);
        for p in paths {
            e.str(p);
            if e.len() >= 64 << 10 {
                w.write_all(&e.buf)?;
                e.buf.clear();
            }
        }
        w.write_all(&e.buf)
    })
}

fn with_meta(entry: &Entry, meta: &std::fs::Metadata) -> Entry {
    let mut e = scan::entry_from_meta(entry.path.clone(), meta, None);
    e.ino = entry.ino;
    e
}
