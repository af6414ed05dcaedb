//! The files setup writes once for the admin: a documented config.toml and an
//! accounts file that says how to add the first mailbox. Pure; the caller checks
//! the result with the same parser the daemon uses.

use std::path::PathBuf;

/// Where the certificate comes from, as the flags chose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Certificate {
    /// postmaster obtains it from Let's Encrypt; the contact addresses, if any.
    Acme { contact: Vec<String> },
    /// Another tool (certbot, the admin) keeps these files up to date.
    Files { cert: PathBuf, key: PathBuf },
}

/// The configuration setup writes when there is none yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewConfig {
    pub(crate) host_name: String,
    pub(crate) domains: Vec<String>,
    pub(crate) certificate: Certificate,
}

/// Where the every-key example is installed (setup puts it there).
pub(crate) const EXAMPLE_PATH: &str = "/usr/local/share/doc/postmaster/postmaster.example.toml";

fn quoted(s: &str) -> String {
    // The values are host names, domains, paths and mail addresses; TOML's basic
    // strings need only these two escaped.
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| quoted(s)).collect();
    format!("[{}]", inner.join(", "))
}

pub(crate) fn config_toml(c: &NewConfig) -> String {
    let tls = match &c.certificate {
        Certificate::Acme { contact } => format!(
            "[tls]\n\
             # postmaster obtains the certificate from Let's Encrypt and renews it itself,\n\
             # answering the http-01 challenge on port 80 (postmaster-acme.socket): port 80\n\
             # must reach this host, and {host} must resolve to it.\n\
             source = \"acme\"\n\
             \n\
             [acme]\n\
             directory = \"letsencrypt\"\n\
             # Where Let's Encrypt may write about the account (expiry notices).\n\
             contact = {contact}\n",
            host = c.host_name,
            contact = list(
                &contact
                    .iter()
                    .map(|a| if a.contains(':') {
                        a.clone()
                    } else {
                        format!("mailto:{a}")
                    })
                    .collect::<Vec<_>>()
            )
        ),
        Certificate::Files { cert, key } => format!(
            "[tls]\n\
             # Another tool (certbot, you) keeps these up to date; postmaster watches them,\n\
             # checks that they match and cover {host}, and installs them for postfix and\n\
             # dovecot. The daemon reads them as group postmaster.\n\
             source = \"files\"\n\
             cert = {cert}\n\
             key = {key}\n",
            host = c.host_name,
            cert = quoted(&cert.display().to_string()),
            key = quoted(&key.display().to_string()),
        ),
    };
    format!(
        "# postmaster's configuration, written by `postmaster setup`.\n\
         # Every key, with its default and what it does: {EXAMPLE_PATH}\n\
         # (keys left out here have those defaults).\n\
         #\n\
         # After a change: `postmaster setup` shows how the postfix and dovecot\n\
         # configuration would change, and `postmaster setup --yes` installs it and\n\
         # reloads what needs it. `postmaster check` validates this file.\n\
         \n\
         # The mail host's own name: what clients set as their server, what the TLS\n\
         # certificate covers, what postfix says in HELO. Needs an A/AAAA record; the\n\
         # MX records of the domains point at it (`postmaster dns` lists them all).\n\
         host_name = {host}\n\
         \n\
         # The mail domains served here; the first is the primary one. Every mailbox\n\
         # has an address in each of them.\n\
         domains = {domains}\n\
         \n\
         # Mailboxes, aliases and catch-alls; `postmaster mailbox add NAME` edits it.\n\
         accounts_file = \"/etc/postmaster/accounts.toml\"\n\
         \n\
         {tls}\
         \n\
         [dovecot]\n\
         # Debian 13's dovecot.\n\
         version = \"2.4\"\n",
        host = quoted(&c.host_name),
        domains = list(&c.domains),
    )
}

pub(crate) fn accounts_toml(domains: &[String]) -> String {
    let first = domains.first().map(String::as_str).unwrap_or("example.org");
    format!(
        "# postmaster's accounts: mailboxes, aliases and catch-alls. Only password\n\
         # hashes go here; the daemon applies every change within a second and refuses\n\
         # a broken file as a whole (`postmaster status` says why).\n\
         #\n\
         # Add the first mailbox (it asks for the password twice):\n\
         #\n\
         #     postmaster mailbox add thomas\n\
         #\n\
         # thomas then logs in as `thomas` and receives mail for thomas@{first}\n\
         # (and the same name in every hosted domain). More:\n\
         #\n\
         #     postmaster alias add postmaster@{first} thomas\n\
         #     postmaster catch-all set {first} thomas\n\
         #     postmaster mailbox list\n\
         #\n\
         # Or edit this file by hand: see the README, \"The accounts file\"\n\
         # ([mailboxes.NAME] with password = \"<postmaster hash-password>\").\n\
         \n\
         [mailboxes]\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, TlsSource};
    use crate::diag::Source;

    fn parse(text: &str) -> Config {
        Config::parse(&Source::new("/etc/postmaster/config.toml", text))
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn the_config_for_acme_is_valid_and_says_what_the_flags_said() {
        let c = parse(&config_toml(&NewConfig {
            host_name: "mail.example.org".into(),
            domains: vec!["example.org".into(), "example.net".into()],
            certificate: Certificate::Acme {
                contact: vec!["you@example.org".into()],
            },
        }));
        assert_eq!(c.host_name, "mail.example.org");
        assert_eq!(c.domains, ["example.org", "example.net"]);
        assert_eq!(c.tls.source, TlsSource::Acme);
        assert_eq!(c.acme.contact, ["mailto:you@example.org"]);
    }

    #[test]
    fn the_config_for_files_is_valid_and_names_them() {
        let c = parse(&config_toml(&NewConfig {
            host_name: "mail.example.org".into(),
            domains: vec!["example.org".into()],
            certificate: Certificate::Files {
                cert: "/etc/ssl/mail/fullchain.pem".into(),
                key: "/etc/ssl/mail/key.pem".into(),
            },
        }));
        assert_eq!(c.tls.source, TlsSource::Files);
        assert_eq!(c.tls.cert, PathBuf::from("/etc/ssl/mail/fullchain.pem"));
        assert_eq!(c.tls.key, PathBuf::from("/etc/ssl/mail/key.pem"));
    }

    /// The daemon refuses an accounts file without mailboxes (a truncated file
    /// must not remove everyone), so the new file is invalid until the first
    /// `postmaster mailbox add`, which must then work on it as it stands.
    #[test]
    fn the_accounts_file_tells_how_to_add_a_mailbox_and_that_command_works_on_it() {
        let text = accounts_toml(&["example.org".into()]);
        assert!(text.contains("postmaster mailbox add thomas"));
        assert!(text.ends_with("\n[mailboxes]\n"), "{text}");
        let config = parse(&config_toml(&NewConfig {
            host_name: "mail.example.org".into(),
            domains: vec!["example.org".into()],
            certificate: Certificate::Acme { contact: vec![] },
        }));
        let path = std::path::Path::new("/etc/postmaster/accounts.toml");
        let hash = "{SHA512-CRYPT}$6$rounds=5000$tdqH0s.oYduNxOGC$oqHD6xZZTs.LuOSMs.72k2qcgcjFaJ6JcKrH1fyqRSIRAhnoh6CSg/sw3gmR4v8O8x2nuUganwi2dxusIIbnl1";
        let add = crate::accounts::edit::Edit::AddMailbox {
            name: "thomas".into(),
            password: hash.into(),
            quota: None,
            send_as: vec![],
        };
        let edited = crate::accounts::edit::apply(path, &text, &add, &config.accounts_policy())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            edited.text.starts_with(&text),
            "the comment stays on top:\n{}",
            edited.text
        );
        assert_eq!(edited.accounts.mailboxes.len(), 1);
    }
}
