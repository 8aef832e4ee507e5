//! Seed-shaped test data, for PostgreSQL (the seed's DDL verbatim) and SQLite.
//!
//! # Loaders
//! * [`pg_seed`]`(name) -> Db` — a fresh database on the shared cluster ([`super::pg::shared`])
//!   with [`SEED_DDL`] + [`CO_DDL`] + the dataset; `db.url` (unix socket, trust) and
//!   `db.tcp_url` (`postgresql://mail:mailpw@127.0.0.1:PORT/DB`). [`pg_seed_smtp`]: the
//!   smtp-role variant (`mail` has no `password` column). [`load_pg`] / [`load_pg_smtp`]
//!   do the same on a given cluster.
//! * [`sqlite_seed`]`(dir) -> String` — `sqlite:DIR/mail.sqlite` created with
//!   `mailcluster::directory::schema::init` + the dataset; [`sqlite_seed_smtp`] likewise.
//!
//! # The dataset (node names: [`S1`] = `storage-01.domain.ru`, [`S2`] = `storage-02.domain.ru`)
//! | domain | source | active | storage1 | storage2 | note |
//! | --- | --- | --- | --- | --- | --- |
//! | `msk.domain.ru` | ldomain | yes | S1 | S2 | |
//! | `spb.domain.ru` | ldomain | yes | S2 | S1 | |
//! | `kzn.domain.ru` | ldomain | yes | S1 | S2 | |
//! | `nsk.domain.ru` | ldomain | yes | S2 | S1 | stored as `Nsk`, storage1 stored as `Storage-02.Domain.RU` |
//! | `ekb.domain.ru` | ldomain | yes | S1 | `''` | no backup (empty storage2) |
//! | `old.domain.ru` | ldomain | **no** | S1 | S2 | disabled ldomain |
//! | `shop.closed.ru` | ldomain | **no** | S2 | S2 | mdomain `closed.ru` disabled; storage2 = storage1 → no backup |
//! | `both.domain.ru` | ldomain **and** co_domain | yes | S1 | S2 | co_maps says S2/S1; the ldomain row wins |
//! | `example.org` | co_domain | yes | S2 | S1 | |
//! | `gone.example.net` | co_domain | **no** | S1 | S2 | disabled co_domain |
//!
//! mdomains: `domain.ru` (active), `closed.ru` (inactive).
//! Domains whose primary is S1: msk, kzn, ekb, old, both (all `.domain.ru`), gone.example.net.
//! Primary S2: spb, nsk, shop.closed.ru, example.org.
//!
//! Mailboxes (`mail` rows; passwords are bare MD5 hex of the plain text, as in the seed):
//! | address | active | plain password | note |
//! | --- | --- | --- | --- |
//! | `ivanov@msk.domain.ru` | yes | `ivanov-pw` | |
//! | `petrov@msk.domain.ru` | **no** | `petrov-pw` | disabled mailbox |
//! | `sidorov@spb.domain.ru` | yes | `sidorov-pw` | |
//! | `smirnova@kzn.domain.ru` | yes | (NULL) | no password |
//! | `kuznetsov@nsk.domain.ru` | yes | `kuznetsov-pw` | stored as `Kuznetsov` |
//! | `popova@ekb.domain.ru` | yes | `popova-pw` | |
//! | `olduser@old.domain.ru` | yes | `olduser-pw` | domain disabled |
//! | `info@both.domain.ru` | yes | `info-pw` | |
//! | `admin@shop.closed.ru` | yes | `admin-pw` | mdomain disabled |
//!
//! Plus the seed's legacy pseudo-mailbox `dir` in every ldomain (password NULL): never a user.
//! No mailbox in co_domains (the seed's `mail` table cannot reference them).
//! [`MAILBOXES`] lists the real ones (address, plain password, mailbox active, domain active).
#![allow(dead_code)]

use super::pg::{self, Db, Pg};
use std::path::Path;

pub const S1: &str = "storage-01.domain.ru";
pub const S2: &str = "storage-02.domain.ru";

/// The seed's DDL, verbatim (seed text lines 65-94).
pub const SEED_DDL: &str = r#"CREATE TABLE mail (
"id" BIGSERIAL PRIMARY KEY,
"mailbox" CHARACTER VARYING(32) not null,
"password" CHARACTER VARYING(128),
"ldomain_id" int NOT NULL,
"mdomain_id" int NOT NULL,
active BOOLEAN DEFAULT TRUE NOT NULL,
CONSTRAINT "mail_ldomain_id_check" CHECK (("ldomain_id" > 0))
);
CREATE TABLE "ldomain" (
"id" BIGSERIAL PRIMARY KEY,
"domain" CHARACTER VARYING(32) NOT NULL,
"active" BOOLEAN DEFAULT TRUE NOT NULL,
CONSTRAINT ldomain_k UNIQUE (domain)
);
CREATE TABLE "mdomain" (
"id" BIGSERIAL PRIMARY KEY,
"domain" CHARACTER VARYING(32) NOT NULL,
"active" BOOLEAN DEFAULT TRUE NOT NULL,
CONSTRAINT mdomain_k UNIQUE (domain)
);
CREATE TABLE "maps" (
"id" SERIAL PRIMARY KEY,
"ldomain_id" int NOT NULL,
"mdomain_id" int NOT NULL,
"storage1" CHARACTER VARYING(32) NOT NULL,
"storage2" CHARACTER VARYING(32) NOT NULL,
CONSTRAINT maps_ldomain_k UNIQUE (ldomain_id)
);
"#;

/// The smtp-role variant of [`SEED_DDL`]: `mail` without `password` (seed: "в таблице mail
/// отсутствует поле password").
pub fn seed_ddl_smtp() -> String {
    SEED_DDL.replace("\"password\" CHARACTER VARYING(128),\n", "")
}

/// co_domain / co_maps (used by the seed's SMTP route query; its DDL is not in the seed).
pub const CO_DDL: &str = r#"CREATE TABLE "co_domain" (
"id" BIGSERIAL PRIMARY KEY,
"domain" CHARACTER VARYING(255) NOT NULL,
"active" BOOLEAN DEFAULT TRUE NOT NULL,
CONSTRAINT co_domain_k UNIQUE (domain)
);
CREATE TABLE "co_maps" (
"id" SERIAL PRIMARY KEY,
"domain_id" int NOT NULL,
"storage1" CHARACTER VARYING(32) NOT NULL,
"storage2" CHARACTER VARYING(32) NOT NULL,
CONSTRAINT co_maps_domain_k UNIQUE (domain_id)
);
"#;

/// (ldomain label as stored, mdomain, active, storage1 as stored, storage2 as stored)
pub const LDOMAINS: &[(&str, &str, bool, &str, &str)] = &[
    ("msk", "domain.ru", true, S1, S2),
    ("spb", "domain.ru", true, S2, S1),
    ("kzn", "domain.ru", true, S1, S2),
    ("Nsk", "domain.ru", true, "Storage-02.Domain.RU", S1),
    ("ekb", "domain.ru", true, S1, ""),
    ("old", "domain.ru", false, S1, S2),
    ("shop", "closed.ru", true, S2, S2),
    ("both", "domain.ru", true, S1, S2),
];

/// (domain, active, storage1, storage2)
pub const CO_DOMAINS: &[(&str, bool, &str, &str)] = &[
    ("example.org", true, S2, S1),
    ("both.domain.ru", true, S2, S1),
    ("gone.example.net", false, S1, S2),
];

/// (mailbox as stored, ldomain label, mdomain, plain password, active)
pub const MAIL_ROWS: &[(&str, &str, &str, Option<&str>, bool)] = &[
    ("ivanov", "msk", "domain.ru", Some("ivanov-pw"), true),
    ("petrov", "msk", "domain.ru", Some("petrov-pw"), false),
    ("sidorov", "spb", "domain.ru", Some("sidorov-pw"), true),
    ("smirnova", "kzn", "domain.ru", None, true),
    ("Kuznetsov", "Nsk", "domain.ru", Some("kuznetsov-pw"), true),
    ("popova", "ekb", "domain.ru", Some("popova-pw"), true),
    ("olduser", "old", "domain.ru", Some("olduser-pw"), true),
    ("info", "both", "domain.ru", Some("info-pw"), true),
    ("admin", "shop", "closed.ru", Some("admin-pw"), true),
];

/// Real mailboxes: (address, plain password, mailbox active, domain active), sorted by address.
pub const MAILBOXES: &[(&str, Option<&str>, bool, bool)] = &[
    ("admin@shop.closed.ru", Some("admin-pw"), true, false),
    ("info@both.domain.ru", Some("info-pw"), true, true),
    ("ivanov@msk.domain.ru", Some("ivanov-pw"), true, true),
    ("kuznetsov@nsk.domain.ru", Some("kuznetsov-pw"), true, true),
    ("olduser@old.domain.ru", Some("olduser-pw"), true, false),
    ("petrov@msk.domain.ru", Some("petrov-pw"), false, true),
    ("popova@ekb.domain.ru", Some("popova-pw"), true, true),
    ("sidorov@spb.domain.ru", Some("sidorov-pw"), true, true),
    ("smirnova@kzn.domain.ru", None, true, true),
];

/// Bare MD5 hex of a plain password (what the seed stores).
pub fn md5_hex(plain: &str) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(plain.as_bytes()))
}

fn b(v: bool) -> &'static str {
    if v {
        "TRUE"
    } else {
        "FALSE"
    }
}

/// The dataset as portable SQL (PostgreSQL and SQLite); ids come from the sequences.
pub fn dataset_sql(with_password: bool) -> String {
    let mut s = String::new();
    s.push_str("INSERT INTO mdomain (domain, active) VALUES ('domain.ru', TRUE);\n");
    s.push_str("INSERT INTO mdomain (domain, active) VALUES ('closed.ru', FALSE);\n");
    for (l, m, active, s1, s2) in LDOMAINS {
        s.push_str(&format!(
            "INSERT INTO ldomain (domain, active) VALUES ('{l}', {});\n",
            b(*active)
        ));
        s.push_str(&format!(
            "INSERT INTO maps (ldomain_id, mdomain_id, storage1, storage2) \
             SELECT l.id, m.id, '{s1}', '{s2}' FROM ldomain l, mdomain m \
             WHERE l.domain = '{l}' AND m.domain = '{m}';\n"
        ));
        // The seed's legacy pseudo-mailbox.
        s.push_str(&mail_insert("dir", l, m, None, true, with_password));
    }
    for (mb, l, m, pw, active) in MAIL_ROWS {
        s.push_str(&mail_insert(mb, l, m, *pw, *active, with_password));
    }
    for (d, active, s1, s2) in CO_DOMAINS {
        s.push_str(&format!(
            "INSERT INTO co_domain (domain, active) VALUES ('{d}', {});\n",
            b(*active)
        ));
        s.push_str(&format!(
            "INSERT INTO co_maps (domain_id, storage1, storage2) \
             SELECT id, '{s1}', '{s2}' FROM co_domain WHERE domain = '{d}';\n"
        ));
    }
    s
}

fn mail_insert(
    mb: &str,
    l: &str,
    m: &str,
    pw: Option<&str>,
    active: bool,
    with_password: bool,
) -> String {
    let (col, val) = if with_password {
        let v = match pw {
            Some(p) => format!("'{}', ", md5_hex(p)),
            None => "NULL, ".to_string(),
        };
        ("password, ", v)
    } else {
        ("", String::new())
    };
    format!(
        "INSERT INTO mail (mailbox, {col}ldomain_id, mdomain_id, active) \
         SELECT '{mb}', {val}l.id, m.id, {} FROM ldomain l, mdomain m \
         WHERE l.domain = '{l}' AND m.domain = '{m}';\n",
        b(active)
    )
}

/// A fresh database on `pg` with the seed's DDL (storage role) and the dataset.
pub fn load_pg(pg: &Pg, name: &str) -> Db {
    let db = pg.create_db(name);
    pg.psql(
        &db.name,
        &format!("{SEED_DDL}{CO_DDL}{}", dataset_sql(true)),
    );
    db
}

/// A fresh database on `pg` with the smtp-role DDL (no `mail.password`) and the dataset.
pub fn load_pg_smtp(pg: &Pg, name: &str) -> Db {
    let db = pg.create_db(name);
    pg.psql(
        &db.name,
        &format!("{}{CO_DDL}{}", seed_ddl_smtp(), dataset_sql(false)),
    );
    db
}

/// [`load_pg`] on the shared cluster.
pub fn pg_seed(name: &str) -> Db {
    load_pg(pg::shared(), name)
}

/// [`load_pg_smtp`] on the shared cluster.
pub fn pg_seed_smtp(name: &str) -> Db {
    load_pg_smtp(pg::shared(), name)
}

fn sqlite_load(dir: &Path, file: &str, role: mailcluster::config::Role) -> String {
    let path = dir.join(file);
    let url = format!("sqlite:{}", path.display());
    mailcluster::directory::schema::init(&url, role).expect("schema init (sqlite)");
    let conn = rusqlite::Connection::open(&path).expect("open sqlite");
    let with_password = role == mailcluster::config::Role::Storage;
    conn.execute_batch(&format!("BEGIN;\n{}COMMIT;\n", dataset_sql(with_password)))
        .expect("load sqlite dataset");
    url
}

/// `sqlite:DIR/mail.sqlite` with the toolkit's schema (storage role) and the dataset.
pub fn sqlite_seed(dir: &Path) -> String {
    sqlite_load(dir, "mail.sqlite", mailcluster::config::Role::Storage)
}

/// `sqlite:DIR/mail-smtp.sqlite`: smtp role (no `mail.password`) and the dataset.
pub fn sqlite_seed_smtp(dir: &Path) -> String {
    sqlite_load(dir, "mail-smtp.sqlite", mailcluster::config::Role::Smtp)
}
