//! Hashing new passwords for `mailctl mailbox add|passwd`, in Dovecot's `{SCHEME}hash`
//! form, with the library's password schemes ([`crate::auth::scheme`], the same code that
//! verifies them). The scheme comes from `[ctl] password_scheme` (default SHA512-CRYPT).

use crate::auth::scheme::{self, Scheme};
use crate::error::{Error, Result};

/// The scheme new passwords get unless `[ctl] password_scheme` says otherwise.
pub const DEFAULT_SCHEME: &str = "SHA512-CRYPT";

/// Longest password accepted (bytes).
pub const MAX_PASSWORD_LEN: usize = scheme::MAX_PASSWORD_LEN;

/// The canonical name of a scheme mailctl may store new passwords with. Dovecot's salted
/// and crypt schemes are accepted; plain text and unsalted digests other than the seed's
/// PLAIN-MD5 are refused.
pub fn normalize_scheme(name: &str) -> Result<&'static str> {
    let refuse = || {
        Error::config(format!(
            "password scheme {} cannot be used for new passwords; use SHA512-CRYPT (default), \
             SHA256-CRYPT, BLF-CRYPT, ARGON2ID, ARGON2I, SSHA512 or PLAIN-MD5 (the seed's) in \
             [ctl] password_scheme",
            crate::names::printable(name)
        ))
    };
    let s = Scheme::from_name(name.trim()).ok_or_else(refuse)?;
    match s {
        Scheme::Plain | Scheme::Crypt | Scheme::Md5 | Scheme::LdapMd5 | Scheme::Sha1 => {
            Err(refuse())
        }
        s => Ok(s.name()),
    }
}

/// Hash `password` with `scheme`; the result carries the `{SCHEME}` prefix.
pub fn hash(scheme_name: &str, password: &str) -> Result<String> {
    if password.is_empty() {
        return Err(Error::bad_input("empty password refused"));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(Error::bad_input(format!(
            "password longer than {MAX_PASSWORD_LEN} bytes refused"
        )));
    }
    if password.contains(['\0', '\n', '\r']) {
        return Err(Error::bad_input(
            "a password cannot contain NUL or line breaks",
        ));
    }
    let name = normalize_scheme(scheme_name)?;
    let s =
        Scheme::from_name(name).ok_or_else(|| Error::internal(format!("unknown scheme {name}")))?;
    let stored = scheme::generate(password.as_bytes(), s)
        .map_err(|e| Error::internal(format!("hashing with {name}: {}", e.0)))?;
    let prefix = format!("{{{name}}}");
    Ok(if stored.starts_with('{') {
        stored
    } else {
        format!("{prefix}{stored}")
    })
}

/// The length of a hash `scheme` produces (a sample hash of a sample password).
pub fn sample_len(scheme: &str) -> Result<usize> {
    Ok(hash(scheme, "sample-password")?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha512_crypt_verifies_with_the_crate() {
        let h = hash("sha512-crypt", "secret pw").unwrap();
        let bare = h.strip_prefix("{SHA512-CRYPT}").unwrap();
        assert!(bare.starts_with("$6$"));
        assert!(sha_crypt::sha512_check("secret pw", bare).is_ok());
        assert!(sha_crypt::sha512_check("wrong", bare).is_err());
        assert!(h.len() <= 128, "{}", h.len());
    }

    #[test]
    fn refuses_bad_passwords_and_schemes() {
        assert!(hash("SHA512-CRYPT", "").is_err());
        assert!(hash("SHA512-CRYPT", "a\nb").is_err());
        assert!(hash("ROT13", "x").is_err());
        assert!(hash("PLAIN", "x").is_err());
        assert!(scheme::verify(b"pw", &hash("ARGON2ID", "pw").unwrap(), Scheme::Md5).unwrap());
        assert!(scheme::verify(b"pw", &hash("BLF-CRYPT", "pw").unwrap(), Scheme::Md5).unwrap());
        assert_eq!(
            hash("PLAIN-MD5", "ivanov-pw").unwrap().len(),
            "{PLAIN-MD5}".len() + 32
        );
    }
}
