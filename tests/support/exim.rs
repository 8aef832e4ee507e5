//! exim test support: a private Exim 4.96 configuration assembled from `exim-snippets/`
//! AS PRINTED (the file is copied verbatim), run with `exim -C ABS_PATH -D...` (only the
//! snippet's macros are overridden), `-bt` (routing) and `-bh` (a simulated SMTP session).
//! No daemon is started. Recipe: shared/reference/recipes.md §2.
//!
//! Exim wants a `-C` file owned by root and not world-writable (we copy it with mode 0644
//! into a 0755 temp dir: with `-bh` Exim drops to its own uid, and `${run}` children and
//! `${readsocket}` run as that user, so everything they touch must be readable by it).
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The exim binary (Debian: symlink to the setuid /usr/sbin/exim4).
pub const EXIM: &str = "/usr/sbin/exim4";

/// The repository's snippet directory.
pub fn snippets_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("exim-snippets")
}

/// A temp dir that unprivileged daemons (Exim's uid, postgres) can traverse. Also removed
/// at process exit (test fixtures kept in `static`s are never dropped).
pub fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("mc-exim-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    at_exit(Cleanup::Dir(dir.path().to_path_buf()));
    dir
}

/// What the exit hook undoes.
enum Cleanup {
    Pid(i32),
    Dir(PathBuf),
}

static CLEANUP: std::sync::Mutex<Vec<Cleanup>> = std::sync::Mutex::new(Vec::new());

fn at_exit(item: Cleanup) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        extern "C" fn run() {
            let items = match CLEANUP.lock() {
                Ok(mut v) => std::mem::take(&mut *v),
                Err(_) => return,
            };
            // Processes first (they use the directories), bounded, then the directories.
            for item in &items {
                if let Cleanup::Pid(pid) = item {
                    stop_child(*pid);
                }
            }
            for item in items {
                if let Cleanup::Dir(d) = item {
                    let _ = std::fs::remove_dir_all(d);
                }
            }
        }
        // SAFETY: a plain extern "C" fn without captured state.
        unsafe {
            libc::atexit(run);
        }
    });
    if let Ok(mut v) = CLEANUP.lock() {
        v.push(item);
    }
}

/// SIGTERM, wait up to 5 s, then SIGKILL and reap.
fn stop_child(pid: i32) {
    // SAFETY: our own child, still registered (not yet reaped).
    unsafe {
        libc::kill(pid, libc::SIGTERM);
        for _ in 0..500 {
            if libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) != 0 {
                return;
            }
            libc::usleep(10_000);
        }
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

fn forget_pid(pid: i32) {
    if let Ok(mut v) = CLEANUP.lock() {
        v.retain(|c| !matches!(c, Cleanup::Pid(p) if *p == pid));
    }
}

/// Spawn a child that dies with the test process even if it is killed: PR_SET_PDEATHSIG
/// fires when the *thread* that forked exits, so all children are forked by one keeper
/// thread that lives as long as the process.
fn spawn_kept(cmd: Command) -> std::process::Child {
    use std::sync::mpsc;
    type Job = (Command, mpsc::Sender<std::io::Result<std::process::Child>>);
    static KEEPER: std::sync::OnceLock<std::sync::Mutex<mpsc::Sender<Job>>> =
        std::sync::OnceLock::new();
    let tx = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                use std::os::unix::process::CommandExt;
                // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                        Ok(())
                    });
                }
                let _ = reply.send(cmd.spawn());
            }
        });
        std::sync::Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .expect("keeper")
        .send((cmd, reply_tx))
        .expect("keeper thread");
    let child = reply_rx.recv().expect("keeper reply").expect("spawn");
    at_exit(Cleanup::Pid(child.id() as i32));
    child
}

/// Write a file readable by everyone (configs the Exim user must read).
pub fn write_public(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
}

/// The output of one exim run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// One Exim configuration (a snippet copied verbatim) plus macro overrides.
pub struct Exim {
    dir: tempfile::TempDir,
    conf: PathBuf,
    macros: Vec<(String, String)>,
}

impl Exim {
    /// Copy `exim-snippets/<snippet>` verbatim and remember the macro overrides. The spool
    /// and log directories are private (MC_SPOOL / MC_LOG, defined by the snippet as
    /// optional macros).
    pub fn new(snippet: &str, macros: &[(&str, &str)]) -> Exim {
        let text = std::fs::read_to_string(snippets_dir().join(snippet)).expect("read snippet");
        let dir = open_tempdir();
        let conf = dir.path().join("exim.conf");
        write_public(&conf, &text);
        let spool = dir.path().join("spool");
        let log = dir.path().join("log");
        std::fs::create_dir(&log).expect("mkdir log");
        let mut all: Vec<(String, String)> = vec![
            ("MC_SPOOL".into(), spool.display().to_string()),
            ("MC_LOG".into(), format!("{}/%slog", log.display())),
        ];
        all.extend(macros.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Exim {
            dir,
            conf,
            macros: all,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn conf(&self) -> &Path {
        &self.conf
    }

    fn command(&self) -> Command {
        let mut c = Command::new(EXIM);
        c.arg("-C").arg(&self.conf);
        for (k, v) in &self.macros {
            c.arg(format!("-D{k}={v}"));
        }
        c.current_dir(self.dir.path());
        c
    }

    /// Run exim with `args` and `stdin`, bounded to 60 s.
    pub fn run(&self, args: &[&str], stdin: &str) -> Run {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn exim");
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(stdin.as_bytes());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match child.try_wait().expect("wait exim") {
                Some(_) => break,
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    panic!("exim {args:?} did not finish within 60 s");
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        let out = child.wait_with_output().expect("exim output");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `exim -bt ADDRESS`: exit 0 routed, 1 deferred, 2 undeliverable.
    pub fn bt(&self, address: &str) -> Run {
        self.run(&["-bt", "--", address], "")
    }

    /// `exim -bV` (parses the configuration).
    pub fn check(&self) -> Run {
        self.run(&["-bV"], "")
    }

    /// A simulated SMTP session from `ip` (`exim -bh`): EHLO, MAIL FROM, one RCPT TO per
    /// recipient, QUIT. Returns the reply code to each RCPT (and the whole output).
    pub fn rcpt_codes(&self, ip: &str, recipients: &[&str]) -> (Vec<u16>, Run) {
        let mut session = String::from("EHLO client.example\r\nMAIL FROM:<sender@example.com>\r\n");
        for r in recipients {
            session.push_str(&format!("RCPT TO:<{r}>\r\n"));
        }
        session.push_str("QUIT\r\n");
        let run = self.run(&["-bh", ip], &session);
        // Replies after the EHLO block and MAIL's 250: the final line of each reply.
        let finals: Vec<u16> = run
            .stdout
            .lines()
            .filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ')
            .filter_map(|l| l[..3].parse::<u16>().ok())
            .collect();
        // finals: 220 greeting, 250 EHLO, 250 MAIL, RCPT..., 221 QUIT
        let codes = if finals.len() >= 3 + recipients.len() {
            finals[3..3 + recipients.len()].to_vec()
        } else {
            finals.clone()
        };
        (codes, run)
    }
}

/// The hosts listed by `-bt` ("host NAME [IP]" lines), in order.
pub fn bt_hosts(run: &Run) -> Vec<String> {
    run.stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("host "))
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

/// The router named by `-bt` ("router = NAME, transport = ...").
pub fn bt_router(run: &Run) -> Option<String> {
    run.stdout.lines().find_map(|l| {
        let l = l.trim();
        let rest = l.strip_prefix("router = ")?;
        Some(rest.split(',').next()?.trim().to_string())
    })
}

/// The transport named by `-bt`.
pub fn bt_transport(run: &Run) -> Option<String> {
    run.stdout.lines().find_map(|l| {
        let (_, t) = l.split_once("transport = ")?;
        Some(t.trim().to_string())
    })
}

/// The mailmap binary under test.
pub fn mailmap_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mailmap"))
}

/// Storage node names of the fixtures and the IP literals the tests route them to.
/// Exim's `byname` must resolve route hosts; instead of touching /etc/hosts, mailmap's
/// `[map.hosts]` maps the node names to TEST-NET addresses (never contacted by -bt / -bh).
pub const S1_IP: &str = "192.0.2.11";
pub const S2_IP: &str = "192.0.2.12";

/// Write a mailmap configuration (readable by Exim's uid) and return its path.
pub fn mailmap_config(
    dir: &Path,
    name: &str,
    node: &str,
    db_url: &str,
    extra_map: &str,
) -> PathBuf {
    let path = dir.join(name);
    let text = format!(
        r#"node = "{node}"
db_timeout = 10

[[directory]]
name = "test"
url = "{db_url}"

[map]
socket_group = "Debian-exim"
retry_interval = 0.2
{extra_map}

[map.hosts]
"storage-01.domain.ru" = "{S1_IP}"
"storage-02.domain.ru" = "{S2_IP}"
"#
    );
    write_public(&path, &text);
    path
}

/// A running `mailmap serve`, stopped (SIGTERM + wait) on drop.
pub struct Serve {
    child: std::process::Child,
    pub socket: PathBuf,
}

impl Serve {
    pub fn start(config: &Path, socket: &Path) -> Serve {
        let mut cmd = Command::new(mailmap_bin());
        cmd.arg("--config")
            .arg(config)
            .arg("serve")
            .arg("--socket")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_kept(cmd);
        let serve = Serve {
            child,
            socket: socket.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while serve.ask("ping").as_deref() != Some("OK pong") {
            assert!(Instant::now() < deadline, "mailmap serve did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        serve
    }

    /// Send one request, return the answer line (without newline); None if no connection.
    pub fn ask(&self, request: &str) -> Option<String> {
        ask_socket(&self.socket, request.as_bytes())
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// SIGTERM and wait (bounded); returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                forget_pid(self.pid());
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                forget_pid(self.pid());
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Raw protocol client: write `request`, shut down writing, read to EOF.
pub fn ask_socket(socket: &Path, request: &[u8]) -> Option<String> {
    use std::io::Read;
    let mut s = std::os::unix::net::UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    // The server may answer (and close) before reading everything (busy): read anyway.
    let _ = s.write_all(request);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.trim_end_matches('\n').to_string())
}
