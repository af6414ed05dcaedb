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

use std::io::BufRead;
use std::ops::Range;

use super::parse::{Builder, Policy, Written, parse_send_as, password_of, quota_of_text};
use super::{Accounts, Mailbox};
use crate::address::check_local_part;
use crate::diag::{Diagnostics, Source};

/// The accounts of a valid file in the plain form, read from `file` one line at a
/// time: only what outlives its line is kept (a mailbox's fields until its table
/// ends, the targets that wait for every alias address), never the file's text.
/// `None` for any other file, and when reading fails.
pub(super) fn parse(file: &mut dyn BufRead, policy: &Policy) -> Option<Accounts> {
    // The same checks, reported nowhere: a file with a problem goes the whole-file
    // way, which reports it. So the diagnostics need no text to place them in.
    let nowhere = Source::new("", "");
    let mut d = Diagnostics::new(&nowhere);
    let mut b = Builder::new(policy);
    let mut section = Section::Root;
    let mut mailbox: Option<Fields> = None;
    let (mut seen_aliases, mut seen_catch_all) = (false, false);
    let mut catch_all_domains: Vec<String> = Vec::new();
    let mut buf = Vec::new();
    let mut start = 0;
    loop {
        buf.clear();
        let read = file.read_until(b'\n', &mut buf).ok()?;
        if read == 0 {
            break;
        }
        let bytes = buf.strip_suffix(b"\n").unwrap_or(&buf);
        // A line break is never inside a character: text valid line by line is
        // valid as a whole.
        let mut line = Line {
            text: std::str::from_utf8(bytes).ok()?,
            at: 0,
            base: start,
        };
        start += read;
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
            section = match line.header()? {
                Header::Aliases if !std::mem::replace(&mut seen_aliases, true) => {
                    // Every mailbox is read by now (below), and checked against the
                    // others: a table given twice is refused by the whole-file parse.
                    if !b.mailboxes_read() {
                        return None;
                    }
                    Section::Aliases
                }
                Header::CatchAll if !std::mem::replace(&mut seen_catch_all, true) => {
                    Section::CatchAll
                }
                // An alias is checked against the mailboxes as it is read, so they
                // must all be known by then (the whole-file parse reads them first).
                Header::Mailbox(name) if !seen_aliases => {
                    mailbox = Some(Fields {
                        name: name.to_string(),
                        password: None,
                        quota: None,
                        disabled: None,
                        send_as: None,
                    });
                    Section::Mailbox
                }
                // A table defined twice, or one this form does not have.
                _ => return None,
            };
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
        match section {
            Section::Root => return None,
            Section::Mailbox => mailbox.as_mut()?.set(key, value)?,
            Section::Aliases => {
                let targets = value.targets()?;
                b.alias(&mut d, key, key_span, |_| Some(targets));
            }
            Section::CatchAll => {
                // The whole-file parse refuses a key given twice.
                if catch_all_domains.iter().any(|k| k == key) {
                    return None;
                }
                catch_all_domains.push(key.to_string());
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
enum Section {
    Root,
    Mailbox,
    Aliases,
    CatchAll,
}

/// A table's header.
enum Header<'a> {
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
            Value::String(span, s) => Some(Written::one(span, s)),
            Value::Strings(list) => Some(Written::list(list)),
            _ => None,
        }
    }
}

/// A mailbox's table as read so far: its lines are gone, so it keeps copies.
struct Fields {
    name: String,
    password: Option<(Range<usize>, String)>,
    quota: Option<Quota>,
    disabled: Option<bool>,
    send_as: Option<Vec<(Range<usize>, String)>>,
}

/// A quota as written: a number of bytes, or a size with a unit.
enum Quota {
    Bytes(u64),
    Text(Range<usize>, String),
}

impl Fields {
    /// Takes one `key = value` line; `None` for an unknown key, a key given twice
    /// or a value of the wrong type.
    fn set(&mut self, key: &str, value: Value<'_>) -> Option<()> {
        match (key, value) {
            ("password", Value::String(span, s)) if self.password.is_none() => {
                self.password = Some((span, s.to_string()));
            }
            ("quota", Value::String(span, s)) if self.quota.is_none() => {
                self.quota = Some(Quota::Text(span, s.to_string()));
            }
            ("quota", Value::Integer(n)) if self.quota.is_none() => {
                self.quota = Some(Quota::Bytes(n));
            }
            ("disabled", Value::Bool(b)) if self.disabled.is_none() => self.disabled = Some(b),
            ("send_as", Value::Strings(list)) if self.send_as.is_none() => {
                self.send_as = Some(
                    list.into_iter()
                        .map(|(span, s)| (span, s.to_string()))
                        .collect(),
                );
            }
            _ => return None,
        }
        Some(())
    }
}

/// Checks a mailbox's table with the whole-file parse's checks and adds it.
fn finish_mailbox(
    d: &mut Diagnostics<'_>,
    b: &mut Builder<'_>,
    policy: &Policy,
    f: Fields,
) -> Option<()> {
    check_local_part(&f.name).ok()?;
    let (span, text) = f.password?;
    let password = password_of(d, policy, &f.name, span, &text)?;
    let quota = match f.quota {
        None => None,
        // A quota of 0 is refused.
        Some(Quota::Bytes(0)) => return None,
        Some(Quota::Bytes(n)) => Some(n),
        Some(Quota::Text(span, text)) => Some(quota_of_text(d, span, &text)?),
    };
    let mut send_as = Vec::new();
    for (span, entry) in f.send_as.unwrap_or_default() {
        send_as.push(parse_send_as(d, policy, span, &entry)?);
    }
    if !d.is_empty() {
        return None;
    }
    b.mailbox(Mailbox {
        name: f.name,
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
    fn header(&mut self) -> Option<Header<'a>> {
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
            Header::Mailbox(name)
        } else {
            // Only bare names: a quoted "aliases" is the same table, but rare enough
            // to leave to the whole-file parse.
            match (first, span.len()) {
                ("aliases", 7) => Header::Aliases,
                ("catch_all", 9) => Header::CatchAll,
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
