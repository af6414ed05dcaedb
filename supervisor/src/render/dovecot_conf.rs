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
        ],
    )
}
