//! The DNS records a mail host needs, as `postmaster dns` prints them, and the
//! judgement of what DNS actually says about each (`postmaster dns --check`).
//!
//! Pure: [`records`] lists what should be published, [`zone_text`] prints it in
//! zone-file form, [`judge`] compares what was found with what should be. Asking
//! DNS is [`lookup`]'s.

pub(crate) mod lookup;

use std::net::IpAddr;

use serde::Serialize;

use crate::config::Config;
use crate::dkim;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[allow(
    clippy::upper_case_acronyms,
    reason = "record types as DNS spells them, also in `postmaster dns --json`"
)]
pub(crate) enum RType {
    A,
    AAAA,
    MX,
    TXT,
    SRV,
    PTR,
}

impl RType {
    pub(crate) fn name(self) -> &'static str {
        match self {
            RType::A => "A",
            RType::AAAA => "AAAA",
            RType::MX => "MX",
            RType::TXT => "TXT",
            RType::SRV => "SRV",
            RType::PTR => "PTR",
        }
    }
}

/// What a record is for: decides how what DNS says is judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Purpose {
    /// The host's address (A/AAAA).
    Address,
    /// The reverse name of the host's address, set at the hosting provider.
    ReverseName,
    Mx,
    Spf,
    /// A DKIM selector's key; `key` is the state's key (its phase says why it
    /// must be published).
    Dkim {
        selector: String,
        phase: String,
    },
    Dmarc,
    /// Client configuration discovery (RFC 6186); recommended, not required.
    Srv,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Record {
    /// The hosted domain the record serves (the host name for its own records).
    pub(crate) domain: String,
    /// Fully qualified, without the trailing dot.
    pub(crate) name: String,
    #[serde(rename = "type")]
    pub(crate) rtype: RType,
    /// The record's data in presentation form; a TXT record's whole text, unsplit.
    pub(crate) value: String,
    /// Whether mail suffers without it (`--check` exits non-zero).
    pub(crate) required: bool,
    pub(crate) purpose: Purpose,
    /// One line for a person.
    pub(crate) comment: String,
}

/// The SRV records of RFC 6186 (and RFC 8314's submissions): service, port.
/// Implicit TLS first (RFC 8314 recommends it to clients).
const SRV: &[(&str, u16, u16)] = &[
    ("_submissions._tcp", 465, 0),
    ("_submission._tcp", 587, 10),
    ("_imaps._tcp", 993, 0),
    ("_imap._tcp", 143, 10),
    ("_pop3s._tcp", 995, 0),
    ("_pop3._tcp", 110, 10),
];

/// Every record the mail host needs, per hosted domain, then the host's own.
pub(crate) fn records(config: &Config, keys: &dkim::State, now: i64) -> Vec<Record> {
    let host = &config.host_name;
    let mut out = Vec::new();
    for domain in &config.domains {
        out.push(Record {
            domain: domain.clone(),
            name: domain.clone(),
            rtype: RType::MX,
            value: format!("10 {host}."),
            required: true,
            purpose: Purpose::Mx,
            comment: format!("mail for {domain} is delivered to {host}"),
        });
        out.push(Record {
            domain: domain.clone(),
            name: domain.clone(),
            rtype: RType::TXT,
            value: config.dns.spf.clone(),
            required: true,
            purpose: Purpose::Spf,
            comment: "SPF: which hosts may send mail from this domain".into(),
        });
        if config.dkim.enabled {
            let algorithms = dkim::Algorithm::enabled(&config.dkim);
            for key in dkim::published(keys, domain, now, &algorithms) {
                out.push(Record {
                    domain: domain.clone(),
                    name: key.record_name(domain),
                    rtype: RType::TXT,
                    value: key.record_text(),
                    required: true,
                    purpose: Purpose::Dkim {
                        selector: key.selector.clone(),
                        phase: dkim::describe_phase(&key, now),
                    },
                    comment: format!(
                        "DKIM key {}: {}",
                        key.selector,
                        dkim::describe_phase(&key, now)
                    ),
                });
            }
        }
        out.push(Record {
            domain: domain.clone(),
            name: format!("_dmarc.{domain}"),
            rtype: RType::TXT,
            value: config.dns.dmarc.clone(),
            required: true,
            purpose: Purpose::Dmarc,
            comment: "DMARC: what receivers do with mail that fails SPF and DKIM".into(),
        });
        for (service, port, priority) in SRV {
            out.push(Record {
                domain: domain.clone(),
                name: format!("{service}.{domain}"),
                rtype: RType::SRV,
                value: format!("{priority} 1 {port} {host}."),
                required: false,
                purpose: Purpose::Srv,
                comment: "mail clients find the server by themselves (RFC 6186)".into(),
            });
        }
    }
    for ip in &config.dns.addresses {
        out.push(Record {
            domain: host.clone(),
            name: host.clone(),
            rtype: if ip.is_ipv4() { RType::A } else { RType::AAAA },
            value: ip.to_string(),
            required: true,
            purpose: Purpose::Address,
            comment: format!("{host} is this server"),
        });
        out.push(Record {
            domain: host.clone(),
            name: reverse_name(*ip),
            rtype: RType::PTR,
            value: format!("{host}."),
            required: true,
            purpose: Purpose::ReverseName,
            comment: "set at your hosting provider, not in your zone: receivers check that the address names the host".into(),
        });
    }
    out
}

/// The in-addr.arpa / ip6.arpa name of an address.
pub(crate) fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut labels: Vec<String> = v6
                .octets()
                .iter()
                .flat_map(|b| [b >> 4, b & 0xf])
                .map(|n| format!("{n:x}"))
                .collect();
            labels.reverse();
            format!("{}.ip6.arpa", labels.join("."))
        }
    }
}

/// The records in zone-file form, grouped by domain, each with its comment.
pub(crate) fn zone_text(config: &Config, records: &[Record]) -> String {
    let ttl = config.dns.ttl;
    let mut out = String::new();
    let mut current: Option<&str> = None;
    for r in records {
        if current != Some(r.domain.as_str()) {
            if current.is_some() {
                out.push('\n');
            }
            out.push_str(&format!("; ---- {} ----\n", r.domain));
            current = Some(&r.domain);
        }
        out.push_str(&format!(
            "; {}{}\n",
            r.comment,
            if r.required { "" } else { " (recommended)" }
        ));
        let data = match r.rtype {
            RType::TXT => quoted_strings(&r.value),
            _ => r.value.clone(),
        };
        out.push_str(&format!("{}. {ttl} IN {} {data}\n", r.name, r.rtype.name()));
    }
    if config.dns.addresses.is_empty() {
        out.push_str(&format!(
            "\n; ---- {host} ----\n; {host} needs A (and AAAA) records with this server's public addresses,\n; and each address a PTR record naming {host}, set at your hosting provider.\n; Put the addresses in [dns] addresses of the configuration to have them printed and checked.\n",
            host = config.host_name
        ));
    }
    out
}

/// A TXT record's text as quoted strings of at most 255 bytes, in parentheses
/// when there are several (how zone files and most DNS providers take them).
fn quoted_strings(text: &str) -> String {
    let strings: Vec<String> = dkim::txt_strings(text)
        .iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    if strings.len() == 1 {
        strings[0].clone()
    } else {
        format!("( {} )", strings.join(" "))
    }
}

/// What DNS says about a record, judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "found", rename_all = "kebab-case")]
pub(crate) enum Verdict {
    Ok,
    Missing,
    /// Something else is there: what.
    Different(String),
    /// DNS did not answer: why.
    Unknown(String),
}

/// What a lookup found at a record's name, in presentation form: MX as
/// `PREF HOST`, SRV as `PRIO WEIGHT PORT HOST`, TXT with each record's strings
/// joined, names with or without the trailing dot.
pub(crate) type Found = Result<Vec<String>, NoAnswer>;

/// Why DNS did not answer one question (a timeout, a failing server): what is
/// there is unknown, which is not the same as missing. The text is the resolver's,
/// shown as the record's `unknown` verdict.
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub(crate) struct NoAnswer(pub(crate) hickory_resolver::net::NetError);

/// Judges what was found at `record.name` (of `record.rtype`) against the record.
pub(crate) fn judge(record: &Record, found: &Found, keys: &dkim::State) -> Verdict {
    let found = match found {
        Ok(found) => found,
        Err(why) => return Verdict::Unknown(why.to_string()),
    };
    match &record.purpose {
        Purpose::Spf => one_of_kind(found, "v=spf1", &record.value, |t| {
            t.split_whitespace().collect::<Vec<_>>().join(" ")
        }),
        Purpose::Dmarc => one_of_kind(found, "v=DMARC1", &record.value, |t| {
            t.split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("; ")
        }),
        Purpose::Dkim { selector, .. } => {
            let key = keys
                .keys(&record.domain)
                .iter()
                .find(|k| &k.selector == selector);
            match key.map(|k| dkim::judge(k, found)) {
                Some(dkim::Seen::Present) => Verdict::Ok,
                Some(dkim::Seen::Missing) | None => Verdict::Missing,
                Some(dkim::Seen::Different(text)) => Verdict::Different(text),
                Some(dkim::Seen::Unknown(why)) => Verdict::Unknown(why),
            }
        }
        Purpose::Mx | Purpose::Srv => {
            // The same target (and port): preference and weight are the owner's.
            let target = |v: &str| {
                let mut parts: Vec<String> = v
                    .split_whitespace()
                    .map(|p| p.trim_end_matches('.').to_ascii_lowercase())
                    .collect();
                let host = parts.pop().unwrap_or_default();
                let port = if record.rtype == RType::SRV {
                    parts.pop().unwrap_or_default()
                } else {
                    String::new()
                };
                (port, host)
            };
            any_of(found, &record.value, target)
        }
        Purpose::Address | Purpose::ReverseName => any_of(found, &record.value, |v| {
            v.trim_end_matches('.').to_ascii_lowercase()
        }),
    }
}

/// One of the records found is `want` once both are normalised (a name may have
/// several MX, SRV, address or PTR records besides ours).
fn any_of<T: PartialEq>(found: &[String], want: &str, norm: impl Fn(&str) -> T) -> Verdict {
    let want = norm(want);
    if found.iter().any(|f| norm(f) == want) {
        Verdict::Ok
    } else if found.is_empty() {
        Verdict::Missing
    } else {
        Verdict::Different(found.join(", "))
    }
}

/// Exactly one record of a kind (SPF and DMARC allow no more: RFC 7208 3.2, RFC
/// 7489 6.6.3), equal to `want` once both are normalised.
fn one_of_kind(
    found: &[String],
    prefix: &str,
    want: &str,
    norm: impl Fn(&str) -> String,
) -> Verdict {
    let of_kind: Vec<&String> = found
        .iter()
        .filter(|t| t.trim_start().starts_with(prefix))
        .collect();
    match of_kind.as_slice() {
        [] => Verdict::Missing,
        [one] if norm(one) == norm(want) => Verdict::Ok,
        [one] => Verdict::Different((*one).clone()),
        many => Verdict::Different(format!(
            "{} records, where only one may be: {}",
            many.len(),
            many.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests;
