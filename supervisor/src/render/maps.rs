//! postfix lookup tables (map sources; `postmap` compiles them).

use std::fmt::{self, Write};
use std::io;

use crate::accounts::{Accounts, Aliases, SendAs, Target, TargetRef};
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
/// A sorted list of 12-byte rows: with 100,000 aliases a map of sets took
/// 110,000 strings and as many B-tree nodes for sets of one login. An alias's
/// address is where the alias table has it; only the others are written out
/// here, and a login is the number of its mailbox.
pub(crate) struct SenderOwners<'a> {
    aliases: &'a Aliases,
    /// The addresses that are no alias's: the mailboxes' own and what `send_as`
    /// grants, one after the other.
    text: String,
    /// Every mailbox's name, in order: a login is an index into it.
    logins: Vec<&'a str>,
    rows: Vec<Owner>,
}

/// An address and a login that owns it.
#[derive(Clone, Copy)]
pub(crate) struct Owner {
    /// Where the address is: in the alias table's text, or in [`SenderOwners`]'s
    /// own.
    at: u32,
    len: u16,
    own_text: bool,
    login: u32,
}

impl<'a> SenderOwners<'a> {
    fn address(&self, row: &Owner) -> &str {
        if row.own_text {
            &self.text[row.at as usize..row.at as usize + row.len as usize]
        } else {
            self.aliases.text_at((row.at, row.len))
        }
    }

    /// Adds an address written here.
    fn own(&mut self, address: fmt::Arguments<'_>, login: u32) {
        let start = self.text.len();
        self.text.write_fmt(address).expect("writing to a String");
        self.rows.push(Owner {
            at: u32::try_from(start).expect("the addresses' text is under 4 GiB"),
            len: u16::try_from(self.text.len() - start).expect("an address is short"),
            own_text: true,
            login,
        });
    }

    /// The number of the mailbox `name`.
    fn login(&self, name: &str) -> u32 {
        let i = self
            .logins
            .binary_search(&name)
            .expect("an alias delivers to a mailbox of the accounts");
        u32::try_from(i).expect("fewer than 4 billion mailboxes")
    }

    /// Each address with the logins that own it, in order.
    pub(crate) fn each(&self, mut f: impl FnMut(&str, LoginList<'_, 'a>)) {
        for group in self
            .rows
            .chunk_by(|a, b| self.address(a) == self.address(b))
        {
            f(
                self.address(&group[0]),
                LoginList {
                    logins: &self.logins,
                    rows: group,
                },
            );
        }
    }

    /// The logins that own `address`, for the tests to read.
    #[cfg(test)]
    pub(crate) fn get(&self, address: &str) -> Option<Vec<&'a str>> {
        let mut found = None;
        self.each(|a, list| {
            if a == address {
                found = Some(
                    list.rows
                        .iter()
                        .map(|r| list.logins[r.login as usize])
                        .collect(),
                );
            }
        });
        found
    }
}

pub(crate) fn sender_owners<'a>(config: &Config, accounts: &'a Accounts) -> SenderOwners<'a> {
    let mailboxes = &accounts.mailboxes;
    let grants: usize = mailboxes.values().map(|m| m.send_as.len()).sum();
    // Sized once: a vector that doubles its way to a megabyte leaves the
    // smaller copies behind in the heap.
    let mut owners = SenderOwners {
        aliases: &accounts.aliases,
        text: String::new(),
        logins: mailboxes.keys().collect(),
        rows: Vec::with_capacity(
            mailboxes.len() * config.domains.len() + grants + accounts.aliases.len(),
        ),
    };
    for (login, (name, mailbox)) in mailboxes.iter().enumerate() {
        let login = u32::try_from(login).expect("fewer than 4 billion mailboxes");
        for domain in &config.domains {
            owners.own(format_args!("{name}@{domain}"), login);
        }
        for grant in &mailbox.send_as {
            match grant {
                SendAs::Address(a) => owners.own(format_args!("{a}"), login),
                SendAs::Domain(d) => owners.own(format_args!("@{d}"), login),
            }
        }
    }
    for (span, targets) in accounts.aliases.iter_spans() {
        // Nearly every alias delivers to one mailbox: that one owns it, without
        // expanding (two allocations each, for 100,000 aliases).
        let only = match targets.only() {
            Some(TargetRef::Mailbox(only)) => Some(only),
            _ => match accounts.expand(targets.iter()) {
                (mailboxes, false) if mailboxes.len() == 1 => mailboxes.first().copied(),
                _ => None,
            },
        };
        if let Some(only) = only {
            let login = owners.login(only);
            owners.rows.push(Owner {
                at: span.0,
                len: span.1,
                own_text: false,
                login,
            });
        }
    }
    let mut rows = std::mem::take(&mut owners.rows);
    // Logins are numbered in name order, so the numbers sort as the names do.
    rows.sort_unstable_by(|a, b| (owners.address(a), a.login).cmp(&(owners.address(b), b.login)));
    rows.dedup_by(|a, b| a.login == b.login && owners.address(a) == owners.address(b));
    owners.rows = rows;
    owners
}

/// Writes the smtpd_sender_login_maps source to `out`.
pub(crate) fn sender_login(
    config: &Config,
    accounts: &Accounts,
    out: &mut dyn io::Write,
) -> io::Result<()> {
    let mut result = Ok(());
    sender_owners(config, accounts).each(|address, logins| {
        if result.is_ok() {
            result = row(out, format_args!("{address}"), format_args!("{logins}"));
        }
    });
    result
}

/// The logins of one address as a map's value: `anna, thomas`.
pub(crate) struct LoginList<'r, 'a> {
    logins: &'r [&'a str],
    rows: &'r [Owner],
}

impl fmt::Display for LoginList<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, row) in self.rows.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(self.logins[row.login as usize])?;
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
