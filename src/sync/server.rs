//! `mailsync serve`: the receiving end. Reads frames from stdin, writes to stdout, scans its
//! own disk and applies the sender's operations locally, never outside `--root`.

use super::entry::Entry;
use super::manifest::{self, Manifest, Record};
use super::ops::{Applier, Chunks, DataFrames, Pool};
use super::scan::{self, Cache, Filter};
use super::wire::{t, Conn, Dec, Enc, CAPS, CHUNK, MAGIC, VERSION};
use crate::error::{Error, Result};
use crate::names::{Domain, Strictness};
use std::collections::HashSet;
use std::io::Read;
use std::path::PathBuf;

/// Decides whether this node may receive a domain (fencing). Err = refuse.
pub type Fence = Box<dyn FnMut(&Domain) -> Result<()> + Send>;

/// Settings of the receiving end.
pub struct ServeOptions {
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub node: String,
    pub fence: Option<Fence>,
    /// How received files are made durable.
    pub sync: super::fsops::SyncMode,
}

/// Serve one connection until the sender says goodbye.
pub fn serve(conn: &mut Conn, mut opts: ServeOptions) -> Result<()> {
    let root_meta = std::fs::metadata(&opts.root)
        .map_err(|e| Error::config(format!("mail root {}: {e}", opts.root.display())))?;
    if !root_meta.is_dir() {
        return Err(Error::config(format!(
            "mail root {} is not a directory",
            opts.root.display()
        )));
    }
    let compress = {
        let p = conn.expect(t::HELLO)?;
        let mut d = Dec::new(p);
        let magic = d.bytes()?;
        if magic != MAGIC {
            return Err(Error::bad_input("protocol error: not a mailsync sender"));
        }
        let version = d.u32()?;
        if version != VERSION {
            let mut e = Enc::new();
            e.str(&format!(
                "protocol version {version} not supported (this end speaks {VERSION})"
            ));
            conn.send_flush(t::ERROR, &e.buf)?;
            return Err(Error::bad_input("protocol version mismatch"));
        }
        d.u8()? != 0
    };
    let mut e = Enc::new();
    e.bytes(MAGIC)
        .uv(u64::from(VERSION))
        .str(&opts.node)
        .uv(CAPS);
    conn.send_flush(t::HELLO_OK, &e.buf)?;
    if compress {
        conn.compress()?;
    }
    // The record of the last committed domain, written by a thread while the next one
    // starts (one at a time; waited for at the end).
    let mut saving = RecordSave::default();
    // The durability pool's threads, kept from one domain to the next.
    let mut pool = None;
    // The next domain's view, made while this one is applied.
    let mut ahead = None;
    loop {
        let (ty, payload) = conn.recv()?;
        match ty {
            t::BYE => return Ok(()),
            t::DOMAIN => {
                let payload = payload.to_vec();
                serve_domain(
                    conn,
                    &mut opts,
                    &payload,
                    &mut saving,
                    &mut pool,
                    &mut ahead,
                )?;
            }
            _ => return Err(Error::bad_input("protocol error: unexpected frame")),
        }
    }
}

/// A record being written in the background, and where.
#[derive(Default)]
struct RecordSave(Option<(PathBuf, std::thread::JoinHandle<()>)>);

impl RecordSave {
    /// Wait for the record being written (all of them, or only the one at `path`).
    fn wait(&mut self, path: Option<&std::path::Path>) {
        if path.is_some_and(|p| self.0.as_ref().is_some_and(|(q, _)| q != p)) {
            return;
        }
        if let Some((_, h)) = self.0.take() {
            let _ = h.join();
        }
    }

    /// Write `m` at `path` once the previous record is written. The commit is answered
    /// before: a record that is not written (the process dies, the disk fails) leaves the
    /// previous one, which only claims what was in sync then (the next run compares full
    /// listings), or none (nothing deleted).
    fn start(&mut self, m: Manifest, path: PathBuf) {
        self.wait(None);
        let p = path.clone();
        self.0 = Some((
            path,
            std::thread::spawn(move || {
                if let Err(e) = m.save_lazily(&p) {
                    log::warn!("{}", e.message());
                }
            }),
        ));
    }
}

impl Drop for RecordSave {
    fn drop(&mut self) {
        self.wait(None);
    }
}

/// A DOMAIN request.
struct Request {
    name: String,
    dir_entry: Entry,
    dry_run: bool,
    pair: String,
    excludes: Vec<String>,
    /// The domain the sender will ask for next (a sender that does not say: None).
    next: Option<String>,
}

fn parse_request(payload: &[u8]) -> Result<Request> {
    let mut d = Dec::new(payload);
    let name = d.string()?;
    let dir_entry = Entry::decode(&mut d)?;
    let dry_run = d.u8()? != 0;
    let pair = d.string()?;
    let n = d.uv()?.min(10_000);
    let mut excludes = Vec::new();
    for _ in 0..n {
        excludes.push(d.string()?);
    }
    let next = match d.at_end() {
        true => None,
        false => Some(d.string()?).filter(|n| !n.is_empty()),
    };
    Ok(Request {
        name,
        dir_entry,
        dry_run,
        pair,
        excludes,
        next,
    })
}

/// This end's view of a domain: its listing, the listing cache to save, its record.
struct View {
    listing: scan::Scan,
    cache: Cache,
    record: Result<Option<Record>>,
}

/// Scan a domain and load its record (no change to anything: the scan cache is saved by
/// the caller, after the fencing check).
fn view(
    base: &std::path::Path,
    cache_path: &std::path::Path,
    manifest_path: &std::path::Path,
    excludes: &[String],
    pair: &str,
) -> View {
    let filter = Filter::new(excludes.to_vec(), true);
    let (listing, cache) = scan::scan(base, &filter, Cache::load(cache_path));
    let record = Manifest::load_against(manifest_path, pair, &listing.entries);
    View {
        listing,
        cache,
        record,
    }
}

/// The view of the domain the sender said comes next, made by a thread while the current
/// one is applied (the sender waits for a domain's view before it can plan it). Only
/// reading: a domain this node must not receive is refused when asked for, as ever.
struct Ahead {
    name: String,
    pair: String,
    excludes: Vec<String>,
    view: std::thread::JoinHandle<View>,
}

impl Ahead {
    /// Start the view of `req.next` (not the domain of `req` itself: that one changes
    /// now), its record first written when it is the one being saved.
    fn start(opts: &ServeOptions, req: &Request, saving: &mut RecordSave) -> Option<Ahead> {
        let name = req.next.as_deref().filter(|n| *n != req.name)?;
        let domain = Domain::parse(name, Strictness::Admin).ok()?;
        let base = opts.root.join(domain.as_str());
        let cache_path = manifest::path_for(&opts.state_dir, domain.as_str(), "scan");
        let manifest_path = manifest::path_for(&opts.state_dir, domain.as_str(), "manifest");
        saving.wait(Some(&manifest_path));
        let (excludes, pair) = (req.excludes.clone(), req.pair.clone());
        let (x, p) = (excludes.clone(), pair.clone());
        let view = std::thread::Builder::new()
            .name("scan-ahead".into())
            .spawn(move || view(&base, &cache_path, &manifest_path, &x, &p))
            .ok()?;
        Some(Ahead {
            name: name.to_string(),
            pair,
            excludes,
            view,
        })
    }

    /// The view, when it was made for this request, of a directory that existed then.
    fn take(self, req: &Request) -> Option<View> {
        let fits = self.name == req.name && self.pair == req.pair && self.excludes == req.excludes;
        let v = self.view.join().ok()?;
        (fits && !v.listing.missing).then_some(v)
    }
}

fn send_error_info(conn: &mut Conn, msg: &str) -> Result<()> {
    let mut e = Enc::new();
    e.u8(1).str(msg).str("").u8(0).u8(0);
    conn.send_flush(t::DOMAIN_INFO, &e.buf)
}

fn serve_domain(
    conn: &mut Conn,
    opts: &mut ServeOptions,
    payload: &[u8],
    saving: &mut RecordSave,
    pool: &mut Option<Pool>,
    ahead: &mut Option<Ahead>,
) -> Result<()> {
    let req = parse_request(payload)?;
    let mut made_ahead = ahead.take();
    let Request {
        name,
        dir_entry,
        dry_run,
        pair,
        ..
    } = &req;
    let (name, dir_entry, dry_run, pair) = (name.as_str(), dir_entry, *dry_run, pair.as_str());
    let domain = match Domain::parse(name, Strictness::Admin) {
        Ok(dm) => dm,
        Err(_) => {
            return send_error_info(
                conn,
                &format!(
                    "{:?} is not a valid domain name",
                    crate::names::printable(name)
                ),
            )
        }
    };
    if let Some(fence) = opts.fence.as_mut() {
        if let Err(e) = fence(&domain) {
            log::warn!("refusing domain {domain}: {}", e.message());
            return send_error_info(conn, e.message());
        }
    }
    let base = opts.root.join(domain.as_str());
    // A view made ahead is of a directory that was there then, and still is.
    match std::fs::symlink_metadata(&base) {
        Ok(m) if !m.file_type().is_dir() => {
            return send_error_info(
                conn,
                &format!(
                    "{} is not a directory (symlinks are not followed)",
                    base.display()
                ),
            );
        }
        Ok(_) => {}
        Err(_) if !dry_run => {
            made_ahead = None;
            if let Err(e) = std::fs::create_dir(&base) {
                return send_error_info(conn, &format!("cannot create {}: {e}", base.display()));
            }
            let _ = std::os::unix::fs::lchown(&base, Some(dir_entry.uid), Some(dir_entry.gid));
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(
                &base,
                std::fs::Permissions::from_mode(dir_entry.mode & 0o7777),
            );
        }
        Err(_) => made_ahead = None,
    }
    let _ = std::fs::create_dir_all(&opts.state_dir);
    let cache_path = manifest::path_for(&opts.state_dir, domain.as_str(), "scan");
    let manifest_path = manifest::path_for(&opts.state_dir, domain.as_str(), "manifest");
    let mut marks = super::client::Marks::new();
    // The same domain again in this session: its record as last committed.
    saving.wait(Some(&manifest_path));
    let View {
        listing,
        cache,
        record,
    } = match made_ahead.and_then(|a| a.take(&req)) {
        Some(v) => v,
        None => view(&base, &cache_path, &manifest_path, &req.excludes, pair),
    };
    if !dry_run && cache.dirty {
        let _ = cache.save(&cache_path, &listing.entries);
    }
    drop(cache);
    // Leftovers of an interrupted run: remove them.
    // (A lock source is removed only when its process is gone.)
    for l in &listing.leftovers {
        if super::entry::file_name(l).starts_with(super::fsops::LOCK_SOURCE_PREFIX) {
            let dir = base.join(super::entry::parent(l));
            super::fsops::remove_stale_lock_sources(
                &dir,
                std::iter::once(super::entry::file_name(l)),
            );
        } else if super::fsops::check_rel(l).is_ok() {
            let _ = std::fs::remove_file(base.join(l));
        }
    }
    // The record, loaded against the listing: entries equal to a listed one are not kept
    // twice, and those are, by construction, unchanged since the record.
    let record = record?;
    let mut e = Enc::new();
    e.u8(0)
        .str("")
        .str(record.as_ref().map_or("", |m| m.digest.as_str()))
        .u8(u8::from(record.is_some()))
        .u8(u8::from(listing.missing));
    marks.mark("prep");
    conn.send_flush(t::DOMAIN_INFO, &e.buf)?;
    *ahead = Ahead::start(opts, &req, saving);

    // Listing.
    let mode = {
        let p = conn.expect(t::LIST_REQ)?;
        Dec::new(p).u8()?
    };
    match (mode, &record) {
        (0, Some(m)) => {
            // Changed: listed entries that are not the recorded one (the few the record
            // holds apart, `extra`, sorted by path, are searched).
            let find = |list: &'_ [Entry], path: &str| {
                list.binary_search_by(|e| e.path.as_str().cmp(path)).ok()
            };
            let changed = listing
                .entries
                .iter()
                .zip(&m.in_local)
                .filter(|(_, &same)| !same)
                .map(|(e, _)| e)
                .filter(|e| !matches!(find(&m.extra, &e.path), Some(i) if m.extra[i].same(e)));
            send_entries(conn, 0, changed)?;
            let removed: Vec<&str> = m
                .extra
                .iter()
                .map(|e| e.path.as_str())
                .filter(|p| find(&listing.entries, p).is_none())
                .collect();
            send_paths(conn, 1, &removed)?;
        }
        _ => {
            send_entries(conn, 0, listing.entries.iter())?;
            if mode == 2 {
                if let Some(m) = &record {
                    send_entries(conn, 2, m.entries(&listing.entries).into_iter())?;
                }
            }
        }
    }
    let mut e = Enc::new();
    e.uv(listing.errors.len() as u64);
    for err in listing.errors.iter().take(50) {
        e.str(err);
    }
    conn.send_flush(t::LIST_END, &e.buf)?;
    marks.mark("list");
    let old_digest = record.map(|m| m.digest);

    // Operations.
    let mut applier = Applier::new(base.clone(), listing.entries)
        .with_pool(pool.take())
        .with_sync(opts.sync);
    loop {
        let (ty, _) = conn.recv()?;
        match ty {
            t::ABORT => {
                applier.flush();
                *pool = applier.take_pool();
                return Ok(());
            }
            t::OPS => {
                // The frame's buffer, taken from the connection (no copy), given back after.
                let frame = conn.take_frame();
                let mut d = Dec::new(frame.get(1..).unwrap_or_default());
                while !d.at_end() {
                    if let Some(entry) = applier.apply_record(&mut d)? {
                        // Stream: DATA frames until an empty one.
                        let mut chunks = DataFrames::new(conn);
                        let r = applier.put(entry, &mut chunks);
                        // Make sure the stream is consumed to its end.
                        chunks.drain();
                        if let Some(err) = chunks.failed.take() {
                            return Err(err);
                        }
                        applier.done(r);
                    }
                }
                conn.give_back(frame);
            }
            t::END_OPS => {
                marks.mark("ops");
                break;
            }
            _ => return Err(Error::bad_input("protocol error: unexpected frame in ops")),
        }
    }
    // The directories the control files were renamed in are fsynced while the result
    // goes out and the commit comes in; the commit waits for them.
    applier.finish();
    let mut e = Enc::new();
    e.uv(applier.applied).uv(applier.error_count as u64);
    e.uv(applier.errors.len() as u64);
    for err in &applier.errors {
        e.str(err);
    }
    marks.mark("flush");
    conn.send_flush(t::OPS_RESULT, &e.buf)?;

    // Fetches (--adopt) and the commit.
    loop {
        let (ty, payload) = conn.recv()?;
        match ty {
            t::ABORT => {
                for e in applier.wait_finished() {
                    log::warn!("{}", e.message());
                }
                *pool = applier.take_pool();
                return Ok(());
            }
            t::FETCH => {
                let payload = payload.to_vec();
                let mut d = Dec::new(&payload);
                let n = d.uv()?;
                for _ in 0..n.min(10_000_000) {
                    let p = d.string()?;
                    send_file(conn, &base, &p)?;
                }
                conn.send_flush(t::FETCH_END, &[])?;
            }
            t::COMMIT => {
                let mut keep_out = HashSet::new();
                let mut payload = payload.to_vec();
                loop {
                    let mut d = Dec::new(&payload);
                    let more = d.u8()? != 0;
                    let n = d.uv()?;
                    for _ in 0..n.min(1_000_000) {
                        keep_out.insert(d.string()?);
                    }
                    if !more {
                        break;
                    }
                    payload = conn.expect(t::COMMIT)?.to_vec();
                }
                let errors = applier.wait_finished();
                *pool = applier.take_pool();
                if let Some(err) = errors.first() {
                    let mut e = Enc::new();
                    let more = match errors.len() - 1 {
                        0 => String::new(),
                        n => format!(" (and {n} more)"),
                    };
                    e.u8(1)
                        .str(&format!("{}{more}; nothing recorded", err.message()));
                    conn.send_flush(t::COMMIT_OK, &e.buf)?;
                    return Ok(());
                }
                let mut entries: Vec<Entry> = applier.into_entries();
                if !keep_out.is_empty() {
                    entries.retain(|e| !keep_out.contains(&e.path));
                }
                let m = Manifest::new(pair, entries);
                let mut e = Enc::new();
                e.u8(0).str(&m.digest);
                marks.mark("commit");
                marks.report_to_stderr(&format!("serve {domain}"));
                conn.send_flush(t::COMMIT_OK, &e.buf)?;
                // Unchanged record: nothing to write.
                if old_digest.as_deref() != Some(m.digest.as_str()) {
                    saving.start(m, manifest_path);
                }
                return Ok(());
            }
            _ => return Err(Error::bad_input("protocol error: unexpected frame")),
        }
    }
}

/// Send entries in frames of bounded size: `section u8` then entries.
pub fn send_entries<'a>(
    conn: &mut Conn,
    section: u8,
    entries: impl Iterator<Item = &'a Entry>,
) -> Result<()> {
    send_chunked(conn, section, entries, |e, en: &Entry| en.encode(e))
}

fn send_paths(conn: &mut Conn, section: u8, paths: &[&str]) -> Result<()> {
    send_chunked(conn, section, paths.iter(), |e, p: &&str| {
        e.str(p);
    })
}

/// ENTRIES frames of one section, each item encoded by `encode`, cut at about 512 KiB.
fn send_chunked<T>(
    conn: &mut Conn,
    section: u8,
    items: impl Iterator<Item = T>,
    encode: impl Fn(&mut Enc, T),
) -> Result<()> {
    let mut e = Enc::new();
    e.u8(section);
    for item in items {
        encode(&mut e, item);
        if e.len() > 512 << 10 {
            conn.send(t::ENTRIES, &e.buf)?;
            e = Enc::new();
            e.u8(section);
        }
    }
    if e.len() > 1 {
        conn.send(t::ENTRIES, &e.buf)?;
    }
    Ok(())
}

/// Send one file back (for `--adopt`): FILE {ok, entry | message}, then DATA frames and an
/// empty DATA frame.
fn send_file(conn: &mut Conn, base: &std::path::Path, rel: &str) -> Result<()> {
    let mut known = HashSet::new();
    let opened = super::fsops::check_rel(rel)
        .and_then(|_| super::fsops::check_parents(base, rel, &mut known))
        .and_then(|_| {
            let p = base.join(rel);
            let f = super::fsops::open_read(&p)
                .map_err(|e| Error::io(format!("cannot open {}", p.display()), e))?;
            let m = f
                .metadata()
                .map_err(|e| Error::io(format!("cannot stat {}", p.display()), e))?;
            if !m.is_file() {
                return Err(Error::bad_input(format!(
                    "{}: not a regular file",
                    p.display()
                )));
            }
            Ok((f, scan::entry_from_meta(rel.to_string(), &m, None)))
        });
    let mut e = Enc::new();
    match opened {
        Err(err) => {
            e.u8(1).str(err.message());
            conn.send(t::FILE, &e.buf)
        }
        Ok((mut f, entry)) => {
            e.u8(0);
            entry.encode(&mut e);
            conn.send(t::FILE, &e.buf)?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = f
                    .read(&mut buf)
                    .map_err(|err| Error::io(format!("reading {rel}"), err))?;
                if n == 0 {
                    break;
                }
                conn.send(t::DATA, &buf[..n])?;
            }
            conn.send(t::DATA, &[])
        }
    }
}
