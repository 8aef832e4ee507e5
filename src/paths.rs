//! Mail path templates: where a mailbox's home and Maildir live on a storage node.
//!
//! A template is a path with variables in braces:
//!
//! | variable | value for `ivanov@branch.company.ru` | value for `sales@partner.org` |
//! | --- | --- | --- |
//! | `{domain}` | `branch.company.ru` | `partner.org` |
//! | `{ldomain}` | `branch` (the first label) | `partner` |
//! | `{mdomain}` | `company.ru` (the rest) | `org` |
//! | `{mailbox}` | `ivanov` | `sales` |
//!
//! The Maildir template is relative to the home, or absolute (then it too must stay under
//! the mail root).
//!
//! `{ldomain}` is always the first label and `{mdomain}` everything after it, whatever the
//! number of labels: the seed's `ldomain.mdomain` split for a branch domain, and a
//! predictable split for a second-level or `co_domain` domain. `{mailbox}` is the mailbox
//! without a `+tag` subaddress. Values come only from validated names ([`Domain`],
//! [`LocalPart`]), which cannot hold `/`, cannot be `.` or `..` and are lower-case, so an
//! expansion can never climb out of the directory its template names; [`home`] still checks
//! that the result stays under the mail root.

use crate::error::{Error, Result};
use crate::names::{Domain, LocalPart};
use std::path::{Path, PathBuf};

/// The variables a template may use.
pub const VARIABLES: [&str; 4] = ["domain", "ldomain", "mdomain", "mailbox"];

/// The values of the template variables for one mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vars<'a> {
    pub domain: &'a str,
    pub ldomain: &'a str,
    pub mdomain: &'a str,
    pub mailbox: &'a str,
}

impl<'a> Vars<'a> {
    /// The variables for `mailbox@domain` (a `+tag` is dropped from the mailbox).
    pub fn new(mailbox: &'a LocalPart, domain: &'a Domain) -> Vars<'a> {
        let d = domain.as_str();
        // A Domain always has at least two labels.
        let (ldomain, mdomain) = d.split_once('.').unwrap_or((d, ""));
        Vars {
            domain: d,
            ldomain,
            mdomain,
            mailbox: mailbox.mailbox(),
        }
    }

    /// Variables for a domain only (`{mailbox}` expands to nothing; see [`domain_dir`]).
    pub fn domain_only(domain: &'a Domain) -> Vars<'a> {
        let d = domain.as_str();
        let (ldomain, mdomain) = d.split_once('.').unwrap_or((d, ""));
        Vars {
            domain: d,
            ldomain,
            mdomain,
            mailbox: "",
        }
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        match name {
            "domain" => Some(self.domain),
            "ldomain" => Some(self.ldomain),
            "mdomain" => Some(self.mdomain),
            "mailbox" => Some(self.mailbox),
            _ => None,
        }
    }
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece<'t> {
    Text(&'t str),
    Var(&'t str),
}

/// Split a template into text and variables; the message says what is wrong.
fn pieces(template: &str) -> std::result::Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                out.push(Piece::Text(rest));
                break;
            }
            Some(i) => {
                if i > 0 {
                    out.push(Piece::Text(&rest[..i]));
                }
                if rest[i..].starts_with('}') {
                    return Err("a '}' without its '{'".to_string());
                }
                let after = &rest[i + 1..];
                let Some(end) = after.find('}') else {
                    return Err("a '{' without its '}'".to_string());
                };
                let name = &after[..end];
                if !VARIABLES.contains(&name) {
                    return Err(format!(
                        "unknown variable {{{}}} (known: {{domain}}, {{ldomain}}, {{mdomain}}, {{mailbox}})",
                        crate::names::printable(name).trim_matches('"')
                    ));
                }
                out.push(Piece::Var(name));
                rest = &after[end + 1..];
            }
        }
    }
    Ok(out)
}

/// True when the template uses `{name}`.
pub fn uses(template: &str, name: &str) -> bool {
    pieces(template)
        .map(|p| p.contains(&Piece::Var(name)))
        .unwrap_or(false)
}

/// Check a template's syntax (balanced braces, known variables).
pub fn check(template: &str) -> std::result::Result<(), String> {
    if template.contains('\0') {
        return Err("contains a NUL byte".to_string());
    }
    pieces(template).map(|_| ())
}

/// Substitute the variables.
pub fn expand(template: &str, vars: &Vars<'_>) -> Result<String> {
    let parts = pieces(template)
        .map_err(|why| Error::config(format!("path template {template:?}: {why}")))?;
    let mut out = String::with_capacity(template.len() + 64);
    for p in parts {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(v) => out.push_str(vars.get(v).unwrap_or_default()),
        }
    }
    Ok(out)
}

/// True for an absolute path made only of normal components (no `.`, `..`, empty parts).
pub fn is_clean_absolute(path: &Path) -> bool {
    let s = path.as_os_str().as_encoded_bytes();
    match s.strip_prefix(b"/") {
        Some(b"") => true,
        Some(rest) => clean_segments(rest),
        None => false,
    }
}

/// True for a relative path made only of normal components (or empty).
pub fn is_clean_relative(path: &Path) -> bool {
    let s = path.as_os_str().as_encoded_bytes();
    s.is_empty() || (!s.starts_with(b"/") && clean_segments(s))
}

fn clean_segments(s: &[u8]) -> bool {
    s.split(|&b| b == b'/')
        .all(|seg| !seg.is_empty() && seg != b"." && seg != b".." && !seg.contains(&0))
}

/// The home directory: `home_template` expanded, which must be a clean absolute path
/// strictly under `root`.
pub fn home(home_template: &str, root: &Path, vars: &Vars<'_>) -> Result<PathBuf> {
    let path = PathBuf::from(expand(home_template, vars)?);
    if !is_clean_absolute(&path) || !path.starts_with(root) || path == root {
        return Err(Error::config(format!(
            "home template {home_template:?} gives {}, which is not a directory under the mail \
             root {}: fix [mail] home or [mail] root",
            path.display(),
            root.display()
        )));
    }
    Ok(path)
}

/// The Maildir: `maildir_template` relative to `home` (empty means the home itself), or,
/// when it starts with `/`, an absolute template that must stay under `root`.
pub fn maildir(
    home: &Path,
    root: &Path,
    maildir_template: &str,
    vars: &Vars<'_>,
) -> Result<PathBuf> {
    let expanded = PathBuf::from(expand(maildir_template, vars)?);
    if maildir_template.starts_with('/') {
        if !is_clean_absolute(&expanded) || !expanded.starts_with(root) || expanded == root {
            return Err(Error::config(format!(
                "maildir template {maildir_template:?} gives {}, which is not a directory \
                 under the mail root {}: fix [mail] maildir or [mail] root",
                expanded.display(),
                root.display()
            )));
        }
        return Ok(expanded);
    }
    if !is_clean_relative(&expanded) {
        return Err(Error::config(format!(
            "maildir template {maildir_template:?} gives {}, which is not a plain relative path \
             under the home directory: fix [mail] maildir",
            expanded.display()
        )));
    }
    Ok(home.join(expanded))
}

/// The mail root implied by a home template: its leading components without variables
/// (`/usr/mail/{domain}/{mailbox}` → `/usr/mail`). Used when `[mail] root` is not set.
pub fn implied_root(home_template: &str) -> PathBuf {
    let fixed: Vec<&str> = home_template
        .split('/')
        .take_while(|c| !c.contains(['{', '}']))
        .collect();
    // The last fixed component is a directory only if a variable follows it.
    let joined = fixed.join("/");
    if joined.is_empty() {
        PathBuf::from("/")
    } else {
        PathBuf::from(joined)
    }
}

/// The directory that holds all of a domain's mailboxes: the home template cut before the
/// component holding `{mailbox}` (`/usr/mail/{domain}/{mailbox}` → `/usr/mail/branch.company.ru`).
/// This is the unit mailsync replicates.
pub fn domain_dir(home_template: &str, root: &Path, domain: &Domain) -> Result<PathBuf> {
    let components: Vec<&str> = home_template.split('/').collect();
    let Some(idx) = components.iter().position(|c| uses(c, "mailbox")) else {
        return Err(Error::config(format!(
            "home template {home_template:?} has no {{mailbox}}"
        )));
    };
    let parent = components[..idx].join("/");
    let path = PathBuf::from(expand(&parent, &Vars::domain_only(domain))?);
    if !is_clean_absolute(&path) || !path.starts_with(root) || path == root {
        return Err(Error::config(format!(
            "home template {home_template:?} puts the domain {domain} at {}, which is not a \
             directory under the mail root {}: use a template such as \
             {}/{{domain}}/{{mailbox}}",
            path.display(),
            root.display(),
            root.display()
        )));
    }
    Ok(path)
}

/// Check a home/maildir template pair against the mail root, as [`crate::config::Config`]
/// does when it loads. The message says what is wrong (the caller adds file and line).
pub fn validate(
    home_template: &str,
    maildir_template: &str,
    root: &Path,
) -> std::result::Result<(), String> {
    if !is_clean_absolute(root) || root == Path::new("/") {
        return Err(format!(
            "[mail] root = {}: expected an absolute path other than / without '.', '..' or '//'",
            root.display()
        ));
    }
    check(home_template).map_err(|why| format!("[mail] home = {home_template:?}: {why}"))?;
    check(maildir_template)
        .map_err(|why| format!("[mail] maildir = {maildir_template:?}: {why}"))?;
    if !home_template.starts_with('/') {
        return Err(format!(
            "[mail] home = {home_template:?}: expected an absolute path such as \
             \"/usr/mail/{{domain}}/{{mailbox}}\""
        ));
    }
    let mailbox_components = home_template
        .split('/')
        .filter(|c| uses(c, "mailbox"))
        .count();
    if mailbox_components == 0 {
        return Err(format!(
            "[mail] home = {home_template:?}: must contain {{mailbox}} (every mailbox needs its \
             own home), e.g. \"/usr/mail/{{domain}}/{{mailbox}}\""
        ));
    }
    // Expand with sample names: the literal parts decide where the result lands.
    let (Ok(d), Ok(m)) = (
        Domain::parse("branch.company.ru", crate::names::Strictness::Admin),
        LocalPart::parse_mailbox("ivanov", crate::names::Strictness::Admin),
    ) else {
        return Err("internal: sample names".to_string());
    };
    let vars = Vars::new(&m, &d);
    let h = home(home_template, root, &vars).map_err(|e| e.message().to_string())?;
    maildir(&h, root, maildir_template, &vars).map_err(|e| e.message().to_string())?;
    domain_dir(home_template, root, &d).map_err(|e| e.message().to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Strictness;

    fn names(m: &str, d: &str) -> (LocalPart, Domain) {
        (
            LocalPart::parse(m, Strictness::Admin).unwrap(),
            Domain::parse(d, Strictness::Admin).unwrap(),
        )
    }

    #[test]
    fn expands_the_seed_layout() {
        let (m, d) = names("Ivanov+list", "Branch.Company.ru");
        let v = Vars::new(&m, &d);
        assert_eq!(v.ldomain, "branch");
        assert_eq!(v.mdomain, "company.ru");
        assert_eq!(v.mailbox, "ivanov");
        let root = Path::new("/usr/mail");
        let h = home("/usr/mail/{domain}/{mailbox}", root, &v).unwrap();
        assert_eq!(h, Path::new("/usr/mail/branch.company.ru/ivanov"));
        assert_eq!(
            maildir(&h, root, "Maildir", &v).unwrap(),
            Path::new("/usr/mail/branch.company.ru/ivanov/Maildir")
        );
        assert_eq!(maildir(&h, root, "", &v).unwrap(), h);
        assert_eq!(
            maildir(&h, root, "/usr/mail/maildirs/{domain}/{mailbox}", &v).unwrap(),
            Path::new("/usr/mail/maildirs/branch.company.ru/ivanov")
        );
        assert!(maildir(&h, root, "/var/{mailbox}", &v).is_err());
        assert_eq!(
            implied_root("/usr/mail/{domain}/{mailbox}"),
            Path::new("/usr/mail")
        );
        assert_eq!(
            implied_root("/tmp/t/mail/{ldomain}.{mdomain}/{mailbox}"),
            Path::new("/tmp/t/mail")
        );
        let h = home("/usr/mail/{mdomain}/{ldomain}/{mailbox}", root, &v).unwrap();
        assert_eq!(h, Path::new("/usr/mail/company.ru/branch/ivanov"));
        assert_eq!(
            domain_dir("/usr/mail/{domain}/{mailbox}", root, &d).unwrap(),
            Path::new("/usr/mail/branch.company.ru")
        );
    }

    #[test]
    fn second_level_domains_split_at_the_first_dot() {
        let (m, d) = names("sales", "partner.org");
        let v = Vars::new(&m, &d);
        assert_eq!((v.ldomain, v.mdomain), ("partner", "org"));
    }

    #[test]
    fn refuses_templates_that_escape_or_are_malformed() {
        let root = Path::new("/usr/mail");
        for (home, maildir) in [
            ("/usr/mail/../etc/{mailbox}", "Maildir"),
            ("/usr/{domain}/{mailbox}", "Maildir"),
            ("/usr/mail{domain}/{mailbox}", "Maildir"),
            ("usr/mail/{domain}/{mailbox}", "Maildir"),
            ("/usr/mail/{domain}", "Maildir"),
            ("/usr/mail/{domain}/{mailbox}", "../x"),
            ("/usr/mail/{domain}/{mailbox}", "/abs"),
            ("/usr/mail/{domain}/{mailbox}", "/usr/mail/../x/{mailbox}"),
            ("/usr/mail/{domain}/{user}", "Maildir"),
            ("/usr/mail/{domain/{mailbox}", "Maildir"),
            ("/usr/mail/}{domain}/{mailbox}", "Maildir"),
            ("/usr/mail//{domain}/{mailbox}", "Maildir"),
            ("/usr/mail/./{domain}/{mailbox}", "Maildir"),
        ] {
            assert!(validate(home, maildir, root).is_err(), "{home} {maildir}");
        }
        assert!(validate("/usr/mail/{domain}/{mailbox}", "Maildir", root).is_ok());
        assert!(validate(
            "/srv/m/{ldomain}.{mdomain}/{mailbox}",
            "",
            Path::new("/srv/m")
        )
        .is_ok());
        assert!(validate("/usr/mail/{domain}/{mailbox}", "Maildir", Path::new("rel")).is_err());
    }
}
