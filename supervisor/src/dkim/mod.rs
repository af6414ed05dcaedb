//! DKIM keys that postmaster owns, and that are never ahead of DNS.
//!
//! Each hosted domain has one key in use (`Active`). A rotation makes a new key
//! with a new selector (`Pending`); it is used only once DNS shows its record with
//! exactly that key, and the key it replaces is then `Retiring`: no longer used,
//! but it must stay published until mail signed with it has arrived everywhere. A
//! domain's first key is used at once, since nothing can have been published for
//! it before it existed; `postmaster status` says its record is missing until it
//! is there.
//!
//! Everything here is pure: the [`State`] (persisted as JSON, public keys only),
//! what DNS was seen to say ([`Seen`]), the decision what to do next ([`plan`]),
//! the DNS record text and rspamd's configuration. Making keys and keeping the
//! files is [`store`]'s.

pub(crate) mod store;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What is known about every domain's keys. Survives restarts (`dkim.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct State {
    pub(crate) domains: BTreeMap<String, Vec<Key>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Key {
    /// The DNS label under `_domainkey.<domain>`; new for every key.
    pub(crate) selector: String,
    pub(crate) algorithm: Algorithm,
    /// Unix seconds.
    pub(crate) created: i64,
    /// Base64 of the DER SubjectPublicKeyInfo: the `p=` of the DNS record.
    pub(crate) public_key: String,
    pub(crate) phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Algorithm {
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// A second signature beside the RSA one (RFC 8463), on request: receivers
    /// that do not know Ed25519 ignore it and verify the RSA signature.
    #[serde(rename = "ed25519")]
    Ed25519,
}

impl Algorithm {
    /// The `k=` tag of the DNS record.
    pub(crate) fn dns_tag(self) -> &'static str {
        match self {
            Algorithm::Rsa2048 => "rsa",
            Algorithm::Ed25519 => "ed25519",
        }
    }

    /// The algorithms the configuration signs with: RSA always, Ed25519 too
    /// when asked for.
    pub(crate) fn enabled(dkim: &crate::config::Dkim) -> Vec<Algorithm> {
        let mut algorithms = vec![Algorithm::Rsa2048];
        if dkim.ed25519 {
            algorithms.push(Algorithm::Ed25519);
        }
        algorithms
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub(crate) enum Phase {
    /// Made by a rotation; used once DNS shows it.
    Pending,
    /// The key mail is signed with (one per domain). `since`: Unix seconds.
    Active { since: i64 },
    /// Replaced at `since`; keep its record published until `until`, then it may
    /// be removed.
    Retiring { since: i64, until: i64 },
}

impl Key {
    /// The record's name, without the trailing dot.
    pub(crate) fn record_name(&self, domain: &str) -> String {
        format!("{}._domainkey.{domain}", self.selector)
    }

    /// The TXT record's text (before it is split into strings).
    pub(crate) fn record_text(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm.dns_tag(),
            self.public_key
        )
    }

    /// The private key's file name in the key directory.
    pub(crate) fn file_name(&self, domain: &str) -> String {
        format!("{domain}.{}.key", self.selector)
    }
}

impl State {
    pub(crate) fn keys(&self, domain: &str) -> &[Key] {
        self.domains.get(domain).map_or(&[], Vec::as_slice)
    }

    /// The RSA key in use (every domain has one once postmaster made it).
    pub(crate) fn active(&self, domain: &str) -> Option<&Key> {
        self.active_of(domain, Algorithm::Rsa2048)
    }

    pub(crate) fn active_of(&self, domain: &str, algorithm: Algorithm) -> Option<&Key> {
        self.keys(domain)
            .iter()
            .find(|k| k.algorithm == algorithm && matches!(k.phase, Phase::Active { .. }))
    }

    pub(crate) fn pending_of(&self, domain: &str, algorithm: Algorithm) -> Option<&Key> {
        self.keys(domain)
            .iter()
            .find(|k| k.algorithm == algorithm && k.phase == Phase::Pending)
    }

    /// Puts a new key in; `activate` makes it the one in use at once (a domain's
    /// first key), else it waits for DNS.
    pub(crate) fn add(&mut self, domain: &str, mut key: Key, activate: bool, now: i64) {
        key.phase = if activate {
            Phase::Active { since: now }
        } else {
            Phase::Pending
        };
        self.domains
            .entry(domain.to_string())
            .or_default()
            .push(key);
    }

    /// The pending key becomes the one in use; the one it replaces must stay
    /// published for `keep_published` more seconds. Returns false when there is
    /// no such pending key.
    pub(crate) fn activate(
        &mut self,
        domain: &str,
        selector: &str,
        now: i64,
        keep_published: i64,
    ) -> bool {
        let Some(keys) = self.domains.get_mut(domain) else {
            return false;
        };
        let Some(algorithm) = keys
            .iter()
            .find(|k| k.selector == selector && k.phase == Phase::Pending)
            .map(|k| k.algorithm)
        else {
            return false;
        };
        for k in keys.iter_mut() {
            if k.selector == selector {
                k.phase = Phase::Active { since: now };
            } else if k.algorithm == algorithm && matches!(k.phase, Phase::Active { .. }) {
                k.phase = Phase::Retiring {
                    since: now,
                    until: now + keep_published,
                };
            }
        }
        true
    }

    /// A key no longer used: its record must stay published for `keep_published`
    /// more seconds. Returns false when there is no such key in use or waiting.
    pub(crate) fn retire(
        &mut self,
        domain: &str,
        selector: &str,
        now: i64,
        keep_published: i64,
    ) -> bool {
        let key = self
            .domains
            .get_mut(domain)
            .and_then(|keys| keys.iter_mut().find(|k| k.selector == selector))
            .filter(|k| !matches!(k.phase, Phase::Retiring { .. }));
        match key {
            Some(k) => {
                k.phase = Phase::Retiring {
                    since: now,
                    until: now + keep_published,
                };
                true
            }
            None => false,
        }
    }

    /// A selector no key of `domain` has had: `pm` and the date, then a letter.
    pub(crate) fn new_selector(&self, domain: &str, now: i64) -> String {
        let date: String = crate::tls::format_rfc3339(unix_time(now))[..10]
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        let taken = |s: &str| self.keys(domain).iter().any(|k| k.selector == s);
        for letter in 'a'..='z' {
            let candidate = format!("pm{date}{letter}");
            if !taken(&candidate) {
                return candidate;
            }
        }
        // 26 keys in a day: count on.
        (1..)
            .map(|n| format!("pm{date}z{n}"))
            .find(|c| !taken(c))
            .expect("an unused selector")
    }
}

/// What DNS was seen to say about one selector's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", content = "detail", rename_all = "kebab-case")]
pub(crate) enum Seen {
    /// A TXT record with exactly this key.
    Present,
    /// No DKIM record at that name.
    Missing,
    /// A DKIM record with another key (or a broken one): what was found.
    Different(String),
    /// DNS could not be asked (no answer, server failure): why.
    Unknown(String),
}

/// How `postmaster status` and the journal say it; [`crate::status::DkimKeyStatus`]
/// reads the words "missing" and "different".
impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seen::Present => write!(f, "present"),
            Seen::Missing => write!(f, "missing"),
            Seen::Different(found) => write!(f, "different: {found}"),
            Seen::Unknown(why) => write!(f, "unknown: {why}"),
        }
    }
}

/// Judges the TXT records found at a selector's name (each record's strings
/// already joined) against the key.
pub(crate) fn judge(key: &Key, found: &[String]) -> Seen {
    let dkim: Vec<&String> = found
        .iter()
        .filter(|t| {
            let t = t.trim_start();
            t.starts_with("v=DKIM1") || t.contains("p=")
        })
        .collect();
    if dkim.is_empty() {
        return Seen::Missing;
    }
    for text in &dkim {
        let tags = tags(text);
        let k = tags.get("k").map_or("rsa", String::as_str);
        if tags.get("p").is_some_and(|p| *p == key.public_key) && k == key.algorithm.dns_tag() {
            return Seen::Present;
        }
    }
    Seen::Different(dkim[0].to_string())
}

/// A tag=value list (RFC 6376 3.2); white space inside values is dropped, since
/// base64 in DNS is often wrapped.
fn tags(text: &str) -> BTreeMap<String, String> {
    text.split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_string(),
                v.chars().filter(|c| !c.is_whitespace()).collect(),
            )
        })
        .collect()
}

/// The next thing to do for one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Make a key; `activate`: use it at once (the domain has none of that
    /// algorithm in use).
    Generate {
        domain: String,
        algorithm: Algorithm,
        activate: bool,
    },
    /// DNS shows the pending key: use it.
    Activate { domain: String, selector: String },
    /// A key of an algorithm no longer signed with (Ed25519 turned off): no longer
    /// used, its record kept published while mail signed with it is on its way.
    Retire { domain: String, selector: String },
}

/// When keys are replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Seconds after which the key in use is rotated on its own.
    pub(crate) rotate_after: Option<i64>,
    /// Seconds a replaced key stays published.
    pub(crate) keep_published: i64,
    /// What mail is signed with.
    pub(crate) algorithms: Vec<Algorithm>,
}

impl Policy {
    pub(crate) fn from_config(dkim: &crate::config::Dkim) -> Policy {
        const DAY: i64 = 86_400;
        Policy {
            rotate_after: dkim.rotate_after_days.map(|d| i64::from(d) * DAY),
            keep_published: i64::from(dkim.keep_published_days) * DAY,
            algorithms: Algorithm::enabled(dkim),
        }
    }
}

/// What to do for `domains`, given the keys and what DNS said about them
/// (`seen`, by record name).
pub(crate) fn plan(
    state: &State,
    domains: &[String],
    seen: &BTreeMap<String, Seen>,
    policy: &Policy,
    now: i64,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for domain in domains {
        for &algorithm in &policy.algorithms {
            steps.extend(plan_key(state, domain, algorithm, seen, policy, now));
        }
        steps.extend(
            state
                .keys(domain)
                .iter()
                .filter(|k| !policy.algorithms.contains(&k.algorithm))
                .filter(|k| !matches!(k.phase, Phase::Retiring { .. }))
                .map(|k| Step::Retire {
                    domain: domain.clone(),
                    selector: k.selector.clone(),
                }),
        );
    }
    steps
}

/// What to do for one domain's keys of one algorithm.
fn plan_key(
    state: &State,
    domain: &str,
    algorithm: Algorithm,
    seen: &BTreeMap<String, Seen>,
    policy: &Policy,
    now: i64,
) -> Option<Step> {
    let active = state.active_of(domain, algorithm);
    let pending = state.pending_of(domain, algorithm);
    let domain = domain.to_string();
    match (active, pending) {
        (None, None) => Some(Step::Generate {
            domain,
            algorithm,
            activate: true,
        }),
        // A pending key without one in use (its predecessor was lost): nothing
        // signs for the domain, so waiting for DNS gains nothing.
        (None, Some(p)) => Some(Step::Activate {
            selector: p.selector.clone(),
            domain,
        }),
        (Some(_), Some(p)) => {
            (seen.get(&p.record_name(&domain)) == Some(&Seen::Present)).then(|| Step::Activate {
                selector: p.selector.clone(),
                domain,
            })
        }
        (Some(a), None) => {
            let since = match a.phase {
                Phase::Active { since } => since,
                _ => a.created,
            };
            policy
                .rotate_after
                .is_some_and(|r| now >= since + r)
                .then_some(Step::Generate {
                    domain,
                    algorithm,
                    activate: false,
                })
        }
    }
}

/// The selectors whose records should be in DNS now (in use, waiting to be used,
/// or replaced but still needed), of the algorithms signed with, per domain: what
/// the daemon asks DNS about and `postmaster dns` prints.
pub(crate) fn published(
    state: &State,
    domain: &str,
    now: i64,
    algorithms: &[Algorithm],
) -> Vec<Key> {
    state
        .keys(domain)
        .iter()
        // A retiring key stays listed whatever signs now: mail signed with it is
        // still on its way.
        .filter(|k| algorithms.contains(&k.algorithm) || matches!(k.phase, Phase::Retiring { .. }))
        .filter(|k| match k.phase {
            Phase::Retiring { until, .. } => now < until,
            _ => true,
        })
        .cloned()
        .collect()
}

/// One line about a key, for `postmaster status`.
pub(crate) fn describe_phase(key: &Key, now: i64) -> String {
    match key.phase {
        Phase::Active { since } => format!("in use since {}", fmt_time(since)),
        Phase::Pending => "waiting for its DNS record before it is used".into(),
        Phase::Retiring { until, .. } if now < until => {
            format!("replaced; keep published until {}", fmt_time(until))
        }
        Phase::Retiring { .. } => "replaced; its record may be removed".into(),
    }
}

pub(crate) fn fmt_time(secs: i64) -> String {
    crate::tls::format_utc(unix_time(secs))
}

pub(crate) fn unix_time(secs: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64)
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// rspamd's `dkim_signing` domain table: the keys in use for each of `domains`,
/// one per algorithm signed with (RSA first). A domain without one is absent, so
/// rspamd does not sign for it (the static part of the configuration turns off
/// every fallback key).
pub(crate) fn rspamd_domains(
    state: &State,
    domains: &[String],
    key_dir: &Path,
    algorithms: &[Algorithm],
) -> String {
    let mut out = String::from(
        "# rspamd dkim_signing: the key each hosted domain is signed with.\n\
         # Generated by postmaster; it changes when a rotation completes.\n\
         domain {\n",
    );
    for domain in domains {
        let keys: Vec<&Key> = algorithms
            .iter()
            .filter_map(|a| state.active_of(domain, *a))
            .collect();
        if keys.is_empty() {
            continue;
        }
        out.push_str(&format!("  \"{domain}\" {{\n    selectors [\n"));
        for key in keys {
            out.push_str(&format!(
                "      {{\n        path = \"{}\";\n        selector = \"{}\";\n      }}\n",
                key_dir.join(key.file_name(domain)).display(),
                key.selector
            ));
        }
        out.push_str("    ];\n  }\n");
    }
    out.push_str("}\n");
    out
}

/// A TXT record's text as zone-file strings of at most 255 bytes each (RFC 1035
/// 3.3.14; a DKIM record of an RSA-2048 key is longer than one string).
pub(crate) fn txt_strings(text: &str) -> Vec<String> {
    text.as_bytes()
        .chunks(255)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect()
}

#[cfg(test)]
mod tests;
