//! postfix lookup tables (map sources; `postmap` compiles them).

use std::fmt::{self, Write};
use std::io;

use crate::accounts::{Accounts, SendAs, Target, TargetRef};
use crate::config::Config;

/// The address a mailbox target is written as: its address in the primary domain.
/// Every mailbox address maps to itself, so this ends postfix's alias expansion.
struct TargetAddress<'a>(&'a Config, TargetRef<'a>);

impl fmt::Display for TargetAddress<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            TargetRef::Mailbox(name) => write!(f, "{name}@{}", self.0.domains[0]),
            TargetRef::Alias(a) | TargetRef::External(a) => write!(f, "{a}"),
        }
    }
}

/// Targets as a map's value: `a@example.org, b@example.org`.
struct Targets<'a, I>(&'a Config, I);

impl<'a, I: Iterator<Item = TargetRef<'a>> + Clone> fmt::Display for Targets<'a, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.1.clone().enumerate() {
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
    mut row: impl FnMut(fmt::Arguments<'_>, fmt::Arguments<'_>) -> io::Result<()>,
) -> io::Result<()> {
    for name in accounts.mailboxes.keys() {
        for domain in &config.domains {
            row(
                format_args!("{name}@{domain}"),
                format_args!("{name}@{domain}"),
            )?;
        }
    }
    for (address, targets) in accounts.aliases.iter() {
        row(
            format_args!("{address}"),
            format_args!("{}", Targets(config, targets.iter())),
        )?;
    }
    for (domain, targets) in &accounts.catch_all {
        row(
            format_args!("@{domain}"),
            format_args!("{}", Targets(config, targets.iter().map(Target::as_ref))),
        )?;
    }
    Ok(())
}

/// The virtual_alias_maps entries, in lookup-relevant order (see
/// [`each_virtual_alias`]), for the tests to read.
#[cfg(test)]
pub(crate) fn virtual_alias_entries(config: &Config, accounts: &Accounts) -> Vec<(String, String)> {
    let mut out = Vec::new();
    each_virtual_alias(config, accounts, |key, value| {
        out.push((key.to_string(), value.to_string()));
        Ok(())
    })
    .expect("collecting in memory");
    out
}

/// Writes the virtual_alias_maps source to `out`.
pub(crate) fn virtual_alias(
    config: &Config,
    accounts: &Accounts,
    out: &mut dyn io::Write,
) -> io::Result<()> {
    each_virtual_alias(config, accounts, |key, value| row(out, key, value))
}

/// Every mailbox address: the recipients postfix delivers to dovecot over LMTP.
/// (The value is unused with LMTP delivery but must be present.) Written to `out`.
pub(crate) fn virtual_mailbox(
    config: &Config,
    accounts: &Accounts,
    out: &mut dyn io::Write,
) -> io::Result<()> {
    for name in accounts.mailboxes.keys() {
        for domain in &config.domains {
            row(
                out,
                format_args!("{name}@{domain}"),
                format_args!("{name}/"),
            )?;
        }
    }
    Ok(())
}

/// Which logins own each sender address: a mailbox owns its addresses, every alias
/// that delivers to it alone, and what its `send_as` grants. Sorted by address,
/// then login, without repeats: the order of the map.
///
/// Kept as one text of every address and a sorted list of rows into it: with
/// 100,000 aliases a map of sets took 110,000 strings and as many B-tree nodes
/// for sets of one login; this takes two allocations (about 5 MB).
pub(crate) struct SenderOwners<'a> {
    /// Every address, one after the other.
    text: String,
    /// Where an address is in `text`, and a login that owns it.
    rows: Vec<(usize, usize, &'a str)>,
}

impl<'a> SenderOwners<'a> {
    fn own(&mut self, address: fmt::Arguments<'_>, login: &'a str) {
        let start = self.text.len();
        self.text.write_fmt(address).expect("writing to a String");
        self.rows.push((start, self.text.len(), login));
    }

    /// Each address with the logins that own it, in order.
    pub(crate) fn each(&self, mut f: impl FnMut(&str, &[(usize, usize, &'a str)])) {
        for group in self
            .rows
            .chunk_by(|a, b| self.text[a.0..a.1] == self.text[b.0..b.1])
        {
            f(&self.text[group[0].0..group[0].1], group);
        }
    }

    /// The logins that own `address`, for the tests to read.
    #[cfg(test)]
    pub(crate) fn get(&self, address: &str) -> Option<Vec<&'a str>> {
        let mut found = None;
        self.each(|a, rows| {
            if a == address {
                found = Some(rows.iter().map(|r| r.2).collect());
            }
        });
        found
    }
}

pub(crate) fn sender_owners<'a>(config: &Config, accounts: &'a Accounts) -> SenderOwners<'a> {
    let mut owners = SenderOwners {
        text: String::new(),
        rows: Vec::new(),
    };
    for (name, mailbox) in &accounts.mailboxes {
        for domain in &config.domains {
            owners.own(format_args!("{name}@{domain}"), name);
        }
        for grant in &mailbox.send_as {
            match grant {
                SendAs::Address(a) => owners.own(format_args!("{a}"), name),
                SendAs::Domain(d) => owners.own(format_args!("@{d}"), name),
            }
        }
    }
    for (address, targets) in accounts.aliases.iter() {
        // Nearly every alias delivers to one mailbox: that one owns it, without
        // expanding (two allocations each, for 100,000 aliases).
        if let Some(TargetRef::Mailbox(only)) = targets.only() {
            owners.own(format_args!("{address}"), only);
            continue;
        }
        let (mailboxes, external) = accounts.expand(targets.iter());
        if let (false, [only]) = (external, mailboxes.iter().collect::<Vec<_>>().as_slice()) {
            owners.own(format_args!("{address}"), only);
        }
    }
    let SenderOwners { text, rows } = &mut owners;
    let key = |r: &(usize, usize, &'a str)| (&text[r.0..r.1], r.2);
    rows.sort_unstable_by(|a, b| key(a).cmp(&key(b)));
    rows.dedup_by(|a, b| key(&*a) == key(&*b));
    owners
}

/// Writes the smtpd_sender_login_maps source to `out`.
pub(crate) fn sender_login(
    config: &Config,
    accounts: &Accounts,
    out: &mut dyn io::Write,
) -> io::Result<()> {
    let mut result = Ok(());
    sender_owners(config, accounts).each(|address, rows| {
        if result.is_ok() {
            let logins = LoginList(rows);
            result = row(out, format_args!("{address}"), format_args!("{logins}"));
        }
    });
    result
}

/// The logins of one address as a map's value: `anna, thomas`.
struct LoginList<'r, 'a>(&'r [(usize, usize, &'a str)]);

impl fmt::Display for LoginList<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, row) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(row.2)?;
        }
        Ok(())
    }
}

/// One line of a map source: key, tab, value.
fn row(
    out: &mut dyn io::Write,
    key: fmt::Arguments<'_>,
    value: fmt::Arguments<'_>,
) -> io::Result<()> {
    writeln!(out, "{key}\t{value}")
}
