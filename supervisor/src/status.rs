//! What the daemon reports: to systemd (one STATUS line), to the journal, and over
//! D-Bus to `postmaster status` (this struct, as JSON).

use serde::{Deserialize, Serialize};

use crate::systemd::UnitState;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Status {
    pub(crate) host_name: String,
    pub(crate) domains: Vec<String>,
    pub(crate) accounts: AccountsStatus,
    pub(crate) certificate: CertificateStatus,
    /// The last time postfix or the TLS front was reloaded, and how it went.
    pub(crate) last_reload: Option<Event>,
    /// Certificate renewal over ACME, when that is the certificate's source.
    pub(crate) acme: Option<AcmeStatus>,
    pub(crate) units: Vec<UnitState>,
    /// DKIM signing, when it is on.
    #[serde(default)]
    pub(crate) dkim: Option<DkimStatus>,
    /// The checks of mail arriving on port 25, when they are on.
    #[serde(default)]
    pub(crate) inbound: Option<InboundStatus>,
    /// Password guessing: the limits and the addresses blocked now.
    #[serde(default)]
    pub(crate) logins: Option<LoginsStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LoginsStatus {
    pub(crate) block_after_failures: u32,
    pub(crate) failure_window_seconds: u64,
    pub(crate) block_seconds: u64,
    /// Where dovecot's auth asks (its auth_policy_server_url).
    pub(crate) policy_address: String,
    /// Why the daemon cannot answer dovecot there (logins are then not limited).
    pub(crate) error: Option<String>,
    /// Filled in at each Status call (blocks change between applies).
    pub(crate) blocked: Vec<crate::logins::Block>,
}

/// Which units the checks of port 25 depend on; their state is in `units`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InboundStatus {
    /// rspamd: while it does not run, mail on 25 is deferred (4xx).
    pub(crate) checker_unit: String,
    /// valkey, while learning is on: while it does not run, mail still flows, but
    /// rspamd's Bayes filter neither classifies nor learns.
    pub(crate) bayes_unit: Option<String>,
    /// The local resolver the checks ask (unbound), with `[inbound] resolver =
    /// "local"`: while it does not run, the checks cannot look anything up and
    /// mail on 25 is deferred.
    pub(crate) resolver_unit: Option<String>,
}

/// Whether a unit is running, as far as is known ("unknown": not asked yet).
fn running(u: &UnitState) -> bool {
    matches!(u.active_state.as_str(), "active" | "reloading" | "unknown")
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DkimStatus {
    /// The unit that signs (rspamd): while it does not run, submitted mail is
    /// refused with a temporary error.
    pub(crate) signer_unit: String,
    pub(crate) domains: Vec<DkimDomainStatus>,
    /// Why keys or rspamd's table could not be made or changed, if so.
    pub(crate) error: Option<String>,
    /// When DNS was last asked about the selectors (RFC 3339).
    pub(crate) last_dns_check: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DkimDomainStatus {
    pub(crate) domain: String,
    /// Every key whose record should be published, the one in use first.
    pub(crate) keys: Vec<DkimKeyStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DkimKeyStatus {
    pub(crate) selector: String,
    /// RFC 3339.
    pub(crate) created: String,
    /// "in use since …", "waiting for its DNS record …", "replaced; keep published until …".
    pub(crate) phase: String,
    pub(crate) in_use: bool,
    /// What DNS said: "present", "missing", "different: …", "unknown: …", or
    /// "not checked yet".
    pub(crate) record: String,
}

impl DkimKeyStatus {
    /// A key in use whose record is missing or wrong: mail signed with it fails
    /// DKIM at the receiver.
    pub(crate) fn broken(&self) -> bool {
        self.in_use && (self.record == "missing" || self.record.starts_with("different"))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AccountsStatus {
    pub(crate) file: String,
    /// Counts of what is being served (the last good accounts file).
    pub(crate) mailboxes: usize,
    pub(crate) alias_addresses: usize,
    pub(crate) catch_alls: usize,
    /// When the served accounts were last applied.
    pub(crate) applied: Option<Event>,
    /// Why the file as it is now is not being served (every problem), if it is not.
    pub(crate) errors: Vec<String>,
    /// The errors are not the file's: it is valid, but writing what follows from it
    /// failed (a full disk, a map postmap refused); the daemon tries again by itself.
    #[serde(default)]
    pub(crate) apply_failed: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CertificateStatus {
    /// "acme" or "files".
    pub(crate) source: String,
    /// The certificate being served.
    pub(crate) subject: String,
    pub(crate) names: Vec<String>,
    /// RFC 3339, UTC.
    pub(crate) not_after: String,
    pub(crate) days_left: i64,
    pub(crate) fingerprint: String,
    pub(crate) installed: Option<Event>,
    /// What the served-certificate check after the last install found.
    pub(crate) verified: Option<Event>,
    /// Why the source pair as it is now is not being served, if it is not.
    pub(crate) error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AcmeStatus {
    pub(crate) directory: String,
    /// The last attempt to obtain a certificate, and how it ended.
    pub(crate) last_attempt: Option<Event>,
    /// RFC 3339, UTC.
    pub(crate) next_attempt: String,
    /// Failed attempts in a row (the back-off grows with them).
    pub(crate) failures: u32,
    /// The renewal window the CA suggests (ARI, RFC 9773), start and end in RFC
    /// 3339; `None` when it suggests none (renewal at two thirds of the lifetime).
    #[serde(default)]
    pub(crate) renewal_window: Option<[String; 2]>,
}

/// Something that happened, when, and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Event {
    /// RFC 3339, UTC.
    pub(crate) at: String,
    pub(crate) ok: bool,
    pub(crate) detail: String,
}

impl Status {
    pub(crate) fn healthy(&self) -> bool {
        self.accounts.errors.is_empty()
            && self.certificate.error.is_none()
            && self.last_reload.as_ref().is_none_or(|e| e.ok)
            && self.certificate.verified.as_ref().is_none_or(|e| e.ok)
            && self.logins.as_ref().is_none_or(|l| l.error.is_none())
            && self
                .acme
                .as_ref()
                .and_then(|a| a.last_attempt.as_ref())
                .is_none_or(|e| e.ok)
            && self.dkim.as_ref().is_none_or(|d| {
                d.error.is_none()
                    && !d
                        .domains
                        .iter()
                        .flat_map(|x| &x.keys)
                        .any(DkimKeyStatus::broken)
                    && self
                        .units
                        .iter()
                        .filter(|u| u.name == d.signer_unit)
                        .all(running)
            })
            && self
                .units
                .iter()
                .all(|u| running(u) || self.stopped(u).is_empty())
    }

    /// What it means for the mail that `unit` does not run: one sentence per role
    /// it has (rspamd signs and checks); empty for units without such a role here.
    pub(crate) fn stopped(&self, unit: &UnitState) -> Vec<&'static str> {
        let mut what = Vec::new();
        if let Some(i) = &self.inbound {
            if i.checker_unit == unit.name {
                what.push("mail arriving on port 25 is deferred (4xx): sending servers keep it and retry, nothing is lost and nothing arrives unchecked");
            }
            if i.resolver_unit.as_deref() == Some(unit.name.as_str()) {
                what.push("rspamd cannot look up SPF, DKIM, DMARC or blocklists: mail arriving on port 25 is deferred (4xx): sending servers keep it and retry, nothing is lost and nothing arrives unchecked");
            }
            if i.bayes_unit.as_deref() == Some(unit.name.as_str()) {
                what.push("mail still flows and is checked, but rspamd's Bayes filter neither classifies nor learns: moving mail into or out of Junk teaches nothing meanwhile");
            }
        }
        if self
            .dkim
            .as_ref()
            .is_some_and(|d| d.signer_unit == unit.name)
        {
            what.push("submitted mail is refused with a temporary error (451 4.7.1) and the host's own mail waits in the queue: nothing leaves unsigned, nothing is lost");
        }
        what
    }

    /// The one line systemd shows (`systemctl status postmaster`).
    pub(crate) fn summary(&self) -> String {
        let mut line = format!(
            "serving {} mailbox{} for {}",
            self.accounts.mailboxes,
            if self.accounts.mailboxes == 1 {
                ""
            } else {
                "es"
            },
            self.domains.join(", ")
        );
        // A certificate is known by its fingerprint: ACME certificates have no subject.
        if !self.certificate.fingerprint.is_empty() {
            line.push_str(&format!(
                "; certificate valid {} more days",
                self.certificate.days_left
            ));
        }
        if let Some(first) = self.accounts.errors.first() {
            let more = self.accounts.errors.len() - 1;
            line.push_str(&if self.accounts.apply_failed {
                format!("; ACCOUNTS NOT APPLIED (last good kept, retrying): {first}")
            } else {
                format!("; ACCOUNTS FILE REFUSED (last good kept): {first}")
            });
            if more > 0 {
                line.push_str(&format!(" (+{more} more)"));
            }
        }
        if let Some(e) = &self.certificate.error {
            line.push_str(&format!("; NEW CERTIFICATE REFUSED (current kept): {e}"));
        }
        if let Some(e) = self.last_reload.as_ref().filter(|e| !e.ok) {
            line.push_str(&format!("; RELOAD FAILED: {}", e.detail));
        }
        if let Some(e) = self.certificate.verified.as_ref().filter(|e| !e.ok) {
            line.push_str(&format!("; SERVED CERTIFICATE CHECK FAILED: {}", e.detail));
        }
        if let Some(e) = self
            .acme
            .as_ref()
            .and_then(|a| a.last_attempt.as_ref())
            .filter(|e| !e.ok)
        {
            line.push_str(&format!("; RENEWAL FAILING: {}", e.detail));
        }
        for u in self.units.iter().filter(|u| !running(u)) {
            let what = self.stopped(u);
            if !what.is_empty() {
                line.push_str(&format!(
                    "; {} {}: {}",
                    u.name,
                    u.active_state.to_uppercase(),
                    what.join("; ")
                ));
            }
        }
        if let Some(d) = &self.dkim {
            if let Some(e) = &d.error {
                line.push_str(&format!("; DKIM: {e}"));
            }
            for (domain, key) in d
                .domains
                .iter()
                .flat_map(|x| x.keys.iter().map(move |k| (&x.domain, k)))
                .filter(|(_, k)| k.broken())
            {
                line.push_str(&format!(
                    "; DKIM RECORD {} for {}._domainkey.{domain} (see postmaster dns)",
                    key.record.to_uppercase(),
                    key.selector
                ));
            }
        }
        line
    }

    /// What `postmaster status` prints.
    pub(crate) fn human(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!(
            "postmaster: {}",
            if self.healthy() {
                "healthy"
            } else {
                "DEGRADED"
            }
        ));
        line(format!(
            "host:       {} ({})",
            self.host_name,
            self.domains.join(", ")
        ));
        let a = &self.accounts;
        line(format!(
            "accounts:   {} mailboxes, {} alias addresses, {} catch-alls from {}",
            a.mailboxes, a.alias_addresses, a.catch_alls, a.file
        ));
        if let Some(e) = &a.applied {
            line(format!("            applied {}", e.at));
        }
        for err in &a.errors {
            line(format!("  error:    {err}"));
        }
        if !a.errors.is_empty() {
            line("            (the last good accounts keep being served)".into());
        }
        let c = &self.certificate;
        line(format!(
            "tls:        {}, valid until {} ({} days left)",
            certificate_label(c),
            c.not_after,
            c.days_left
        ));
        line(format!(
            "            source: {}, sha256 {}",
            c.source, c.fingerprint
        ));
        if let Some(e) = &c.installed {
            line(format!("            installed {}", e.at));
        }
        if let Some(e) = &c.verified {
            line(format!(
                "            served check {}: {}",
                if e.ok { "ok" } else { "FAILED" },
                e.detail
            ));
        }
        if let Some(e) = &c.error {
            line(format!("  error:    {e}"));
            line("            (the current certificate keeps being served)".into());
        }
        if let Some(a) = &self.acme {
            line(format!("acme:       {}", a.directory));
            if let Some(e) = &a.last_attempt {
                line(format!(
                    "            last attempt {} at {}: {}",
                    if e.ok { "ok" } else { "FAILED" },
                    e.at,
                    e.detail
                ));
            }
            line(format!(
                "            next attempt {} ({} failures in a row)",
                a.next_attempt, a.failures
            ));
            if let Some([start, end]) = &a.renewal_window {
                line(format!(
                    "            renewal window from the CA: {start} to {end}"
                ));
            }
        }
        if let Some(e) = &self.last_reload {
            line(format!(
                "reload:     {} at {}: {}",
                if e.ok { "ok" } else { "FAILED" },
                e.at,
                e.detail
            ));
        }
        if let Some(d) = &self.dkim {
            line(format!("dkim:       signed by {}", d.signer_unit));
            for x in &d.domains {
                if x.keys.is_empty() {
                    line(format!("            {}: no key yet", x.domain));
                }
                for k in &x.keys {
                    line(format!(
                        "            {} {}: {}; record {} (made {})",
                        x.domain, k.selector, k.phase, k.record, k.created
                    ));
                }
            }
            if let Some(at) = &d.last_dns_check {
                line(format!("            DNS asked {at}"));
            }
            if let Some(e) = &d.error {
                line(format!("  error:    {e}"));
            }
        }
        if let Some(i) = &self.inbound {
            line(format!(
                "inbound:    port 25 checked by {}{}",
                i.checker_unit,
                i.resolver_unit
                    .as_ref()
                    .map(|r| format!(", DNS from {r} (this host's resolver)"))
                    .unwrap_or_else(|| ", DNS from /etc/resolv.conf".into())
            ));
            if let Some(bayes) = &i.bayes_unit {
                line(format!(
                    "            learning from Junk, Bayes kept by {bayes}"
                ));
            }
        }
        if let Some(l) = &self.logins {
            if l.block_after_failures == 0 {
                line(
                    "logins:     failed logins block nobody ([logins] block_after_failures = 0)"
                        .into(),
                );
            } else {
                line(format!(
                    "logins:     {} failed within {} s block an address for {} s; {} blocked",
                    l.block_after_failures,
                    l.failure_window_seconds,
                    l.block_seconds,
                    l.blocked.len()
                ));
            }
            for b in &l.blocked {
                line(format!(
                    "            {} blocked until {} ({} failures, last over {}; postmaster unblock {})",
                    b.address,
                    crate::tls::format_rfc3339(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(b.until)
                    ),
                    b.failures,
                    b.protocol,
                    b.address
                ));
            }
            if let Some(e) = &l.error {
                line(format!("  error:    {e}"));
            }
        }
        for u in &self.units {
            line(format!(
                "unit:       {} {} (main PID {})",
                u.name, u.active_state, u.main_pid
            ));
            if !running(u) {
                for what in self.stopped(u) {
                    line(format!("            not running: {what}"));
                }
            }
        }
        out
    }
}

/// What the certificate is called in `postmaster status`: its names, and its
/// subject where it has one (CAs are dropping the CN, so ACME certificates have none).
fn certificate_label(c: &CertificateStatus) -> String {
    let names = c.names.join(", ");
    if c.subject.is_empty() {
        names
    } else {
        format!("{} ({names})", c.subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_without_a_subject_is_shown_by_its_names() {
        let mut s = Status {
            domains: vec!["example.org".into()],
            ..Default::default()
        };
        s.certificate.names = vec!["mail.example.org".into(), "example.org".into()];
        s.certificate.fingerprint = "ab".repeat(32);
        s.certificate.not_after = "2027-03-01T00:00:00Z".into();
        s.certificate.days_left = 89;
        assert!(s.human().contains("tls:        mail.example.org, example.org, valid until 2027-03-01T00:00:00Z (89 days left)\n"), "{}", s.human());
        assert_eq!(
            s.summary(),
            "serving 0 mailboxes for example.org; certificate valid 89 more days"
        );
        s.certificate.subject = "CN=mail.example.org".into();
        assert!(
            s.human().contains(
                "tls:        CN=mail.example.org (mail.example.org, example.org), valid until"
            ),
            "{}",
            s.human()
        );
    }

    #[test]
    fn summary_names_what_is_wrong() {
        let mut s = Status {
            domains: vec!["example.org".into()],
            ..Default::default()
        };
        s.accounts.mailboxes = 2;
        assert_eq!(s.summary(), "serving 2 mailboxes for example.org");
        assert!(s.healthy());
        s.accounts.errors = vec!["a.toml:3:1: bad".into(), "a.toml:4:1: worse".into()];
        assert_eq!(
            s.summary(),
            "serving 2 mailboxes for example.org; ACCOUNTS FILE REFUSED (last good kept): a.toml:3:1: bad (+1 more)"
        );
        assert!(!s.healthy());
        assert!(s.human().contains("  error:    a.toml:4:1: worse\n"));
        // A valid file whose apply failed is not called refused.
        s.accounts.errors = vec!["writing /var/lib/postmaster/generated/.users.postmaster-tmp: No space left on device (os error 28)".into()];
        s.accounts.apply_failed = true;
        assert_eq!(
            s.summary(),
            "serving 2 mailboxes for example.org; ACCOUNTS NOT APPLIED (last good kept, retrying): writing /var/lib/postmaster/generated/.users.postmaster-tmp: No space left on device (os error 28)"
        );
        assert!(!s.healthy());
    }

    #[test]
    fn a_dkim_record_that_cannot_verify_is_a_problem_and_an_unknown_one_is_not() {
        let key = |record: &str| DkimKeyStatus {
            selector: "pm20261205a".into(),
            created: "2026-12-05T22:00:00Z".into(),
            phase: "in use since 2026-12-05 22:00:00 UTC".into(),
            in_use: true,
            record: record.into(),
        };
        let mut s = Status {
            domains: vec!["example.org".into()],
            units: vec![UnitState {
                name: "rspamd.service".into(),
                active_state: "active".into(),
                main_pid: 7,
            }],
            dkim: Some(DkimStatus {
                signer_unit: "rspamd.service".into(),
                domains: vec![DkimDomainStatus {
                    domain: "example.org".into(),
                    keys: vec![key("present")],
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(s.healthy());
        assert!(s.human().contains("            example.org pm20261205a: in use since 2026-12-05 22:00:00 UTC; record present (made 2026-12-05T22:00:00Z)\n"), "{}", s.human());
        s.dkim.as_mut().unwrap().domains[0].keys[0] = key("unknown: no answer");
        assert!(s.healthy());
        s.dkim.as_mut().unwrap().domains[0].keys[0] = key("missing");
        assert!(!s.healthy());
        assert_eq!(
            s.summary(),
            "serving 0 mailboxes for example.org; DKIM RECORD MISSING for pm20261205a._domainkey.example.org (see postmaster dns)"
        );
        // A key waiting for its record is not a problem: nothing is signed with it.
        let mut waiting = key("missing");
        waiting.in_use = false;
        s.dkim.as_mut().unwrap().domains[0].keys = vec![key("present"), waiting];
        assert!(s.healthy());
        s.units[0].active_state = "failed".into();
        assert!(!s.healthy());
    }

    #[test]
    fn a_stopped_rspamd_valkey_or_unbound_says_what_happens_to_mail() {
        let unit = |name: &str, state: &str| UnitState {
            name: name.into(),
            active_state: state.into(),
            main_pid: 0,
        };
        let mut s = Status {
            domains: vec!["example.org".into()],
            units: vec![
                unit("rspamd.service", "active"),
                unit("valkey-server.service", "active"),
                unit("unbound.service", "active"),
            ],
            inbound: Some(InboundStatus {
                checker_unit: "rspamd.service".into(),
                bayes_unit: Some("valkey-server.service".into()),
                resolver_unit: Some("unbound.service".into()),
            }),
            ..Default::default()
        };
        assert!(s.healthy());
        assert!(s.human().contains("inbound:    port 25 checked by rspamd.service, DNS from unbound.service (this host's resolver)\n            learning from Junk, Bayes kept by valkey-server.service\n"), "{}", s.human());
        assert!(!s.human().contains("not running"));

        s.units[1] = unit("valkey-server.service", "inactive");
        assert!(!s.healthy());
        assert_eq!(
            s.summary(),
            "serving 0 mailboxes for example.org; valkey-server.service INACTIVE: mail still flows and is checked, but rspamd's Bayes filter neither classifies nor learns: moving mail into or out of Junk teaches nothing meanwhile"
        );
        assert!(s.human().contains("unit:       valkey-server.service inactive (main PID 0)\n            not running: mail still flows and is checked, but rspamd's Bayes filter neither classifies nor learns"), "{}", s.human());

        s.units[1] = unit("valkey-server.service", "active");
        s.units[2] = unit("unbound.service", "inactive");
        assert!(!s.healthy());
        assert_eq!(
            s.summary(),
            "serving 0 mailboxes for example.org; unbound.service INACTIVE: rspamd cannot look up SPF, DKIM, DMARC or blocklists: mail arriving on port 25 is deferred (4xx): sending servers keep it and retry, nothing is lost and nothing arrives unchecked"
        );
        // With the system's resolver, unbound is none of the checks' business.
        s.inbound.as_mut().unwrap().resolver_unit = None;
        assert!(s.healthy());
        assert!(
            s.human().contains(
                "inbound:    port 25 checked by rspamd.service, DNS from /etc/resolv.conf\n"
            ),
            "{}",
            s.human()
        );

        s.units = vec![
            unit("rspamd.service", "failed"),
            unit("valkey-server.service", "active"),
        ];
        s.dkim = Some(DkimStatus {
            signer_unit: "rspamd.service".into(),
            ..Default::default()
        });
        assert!(!s.healthy());
        let human = s.human();
        assert!(human.contains("unit:       rspamd.service failed (main PID 0)\n            not running: mail arriving on port 25 is deferred (4xx): sending servers keep it and retry, nothing is lost and nothing arrives unchecked\n            not running: submitted mail is refused with a temporary error (451 4.7.1)"), "{human}");

        // A unit with no role in mail checks says nothing more than its state.
        s.units = vec![unit("dovecot.service", "inactive")];
        assert!(s.stopped(&s.units[0]).is_empty());
    }
}
