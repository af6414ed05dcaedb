//! dovecot.conf for the whole mail host (from templates/), for dovecot 2.4 or 2.3.

use super::template::fill;
use crate::config::{Config, DovecotVersion};

const DOVECOT_2_4: &str = include_str!("templates/dovecot-2.4.conf");
const DOVECOT_2_3: &str = include_str!("templates/dovecot-2.3.conf");

pub fn render(config: &Config, config_file: &str) -> String {
    let template = match config.dovecot.version {
        DovecotVersion::V2_4 => DOVECOT_2_4,
        DovecotVersion::V2_3 => DOVECOT_2_3,
    };
    let dc = &config.dovecot;
    fill(
        template,
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
            ("AUTH_POLICY", auth_policy(config)),
            ("LMTP_CONCURRENCY", super::LMTP_CONCURRENCY.to_string()),
        ],
    )
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
