//! Reading TOML by hand, with spans, so that every problem in a file is reported at
//! once with its line and column. serde's derive stops at the first unknown key; a
//! person fixing an accounts file deserves the whole list.

use std::borrow::Cow;
use std::ops::Range;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{Diagnostic, Diagnostics, Source};

pub(crate) type Table<'i> = DeTable<'i>;
pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// Turns a file's bytes into text, refusing what is not a text file at all.
pub(crate) fn decode(path: &Path, bytes: Vec<u8>) -> Result<Source, Diagnostic> {
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let prefix = String::from_utf8_lossy(&e.as_bytes()[..valid]).into_owned();
            let (line, column) = Source::new(path, prefix).position(valid);
            return Err(Diagnostic {
                file: path.to_path_buf(),
                line,
                column,
                message: "the file is not valid UTF-8 text (binary data?)".into(),
                hint: "this must be a TOML text file; restore it from a backup or rewrite it"
                    .into(),
            });
        }
    };
    if let Some(at) = text.find('\0') {
        let source = Source::new(path, text);
        let (line, column) = source.position(at);
        return Err(Diagnostic {
            file: path.to_path_buf(),
            line,
            column,
            message: "the file contains a NUL byte (binary data?)".into(),
            hint: "this must be a TOML text file; restore it from a backup or rewrite it".into(),
        });
    }
    Ok(Source::new(path, text))
}

/// Parses the source, reporting every syntax error the parser could recover from.
/// Returns `None` when there were syntax errors: what follows them is not trustworthy.
pub(crate) fn parse<'s>(source: &'s Source, d: &mut Diagnostics<'_>) -> Option<Spanned<Table<'s>>> {
    let (table, errors) = DeTable::parse_recoverable(&source.text);
    for e in &errors {
        let span = e.span().unwrap_or(0..0);
        d.error(
            span,
            format!("TOML syntax error: {}", e.message().trim_end()),
            "fix the syntax (https://toml.io)",
        );
    }
    errors.is_empty().then_some(table)
}

/// Reports every key of `table` that is not in `known`.
pub(crate) fn check_keys(
    d: &mut Diagnostics<'_>,
    table: &Table<'_>,
    known: &[&str],
    context: &str,
) {
    for (key, _) in table.iter() {
        if !known.contains(&key.get_ref().as_ref()) {
            let hint = match closest(key.get_ref(), known) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("known keys here: {}", known.join(", ")),
            };
            d.error(
                key.span(),
                format!("unknown key `{}` in {context}", key.get_ref()),
                hint,
            );
        }
    }
}

/// The entry for `key` with the span of its key, if present.
pub(crate) fn get<'t, 'i>(
    table: &'t Table<'i>,
    key: &str,
) -> Option<(Range<usize>, &'t Value<'i>)> {
    table.get_key_value(key).map(|(k, v)| (k.span(), v))
}

fn type_error(d: &mut Diagnostics<'_>, v: &Value<'_>, what: &str, expected: &str) {
    d.error(
        v.span(),
        format!(
            "{what} must be {expected}, not {}",
            article(v.get_ref().type_str())
        ),
        "",
    );
}

fn article(type_str: &str) -> String {
    match type_str.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_str}"),
        _ => format!("a {type_str}"),
    }
}

pub(crate) fn as_str<'v>(d: &mut Diagnostics<'_>, v: &'v Value<'_>, what: &str) -> Option<&'v str> {
    match v.get_ref() {
        DeValue::String(s) => Some(s.as_ref()),
        _ => {
            type_error(d, v, what, "a string");
            None
        }
    }
}

pub(crate) fn as_bool(d: &mut Diagnostics<'_>, v: &Value<'_>, what: &str) -> Option<bool> {
    match v.get_ref() {
        DeValue::Boolean(b) => Some(*b),
        _ => {
            type_error(d, v, what, "true or false");
            None
        }
    }
}

pub(crate) fn as_u64(d: &mut Diagnostics<'_>, v: &Value<'_>, what: &str) -> Option<u64> {
    match v.get_ref() {
        DeValue::Integer(i) => match u64::from_str_radix(&i.as_str().replace('_', ""), i.radix()) {
            Ok(n) => Some(n),
            Err(_) => {
                d.error(
                    v.span(),
                    format!("{what} must be a whole number of 0 or more"),
                    "",
                );
                None
            }
        },
        _ => {
            type_error(d, v, what, "a whole number");
            None
        }
    }
}

/// A number, whole or not (`15`, `5.5`); finite only.
pub(crate) fn as_f64(d: &mut Diagnostics<'_>, v: &Value<'_>, what: &str) -> Option<f64> {
    let parsed = match v.get_ref() {
        DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .ok()
            .map(|n| n as f64),
        DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
        _ => {
            type_error(d, v, what, "a number");
            return None;
        }
    };
    match parsed {
        Some(n) if n.is_finite() => Some(n),
        _ => {
            d.error(v.span(), format!("{what} must be a finite number"), "");
            None
        }
    }
}

pub(crate) fn as_table<'v, 'i>(
    d: &mut Diagnostics<'_>,
    v: &'v Value<'i>,
    what: &str,
) -> Option<&'v Table<'i>> {
    match v.get_ref() {
        DeValue::Table(t) => Some(t),
        _ => {
            type_error(d, v, what, "a table");
            None
        }
    }
}

/// A string, or an array of strings; each with its own span. Used where one value
/// is the common case and a list is allowed (alias targets, say).
pub(crate) fn as_str_or_list<'v>(
    d: &mut Diagnostics<'_>,
    v: &'v Value<'_>,
    what: &str,
) -> Option<Vec<(Range<usize>, &'v str)>> {
    match v.get_ref() {
        DeValue::String(s) => Some(vec![(v.span(), s.as_ref())]),
        DeValue::Array(items) => {
            let mut out = Vec::new();
            let mut ok = true;
            for item in items.iter() {
                match item.get_ref() {
                    DeValue::String(s) => out.push((item.span(), s.as_ref())),
                    _ => {
                        type_error(d, item, &format!("each entry of {what}"), "a string");
                        ok = false;
                    }
                }
            }
            ok.then_some(out)
        }
        _ => {
            type_error(d, v, what, "a string or an array of strings");
            None
        }
    }
}

/// An array of strings (a single string is refused: lists stay lists).
pub(crate) fn as_str_list<'v>(
    d: &mut Diagnostics<'_>,
    v: &'v Value<'_>,
    what: &str,
) -> Option<Vec<(Range<usize>, &'v str)>> {
    match v.get_ref() {
        DeValue::Array(_) => as_str_or_list(d, v, what),
        _ => {
            type_error(d, v, what, "an array of strings");
            None
        }
    }
}

pub(crate) fn key_str<'k>(key: &'k Spanned<Cow<'_, str>>) -> &'k str {
    key.get_ref().as_ref()
}

/// The known key nearest to a misspelt one, when it is near enough to be a typo.
fn closest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(dist, k)| *dist <= 2.max(k.len() / 4))
        .min_by_key(|(dist, _)| *dist)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typo_suggestions() {
        assert_eq!(closest("pasword", &["password", "quota"]), Some("password"));
        assert_eq!(closest("zzz", &["password", "quota"]), None);
    }

    #[test]
    fn binary_input_is_refused_with_its_position() {
        let e = decode(Path::new("a"), b"ok\nab\xff\xfe".to_vec()).unwrap_err();
        assert_eq!((e.line, e.column), (2, 3));
        assert!(e.message.contains("not valid UTF-8"), "{e}");
        let e = decode(Path::new("a"), b"x = 1\0".to_vec()).unwrap_err();
        assert_eq!((e.line, e.column), (1, 6));
        assert!(e.message.contains("NUL byte"), "{e}");
    }
}
