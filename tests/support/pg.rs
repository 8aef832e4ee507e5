//! Throwaway PostgreSQL 15 clusters for tests (recipe: shared/reference/recipes.md §1).
//!
//! * [`shared()`] — one cluster per test binary, started on first use, stopped at process
//!   exit (an `atexit` hook). Give every test its own database: [`Pg::create_database`].
//! * [`Pg::start_private()`] — a separate cluster owned by the caller, stopped on drop
//!   (also on panic). Use it for tests that stop ([`Pg::stop`]) or hang ([`Pg::hang`]:
//!   SIGSTOP of the postmaster and all its children) the server, so that other tests in
//!   the same binary are not affected.
//!
//! The postmaster runs in the foreground as a child of the test process (as `postgres`
//! when root), with a parent-death signal: even a test binary killed by SIGKILL leaves no
//! server behind. `stop()` is a fast shutdown that waits for every server process.
//!
//! Every cluster listens on a unix socket directory under its temp dir and on
//! 127.0.0.1 at a free high port, with SSL on (a throwaway CA + server certificate for
//! `localhost`/127.0.0.1; the CA is at [`Pg::ca_cert`]).
//! Roles: `postgres` (superuser, trust over the socket) and `mail` (password `mailpw`,
//! owner of every database made by [`Pg::create_database`]; trust over the socket,
//! password over TCP).
//!
//! Connection strings (see [`Pg::url`], [`Pg::tcp_url`], [`Pg::url_with`]):
//! `host=<sockdir> port=<port> user=mail dbname=<db>` and
//! `postgresql://mail:mailpw@127.0.0.1:<port>/<db>`.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const PGBIN: &str = "/usr/lib/postgresql/15/bin";
pub const USER: &str = "mail";
pub const PASSWORD: &str = "mailpw";

pub struct Pg {
    root: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    port: u16,
    /// True while the postmaster and its children are SIGSTOPped.
    hung: Mutex<bool>,
    /// Remove `root` on drop.
    owned: bool,
    /// The postmaster, our direct child (foreground `postgres -D`).
    child: Mutex<Option<Child>>,
    /// The thread that forks the postmaster (see [`Keeper`]).
    keeper: Keeper,
}

/// A thread that lives as long as its cluster and forks the postmaster. The postmaster
/// gets `PR_SET_PDEATHSIG = SIGQUIT` (immediate shutdown) bound to this thread, so that a
/// test binary that is killed (timeout, SIGKILL: no atexit, no Drop) leaves no server
/// running. (Linux-only, like the rest of this test support.)
struct Keeper {
    tx: Mutex<mpsc::Sender<(Command, mpsc::Sender<std::io::Result<Child>>)>>,
}

impl Keeper {
    fn new() -> Keeper {
        let (tx, rx) = mpsc::channel::<(Command, mpsc::Sender<std::io::Result<Child>>)>();
        std::thread::Builder::new()
            .name("pg-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn pg-keeper thread");
        Keeper { tx: Mutex::new(tx) }
    }

    fn spawn(&self, cmd: Command) -> std::io::Result<Child> {
        let (reply_tx, reply_rx) = mpsc::channel();
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        tx.send((cmd, reply_tx))
            .map_err(|_| std::io::Error::other("pg-keeper thread is gone"))?;
        drop(tx);
        reply_rx
            .recv()
            .map_err(|_| std::io::Error::other("pg-keeper thread is gone"))?
    }
}

static SHARED: OnceLock<Pg> = OnceLock::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The cluster shared by all tests of this binary (started on first use).
pub fn shared() -> &'static Pg {
    SHARED.get_or_init(|| {
        let pg = Pg::start_private();
        extern "C" fn stop_shared() {
            if let Some(pg) = SHARED.get() {
                pg.shutdown();
            }
        }
        // SAFETY: registering a plain extern "C" fn with no captured state.
        unsafe {
            libc::atexit(stop_shared);
        }
        pg
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Run a PostgreSQL server program (initdb): as `postgres` when we are root.
fn pg_command(prog: &str) -> Command {
    let path = format!("{PGBIN}/{prog}");
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    }
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// uid and gid of the `postgres` user.
fn postgres_ids() -> (libc::uid_t, libc::gid_t) {
    // SAFETY: getpwnam with a NUL-terminated literal; we copy the ids out immediately.
    unsafe {
        let pw = libc::getpwnam(c"postgres".as_ptr());
        assert!(!pw.is_null(), "no 'postgres' user");
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}

fn chown_postgres(path: &Path) {
    if !is_root() {
        return;
    }
    let (uid, gid) = postgres_ids();
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
}

fn free_port() -> u16 {
    // Bind port 0 to let the kernel pick, in the high range; PostgreSQL binds it right after.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

impl Pg {
    /// Start a new private cluster (initdb + start + role `mail`), ~1.5 s.
    pub fn start_private() -> Pg {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let root = std::env::temp_dir().join(format!("mc-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("create pg root");
        let root = root.canonicalize().expect("canonicalize");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let data = root.join("data");
        let sock = root.join("sock");
        for d in [&data, &sock] {
            std::fs::create_dir(d).expect("mkdir");
            chown_postgres(d);
        }
        chown_postgres(&root);

        let mut init = pg_command("initdb");
        init.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=md5",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ]);
        run(init, "initdb");
        make_certs(&root, &data);

        let mut last_err = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let conf = format!(
                "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
                 fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
                 logging_collector = off\nmax_connections = 50\nshared_buffers = 16MB\n\
                 ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
                sock.display()
            );
            std::fs::write(data.join("postgresql.auto.conf"), conf).expect("write conf");
            let pg = Pg {
                root: root.clone(),
                data: data.clone(),
                sock: sock.clone(),
                port,
                hung: Mutex::new(false),
                owned: true,
                child: Mutex::new(None),
                keeper: Keeper::new(),
            };
            match pg.try_start() {
                Ok(()) => {
                    pg.psql_as(
                        "postgres",
                        "postgres",
                        &format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}';"),
                    );
                    return pg;
                }
                Err(e) => {
                    last_err = e;
                    // Keep `pg` from removing the directory: we retry with another port.
                    std::mem::forget(pg);
                }
            }
        }
        panic!("cannot start PostgreSQL: {last_err}");
    }

    /// Start the postmaster as our child (as `postgres` when root) and wait until
    /// postmaster.pid says "ready" (what `pg_ctl -w` waits for).
    fn try_start(&self) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let log_path = self.root.join("postgres.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("open {}: {e}", log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(format!("{PGBIN}/postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let ids = is_root().then(postgres_ids);
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if let Some((uid, gid)) = ids {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // After setuid (a credential change clears it): stop with our keeper thread.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = self
            .keeper
            .spawn(cmd)
            .map_err(|e| format!("spawn postgres: {e}"))?;
        let pid = child.id() as i32;
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let exited = {
                let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
                match guard.as_mut().map(|c| c.try_wait()) {
                    Some(Ok(Some(status))) => {
                        guard.take();
                        Some(status.to_string())
                    }
                    _ => None,
                }
            };
            if let Some(status) = exited {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("postgres exited ({status}):\n{log}"));
            }
            if let Ok(text) = std::fs::read_to_string(self.data.join("postmaster.pid")) {
                let mut lines = text.lines();
                let same = lines.next().map(str::trim) == Some(&pid.to_string());
                if same && lines.nth(6).map(str::trim) == Some("ready") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.stop();
                return Err("postgres did not become ready within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn socket_dir(&self) -> &Path {
        &self.sock
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The CA certificate that signed the server certificate (for sslrootcert=).
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.crt")
    }

    /// libpq key=value over the unix socket (trust, no password).
    pub fn url(&self, db: &str) -> String {
        format!(
            "host={} port={} user={USER} dbname={db}",
            self.sock.display(),
            self.port
        )
    }
    /// URL over TCP to 127.0.0.1 with the password.
    pub fn tcp_url(&self, db: &str) -> String {
        format!(
            "postgresql://{USER}:{PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }
    /// libpq key=value over TCP with extra parameters (e.g. `sslmode=verify-full`).
    pub fn url_with(&self, db: &str, host: &str, extra: &str) -> String {
        format!(
            "host={host} port={} user={USER} password={PASSWORD} dbname={db} {extra}",
            self.port
        )
    }

    /// A fresh, empty database owned by `mail`; returns its unix-socket URL.
    /// `name` is made unique (a counter is appended); see [`Pg::url`] / [`Pg::tcp_url`]
    /// with the returned [`Db::name`].
    pub fn create_database(&self, name: &str) -> String {
        self.create_db(name).url
    }

    /// Like [`Pg::create_database`] but returns the name too.
    pub fn create_db(&self, name: &str) -> Db {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let clean: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let db = format!("{clean}_{n}");
        self.psql_as(
            "postgres",
            "postgres",
            &format!("CREATE DATABASE {db} OWNER {USER};"),
        );
        Db {
            url: self.url(&db),
            tcp_url: self.tcp_url(&db),
            name: db,
        }
    }

    /// Run SQL (a script) in `db` as `mail` over the socket; panics on error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.psql_as(USER, db, sql)
    }

    /// Run SQL as `user` in `db`; returns unaligned, tuples-only output.
    pub fn psql_as(&self, user: &str, db: &str, sql: &str) -> String {
        use std::io::Write;
        let mut child = Command::new("psql")
            .arg("-h")
            .arg(&self.sock)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                user,
                "-d",
                db,
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
                "-",
            ])
            .env_remove("PGPASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn psql");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(sql.as_bytes())
            .expect("write sql");
        let out = child.wait_with_output().expect("psql");
        if !out.status.success() {
            panic!(
                "psql failed ({}): {}\nSQL:\n{sql}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stop the server (fast shutdown) and wait until every server process is gone.
    /// Connections then fail with "connection refused".
    pub fn stop(&self) {
        self.resume();
        let pids = self.server_pids();
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = child {
            // SAFETY: signalling our own child. SIGINT = fast shutdown.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGINT);
            }
            let exited = Pg::wait_until(Duration::from_secs(10), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if !exited {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        let gone = Pg::wait_until(Duration::from_secs(5), || pids.iter().all(|p| !alive(*p)));
        if !gone {
            for pid in pids.iter().filter(|p| alive(**p)) {
                // SAFETY: signalling a server process we started.
                unsafe {
                    libc::kill(*pid, libc::SIGKILL);
                }
            }
            Pg::wait_until(Duration::from_secs(5), || pids.iter().all(|p| !alive(*p)));
        }
    }

    /// Start a stopped server again (same port).
    pub fn start(&self) {
        if let Err(e) = self.try_start() {
            panic!("cannot restart PostgreSQL: {e}");
        }
    }

    /// The postmaster's pid (None when not running).
    pub fn postmaster_pid(&self) -> Option<i32> {
        self.child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|c| c.id() as i32)
    }

    /// The postmaster and all its children (Linux /proc; test code only).
    fn server_pids(&self) -> Vec<i32> {
        let Some(pm) = self.postmaster_pid() else {
            return Vec::new();
        };
        let mut pids = vec![pm];
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                    continue;
                };
                // pid (comm) state ppid ...: comm may contain spaces, split after ')'.
                let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                    continue;
                };
                let ppid: i32 = rest
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if ppid == pm {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// Hang the server: SIGSTOP the postmaster and every backend. The kernel still
    /// accepts TCP and socket connections (backlog), but nothing ever answers.
    pub fn hang(&self) {
        let mut hung = self.hung.lock().unwrap_or_else(|e| e.into_inner());
        let pids = self.server_pids();
        assert!(!pids.is_empty(), "PostgreSQL is not running");
        // Stop the postmaster first so that it forks no new child meanwhile.
        for pid in &pids {
            // SAFETY: signalling a process we started.
            unsafe {
                libc::kill(*pid, libc::SIGSTOP);
            }
        }
        // Children forked between the listing and the stop of the postmaster.
        for pid in self.server_pids() {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid, libc::SIGSTOP);
            }
        }
        *hung = true;
    }

    /// Undo [`Pg::hang`].
    pub fn resume(&self) {
        let mut hung = self.hung.lock().unwrap_or_else(|e| e.into_inner());
        if !*hung {
            return;
        }
        for pid in self.server_pids() {
            // SAFETY: signalling a process we started.
            unsafe {
                libc::kill(pid, libc::SIGCONT);
            }
        }
        *hung = false;
    }

    /// Stop the server for good (idempotent; used at exit and on drop).
    fn shutdown(&self) {
        if self.postmaster_pid().is_some() {
            self.stop();
        }
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    /// Wait until `cond` holds or `timeout` passes.
    pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        cond()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Is `pid` a live (not zombie) process? (Linux /proc; test code only.)
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next())
                .unwrap_or("X");
            state != "Z" && state != "X"
        }
    }
}

/// A database made by [`Pg::create_db`].
#[derive(Debug, Clone)]
pub struct Db {
    pub name: String,
    /// Unix-socket key=value form.
    pub url: String,
    /// TCP URL form with the password.
    pub tcp_url: String,
}

/// A fresh RSA key and a self-signed CA certificate named `cn` (valid 30 days).
fn self_signed_ca(
    cn: &str,
) -> (
    openssl::pkey::PKey<openssl::pkey::Private>,
    openssl::x509::X509,
) {
    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::extension::BasicConstraints;
    use openssl::x509::X509;
    let key = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
    let name = cert_name(cn);
    let mut ca = X509::builder().expect("x509");
    ca.set_version(2).expect("v3");
    ca.set_serial_number(&serial()).expect("serial");
    ca.set_subject_name(&name).expect("subject");
    ca.set_issuer_name(&name).expect("issuer");
    ca.set_pubkey(&key).expect("pubkey");
    ca.set_not_before(&Asn1Time::days_from_now(0).expect("time"))
        .expect("nb");
    ca.set_not_after(&Asn1Time::days_from_now(30).expect("time"))
        .expect("na");
    ca.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
        .expect("ext");
    ca.sign(&key, MessageDigest::sha256()).expect("sign");
    (key, ca.build())
}

fn cert_name(cn: &str) -> openssl::x509::X509Name {
    let mut b = openssl::x509::X509NameBuilder::new().expect("name");
    b.append_entry_by_text("CN", cn).expect("cn");
    b.build()
}

fn serial() -> openssl::asn1::Asn1Integer {
    use openssl::bn::{BigNum, MsbOption};
    let mut bn = BigNum::new().expect("bn");
    bn.rand(64, MsbOption::MAYBE_ZERO, false).expect("rand");
    bn.to_asn1_integer().expect("serial")
}

/// A throwaway CA and a server certificate for `localhost` and 127.0.0.1, written as
/// `root/ca.crt` and `data/server.{crt,key}` (owned by postgres, key mode 0600).
fn make_certs(root: &Path, data: &Path) {
    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::X509;

    let (ca_key, ca) = self_signed_ca("mailcluster test CA");

    let key = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
    let mut crt = X509::builder().expect("x509");
    crt.set_version(2).expect("v3");
    crt.set_serial_number(&serial()).expect("serial");
    crt.set_subject_name(&cert_name("localhost"))
        .expect("subject");
    crt.set_issuer_name(ca.subject_name()).expect("issuer");
    crt.set_pubkey(&key).expect("pubkey");
    crt.set_not_before(&Asn1Time::days_from_now(0).expect("time"))
        .expect("nb");
    crt.set_not_after(&Asn1Time::days_from_now(30).expect("time"))
        .expect("na");
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .ip("127.0.0.1")
        .build(&crt.x509v3_context(Some(&ca), None))
        .expect("san");
    crt.append_extension(san).expect("ext");
    crt.sign(&ca_key, MessageDigest::sha256()).expect("sign");
    let crt = crt.build();

    std::fs::write(root.join("ca.crt"), ca.to_pem().expect("pem")).expect("write ca");
    let crt_path = data.join("server.crt");
    let key_path = data.join("server.key");
    std::fs::write(&crt_path, crt.to_pem().expect("pem")).expect("write crt");
    std::fs::write(&key_path, key.private_key_to_pem_pkcs8().expect("pem")).expect("write key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    chown_postgres(&crt_path);
    chown_postgres(&key_path);
}

/// A self-signed CA certificate (PEM) unrelated to any cluster's: verification against it
/// fails.
pub fn unrelated_ca_pem() -> Vec<u8> {
    self_signed_ca("unrelated CA").1.to_pem().expect("pem")
}
