//! User iteration for Dovecot. The checkpassword userdb cannot iterate, so `doveadm ... -A`
//! needs another source: `mailauth passwd-file --output PATH` writes every mailbox as a
//! Dovecot passwd-file (no passwords) that a second, iteration-only userdb reads
//! (`dovecot-snippets/`), and `mailauth users` prints the list for scripts.

use super::authenticator::UserInfo;
use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// One passwd-file line: `user::uid:gid::home::userdb_mail=LOCATION`.
/// Values are validated names and a configured template; a field that would break the
/// format (`:`, whitespace, control characters) is refused.
pub fn passwd_line(u: &UserInfo) -> Result<String> {
    for (what, v) in [("user", &u.user), ("home", &u.home), ("mail", &u.mail)] {
        let bad_colon = what != "mail" && v.contains(':');
        if bad_colon || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::config(format!(
                "{what} of {} cannot be written to a passwd-file (':' or whitespace); check [mail] home",
                u.user
            )));
        }
    }
    Ok(format!(
        "{}::{}:{}::{}::userdb_mail={}\n",
        u.user, u.uid, u.gid, u.home, u.mail
    ))
}

/// The whole file.
pub fn passwd_file(users: &[UserInfo]) -> Result<String> {
    let mut out = String::new();
    for u in users {
        out.push_str(&passwd_line(u)?);
    }
    Ok(out)
}

/// Write `content` to `path` atomically: a temporary file in the same directory, fsync,
/// mode 0644, rename over the target, fsync of the directory.
pub fn write_atomic(path: &Path, content: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::bad_input(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(format!("writing {}", path.display()), e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let u = UserInfo {
            user: "a@b.ru".into(),
            home: "/usr/mail/b.ru/a".into(),
            mail: "maildir:/usr/mail/b.ru/a/Maildir".into(),
            uid: 8,
            gid: 12,
            proxy: None,
        };
        assert_eq!(
            passwd_line(&u).unwrap(),
            "a@b.ru::8:12::/usr/mail/b.ru/a::userdb_mail=maildir:/usr/mail/b.ru/a/Maildir\n"
        );
        let mut bad = u.clone();
        bad.home = "/x y".into();
        assert!(passwd_line(&bad).is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("users");
        write_atomic(&p, b"x\n").unwrap();
        write_atomic(&p, b"y\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"y\n");
    }
}
