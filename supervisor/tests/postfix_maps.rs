//! Generated maps compile with the real `postmap` and answer the right lookups.

mod common;
use common::*;
use std::path::Path;

const HASH: &str = "{SHA512-CRYPT}$6$rounds=5000$tdqH0s.oYduNxOGC$oqHD6xZZTs.LuOSMs.72k2qcgcjFaJ6JcKrH1fyqRSIRAhnoh6CSg/sw3gmR4v8O8x2nuUganwi2dxusIIbnl1";

fn accounts() -> String {
    format!(
        r#"
[mailboxes.thomas]
password = "{HASH}"
[mailboxes.anna]
password = "{HASH}"
send_as = ["@example.net"]

[aliases]
postmaster = "thomas"
"team@example.org" = ["thomas", "anna"]
"friends@example.org" = ["anna", "pal@elsewhere.example"]
"sales@example.org" = "team@example.org"

[catch_all]
"example.org" = "thomas"
"#
    )
}

fn query(map: &str, key: &str) -> Option<String> {
    let out = tool("postmap", &["-q", key, map]);
    match out.status.code() {
        Some(0) => Some(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        Some(1) => None,
        _ => panic!(
            "postmap -q {key} {map}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn apply(setup: &Setup) {
    let out = postmaster(&setup.config, &["apply"], None);
    assert!(
        out.status.success(),
        "apply failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

fn check_lookups(setup: &Setup, kind: &str) {
    let g = &setup.generated;
    let alias = format!("{kind}:{}", g.join("postfix/virtual_alias").display());
    let mailbox = format!("{kind}:{}", g.join("postfix/virtual_mailbox").display());
    let sender = format!("{kind}:{}", g.join("postfix/sender_login").display());

    // Mailbox addresses map to themselves, so the catch-all never captures them.
    assert_eq!(
        query(&alias, "anna@example.org").as_deref(),
        Some("anna@example.org")
    );
    assert_eq!(
        query(&alias, "anna@example.net").as_deref(),
        Some("anna@example.net")
    );
    assert_eq!(
        query(&alias, "postmaster@example.net").as_deref(),
        Some("thomas@example.org")
    );
    assert_eq!(
        query(&alias, "team@example.org").as_deref(),
        Some("thomas@example.org, anna@example.org")
    );
    assert_eq!(
        query(&alias, "sales@example.org").as_deref(),
        Some("team@example.org")
    );
    assert_eq!(
        query(&alias, "friends@example.org").as_deref(),
        Some("anna@example.org, pal@elsewhere.example")
    );
    assert_eq!(
        query(&alias, "@example.org").as_deref(),
        Some("thomas@example.org")
    );
    assert_eq!(
        query(&alias, "@example.net"),
        None,
        "example.net has no catch-all"
    );
    assert_eq!(query(&alias, "nobody@example.net"), None);

    assert_eq!(
        query(&mailbox, "thomas@example.net").as_deref(),
        Some("thomas/")
    );
    assert_eq!(query(&mailbox, "postmaster@example.org"), None);

    assert_eq!(
        query(&sender, "thomas@example.org").as_deref(),
        Some("thomas")
    );
    assert_eq!(
        query(&sender, "postmaster@example.org").as_deref(),
        Some("thomas")
    );
    assert_eq!(
        query(&sender, "sales@example.org"),
        None,
        "an alias for two people is nobody's sender address"
    );
    assert_eq!(
        query(&sender, "friends@example.org"),
        None,
        "an alias that forwards outside is nobody's"
    );
    assert_eq!(query(&sender, "@example.net").as_deref(), Some("anna"));
    assert_eq!(query(&sender, "anna@example.net").as_deref(), Some("anna"));
}

#[test]
fn lmdb_maps_answer_lookups() {
    let setup = Setup::new("[postfix]\nmap_type = \"lmdb\"\n", &accounts());
    apply(&setup);
    assert!(setup.generated.join("postfix/virtual_alias.lmdb").exists());
    check_lookups(&setup, "lmdb");
}

#[test]
fn hash_maps_answer_lookups() {
    let setup = Setup::new("[postfix]\nmap_type = \"hash\"\n", &accounts());
    apply(&setup);
    assert!(setup.generated.join("postfix/virtual_alias.db").exists());
    check_lookups(&setup, "hash");
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn unchanged_accounts_leave_every_file_untouched() {
    let setup = Setup::new("[postfix]\nmap_type = \"lmdb\"\n", &accounts());
    apply(&setup);
    let table = setup.generated.join("postfix/virtual_alias.lmdb");
    let before = std::fs::metadata(&table).unwrap().modified().unwrap();
    let out = postmaster(&setup.config, &["apply"], None);
    assert!(out.status.success());
    assert!(!stdout(&out).contains("written:"), "{}", stdout(&out));
    assert_eq!(
        std::fs::metadata(&table).unwrap().modified().unwrap(),
        before
    );
    assert_eq!(
        listing(&setup.generated.join("postfix")),
        [
            "sender_login",
            "sender_login.lmdb",
            "virtual_alias",
            "virtual_alias.lmdb",
            "virtual_mailbox",
            "virtual_mailbox.lmdb"
        ]
    );
}

#[test]
fn a_changed_account_rebuilds_the_maps() {
    let setup = Setup::new("[postfix]\nmap_type = \"lmdb\"\n", &accounts());
    apply(&setup);
    std::fs::write(
        &setup.accounts,
        accounts() + &format!("[mailboxes.carl]\npassword = \"{HASH}\"\n"),
    )
    .unwrap();
    apply(&setup);
    let alias = format!(
        "lmdb:{}",
        setup.generated.join("postfix/virtual_alias").display()
    );
    assert_eq!(
        query(&alias, "carl@example.net").as_deref(),
        Some("carl@example.net")
    );
}

#[test]
fn invalid_accounts_change_nothing() {
    let setup = Setup::new("[postfix]\nmap_type = \"lmdb\"\n", &accounts());
    apply(&setup);
    let users = setup.generated.join("dovecot/users");
    let before = std::fs::read(&users).unwrap();
    std::fs::write(
        &setup.accounts,
        "[mailboxes.eve]\npassword = \"plaintext\"\n",
    )
    .unwrap();
    let out = postmaster(&setup.config, &["apply"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .contains("accounts.toml:2:12: mailbox `eve`: this looks like a plaintext password"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("1 error in the accounts file; the accounts were not applied"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&users).unwrap(), before);
}

#[test]
fn passwd_file_is_not_world_readable() {
    use std::os::unix::fs::MetadataExt;
    let setup = Setup::new("", &accounts());
    apply(&setup);
    let meta = std::fs::metadata(setup.generated.join("dovecot/users")).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o640);
    let dovecot_gid = postmaster::apply::group_id("dovecot")
        .unwrap()
        .expect("dovecot group");
    assert_eq!(meta.gid(), dovecot_gid);
}

/// `postmaster apply` puts a certificate pair in place even when the accounts file
/// is wrong: postfix and dovecot need one to start (the NixOS module runs apply
/// before them), and an accounts mistake must not take TLS away. The accounts
/// themselves are not applied, and the error says where.
#[test]
fn apply_installs_a_placeholder_pair_even_when_the_accounts_are_wrong() {
    let setup = Setup::new(
        "[tls]\nsource = \"files\"\ncert = \"missing/fullchain.pem\"\nkey = \"missing/key.pem\"\n",
        "[mailboxes.thomas]\npasword = \"x\"\n",
    );
    let out = postmaster(&setup.config, &["apply"], None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("accounts.toml:2:1: "),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("the accounts were not applied"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("installing a self-signed placeholder"),
        "{}",
        stderr(&out)
    );
    let pair = std::fs::read_to_string(setup.dir.path().join("tls/pair.pem"))
        .expect("a pair is installed");
    assert!(
        pair.contains("PRIVATE KEY") && pair.contains("BEGIN CERTIFICATE"),
        "{pair}"
    );
    assert!(
        !setup.generated.join("dovecot/users").exists(),
        "the invalid accounts were applied"
    );
    // Run again: the placeholder stays (nothing valid replaces it).
    let again = postmaster(&setup.config, &["apply"], None);
    assert!(
        stderr(&again).contains("certificate not installed, the current one stays"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read_to_string(setup.dir.path().join("tls/pair.pem")).unwrap(),
        pair
    );
}
