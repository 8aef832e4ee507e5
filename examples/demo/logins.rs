//! mailauth chapters: password schemes, Dovecot's passdb/userdb (checkpassword and the JSON
//! API of Dovecot 2.4's Lua passdb), and what happens when no database answers.

use crate::{md5_hex, Cluster, Story, MAILBOXES};
use mailcluster::auth::api;
use mailcluster::auth::authenticator::{AuthContext, Authenticator, Outcome};
use mailcluster::auth::checkpassword::{self, Action, Mode};
use mailcluster::auth::http::server::{Request, Response};
use mailcluster::auth::http::Service;
use mailcluster::auth::scheme::{self, Scheme};
use mailcluster::config::{Config, DirectoryConfig, Role};
use mailcluster::{Error, Result};

/// Passwords of the mailboxes mailctl adds in the next chapter (hashed there by the
/// library's scheme generation).
pub const NEW_MAILBOXES: &[(&str, &str, &str)] = &[
    ("novikova@msk.domain.ru", "novikova-pw", "SHA512-CRYPT"),
    ("orlov@spb.domain.ru", "orlov-pw", "BLF-CRYPT"),
];

fn scheme_err(e: scheme::SchemeError) -> Error {
    Error::internal(format!("password scheme: {e}"))
}

/// Chapter: the stored password forms Dovecot understands, verified by our code.
pub fn schemes(story: &mut Story) -> Result<()> {
    story.chapter("Password schemes (Dovecot's default_pass_scheme; `mailauth hash`)");
    println!("   The seed stores bare MD5 hex; Dovecot read it with default_pass_scheme = MD5.");
    for (addr, password, _) in &MAILBOXES[..2] {
        let stored = md5_hex(password);
        let as_scheme = scheme::scheme_of(&stored, Scheme::Md5).map_err(scheme_err)?;
        let right =
            scheme::verify(password.as_bytes(), &stored, Scheme::Md5).map_err(scheme_err)?;
        let wrong = scheme::verify(b"guess", &stored, Scheme::Md5).map_err(scheme_err)?;
        story.check(
            right && !wrong,
            format!("{addr:<24} {stored} ({as_scheme}): right password yes, wrong one no"),
        );
    }
    println!(
        "   New passwords get a salted, slow scheme (what `mailauth hash` and mailctl store):"
    );
    for (addr, password, name) in NEW_MAILBOXES {
        let s = Scheme::from_name(name)
            .ok_or_else(|| Error::internal(format!("unknown scheme {name}")))?;
        let stored = scheme::generate(password.as_bytes(), s).map_err(scheme_err)?;
        let again = scheme::generate(password.as_bytes(), s).map_err(scheme_err)?;
        let right =
            scheme::verify(password.as_bytes(), &stored, Scheme::Md5).map_err(scheme_err)?;
        let wrong = scheme::verify(b"guess", &stored, Scheme::Md5).map_err(scheme_err)?;
        story.check(
            right && !wrong && stored != again && stored.len() <= 128,
            format!(
                "{addr:<24} {}... ({} chars, fits varchar(128)): right yes, wrong no",
                &stored[..stored.len().min(28)],
                stored.len()
            ),
        );
    }
    story.check(
        true,
        "the same password hashed twice gives two different strings (a random salt each)"
            .to_string(),
    );
    match scheme::verify(b"anything", "{ROT13}nofnq", Scheme::Md5) {
        Err(e) => story.check(
            true,
            format!("a stored value in an unknown scheme refuses the login: {e}"),
        ),
        Ok(v) => story.check(false, format!("{{ROT13}} verified as {v}")),
    }
    Ok(())
}

/// What the checkpassword program does with an outcome (exit code, or exec with variables).
fn action_text(a: &Action) -> String {
    match a {
        Action::Exec(_) => "exec reply (exit 0)".to_string(),
        Action::Exit(c) => format!("exit {c}"),
    }
}

/// Chapter: Dovecot's passdb and userdb on storage-01, through the library's authenticator.
pub fn dovecot(story: &mut Story, cluster: &Cluster) -> Result<()> {
    story
        .chapter("Dovecot logins on storage-01 (passdb/userdb: `mailauth checkpassword`, Lua API)");
    let auth = Authenticator::new(cluster.config.clone())?;
    let ctx = AuthContext {
        service: "imap".to_string(),
        remote_ip: "192.0.2.10".to_string(),
        local_ip: "192.0.2.1".to_string(),
    };
    // (login, password, expected outcome, what it shows)
    let cases: &[(&str, &str, &str, &str)] = &[
        ("ivanov@msk.domain.ru", "ivanov-pw", "ok", "seed's bare MD5"),
        (
            "Ivanov+Lists@MSK.domain.ru",
            "ivanov-pw",
            "ok",
            "case, +tag",
        ),
        (
            "novikova@msk.domain.ru",
            "novikova-pw",
            "ok",
            "SHA512-CRYPT",
        ),
        ("orlov@spb.domain.ru", "orlov-pw", "ok", "BLF-CRYPT"),
        (
            "petrova@msk.domain.ru",
            "wrong-pw",
            "mismatch",
            "wrong password",
        ),
        (
            "sidorov@kzn.domain.ru",
            "sidorov-pw",
            "disabled",
            "mailbox disabled",
        ),
        (
            "kuznetsov@nsk.domain.ru",
            "kuznetsov-pw",
            "disabled",
            "domain disabled",
        ),
        ("nobody@msk.domain.ru", "x", "unknown", "unknown user"),
        ("%u'--@msk.domain.ru", "x", "unknown", "hostile name"),
    ];
    println!("   passdb (a login; checkpassword exit codes as Dovecot 2.3 reads them):");
    for (user, password, expect, what) in cases {
        let outcome = auth.passdb(user, password.as_bytes(), &ctx)?;
        let (got, shown) = match &outcome {
            Outcome::Ok(info) => ("ok", format!("OK as {}", info.user)),
            Outcome::PasswordMismatch(_) => ("mismatch", "password mismatch".to_string()),
            Outcome::UserDisabled => ("disabled", "refused: disabled".to_string()),
            Outcome::UserUnknown => ("unknown", "unknown user".to_string()),
        };
        let act = checkpassword::action(Mode::Authenticate, user, Ok(outcome));
        let exit_ok = match got {
            "ok" => matches!(act, Action::Exec(_)),
            _ => act == Action::Exit(checkpassword::EXIT_FAILED),
        };
        story.check(
            got == *expect && exit_ok,
            format!("{user:<27} {what:<16} -> {shown:<30} {}", action_text(&act)),
        );
    }

    println!("   userdb (LMTP delivery, doveadm user): what Dovecot gets in the environment:");
    let root = &cluster.config.mail.root;
    match auth.userdb("ivanov@msk.domain.ru")? {
        Outcome::Ok(info) => {
            let home = root.join("msk.domain.ru/ivanov");
            let ok = info.home == home.display().to_string()
                && info.mail == format!("maildir:{}/Maildir", home.display())
                && info.uid == cluster.config.mail.uid
                && info.gid == cluster.config.mail.gid;
            story.check(ok, "ivanov@msk.domain.ru:".to_string());
            for (k, v) in checkpassword::reply_env(&info, Mode::Lookup) {
                let v = if k == "HOME" || k == "userdb_mail" {
                    v.replace(&cluster.base.display().to_string(), "$TMP")
                } else {
                    v
                };
                println!("     {k}={v}");
            }
        }
        other => story.check(false, format!("userdb ivanov: {other:?}")),
    }
    let disabled = auth.userdb("sidorov@kzn.domain.ru")?;
    story.check(
        matches!(disabled, Outcome::Ok(_)),
        "sidorov@kzn.domain.ru (disabled) still answers: mail already accepted is delivered"
            .to_string(),
    );
    let unknown = checkpassword::action(
        Mode::Lookup,
        "nobody@msk.domain.ru",
        auth.userdb("nobody@msk.domain.ru"),
    );
    story.check(
        unknown == Action::Exit(checkpassword::EXIT_UNKNOWN),
        format!(
            "nobody@msk.domain.ru: {} (unknown user in a lookup)",
            action_text(&unknown)
        ),
    );

    println!("   the same over the JSON API (Dovecot 2.4's Lua passdb; `mailauth serve`):");
    let body = serde_json::json!({
        "user": "novikova@msk.domain.ru",
        "password": "novikova-pw",
        "service": "imap",
    });
    let resp = api::handle(&auth, "/passdb", body.to_string().as_bytes());
    let text =
        String::from_utf8_lossy(&resp.body).replace(&cluster.base.display().to_string(), "$TMP");
    story.check(
        resp.status == 200 && text.contains("\"result\":\"ok\""),
        format!("POST /passdb -> {} {text}", resp.status),
    );
    Ok(())
}

/// The proxy host's `mailauth serve` (nginx `auth_http`), reading both storages' databases.
pub fn proxy_service(cluster: &Cluster, urls: &[String]) -> Result<std::sync::Arc<Service>> {
    let mut text = "node = \"mail.domain.ru\"\ndb_timeout = 1\n".to_string();
    for (i, url) in urls.iter().enumerate() {
        text.push_str(&format!(
            "\n[[directory]]\nname = \"db-{}\"\nurl = \"{url}\"\nrole = \"storage\"\n",
            i + 1
        ));
    }
    text.push_str(
        "\n[auth.http]\nroute_ttl = 0          # ask the directory every time (default: a short cache)\n\
         user_ttl = 0           # nor logins: the demo changes the directory between its steps\n\
         \n[auth.health]\nenabled = false        # the demo runs no IMAP/POP3 servers to probe\n\
         \n[auth.nodes]\n\"storage-01.domain.ru\" = \"10.0.0.1\"\n\"storage-02.domain.ru\" = \"10.0.0.2\"\n",
    );
    let path = cluster.base.join(format!("proxy-{}.toml", urls.len()));
    std::fs::write(&path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Service::start(&Config::load(&path)?)
}

/// One nginx `auth_http` request, as nginx's mail proxy sends it.
pub fn nginx_auth(svc: &Service, user: &str, password: &str, proto: &str) -> Response {
    let h = |n: &str, v: &str| (n.to_string(), v.as_bytes().to_vec());
    let req = Request {
        method: "GET".to_string(),
        path: "/auth".to_string(),
        headers: vec![
            h("Auth-Method", "plain"),
            h("Auth-User", user),
            h("Auth-Pass", password),
            h("Auth-Protocol", proto),
            h("Auth-Login-Attempt", "1"),
            h("Client-IP", "192.0.2.10"),
        ],
        body: Vec::new(),
    };
    svc.handle(&req, &"127.0.0.1")
}

/// A response's headers on one line.
pub fn headers(r: &Response) -> String {
    r.headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Chapter: nginx's mail proxy asks `auth_http` where a user lives.
pub fn nginx(story: &mut Story, cluster: &Cluster) -> Result<()> {
    story.chapter("nginx mail proxy on the proxy host (auth_http: `mailauth serve`)");
    let svc = proxy_service(
        cluster,
        &[cluster.urls[0].2.clone(), cluster.urls[1].2.clone()],
    )?;
    println!("   nginx asks GET /auth with Auth-User/Auth-Pass; the answer says where to connect:");
    let cases: &[(&str, &str, &str, Option<&str>)] = &[
        (
            "ivanov@msk.domain.ru",
            "ivanov-pw",
            "imap",
            Some("10.0.0.1"),
        ),
        (
            "smirnova@spb.domain.ru",
            "smirnova-pw",
            "pop3",
            Some("10.0.0.2"),
        ),
        (
            "novikova@msk.domain.ru",
            "novikova-pw",
            "smtp",
            Some("10.0.0.1"),
        ),
        ("petrova@msk.domain.ru", "wrong-pw", "imap", None),
        ("sidorov@kzn.domain.ru", "sidorov-pw", "imap", None),
        ("nobody@msk.domain.ru", "x", "pop3", None),
    ];
    for (user, pw, proto, server) in cases {
        let r = nginx_auth(&svc, user, pw, proto);
        let ok = match server {
            Some(ip) => {
                header(&r, "Auth-Status") == Some("OK") && header(&r, "Auth-Server") == Some(*ip)
            }
            None => {
                header(&r, "Auth-Status").is_some_and(|s| s.contains("Invalid login"))
                    && header(&r, "Auth-Server").is_none()
            }
        };
        story.check(ok, format!("{user:<23} {proto:<4} -> {}", headers(&r)));
    }
    println!("   (a wrong password gets Auth-Wait: nginx delays the client, and repeated failures");
    println!("   from one address are refused without a password check)");
    Ok(())
}

/// Chapter: every database down. Nobody logs in; Dovecot says "try again later".
pub fn all_down(story: &mut Story, cluster: &Cluster) -> Result<()> {
    story.chapter("Every database down: a temporary failure, and nobody logs in");
    let mut config = cluster.config.clone();
    config.db_timeout = 1.0;
    config.directories = ["storage-01-pg", "storage-02-pg"]
        .iter()
        .map(|name| DirectoryConfig {
            name: name.to_string(),
            // Nothing listens on port 1: refused at once.
            url: "postgresql://mail@127.0.0.1:1/mail?connect_timeout=1".to_string(),
            role: Role::Storage,
        })
        .collect();
    let auth = Authenticator::new(config)?;
    let ctx = AuthContext::default();
    let r = auth.passdb("ivanov@msk.domain.ru", b"ivanov-pw", &ctx);
    let temporary = matches!(&r, Err(e) if e.is_temporary());
    let reason = match &r {
        Err(e) => e.to_string(),
        Ok(o) => format!("{o:?}"),
    };
    let act = checkpassword::action(Mode::Authenticate, "ivanov@msk.domain.ru", r);
    story.check(
        temporary && act == Action::Exit(checkpassword::EXIT_TEMPFAIL),
        format!(
            "ivanov@msk.domain.ru, right password: {} (Dovecot: \"temporary failure\"), not a login",
            action_text(&act)
        ),
    );
    println!("     {reason}");
    let act = checkpassword::action(
        Mode::Lookup,
        "ivanov@msk.domain.ru",
        auth.userdb("ivanov@msk.domain.ru"),
    );
    story.check(
        act == Action::Exit(checkpassword::EXIT_TEMPFAIL),
        format!(
            "userdb lookup: {} (LMTP answers 4xx, Exim keeps the mail queued), never \"unknown user\"",
            action_text(&act)
        ),
    );
    let svc = proxy_service(
        cluster,
        &["postgresql://mail@127.0.0.1:1/mail?connect_timeout=1".to_string()],
    )?;
    let r = nginx_auth(&svc, "ivanov@msk.domain.ru", "ivanov-pw", "imap");
    story.check(
        header(&r, "Auth-Status").is_some_and(|s| s.contains("Temporary"))
            && header(&r, "Auth-Server").is_none(),
        format!(
            "nginx auth_http: {} (the seed's Perl answered OK with server 0.0.0.0)",
            headers(&r)
        ),
    );
    let body = br#"{"user":"ivanov@msk.domain.ru","password":"ivanov-pw"}"#;
    let resp = api::handle(&auth, "/passdb", body);
    let text = String::from_utf8_lossy(&resp.body).to_string();
    story.check(
        resp.status == 503 && text.contains("internal_failure"),
        format!(
            "JSON API: HTTP {} internal_failure (Lua: PASSDB_RESULT_INTERNAL_FAILURE)",
            resp.status
        ),
    );
    Ok(())
}
