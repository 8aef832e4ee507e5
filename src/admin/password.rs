//! Hashing new passwords for `mailctl mailbox add|passwd`, in Dovecot's `{SCHEME}hash`
//! form. A thin adapter: the schemes mailctl writes are SHA512-CRYPT (the default),
//! SHA256-CRYPT, BLF-CRYPT and the seed's PLAIN-MD5; verification lives in `auth`.

use crate::error::{Error, Result};
use rand::Rng;

/// The scheme new passwords get unless `[ctl] password_scheme` says otherwise.
pub const DEFAULT_SCHEME: &str = "SHA512-CRYPT";

/// Longest password accepted (bytes).
pub const MAX_PASSWORD_LEN: usize = 1024;

const CRYPT_ALPHABET: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn salt(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| CRYPT_ALPHABET[rng.gen_range(0..CRYPT_ALPHABET.len())] as char)
        .collect()
}

/// The canonical spelling of a scheme name, or a bad-input error listing what works.
pub fn normalize_scheme(scheme: &str) -> Result<&'static str> {
    match scheme.trim().to_ascii_uppercase().as_str() {
        "SHA512-CRYPT" => Ok("SHA512-CRYPT"),
        "SHA256-CRYPT" => Ok("SHA256-CRYPT"),
        "BLF-CRYPT" => Ok("BLF-CRYPT"),
        "PLAIN-MD5" | "MD5" => Ok("PLAIN-MD5"),
        _ => Err(Error::config(format!(
            "password scheme {} is not one mailctl can write; use SHA512-CRYPT (default), \
             SHA256-CRYPT, BLF-CRYPT or PLAIN-MD5 in [ctl] password_scheme",
            crate::names::printable(scheme)
        ))),
    }
}

/// Hash `password` with `scheme`; the result carries the `{SCHEME}` prefix.
pub fn hash(scheme: &str, password: &str) -> Result<String> {
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
    let scheme = normalize_scheme(scheme)?;
    let fail = |e: String| Error::internal(format!("hashing with {scheme}: {e}"));
    match scheme {
        "SHA512-CRYPT" => {
            let s = salt(16);
            let params = sha_crypt::Sha512Params::new(sha_crypt::ROUNDS_DEFAULT)
                .map_err(|e| fail(format!("{e:?}")))?;
            let h = sha_crypt::sha512_crypt_b64(password.as_bytes(), s.as_bytes(), &params)
                .map_err(|e| fail(format!("{e:?}")))?;
            Ok(format!("{{SHA512-CRYPT}}$6${s}${h}"))
        }
        "SHA256-CRYPT" => {
            let s = salt(16);
            let params = sha_crypt::Sha256Params::new(sha_crypt::ROUNDS_DEFAULT)
                .map_err(|e| fail(format!("{e:?}")))?;
            let h = sha_crypt::sha256_crypt_b64(password.as_bytes(), s.as_bytes(), &params)
                .map_err(|e| fail(format!("{e:?}")))?;
            Ok(format!("{{SHA256-CRYPT}}$5${s}${h}"))
        }
        "BLF-CRYPT" => {
            let h = bcrypt::hash(password, 10).map_err(|e| fail(e.to_string()))?;
            Ok(format!("{{BLF-CRYPT}}{h}"))
        }
        _ => {
            use md5::Digest;
            Ok(format!(
                "{{PLAIN-MD5}}{}",
                hex::encode(md5::Md5::digest(password.as_bytes()))
            ))
        }
    }
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
        assert_eq!(
            hash("PLAIN-MD5", "ivanov-pw").unwrap().len(),
            "{PLAIN-MD5}".len() + 32
        );
    }
}
