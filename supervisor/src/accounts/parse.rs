//! From the accounts file's text to [`Accounts`], reporting every problem at once.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use super::table::{self, Aliases, Row, Slot};
use super::{Accounts, Mailbox, Mailboxes, SendAs, Target};
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
    match super::fast::parse(&mut source.text.as_bytes(), policy) {
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

/// An alias's or catch-all's targets as its value gives them, each with its span:
/// one string (nearly always, and then without a vector of its own), or a list.
/// Borrowed from the text read; a copy is kept only for targets that wait to be
/// resolved, for the line-by-line path keeps no line once it is read.
pub(super) enum Written<'a> {
    One((Range<usize>, Cow<'a, str>)),
    List(Vec<(Range<usize>, Cow<'a, str>)>),
}

impl<'a> Written<'a> {
    pub(super) fn one(span: Range<usize>, text: &'a str) -> Self {
        Written::One((span, Cow::Borrowed(text)))
    }

    pub(super) fn list(list: Vec<(Range<usize>, &'a str)>) -> Self {
        Written::List(
            list.into_iter()
                .map(|(span, text)| (span, Cow::Borrowed(text)))
                .collect(),
        )
    }

    fn as_slice(&self) -> &[(Range<usize>, Cow<'a, str>)] {
        match self {
            Written::One(one) => std::slice::from_ref(one),
            Written::List(list) => list,
        }
    }

    fn into_owned(self) -> Written<'static> {
        let own =
            |(span, text): (Range<usize>, Cow<'a, str>)| (span, Cow::Owned(text.into_owned()));
        match self {
            Written::One(one) => Written::One(own(one)),
            Written::List(list) => Written::List(list.into_iter().map(own).collect()),
        }
    }
}

/// A catch-all's targets as written, kept with its key's span until every alias
/// address is known and they can be resolved.
struct RawTargets {
    key_span: Range<usize>,
    targets: Written<'static>,
}

/// One `[aliases]` key as read: 12 bytes, for there may be 100,000 of them.
struct Key {
    /// Where the key starts in the file: all a diagnostic keeps of its span.
    start: u32,
    /// Its targets ([`KeyTargets`]): where its slots are, or [`LATER`] or
    /// [`FAILED`] in `count`.
    at: u32,
    count: u32,
}

const LATER: u32 = u32::MAX;
const FAILED: u32 = u32::MAX - 1;

impl Key {
    fn new(span: &Range<usize>, targets: KeyTargets) -> Key {
        let mut key = Key {
            start: table::offset(span.start),
            at: 0,
            count: 0,
        };
        key.set(targets);
        key
    }

    /// Its span for a diagnostic, which is placed where the span starts.
    fn span(&self) -> Range<usize> {
        self.start as usize..self.start as usize
    }

    fn targets(&self) -> KeyTargets {
        match self.count {
            LATER => KeyTargets::Later,
            FAILED => KeyTargets::Failed,
            count => KeyTargets::Resolved { at: self.at, count },
        }
    }

    fn set(&mut self, targets: KeyTargets) {
        (self.at, self.count) = match targets {
            KeyTargets::Resolved { at, count } => (at, count),
            KeyTargets::Later => (0, LATER),
            KeyTargets::Failed => (0, FAILED),
        };
    }
}

/// What became of a key's targets.
#[derive(Clone, Copy)]
enum KeyTargets {
    /// Resolved as the key was read (a mailbox or an outside address each, nearly
    /// every alias): where its slots are in the table.
    Resolved { at: u32, count: u32 },
    /// To resolve once every alias address is known (it is in `later`).
    Later,
    /// Did not resolve; the reason is reported.
    Failed,
}

/// A key whose targets wait for every alias address to be known (it names an
/// alias, or something is wrong with it).
struct Later {
    key: usize,
    name: String,
    targets: Written<'static>,
}

/// What both ways of reading the file share once they have its entries: every
/// check that is not about TOML's syntax or types, and the resolution of targets.
pub(super) struct Builder<'p> {
    policy: &'p Policy,
    /// The mailboxes as read, until [`Builder::mailboxes_read`] sorts them into
    /// `mailboxes`.
    read: Vec<Mailbox>,
    pub(super) mailboxes: Mailboxes,
    /// Every alias key, in file order.
    keys: Vec<Key>,
    later: Vec<Later>,
    /// The aliases being filled in. Until [`Builder::finish`] sorts them, each row's
    /// `targets` is the index of its key, and a duplicate address is in it twice.
    table: Aliases,
    catch_all_raw: BTreeMap<String, RawTargets>,
}

impl<'p> Builder<'p> {
    pub(super) fn new(policy: &'p Policy) -> Self {
        Builder {
            policy,
            read: Vec::new(),
            mailboxes: Mailboxes::default(),
            keys: Vec::new(),
            later: Vec::new(),
            table: Aliases::default(),
            catch_all_raw: BTreeMap::new(),
        }
    }

    /// Room for `n` mailboxes, when the number to read is known or a close guess:
    /// a vector doubling its way there leaves its smaller copies in the heap.
    pub(super) fn expect_mailboxes(&mut self, n: usize) {
        self.read.reserve_exact(n);
    }

    /// One `[mailboxes.NAME]` table, checked.
    pub(super) fn mailbox(&mut self, m: Mailbox) {
        self.read.push(m);
    }

    /// Sorts the mailboxes read so far in with the others: once every one is read,
    /// before the first alias. `false` if a name was read twice.
    pub(super) fn mailboxes_read(&mut self) -> bool {
        if self.read.is_empty() {
            return true;
        }
        // Those read before first, so that of a name read twice the one read last
        // is kept, as Mailboxes::from_read says.
        let mut all = std::mem::take(&mut self.mailboxes).into_vec();
        all.extend(std::mem::take(&mut self.read));
        let twice;
        (self.mailboxes, twice) = Mailboxes::from_read(all);
        !twice
    }

    /// One `[aliases]` entry; `targets` reads its value (and reports a wrong type).
    /// Every mailbox must be in `mailboxes` by now: an alias that is a mailbox's
    /// address is refused here, and targets that are mailboxes are resolved here.
    pub(super) fn alias<'t>(
        &mut self,
        d: &mut Diagnostics<'_>,
        name: &str,
        key_span: Range<usize>,
        targets: impl FnOnce(&mut Diagnostics<'_>) -> Option<Written<'t>>,
    ) {
        debug_assert!(
            self.read.is_empty(),
            "an alias before every mailbox is read"
        );
        let Some(addresses) = alias_addresses(d, self.policy, name, key_span.clone()) else {
            return;
        };
        let Some(targets) = targets(d) else {
            return;
        };
        let key = self.keys.len();
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
                // A second row of the same address is found and reported once
                // they are sorted (`finish`).
                let (at, len) = self.table.push_text(&address.to_string());
                self.table.rows.push(Row {
                    at,
                    len,
                    local: address.local.len() as u8,
                    targets: table::offset(key),
                    count: 0,
                });
            }
        }
        let targets = match self.resolve_now(&targets) {
            Some(resolved) => resolved,
            None => {
                self.later.push(Later {
                    key,
                    name: name.to_string(),
                    targets: targets.into_owned(),
                });
                KeyTargets::Later
            }
        };
        self.keys.push(Key::new(&key_span, targets));
    }

    /// A key's targets resolved at once when each is a mailbox or an outside
    /// address, and none is listed twice: what [`Resolver::target`] makes of them,
    /// without a word to report. `None` leaves them for `finish`.
    fn resolve_now(&mut self, targets: &Written<'_>) -> Option<KeyTargets> {
        let list = targets.as_slice();
        if list.is_empty() {
            return None;
        }
        let (text_before, at) = (self.table.text.len(), self.table.slots.len());
        for (_, text) in list {
            let slot = match self.found_now(text) {
                Some(found) => Some(push_slot(&mut self.table, &found)),
                None => None,
            };
            let new = slot.filter(|slot| {
                let t = self.table.target(slot);
                !self.table.slots[at..]
                    .iter()
                    .any(|s| self.table.target(s) == t)
            });
            match new {
                Some(slot) => self.table.slots.push(slot),
                None => {
                    self.table.slots.truncate(at);
                    self.table.text.truncate(text_before);
                    return None;
                }
            }
        }
        Some(KeyTargets::Resolved {
            at: table::offset(at),
            count: table::offset(self.table.slots.len() - at),
        })
    }

    /// A target that needs no alias address to resolve: a mailbox or an outside
    /// address.
    fn found_now<'t>(&self, text: &'t str) -> Option<Found<'t>> {
        if !text.contains('@') {
            return self
                .mailboxes
                .contains_key(text)
                .then_some(Found::Mailbox(text));
        }
        let a = Address::parse(text).ok()?;
        if !self.policy.domains.contains(&a.domain) {
            return Some(Found::External(a));
        }
        let (local, _) = text.rsplit_once('@')?;
        self.mailboxes
            .contains_key(local)
            .then_some(Found::Mailbox(local))
    }

    /// One `[catch_all]` entry; `targets` reads its value (and reports a wrong type).
    pub(super) fn catch_all<'t>(
        &mut self,
        d: &mut Diagnostics<'_>,
        domain: &str,
        key_span: Range<usize>,
        targets: impl FnOnce(&mut Diagnostics<'_>) -> Option<Written<'t>>,
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
            self.catch_all_raw.insert(
                domain.to_string(),
                RawTargets {
                    key_span,
                    targets: targets.into_owned(),
                },
            );
        }
    }

    /// Sorts the aliases, reports an address defined twice, resolves the targets
    /// that waited for every alias address to be known, and reports loops.
    pub(super) fn finish(self, d: &mut Diagnostics<'_>) -> Accounts {
        debug_assert!(
            self.read.is_empty(),
            "accounts finished before every mailbox is read"
        );
        let Builder {
            policy,
            read: _,
            mailboxes,
            mut keys,
            later,
            mut table,
            catch_all_raw,
        } = self;
        let mut rows = std::mem::take(&mut table.rows);
        // By address, and the same address by key: the first in the file first.
        rows.sort_unstable_by(|a, b| table.cmp_rows(a, b));
        let mut twice = Vec::new();
        rows.dedup_by(|row, kept| {
            let same = table.row_addr(row) == table.row_addr(kept);
            if same {
                twice.push(*row);
            }
            same
        });
        // Reported in the order they were read: by key, then by hosted domain.
        let domain_index = |row: &Row| {
            let domain = table.row_addr(row).domain;
            policy.domains.iter().position(|d| d == domain)
        };
        twice.sort_by_key(|row| (row.targets, domain_index(row)));
        for row in &twice {
            d.error(
                keys[row.targets as usize].span(),
                format!("`{}` is defined twice in [aliases]", table.row_addr(row)),
                "keep one of the two (a bare name like `postmaster` stands for it in every hosted domain)",
            );
        }
        rows.shrink_to_fit();
        table.rows = rows;

        // Targets that name an alias can only be resolved now. They do not depend
        // on the alias's own domain, so each key is resolved (and reported) once.
        let resolver = Resolver {
            policy,
            mailboxes: &mailboxes,
            table: &table,
        };
        let resolved_later: Vec<Option<Vec<Found<'_>>>> = later
            .iter()
            .map(|l| {
                resolver.resolve(d, keys[l.key].span(), &l.targets, &|| {
                    format!("alias `{}`", l.name)
                })
            })
            .collect();
        let mut catch_all = BTreeMap::new();
        for (domain, raw) in &catch_all_raw {
            if let Some(found) = resolver.resolve(d, raw.key_span.clone(), &raw.targets, &|| {
                format!("catch-all of `{domain}`")
            }) {
                catch_all.insert(
                    domain.clone(),
                    found.into_iter().map(Found::target).collect(),
                );
            }
        }
        for (l, found) in later.iter().zip(resolved_later) {
            let targets = match found {
                Some(found) => {
                    let at = table.slots.len();
                    for f in &found {
                        let slot = push_slot(&mut table, f);
                        table.slots.push(slot);
                    }
                    KeyTargets::Resolved {
                        at: table::offset(at),
                        count: table::offset(table.slots.len() - at),
                    }
                }
                None => KeyTargets::Failed,
            };
            keys[l.key].set(targets);
        }
        report_loops(d, &table, &keys);
        // Each row gets its key's targets; the addresses of a bare name share them.
        for row in &mut table.rows {
            (row.targets, row.count) = match keys[row.targets as usize].targets() {
                KeyTargets::Resolved { at, count } => (at, count),
                // Reported: these accounts are refused.
                KeyTargets::Failed | KeyTargets::Later => (0, 0),
            };
        }
        table.text.shrink_to_fit();
        table.slots.shrink_to_fit();
        Accounts {
            mailboxes,
            aliases: table,
            catch_all,
        }
    }
}

/// The slot for a resolved target, its text added to the table's (an alias's is
/// its row number).
fn push_slot(table: &mut Aliases, found: &Found<'_>) -> Slot {
    match found {
        Found::Mailbox(name) => {
            let (at, len) = table.push_text(name);
            Slot {
                at,
                len,
                local: 0,
                kind: table::Kind::Mailbox,
            }
        }
        Found::Alias { row, .. } => Slot {
            at: table::offset(*row),
            len: 0,
            local: 0,
            kind: table::Kind::Alias,
        },
        Found::External(a) => {
            let (at, _) = table.push_text(&a.local);
            table.text.push('@');
            table.text.push_str(&a.domain);
            Slot {
                at,
                len: (a.local.len() + 1 + a.domain.len()) as u16,
                local: a.local.len() as u8,
                kind: table::Kind::External,
            }
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
        b.expect_mailboxes(table.len());
        for (key, value) in table.iter() {
            if let Some(m) = parse_mailbox(d, policy, key_str(key), key.span(), value) {
                b.mailbox(m);
            }
        }
    }
    // TOML refuses a key given twice: no name can be read twice here.
    b.mailboxes_read();
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
                toml::de::DeValue::String(s) => Some(Written::one(value.span(), s.as_ref())),
                _ => tomlwalk::as_str_or_list(d, value, &format!("alias `{name}`"))
                    .map(Written::list),
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
                    .map(Written::list)
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

/// A target resolved.
#[derive(Debug, PartialEq, Eq)]
enum Found<'t> {
    Mailbox(&'t str),
    /// The alias's row in the sorted table.
    Alias {
        row: usize,
        address: Address,
    },
    External(Address),
}

impl Found<'_> {
    fn target(self) -> Target {
        match self {
            Found::Mailbox(name) => Target::Mailbox(name.to_string()),
            Found::Alias { address, .. } => Target::Alias(address),
            Found::External(a) => Target::External(a),
        }
    }
}

struct Resolver<'r> {
    policy: &'r Policy,
    mailboxes: &'r Mailboxes,
    /// Sorted, without duplicates.
    table: &'r Aliases,
}

impl Resolver<'_> {
    fn resolve<'t>(
        &self,
        d: &mut Diagnostics<'_>,
        key_span: Range<usize>,
        written: &'t Written<'_>,
        what: &dyn Fn() -> String,
    ) -> Option<Vec<Found<'t>>> {
        let targets = written.as_slice();
        if targets.is_empty() {
            let what = what();
            d.error(
                key_span,
                format!("{what} delivers to nothing"),
                "give it at least one mailbox or address",
            );
            return None;
        }
        let mut out: Vec<Found<'t>> = Vec::with_capacity(targets.len());
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

    fn target<'t>(&self, text: &'t str) -> Result<Found<'t>, (String, String)> {
        if !text.contains('@') {
            return if self.mailboxes.contains_key(text) {
                Ok(Found::Mailbox(text))
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
            return Ok(Found::External(a));
        }
        if self.mailboxes.contains_key(&a.local) {
            let (local, _) = text.rsplit_once('@').expect("an address has an `@`");
            Ok(Found::Mailbox(local))
        } else if let Some(row) = self.table.find((&a).into()) {
            Ok(Found::Alias { row, address: a })
        } else {
            Err((
                format!("`{a}` is neither a mailbox nor an alias, so mail would go nowhere"),
                "point it at a mailbox, or define that alias".into(),
            ))
        }
    }
}

/// Reports every alias that reaches itself, once per loop, at the key of the
/// loop's first member in file order. The table is sorted; its rows' `targets`
/// are still their keys' indexes.
fn report_loops(d: &mut Diagnostics<'_>, table: &Aliases, keys: &[Key]) {
    let key_span = |row: usize| keys[table.rows[row].targets as usize].span();
    let mut reported: BTreeSet<usize> = BTreeSet::new();
    for start in 0..table.rows.len() {
        // Only an alias that delivers to another alias can be part of a loop; most
        // deliver to mailboxes, and need no search.
        let to_an_alias = alias_targets(table, keys, start).next().is_some();
        if !to_an_alias || reported.contains(&start) {
            continue;
        }
        if let Some(cycle) = find_cycle(table, keys, start) {
            let text: Vec<String> = cycle
                .iter()
                .map(|&row| table.row_addr(&table.rows[row]).to_string())
                .collect();
            let first = *cycle
                .iter()
                .min_by_key(|&&row| key_span(row).start)
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

/// The rows of the aliases that the alias of `row` delivers to, in the order its
/// key lists them; none when its targets did not resolve.
fn alias_targets<'t>(
    table: &'t Aliases,
    keys: &[Key],
    row: usize,
) -> impl Iterator<Item = usize> + 't {
    let slots: &[Slot] = match keys[table.rows[row].targets as usize].targets() {
        KeyTargets::Resolved { at, count } => {
            &table.slots[at as usize..at as usize + count as usize]
        }
        KeyTargets::Later | KeyTargets::Failed => &[],
    };
    slots
        .iter()
        .filter(|s| s.kind == table::Kind::Alias)
        .map(|s| s.at as usize)
}

/// A path of aliases (rows) from `start` back to `start`, if there is one.
fn find_cycle(table: &Aliases, keys: &[Key], start: usize) -> Option<Vec<usize>> {
    fn visit(
        table: &Aliases,
        keys: &[Key],
        start: usize,
        at: usize,
        path: &mut Vec<usize>,
        seen: &mut BTreeSet<usize>,
    ) -> bool {
        for next in alias_targets(table, keys, at) {
            if next == start {
                return true;
            }
            if seen.insert(next) {
                path.push(next);
                if visit(table, keys, start, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start];
    let mut seen = BTreeSet::new();
    visit(table, keys, start, start, &mut path, &mut seen).then_some(path)
}
