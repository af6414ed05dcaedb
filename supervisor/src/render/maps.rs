//! postfix lookup tables (map sources; `postmap` compiles them).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use crate::accounts::{Accounts, SendAs, Target};
use crate::config::Config;

/// The address a mailbox target is written as: its address in the primary domain.
/// Every mailbox address maps to itself, so this ends postfix's alias expansion.
fn target_address(config: &Config, target: &Target) -> String {
    match target {
        Target::Mailbox(name) => format!("{name}@{}", config.domains[0]),
        Target::Alias(a) | Target::External(a) => a.to_string(),
    }
}

/// The virtual_alias_maps entries, in lookup-relevant order.
///
/// Each mailbox address maps to itself. postfix looks up the full address before
/// `@domain`, so these identity entries keep a catch-all from swallowing mail for
/// real mailboxes (the seed's `@domain thomas` captured everything).
pub(crate) fn virtual_alias_entries(config: &Config, accounts: &Accounts) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in accounts.mailboxes.keys() {
        for domain in &config.domains {
            let a = format!("{name}@{domain}");
            out.push((a.clone(), a));
        }
    }
    for (address, targets) in &accounts.aliases {
        let t: Vec<String> = targets.iter().map(|t| target_address(config, t)).collect();
        out.push((address.to_string(), t.join(", ")));
    }
    for (domain, targets) in &accounts.catch_all {
        let t: Vec<String> = targets.iter().map(|t| target_address(config, t)).collect();
        out.push((format!("@{domain}"), t.join(", ")));
    }
    out
}

pub(crate) fn virtual_alias(config: &Config, accounts: &Accounts) -> String {
    table(virtual_alias_entries(config, accounts))
}

/// Every mailbox address: the recipients postfix delivers to dovecot over LMTP.
/// (The value is unused with LMTP delivery but must be present.)
pub(crate) fn virtual_mailbox(config: &Config, accounts: &Accounts) -> String {
    let mut rows = Vec::new();
    for name in accounts.mailboxes.keys() {
        for domain in &config.domains {
            rows.push((format!("{name}@{domain}"), format!("{name}/")));
        }
    }
    table(rows)
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

pub(crate) fn sender_login(config: &Config, accounts: &Accounts) -> String {
    table(
        sender_owners(config, accounts)
            .into_iter()
            .map(|(address, logins)| (address, logins.into_iter().collect::<Vec<_>>().join(", ")))
            .collect(),
    )
}

fn table(rows: Vec<(String, String)>) -> String {
    let mut out = String::new();
    for (key, value) in rows {
        writeln!(out, "{key}\t{value}").expect("writing to a String");
    }
    out
}
