//! Whether this host can take postmaster, judged from facts the caller gathered
//! (file contents, `/proc/net/tcp`, `dpkg --verify`): pure functions, so every
//! refusal is unit-tested without a host. Each refusal says what to do.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// The ports setup makes postfix and dovecot listen on, which no other program may
/// hold: SMTP, submissions, submission, IMAPS, POP3S.
pub(crate) const MAIL_PORTS: [u16; 5] = [25, 465, 587, 993, 995];

/// Programs that may hold the mail ports: postfix's master (and the smtpd it
/// hands the socket to), dovecot (and its login processes) and postmaster's TLS
/// front (993 and 995, with systemd, which holds its socket). A second run of setup
/// finds postfix and the front there; on a fresh host Debian's packages started
/// postfix and dovecot.
const MAIL_PROGRAMS: [&str; 7] = [
    "master",
    "smtpd",
    "postscreen",
    "dovecot",
    "imap-login",
    "pop3-login",
    "postmaster",
];

/// The mail ports of those that postmaster-tls.socket holds.
const FRONT_PORTS: [u16; 2] = [993, 995];

/// Why setup will not go on. Display says what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotRoot,
    /// Not Debian 13: what /etc/os-release says.
    NotDebian13 {
        found: String,
    },
    /// Another program listens on a mail port.
    PortTaken {
        port: u16,
        programs: Vec<String>,
    },
    /// A file setup would replace holds a configuration someone made, and setup did
    /// not install it.
    Foreign {
        path: PathBuf,
        why: ForeignReason,
    },
    /// A file setup installed was changed (or removed) since.
    LocallyChanged {
        path: PathBuf,
    },
    /// The flags disagree with the configuration already there.
    ConfigDiffers {
        what: String,
    },
    /// The vmail user or group exists with other ids than the configuration's.
    VmailIds {
        what: String,
    },
    /// The daemon could not read the certificate or key it was given.
    Unreadable {
        path: PathBuf,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotRoot => write!(f, "setup changes the whole host: run it as root"),
            Refusal::NotDebian13 { found } => write!(
                f,
                "this is {found}, not Debian 13: `postmaster setup` knows Debian 13's packages only. \
                 On NixOS use the module (services.postmaster); elsewhere install postfix, dovecot and \
                 rspamd yourself, then units/install-debian.sh and `postmaster render` (README, \"On \
                 Debian 13: one command\", its last paragraph)"
            ),
            Refusal::PortTaken { port, programs } => write!(
                f,
                "port {port} is taken by {}: postfix and dovecot must listen there. Stop and disable it \
                 (e.g. `systemctl disable --now UNIT`, or remove its package), then run setup again",
                if programs.is_empty() {
                    "a program this host does not show".to_string()
                } else {
                    programs.join(", ")
                }
            ),
            Refusal::Foreign { path, why } => write!(
                f,
                "{} is not Debian's and not postmaster's: {why}. Setup would replace it. Move your \
                 configuration aside, or run setup again with --force to replace it (the file is kept \
                 as a backup under /var/lib/postmaster-setup/originals/)",
                path.display()
            ),
            Refusal::LocallyChanged { path } => write!(
                f,
                "{} was changed since setup installed it (the difference is shown above). Put such \
                 changes into /etc/postmaster/config.toml where it has a key, or run setup again with \
                 --force to replace the file (your version is kept as {}.postmaster-local)",
                path.display(),
                path.display()
            ),
            Refusal::ConfigDiffers { what } => write!(
                f,
                "{what}; /etc/postmaster/config.toml is the configuration now: edit it (or leave the \
                 flag out), then run `postmaster setup` again"
            ),
            Refusal::VmailIds { what } => write!(
                f,
                "{what}: set [dovecot] vmail_user, vmail_uid and vmail_gid in \
                 /etc/postmaster/config.toml to match, then run setup again"
            ),
            Refusal::Unreadable { path } => write!(
                f,
                "the daemon (user postmaster) cannot read {}: give group postmaster read access, e.g. \
                 `chgrp postmaster FILE && chmod g+r FILE` for the key and certificate and `chgrp \
                 postmaster DIR && chmod g+rx DIR` for each directory above them that is not \
                 world-searchable (for certbot: /etc/letsencrypt/live and /etc/letsencrypt/archive), \
                 then run setup again",
                path.display()
            ),
        }
    }
}

/// `KEY=value` pairs of an os-release file (quotes removed).
fn os_release_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').trim_matches('\''))
    })
}

/// Debian 13 (ID=debian, VERSION_ID=13), from /etc/os-release's text.
pub(crate) fn judge_os(os_release: Option<&str>) -> Result<(), Refusal> {
    let Some(text) = os_release else {
        return Err(Refusal::NotDebian13 {
            found: "a system without /etc/os-release".into(),
        });
    };
    let id = os_release_field(text, "ID").unwrap_or("");
    let version = os_release_field(text, "VERSION_ID").unwrap_or("");
    if id == "debian" && version == "13" {
        return Ok(());
    }
    let found = os_release_field(text, "PRETTY_NAME")
        .map(str::to_string)
        .unwrap_or_else(|| format!("ID={id} VERSION_ID={version}"));
    Err(Refusal::NotDebian13 { found })
}

/// A listening TCP socket: its port and the socket inode that names it in
/// `/proc/PID/fd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Listener {
    pub(crate) port: u16,
    pub(crate) inode: u64,
}

/// The listening sockets in the text of `/proc/net/tcp` or `/proc/net/tcp6`.
pub(crate) fn listeners(proc_net_tcp: &str) -> Vec<Listener> {
    const LISTEN: &str = "0A";
    proc_net_tcp
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != LISTEN {
                return None;
            }
            let port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
            let inode = f[9].parse().ok()?;
            Some(Listener { port, inode })
        })
        .collect()
}

/// Refusals for mail ports held by programs other than postfix, dovecot and the
/// TLS front; `front_socket`: whether postmaster-tls.socket is active (then systemd
/// holding 993 and 995 is the front's socket).
/// `holders` lists, per mail port that listens, the names (comm) of the processes
/// that hold the socket.
pub(crate) fn judge_ports(holders: &[(u16, BTreeSet<String>)], front_socket: bool) -> Vec<Refusal> {
    holders
        .iter()
        .filter(|(port, _)| MAIL_PORTS.contains(port))
        .filter(|(port, programs)| {
            !programs.iter().any(|p| {
                MAIL_PROGRAMS.contains(&p.as_str())
                    // postmaster-tls.socket (active) while its service is
                    // stopped: setup starts it again.
                    || (front_socket && p == "systemd" && FRONT_PORTS.contains(port))
            })
        })
        .map(|(port, programs)| Refusal::PortTaken {
            port: *port,
            programs: programs.iter().cloned().collect(),
        })
        .collect()
}

/// What Debian knows about the configuration files on this host, to tell its own
/// files from an admin's.
#[derive(Debug, Clone, Default)]
pub(crate) struct DebianFacts {
    /// `/usr/share/postfix/master.cf.dist`: what postfix's postinst installs.
    pub(crate) master_cf_dist: Option<String>,
    /// Configuration files (dpkg conffiles) that `dpkg --verify` reports as changed
    /// or missing.
    pub(crate) changed_conffiles: BTreeSet<PathBuf>,
}

/// The main.cf parameters Debian's postfix package writes (main.cf.debian, the
/// TLS snippet, and what its postinst sets from debconf). A main.cf that sets only
/// these, with no relay host, is Debian's: nobody has made a mail host of it yet.
const DEBIAN_MAIN_CF: &[&str] = &[
    "compatibility_level",
    "myorigin",
    "smtpd_banner",
    "inet_protocols",
    "inet_interfaces",
    "mynetworks_style",
    "mynetworks",
    "mydestination",
    "myhostname",
    "mailbox_size_limit",
    "mailbox_command",
    "alias_maps",
    "alias_database",
    "biff",
    "append_dot_mydomain",
    "readme_directory",
    "delay_warning_time",
    "recipient_delimiter",
    "relayhost",
    "cyrus_sasl_config_path",
    "smtpd_tls_key_file",
    "smtpd_tls_cert_file",
    "smtpd_tls_security_level",
    "smtpd_use_tls",
    "smtpd_tls_session_cache_database",
    "smtp_tls_CAfile",
    "smtp_tls_CApath",
    "smtp_tls_security_level",
    "smtp_tls_session_cache_database",
    "smtpd_relay_restrictions",
];

/// `name = value` parameters of a main.cf (continuation lines joined).
fn main_cf_parameters(text: &str) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = params.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            params.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    params
}

/// Why a file setup would replace is someone's configuration; the text follows
/// "PATH is not Debian's and not postmaster's: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ForeignReason {
    /// main.cf parameters Debian's main.cf does not set.
    #[error("it sets {}, which Debian's main.cf does not", .0.join(", "))]
    SetsParameters(Vec<String>),
    #[error("it relays through {0}")]
    RelaysThrough(String),
    #[error("it differs from Debian's /usr/share/postfix/master.cf.dist")]
    DiffersFromDist,
    #[error("/usr/share/postfix/master.cf.dist, to compare it with, is missing")]
    DistMissing,
    #[error("it was changed after its package installed it (dpkg --verify)")]
    ChangedSinceInstalled,
    /// A changed conf.d file, which postmaster's complete dovecot.conf ignores.
    #[error(
        "it was changed after dovecot was installed, and postmaster's dovecot.conf does not read conf.d"
    )]
    DovecotConfDIgnored,
    /// Not a file Debian ships, and different from what setup writes.
    #[error("setup did not install it")]
    NotInstalledBySetup,
}

/// Why the file at `path`, which setup did not install, is someone's
/// configuration rather than Debian's untouched original (`None`: it is Debian's,
/// or not configuration Debian ships, and equal to what setup writes).
/// `content` is what is there now, `desired` what setup would write.
pub(crate) fn foreign(
    path: &Path,
    content: &[u8],
    desired: &[u8],
    facts: &DebianFacts,
) -> Option<ForeignReason> {
    if content == desired {
        return None;
    }
    let text = String::from_utf8_lossy(content);
    match path.to_str().unwrap_or("") {
        "/etc/postfix/main.cf" => {
            let params = main_cf_parameters(&text);
            let extra: Vec<&str> = params
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| !DEBIAN_MAIN_CF.contains(k))
                .collect();
            if !extra.is_empty() {
                return Some(ForeignReason::SetsParameters(
                    extra.iter().map(|k| k.to_string()).collect(),
                ));
            }
            params
                .iter()
                .find(|(k, v)| k == "relayhost" && !v.is_empty())
                .map(|(_, v)| ForeignReason::RelaysThrough(v.clone()))
        }
        "/etc/postfix/master.cf" => match &facts.master_cf_dist {
            Some(dist) if *dist == text => None,
            Some(_) => Some(ForeignReason::DiffersFromDist),
            None => Some(ForeignReason::DistMissing),
        },
        _ if facts.changed_conffiles.contains(path) => Some(ForeignReason::ChangedSinceInstalled),
        p if p.starts_with("/etc/dovecot/") || p.starts_with("/etc/postfix/") => None,
        // Not a file Debian ships (rspamd's local.d, postmaster's own files), and
        // different from what setup writes: someone put it there.
        _ => Some(ForeignReason::NotInstalledBySetup),
    }
}

/// Changed dovecot conffiles that postmaster's dovecot.conf would silently drop: it
/// is complete and includes nothing from conf.d.
pub(crate) fn dropped_dovecot_changes(facts: &DebianFacts) -> Vec<Refusal> {
    facts
        .changed_conffiles
        .iter()
        .filter(|p| p.starts_with("/etc/dovecot/conf.d"))
        .map(|p| Refusal::Foreign {
            path: p.clone(),
            why: ForeignReason::DovecotConfDIgnored,
        })
        .collect()
}

/// The conffiles `dpkg --verify` reports as changed or missing. Its lines are
/// `??5?????? c /etc/file` (the third column 5: the digest differs) or
/// `missing   c /etc/file`.
pub(crate) fn changed_conffiles(dpkg_verify: &str) -> BTreeSet<PathBuf> {
    dpkg_verify
        .lines()
        .filter_map(|l| {
            let (flags, rest) = l.split_at_checked(9)?;
            let rest = rest.trim_start();
            let path = rest.strip_prefix("c ")?.trim();
            (flags.as_bytes().get(2) == Some(&b'5') || flags.starts_with("missing"))
                .then(|| PathBuf::from(path))
        })
        .collect()
}

/// The Debian packages a mail host needs that dpkg does not list as installed.
/// `status` is `dpkg-query -W -f '${Package} ${db:Status-Abbrev}\n'` for them.
pub(crate) fn missing_packages<'a>(wanted: &[&'a str], status: &str) -> Vec<&'a str> {
    let installed: BTreeSet<&str> = status
        .lines()
        .filter_map(|l| {
            let (name, st) = l.split_once(' ')?;
            st.starts_with("ii").then_some(name)
        })
        .collect();
    wanted
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_13: &str = "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"13\"\nID=debian\n";

    #[test]
    fn only_debian_13_is_accepted() {
        assert_eq!(judge_os(Some(DEBIAN_13)), Ok(()));
        let bookworm = DEBIAN_13
            .replace("13 (trixie)", "12 (bookworm)")
            .replace("\"13\"", "\"12\"");
        let refusal = judge_os(Some(&bookworm)).unwrap_err();
        assert_eq!(
            refusal.to_string().split(':').next().unwrap(),
            "this is Debian GNU/Linux 12 (bookworm), not Debian 13"
        );
        let ubuntu = "ID=ubuntu\nVERSION_ID=\"24.04\"\n";
        assert!(
            matches!(judge_os(Some(ubuntu)), Err(Refusal::NotDebian13 { found }) if found == "ID=ubuntu VERSION_ID=24.04")
        );
        assert!(judge_os(None).is_err());
    }

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:0019 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 100 0 0 10 0\n\
   2: 0100007F:0019 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0000000000000000 100 0 0 10 0\n";

    #[test]
    fn listeners_are_the_sockets_in_state_listen() {
        assert_eq!(
            listeners(TCP),
            vec![
                Listener {
                    port: 25,
                    inode: 1111
                },
                Listener {
                    port: 8080,
                    inode: 2222
                }
            ]
        );
    }

    fn held(port: u16, programs: &[&str]) -> (u16, BTreeSet<String>) {
        (port, programs.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn mail_ports_may_be_held_by_postfix_and_dovecot_only() {
        let ok = [
            held(25, &["master", "smtpd"]),
            held(993, &["dovecot", "imap-login"]),
            held(995, &["systemd", "postmaster"]),
            held(8080, &["nginx"]),
        ];
        assert_eq!(judge_ports(&ok, true), vec![]);
        // systemd alone: the front's socket, its service stopped (993, 995); on
        // postfix's ports another socket unit.
        assert_eq!(judge_ports(&[held(993, &["systemd"])], true), vec![]);
        // Without the front's socket, systemd on 993 is another socket unit.
        assert_eq!(judge_ports(&[held(993, &["systemd"])], false).len(), 1);
        let taken = [
            held(25, &["exim4"]),
            held(587, &[]),
            held(465, &["systemd"]),
        ];
        let refusals = judge_ports(&taken, true);
        assert_eq!(refusals.len(), 3);
        assert!(
            refusals[0]
                .to_string()
                .starts_with("port 25 is taken by exim4:"),
            "{}",
            refusals[0]
        );
        assert!(
            refusals[1]
                .to_string()
                .contains("a program this host does not show")
        );
    }

    fn facts() -> DebianFacts {
        DebianFacts {
            master_cf_dist: Some("smtp inet n - y - - smtpd\n".into()),
            changed_conffiles: BTreeSet::new(),
        }
    }

    const DEBIAN_MAIN_CF_TEXT: &str = "# See /usr/share/postfix/main.cf.dist\ncompatibility_level = 3.9\nmyhostname = mail.example.org\nrelayhost = \nsmtpd_relay_restrictions = permit_mynetworks\n    permit_sasl_authenticated defer_unauth_destination\n";

    #[test]
    fn debian_s_main_cf_is_replaceable_and_a_configured_one_is_not() {
        let p = Path::new("/etc/postfix/main.cf");
        assert_eq!(
            foreign(p, DEBIAN_MAIN_CF_TEXT.as_bytes(), b"ours", &facts()),
            None
        );
        let virt = format!(
            "{DEBIAN_MAIN_CF_TEXT}virtual_mailbox_domains = example.com\nsmtpd_milters = inet:localhost:8891\n"
        );
        assert_eq!(
            foreign(p, virt.as_bytes(), b"ours", &facts()).unwrap(),
            ForeignReason::SetsParameters(vec![
                "virtual_mailbox_domains".into(),
                "smtpd_milters".into()
            ])
        );
        let relay =
            DEBIAN_MAIN_CF_TEXT.replace("relayhost = ", "relayhost = [smtp.isp.example]:587");
        assert_eq!(
            foreign(p, relay.as_bytes(), b"ours", &facts()).unwrap(),
            ForeignReason::RelaysThrough("[smtp.isp.example]:587".into())
        );
    }

    /// The refusal setup prints quotes these after the path.
    #[test]
    fn why_a_file_is_someone_s_reads_as_before() {
        let t = |r: ForeignReason| r.to_string();
        assert_eq!(
            t(ForeignReason::SetsParameters(vec![
                "virtual_mailbox_domains".into(),
                "smtpd_milters".into()
            ])),
            "it sets virtual_mailbox_domains, smtpd_milters, which Debian's main.cf does not"
        );
        assert_eq!(
            t(ForeignReason::RelaysThrough(
                "[smtp.isp.example]:587".into()
            )),
            "it relays through [smtp.isp.example]:587"
        );
        assert_eq!(
            t(ForeignReason::DiffersFromDist),
            "it differs from Debian's /usr/share/postfix/master.cf.dist"
        );
        assert_eq!(
            t(ForeignReason::DistMissing),
            "/usr/share/postfix/master.cf.dist, to compare it with, is missing"
        );
        assert_eq!(
            t(ForeignReason::ChangedSinceInstalled),
            "it was changed after its package installed it (dpkg --verify)"
        );
        assert_eq!(
            t(ForeignReason::DovecotConfDIgnored),
            "it was changed after dovecot was installed, and postmaster's dovecot.conf does not read conf.d"
        );
        assert_eq!(
            t(ForeignReason::NotInstalledBySetup),
            "setup did not install it"
        );
    }

    #[test]
    fn master_cf_is_debian_s_when_it_is_the_dist_file() {
        let p = Path::new("/etc/postfix/master.cf");
        assert_eq!(
            foreign(p, b"smtp inet n - y - - smtpd\n", b"ours", &facts()),
            None
        );
        assert_eq!(
            foreign(p, b"smtp inet n - y - - postscreen\n", b"ours", &facts()),
            Some(ForeignReason::DiffersFromDist)
        );
    }

    #[test]
    fn changed_conffiles_and_unknown_files_are_foreign_and_equal_content_never() {
        let mut f = facts();
        let conf = Path::new("/etc/dovecot/dovecot.conf");
        assert_eq!(foreign(conf, b"debian's", b"ours", &f), None);
        f.changed_conffiles.insert(conf.into());
        assert_eq!(
            foreign(conf, b"admin's", b"ours", &f),
            Some(ForeignReason::ChangedSinceInstalled)
        );
        let rspamd = Path::new("/etc/rspamd/local.d/actions.conf");
        assert_eq!(
            foreign(rspamd, b"reject = 20;", b"reject = 15;", &f),
            Some(ForeignReason::NotInstalledBySetup)
        );
        assert_eq!(foreign(rspamd, b"same", b"same", &f), None);
    }

    #[test]
    fn dpkg_verify_lines_name_changed_and_missing_conffiles() {
        let out = "??5?????? c /etc/dovecot/conf.d/10-auth.conf\nmissing   c /etc/dovecot/conf.d/10-ssl.conf\n??5??????   /usr/share/doc/x\n";
        let changed = changed_conffiles(out);
        assert_eq!(
            changed.into_iter().collect::<Vec<_>>(),
            vec![
                PathBuf::from("/etc/dovecot/conf.d/10-auth.conf"),
                PathBuf::from("/etc/dovecot/conf.d/10-ssl.conf"),
            ]
        );
        let f = DebianFacts {
            master_cf_dist: None,
            changed_conffiles: changed_conffiles(out),
        };
        let refusals = dropped_dovecot_changes(&f);
        assert_eq!(refusals.len(), 2);
        assert!(refusals[0].to_string().contains("does not read conf.d"));
    }

    #[test]
    fn missing_packages_are_those_dpkg_does_not_call_installed() {
        let status = "postfix ii \ndovecot-core rc \nrspamd ii \n";
        assert_eq!(
            missing_packages(
                &["postfix", "dovecot-core", "rspamd", "postfix-lmdb"],
                status
            ),
            vec!["dovecot-core", "postfix-lmdb"]
        );
    }
}
