//! Domains, local parts and addresses: parsed, lower-cased and validated before
//! anything reaches SQL, a path or a process.
//!
//! A directory entry holds only lower-case ASCII letters, digits, `-` and `.` in domains
//! and additionally `_` in local parts. Anything else (quotes, spaces, `$`, `{`, `%`,
//! NUL, CR/LF, non-ASCII, over-long input) is refused: lookups treat it as *not found*
//! ([`ErrorKind::NotFound`]), admin commands as *bad input* ([`ErrorKind::BadInput`]).

use crate::error::{Error, ErrorKind, Result};
use std::fmt;

/// Longest domain name (RFC 1035 presentation form, without the trailing dot).
pub const MAX_DOMAIN_LEN: usize = 253;
/// Longest DNS label.
pub const MAX_LABEL_LEN: usize = 63;
/// Longest local part (RFC 5321).
pub const MAX_LOCAL_PART_LEN: usize = 64;
/// Separator of subaddresses (`user+tag@domain` is delivered to `user@domain`).
pub const SUBADDRESS_SEPARATOR: char = '+';

/// How a name that fails validation is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// Lookups: an invalid name simply does not exist.
    Lookup,
    /// Admin commands: an invalid name is an error that says what is wrong.
    Admin,
}

impl Strictness {
    fn fail(self, what: &str, input: &str, why: &str) -> Error {
        let shown = printable(input);
        match self {
            Strictness::Lookup => Error::new(ErrorKind::NotFound, format!("{what} {shown}: {why}")),
            Strictness::Admin => Error::new(
                ErrorKind::BadInput,
                format!("invalid {what} {shown}: {why}"),
            ),
        }
    }
}

/// A short, printable rendering of hostile input for messages (no control bytes, bounded).
pub fn printable(input: &str) -> String {
    let mut out = String::from("\"");
    for (i, c) in input.chars().enumerate() {
        if i >= 64 {
            out.push_str("...");
            break;
        }
        if c.is_ascii_graphic() || c == ' ' {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        } else {
            out.push_str(&c.escape_default().to_string());
        }
    }
    out.push('"');
    out
}

/// A validated, lower-case domain name such as `branch.domain.ru`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Domain(String);

impl Domain {
    pub fn parse(input: &str, strictness: Strictness) -> Result<Domain> {
        let s = input.strip_suffix('.').unwrap_or(input);
        if s.is_empty() {
            return Err(strictness.fail("domain", input, "empty"));
        }
        if s.len() > MAX_DOMAIN_LEN {
            return Err(strictness.fail("domain", input, "longer than 253 characters"));
        }
        if !s.contains('.') {
            return Err(strictness.fail("domain", input, "not a fully qualified name"));
        }
        for label in s.split('.') {
            check_label(label).map_err(|why| strictness.fail("domain", input, why))?;
        }
        Ok(Domain(s.to_ascii_lowercase()))
    }

    /// Parse a single DNS label (an ldomain row such as `branch`, or a node name part).
    pub fn parse_label(input: &str, strictness: Strictness) -> Result<String> {
        check_label(input).map_err(|why| strictness.fail("domain label", input, why))?;
        Ok(input.to_ascii_lowercase())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first label and the rest (`branch`, `domain.ru`): the seed's ldomain.mdomain split
    /// for a third-level domain. None for a second-level domain.
    pub fn split_first(&self) -> Option<(&str, &str)> {
        let (first, rest) = self.0.split_once('.')?;
        if rest.contains('.') {
            Some((first, rest))
        } else {
            None
        }
    }
}

fn check_label(label: &str) -> std::result::Result<(), &'static str> {
    if label.is_empty() {
        return Err("empty label");
    }
    if label.len() > MAX_LABEL_LEN {
        return Err("label longer than 63 characters");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err("only letters, digits and '-' are allowed");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("a label cannot start or end with '-'");
    }
    Ok(())
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Domain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Parses with [`Strictness::Admin`] (a clear *bad input* error): for command-line
/// arguments (`clap` uses `FromStr`).
impl std::str::FromStr for Domain {
    type Err = Error;
    fn from_str(s: &str) -> Result<Domain> {
        Domain::parse(s, Strictness::Admin)
    }
}

/// A validated, lower-case local part (mailbox name) such as `ivanov` or `i.petrov`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct LocalPart(String);

impl LocalPart {
    /// Parse a local part as it may appear in an address: `+tag` is allowed (subaddress).
    pub fn parse(input: &str, strictness: Strictness) -> Result<LocalPart> {
        Self::check(input, true).map_err(|why| strictness.fail("local part", input, why))?;
        Ok(LocalPart(input.to_ascii_lowercase()))
    }

    /// Parse a mailbox name for the directory (no `+`: it separates subaddresses).
    pub fn parse_mailbox(input: &str, strictness: Strictness) -> Result<LocalPart> {
        Self::check(input, false).map_err(|why| strictness.fail("mailbox name", input, why))?;
        Ok(LocalPart(input.to_ascii_lowercase()))
    }

    fn check(input: &str, allow_plus: bool) -> std::result::Result<(), &'static str> {
        if input.is_empty() {
            return Err("empty");
        }
        if input.len() > MAX_LOCAL_PART_LEN {
            return Err("longer than 64 characters");
        }
        let ok = input.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || b == b'.'
                || b == b'_'
                || b == b'-'
                || (allow_plus && b == SUBADDRESS_SEPARATOR as u8)
        });
        if !ok {
            return Err(if allow_plus {
                "only letters, digits, '.', '_', '-' and '+' are allowed"
            } else {
                "only letters, digits, '.', '_' and '-' are allowed"
            });
        }
        if input.starts_with('.') || input.ends_with('.') || input.contains("..") {
            return Err("misplaced '.'");
        }
        if input.starts_with(SUBADDRESS_SEPARATOR) {
            return Err("cannot start with '+'");
        }
        if input.starts_with('-') {
            // Never let a name look like an option to a program it may be handed to.
            return Err("cannot start with '-'");
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The mailbox this local part delivers to: `user+tag` → `user`.
    pub fn mailbox(&self) -> &str {
        match self.0.split_once(SUBADDRESS_SEPARATOR) {
            Some((base, _)) => base,
            None => &self.0,
        }
    }

    /// True when this is the seed's legacy per-domain pseudo-mailbox `dir`, never a user.
    pub fn is_legacy_dir(&self) -> bool {
        self.mailbox() == "dir"
    }
}

impl fmt::Display for LocalPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated address `local@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    pub local: LocalPart,
    pub domain: Domain,
}

impl Address {
    pub fn parse(input: &str, strictness: Strictness) -> Result<Address> {
        if input.len() > MAX_LOCAL_PART_LEN + 1 + MAX_DOMAIN_LEN {
            return Err(strictness.fail("address", input, "too long"));
        }
        let Some((local, domain)) = input.rsplit_once('@') else {
            return Err(strictness.fail("address", input, "no '@'"));
        };
        Ok(Address {
            local: LocalPart::parse(local, strictness)?,
            domain: Domain::parse(domain, strictness)?,
        })
    }

    /// The address of the mailbox this address delivers to (subaddress removed).
    pub fn mailbox_address(&self) -> String {
        format!("{}@{}", self.local.mailbox(), self.domain)
    }
}

/// Parses with [`Strictness::Admin`] (a clear *bad input* error): for command-line
/// arguments (`clap` uses `FromStr`).
impl std::str::FromStr for Address {
    type Err = Error;
    fn from_str(s: &str) -> Result<Address> {
        Address::parse(s, Strictness::Admin)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// A node name as it appears in `maps.storage1` / `storage2` (a host name, usually an FQDN).
pub fn parse_node_name(input: &str, strictness: Strictness) -> Result<String> {
    let s = input.strip_suffix('.').unwrap_or(input);
    if s.is_empty() || s.len() > MAX_DOMAIN_LEN {
        return Err(strictness.fail("node name", input, "empty or too long"));
    }
    for label in s.split('.') {
        check_label(label).map_err(|why| strictness.fail("node name", input, why))?;
    }
    Ok(s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_lowercased_and_validated() {
        let d = Domain::parse("Branch.Domain.RU", Strictness::Lookup).unwrap();
        assert_eq!(d.as_str(), "branch.domain.ru");
        assert_eq!(d.split_first(), Some(("branch", "domain.ru")));
        for bad in [
            "",
            "nodot",
            "a..b",
            "-a.b",
            "a b.c",
            "a'b.c",
            "x.${run{/bin/true}}",
            "a.b\0",
            "a.b\r\n",
            "дом.рф",
            "%.ru",
        ] {
            let e = Domain::parse(bad, Strictness::Lookup).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NotFound, "{bad:?}");
            let e = Domain::parse(bad, Strictness::Admin).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::BadInput, "{bad:?}");
        }
        let long = format!("{}.ru", "a".repeat(10_000));
        assert!(Domain::parse(&long, Strictness::Lookup).is_err());
    }

    #[test]
    fn addresses_and_subaddresses() {
        let a = Address::parse("User+Tag@Branch.Domain.ru", Strictness::Lookup).unwrap();
        assert_eq!(a.to_string(), "user+tag@branch.domain.ru");
        assert_eq!(a.mailbox_address(), "user@branch.domain.ru");
        for bad in [
            "\"a b\"@x.ru",
            "a@b@",
            "'; drop table mail; --@x.ru",
            "x@${run{/bin/touch /tmp/pwn}}",
            "a%b@x.ru",
            "a@",
            "@x.ru",
        ] {
            assert!(Address::parse(bad, Strictness::Lookup).is_err(), "{bad:?}");
        }
        assert!(LocalPart::parse_mailbox("a+b", Strictness::Admin).is_err());
        assert!(LocalPart::parse("-rf", Strictness::Admin).is_err());
        assert!(LocalPart::parse("a-b_c.d", Strictness::Admin).is_ok());
        let long = format!("{}@x.ru", "a".repeat(10_000));
        assert_eq!(
            Address::parse(&long, Strictness::Lookup)
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
        let a: Address = "Ivanov@Branch.Company.RU".parse().unwrap();
        assert_eq!(a.to_string(), "ivanov@branch.company.ru");
        let e = "a b@x.ru".parse::<Address>().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadInput);
        let d: Domain = "Branch.Company.ru.".parse().unwrap();
        assert_eq!(d.as_str(), "branch.company.ru");
        assert_eq!(
            parse_node_name("Storage-01.Domain.RU.", Strictness::Admin).unwrap(),
            "storage-01.domain.ru"
        );
        assert_eq!(
            parse_node_name("storage-01", Strictness::Admin).unwrap(),
            "storage-01"
        );
        assert!(parse_node_name("storage 01", Strictness::Admin).is_err());
        let msg = Address::parse("a\nb@x.ru", Strictness::Admin)
            .unwrap_err()
            .to_string();
        assert!(!msg.contains('\n'));
    }
}
