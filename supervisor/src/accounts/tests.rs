//! Every class of accounts-file error, with the exact text a person reads.

use super::table::Addr;
use super::*;
use crate::diag::Source;

const HASH: &str = "{SHA512-CRYPT}$6$rounds=5000$tdqH0s.oYduNxOGC$oqHD6xZZTs.LuOSMs.72k2qcgcjFaJ6JcKrH1fyqRSIRAhnoh6CSg/sw3gmR4v8O8x2nuUganwi2dxusIIbnl1";

fn policy() -> Policy {
    Policy {
        domains: vec!["example.org".into(), "example.net".into()],
        allow_plain_passwords: false,
    }
}

/// Parses `text` the way postmaster does; every test here also holds the line by
/// line path to the whole-file parse's result, errors included.
fn parse_text(text: &str) -> Result<Accounts, Vec<String>> {
    let source = Source::new("accounts.toml", text.replace("HASH", HASH));
    let result = parse(&source, &policy());
    assert_eq!(
        result,
        parse::parse_whole(&source, &policy()),
        "the two ways of reading disagree on:\n{text}"
    );
    result.map_err(|i| i.0.iter().map(|d| d.to_string()).collect())
}

/// The errors for `text`, which must be refused.
fn errors(text: &str) -> Vec<String> {
    match parse_text(text) {
        Ok(a) => panic!("accepted:\n{text}\n{a:?}"),
        Err(e) => e,
    }
}

fn one_error(text: &str) -> String {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    e.into_iter().next().unwrap()
}

#[test]
fn the_seed_is_accepted() {
    let a = parse_text(
        r#"
[mailboxes.thomas]
password = "HASH"

[aliases]
postmaster = "thomas"
"webmaster@example.org" = "thomas@example.net"

[catch_all]
"example.org" = "thomas"
"example.net" = "thomas"
"#,
    )
    .unwrap();
    assert_eq!(a.mailboxes.len(), 1);
    assert_eq!(
        a.aliases.len(),
        3,
        "postmaster in two domains and webmaster"
    );
    assert_eq!(
        a.catch_all["example.org"],
        vec![Target::Mailbox("thomas".into())]
    );
    assert_eq!(
        a.aliases.owned("webmaster@example.org").unwrap(),
        vec![Target::Mailbox("thomas".into())],
        "an address of a mailbox is that mailbox"
    );
}

#[test]
fn mailbox_fields() {
    let a = parse_text(
        r#"
[mailboxes.anna]
password = "HASH"
disabled = true
quota = "2G"
send_as = ["@example.net", "boss@example.org"]
[mailboxes.bob]
password = "HASH"
quota = 1048576
"#,
    )
    .unwrap();
    let anna = &a.mailboxes["anna"];
    assert!(anna.disabled);
    assert_eq!(anna.quota, Some(2 << 30));
    assert_eq!(
        anna.send_as,
        vec![
            SendAs::Domain("example.net".into()),
            SendAs::Address(Address::parse("boss@example.org").unwrap())
        ]
    );
    assert_eq!(a.mailboxes["bob"].quota, Some(1 << 20));
}

#[test]
fn syntax_errors_point_at_the_mistake() {
    let e = one_error("[mailboxes.thomas]\npassword = \"HASH\nquota = 1\n");
    assert!(e.starts_with("accounts.toml:2:"), "{e}");
    assert!(e.contains("TOML syntax error"), "{e}");
    assert!(e.ends_with("; fix the syntax (https://toml.io)"), "{e}");
}

#[test]
fn duplicate_keys_are_syntax_errors() {
    let e = errors(
        "[mailboxes.thomas]\npassword = \"HASH\"\n[mailboxes.thomas]\npassword = \"HASH\"\n",
    );
    assert_eq!(
        e[0],
        "accounts.toml:3:12: TOML syntax error: duplicate key; fix the syntax (https://toml.io)"
    );
}

#[test]
fn empty_files_are_refused() {
    for text in ["", "   \n", "# only a comment\n"] {
        assert_eq!(
            one_error(text),
            "accounts.toml:1:1: the accounts file is empty; define at least one mailbox: [mailboxes.NAME] with password = \"…\" from `postmaster hash-password`"
        );
    }
    assert_eq!(
        one_error("[aliases]\n"),
        "accounts.toml:1:1: the accounts file defines no mailbox; define at least one: [mailboxes.NAME] with password = \"…\" from `postmaster hash-password`"
    );
}

#[test]
fn unknown_keys_everywhere_are_reported_together() {
    let e = errors(
        "mailbox = 1\n[mailboxes.thomas]\npasword = \"HASH\"\npassword = \"HASH\"\ncolour = \"red\"\n",
    );
    assert_eq!(
        e,
        vec![
            "accounts.toml:1:1: unknown key `mailbox` in the accounts file; did you mean `mailboxes`?",
            "accounts.toml:3:1: unknown key `pasword` in mailbox `thomas`; did you mean `password`?",
            "accounts.toml:5:1: unknown key `colour` in mailbox `thomas`; known keys here: password, disabled, quota, send_as",
        ]
    );
}

#[test]
fn wrong_types() {
    let e = errors("[mailboxes.thomas]\npassword = 5\ndisabled = \"yes\"\n");
    assert_eq!(
        e,
        vec![
            "accounts.toml:2:12: the password of `thomas` must be a string, not an integer",
            "accounts.toml:3:12: `disabled` must be true or false, not a string",
        ]
    );
}

#[test]
fn missing_password() {
    assert_eq!(
        one_error("[mailboxes.thomas]\nquota = \"1G\"\n"),
        "accounts.toml:1:12: mailbox `thomas` has no password; add password = \"…\" with the line `postmaster hash-password` prints"
    );
}

#[test]
fn plaintext_passwords_are_refused_and_not_echoed() {
    let e = one_error("[mailboxes.thomas]\npassword = \"hunter2\"\n");
    assert_eq!(
        e,
        "accounts.toml:2:12: mailbox `thomas`: this looks like a plaintext password; only hashes are accepted; hash the password with `postmaster hash-password` and paste the line it prints"
    );
    let e = one_error("[mailboxes.thomas]\npassword = \"{PLAIN}hunter2\"\n");
    assert_eq!(
        e,
        "accounts.toml:2:12: mailbox `thomas` has a {PLAIN} password; only hashes are accepted; hash the password with `postmaster hash-password` and paste the line it prints"
    );
    assert!(!e.contains("hunter2"));
}

#[test]
fn plain_passwords_pass_only_with_the_test_switch() {
    let source = Source::new("a", "[mailboxes.t]\npassword = \"{PLAIN}secret\"\n");
    let mut p = policy();
    p.allow_plain_passwords = true;
    let a = parse(&source, &p).unwrap();
    assert_eq!(a.mailboxes["t"].password.text, "{PLAIN}secret");
}

#[test]
fn unknown_hash_schemes() {
    assert_eq!(
        one_error("[mailboxes.thomas]\npassword = \"{MD5-CRYPT}$1$abc$def\"\n"),
        "accounts.toml:2:12: mailbox `thomas`: unknown password scheme {MD5-CRYPT}; use one of SHA512-CRYPT, SHA256-CRYPT, BLF-CRYPT, ARGON2ID, ARGON2I: hash the password with `postmaster hash-password` and paste the line it prints"
    );
}

#[test]
fn invalid_mailbox_names() {
    assert_eq!(
        one_error("[mailboxes.Thomas]\npassword = \"HASH\"\n"),
        "accounts.toml:1:12: mailbox name `Thomas` is not valid: it has uppercase letters; write it in lowercase"
    );
    assert_eq!(
        one_error("[mailboxes.\"tho mas\"]\npassword = \"HASH\"\n"),
        "accounts.toml:1:12: mailbox name `tho mas` is not valid: ` ` is not allowed (use a-z, 0-9, `.`, `-`, `_`)"
    );
}

#[test]
fn addresses_outside_hosted_domains() {
    let e = errors(
        "[mailboxes.t]\npassword = \"HASH\"\nsend_as = [\"t@elsewhere.example\"]\n[aliases]\n\"info@elsewhere.example\" = \"t\"\n[catch_all]\n\"elsewhere.example\" = \"t\"\n",
    );
    assert_eq!(
        e,
        vec![
            "accounts.toml:3:12: `send_as` entry `t@elsewhere.example` is not in a hosted domain; hosted domains: example.org, example.net",
            "accounts.toml:5:1: alias `info@elsewhere.example` is not in a hosted domain; only addresses of hosted domains can be aliases; hosted: example.org, example.net",
            "accounts.toml:7:1: `elsewhere.example` is not a hosted domain; host it in the configuration (domains = […]) or remove it; hosted: example.org, example.net",
        ]
    );
}

#[test]
fn invalid_addresses_and_domains() {
    let e = errors(
        "[mailboxes.t]\npassword = \"HASH\"\n[aliases]\n\"a+b@example.org\" = \"t\"\n\"x\" = \"t@exa mple.org\"\n[catch_all]\n\"example..org\" = \"t\"\n",
    );
    assert_eq!(
        e,
        vec![
            "accounts.toml:4:1: alias `a+b@example.org` is not a valid address: its local part `+` is the recipient delimiter (thomas+tag reaches thomas already)",
            "accounts.toml:5:7: alias `x`: `t@exa mple.org` is not a valid address: its domain ` ` is not allowed in a domain name (use a-z, 0-9 and `-`; write IDNs in their xn-- form)",
            "accounts.toml:7:1: catch-all domain `example..org` is not valid: it has an empty label (two dots in a row, or a dot at an end)",
        ]
    );
}

#[test]
fn duplicate_addresses() {
    let e = errors(
        "[mailboxes.thomas]\npassword = \"HASH\"\n[aliases]\n\"thomas@example.net\" = \"x@elsewhere.example\"\ninfo = \"thomas\"\n\"info@example.org\" = \"thomas\"\n",
    );
    assert_eq!(
        e,
        vec![
            "accounts.toml:4:1: `thomas@example.net` is the address of mailbox `thomas` already; remove this alias: mail to it reaches the mailbox without one",
            "accounts.toml:6:1: `info@example.org` is defined twice in [aliases]; keep one of the two (a bare name like `postmaster` stands for it in every hosted domain)",
        ]
    );
}

#[test]
fn aliases_to_nothing() {
    let e = errors(
        "[mailboxes.thomas]\npassword = \"HASH\"\n[aliases]\na = []\nb = \"nobody\"\n\"c@example.org\" = \"ghost@example.org\"\n\"d@example.org\" = [\"thomas\", \"thomas@example.net\"]\n",
    );
    assert_eq!(
        e,
        vec![
            "accounts.toml:4:1: alias `a` delivers to nothing; give it at least one mailbox or address",
            "accounts.toml:5:5: alias `b`: there is no mailbox `nobody` to deliver to; define [mailboxes.NAME], or write a full address",
            "accounts.toml:6:19: alias `c@example.org`: `ghost@example.org` is neither a mailbox nor an alias, so mail would go nowhere; point it at a mailbox, or define that alias",
            "accounts.toml:7:30: alias `d@example.org` lists `thomas@example.net` twice; remove one",
        ]
    );
}

#[test]
fn alias_loops() {
    let e = errors(
        "[mailboxes.thomas]\npassword = \"HASH\"\n[aliases]\n\"a@example.org\" = \"b@example.org\"\n\"b@example.org\" = [\"thomas\", \"c@example.org\"]\n\"c@example.org\" = \"a@example.org\"\n\"self@example.org\" = \"self@example.org\"\n",
    );
    assert_eq!(
        e,
        vec![
            "accounts.toml:4:1: alias loop: a@example.org → b@example.org → c@example.org → a@example.org; make one of these aliases deliver to a mailbox",
            "accounts.toml:7:1: alias loop: self@example.org → self@example.org; make one of these aliases deliver to a mailbox",
        ]
    );
}

#[test]
fn quotas() {
    let e = errors(
        "[mailboxes.a]\npassword = \"HASH\"\nquota = \"2X\"\n[mailboxes.b]\npassword = \"HASH\"\nquota = 0\n[mailboxes.c]\npassword = \"HASH\"\nquota = \"99999999999999T\"\n",
    );
    assert_eq!(
        e,
        vec![
            "accounts.toml:3:9: `quota` has an unknown unit `X`; write a size like \"500M\", \"2G\" or \"1T\", or a number of bytes",
            "accounts.toml:6:9: `quota` of 0 bytes leaves no room for any mail; remove the quota for no limit",
            "accounts.toml:9:9: `quota` value `99999999999999T` is not a size; write a size like \"500M\", \"2G\" or \"1T\", or a number of bytes",
        ]
    );
}

#[test]
fn external_targets_and_alias_chains() {
    let a = parse_text(
        "[mailboxes.t]\npassword = \"HASH\"\n[aliases]\n\"list@example.org\" = [\"t\", \"friend@elsewhere.example\"]\n\"sales@example.org\" = \"list@example.org\"\n",
    )
    .unwrap();
    let sales = a.aliases.get(Addr {
        local: "sales",
        domain: "example.org",
    });
    let (mailboxes, external) = a.expand(sales.unwrap().iter());
    assert_eq!(mailboxes.into_iter().collect::<Vec<_>>(), vec!["t"]);
    assert!(external);
}

#[test]
fn every_error_is_reported_in_one_pass() {
    let e = errors(
        "bogus = 1\n[mailboxes.Bad]\npassword = \"HASH\"\n[mailboxes.ok]\npassword = \"plain\"\n[aliases]\nx = \"nobody\"\n",
    );
    assert_eq!(e.len(), 4, "{e:#?}");
}

#[test]
fn a_bare_alias_gives_every_hosted_domain_the_same_targets() {
    // The addresses of one key share its resolved targets: each must get them
    // whole, the last one as well as the first.
    let a = parse_text(
        "[mailboxes.thomas]\npassword = \"HASH\"\n[mailboxes.anna]\npassword = \"HASH\"\n[aliases]\nteam = [\"thomas\", \"anna@example.net\", \"pal@elsewhere.example\"]\n",
    )
    .unwrap();
    let want = vec![
        Target::Mailbox("thomas".into()),
        Target::Mailbox("anna".into()),
        Target::External(Address::parse("pal@elsewhere.example").unwrap()),
    ];
    for address in ["team@example.org", "team@example.net"] {
        assert_eq!(a.aliases.owned(address).unwrap(), want, "{address}");
    }
}

#[test]
fn a_loop_is_found_whichever_alias_the_file_names_first() {
    // The search starts only at aliases that deliver to an alias; an alias into
    // the loop from outside it is not part of it.
    let e = errors(
        "[mailboxes.thomas]\npassword = \"HASH\"\n[aliases]\n\"in@example.org\" = \"z@example.org\"\n\"z@example.org\" = \"y@example.org\"\n\"y@example.org\" = [\"thomas\", \"z@example.org\"]\n",
    );
    assert_eq!(
        e,
        vec![
            "accounts.toml:5:1: alias loop: y@example.org → z@example.org → y@example.org; make one of these aliases deliver to a mailbox",
        ]
    );
}

#[test]
fn the_alias_table_holds_what_a_map_of_addresses_would() {
    // Many aliases written in no order, of every kind, some bare (one address per
    // hosted domain), and local parts that sort one way as text and another by
    // (local part, domain): `a.b@…` is before `a@…` as text, after it as a local
    // part. The table must give each address its targets, in the order a map of
    // `Address` gives them (the maps' line order).
    let mut text = String::from(
        "[mailboxes.m0]\npassword = \"HASH\"\n[mailboxes.m1]\npassword = \"HASH\"\n[aliases]\n",
    );
    let mut want: BTreeMap<Address, Vec<Target>> = BTreeMap::new();
    let mailbox = |n: usize| Target::Mailbox(format!("m{}", n % 2));
    let address = |s: &str| Address::parse(s).unwrap();
    for i in (0..300).rev() {
        let (key, targets, value) = match i % 5 {
            0 => (
                format!("\"a{i}@example.net\""),
                vec![mailbox(i)],
                format!("\"m{}\"", i % 2),
            ),
            1 => (
                format!("\"a.{}@example.org\"", i - 1),
                vec![
                    mailbox(i),
                    Target::External(address(&format!("x{i}@far.example"))),
                ],
                format!("[\"m{}@example.net\", \"x{i}@far.example\"]", i % 2),
            ),
            2 => (
                format!("b{i}"),
                vec![Target::Alias(address(&format!("a{}@example.net", i - 2)))],
                format!("\"a{}@example.net\"", i - 2),
            ),
            3 => (
                format!("\"a{}@example.org\"", i - 2),
                vec![Target::External(address(&format!("y{i}@far.example")))],
                format!("\"y{i}@far.example\""),
            ),
            _ => (
                format!("\"a{i}-@example.org\""),
                vec![mailbox(i + 1), mailbox(i)],
                format!("[\"m{}\", \"m{}\"]", (i + 1) % 2, i % 2),
            ),
        };
        text.push_str(&format!("{key} = {value}\n"));
        let key = key.trim_matches('"');
        let addresses = match key.contains('@') {
            true => vec![address(key)],
            false => ["example.org", "example.net"]
                .map(|d| address(&format!("{key}@{d}")))
                .to_vec(),
        };
        for a in addresses {
            want.insert(a, targets.clone());
        }
    }
    let a = parse_text(&text).unwrap();
    let got: Vec<(String, Vec<Target>)> = a
        .aliases
        .iter()
        .map(|(address, t)| {
            (
                address.to_string(),
                t.iter().map(TargetRef::to_owned).collect(),
            )
        })
        .collect();
    let want: Vec<(String, Vec<Target>)> =
        want.into_iter().map(|(a, t)| (a.to_string(), t)).collect();
    assert_eq!(got.len(), 360);
    assert_eq!(got, want);
    // An alias of an alias reaches the mailbox behind it.
    let (mailboxes, external) = a.expand(
        a.aliases
            .get(Addr {
                local: "b2",
                domain: "example.org",
            })
            .unwrap()
            .iter(),
    );
    assert_eq!(mailboxes.into_iter().collect::<Vec<_>>(), ["m0"]);
    assert!(!external);
}

#[test]
fn mailboxes_are_found_by_name_in_name_order_and_the_last_read_is_kept() {
    let mailbox = |name: &str, quota| Mailbox {
        name: name.into(),
        password: PasswordHash {
            scheme: crate::password::Scheme::Plain,
            text: "{PLAIN}x".into(),
        },
        disabled: false,
        quota,
        send_as: Vec::new(),
    };
    let read = vec![
        mailbox("thomas", Some(1)),
        mailbox("anna", None),
        mailbox("zoe", None),
        mailbox("thomas", Some(2)),
        mailbox("bob", None),
    ];
    let (m, twice) = Mailboxes::from_read(read);
    assert!(twice);
    assert_eq!(
        m.keys().collect::<Vec<_>>(),
        ["anna", "bob", "thomas", "zoe"]
    );
    assert_eq!(m.len(), 4);
    assert_eq!(m["thomas"].quota, Some(2));
    assert!(m.contains_key("zoe") && m.contains_key("anna"));
    assert!(!m.contains_key("thom") && !m.contains_key("zz") && !m.contains_key(""));
    assert_eq!(m.get("carl"), None);
    let (again, twice) = Mailboxes::from_read(m.clone().into_vec());
    assert!(!twice);
    assert_eq!(again, m);
}
