//! The accounts file: mailboxes, aliases and catch-alls, as a person writes them.
//!
//! ```toml
//! [mailboxes.thomas]
//! password = "{SHA512-CRYPT}$6$…"     # from `postmaster hash-password`
//! quota = "2G"                        # optional
//! send_as = ["@example.net"]          # optional: more addresses thomas may send as
//! # disabled = true                   # optional: no login; mail is still accepted
//!
//! [aliases]
//! postmaster = "thomas"               # in every hosted domain
//! "sales@example.org" = ["thomas", "anna@elsewhere.example"]
//!
//! [catch_all]
//! "example.org" = "thomas"            # only addresses nothing else matches
//! ```
//!
//! A mailbox's name is its login and its local part in every hosted domain. Parsing
//! ([`parse`]) turns the text into [`Accounts`], a value the rest of postmaster trusts:
//! every address is valid and hosted, every alias reaches something, nothing loops.

pub(crate) mod edit;
mod fast;
mod parse;
mod table;

use std::collections::{BTreeMap, BTreeSet};

pub(crate) use parse::{Policy, parse};
pub(crate) use table::{Aliases, TargetRef};

use crate::address::Address;
use crate::password::PasswordHash;

/// A validated accounts file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accounts {
    /// By name; the name is the login and the local part of its addresses.
    pub(crate) mailboxes: BTreeMap<String, Mailbox>,
    /// By address: every alias is concrete here (a bare `postmaster` key has become
    /// one alias per hosted domain).
    pub(crate) aliases: Aliases,
    /// By domain: where mail to an address of that domain that nothing else
    /// matches goes.
    pub(crate) catch_all: BTreeMap<String, Vec<Target>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mailbox {
    pub(crate) name: String,
    pub(crate) password: PasswordHash,
    /// No login (IMAP, POP3, SMTP AUTH); mail to it is still accepted and kept.
    pub(crate) disabled: bool,
    /// Storage quota in bytes.
    pub(crate) quota: Option<u64>,
    /// Sender addresses granted beyond the mailbox's own and its sole aliases.
    pub(crate) send_as: Vec<SendAs>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SendAs {
    Address(Address),
    /// Any address of the domain that no other login owns.
    Domain(String),
}

/// Where an alias or catch-all delivers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Target {
    Mailbox(String),
    /// Another alias of a hosted domain.
    Alias(Address),
    /// An address outside the hosted domains: the mail is forwarded there.
    External(Address),
}

impl Accounts {
    /// The mailboxes an alias finally delivers to, and whether it also forwards
    /// outside. Aliases are loop-free once parsed, so this terminates.
    pub(crate) fn expand<'a>(
        &'a self,
        targets: impl IntoIterator<Item = TargetRef<'a>>,
    ) -> (BTreeSet<&'a str>, bool) {
        let mut mailboxes = BTreeSet::new();
        let mut external = false;
        let mut stack: Vec<TargetRef<'a>> = targets.into_iter().collect();
        while let Some(t) = stack.pop() {
            match t {
                TargetRef::Mailbox(name) => {
                    mailboxes.insert(name);
                }
                TargetRef::External(_) => external = true,
                TargetRef::Alias(a) => {
                    stack.extend(self.aliases.get(a).into_iter().flat_map(|t| t.iter()))
                }
            }
        }
        (mailboxes, external)
    }
}

#[cfg(test)]
mod fast_tests;
#[cfg(test)]
mod tests;
