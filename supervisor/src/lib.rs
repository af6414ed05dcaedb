//! postmaster: a postfix + dovecot mail host that runs itself.
//!
//! The crate is a pure core with effects at its edges:
//!
//! - [`config`]: the configuration file, read into a validated [`config::Config`].
//! - [`accounts`]: the accounts file (mailboxes, aliases, catch-alls), validated.
//! - [`address`], [`password`]: the small value types both are made of.
//! - [`diag`], [`tomlwalk`]: `file:line:column` diagnostics, all at once.
//! - [`render`]: pure functions from config + accounts to file contents (postfix
//!   maps and configuration, dovecot passwd-file and configuration).
//! - [`apply`]: the effects: atomic writes, `postmap`, ownership and modes.
//! - [`cli`]: the `postmaster` command line.

pub mod accounts;
pub mod address;
pub mod apply;
pub mod cli;
pub mod config;
pub mod diag;
pub mod password;
pub mod render;
pub mod tomlwalk;
