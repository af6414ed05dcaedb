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

/// The accounts of a file in the form nearly every one has, read line by line
/// without holding its text (see [`fast`]); `None` for a file [`parse`] must read
/// whole, and when reading fails.
pub(crate) fn read_plain(file: &mut dyn std::io::BufRead, policy: &Policy) -> Option<Accounts> {
    fast::parse(file, policy)
}
pub(crate) use table::{Aliases, TargetRef};

use crate::address::Address;
use crate::password::PasswordHash;

/// A validated accounts file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accounts {
    /// By name; the name is the login and the local part of its addresses.
    pub(crate) mailboxes: Mailboxes,
    /// By address: every alias is concrete here (a bare `postmaster` key has become
    /// one alias per hosted domain).
    pub(crate) aliases: Aliases,
    /// By domain: where mail to an address of that domain that nothing else
    /// matches goes.
    pub(crate) catch_all: BTreeMap<String, Vec<Target>>,
}

/// The mailboxes, sorted by name, each name once: a vector looked up by binary
/// search rather than a map keyed by a second copy of each name (with 10,000
/// mailboxes the map's nodes and copies were about 1.5 MB of an edit's peak).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Mailboxes {
    sorted: Vec<Mailbox>,
}

impl Mailboxes {
    /// The mailboxes as read, in any order. Of two with the same name the one read
    /// last is kept, as a map's insert would; `true` says there were two.
    pub(crate) fn from_read(mut read: Vec<Mailbox>) -> (Mailboxes, bool) {
        // Stable: of equal names the last read stays last, and is kept below.
        read.sort_by(|a, b| a.name.cmp(&b.name));
        let before = read.len();
        read.reverse();
        read.dedup_by(|later, kept| later.name == kept.name);
        read.reverse();
        let twice = read.len() != before;
        (Mailboxes { sorted: read }, twice)
    }

    /// The mailboxes by name, to add more to and sort again.
    pub(crate) fn into_vec(self) -> Vec<Mailbox> {
        self.sorted
    }

    pub(crate) fn len(&self) -> usize {
        self.sorted.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Mailbox> {
        self.sorted
            .binary_search_by(|m| m.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.sorted[i])
    }

    pub(crate) fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The names, in order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.sorted.iter().map(|m| m.name.as_str())
    }

    /// The mailboxes, by name.
    pub(crate) fn values(&self) -> std::slice::Iter<'_, Mailbox> {
        self.sorted.iter()
    }

    /// Each name with its mailbox, by name.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &Mailbox)> {
        self.sorted.iter().map(|m| (m.name.as_str(), m))
    }
}

impl std::ops::Index<&str> for Mailboxes {
    type Output = Mailbox;

    fn index(&self, name: &str) -> &Mailbox {
        self.get(name)
            .unwrap_or_else(|| panic!("no mailbox `{name}`"))
    }
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
