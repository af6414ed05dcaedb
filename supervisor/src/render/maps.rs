//! postfix lookup tables (map sources; `postmap` compiles them).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write};

use crate::accounts::{Accounts, SendAs, Target};
use crate::config::Config;

/// The address a mailbox target is written as: its address in the primary domain.
/// Every mailbox address maps to itself, so this ends postfix's alias expansion.
struct TargetAddress<'a>(&'a Config, &'a Target);

impl fmt::Display for TargetAddress<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Target::Mailbox(name) => write!(f, "{name}@{}", self.0.domains[0]),
            Target::Alias(a) | Target::External(a) => write!(f, "{a}"),
        }
    }
}

/// Targets as a map's value: `a@example.org, b@example.org`.
struct Targets<'a>(&'a Config, &'a [Target]);

impl fmt::Display for Targets<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.1.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", TargetAddress(self.0, t))?;
        }
        Ok(())
    }
}

/// Calls `row(key, value)` for each virtual_alias_maps entry, in lookup-relevant
/// order, without building a list of them first.
///
/// Each mailbox address maps to itself. postfix looks up the full address before
/// `@domain`, so these identity entries keep a catch-all from swallowing mail for
/// real mailboxes (the seed's `@domain thomas` captured everything).
fn each_virtual_alias(
    config: &Config,
    accounts: &Accounts,
    mut row: impl FnMut(fmt::Arguments<'_>, fmt::Arguments<'_>),
) {
    for name in accounts.mailboxes.keys() {
        for domain in &config.domains {
            row(
                format_args!("{name}@{domain}"),
                format_args!("{name}@{domain}"),
            );
        }
    }
    for (address, targets) in &accounts.aliases {
        row(
            format_args!("{address}"),
            format_args!("{}", Targets(config, targets)),
        );
    }
    for (domain, targets) in &accounts.catch_all {
        row(
            format_args!("@{domain}"),
            format_args!("{}", Targets(config, targets)),
        );
    }
}

/// The virtual_alias_maps entries, in lookup-relevant order (see
/// [`each_virtual_alias`]), for the tests to read.
#[cfg(test)]
pub(crate) fn virtual_alias_entries(config: &Config, accounts: &Accounts) -> Vec<(String, String)> {
    let mut out = Vec::new();
    each_virtual_alias(config, accounts, |key, value| {
        out.push((key.to_string(), value.to_string()));
    });
    out
}

/// Appends the virtual_alias_maps source to `out`.
pub(crate) fn virtual_alias(config: &Config, accounts: &Accounts, out: &mut String) {
    each_virtual_alias(config, accounts, |key, value| row(out, key, value));
}

/// Every mailbox address: the recipients postfix delivers to dovecot over LMTP.
/// (The value is unused with LMTP delivery but must be present.) Appended to `out`.
pub(crate) fn virtual_mailbox(config: &Config, accounts: &Accounts, out: &mut String) {
    for name in accounts.mailboxes.keys() {
        for domain in &config.domains {
            row(
                out,
                format_args!("{name}@{domain}"),
                format_args!("{name}/"),
            );
        }
    }
}

/// Which logins own each sender address: a mailbox owns its addresses, every alias
/// that delivers to it alone, and what its `send_as` grants.
pub(crate) fn sender_owners(
    config: &Config,
    accounts: &Accounts,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut owners: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut own = |address: String, login: &str| {
        owners.entry(address).or_default().insert(login.to_string());
    };
    for (name, mailbox) in &accounts.mailboxes {
        for domain in &config.domains {
            own(format!("{name}@{domain}"), name);
        }
        for grant in &mailbox.send_as {
            match grant {
                SendAs::Address(a) => own(a.to_string(), name),
                SendAs::Domain(d) => own(format!("@{d}"), name),
            }
        }
    }
    for (address, targets) in &accounts.aliases {
        let (mailboxes, external) = accounts.expand(targets);
        if let (false, [only]) = (external, mailboxes.iter().collect::<Vec<_>>().as_slice()) {
            own(address.to_string(), only);
        }
    }
    owners
}

/// Appends the smtpd_sender_login_maps source to `out`.
pub(crate) fn sender_login(config: &Config, accounts: &Accounts, out: &mut String) {
    for (address, logins) in sender_owners(config, accounts) {
        let mut value = String::new();
        for (i, login) in logins.iter().enumerate() {
            if i > 0 {
                value.push_str(", ");
            }
            value.push_str(login);
        }
        row(out, format_args!("{address}"), format_args!("{value}"));
    }
}

/// One line of a map source: key, tab, value.
fn row(out: &mut String, key: fmt::Arguments<'_>, value: fmt::Arguments<'_>) {
    writeln!(out, "{key}\t{value}").expect("writing to a String");
}
