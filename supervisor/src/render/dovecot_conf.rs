//! dovecot.conf for the whole mail host (from templates/), for dovecot 2.4 or 2.3,
//! and the Sieve scripts and programs it names: Junk filing and learning.

use super::installed::{CONTROLLER_SOCKET, RSPAMC, SIEVE_DIR, SIEVE_PIPE_DIR};
use super::template::fill;
use super::{Kind, paths};
use crate::config::{Config, DovecotVersion};

const DOVECOT_2_4: &str = include_str!("templates/dovecot-2.4.conf");
const DOVECOT_2_3: &str = include_str!("templates/dovecot-2.3.conf");
const LEARNING_2_4: &str = include_str!("templates/dovecot-2.4-learning.conf");
const LEARNING_2_3: &str = include_str!("templates/dovecot-2.3-learning.conf");
const SPAM_TO_JUNK: &str = include_str!("templates/sieve-spam-to-junk.sieve");
const LEARN_SPAM: &str = include_str!("templates/sieve-learn-spam.sieve");
const LEARN_HAM: &str = include_str!("templates/sieve-learn-ham.sieve");
const PIPE_LEARN: &str = include_str!("templates/sieve-pipe-learn.sh");

pub(crate) fn render(config: &Config, config_file: &str) -> String {
    let (template, learning, imap_sieve) = match (config.dovecot.version, config.inbound.learning) {
        (DovecotVersion::V2_4, true) => (DOVECOT_2_4, LEARNING_2_4, "yes"),
        (DovecotVersion::V2_4, false) => (DOVECOT_2_4, "", "no"),
        (DovecotVersion::V2_3, true) => (DOVECOT_2_3, LEARNING_2_3, " imap_sieve"),
        (DovecotVersion::V2_3, false) => (DOVECOT_2_3, "", ""),
    };
    let learning = if learning.is_empty() {
        "# Learning from Junk is off ([inbound] learning = false).\n".to_string()
    } else {
        learning.to_string()
    };
    let dc = &config.dovecot;
    // The learning block first: it has placeholders of its own.
    fill(
        &template.replace("@LEARNING@", &learning),
        &[
            ("CONFIG_FILE", config_file.to_string()),
            ("HOST_NAME", config.host_name.clone()),
            ("PRIMARY_DOMAIN", config.domains[0].clone()),
            ("TLS_PAIR", config.installed_pair().display().to_string()),
            ("GENERATED_DIR", config.generated_dir.display().to_string()),
            ("MAIL_ROOT", dc.mail_root.display().to_string()),
            ("VMAIL_USER", dc.vmail_user.clone()),
            ("VMAIL_UID", dc.vmail_uid.to_string()),
            ("VMAIL_GID", dc.vmail_gid.to_string()),
            ("IMAP_SIEVE", imap_sieve.to_string()),
            ("SIEVE_DIR", SIEVE_DIR.to_string()),
            ("SIEVE_PIPE_DIR", SIEVE_PIPE_DIR.to_string()),
            ("AUTH_POLICY", auth_policy(config)),
            ("LMTP_CONCURRENCY", super::LMTP_CONCURRENCY.to_string()),
            (
                "IMAP_BACKEND_PORT",
                crate::tls_front::IMAP_BACKEND_PORT.to_string(),
            ),
            (
                "POP3_BACKEND_PORT",
                crate::tls_front::POP3_BACKEND_PORT.to_string(),
            ),
            (
                "SIEVE_BACKEND_PORT",
                crate::tls_front::SIEVE_BACKEND_PORT.to_string(),
            ),
        ],
    )
}

/// The Sieve scripts dovecot.conf names, and the programs the learning scripts
/// pipe messages to. The learning ones only with `[inbound] learning`: they need
/// the pipe extension, which dovecot.conf enables only then (sievec refuses them
/// without it).
pub(crate) fn sieve(config: &Config, config_file: &str) -> Vec<(&'static str, String, Kind)> {
    let file = |template: &str, class: &str| {
        fill(
            template,
            &[
                ("CONFIG_FILE", config_file.to_string()),
                ("SIEVE_DIR", SIEVE_DIR.to_string()),
                ("SIEVE_PIPE_DIR", SIEVE_PIPE_DIR.to_string()),
                ("CONTROLLER_SOCKET", CONTROLLER_SOCKET.to_string()),
                ("RSPAMC", RSPAMC.to_string()),
                ("CLASS", class.to_string()),
            ],
        )
    };
    let mut files = vec![(
        paths::SIEVE_SPAM_TO_JUNK,
        file(SPAM_TO_JUNK, ""),
        Kind::Config,
    )];
    if config.inbound.learning {
        files.extend([
            (paths::SIEVE_LEARN_SPAM, file(LEARN_SPAM, ""), Kind::Config),
            (paths::SIEVE_LEARN_HAM, file(LEARN_HAM, ""), Kind::Config),
            (
                paths::SIEVE_PIPE_LEARN_SPAM,
                file(PIPE_LEARN, "spam"),
                Kind::Program,
            ),
            (
                paths::SIEVE_PIPE_LEARN_HAM,
                file(PIPE_LEARN, "ham"),
                Kind::Program,
            ),
        ]);
    }
    files
}

/// dovecot's auth asks postmaster before each login and reports how it ended
/// (crate::logins). Only the client's address and protocol are sent: no user
/// name, no password hash. While postmaster does not answer, logins are allowed
/// (reject_on_fail = no): the guard failing must not lock everyone out.
fn auth_policy(config: &Config) -> String {
    let logins = &config.logins;
    if logins.block_after_failures == 0 {
        return "# Off ([logins] block_after_failures = 0): failed logins block nobody.\n".into();
    }
    // 2.4: a string list, and 2.4's variable names.
    let (attributes, timeout) = match config.dovecot.version {
        DovecotVersion::V2_4 => (
            "auth_policy_request_attributes {\n  remote = %{remote_ip}\n  protocol = %{protocol}\n}\n",
            "",
        ),
        DovecotVersion::V2_3 => (
            "auth_policy_request_attributes = remote=%{rip} protocol=%s\n",
            "auth_policy_server_timeout_msecs = 2000\n",
        ),
    };
    format!(
        "# {max} failed logins from one address within {window} s block it for {block} s\n\
         # ([logins] in postmaster's configuration; `postmaster status` lists blocks,\n\
         # `postmaster unblock ADDRESS` lifts one).\n\
         auth_policy_server_url = http://{address}/\n\
         {attributes}\
         # Required by dovecot; used only for the password hash, which is not sent.\n\
         auth_policy_hash_nonce = postmaster-sends-no-password-hash\n\
         auth_policy_reject_on_fail = no\n\
         {timeout}",
        max = logins.block_after_failures,
        window = logins.failure_window_seconds,
        block = logins.block_seconds,
        address = logins.policy_address,
    )
}
