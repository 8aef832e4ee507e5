//! A throwaway OpenSSH sshd on 127.0.0.1 (a free high port), started once per test binary:
//! host key and client key generated with ssh-keygen in a temp dir, key-only root login,
//! AuthorizedKeysFile in the temp dir. sshd runs in the foreground (`-D -e`) as a child of
//! a thread that lives as long as the test process; on Linux it gets SIGTERM when the
//! process ends (PR_SET_PDEATHSIG), so nothing is left behind.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Sshd {
    pub port: u16,
    pub dir: PathBuf,
    /// Private key accepted for root.
    pub client_key: PathBuf,
    /// known_hosts with the right host key for `[127.0.0.1]:port`.
    pub known_hosts: PathBuf,
    /// The host's public key line (`ssh-ed25519 AAAA...`).
    pub host_key: String,
    /// A second key, restricted in authorized_keys to `mailsync serve --root RESTRICTED_ROOT`
    /// (the `command=` line of examples/mailsync-authorized_keys).
    pub restricted_key: PathBuf,
    pub restricted_root: PathBuf,
    pub pid: u32,
}

static SSHD: OnceLock<Sshd> = OnceLock::new();

/// The shared sshd (started on first use).
pub fn sshd() -> &'static Sshd {
    SSHD.get_or_init(|| {
        let s = start().unwrap_or_else(|e| panic!("cannot start sshd: {e}"));
        // SAFETY: registering a plain extern "C" fn without captured state.
        unsafe {
            libc::atexit(cleanup);
        }
        s
    })
}

/// At exit: stop sshd and remove its directory.
extern "C" fn cleanup() {
    if let Some(s) = SSHD.get() {
        // SAFETY: signalling the sshd we started.
        unsafe {
            libc::kill(s.pid as libc::pid_t, libc::SIGTERM);
        }
        let _ = std::fs::remove_dir_all(&s.dir);
    }
}

fn keygen(path: &Path, comment: &str) -> Result<(), String> {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("ssh-keygen: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("ssh-keygen failed: {st}"))
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn start() -> Result<Sshd, String> {
    let tmp = tempfile::Builder::new()
        .prefix("mailsync-sshd-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    // Kept for the life of the process (sshd reads keys from it).
    let dir = tmp.keep();
    let _ = std::fs::create_dir_all("/run/sshd");
    let host = dir.join("ssh_host_ed25519_key");
    let client = dir.join("client_key");
    keygen(&host, "test-host")?;
    keygen(&client, "test-client")?;
    let restricted = dir.join("restricted_key");
    keygen(&restricted, "test-restricted")?;
    let restricted_root = dir.join("restricted-root");
    std::fs::create_dir_all(&restricted_root).map_err(|e| e.to_string())?;
    let client_pub =
        std::fs::read_to_string(dir.join("client_key.pub")).map_err(|e| e.to_string())?;
    let restricted_pub =
        std::fs::read_to_string(dir.join("restricted_key.pub")).map_err(|e| e.to_string())?;
    let ak = dir.join("authorized_keys");
    std::fs::write(
        &ak,
        format!(
            "{client_pub}command=\"{} serve --no-fence --root {}\",from=\"127.0.0.1\",restrict {restricted_pub}",
            env!("CARGO_BIN_EXE_mailsync"),
            restricted_root.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let host_pub =
        std::fs::read_to_string(dir.join("ssh_host_ed25519_key.pub")).map_err(|e| e.to_string())?;
    let host_key: String = host_pub
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    for _attempt in 0..5 {
        let port = free_port();
        let conf = dir.join("sshd_config");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile none\n\
                 AuthorizedKeysFile {}\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 UseDNS no\nPrintMotd no\nPrintLastLog no\nLogLevel FATAL\nMaxStartups 100:30:200\n\
                 MaxSessions 100\n",
                host.display(),
                ak.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let (tx, rx) = std::sync::mpsc::channel::<Result<u32, String>>();
        let conf2 = conf.clone();
        // The spawning thread never ends, so the parent-death signal only fires when the
        // whole test process ends.
        std::thread::spawn(move || {
            let child = spawn_sshd(&conf2);
            match child {
                Ok(mut c) => {
                    let _ = tx.send(Ok(c.id()));
                    let _ = c.wait();
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        let pid = rx.recv().map_err(|e| e.to_string())??;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                let known_hosts = dir.join("known_hosts");
                std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_key}\n"))
                    .map_err(|e| e.to_string())?;
                return Ok(Sshd {
                    port,
                    dir: dir.clone(),
                    client_key: client,
                    known_hosts,
                    host_key,
                    restricted_key: restricted.clone(),
                    restricted_root: restricted_root.clone(),
                    pid,
                });
            }
            // Died (port taken)? Try another port.
            if unsafe_kill0(pid) {
                std::thread::sleep(Duration::from_millis(20));
            } else {
                break;
            }
        }
    }
    Err("sshd did not come up".to_string())
}

fn unsafe_kill0(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

fn spawn_sshd(conf: &Path) -> Result<Child, String> {
    let mut cmd = Command::new("/usr/sbin/sshd");
    cmd.args(["-D", "-e", "-f"])
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; called between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    cmd.spawn().map_err(|e| format!("/usr/sbin/sshd: {e}"))
}
