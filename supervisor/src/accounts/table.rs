//! The aliases of an accounts file as one compact table.
//!
//! With 100,000 aliases a map of `Address` to a vector of targets was about 700,000
//! allocations: a B-tree entry, two strings per address, a vector and its strings
//! per alias (18 MiB of heap, as much again of allocator overhead, for a 4.5 MiB
//! file). Here every address and every target's text is in one string, each alias
//! a fixed-size row into it, sorted as the map was, and each target a fixed-size
//! slot: three allocations whatever the number of aliases.

use std::cmp::Ordering;
use std::fmt;

use super::Target;
use crate::address::Address;

/// An address whose text is elsewhere: `local@domain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Addr<'a> {
    pub(crate) local: &'a str,
    pub(crate) domain: &'a str,
}

impl fmt::Display for Addr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl<'a> From<&'a Address> for Addr<'a> {
    fn from(a: &'a Address) -> Self {
        Addr {
            local: &a.local,
            domain: &a.domain,
        }
    }
}

/// Where an alias or catch-all delivers, its text borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetRef<'a> {
    Mailbox(&'a str),
    /// Another alias of a hosted domain.
    Alias(Addr<'a>),
    /// An address outside the hosted domains.
    External(Addr<'a>),
}

impl Target {
    pub(crate) fn as_ref(&self) -> TargetRef<'_> {
        match self {
            Target::Mailbox(name) => TargetRef::Mailbox(name),
            Target::Alias(a) => TargetRef::Alias(a.into()),
            Target::External(a) => TargetRef::External(a.into()),
        }
    }
}

impl TargetRef<'_> {
    /// The owned form, for the tests to compare.
    #[cfg(test)]
    pub(crate) fn to_owned(self) -> Target {
        let address = |a: Addr<'_>| Address {
            local: a.local.into(),
            domain: a.domain.into(),
        };
        match self {
            TargetRef::Mailbox(name) => Target::Mailbox(name.into()),
            TargetRef::Alias(a) => Target::Alias(address(a)),
            TargetRef::External(a) => Target::External(address(a)),
        }
    }
}

/// One alias: its address in [`Aliases::text`] and its targets in
/// [`Aliases::slots`]. 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Row {
    pub(super) at: u32,
    pub(super) len: u16,
    /// The local part's length: the address is split there.
    pub(super) local: u8,
    /// Where its targets start in the slots; while the file is read, the index of
    /// the key it came from (see [`super::parse`]'s Builder).
    pub(super) targets: u32,
    pub(super) count: u32,
}

/// What a slot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `at..at + len` of the text is the mailbox's name.
    Mailbox,
    /// `at` is the alias's row.
    Alias,
    /// `at..at + len` of the text is the address, split after `local` bytes.
    External,
}

/// One target of an alias. 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    pub(super) at: u32,
    pub(super) len: u16,
    pub(super) local: u8,
    pub(super) kind: Kind,
}

/// Every alias, sorted by address (local part, then domain: the order a map of
/// [`Address`] had), each with its targets.
#[derive(Clone, Default)]
pub(crate) struct Aliases {
    /// The addresses of the aliases and the text of their mailbox and external
    /// targets, one after the other.
    pub(super) text: String,
    pub(super) rows: Vec<Row>,
    pub(super) slots: Vec<Slot>,
}

/// An offset into the table's text. Beyond 4 GiB of aliases the machine has run
/// out of memory long before.
pub(super) fn offset(n: usize) -> u32 {
    u32::try_from(n).expect("the aliases' text is under 4 GiB")
}

impl Aliases {
    /// Appends `text` and returns where it is.
    pub(super) fn push_text(&mut self, text: &str) -> (u32, u16) {
        let at = offset(self.text.len());
        self.text.push_str(text);
        // Addresses are at most 64 + 1 + 253 bytes, names at most 64.
        (at, u16::try_from(text.len()).expect("an address is short"))
    }

    pub(super) fn addr_at(&self, at: u32, len: u16, local: u8) -> Addr<'_> {
        let text = &self.text[at as usize..at as usize + len as usize];
        Addr {
            local: &text[..local as usize],
            domain: &text[local as usize + 1..],
        }
    }

    pub(super) fn row_addr(&self, row: &Row) -> Addr<'_> {
        self.addr_at(row.at, row.len, row.local)
    }

    /// The row of `address`, by binary search.
    pub(super) fn find(&self, address: Addr<'_>) -> Option<usize> {
        self.rows
            .binary_search_by(|row| self.row_addr(row).cmp(&address))
            .ok()
    }

    /// Orders two rows by address (then by what `targets` holds while reading).
    pub(super) fn cmp_rows(&self, a: &Row, b: &Row) -> Ordering {
        self.row_addr(a)
            .cmp(&self.row_addr(b))
            .then(a.targets.cmp(&b.targets))
    }

    pub(super) fn target(&self, slot: &Slot) -> TargetRef<'_> {
        match slot.kind {
            Kind::Mailbox => TargetRef::Mailbox(
                &self.text[slot.at as usize..slot.at as usize + slot.len as usize],
            ),
            Kind::Alias => TargetRef::Alias(self.row_addr(&self.rows[slot.at as usize])),
            Kind::External => TargetRef::External(self.addr_at(slot.at, slot.len, slot.local)),
        }
    }

    fn targets_of(&self, row: &Row) -> AliasTargets<'_> {
        AliasTargets {
            aliases: self,
            slots: &self.slots[row.targets as usize..row.targets as usize + row.count as usize],
        }
    }

    /// How many alias addresses there are.
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Each alias address and its targets, in address order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Addr<'_>, AliasTargets<'_>)> {
        self.rows
            .iter()
            .map(|row| (self.row_addr(row), self.targets_of(row)))
    }

    /// Each alias address as one text, where it is in the table's text, and its
    /// targets, in address order: for a list of addresses that refers to these
    /// instead of copying them ([`Aliases::text_at`]).
    pub(crate) fn iter_spans(&self) -> impl Iterator<Item = ((u32, u16), AliasTargets<'_>)> {
        self.rows
            .iter()
            .map(|row| ((row.at, row.len), self.targets_of(row)))
    }

    /// The text at a place [`Aliases::iter_spans`] gave.
    pub(crate) fn text_at(&self, (at, len): (u32, u16)) -> &str {
        &self.text[at as usize..at as usize + len as usize]
    }

    /// The targets of `address`, if it is an alias.
    pub(crate) fn get(&self, address: Addr<'_>) -> Option<AliasTargets<'_>> {
        self.find(address).map(|i| self.targets_of(&self.rows[i]))
    }

    /// The targets of `address` in their owned form, for the tests to compare.
    #[cfg(test)]
    pub(crate) fn owned(&self, address: &str) -> Option<Vec<Target>> {
        let (local, domain) = address.rsplit_once('@')?;
        let targets = self.get(Addr { local, domain })?;
        Some(targets.iter().map(TargetRef::to_owned).collect())
    }
}

/// What an alias delivers to, as written (resolved).
#[derive(Clone, Copy)]
pub(crate) struct AliasTargets<'a> {
    aliases: &'a Aliases,
    slots: &'a [Slot],
}

impl<'a> AliasTargets<'a> {
    pub(crate) fn iter(self) -> impl Iterator<Item = TargetRef<'a>> + Clone {
        self.slots.iter().map(move |s| self.aliases.target(s))
    }

    /// Its target when it has exactly one.
    pub(crate) fn only(self) -> Option<TargetRef<'a>> {
        match self.slots {
            [one] => Some(self.aliases.target(one)),
            _ => None,
        }
    }
}

/// Two tables are equal when they hold the same aliases with the same targets,
/// wherever their text happens to be.
impl PartialEq for Aliases {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .zip(other.iter())
                .all(|((a, at), (b, bt))| a == b && at.iter().eq(bt.iter()))
    }
}

impl Eq for Aliases {}

impl fmt::Debug for Aliases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(a, t)| (a.to_string(), t.iter().collect::<Vec<_>>())),
            )
            .finish()
    }
}
