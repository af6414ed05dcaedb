//! The one way from the files a person edits to what the mail host reads, shared by
//! `postmaster apply` and the daemon: read and validate the accounts file, render,
//! and write the generated files in an order that is safe at every moment. The
//! certificate's way is [`crate::certificate`]'s [`decide`](crate::certificate::decide).
//!
//! What the host offers is probed once, here, and travels with the configuration
//! ([`Resolved`]): the rest of the program never runs `postconf` itself.

use std::path::Path;
use std::process::Command;

use crate::accounts::{self, Accounts};
use crate::apply::{self, ApplyError, Report};
use crate::config::{Config, MapType};
use crate::diag::Invalid;
use crate::render;
use crate::tomlwalk;

/// The validated configuration together with what this host offers.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub config: Config,
    /// The postfix lookup table type the maps are compiled to.
    pub map_type: MapType,
}

impl Resolved {
    /// Probes the host (`postconf -m`) for what the configuration leaves open.
    pub fn probe(config: Config) -> Resolved {
        let map_type = config.postfix.map_type.unwrap_or_else(offered_map_type);
        Resolved { config, map_type }
    }
}

/// lmdb where this postfix supports it, else hash.
fn offered_map_type() -> MapType {
    match Command::new("postconf").arg("-m").output() {
        Ok(out) if out.status.success() => {
            map_type_from_postconf(&String::from_utf8_lossy(&out.stdout))
        }
        // No postfix here (rendering on another machine): assume a current one.
        _ => MapType::Lmdb,
    }
}

/// The map type to use, from what `postconf -m` lists.
fn map_type_from_postconf(listed: &str) -> MapType {
    if listed.lines().any(|l| l.trim() == "lmdb") {
        MapType::Lmdb
    } else {
        MapType::Hash
    }
}

/// Reads the accounts file (`file:line:column` diagnostics when it is wrong).
pub fn read_accounts(config: &Config) -> Result<Vec<u8>, Invalid> {
    let path = &config.accounts_file;
    std::fs::read(path).map_err(|e| {
        Invalid(vec![crate::diag::whole_file(
            path,
            format!("cannot read the accounts file: {e}"),
            "create it, or set accounts_file in the configuration",
        )])
    })
}

/// Validates the accounts file's bytes against the configuration.
pub fn parse_accounts(config: &Config, path: &Path, bytes: Vec<u8>) -> Result<Accounts, Invalid> {
    let source = tomlwalk::decode(path, bytes).map_err(|d| Invalid(vec![d]))?;
    accounts::parse(&source, &config.accounts_policy())
}

/// Reads and validates the accounts file.
pub fn load_accounts(config: &Config) -> Result<Accounts, Invalid> {
    parse_accounts(config, &config.accounts_file, read_accounts(config)?)
}

/// Renders `accounts` and writes the generated files (maps compiled, passwd-file
/// readable by dovecot), in the order that never lets a login or a delivery see a
/// half-applied state (see [`render::in_safe_order`]).
pub fn apply_accounts(resolved: &Resolved, accounts: &Accounts) -> Result<Report, ApplyError> {
    let config = &resolved.config;
    let previous =
        std::fs::read_to_string(config.generated_dir.join(render::paths::PASSWD_FILE)).ok();
    let files = render::in_safe_order(
        render::generated(config, accounts),
        previous.as_deref(),
        accounts,
    );
    let options = apply::Options {
        compile_maps: Some(resolved.map_type),
        passwd_group: Some("dovecot".into()),
        postmap: "postmap".into(),
    };
    apply::apply(&config.generated_dir, &files, &options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lmdb_is_used_where_postfix_offers_it() {
        assert_eq!(
            map_type_from_postconf("btree\ncidr\nhash\nlmdb\npcre\n"),
            MapType::Lmdb
        );
        assert_eq!(
            map_type_from_postconf("btree\ncidr\nhash\npcre\n"),
            MapType::Hash
        );
        // A name that merely contains lmdb is not lmdb.
        assert_eq!(map_type_from_postconf("hash\nlmdbx\n"), MapType::Hash);
    }
}
