//! The command line's edits: exactly what each one changes in the text, and each refusal.

use super::*;

const HASH: &str = "{SHA512-CRYPT}$6$rounds=5000$tdqH0s.oYduNxOGC$oqHD6xZZTs.LuOSMs.72k2qcgcjFaJ6JcKrH1fyqRSIRAhnoh6CSg/sw3gmR4v8O8x2nuUganwi2dxusIIbnl1";
const NEW: &str = "{SHA512-CRYPT}$6$rounds=5000$abcdefghijklmnop$oqHD6xZZTs.LuOSMs.72k2qcgcjFaJ6JcKrH1fyqRSIRAhnoh6CSg/sw3gmR4v8O8x2nuUganwi2dxusIIbnl1";

/// A file as a person writes it: comments everywhere, quoted and bare keys, a
/// single-string alias and a list.
const FILE: &str = r#"# Our mail accounts. Ask Thomas before changing anything.

[mailboxes.thomas]   # the boss
password = "HASH"    # from `postmaster hash-password`
quota = "2G"

# Anna joined in 2024.
[mailboxes.anna]
password = "HASH"

[aliases]
postmaster = "thomas"              # a bare name: in every hosted domain
"sales@example.org" = ["thomas", "anna"]
"family@example.org" = ["anna", "grandma@elsewhere.example"]   # also forwards outside

[catch_all]
"example.org" = "thomas"           # only addresses nothing else matches
"#;

fn policy() -> Policy {
    Policy {
        domains: vec!["example.org".into(), "example.net".into()],
        allow_plain_passwords: false,
    }
}

fn file() -> String {
    FILE.replace("HASH", HASH)
}

fn run(text: &str, edit: Edit) -> Result<Edited, Refused> {
    apply(
        Path::new("/etc/postmaster/accounts.toml"),
        text,
        &edit,
        &policy(),
    )
}

fn edited(edit: Edit) -> Edited {
    run(&file(), edit).unwrap_or_else(|e| panic!("refused: {e}"))
}

fn refused(text: &str, edit: Edit) -> Refused {
    match run(text, edit) {
        Ok(e) => panic!("accepted:\n{}", e.text),
        Err(r) => r,
    }
}

/// The file with `from` replaced by `to` (which must occur exactly once).
fn file_with(from: &str, to: &str) -> String {
    let f = file();
    assert_eq!(f.matches(from).count(), 1, "{from:?} must occur once");
    f.replace(from, to)
}

#[test]
fn adding_a_mailbox_appends_it_after_the_others_and_keeps_every_comment() {
    let e = edited(Edit::AddMailbox {
        name: "dora".into(),
        password: NEW.into(),
        quota: Some("500M".into()),
        send_as: vec!["@example.net".into()],
    });
    let added = format!(
        "password = \"{HASH}\"\n\n[mailboxes.dora]\npassword = \"{NEW}\"\nquota = \"500M\"\nsend_as = [\"@example.net\"]\n\n[aliases]"
    );
    assert_eq!(
        e.text,
        file_with(&format!("password = \"{HASH}\"\n\n[aliases]"), &added)
    );
    assert!(e.changed);
    assert_eq!(e.accounts.mailboxes["dora"].quota, Some(500 << 20));
}

#[test]
fn adding_a_mailbox_to_a_file_without_mailboxes_table_order_is_created() {
    // Only aliases so far would not parse; start from one mailbox written inline.
    let text = format!("mailboxes.thomas.password = \"{HASH}\"\n");
    let e = run(
        &text,
        Edit::AddMailbox {
            name: "anna".into(),
            password: NEW.into(),
            quota: None,
            send_as: vec![],
        },
    )
    .unwrap();
    assert_eq!(e.accounts.mailboxes.len(), 2);
    assert!(e.text.starts_with(&text), "{}", e.text);
}

#[test]
fn adding_an_existing_mailbox_is_refused() {
    let r = refused(
        &file(),
        Edit::AddMailbox {
            name: "anna".into(),
            password: NEW.into(),
            quota: None,
            send_as: vec![],
        },
    );
    assert_eq!(
        r.to_string(),
        "mailbox `anna` exists already in /etc/postmaster/accounts.toml"
    );
}

#[test]
fn an_edit_the_daemon_would_refuse_is_refused_with_its_diagnostics() {
    // An invalid name, an unknown quota unit, a send_as outside the hosted domains.
    let r = refused(
        &file(),
        Edit::AddMailbox {
            name: "Dora!".into(),
            password: NEW.into(),
            quota: Some("2X".into()),
            send_as: vec!["@elsewhere.example".into()],
        },
    );
    let Refused::Invalid(invalid) = r else {
        panic!("{r:?}")
    };
    let lines: Vec<String> = invalid.0.iter().map(|d| d.to_string()).collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0]
            .starts_with("/etc/postmaster/accounts.toml:11:12: mailbox name `Dora!` is not valid"),
        "{lines:#?}"
    );
    assert!(
        lines[1].starts_with("/etc/postmaster/accounts.toml:13:9: `quota` has an unknown unit `X`"),
        "{lines:#?}"
    );
    assert!(lines[2].starts_with("/etc/postmaster/accounts.toml:14:12: `send_as` entry `@elsewhere.example` is not in a hosted domain"), "{lines:#?}");
}

#[test]
fn a_password_that_is_not_a_hash_is_refused() {
    let r = refused(
        &file(),
        Edit::SetPassword {
            name: "anna".into(),
            password: "{PLAIN}secret".into(),
        },
    );
    assert!(matches!(r, Refused::Invalid(_)), "{r:?}");
    assert!(
        r.to_string()
            .contains("has a {PLAIN} password; only hashes are accepted"),
        "{r}"
    );
}

#[test]
fn a_file_that_is_already_broken_is_refused_with_the_daemons_messages() {
    let broken = file_with("quota = \"2G\"", "quota = \"2G");
    let r = refused(
        &broken,
        Edit::SetPassword {
            name: "anna".into(),
            password: NEW.into(),
        },
    );
    let Refused::Invalid(invalid) = r else {
        panic!("{r:?}")
    };
    assert_eq!(invalid.0.len(), 1);
    assert!(
        invalid.0[0]
            .to_string()
            .starts_with("/etc/postmaster/accounts.toml:5:"),
        "{}",
        invalid.0[0]
    );
}

#[test]
fn a_new_password_replaces_only_the_hash_and_keeps_the_comment_after_it() {
    let e = edited(Edit::SetPassword {
        name: "thomas".into(),
        password: NEW.into(),
    });
    assert_eq!(
        e.text,
        file_with(
            &format!("password = \"{HASH}\"    # from"),
            &format!("password = \"{NEW}\"    # from")
        )
    );
    assert_eq!(e.accounts.mailboxes["thomas"].password.text, NEW);
}

#[test]
fn passwd_disable_and_enable_of_a_missing_mailbox_are_refused() {
    for edit in [
        Edit::SetPassword {
            name: "nobody".into(),
            password: NEW.into(),
        },
        Edit::SetDisabled {
            name: "nobody".into(),
            disabled: true,
        },
        Edit::RemoveMailbox {
            name: "nobody".into(),
            force: false,
        },
    ] {
        assert_eq!(
            refused(&file(), edit).to_string(),
            "mailbox `nobody` does not exist in /etc/postmaster/accounts.toml"
        );
    }
}

#[test]
fn disable_adds_one_line_and_enable_takes_it_out_again() {
    let disabled = edited(Edit::SetDisabled {
        name: "anna".into(),
        disabled: true,
    });
    assert_eq!(
        disabled.text,
        file_with(
            "password = \"HASH\"\n\n[aliases]"
                .replace("HASH", HASH)
                .as_str(),
            &format!("password = \"{HASH}\"\ndisabled = true\n\n[aliases]")
        )
    );
    assert!(disabled.accounts.mailboxes["anna"].disabled);
    let enabled = run(
        &disabled.text,
        Edit::SetDisabled {
            name: "anna".into(),
            disabled: false,
        },
    )
    .unwrap();
    assert_eq!(enabled.text, file());
    // Disabling twice changes nothing.
    let again = run(
        &disabled.text,
        Edit::SetDisabled {
            name: "anna".into(),
            disabled: true,
        },
    )
    .unwrap();
    assert!(!again.changed);
}

#[test]
fn enable_keeps_a_disabled_line_that_carries_a_comment() {
    let text = file_with(
        "quota = \"2G\"",
        "quota = \"2G\"\ndisabled = true   # on leave until May",
    );
    let e = run(
        &text,
        Edit::SetDisabled {
            name: "thomas".into(),
            disabled: false,
        },
    )
    .unwrap();
    assert!(
        e.text.contains("disabled = false   # on leave until May"),
        "{}",
        e.text
    );
}

#[test]
fn removing_a_mailbox_that_aliases_deliver_to_is_refused_and_names_them() {
    let r = refused(
        &file(),
        Edit::RemoveMailbox {
            name: "anna".into(),
            force: false,
        },
    );
    assert_eq!(
        r.to_string(),
        "mailbox `anna` still receives mail from alias `sales@example.org` (target `anna`), alias `family@example.org` (target `anna`); remove those first, or pass --force to remove them with it"
    );
    let r = refused(
        &file(),
        Edit::RemoveMailbox {
            name: "thomas".into(),
            force: false,
        },
    );
    let Refused::Referenced { by, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        by,
        [
            "alias `postmaster` (target `thomas`)",
            "alias `sales@example.org` (target `thomas`)",
            "the catch-all of `example.org` (target `thomas`)"
        ]
    );
}

#[test]
fn a_full_address_of_a_hosted_domain_is_a_reference_too_but_an_outside_one_is_not() {
    let text = file_with(
        "[\"anna\", \"grandma",
        "[\"anna@example.net\", \"anna@elsewhere.example\", \"grandma",
    );
    let Refused::Referenced { by, .. } = refused(
        &text,
        Edit::RemoveMailbox {
            name: "anna".into(),
            force: false,
        },
    ) else {
        panic!()
    };
    assert_eq!(
        by,
        [
            "alias `sales@example.org` (target `anna`)",
            "alias `family@example.org` (target `anna@example.net`)"
        ]
    );
}

#[test]
fn forced_removal_takes_the_references_out_and_an_alias_left_empty_goes_too() {
    let e = edited(Edit::RemoveMailbox {
        name: "thomas".into(),
        force: true,
    });
    let expected = format!(
        r#"# Our mail accounts. Ask Thomas before changing anything.

# Anna joined in 2024.
[mailboxes.anna]
password = "{HASH}"

[aliases]
"sales@example.org" = ["anna"]
"family@example.org" = ["anna", "grandma@elsewhere.example"]   # also forwards outside

[catch_all]
"#
    );
    assert_eq!(e.text, expected);
    assert_eq!(e.removed_references.len(), 3);
    assert_eq!(e.accounts.mailboxes.len(), 1);
}

#[test]
fn removing_the_last_mailbox_is_refused_as_the_daemon_would() {
    let text = format!("[mailboxes.thomas]\npassword = \"{HASH}\"\n");
    let r = refused(
        &text,
        Edit::RemoveMailbox {
            name: "thomas".into(),
            force: false,
        },
    );
    assert!(r.to_string().contains("the accounts file is empty"), "{r}");
}

#[test]
fn alias_add_creates_one_or_extends_a_string_into_a_list() {
    let e = edited(Edit::AddAlias {
        address: "abuse".into(),
        targets: vec!["thomas".into()],
    });
    assert_eq!(
        e.text,
        file_with("\n\n[catch_all]", "\nabuse = \"thomas\"\n\n[catch_all]")
    );
    let e = edited(Edit::AddAlias {
        address: "postmaster".into(),
        targets: vec!["anna".into(), "thomas".into()],
    });
    assert_eq!(
        e.text,
        file_with(
            "postmaster = \"thomas\"  ",
            "postmaster = [\"thomas\", \"anna\"]  "
        )
    );
    let e = edited(Edit::AddAlias {
        address: "sales@example.org".into(),
        targets: vec!["thomas".into()],
    });
    assert!(!e.changed);
}

#[test]
fn alias_add_to_nowhere_or_outside_the_hosted_domains_is_refused() {
    let r = refused(
        &file(),
        Edit::AddAlias {
            address: "help".into(),
            targets: vec!["nobody".into()],
        },
    );
    assert!(
        r.to_string()
            .contains("alias `help`: there is no mailbox `nobody` to deliver to"),
        "{r}"
    );
    let r = refused(
        &file(),
        Edit::AddAlias {
            address: "x@elsewhere.example".into(),
            targets: vec!["anna".into()],
        },
    );
    assert!(
        r.to_string()
            .contains("alias `x@elsewhere.example` is not in a hosted domain"),
        "{r}"
    );
    let r = refused(
        &file(),
        Edit::AddAlias {
            address: "anna@example.org".into(),
            targets: vec!["thomas".into()],
        },
    );
    assert!(
        r.to_string()
            .contains("is the address of mailbox `anna` already"),
        "{r}"
    );
}

#[test]
fn alias_remove_of_targets_keeps_the_rest_and_of_the_last_removes_the_alias() {
    let e = edited(Edit::RemoveAlias {
        address: "sales@example.org".into(),
        targets: vec!["thomas".into()],
    });
    assert_eq!(e.text, file_with("[\"thomas\", \"anna\"]", "[\"anna\"]"));
    let e = edited(Edit::RemoveAlias {
        address: "postmaster".into(),
        targets: vec!["thomas".into()],
    });
    assert!(!e.text.contains("postmaster ="), "{}", e.text);
    let e = edited(Edit::RemoveAlias {
        address: "family@example.org".into(),
        targets: vec![],
    });
    assert_eq!(
        e.text,
        file_with(
            "\"family@example.org\" = [\"anna\", \"grandma@elsewhere.example\"]   # also forwards outside\n",
            ""
        )
    );
}

#[test]
fn alias_remove_of_what_is_not_there_is_refused() {
    let r = refused(
        &file(),
        Edit::RemoveAlias {
            address: "nobody".into(),
            targets: vec![],
        },
    );
    assert_eq!(
        r.to_string(),
        "alias `nobody` does not exist in /etc/postmaster/accounts.toml"
    );
    let r = refused(
        &file(),
        Edit::RemoveAlias {
            address: "postmaster".into(),
            targets: vec!["anna".into()],
        },
    );
    assert_eq!(
        r.to_string(),
        "target of that alias `anna` does not exist in /etc/postmaster/accounts.toml"
    );
}

#[test]
fn catch_all_set_replaces_in_place_and_unset_removes() {
    let e = edited(Edit::SetCatchAll {
        domain: "example.org".into(),
        target: "anna".into(),
    });
    assert_eq!(
        e.text,
        file_with(
            "\"example.org\" = \"thomas\"  ",
            "\"example.org\" = \"anna\"  "
        )
    );
    let e = edited(Edit::SetCatchAll {
        domain: "example.net".into(),
        target: "anna".into(),
    });
    assert!(
        e.text
            .ends_with("# only addresses nothing else matches\n\"example.net\" = \"anna\"\n"),
        "{}",
        e.text
    );
    let e = edited(Edit::UnsetCatchAll {
        domain: "example.org".into(),
    });
    assert!(e.text.ends_with("[catch_all]\n"), "{}", e.text);
    let r = refused(
        &file(),
        Edit::UnsetCatchAll {
            domain: "example.net".into(),
        },
    );
    assert_eq!(
        r.to_string(),
        "catch-all of domain `example.net` does not exist in /etc/postmaster/accounts.toml"
    );
    let r = refused(
        &file(),
        Edit::SetCatchAll {
            domain: "elsewhere.example".into(),
            target: "anna".into(),
        },
    );
    assert!(
        r.to_string()
            .contains("`elsewhere.example` is not a hosted domain"),
        "{r}"
    );
}

#[test]
fn a_section_written_as_something_else_is_refused_not_rewritten() {
    let text = format!("aliases = 3\n[mailboxes.thomas]\npassword = \"{HASH}\"\n");
    let r = refused(
        &text,
        Edit::AddAlias {
            address: "abuse".into(),
            targets: vec!["thomas".into()],
        },
    );
    assert_eq!(
        r.to_string(),
        "`aliases` in /etc/postmaster/accounts.toml is not written as a table; edit it by hand"
    );
}

#[test]
fn files_nixos_writes_are_recognised() {
    let generated = "# Generated by the NixOS module services.postmaster from services.postmaster.accounts.\n# Edit the Nix configuration, not this file: it is rewritten when the unit starts.\n";
    let why =
        declared_elsewhere(Path::new("/var/lib/postmaster/accounts.toml"), generated).unwrap();
    assert_eq!(
        why.to_string(),
        "/var/lib/postmaster/accounts.toml is written from services.postmaster.accounts in the NixOS \
         configuration and rewritten when postmaster-accounts.service starts; change the accounts there \
         and run nixos-rebuild switch"
    );
    let why = declared_elsewhere(Path::new("/nix/store/abc-accounts.toml"), &file()).unwrap();
    assert_eq!(
        why.to_string(),
        "/nix/store/abc-accounts.toml is in the Nix store and cannot change; set \
         services.postmaster.accountsFile to a file outside it (the default is \
         /etc/postmaster/accounts.toml), or declare the accounts in services.postmaster.accounts"
    );
    assert_eq!(
        declared_elsewhere(Path::new("/etc/postmaster/accounts.toml"), &file()),
        None
    );
}

#[test]
fn the_lists_show_addresses_quota_disabled_and_where_aliases_deliver() {
    let accounts = validate(Path::new("a.toml"), &file(), &policy()).unwrap();
    let m = mailbox_list(&accounts, &policy());
    assert_eq!(m[1].name, "thomas");
    assert_eq!(m[1].addresses, ["thomas@example.org", "thomas@example.net"]);
    assert_eq!(m[1].quota, Some(2 << 30));
    assert!(!m[0].disabled);
    let a = alias_list(&accounts);
    let family = a
        .iter()
        .find(|e| e.address == "family@example.org")
        .unwrap();
    assert_eq!(family.targets, ["anna", "grandma@elsewhere.example"]);
    assert_eq!(family.mailboxes, ["anna"]);
    assert!(family.external);
    let catch_all = a.iter().find(|e| e.address == "@example.org").unwrap();
    assert_eq!(catch_all.mailboxes, ["thomas"]);
    assert_eq!(
        a.len(),
        5,
        "postmaster in two domains, sales, family, one catch-all"
    );
}
