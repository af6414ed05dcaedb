//! The accounts file read line by line, for the plain form it nearly always has:
//!
//! ```toml
//! [mailboxes.NAME]            # or [mailboxes."NAME"]
//! password = "…"
//! quota = "2G"                # or a number of bytes
//! disabled = true
//! send_as = ["@example.net"]  # on one line
//!
//! [aliases]
//! name = "target"             # or ["a", "b"] on one line; keys bare or quoted
//!
//! [catch_all]
//! "example.org" = "thomas"
//! ```
//!
//! with comments and blank lines anywhere, and the mailboxes before `[aliases]`.
//! Strings are basic without escapes, or literal. Whatever else TOML allows
//! (escapes, multi-line strings or arrays, dotted keys, inline tables, CRLF line
//! ends, ...) makes [`parse`] give up, and so does every mistake, TOML or not: the
//! whole-file parse then reads the file, and it alone reports problems. So this
//! path only has to be right about files it accepts, and its result is the
//! whole-file parse's (the tests hold it to that).

use std::ops::Range;

use super::parse::{Builder, Policy, Written, parse_send_as, password_of, quota_of_text};
use super::{Accounts, Mailbox};
use crate::address::check_local_part;
use crate::diag::{Diagnostics, Source};

/// The accounts of a valid file in the plain form; `None` for any other file.
pub(super) fn parse(source: &Source, policy: &Policy) -> Option<Accounts> {
    let text = source.text.as_str();
    // The same checks, reported nowhere: a file with a problem goes the whole-file
    // way, which reports it.
    let mut d = Diagnostics::new(source);
    let mut b = Builder::new(policy);
    // Each mailbox's table starts with a header like this one (a few more or fewer
    // only cost room).
    b.expect_mailboxes(text.matches("[mailboxes.").count());
    let mut section = Section::Root;
    let mut mailbox: Option<Fields<'_>> = None;
    let (mut seen_aliases, mut seen_catch_all) = (false, false);
    let mut catch_all_domains: Vec<&str> = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let mut line = Line {
            text: &text[start..end],
            at: 0,
            base: start,
        };
        start = end + 1;
        if line
            .text
            .bytes()
            .any(|c| (c < 0x20 && c != b'\t') || c == 0x7f)
        {
            return None;
        }
        line.skip_ws();
        if line.at_end() {
            continue;
        }
        if line.eat(b'[') {
            // A table header ends the table before it.
            if let Some(fields) = mailbox.take() {
                finish_mailbox(&mut d, &mut b, policy, fields)?;
            }
            section = line.header()?;
            match section {
                // Every mailbox is read by now (below), and checked against the
                // others: a table given twice is refused by the whole-file parse.
                Section::Aliases if !std::mem::replace(&mut seen_aliases, true) => {
                    if !b.mailboxes_read() {
                        return None;
                    }
                }
                Section::CatchAll if !std::mem::replace(&mut seen_catch_all, true) => {}
                // An alias is checked against the mailboxes as it is read, so they
                // must all be known by then (the whole-file parse reads them first).
                Section::Mailbox(name) if !seen_aliases => {
                    mailbox = Some(Fields {
                        name,
                        password: None,
                        quota: None,
                        disabled: None,
                        send_as: None,
                    });
                }
                // A table defined twice, or one this form does not have.
                _ => return None,
            }
            continue;
        }
        let (key_span, key) = line.key()?;
        line.skip_ws();
        if !line.eat(b'=') {
            return None;
        }
        line.skip_ws();
        let value = line.value()?;
        if !line.at_end() {
            return None;
        }
        match &section {
            Section::Root => return None,
            Section::Mailbox(..) => mailbox.as_mut()?.set(key, value)?,
            Section::Aliases => {
                let targets = value.targets()?;
                b.alias(&mut d, key, key_span, |_| Some(targets));
            }
            Section::CatchAll => {
                // The whole-file parse refuses a key given twice.
                if catch_all_domains.contains(&key) {
                    return None;
                }
                catch_all_domains.push(key);
                let targets = value.targets()?;
                b.catch_all(&mut d, key, key_span, |_| Some(targets));
            }
        }
        if !d.is_empty() {
            return None;
        }
    }
    if let Some(fields) = mailbox.take() {
        finish_mailbox(&mut d, &mut b, policy, fields)?;
    }
    if !b.mailboxes_read() || b.mailboxes.is_empty() {
        return None;
    }
    let accounts = b.finish(&mut d);
    d.is_empty().then_some(accounts)
}

/// The table the lines belong to.
#[derive(Clone, Copy)]
enum Section<'a> {
    Root,
    Mailbox(&'a str),
    Aliases,
    CatchAll,
}

/// A value this form has.
enum Value<'a> {
    String(Range<usize>, &'a str),
    Strings(Vec<(Range<usize>, &'a str)>),
    Bool(bool),
    /// Decimal digits, small enough for any integer type TOML has.
    Integer(u64),
}

impl<'a> Value<'a> {
    /// An alias's or catch-all's targets: a string or an array of strings.
    fn targets(self) -> Option<Written<'a>> {
        match self {
            Value::String(span, s) => Some(Written::One((span, s))),
            Value::Strings(list) => Some(Written::List(list)),
            _ => None,
        }
    }
}

/// A mailbox's table as read so far.
struct Fields<'a> {
    name: &'a str,
    password: Option<(Range<usize>, &'a str)>,
    quota: Option<Value<'a>>,
    disabled: Option<bool>,
    send_as: Option<Vec<(Range<usize>, &'a str)>>,
}

impl<'a> Fields<'a> {
    /// Takes one `key = value` line; `None` for an unknown key, a key given twice
    /// or a value of the wrong type.
    fn set(&mut self, key: &str, value: Value<'a>) -> Option<()> {
        match (key, value) {
            ("password", Value::String(span, s)) if self.password.is_none() => {
                self.password = Some((span, s));
            }
            ("quota", v @ (Value::String(..) | Value::Integer(_))) if self.quota.is_none() => {
                self.quota = Some(v);
            }
            ("disabled", Value::Bool(b)) if self.disabled.is_none() => self.disabled = Some(b),
            ("send_as", Value::Strings(list)) if self.send_as.is_none() => {
                self.send_as = Some(list);
            }
            _ => return None,
        }
        Some(())
    }
}

/// Checks a mailbox's table with the whole-file parse's checks and adds it.
fn finish_mailbox(
    d: &mut Diagnostics<'_>,
    b: &mut Builder<'_, '_>,
    policy: &Policy,
    f: Fields<'_>,
) -> Option<()> {
    check_local_part(f.name).ok()?;
    let (span, text) = f.password?;
    let password = password_of(d, policy, f.name, span, text)?;
    let quota = match f.quota {
        None => None,
        // A quota of 0 is refused.
        Some(Value::Integer(0)) => return None,
        Some(Value::Integer(n)) => Some(n),
        Some(Value::String(span, text)) => Some(quota_of_text(d, span, text)?),
        Some(_) => return None,
    };
    let mut send_as = Vec::new();
    for (span, entry) in f.send_as.unwrap_or_default() {
        send_as.push(parse_send_as(d, policy, span, entry)?);
    }
    if !d.is_empty() {
        return None;
    }
    b.mailbox(Mailbox {
        name: f.name.to_string(),
        password,
        disabled: f.disabled.unwrap_or(false),
        quota,
        send_as,
    });
    Some(())
}

/// One line of the file, read from `at`; `base` is its offset in the file.
struct Line<'a> {
    text: &'a str,
    at: usize,
    base: usize,
}

impl<'a> Line<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        let found = self.peek() == Some(c);
        if found {
            self.at += 1;
        }
        found
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    /// Nothing but blanks and a comment is left.
    fn at_end(&mut self) -> bool {
        self.skip_ws();
        matches!(self.peek(), None | Some(b'#'))
    }

    /// The span in the file from `from` (an offset in the line) to here.
    fn span(&self, from: usize) -> Range<usize> {
        self.base + from..self.base + self.at
    }

    /// A key of a `key = value` line: one part, never a dotted key.
    fn key(&mut self) -> Option<(Range<usize>, &'a str)> {
        let key = self.key_part()?;
        // A dot after the key makes it dotted: not this form.
        let after = self.at;
        self.skip_ws();
        if self.peek() == Some(b'.') {
            return None;
        }
        self.at = after;
        Some(key)
    }

    /// A bare key, or a quoted one (basic without escapes, or literal).
    fn key_part(&mut self) -> Option<(Range<usize>, &'a str)> {
        let from = self.at;
        let key = match self.peek()? {
            b'"' | b'\'' => self.string()?,
            _ => {
                let len = self.text.as_bytes()[from..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'))
                    .count();
                if len == 0 {
                    return None;
                }
                self.at += len;
                &self.text[from..self.at]
            }
        };
        Some((self.span(from), key))
    }

    /// A string's content: `"…"` without escapes, or `'…'`; no multi-line string.
    fn string(&mut self) -> Option<&'a str> {
        let quote = self.peek()?;
        let rest = &self.text[self.at + 1..];
        let len = rest.find(quote as char)?;
        let content = &rest[..len];
        if (quote == b'"' && content.contains('\\'))
            || (len == 0 && rest[1..].starts_with(quote as char))
        {
            return None;
        }
        self.at += len + 2;
        Some(content)
    }

    /// The table a header names, after its `[`.
    fn header(&mut self) -> Option<Section<'a>> {
        if self.peek() == Some(b'[') {
            return None;
        }
        self.skip_ws();
        let (span, first) = self.key_part()?;
        self.skip_ws();
        let section = if self.eat(b'.') {
            if first != "mailboxes" || span.len() != "mailboxes".len() {
                return None;
            }
            self.skip_ws();
            let (_, name) = self.key()?;
            Section::Mailbox(name)
        } else {
            // Only bare names: a quoted "aliases" is the same table, but rare enough
            // to leave to the whole-file parse.
            match (first, span.len()) {
                ("aliases", 7) => Section::Aliases,
                ("catch_all", 9) => Section::CatchAll,
                _ => return None,
            }
        };
        self.skip_ws();
        (self.eat(b']') && self.at_end()).then_some(section)
    }

    /// A value of this form.
    fn value(&mut self) -> Option<Value<'a>> {
        let from = self.at;
        match self.peek()? {
            b'"' | b'\'' => {
                let s = self.string()?;
                Some(Value::String(self.span(from), s))
            }
            b'[' => {
                self.at += 1;
                let mut list = Vec::new();
                loop {
                    self.skip_ws();
                    if self.eat(b']') {
                        return Some(Value::Strings(list));
                    }
                    let from = self.at;
                    if !matches!(self.peek()?, b'"' | b'\'') {
                        return None;
                    }
                    let s = self.string()?;
                    list.push((self.span(from), s));
                    self.skip_ws();
                    if !self.eat(b',') {
                        self.skip_ws();
                        return self.eat(b']').then_some(Value::Strings(list));
                    }
                }
            }
            _ => {
                let len = self.text.as_bytes()[from..]
                    .iter()
                    .take_while(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'+' | b':')
                    })
                    .count();
                self.at += len;
                match &self.text[from..self.at] {
                    "true" => Some(Value::Bool(true)),
                    "false" => Some(Value::Bool(false)),
                    // Decimal only, no leading zero, no sign or underscore; 18 digits
                    // fit every integer TOML reads.
                    digits
                        if (1..=18).contains(&digits.len())
                            && digits.bytes().all(|c| c.is_ascii_digit())
                            && (digits == "0" || !digits.starts_with('0')) =>
                    {
                        digits.parse().ok().map(Value::Integer)
                    }
                    _ => None,
                }
            }
        }
    }
}
