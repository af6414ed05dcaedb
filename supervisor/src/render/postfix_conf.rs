//! postfix main.cf and master.cf for the whole mail host.

use crate::config::{Config, MapType};

pub fn main_cf(_config: &Config, _map_type: MapType) -> String {
    String::new()
}

pub fn master_cf(_config: &Config) -> String {
    String::new()
}
