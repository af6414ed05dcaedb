//! The DNS resolver of the checks of mail arriving on port 25 (`[inbound]
//! resolver`): rspamd's `local.d/options.inc` says whom rspamd asks, and with
//! "local" unbound's drop-in makes that resolver (loopback only, caching,
//! DNSSEC-validating with Debian's root trust anchor).
//!
//! The rest of the host keeps its own `/etc/resolv.conf`: on Debian that file
//! belongs to whatever manages the network (ifupdown, DHCP, systemd-resolved,
//! cloud-init), and pointing it at unbound would make a stopped unbound break
//! every lookup on the host (apt, ACME, postfix's deliveries) instead of only
//! deferring mail on port 25. The README says how to point it there by hand.

use super::template::fill;
use crate::config::{Config, Resolver};

const RSPAMD_LOCAL: &str = include_str!("templates/rspamd-resolver-local.inc");
const RSPAMD_SYSTEM: &str = include_str!("templates/rspamd-resolver-system.inc");
const UNBOUND: &str = include_str!("templates/unbound-postmaster.conf");

/// rspamd's `local.d/options.inc`: which resolver it asks. Rendered for both
/// choices, so that installing the rendered files replaces an earlier choice.
pub(crate) fn rspamd_options(config: &Config, config_file: &str) -> String {
    let template = match config.inbound.resolver {
        Resolver::Local => RSPAMD_LOCAL,
        Resolver::System => RSPAMD_SYSTEM,
    };
    fill(template, &[("CONFIG_FILE", config_file.to_string())])
}

/// unbound's drop-in (`unbound.conf.d/postmaster.conf`), when the checks use
/// the local resolver.
pub(crate) fn unbound(config: &Config, config_file: &str) -> Option<String> {
    (config.inbound.resolver == Resolver::Local)
        .then(|| fill(UNBOUND, &[("CONFIG_FILE", config_file.to_string())]))
}
