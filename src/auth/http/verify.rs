//! Password verification for `/auth`: a thin adapter over the Dovecot schemes of
//! [`crate::auth::scheme`], plus nginx's challenge methods (APOP, CRAM-MD5), which need the
//! stored plaintext.

use crate::auth::scheme::{self, Scheme};
use crate::error::{Error, Result};
use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// Check `password` against a stored Dovecot-style hash (`{SCHEME}data`, or bare data in
/// `default`). An unusable stored value (unknown scheme, malformed) is an error: never a
/// grant.
pub fn verify(stored: &str, password: &[u8], default: Scheme) -> Result<bool> {
    scheme::verify(password, stored, default)
        .map_err(|e| Error::internal(format!("stored password unusable: {e}")))
}

/// The stored plaintext, when the password is stored as `{PLAIN}` / `{CLEAR}` /
/// `{CLEARTEXT}` (or bare with such a default scheme). Needed for APOP and CRAM-MD5.
pub fn plaintext(stored: &str, default: Scheme) -> Option<&str> {
    if let Some(rest) = stored.strip_prefix('{') {
        let (name, data) = rest.split_once('}')?;
        return match name.to_ascii_uppercase().as_str() {
            "PLAIN" | "CLEAR" | "CLEARTEXT" => Some(data),
            _ => None,
        };
    }
    (default == Scheme::Plain).then_some(stored)
}

/// APOP (RFC 1939): the client sends hex(MD5(salt || password)).
pub fn verify_apop(plain: &str, salt: &[u8], response: &[u8]) -> bool {
    let mut h = Md5::new();
    h.update(salt);
    h.update(plain.as_bytes());
    let want = hex::encode(h.finalize());
    ct_eq_ignore_case(want.as_bytes(), response)
}

/// CRAM-MD5 (RFC 2195): the client sends hex(HMAC-MD5(password, challenge)).
pub fn verify_cram_md5(plain: &str, salt: &[u8], response: &[u8]) -> bool {
    let want = hex::encode(hmac_md5(plain.as_bytes(), salt));
    ct_eq_ignore_case(want.as_bytes(), response)
}

fn ct_eq_ignore_case(want_lower_hex: &[u8], got: &[u8]) -> bool {
    let got: Vec<u8> = got.iter().map(|b| b.to_ascii_lowercase()).collect();
    want_lower_hex.len() == got.len() && bool::from(want_lower_hex.ct_eq(&got))
}

fn hmac_md5(key: &[u8], msg: &[u8]) -> [u8; 16] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..16].copy_from_slice(&Md5::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Md5::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = Md5::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        // md5_hex("secret")
        let md5 = "5ebe2294ecd0e0f08eab7690d2a6ee69";
        assert!(verify(md5, b"secret", Scheme::Md5).unwrap());
        assert!(verify(md5, b"secret", Scheme::PlainMd5).unwrap());
        assert!(!verify(md5, b"Secret", Scheme::Md5).unwrap());
        assert!(verify("{PLAIN}p w", b"p w", Scheme::Md5).unwrap());
        // doveadm pw -s SHA512-CRYPT -p secret
        let sha = "{SHA512-CRYPT}$6$A7nR599f3C6O5eMj$Jnhg1f.WHFzm4AxYTC9GK.1OrwNh6XfYTndadJNqfx2NirkaZpQIKfDCDIdcYg3XnKVz6IJWONMLY80skGMcl.";
        assert!(verify(sha, b"secret", Scheme::Md5).unwrap());
        assert!(!verify(sha, b"secreT", Scheme::Md5).unwrap());
        assert!(verify("{NOPE}x", b"x", Scheme::Md5).is_err());
        assert_eq!(plaintext("{PLAIN}abc", Scheme::Md5), Some("abc"));
        assert_eq!(plaintext("{CLEAR}abc", Scheme::Md5), Some("abc"));
        assert_eq!(plaintext("abc", Scheme::Plain), Some("abc"));
        assert_eq!(plaintext(md5, Scheme::Md5), None);
    }

    #[test]
    fn challenges() {
        // RFC 1939 example
        assert!(verify_apop(
            "tanstaaf",
            b"<1896.697170952@dbc.mtview.ca.us>",
            b"c4c9334bac560ecc979e58001b3e22fb"
        ));
        // RFC 2195 example
        assert!(verify_cram_md5(
            "tanstaaftanstaaf",
            b"<1896.697170952@postoffice.reston.mci.net>",
            b"b913a602c7eda7a495b4e6e7334d3890"
        ));
        assert!(!verify_cram_md5("x", b"<1>", b"00"));
    }
}
