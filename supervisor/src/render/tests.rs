//! Golden-file tests: the exact bytes postfix and dovecot read, for the seed's mail
//! host plus the cases the seed lacks (a second mailbox, a quota, a disabled login,
//! an outside forward). `UPDATE_GOLDEN=1 cargo test` rewrites the files; review
//! the diff like any other change.

use std::path::PathBuf;

use super::maps::{sender_owners, virtual_alias_entries};
use super::*;
use crate::diag::Source;

const CONFIG: &str = r#"
host_name = "mail.example.org"
domains = ["example.org", "example.net"]
accounts_file = "/etc/postmaster/accounts.toml"
state_dir = "/var/lib/postmaster"
[tls]
source = "files"
cert = "/etc/postmaster/tls/fullchain.pem"
key = "/etc/postmaster/tls/privkey.pem"
"#;

const ACCOUNTS: &str = r#"
[mailboxes.thomas]
password = "{SHA512-CRYPT}$6$rounds=5000$tdqH0s.oYduNxOGC$oqHD6xZZTs.LuOSMs.72k2qcgcjFaJ6JcKrH1fyqRSIRAhnoh6CSg/sw3gmR4v8O8x2nuUganwi2dxusIIbnl1"
send_as = ["@example.net"]

[mailboxes.anna]
password = "{BLF-CRYPT}$2y$10$km37fzZkX5BT3mAq5G8k8O3k5GJN8vmytok3rplB1jZyiBHY8PVSe"
quota = "2G"

[mailboxes.old]
password = "{SHA512-CRYPT}$6$rounds=5000$tdqH0s.oYduNxOGC$oqHD6xZZTs.LuOSMs.72k2qcgcjFaJ6JcKrH1fyqRSIRAhnoh6CSg/sw3gmR4v8O8x2nuUganwi2dxusIIbnl1"
disabled = true

[aliases]
postmaster = "thomas"
abuse = "thomas"
"team@example.org" = ["thomas", "anna"]
"family@example.org" = ["anna", "grandma@elsewhere.example"]

[catch_all]
"example.org" = "thomas"
"#;

fn config(extra: &str) -> Config {
    Config::parse(&Source::new(
        "/etc/postmaster/config.toml",
        format!("{CONFIG}{extra}"),
    ))
    .unwrap()
}

fn accounts(config: &Config) -> Accounts {
    crate::accounts::parse(
        &Source::new("/etc/postmaster/accounts.toml", ACCOUNTS),
        &config.accounts_policy(),
    )
    .unwrap()
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_GOLDEN=1", path.display()));
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{name} differs from its golden file at line {}:\n  golden: {:?}\n  actual: {:?}\n(UPDATE_GOLDEN=1 rewrites it)",
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first)
        );
    }
}

#[test]
fn generated_files_match_golden() {
    let c = config("");
    for f in generated(&c, &accounts(&c)).iter().map(Generated::to_file) {
        golden(&f.path.file_name().unwrap().to_string_lossy(), &f.content);
    }
}

#[test]
fn host_config_matches_golden_for_each_dovecot_version() {
    for (version, suffix) in [("2.4", "2.4"), ("2.3", "2.3")] {
        let c = config(&format!("[dovecot]\nversion = \"{version}\"\n"));
        let mut seen = std::collections::HashSet::new();
        for f in host_config(&c, MapType::Lmdb, "/etc/postmaster/config.toml") {
            let mut name = f.path.file_name().unwrap().to_string_lossy().into_owned();
            // rspamd's local.d/options.inc beside its override.d/options.inc.
            if !seen.insert(name.clone()) {
                let dir = f.path.parent().unwrap().file_name().unwrap();
                name = format!("{}-{name}", dir.to_string_lossy());
            }
            if name == "dovecot.conf" {
                golden(&format!("dovecot-{suffix}.conf"), &f.content);
            } else if version == "2.4" {
                golden(&name, &f.content);
            }
        }
    }
}

#[test]
fn every_placeholder_is_filled() {
    for version in ["2.4", "2.3"] {
        let c = config(&format!("[dovecot]\nversion = \"{version}\"\n"));
        for f in host_config(&c, MapType::Hash, "/x") {
            assert_eq!(
                template::unfilled(&f.content),
                Vec::<String>::new(),
                "{}",
                f.path.display()
            );
        }
    }
}

#[test]
fn main_cf_points_at_the_generated_maps() {
    let c = config("[postfix]\nmap_type = \"hash\"\n");
    let main = &host_config(&c, MapType::Hash, "/x")[0].content;
    for map in [
        paths::VIRTUAL_ALIAS,
        paths::VIRTUAL_MAILBOX,
        paths::SENDER_LOGIN,
    ] {
        assert!(
            main.contains(&format!("hash:/var/lib/postmaster/generated/{map}")),
            "{map}"
        );
    }
    let dovecot = &host_config(&c, MapType::Hash, "/x")[2].content;
    assert!(dovecot.contains(&format!(
        "/var/lib/postmaster/generated/{}",
        paths::PASSWD_FILE
    )));
}

#[test]
fn unknown_sender_domain_check_follows_the_switch() {
    let on = &host_config(&config(""), MapType::Lmdb, "/x")[0].content;
    assert!(on.contains(
        "\nsmtpd_sender_restrictions = reject_non_fqdn_sender, reject_unknown_sender_domain\n"
    ));
    let off = &host_config(
        &config("[postfix]\nreject_unknown_sender_domain = false\n"),
        MapType::Lmdb,
        "/x",
    )[0]
    .content;
    assert!(off.contains("\nsmtpd_sender_restrictions = reject_non_fqdn_sender\n"));
}

#[test]
fn catch_all_never_shadows_a_mailbox() {
    let c = config("");
    let entries = virtual_alias_entries(&c, &accounts(&c));
    let catch_all = entries
        .iter()
        .position(|(k, _)| k == "@example.org")
        .unwrap();
    for name in ["thomas", "anna", "old"] {
        let a = format!("{name}@example.org");
        let i = entries
            .iter()
            .position(|(k, v)| *k == a && *v == a)
            .unwrap_or_else(|| panic!("{a} has no identity entry"));
        assert!(i < catch_all);
    }
}

#[test]
fn sender_rights() {
    let c = config("");
    let a = accounts(&c);
    let owners = sender_owners(&c, &a);
    let who = |a: &str| owners.get(a).map(|s| s.join(","));
    assert_eq!(who("thomas@example.net").as_deref(), Some("thomas"));
    assert_eq!(who("postmaster@example.org").as_deref(), Some("thomas"));
    assert_eq!(who("@example.net").as_deref(), Some("thomas"));
    assert_eq!(
        who("team@example.org"),
        None,
        "shared alias: nobody's sender address"
    );
    assert_eq!(
        who("family@example.org"),
        None,
        "forwards outside: nobody's sender address"
    );
    assert_eq!(who("anna@example.org").as_deref(), Some("anna"));
}

#[test]
fn adding_writes_the_passwd_file_first_and_removing_writes_it_last() {
    let c = config("");
    let a = accounts(&c);
    let kinds = |files: Vec<Generated<'_>>| files.into_iter().map(|f| f.kind).collect::<Vec<_>>();
    let first = kinds(in_safe_order(generated(&c, &a), false));
    assert_eq!(first[0], Kind::PasswdFile, "first apply");
    let previous = "# header\nthomas:{X}y:1:1::/h::\n\n  \n";
    assert!(!removes_a_login(previous.as_bytes(), &a));
    let adding = kinds(in_safe_order(generated(&c, &a), false));
    assert_eq!(adding[0], Kind::PasswdFile, "adding anna and old");
    assert!(removes_a_login("thomas:x\ngone:x\n".as_bytes(), &a));
    // The last line need not end in a newline.
    assert!(removes_a_login("thomas:x\ngone:x".as_bytes(), &a));
    let removing = kinds(in_safe_order(generated(&c, &a), true));
    assert_eq!(removing.last(), Some(&Kind::PasswdFile), "removing gone");
    assert_eq!(removing.len(), 4);
}

#[test]
fn signing_goes_through_rspamd_only_when_dkim_is_enabled() {
    let on = config("");
    let main = postfix_conf::main_cf(&on, MapType::Lmdb, "/x");
    assert!(main.contains("\nsubmission_milters = unix:rspamd/milter.sock\n"));
    // rspamd listens where postfix looks, inside its queue directory, for group postfix only.
    let proxy = rspamd_conf::worker_proxy(&on, "/x").unwrap();
    assert!(proxy.contains("bind_socket = \"/var/spool/postfix/rspamd/milter.sock mode=0660 owner=_rspamd group=postfix\";"), "{proxy}");
    assert!(main.contains("\ninternal_mail_filter_classes = bounce\n"));
    // Never unsigned: rspamd away means a temporary refusal, not a pass.
    assert!(main.contains("\nmilter_default_action = tempfail\n"));
    let master = postfix_conf::master_cf("/x");
    assert_eq!(
        master
            .matches("-o smtpd_milters=$submission_milters")
            .count(),
        2
    );
    let rspamd = rspamd_conf::dkim_signing(&on, "/x");
    assert!(rspamd.contains("enabled = true;"));
    assert!(rspamd.contains("try_fallback = false;"));
    assert!(
        rspamd.contains(
            ".include(try=true) \"/var/lib/postmaster/generated/rspamd/dkim_domains.conf\""
        )
    );

    let off = config("[dkim]\nenabled = false\nmilter = \"unix:/run/rspamd/milter.sock\"\n");
    let main = postfix_conf::main_cf(&off, MapType::Lmdb, "/x");
    assert!(main.contains("\nsubmission_milters = \n"));
    assert!(main.contains("\ninternal_mail_filter_classes = \n"));
    assert!(rspamd_conf::dkim_signing(&off, "/x").contains("enabled = false;"));
    let inet = config("[dkim]\nmilter = \"inet:127.0.0.1:11332\"\n");
    assert_eq!(rspamd_conf::worker_proxy(&inet, "/x"), None);
}

/// Mozilla's "intermediate" TLS 1.2 suites (guidelines 6.0), in its order.
const MOZILLA_INTERMEDIATE: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

fn setting<'a>(file: &'a str, name: &str) -> Vec<&'a str> {
    file.lines()
        .filter_map(|l| l.strip_prefix(name)?.trim_start().strip_prefix('='))
        .map(str::trim)
        .collect()
}

#[test]
fn password_ports_get_the_intermediate_profile_and_port_25_no_anonymous_suites() {
    // Only forward-secret AEAD suites, whatever the list is edited to later.
    for suite in MOZILLA_INTERMEDIATE.split(':') {
        assert!(suite.starts_with("ECDHE-"), "{suite}: no forward secrecy");
        assert!(
            suite.contains("-GCM-") || suite.ends_with("-CHACHA20-POLY1305"),
            "{suite}: not AEAD"
        );
    }
    for version in ["2.4", "2.3"] {
        let c = config(&format!("[dovecot]\nversion = \"{version}\"\n"));
        let files = host_config(&c, MapType::Lmdb, "/x");
        let file = |n: &str| {
            &files
                .iter()
                .find(|f| f.path.file_name().unwrap() == n)
                .unwrap()
                .content
        };
        let (main, master, dovecot) = (file("main.cf"), file("master.cf"), file("dovecot.conf"));
        // 587 and 465: postfix's mandatory-TLS settings, which master.cf must not override.
        assert_eq!(
            setting(main, "smtpd_tls_mandatory_protocols"),
            [">=TLSv1.2"]
        );
        assert_eq!(setting(main, "smtpd_tls_mandatory_ciphers"), ["high"]);
        assert_eq!(setting(main, "tls_high_cipherlist"), [MOZILLA_INTERMEDIATE]);
        for service in ["submission", "submissions"] {
            let block: String = master
                .lines()
                .skip_while(|l| !l.starts_with(&format!("{service} ")))
                .skip(1)
                .take_while(|l| l.starts_with("  -o "))
                .collect();
            assert!(
                block.contains("smtpd_sasl_auth_enable=yes"),
                "{service}: {block}"
            );
            assert!(
                !block.contains("cipher") && !block.contains("protocols"),
                "{service}: {block}"
            );
        }
        assert!(master.contains("  -o smtpd_tls_wrappermode=yes\n"));
        // 25: opportunistic, but never anonymous, NULL or export.
        assert_eq!(setting(main, "smtpd_tls_protocols"), [">=TLSv1.2"]);
        assert_eq!(setting(main, "smtpd_tls_ciphers"), ["medium"]);
        assert_eq!(
            setting(main, "smtpd_tls_exclude_ciphers"),
            ["aNULL, eNULL, EXPORT"]
        );
        // 993, 995, 143, 110
        assert_eq!(
            setting(dovecot, "ssl_min_protocol"),
            ["TLSv1.2"],
            "{version}"
        );
        assert_eq!(
            setting(dovecot, "ssl_cipher_list"),
            [MOZILLA_INTERMEDIATE],
            "{version}"
        );
    }
}

#[test]
fn port_25_goes_through_rspamd_only_when_inbound_checks_are_on() {
    let on = config("");
    let main = postfix_conf::main_cf(&on, MapType::Lmdb, "/x");
    assert_eq!(
        setting(&main, "inbound_milters"),
        ["unix:rspamd/milter.sock"]
    );
    // rspamd away: a temporary refusal, so the sending server retries.
    assert_eq!(setting(&main, "milter_default_action"), ["tempfail"]);
    let master = postfix_conf::master_cf("/x");
    let smtp: Vec<&str> = master
        .lines()
        .skip_while(|l| !l.starts_with("smtp      inet"))
        .skip(1)
        .take_while(|l| l.starts_with("  -o "))
        .collect();
    assert_eq!(smtp, ["  -o smtpd_milters=$inbound_milters"]);

    let off = config("[inbound]\nenabled = false\n");
    let main = postfix_conf::main_cf(&off, MapType::Lmdb, "/x");
    assert_eq!(setting(&main, "inbound_milters"), [""]);
    // Signing is independent of the inbound checks.
    assert_eq!(
        setting(&main, "submission_milters"),
        ["unix:rspamd/milter.sock"]
    );
}

#[test]
fn rspamd_acts_by_the_configured_scores_and_knows_the_hosted_domains() {
    let c = config("[inbound]\nreject_score = 20\nadd_header_score = 7.5\n");
    let files = rspamd_conf::inbound(&c, "/x");
    let file = |p: &str| &files.iter().find(|(path, _)| *path == p).unwrap().1;
    let actions = file(paths::RSPAMD_ACTIONS);
    assert_eq!(setting(actions, "reject"), ["20;"]);
    assert_eq!(setting(actions, "add_header"), ["7.5;"]);
    assert_eq!(setting(actions, "greylist"), ["null;"]);
    let hosted: Vec<&str> = file(paths::RSPAMD_HOSTED_DOMAINS)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert_eq!(hosted, ["example.org", "example.net"]);
    // The multimap reads the map postmaster renders next to it.
    assert!(file(paths::RSPAMD_MULTIMAP).contains(&format!(
        "map = \"$LOCAL_CONFDIR/local.d/{}\";",
        std::path::Path::new(paths::RSPAMD_HOSTED_DOMAINS)
            .file_name()
            .unwrap()
            .to_string_lossy()
    )));
    // Only this host is local: rspamd skips the checks of local senders and signs for them.
    assert_eq!(
        setting(file(paths::RSPAMD_OPTIONS), "local_addrs"),
        ["[127.0.0.0/8, ::1];"]
    );
}

#[test]
fn spam_goes_to_junk_always_and_junk_teaches_rspamd_only_with_learning_on() {
    for version in ["2.4", "2.3"] {
        let on = config(&format!("[dovecot]\nversion = \"{version}\"\n"));
        let off = config(&format!(
            "[dovecot]\nversion = \"{version}\"\n[inbound]\nlearning = false\n"
        ));
        let (with, without) = (
            dovecot_conf::render(&on, "/etc/postmaster/config.toml"),
            dovecot_conf::render(&off, "/etc/postmaster/config.toml"),
        );
        golden(&format!("dovecot-{version}-no-learning.conf"), &without);
        for d in [&with, &without] {
            assert_eq!(
                setting(d, "protocols"),
                ["imap pop3 lmtp sieve"],
                "{version}"
            );
            assert!(
                d.contains("/etc/dovecot/sieve/spam-to-junk.sieve"),
                "{version}"
            );
            // ManageSieve behind the TLS front (4190) like IMAP and POP3, and
            // behind dovecot's ssl = required.
            assert!(
                d.contains(
                    "service managesieve-login {\n  inet_listener sieve {\n    port = 14190\n    haproxy = yes\n"
                ),
                "{version}"
            );
            assert_eq!(setting(d, "ssl"), ["required"]);
        }
        for script in ["learn-spam.sieve", "learn-ham.sieve"] {
            assert!(
                with.contains(&format!("/etc/dovecot/sieve/{script}")),
                "{version}"
            );
            assert!(!without.contains(script), "{version}");
        }
        assert!(with.contains("imap_sieve"), "{version}");
        assert!(
            !without.contains("imap_sieve = yes") && !without.contains(" imap_sieve\n"),
            "{version}"
        );
    }

    let c = config("");
    let files = host_config(&c, MapType::Lmdb, "/x");
    let file = |p: &str| {
        files
            .iter()
            .find(|f| f.path == std::path::Path::new(p))
            .unwrap()
    };
    let junk = &file(paths::SIEVE_SPAM_TO_JUNK).content;
    assert!(
        junk.contains("if header :is \"X-Spam\" \"Yes\" {\n  fileinto \"Junk\";\n}"),
        "{junk}"
    );
    // Deleting spam out of Junk teaches nothing.
    assert!(
        file(paths::SIEVE_LEARN_HAM)
            .content
            .contains("if string \"${mailbox}\" \"Trash\" {\n  stop;\n}")
    );
    // The programs learn through the controller socket rspamd binds, in the directory
    // tmpfiles makes for rspamd and the mail user's group only.
    let controller = &file(paths::RSPAMD_WORKER_CONTROLLER).content;
    assert_eq!(
        setting(controller, "bind_socket"),
        ["\"/run/rspamd-learn/controller.sock mode=0660\";"]
    );
    for (path, class) in [
        (paths::SIEVE_PIPE_LEARN_SPAM, "spam"),
        (paths::SIEVE_PIPE_LEARN_HAM, "ham"),
    ] {
        let program = file(path);
        assert_eq!(program.kind, Kind::Program);
        assert!(program.content.starts_with("#!/bin/sh\n"));
        assert!(program.content.ends_with(&format!(
            "\nexec /usr/bin/rspamc --connect /run/rspamd-learn/controller.sock --timeout 10 learn_{class}\n"
        )));
    }
    let tmpfiles = &file(paths::TMPFILES_LEARNING).content;
    let line: Vec<&str> = tmpfiles
        .lines()
        .find(|l| l.starts_with("d "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        line,
        [
            "d",
            "/run/rspamd-learn",
            "2750",
            "_rspamd",
            "5000",
            "-",
            "-"
        ]
    );
    assert_eq!(
        setting(&file(paths::RSPAMD_CLASSIFIER_BAYES).content, "servers"),
        ["\"127.0.0.1:6379\";"]
    );
    let off = config("[inbound]\nlearning = false\n");
    let files = host_config(&off, MapType::Lmdb, "/x");
    let bayes = &files
        .iter()
        .find(|f| f.path == std::path::Path::new(paths::RSPAMD_CLASSIFIER_BAYES))
        .unwrap()
        .content;
    assert!(setting(bayes, "servers").is_empty(), "{bayes}");
    // No learning scripts or programs: they need the pipe extension, which
    // dovecot.conf enables only for learning, and would not compile.
    for path in [
        paths::SIEVE_LEARN_SPAM,
        paths::SIEVE_LEARN_HAM,
        paths::SIEVE_PIPE_LEARN_SPAM,
        paths::SIEVE_PIPE_LEARN_HAM,
    ] {
        assert!(
            !files.iter().any(|f| f.path == std::path::Path::new(path)),
            "{path}"
        );
    }
    assert!(
        files
            .iter()
            .any(|f| f.path == std::path::Path::new(paths::SIEVE_SPAM_TO_JUNK))
    );
    // The controller stays off TCP either way: Debian's trusts every local user.
    assert!(
        files
            .iter()
            .any(|f| f.path == std::path::Path::new(paths::RSPAMD_WORKER_CONTROLLER))
    );
}

#[test]
fn the_checks_ask_unbound_on_loopback_unless_the_system_resolver_is_chosen() {
    let find = |files: &[File], path: &str| {
        files
            .iter()
            .find(|f| f.path == std::path::Path::new(path))
            .map(|f| f.content.clone())
    };
    let local = host_config(&config(""), MapType::Lmdb, "/x");
    let rspamd = find(&local, paths::RSPAMD_RESOLVER).unwrap();
    assert!(
        rspamd.contains("nameserver = [\"127.0.0.1:53\"];"),
        "{rspamd}"
    );
    let unbound = find(&local, paths::UNBOUND).unwrap();
    let lines: Vec<&str> = unbound.lines().map(str::trim).collect();
    assert!(lines.contains(&"interface: 127.0.0.1"), "{unbound}");
    assert!(
        lines.contains(&"access-control: 127.0.0.0/8 allow"),
        "{unbound}"
    );
    // Never a forwarder: blocklists refuse what comes through shared resolvers.
    assert!(!unbound.contains("forward-"), "{unbound}");
    // The override of rspamd's local addresses is still its own file.
    assert!(
        find(&local, paths::RSPAMD_OPTIONS)
            .unwrap()
            .contains("local_addrs = [127.0.0.0/8, ::1];")
    );

    let system = host_config(
        &config("[inbound]\nresolver = \"system\"\n"),
        MapType::Lmdb,
        "/x",
    );
    let rspamd = find(&system, paths::RSPAMD_RESOLVER).unwrap();
    assert!(!rspamd.contains("nameserver"), "{rspamd}");
    assert!(rspamd.contains("resolv.conf"), "{rspamd}");
    assert_eq!(find(&system, paths::UNBOUND), None);
}

#[test]
fn dovecot_asks_the_login_guard_only_when_blocking_is_on() {
    for (version, remote) in [("2.4", "remote = %{remote_ip}"), ("2.3", "remote=%{rip}")] {
        let dovecot = |extra: &str| {
            let c = config(&format!("[dovecot]\nversion = \"{version}\"\n{extra}"));
            host_config(&c, MapType::Lmdb, "/x")
                .into_iter()
                .find(|f| f.path.file_name().unwrap() == "dovecot.conf")
                .unwrap()
                .content
        };
        let on = dovecot("[logins]\npolicy_address = \"127.0.0.1:7777\"\n");
        assert_eq!(
            setting(&on, "auth_policy_server_url"),
            ["http://127.0.0.1:7777/"]
        );
        // The address and protocol only: no user name, no password hash.
        let at = on.find("auth_policy_request_attributes").unwrap();
        let attributes = &on[at..at + on[at..].find("auth_policy_hash_nonce").unwrap()];
        assert!(attributes.contains(remote), "{attributes}");
        assert!(attributes.contains("protocol"), "{attributes}");
        assert!(
            !attributes.contains("pwhash") && !attributes.contains("login"),
            "{attributes}"
        );
        // postmaster away: logins go on.
        assert_eq!(setting(&on, "auth_policy_reject_on_fail"), ["no"]);
        let off = dovecot("[logins]\nblock_after_failures = 0\n");
        assert!(!off.contains("auth_policy_"), "{off}");
    }
}

#[test]
fn postfix_never_delivers_to_one_mailbox_more_at_once_than_dovecot_takes() {
    for version in ["2.4", "2.3"] {
        let c = config(&format!("[dovecot]\nversion = \"{version}\"\n"));
        let files = host_config(&c, MapType::Lmdb, "/x");
        let file = |n: &str| {
            files
                .iter()
                .find(|f| f.path.file_name().unwrap() == n)
                .unwrap()
                .content
                .clone()
        };
        let postfix = setting(&file("main.cf"), "lmtp_destination_concurrency_limit")
            .iter()
            .map(|v| v.parse::<u32>().unwrap())
            .collect::<Vec<_>>();
        let dovecot = setting(&file("dovecot.conf"), "lmtp_user_concurrency_limit")
            .iter()
            .map(|v| v.parse::<u32>().unwrap())
            .collect::<Vec<_>>();
        assert_eq!(postfix.len(), 1, "{version}");
        assert_eq!(dovecot.len(), 1, "{version}");
        assert!(
            postfix[0] <= dovecot[0],
            "{version}: {postfix:?} > {dovecot:?}"
        );
        assert!(dovecot[0] > 0, "0 would mean unlimited in dovecot");
    }
}

/// Accounts with `n` mailboxes and ten times as many aliases of every kind, and
/// alias `a4` (a bare name, in both domains): with `bump`, another mailbox.
fn large_accounts(c: &Config, n: usize, bump: bool) -> Accounts {
    let password = ACCOUNTS.split('"').nth(1).unwrap();
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!("[mailboxes.m{i}]\npassword = \"{password}\"\n"));
        if i % 10 == 0 {
            text.push_str("send_as = [\"@example.net\"]\n");
        }
    }
    text.push_str("[aliases]\n");
    for i in 0..10 * n {
        let first = if i == 4 && bump { 100 } else { i % n };
        text.push_str(&match i % 4 {
            0 => format!("a{i} = \"m{first}\"\n"),
            1 => format!("\"a{i}@example.org\" = [\"m{first}\", \"x{i}@far.example\"]\n"),
            2 => format!("\"a{i}@example.net\" = \"a{}@example.org\"\n", i - 1),
            _ => format!(
                "\"a{i}@example.org\" = [\"m{first}@example.net\", \"m{}\"]\n",
                (i + 1) % n
            ),
        });
    }
    crate::accounts::parse(
        &Source::new("/etc/postmaster/accounts.toml", text),
        &c.accounts_policy(),
    )
    .unwrap()
}

#[test]
fn large_files_streamed_to_disk_are_what_they_render_to_in_memory() {
    // 2,000 mailboxes and 20,000 aliases: each map is many of the 64 KiB pieces
    // it is written and compared in.
    let c = config("");
    let dir = tempfile::tempdir().unwrap();
    let options = crate::apply::Options {
        compile_maps: None,
        passwd_group: None,
        postmap: "postmap".into(),
    };
    let a = large_accounts(&c, 2000, false);
    let files = generated(&c, &a);
    let report = crate::apply::apply(dir.path(), &files, &options).unwrap();
    assert_eq!(report.written.len(), 4, "{report:?}");
    for f in &files {
        let whole = f.to_file().content;
        assert!(whole.len() > 200_000 || f.path.ends_with("virtual_mailbox"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join(&f.path)).unwrap(),
            whole,
            "{}",
            f.path.display()
        );
    }
    // The same again: compared piece by piece, nothing is written.
    let again = crate::apply::apply(dir.path(), &files, &options).unwrap();
    assert!(again.written.is_empty(), "{again:?}");
    // One alias delivers elsewhere: its map and the sender owners change.
    let bumped = large_accounts(&c, 2000, true);
    let files = generated(&c, &bumped);
    let report = crate::apply::apply(dir.path(), &files, &options).unwrap();
    let written: Vec<String> = report
        .written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(written, ["virtual_alias", "sender_login"]);
    for f in &files {
        assert_eq!(
            std::fs::read_to_string(dir.path().join(&f.path)).unwrap(),
            f.to_file().content
        );
    }
}

/// dovecot serves no port of its own: every listener is on loopback, takes only
/// connections from the TLS front (a PROXY header first), at the ports the front
/// connects to; no listener speaks TLS, so a new certificate never needs dovecot.
#[test]
fn dovecot_listens_only_on_loopback_behind_the_tls_front() {
    for version in ["2.4", "2.3"] {
        let c = config(&format!("[dovecot]\nversion = \"{version}\"\n"));
        let d = dovecot_conf::render(&c, "/etc/postmaster/config.toml");
        assert_eq!(setting(&d, "listen"), ["127.0.0.1"], "{version}");
        assert_eq!(
            setting(&d, "haproxy_trusted_networks"),
            ["127.0.0.1/32"],
            "{version}"
        );
        let (mut ports, mut off) = (Vec::new(), Vec::new());
        let mut lines = d.lines().map(str::trim);
        while let Some(line) = lines.next() {
            if line.starts_with("inet_listener ") {
                let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "}").collect();
                // dovecot's default 993 and 995 listeners, turned off.
                if body == ["port = 0"] {
                    off.push(line.to_owned());
                    continue;
                }
                assert!(
                    body.contains(&"haproxy = yes"),
                    "{version}: {line} {body:?}"
                );
                assert!(
                    !body.iter().any(|l| l.starts_with("ssl")),
                    "{version}: {line}"
                );
                ports.push(
                    body.iter()
                        .find_map(|l| l.strip_prefix("port = "))
                        .unwrap()
                        .to_owned(),
                );
            }
        }
        assert_eq!(
            ports,
            [
                crate::tls_front::IMAP_BACKEND_PORT.to_string(),
                crate::tls_front::POP3_BACKEND_PORT.to_string(),
                crate::tls_front::SIEVE_BACKEND_PORT.to_string()
            ],
            "{version}"
        );
        assert_eq!(
            off,
            ["inet_listener imaps {", "inet_listener pop3s {"],
            "{version}"
        );
    }
}
