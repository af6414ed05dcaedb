//! postfix main.cf and master.cf for the whole mail host (from templates/).

use super::template::fill;
use crate::config::{Config, MapType};

const MAIN_CF: &str = include_str!("templates/main.cf");
const MASTER_CF: &str = include_str!("templates/master.cf");

pub(crate) fn main_cf(config: &Config, map_type: MapType, config_file: &str) -> String {
    let sender_restrictions = if config.postfix.reject_unknown_sender_domain {
        "reject_non_fqdn_sender, reject_unknown_sender_domain"
    } else {
        "reject_non_fqdn_sender"
    };
    let (milters, internal_classes) = if config.dkim.enabled {
        (config.dkim.milter.as_str(), "bounce")
    } else {
        ("", "")
    };
    let inbound_milters = if config.inbound.enabled {
        config.dkim.milter.as_str()
    } else {
        ""
    };
    fill(
        MAIN_CF,
        &[
            ("CONFIG_FILE", config_file.to_string()),
            ("HOST_NAME", config.host_name.clone()),
            ("PRIMARY_DOMAIN", config.domains[0].clone()),
            ("DOMAINS", config.domains.join(", ")),
            ("MAP_TYPE", map_type.name().to_string()),
            ("GENERATED_DIR", config.generated_dir.display().to_string()),
            (
                "MESSAGE_SIZE_LIMIT",
                config.postfix.message_size_limit.to_string(),
            ),
            ("TLS_PAIR", config.installed_pair().display().to_string()),
            ("SENDER_RESTRICTIONS", sender_restrictions.to_string()),
            ("SUBMISSION_MILTERS", milters.to_string()),
            ("INTERNAL_FILTER_CLASSES", internal_classes.to_string()),
            ("INBOUND_MILTERS", inbound_milters.to_string()),
            ("LMTP_CONCURRENCY", super::LMTP_CONCURRENCY.to_string()),
        ],
    )
}

pub(crate) fn master_cf(config_file: &str) -> String {
    fill(MASTER_CF, &[("CONFIG_FILE", config_file.to_string())])
}
