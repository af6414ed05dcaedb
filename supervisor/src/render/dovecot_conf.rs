//! dovecot.conf for the whole mail host.

use crate::config::Config;

pub fn render(_config: &Config) -> String {
    String::new()
}
