//! rspamd's `local.d/dkim_signing.conf` (from templates/): the signing policy. The
//! table of which key signs which domain changes at run time and is the daemon's
//! ([`crate::dkim::store`]); this file includes it.

use super::template::fill;
use crate::config::Config;
use crate::dkim::store::RSPAMD_DOMAINS;

const DKIM_SIGNING: &str = include_str!("templates/rspamd-dkim_signing.conf");
const SETTINGS: &str = include_str!("templates/rspamd-settings.conf");
const WORKER_PROXY: &str = include_str!("templates/rspamd-worker-proxy.inc");

/// rspamd's `override.d/worker-proxy.inc`: its milter on the socket `[dkim]
/// milter` names, when that is a `unix:` socket (a path relative to postfix's
/// queue directory is taken from Debian's); `None` for an `inet:` milter, which
/// is left as rspamd has it.
pub fn worker_proxy(config: &Config, config_file: &str) -> Option<String> {
    let path = config.dkim.milter.strip_prefix("unix:")?;
    let socket = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{path}", crate::config::DEBIAN_QUEUE_DIRECTORY)
    };
    Some(fill(
        WORKER_PROXY,
        &[("CONFIG_FILE", config_file.to_string()), ("SOCKET", socket)],
    ))
}

/// rspamd's `local.d/settings.conf`: outgoing mail is signed, not scanned.
pub fn settings(config_file: &str) -> String {
    fill(SETTINGS, &[("CONFIG_FILE", config_file.to_string())])
}

pub fn dkim_signing(config: &Config, config_file: &str) -> String {
    fill(
        DKIM_SIGNING,
        &[
            ("CONFIG_FILE", config_file.to_string()),
            ("ENABLED", config.dkim.enabled.to_string()),
            ("HOST_NAME", config.host_name.clone()),
            (
                "RSPAMD_DOMAINS",
                config
                    .generated_dir
                    .join(RSPAMD_DOMAINS)
                    .display()
                    .to_string(),
            ),
        ],
    )
}
