//! Every scheme `postmaster hash-password` makes verifies with dovecot's own
//! `doveadm pw -t`: the proof that dovecot will accept these logins.

mod common;
use common::*;

fn hash(scheme: Option<&str>, password: &str) -> String {
    let setup = Setup::seed();
    let mut args = vec!["hash-password"];
    if let Some(s) = scheme {
        args.extend(["--scheme", s]);
    }
    let out = postmaster(&setup.config, &args, Some(&format!("{password}\n")));
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .last()
        .expect("a hash on the last line")
        .to_string()
}

fn doveadm_verifies(hash: &str, password: &str) -> bool {
    let out = tool("doveadm", &["pw", "-t", hash, "-p", password]);
    out.status.success()
}

#[test]
fn every_scheme_verifies_with_doveadm() {
    let passwords = [
        "correct horse battery staple",
        "pässwörd ✓",
        "a:b$c\\d'e\"f",
        "x",
    ];
    for (scheme, prefix) in [
        (None, "{SHA512-CRYPT}$6$"),
        (Some("SHA512-CRYPT"), "{SHA512-CRYPT}$6$"),
        (Some("BLF-CRYPT"), "{BLF-CRYPT}$2y$"),
        (Some("ARGON2ID"), "{ARGON2ID}$argon2id$"),
    ] {
        for password in passwords {
            let h = hash(scheme, password);
            assert!(h.starts_with(prefix), "{scheme:?}: {h}");
            assert!(
                doveadm_verifies(&h, password),
                "doveadm rejects {scheme:?} hash {h} of {password:?}"
            );
            assert!(
                !doveadm_verifies(&h, &format!("{password}x")),
                "doveadm accepts a wrong password for {h}"
            );
        }
    }
}

#[test]
fn every_made_hash_is_accepted_by_check() {
    for scheme in ["SHA512-CRYPT", "BLF-CRYPT", "ARGON2ID"] {
        let h = hash(Some(scheme), "pw");
        let setup = Setup::new("", &format!("[mailboxes.t]\npassword = \"{h}\"\n"));
        let out = postmaster(&setup.config, &["check"], None);
        assert!(out.status.success(), "{scheme}: {}", stderr(&out));
    }
}

#[test]
fn salts_differ_between_runs() {
    assert_ne!(hash(None, "same"), hash(None, "same"));
}

#[test]
fn empty_password_is_refused() {
    let setup = Setup::seed();
    let out = postmaster(&setup.config, &["hash-password"], Some("\n"));
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("the password is empty"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
}
