//! From the accounts file's text to [`Accounts`], reporting every problem at once.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use super::{Accounts, Mailbox, SendAs, Target};
use crate::address::{Address, check_domain, check_local_part};
use crate::diag::{Diagnostics, Invalid, Source};
use crate::password::{self, PasswordHash, Scheme};
use crate::tomlwalk::{self, key_str};

/// What the accounts file is checked against: it comes from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// The hosted domains; the first is the primary one.
    pub(crate) domains: Vec<String>,
    /// Accept `{PLAIN}` passwords. Only for test setups; off by default.
    pub(crate) allow_plain_passwords: bool,
}

const ROOT_KEYS: &[&str] = &["mailboxes", "aliases", "catch_all"];
const MAILBOX_KEYS: &[&str] = &["password", "disabled", "quota", "send_as"];

/// Parses and validates an accounts file.
///
/// A file in the plain form postmaster's own edits and most people write (one
/// `[mailboxes.NAME]` table each, `[aliases]`, `[catch_all]`, one `key = value` a
/// line) is read line by line ([`super::fast`]) without building a TOML tree of the
/// whole file: with 100,000 aliases that tree took about 35 MiB and 200 ms of every
/// edit (`./bench`'s scale part). Anything else, and every file with a mistake,
/// goes the whole-file way, so what a person reads about a mistake never depends on
/// which way was taken.
pub(crate) fn parse(source: &Source, policy: &Policy) -> Result<Accounts, Invalid> {
    match super::fast::parse(source, policy) {
        Some(accounts) => Ok(accounts),
        None => parse_whole(source, policy),
    }
}

/// Parses and validates an accounts file through a TOML tree of the whole file:
/// every file, whatever its form, with every problem it has.
pub(crate) fn parse_whole(source: &Source, policy: &Policy) -> Result<Accounts, Invalid> {
    let mut d = Diagnostics::new(source);
    let accounts = parse_into(source, policy, &mut d);
    match accounts {
        Some(a) if d.is_empty() => Ok(a),
        _ => Err(Invalid(d.into_sorted())),
    }
}

/// An alias's or catch-all's targets as written, kept with the key's span until
/// every alias address is known and they can be resolved.
struct RawTargets {
    key_span: Range<usize>,
    /// Where its targets are in [`Builder`]'s list of all of them: one list, not a
    /// vector per alias (100,000 of them).
    targets: Range<usize>,
}

/// An alias's or catch-all's targets as its value gives them, each with its span:
/// one string (nearly always, and then without a vector of its own), or a list.
pub(super) enum Written<'a> {
    One(Range<usize>, &'a str),
    List(Vec<(Range<usize>, &'a str)>),
}

/// What both ways of reading the file share once they have its entries: every
/// check that is not about TOML's syntax or types, and the resolution of targets.
pub(super) struct Builder<'a, 'p> {
    policy: &'p Policy,
    pub(super) mailboxes: BTreeMap<String, Mailbox>,
    /// The alias keys as written, and every concrete address with the key it came from.
    alias_keys: Vec<(&'a str, RawTargets)>,
    aliases: BTreeMap<Address, usize>,
    catch_all_raw: BTreeMap<String, RawTargets>,
    /// Every target as written, with its span.
    targets: Vec<(Range<usize>, &'a str)>,
}

impl<'a, 'p> Builder<'a, 'p> {
    pub(super) fn new(policy: &'p Policy) -> Self {
        Builder {
            policy,
            mailboxes: BTreeMap::new(),
            alias_keys: Vec::new(),
            aliases: BTreeMap::new(),
            catch_all_raw: BTreeMap::new(),
            targets: Vec::new(),
        }
    }

    /// One `[aliases]` entry; `targets` reads its value (and reports a wrong type).
    /// Every mailbox must be in `mailboxes` by now: an alias that is a mailbox's
    /// address is refused here.
    pub(super) fn alias(
        &mut self,
        d: &mut Diagnostics<'_>,
        name: &'a str,
        key_span: Range<usize>,
        targets: impl FnOnce(&mut Diagnostics<'_>) -> Option<Written<'a>>,
    ) {
        let Some(addresses) = alias_addresses(d, self.policy, name, key_span.clone()) else {
            return;
        };
        let Some(targets) = targets(d) else {
            return;
        };
        let index = self.alias_keys.len();
        let targets = self.push_targets(targets);
        self.alias_keys.push((
            name,
            RawTargets {
                key_span: key_span.clone(),
                targets,
            },
        ));
        for address in addresses {
            if self.mailboxes.contains_key(&address.local) {
                d.error(
                    key_span.clone(),
                    format!(
                        "`{address}` is the address of mailbox `{}` already",
                        address.local
                    ),
                    "remove this alias: mail to it reaches the mailbox without one",
                );
            } else {
                match self.aliases.entry(address) {
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        slot.insert(index);
                    }
                    std::collections::btree_map::Entry::Occupied(slot) => d.error(
                        key_span.clone(),
                        format!("`{}` is defined twice in [aliases]", slot.key()),
                        "keep one of the two (a bare name like `postmaster` stands for it in every hosted domain)",
                    ),
                }
            }
        }
    }

    /// One `[catch_all]` entry; `targets` reads its value (and reports a wrong type).
    pub(super) fn catch_all(
        &mut self,
        d: &mut Diagnostics<'_>,
        domain: &str,
        key_span: Range<usize>,
        targets: impl FnOnce(&mut Diagnostics<'_>) -> Option<Written<'a>>,
    ) {
        if let Err(why) = check_domain(domain) {
            d.error(
                key_span,
                format!("catch-all domain `{domain}` is not valid: {why}"),
                "",
            );
            return;
        }
        if !self.policy.domains.iter().any(|h| h == domain) {
            d.error(
                key_span,
                format!("`{domain}` is not a hosted domain"),
                format!(
                    "host it in the configuration (domains = […]) or remove it; hosted: {}",
                    self.policy.domains.join(", ")
                ),
            );
            return;
        }
        if let Some(targets) = targets(d) {
            let targets = self.push_targets(targets);
            self.catch_all_raw
                .insert(domain.to_string(), RawTargets { key_span, targets });
        }
    }

    fn push_targets(&mut self, targets: Written<'a>) -> Range<usize> {
        let from = self.targets.len();
        match targets {
            Written::One(span, text) => self.targets.push((span, text)),
            Written::List(list) => self.targets.extend(list),
        }
        from..self.targets.len()
    }

    /// Resolves every target once every alias address is known.
    pub(super) fn finish(self, d: &mut Diagnostics<'_>) -> Accounts {
        let Builder {
            policy,
            mailboxes,
            alias_keys,
            aliases,
            catch_all_raw,
            targets,
        } = self;
        // Targets can only be resolved once every alias address is known. They do not
        // depend on the alias's own domain, so each key is resolved (and reported) once.
        let resolver = Resolver {
            policy,
            mailboxes: &mailboxes,
            aliases: &aliases,
        };
        let mut resolved_keys: Vec<Option<Vec<Target>>> = alias_keys
            .iter()
            .map(|(name, raw)| resolver.resolve(d, raw, &targets, &|| format!("alias `{name}`")))
            .collect();
        let mut catch_all = BTreeMap::new();
        for (domain, raw) in &catch_all_raw {
            if let Some(t) =
                resolver.resolve(d, raw, &targets, &|| format!("catch-all of `{domain}`"))
            {
                catch_all.insert(domain.clone(), t);
            }
        }
        report_loops(d, &resolved_keys, &aliases, &alias_keys);
        drop((alias_keys, targets));
        // A bare name stands for one address per hosted domain, which share its
        // targets: the last of them takes them, the others get a copy.
        let mut uses = vec![0usize; resolved_keys.len()];
        for &i in aliases.values() {
            uses[i] += 1;
        }
        let resolved_aliases: BTreeMap<Address, Vec<Target>> = aliases
            .into_iter()
            .filter_map(|(address, i)| {
                uses[i] -= 1;
                let targets = if uses[i] == 0 {
                    resolved_keys[i].take()?
                } else {
                    resolved_keys[i].clone()?
                };
                Some((address, targets))
            })
            .collect();
        Accounts {
            mailboxes,
            aliases: resolved_aliases,
            catch_all,
        }
    }
}

fn parse_into(source: &Source, policy: &Policy, d: &mut Diagnostics<'_>) -> Option<Accounts> {
    let root = tomlwalk::parse(source, d)?;
    let root_span = root.span();
    let root = root.get_ref();
    if root.is_empty() {
        d.error(
            root_span.start..root_span.start,
            "the accounts file is empty",
            "define at least one mailbox: [mailboxes.NAME] with password = \"…\" from `postmaster hash-password`",
        );
        return None;
    }
    tomlwalk::check_keys(d, root, ROOT_KEYS, "the accounts file");

    let mut b = Builder::new(policy);
    if let Some((_, v)) = tomlwalk::get(root, "mailboxes")
        && let Some(table) = tomlwalk::as_table(d, v, "`mailboxes`")
    {
        for (key, value) in table.iter() {
            if let Some(m) = parse_mailbox(d, policy, key_str(key), key.span(), value) {
                b.mailboxes.insert(m.name.clone(), m);
            }
        }
    }
    if b.mailboxes.is_empty() && d.is_empty() {
        d.error(
            root_span.start..root_span.start,
            "the accounts file defines no mailbox",
            "define at least one: [mailboxes.NAME] with password = \"…\" from `postmaster hash-password`",
        );
    }

    if let Some((_, v)) = tomlwalk::get(root, "aliases")
        && let Some(table) = tomlwalk::as_table(d, v, "`aliases`")
    {
        for (key, value) in table.iter() {
            let name = key_str(key);
            b.alias(d, name, key.span(), |d| match value.get_ref() {
                // The common case, one target, without naming the alias for an error
                // that cannot happen: 100,000 aliases made 100,000 such names.
                toml::de::DeValue::String(s) => Some(Written::One(value.span(), s.as_ref())),
                _ => tomlwalk::as_str_or_list(d, value, &format!("alias `{name}`"))
                    .map(Written::List),
            });
        }
    }

    if let Some((_, v)) = tomlwalk::get(root, "catch_all")
        && let Some(table) = tomlwalk::as_table(d, v, "`catch_all`")
    {
        for (key, value) in table.iter() {
            let domain = key_str(key);
            b.catch_all(d, domain, key.span(), |d| {
                tomlwalk::as_str_or_list(d, value, &format!("catch-all of `{domain}`"))
                    .map(Written::List)
            });
        }
    }
    Some(b.finish(d))
}

fn parse_mailbox(
    d: &mut Diagnostics<'_>,
    policy: &Policy,
    name: &str,
    key_span: Range<usize>,
    value: &tomlwalk::Value<'_>,
) -> Option<Mailbox> {
    let name_ok = match check_local_part(name) {
        Ok(()) => true,
        Err(why) => {
            d.error(
                key_span.clone(),
                format!(
                    "mailbox name `{}` is not valid: {why}",
                    name.escape_default()
                ),
                "",
            );
            false
        }
    };
    let table = tomlwalk::as_table(d, value, &format!("mailbox `{name}`"))?;
    tomlwalk::check_keys(d, table, MAILBOX_KEYS, &format!("mailbox `{name}`"));

    let password = match tomlwalk::get(table, "password") {
        None => {
            d.error(
                key_span.clone(),
                format!("mailbox `{name}` has no password"),
                "add password = \"…\" with the line `postmaster hash-password` prints",
            );
            None
        }
        Some((_, v)) => tomlwalk::as_str(d, v, &format!("the password of `{name}`"))
            .and_then(|text| password_of(d, policy, name, v.span(), text)),
    };
    let disabled = match tomlwalk::get(table, "disabled") {
        Some((_, v)) => tomlwalk::as_bool(d, v, "`disabled`").unwrap_or(false),
        None => false,
    };
    let quota = tomlwalk::get(table, "quota").and_then(|(_, v)| parse_quota(d, v));
    let mut send_as = Vec::new();
    if let Some((_, v)) = tomlwalk::get(table, "send_as")
        && let Some(list) = tomlwalk::as_str_list(d, v, "`send_as`")
    {
        for (span, entry) in list {
            if let Some(s) = parse_send_as(d, policy, span, entry) {
                send_as.push(s);
            }
        }
    }
    Some(Mailbox {
        name: name.to_string(),
        password: password.filter(|_| name_ok)?,
        disabled,
        quota,
        send_as,
    })
}

/// A mailbox's password as written: a hash of a known scheme ({PLAIN} only when
/// the policy allows it).
pub(super) fn password_of(
    d: &mut Diagnostics<'_>,
    policy: &Policy,
    name: &str,
    span: Range<usize>,
    text: &str,
) -> Option<PasswordHash> {
    match password::parse(text) {
        Ok(p) if p.scheme == Scheme::Plain && !policy.allow_plain_passwords => {
            d.error(
                span,
                format!("mailbox `{name}` has a {{PLAIN}} password; only hashes are accepted"),
                "hash the password with `postmaster hash-password` and paste the line it prints",
            );
            None
        }
        Ok(p) => Some(p),
        Err(refused) => {
            d.error(
                span,
                format!("mailbox `{name}`: {}", refused.message),
                refused.hint,
            );
            None
        }
    }
}

/// `"2G"`, `"500M"`, `"1024K"`, `"1T"` (binary units, as dovecot reads them) or a
/// number of bytes.
fn parse_quota(d: &mut Diagnostics<'_>, v: &tomlwalk::Value<'_>) -> Option<u64> {
    if let toml::de::DeValue::Integer(_) = v.get_ref() {
        return tomlwalk::as_u64(d, v, "`quota`").filter(|n| {
            if *n == 0 {
                d.error(
                    v.span(),
                    "`quota` of 0 bytes leaves no room for any mail",
                    "remove the quota for no limit",
                );
            }
            *n > 0
        });
    }
    let text = tomlwalk::as_str(d, v, "`quota`")?;
    quota_of_text(d, v.span(), text)
}

/// A quota written as a string: `"2G"`, or a number of bytes.
pub(super) fn quota_of_text(
    d: &mut Diagnostics<'_>,
    span: Range<usize>,
    text: &str,
) -> Option<u64> {
    const HINT: &str = "write a size like \"500M\", \"2G\" or \"1T\", or a number of bytes";
    let (digits, unit) = text.trim().split_at(
        text.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.trim().len()),
    );
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "k" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        _ => {
            d.error(
                span.clone(),
                format!("`quota` has an unknown unit `{}`", unit.escape_default()),
                HINT,
            );
            return None;
        }
    };
    match digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
    {
        Some(0) => {
            d.error(
                span.clone(),
                "`quota` of 0 bytes leaves no room for any mail",
                "remove the quota for no limit",
            );
            None
        }
        Some(n) => Some(n),
        None => {
            d.error(
                span.clone(),
                format!("`quota` value `{}` is not a size", text.escape_default()),
                HINT,
            );
            None
        }
    }
}

pub(super) fn parse_send_as(
    d: &mut Diagnostics<'_>,
    policy: &Policy,
    span: Range<usize>,
    entry: &str,
) -> Option<SendAs> {
    let hosted_hint = || format!("hosted domains: {}", policy.domains.join(", "));
    if let Some(domain) = entry.strip_prefix('@') {
        if !policy.domains.iter().any(|h| h == domain) {
            d.error(
                span,
                format!("`send_as` entry `{entry}` is not in a hosted domain"),
                hosted_hint(),
            );
            return None;
        }
        return Some(SendAs::Domain(domain.to_string()));
    }
    match Address::parse(entry) {
        Err(why) => {
            d.error(span, format!("`send_as` entry `{}` is not a valid address: {why}", entry.escape_default()), "write it as local@domain, or @domain for every otherwise unowned address of a domain");
            None
        }
        Ok(a) if !policy.domains.contains(&a.domain) => {
            d.error(
                span,
                format!("`send_as` entry `{a}` is not in a hosted domain"),
                hosted_hint(),
            );
            None
        }
        Ok(a) => Some(SendAs::Address(a)),
    }
}

/// The concrete addresses an alias key stands for: `name@domain` itself, or a bare
/// `name` in every hosted domain.
fn alias_addresses(
    d: &mut Diagnostics<'_>,
    policy: &Policy,
    key: &str,
    span: Range<usize>,
) -> Option<Vec<Address>> {
    if key.contains('@') {
        match Address::parse(key) {
            Err(why) => {
                d.error(
                    span,
                    format!(
                        "alias `{}` is not a valid address: {why}",
                        key.escape_default()
                    ),
                    "",
                );
                None
            }
            Ok(a) if !policy.domains.contains(&a.domain) => {
                d.error(
                    span,
                    format!("alias `{a}` is not in a hosted domain"),
                    format!(
                        "only addresses of hosted domains can be aliases; hosted: {}",
                        policy.domains.join(", ")
                    ),
                );
                None
            }
            Ok(a) => Some(vec![a]),
        }
    } else {
        match check_local_part(key) {
            Err(why) => {
                d.error(
                    span,
                    format!("alias `{}` is not valid: {why}", key.escape_default()),
                    "",
                );
                None
            }
            Ok(()) => Some(
                policy
                    .domains
                    .iter()
                    .map(|domain| Address {
                        local: key.to_string(),
                        domain: domain.clone(),
                    })
                    .collect(),
            ),
        }
    }
}

struct Resolver<'r> {
    policy: &'r Policy,
    mailboxes: &'r BTreeMap<String, Mailbox>,
    aliases: &'r BTreeMap<Address, usize>,
}

impl Resolver<'_> {
    fn resolve(
        &self,
        d: &mut Diagnostics<'_>,
        raw: &RawTargets,
        all_targets: &[(Range<usize>, &str)],
        what: &dyn Fn() -> String,
    ) -> Option<Vec<Target>> {
        let targets = &all_targets[raw.targets.clone()];
        if targets.is_empty() {
            let what = what();
            d.error(
                raw.key_span.clone(),
                format!("{what} delivers to nothing"),
                "give it at least one mailbox or address",
            );
            return None;
        }
        let mut out: Vec<Target> = Vec::with_capacity(targets.len());
        let mut ok = true;
        for (span, text) in targets {
            match self.target(text) {
                Ok(t) if out.contains(&t) => {
                    let what = what();
                    d.error(
                        span.clone(),
                        format!("{what} lists `{text}` twice"),
                        "remove one",
                    );
                    ok = false;
                }
                Ok(t) => out.push(t),
                Err((message, hint)) => {
                    d.error(span.clone(), format!("{}: {message}", what()), hint);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn target(&self, text: &str) -> Result<Target, (String, String)> {
        if !text.contains('@') {
            return if self.mailboxes.contains_key(text) {
                Ok(Target::Mailbox(text.to_string()))
            } else {
                Err((
                    format!(
                        "there is no mailbox `{}` to deliver to",
                        text.escape_default()
                    ),
                    "define [mailboxes.NAME], or write a full address".into(),
                ))
            };
        }
        let a = Address::parse(text).map_err(|why| {
            (
                format!("`{}` is not a valid address: {why}", text.escape_default()),
                String::new(),
            )
        })?;
        if !self.policy.domains.contains(&a.domain) {
            return Ok(Target::External(a));
        }
        if self.mailboxes.contains_key(&a.local) {
            Ok(Target::Mailbox(a.local))
        } else if self.aliases.contains_key(&a) {
            Ok(Target::Alias(a))
        } else {
            Err((
                format!("`{a}` is neither a mailbox nor an alias, so mail would go nowhere"),
                "point it at a mailbox, or define that alias".into(),
            ))
        }
    }
}

/// Reports every alias that reaches itself, once per loop, at the key of the
/// loop's first member in file order.
fn report_loops(
    d: &mut Diagnostics<'_>,
    resolved_keys: &[Option<Vec<Target>>],
    aliases: &BTreeMap<Address, usize>,
    keys: &[(&str, RawTargets)],
) {
    let key_span = |a: &Address| keys[aliases[a]].1.key_span.clone();
    let resolved = Resolved {
        aliases,
        resolved_keys,
    };
    let mut reported: BTreeSet<Address> = BTreeSet::new();
    for (start, &key) in aliases {
        // Only an alias that delivers to another alias can be part of a loop; most
        // deliver to mailboxes, and need no search (nor a lookup of their own
        // address: 100,000 such lookups were 5% of `postmaster check`).
        let to_an_alias = resolved_keys[key]
            .iter()
            .flatten()
            .any(|t| matches!(t, Target::Alias(_)));
        if !to_an_alias || reported.contains(start) {
            continue;
        }
        if let Some(cycle) = find_cycle(&resolved, start) {
            let text: Vec<String> = cycle.iter().map(|a| a.to_string()).collect();
            let first = cycle
                .iter()
                .min_by_key(|a| key_span(a).start)
                .expect("a cycle has members");
            d.error(
                key_span(first),
                format!("alias loop: {} → {}", text.join(" → "), text[0]),
                "make one of these aliases deliver to a mailbox",
            );
            reported.extend(cycle);
        }
    }
}

/// The resolved targets of each alias address, while they are still kept by key.
struct Resolved<'r> {
    aliases: &'r BTreeMap<Address, usize>,
    resolved_keys: &'r [Option<Vec<Target>>],
}

impl Resolved<'_> {
    /// The targets of `address`: none when it is no alias or did not resolve.
    fn targets(&self, address: &Address) -> impl Iterator<Item = &Target> {
        self.aliases
            .get(address)
            .and_then(|&i| self.resolved_keys[i].as_ref())
            .into_iter()
            .flatten()
    }
}

/// A path of aliases from `start` back to `start`, if there is one.
fn find_cycle(resolved: &Resolved<'_>, start: &Address) -> Option<Vec<Address>> {
    fn visit(
        resolved: &Resolved<'_>,
        start: &Address,
        at: &Address,
        path: &mut Vec<Address>,
        seen: &mut BTreeSet<Address>,
    ) -> bool {
        for t in resolved.targets(at) {
            if let Target::Alias(next) = t {
                if next == start {
                    return true;
                }
                if seen.insert(next.clone()) {
                    path.push(next.clone());
                    if visit(resolved, start, next, path, seen) {
                        return true;
                    }
                    path.pop();
                }
            }
        }
        false
    }
    let mut path = vec![start.clone()];
    let mut seen = BTreeSet::new();
    visit(resolved, start, start, &mut path, &mut seen).then_some(path)
}
