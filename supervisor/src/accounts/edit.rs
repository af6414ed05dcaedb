//! Editing the accounts file from the command line, as pure functions over its text.
//!
//! Each [`Edit`] changes only what it names and keeps the person's comments, order
//! and formatting (toml_edit). The result is parsed exactly as the daemon parses the
//! file ([`super::parse`]), and an edit whose result the daemon would refuse is
//! refused here with the same `file:line:column` diagnostics, so the command line can
//! never write a file the daemon will not serve. Reading, writing and telling the
//! daemon are the caller's business (cli.rs).

use std::path::{Path, PathBuf};

use toml_edit::{Array, DocumentMut, Item, Table, TableLike, Value};

use super::{Accounts, Policy, Target, TargetRef};
use crate::diag::{Invalid, Source};

/// One change the command line makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Edit {
    AddMailbox {
        name: String,
        password: String,
        quota: Option<String>,
        send_as: Vec<String>,
    },
    SetPassword {
        name: String,
        password: String,
    },
    SetDisabled {
        name: String,
        disabled: bool,
    },
    /// With `force`, the alias and catch-all targets that deliver to it go too.
    RemoveMailbox {
        name: String,
        force: bool,
    },
    /// Creates the alias, or adds the targets it does not list yet.
    AddAlias {
        address: String,
        targets: Vec<String>,
    },
    /// No targets: the whole alias.
    RemoveAlias {
        address: String,
        targets: Vec<String>,
    },
    SetCatchAll {
        domain: String,
        target: String,
    },
    UnsetCatchAll {
        domain: String,
    },
}

/// The edited text, what it parses to, and what was changed beyond the edit itself.
#[derive(Debug)]
pub(crate) struct Edited {
    pub(crate) text: String,
    pub(crate) accounts: Accounts,
    /// False when the file already says what the edit asks for (nothing to write).
    pub(crate) changed: bool,
    /// References removed along the way (`mailbox remove --force`), one line each.
    pub(crate) removed_references: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// The file does not parse as TOML; the daemon's diagnostics say where.
    #[error("{0}")]
    Invalid(Invalid),
    #[error("{what} `{name}` does not exist in {path}")]
    NotFound {
        what: &'static str,
        name: String,
        path: String,
    },
    #[error("{what} `{name}` exists already in {path}")]
    Exists {
        what: &'static str,
        name: String,
        path: String,
    },
    #[error("mailbox `{name}` still receives mail from {}; remove those first, or pass --force to remove them with it", .by.join(", "))]
    Referenced { name: String, by: Vec<String> },
    #[error("`{key}` in {path} is not written as {expected}; edit it by hand")]
    Shape {
        key: String,
        expected: &'static str,
        path: String,
    },
}

/// The text after `edit`, validated as the daemon validates it.
pub(crate) fn apply(
    path: &Path,
    text: &str,
    edit: &Edit,
    policy: &Policy,
) -> Result<Edited, Refused> {
    // A file that is not TOML at all gets the daemon's own messages, not toml_edit's.
    let mut doc: DocumentMut = match text.parse() {
        Ok(doc) => doc,
        Err(_) => {
            return Err(Refused::Invalid(
                validate(path, text, policy)
                    .err()
                    .unwrap_or_else(|| Invalid(vec![])),
            ));
        }
    };
    let file = path.display().to_string();
    let mut removed_references = Vec::new();
    match edit {
        Edit::AddMailbox {
            name,
            password,
            quota,
            send_as,
        } => {
            let mailboxes = table_at(&mut doc, "mailboxes", &file)?;
            if mailboxes.contains_key(name) {
                return Err(Refused::Exists {
                    what: "mailbox",
                    name: name.clone(),
                    path: file,
                });
            }
            let mut t = Table::new();
            t.insert("password", toml_edit::value(password.as_str()));
            if let Some(q) = quota {
                t.insert("quota", toml_edit::value(q.as_str()));
            }
            if !send_as.is_empty() {
                t.insert(
                    "send_as",
                    toml_edit::value(send_as.iter().collect::<Array>()),
                );
            }
            t.decor_mut().set_prefix("\n");
            mailboxes.insert(name, Item::Table(t));
        }
        Edit::SetPassword { name, password } => {
            let mailbox = mailbox(&mut doc, name, &file)?;
            set_keeping_decor(mailbox, "password", Value::from(password.as_str()));
        }
        Edit::SetDisabled { name, disabled } => {
            let mailbox = mailbox(&mut doc, name, &file)?;
            let has_comment = mailbox.get_key_value("disabled").is_some_and(|(k, v)| {
                decor_has_comment(k.leaf_decor())
                    || v.as_value().is_some_and(|v| decor_has_comment(v.decor()))
            });
            if *disabled || has_comment {
                set_keeping_decor(mailbox, "disabled", Value::from(*disabled));
            } else {
                // `disabled = false` is the default: enabling takes the line out again.
                mailbox.remove("disabled");
            }
        }
        Edit::RemoveMailbox { name, force } => {
            let references = references_to(&doc, name, policy);
            if !references.is_empty() && !force {
                return Err(Refused::Referenced {
                    name: name.clone(),
                    by: references.iter().map(|r| r.describe()).collect(),
                });
            }
            for r in &references {
                remove_target(&mut doc, r);
                removed_references.push(r.describe());
            }
            let mailboxes = table_at(&mut doc, "mailboxes", &file)?;
            let Some(removed) = mailboxes.remove(name) else {
                return Err(Refused::NotFound {
                    what: "mailbox",
                    name: name.clone(),
                    path: file,
                });
            };
            keep_leading_comments(&mut doc, &removed);
        }
        Edit::AddAlias { address, targets } => {
            let aliases = table_at(&mut doc, "aliases", &file)?;
            match aliases.get_mut(address) {
                None => {
                    let value = match targets.as_slice() {
                        [one] => Value::from(one.as_str()),
                        many => Value::Array(many.iter().collect()),
                    };
                    aliases.insert(address, Item::Value(value));
                }
                Some(item) => {
                    let list = as_list(item, address, &file)?;
                    for t in targets {
                        if !list.iter().any(|v| v.as_str() == Some(t)) {
                            list.push(t.as_str());
                        }
                    }
                }
            }
        }
        Edit::RemoveAlias { address, targets } => {
            let aliases = table_at(&mut doc, "aliases", &file)?;
            let Some(item) = aliases.get_mut(address) else {
                return Err(Refused::NotFound {
                    what: "alias",
                    name: address.clone(),
                    path: file,
                });
            };
            if !targets.is_empty() {
                let list = as_list(item, address, &file)?;
                for t in targets {
                    if !list.iter().any(|v| v.as_str() == Some(t)) {
                        return Err(Refused::NotFound {
                            what: "target of that alias",
                            name: t.clone(),
                            path: file,
                        });
                    }
                    remove_from(list, t);
                }
            }
            if targets.is_empty()
                || aliases
                    .get(address)
                    .and_then(Item::as_array)
                    .is_some_and(Array::is_empty)
            {
                aliases.remove(address);
            }
        }
        Edit::SetCatchAll { domain, target } => {
            let catch_all = table_at(&mut doc, "catch_all", &file)?;
            set_keeping_decor(catch_all, domain, Value::from(target.as_str()));
        }
        Edit::UnsetCatchAll { domain } => {
            let catch_all = table_at(&mut doc, "catch_all", &file)?;
            if catch_all.remove(domain).is_none() {
                return Err(Refused::NotFound {
                    what: "catch-all of domain",
                    name: domain.clone(),
                    path: file,
                });
            }
        }
    }
    let new_text = doc.to_string();
    let accounts = validate(path, &new_text, policy).map_err(Refused::Invalid)?;
    Ok(Edited {
        changed: new_text != text,
        text: new_text,
        accounts,
        removed_references,
    })
}

/// Parses `text` as the daemon does.
pub(crate) fn validate(path: &Path, text: &str, policy: &Policy) -> Result<Accounts, Invalid> {
    super::parse(&Source::new(path, text), policy)
}

/// Why the file must not be edited here: NixOS writes it. The text names the
/// option to change instead; `postmaster mailbox …` prints it after "not changed: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DeclaredElsewhere {
    #[error(
        "{} is in the Nix store and cannot change; set services.postmaster.accountsFile to a file outside it (the default is /etc/postmaster/accounts.toml), or declare the accounts in services.postmaster.accounts",
        .0.display()
    )]
    InNixStore(PathBuf),
    /// Rendered by nix/lib/accounts.nix (its first line says so).
    #[error(
        "{} is written from services.postmaster.accounts in the NixOS configuration and rewritten when postmaster-accounts.service starts; change the accounts there and run nixos-rebuild switch",
        .0.display()
    )]
    WrittenByNixos(PathBuf),
}

/// Whether the file is one that NixOS writes, which must not be edited here.
pub(crate) fn declared_elsewhere(path: &Path, text: &str) -> Option<DeclaredElsewhere> {
    if path.starts_with("/nix/store") {
        return Some(DeclaredElsewhere::InNixStore(path.to_path_buf()));
    }
    // The first line of the file nix/lib/accounts.nix renders.
    if text.starts_with("# Generated by the NixOS module services.postmaster") {
        return Some(DeclaredElsewhere::WrittenByNixos(path.to_path_buf()));
    }
    None
}

/// An alias or catch-all target that delivers to a mailbox, as written in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    /// "aliases" or "catch_all".
    pub(crate) table: &'static str,
    pub(crate) key: String,
    pub(crate) target: String,
}

impl Reference {
    pub(crate) fn describe(&self) -> String {
        match self.table {
            "aliases" => format!("alias `{}` (target `{}`)", self.key, self.target),
            _ => format!("the catch-all of `{}` (target `{}`)", self.key, self.target),
        }
    }
}

/// Every alias and catch-all target naming mailbox `name`: `name` itself, or
/// `name@` a hosted domain.
pub(crate) fn references_to(doc: &DocumentMut, name: &str, policy: &Policy) -> Vec<Reference> {
    let names_it = |t: &str| match t.split_once('@') {
        None => t == name,
        Some((local, domain)) => {
            local == name
                && policy
                    .domains
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(domain))
        }
    };
    let mut out = Vec::new();
    for table in ["aliases", "catch_all"] {
        let Some(t) = doc.get(table).and_then(Item::as_table_like) else {
            continue;
        };
        for (key, item) in t.iter() {
            for target in strings(item) {
                if names_it(target) {
                    out.push(Reference {
                        table,
                        key: key.to_string(),
                        target: target.to_string(),
                    });
                }
            }
        }
    }
    out
}

fn strings(item: &Item) -> Vec<&str> {
    match item {
        Item::Value(Value::String(s)) => vec![s.value().as_str()],
        Item::Value(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    }
}

/// Takes one reference out; an alias or catch-all left with nothing goes too.
fn remove_target(doc: &mut DocumentMut, r: &Reference) {
    let Some(t) = doc.get_mut(r.table).and_then(Item::as_table_like_mut) else {
        return;
    };
    let empty = match t.get_mut(&r.key) {
        Some(Item::Value(Value::Array(a))) => {
            remove_from(a, &r.target);
            a.is_empty()
        }
        Some(_) => true,
        None => false,
    };
    if empty {
        t.remove(&r.key);
    }
}

/// The table `key` of the root (created at the end when missing), however written:
/// `[key]`, dotted keys or an inline table.
fn table_at<'d>(
    doc: &'d mut DocumentMut,
    key: &str,
    file: &str,
) -> Result<&'d mut dyn TableLike, Refused> {
    if !doc.contains_key(key) {
        let mut t = Table::new();
        // `[mailboxes.NAME]` headers need no `[mailboxes]` of their own.
        t.set_implicit(key == "mailboxes");
        t.decor_mut().set_prefix("\n");
        doc.insert(key, Item::Table(t));
    }
    doc.get_mut(key)
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| Refused::Shape {
            key: key.to_string(),
            expected: "a table",
            path: file.to_string(),
        })
}

fn mailbox<'d>(
    doc: &'d mut DocumentMut,
    name: &str,
    file: &str,
) -> Result<&'d mut dyn TableLike, Refused> {
    let not_found = || Refused::NotFound {
        what: "mailbox",
        name: name.to_string(),
        path: file.to_string(),
    };
    let mailboxes = doc
        .get_mut("mailboxes")
        .and_then(Item::as_table_like_mut)
        .ok_or_else(not_found)?;
    let item = mailboxes.get_mut(name).ok_or_else(not_found)?;
    item.as_table_like_mut().ok_or_else(|| Refused::Shape {
        key: format!("mailboxes.{name}"),
        expected: "a table",
        path: file.to_string(),
    })
}

/// An alias value as a list: a single string becomes a one-element list in place.
fn as_list<'i>(item: &'i mut Item, key: &str, file: &str) -> Result<&'i mut Array, Refused> {
    if let Some(s) = item.as_value().and_then(Value::as_str) {
        let decor = item
            .as_value()
            .map(|v| v.decor().clone())
            .unwrap_or_default();
        let mut list = Array::new();
        list.push(s);
        let mut value = Value::Array(list);
        *value.decor_mut() = decor;
        *item = Item::Value(value);
    }
    item.as_array_mut().ok_or_else(|| Refused::Shape {
        key: key.to_string(),
        expected: "a string or a list of strings",
        path: file.to_string(),
    })
}

/// Sets `key`, keeping the comment after an existing value and the spacing around it.
fn set_keeping_decor(table: &mut dyn TableLike, key: &str, mut value: Value) {
    match table.get_mut(key).and_then(Item::as_value_mut) {
        Some(old) => {
            *value.decor_mut() = old.decor().clone();
            *old = value;
        }
        None => {
            table.insert(key, Item::Value(value));
        }
    }
}

/// Removes `target` from a list; the new first element gets the old first one's
/// spacing, so `["a", "b"]` becomes `["b"]`, not `[ "b"]`.
fn remove_from(list: &mut Array, target: &str) {
    let first_prefix = list.get(0).and_then(|v| v.decor().prefix().cloned());
    list.retain(|v| v.as_str() != Some(target));
    if let (Some(prefix), Some(first)) = (first_prefix, list.get_mut(0)) {
        first.decor_mut().set_prefix(prefix);
    }
}

/// A removed table's header comments up to the last blank line above it belong to
/// what came before (the file's own heading, say), not to it: they move to the
/// table that follows it.
fn keep_leading_comments(doc: &mut DocumentMut, removed: &Item) {
    let Some(table) = removed.as_table() else {
        return;
    };
    let (Some(position), Some(prefix)) = (
        table.position(),
        table.decor().prefix().and_then(|p| p.as_str()),
    ) else {
        return;
    };
    let Some(blank) = prefix.rfind("\n\n") else {
        return;
    };
    let keep = &prefix[..=blank];
    if !keep.contains('#') {
        return;
    }
    fn next<'t>(t: &'t mut Table, after: isize, best: &mut Option<(isize, &'t mut Table)>) {
        for (_, item) in t.iter_mut() {
            if let Item::Table(child) = item {
                let p = child
                    .position()
                    .filter(|p| *p > after && !child.is_implicit());
                let child: &'t mut Table = child;
                // Children first would need two borrows; tables nest shallowly here.
                if let Some(p) = p
                    && best.as_ref().is_none_or(|(b, _)| p < *b)
                {
                    *best = Some((p, child));
                } else {
                    next(child, after, best);
                }
            }
        }
    }
    let keep = keep.to_string();
    let mut best = None;
    next(doc.as_table_mut(), position, &mut best);
    match best {
        Some((_, t)) => {
            let old = t
                .decor()
                .prefix()
                .and_then(|p| p.as_str())
                .unwrap_or("")
                .to_string();
            t.decor_mut().set_prefix(format!("{keep}{old}"));
        }
        None => {
            let trailing = doc.trailing().as_str().unwrap_or("").to_string();
            doc.set_trailing(format!("{trailing}{keep}"));
        }
    }
}

fn decor_has_comment(decor: &toml_edit::Decor) -> bool {
    let has = |r: Option<&toml_edit::RawString>| {
        r.and_then(|r| r.as_str()).is_some_and(|s| s.contains('#'))
    };
    has(decor.prefix()) || has(decor.suffix())
}

/// What the lists show, for people and for scripts (`--json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct MailboxEntry {
    pub(crate) name: String,
    pub(crate) addresses: Vec<String>,
    /// In bytes.
    pub(crate) quota: Option<u64>,
    pub(crate) disabled: bool,
    pub(crate) send_as: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct AliasEntry {
    /// An address, or `@domain` for a catch-all.
    pub(crate) address: String,
    pub(crate) targets: Vec<String>,
    /// The mailboxes it finally delivers to.
    pub(crate) mailboxes: Vec<String>,
    /// Whether it also forwards outside the hosted domains.
    pub(crate) external: bool,
}

pub(crate) fn mailbox_list(accounts: &Accounts, policy: &Policy) -> Vec<MailboxEntry> {
    accounts
        .mailboxes
        .values()
        .map(|m| MailboxEntry {
            name: m.name.clone(),
            addresses: policy
                .domains
                .iter()
                .map(|d| format!("{}@{d}", m.name))
                .collect(),
            quota: m.quota,
            disabled: m.disabled,
            send_as: m
                .send_as
                .iter()
                .map(|s| match s {
                    super::SendAs::Address(a) => a.to_string(),
                    super::SendAs::Domain(d) => format!("@{d}"),
                })
                .collect(),
        })
        .collect()
}

pub(crate) fn alias_list(accounts: &Accounts) -> Vec<AliasEntry> {
    fn entry<'a>(
        accounts: &'a Accounts,
        address: String,
        targets: Vec<TargetRef<'a>>,
    ) -> AliasEntry {
        let (mailboxes, external) = accounts.expand(targets.iter().copied());
        AliasEntry {
            address,
            targets: targets.into_iter().map(target_text).collect(),
            mailboxes: mailboxes.into_iter().map(str::to_string).collect(),
            external,
        }
    }
    let aliases = accounts
        .aliases
        .iter()
        .map(|(a, t)| entry(accounts, a.to_string(), t.iter().collect()));
    let catch_alls = accounts.catch_all.iter().map(|(d, t)| {
        entry(
            accounts,
            format!("@{d}"),
            t.iter().map(Target::as_ref).collect(),
        )
    });
    aliases.chain(catch_alls).collect()
}

fn target_text(t: TargetRef<'_>) -> String {
    match t {
        TargetRef::Mailbox(name) => name.to_string(),
        TargetRef::Alias(a) | TargetRef::External(a) => a.to_string(),
    }
}

#[cfg(test)]
#[path = "edit_tests.rs"]
mod tests;
