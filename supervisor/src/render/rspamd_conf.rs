//! rspamd's `local.d/dkim_signing.conf` (from templates/): the signing policy. The
//! table of which key signs which domain changes at run time and is the daemon's
//! ([`crate::dkim::store`]); this file includes it.

use super::template::fill;
use crate::config::Config;
use crate::dkim::store::RSPAMD_DOMAINS;

const DKIM_SIGNING: &str = include_str!("templates/rspamd-dkim_signing.conf");
const SETTINGS: &str = include_str!("templates/rspamd-settings.conf");

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
