//! Pure rendering: configuration and accounts in, file contents out. Nothing here
//! touches the system, so every byte postfix and dovecot will read is covered by
//! golden-file tests.
//!
//! Two groups of files:
//! - [`generated`]: what follows the accounts file and changes at run time, written
//!   into the generated directory by the daemon (postfix maps, dovecot passwd-file);
//! - [`host_config`]: the mail host's postfix, dovecot, rspamd and unbound
//!   configuration for systemd hosts that are not NixOS, installed once
//!   (`postmaster render`).

mod dovecot_conf;
mod maps;
mod passwd;
mod postfix_conf;
mod resolver;
mod rspamd_conf;
mod template;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use crate::accounts::Accounts;
use crate::config::{Config, MapType};

/// What a file is, which decides how it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A postfix lookup table source: compiled with `postmap` after writing.
    PostfixMap,
    /// dovecot's passwd-file: holds password hashes, so not world-readable.
    PasswdFile,
    /// A configuration file for postfix or dovecot.
    Config,
    /// A program another service runs (dovecot's Sieve pipe): executable.
    Program,
}

/// One rendered file, named relative to the directory it goes in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct File {
    pub(crate) path: PathBuf,
    pub(crate) content: String,
    pub(crate) kind: Kind,
}

/// The relative paths of the generated files, named once.
pub(crate) mod paths {
    pub(crate) const VIRTUAL_ALIAS: &str = "postfix/virtual_alias";
    pub(crate) const VIRTUAL_MAILBOX: &str = "postfix/virtual_mailbox";
    pub(crate) const SENDER_LOGIN: &str = "postfix/sender_login";
    pub(crate) const PASSWD_FILE: &str = "dovecot/users";
    pub(crate) const MAIN_CF: &str = "postfix/main.cf";
    pub(crate) const MASTER_CF: &str = "postfix/master.cf";
    pub(crate) const DOVECOT_CONF: &str = "dovecot/dovecot.conf";
    pub(crate) const RSPAMD_DKIM_SIGNING: &str = "rspamd/local.d/dkim_signing.conf";
    pub(crate) const RSPAMD_SETTINGS: &str = "rspamd/local.d/settings.conf";
    pub(crate) const RSPAMD_WORKER_PROXY: &str = "rspamd/override.d/worker-proxy.inc";
    pub(crate) const RSPAMD_OPTIONS: &str = "rspamd/override.d/options.inc";
    pub(crate) const RSPAMD_ACTIONS: &str = "rspamd/local.d/actions.conf";
    pub(crate) const RSPAMD_MILTER_HEADERS: &str = "rspamd/local.d/milter_headers.conf";
    pub(crate) const RSPAMD_DMARC: &str = "rspamd/local.d/dmarc.conf";
    pub(crate) const RSPAMD_MULTIMAP: &str = "rspamd/local.d/multimap.conf";
    pub(crate) const RSPAMD_HOSTED_DOMAINS: &str = "rspamd/local.d/postmaster_hosted_domains.map";
    pub(crate) const RSPAMD_FORCE_ACTIONS: &str = "rspamd/local.d/force_actions.conf";
    pub(crate) const RSPAMD_CLASSIFIER_BAYES: &str = "rspamd/local.d/classifier-bayes.conf";
    pub(crate) const RSPAMD_WORKER_CONTROLLER: &str = "rspamd/override.d/worker-controller.inc";
    pub(crate) const SIEVE_SPAM_TO_JUNK: &str = "dovecot/sieve/spam-to-junk.sieve";
    pub(crate) const SIEVE_LEARN_SPAM: &str = "dovecot/sieve/learn-spam.sieve";
    pub(crate) const SIEVE_LEARN_HAM: &str = "dovecot/sieve/learn-ham.sieve";
    pub(crate) const SIEVE_PIPE_LEARN_SPAM: &str = "dovecot/sieve-pipe/rspamd-learn-spam";
    pub(crate) const SIEVE_PIPE_LEARN_HAM: &str = "dovecot/sieve-pipe/rspamd-learn-ham";
    pub(crate) const TMPFILES_LEARNING: &str = "tmpfiles.d/postmaster-learning.conf";
    /// rspamd's resolver (`[inbound] resolver`); override.d/options.inc is another file.
    pub(crate) const RSPAMD_RESOLVER: &str = "rspamd/local.d/options.inc";
    pub(crate) const UNBOUND: &str = "unbound/unbound.conf.d/postmaster.conf";
}

/// Where the rendered files are installed (their paths above, under `/etc`), for
/// the files that name each other.
pub(crate) mod installed {
    pub(crate) const SIEVE_DIR: &str = "/etc/dovecot/sieve";
    pub(crate) const SIEVE_PIPE_DIR: &str = "/etc/dovecot/sieve-pipe";
    /// rspamd's controller socket and its directory (tmpfiles.d).
    pub(crate) const CONTROLLER_DIR: &str = "/run/rspamd-learn";
    pub(crate) const CONTROLLER_SOCKET: &str = "/run/rspamd-learn/controller.sock";
    /// valkey as Debian configures it: 127.0.0.1 only.
    pub(crate) const BAYES_SERVERS: &str = "127.0.0.1:6379";
    /// rspamd's client, which the learning programs run (a store path on NixOS,
    /// which fills the same template: nix/lib/inbound.nix).
    pub(crate) const RSPAMC: &str = "/usr/bin/rspamc";
}

/// The files that follow the accounts file.
pub(crate) fn generated(config: &Config, accounts: &Accounts) -> Vec<File> {
    // Each file is written once, header and body into one buffer sized for it: a
    // map of 100,000 aliases is several megabytes, and every copy of it counts in
    // the memory and the time of an apply.
    let file = |path: &str, kind: Kind, what: &str, size: usize, body: &dyn Fn(&mut String)| {
        let mut content = String::with_capacity(size + 256);
        content.push_str(&format!(
            "# {what}\n# Generated by postmaster from {}; edit that file, not this one.\n",
            config.accounts_file.display()
        ));
        body(&mut content);
        File {
            path: path.into(),
            content,
            kind,
        }
    };
    let addresses = accounts.mailboxes.len() * config.domains.len();
    vec![
        file(
            paths::PASSWD_FILE,
            Kind::PasswdFile,
            "dovecot passwd-file: logins and their mailboxes.",
            accounts.mailboxes.len() * 200,
            &|out| passwd::render(config, accounts, out),
        ),
        file(
            paths::VIRTUAL_ALIAS,
            Kind::PostfixMap,
            "postfix virtual_alias_maps: where each address delivers.",
            (addresses + accounts.aliases.len()) * 48,
            &|out| maps::virtual_alias(config, accounts, out),
        ),
        file(
            paths::VIRTUAL_MAILBOX,
            Kind::PostfixMap,
            "postfix virtual_mailbox_maps: the mailbox addresses.",
            addresses * 40,
            &|out| maps::virtual_mailbox(config, accounts, out),
        ),
        file(
            paths::SENDER_LOGIN,
            Kind::PostfixMap,
            "postfix smtpd_sender_login_maps: which logins may send as an address.",
            (addresses + accounts.aliases.len()) * 40,
            &|out| maps::sender_login(config, accounts, out),
        ),
    ]
}

/// Puts the generated files in the order that loses no mail while they change one
/// by one. When a mailbox is added, dovecot must know it before postfix accepts mail
/// for it: passwd-file first. When one is removed, postfix must stop accepting mail
/// for it before LMTP would refuse that mail (a bounce to a possibly forged sender):
/// maps first. `removes_a_login` says which it is (see [`removes_a_login`]).
pub(crate) fn in_safe_order(mut files: Vec<File>, removes_a_login: bool) -> Vec<File> {
    // Stable sort: the maps keep their order among themselves.
    files.sort_by_key(|f| (f.kind == Kind::PasswdFile) == removes_a_login);
    files
}

/// Whether the passwd-file now in place (`previous`) has a login that `accounts`
/// no longer has. Read a line at a time: with 10,000 mailboxes the file is a few
/// megabytes that need not be held while the new files are rendered.
pub(crate) fn removes_a_login(mut previous: impl std::io::BufRead, accounts: &Accounts) -> bool {
    let mut line = Vec::new();
    loop {
        line.clear();
        match previous.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        let text = line.trim_ascii();
        if text.is_empty() || text.starts_with(b"#") {
            continue;
        }
        // The login is the first field; one that is not text is no mailbox's.
        let login = text.split(|&c| c == b':').next().unwrap_or_default();
        let known = std::str::from_utf8(login).is_ok_and(|l| accounts.mailboxes.contains_key(l));
        if !known {
            return true;
        }
    }
}

/// The whole mail host's postfix and dovecot configuration.
///
/// `config_file` is named in the files' headers, so a reader knows where they came from.
/// How many LMTP deliveries postfix runs at once into dovecot, and how many dovecot
/// takes at once for one mailbox: the same number, rendered into both. postfix
/// counts per destination, and all local mail has one (dovecot's LMTP socket), so a
/// burst to one mailbox can use all of them; with dovecot's own per-user limit
/// lower (2.4: 10) the rest were deferred with "451 4.3.0 Too many concurrent
/// deliveries for user" and waited for postfix's next queue run, minutes later.
/// 20 is postfix's default_destination_concurrency_limit.
pub(crate) const LMTP_CONCURRENCY: u32 = 20;

pub(crate) fn host_config(config: &Config, map_type: MapType, config_file: &str) -> Vec<File> {
    let mut files = vec![
        File {
            path: paths::MAIN_CF.into(),
            content: postfix_conf::main_cf(config, map_type, config_file),
            kind: Kind::Config,
        },
        File {
            path: paths::MASTER_CF.into(),
            content: postfix_conf::master_cf(config_file),
            kind: Kind::Config,
        },
        File {
            path: paths::DOVECOT_CONF.into(),
            content: dovecot_conf::render(config, config_file),
            kind: Kind::Config,
        },
        File {
            path: paths::RSPAMD_DKIM_SIGNING.into(),
            content: rspamd_conf::dkim_signing(config, config_file),
            kind: Kind::Config,
        },
        File {
            path: paths::RSPAMD_SETTINGS.into(),
            content: rspamd_conf::settings(config_file),
            kind: Kind::Config,
        },
    ];
    for (path, content) in rspamd_conf::inbound(config, config_file) {
        files.push(File {
            path: path.into(),
            content,
            kind: Kind::Config,
        });
    }
    files.push(File {
        path: paths::RSPAMD_RESOLVER.into(),
        content: resolver::rspamd_options(config, config_file),
        kind: Kind::Config,
    });
    if let Some(content) = resolver::unbound(config, config_file) {
        files.push(File {
            path: paths::UNBOUND.into(),
            content,
            kind: Kind::Config,
        });
    }
    for (path, content, kind) in dovecot_conf::sieve(config, config_file) {
        files.push(File {
            path: path.into(),
            content,
            kind,
        });
    }
    if let Some(content) = rspamd_conf::worker_proxy(config, config_file) {
        files.push(File {
            path: paths::RSPAMD_WORKER_PROXY.into(),
            content,
            kind: Kind::Config,
        });
    }
    files
}
