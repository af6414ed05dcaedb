//! The daemon's DKIM duties: keep a key for every hosted domain, ask DNS about
//! the selectors on a timer (in a task of its own, so a slow resolver never holds
//! up an accounts edit), switch to a rotated key once DNS shows it, reload rspamd
//! when the key it signs a domain with changes, and report all of it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::Daemon;
use crate::bus::Outcome;
use crate::config::Config;
use crate::dkim::store::DkimError;
use crate::dkim::{self, Step};
use crate::dns::lookup::Dns;
use crate::pipeline;
use crate::status::{DkimDomainStatus, DkimKeyStatus, DkimStatus};
use crate::tls;

/// What DNS said, by record name.
pub(crate) type Seen = BTreeMap<String, dkim::Seen>;

/// One round of DNS questions may take this long at most; what has not answered
/// by then is "unknown" this round.
const DNS_ROUND: Duration = Duration::from_secs(10);

pub(crate) struct Signing {
    seen: Seen,
    last_asked: Option<SystemTime>,
    /// When to ask DNS next; `None` while a round is under way.
    next_ask: Option<Instant>,
    /// Why keys or rspamd's table could not be made or changed.
    error: Option<String>,
}

impl Signing {
    pub(crate) fn new() -> Signing {
        Signing {
            seen: Seen::new(),
            last_asked: None,
            next_ask: Some(Instant::now()),
            error: None,
        }
    }

    /// Resolves when DNS is to be asked again.
    pub(crate) fn due(&self, config: &Config) -> impl std::future::Future<Output = ()> + use<> {
        let at = self.next_ask.filter(|_| config.dkim.enabled);
        async move {
            match at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        }
    }
}

/// Why `postmaster dkim rotate` rotated no key; the command prints the texts.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotRotated {
    #[error("DKIM signing is off ([dkim] enabled = false)")]
    SigningOff,
    #[error("{domain} is not a hosted domain (domains: {})", hosted.join(", "))]
    NotHosted { domain: String, hosted: Vec<String> },
    /// The key store cannot be read, or making the keys failed.
    #[error(transparent)]
    Keys(DkimError),
    /// The key a rotation would replace is not in use yet: rotating it would leave
    /// the domain without a published key to switch to.
    #[error(
        "{domain}: key {selector} is still waiting for its DNS record {record}; publish it (postmaster dns prints it)"
    )]
    AwaitingRecord {
        domain: String,
        selector: String,
        record: String,
    },
}

impl Daemon {
    /// Starts a round of DNS questions about every published selector; the
    /// answers come back through `answers`.
    pub(super) fn ask_dns(&mut self, answers: mpsc::Sender<Seen>) {
        let config = &self.resolved.config;
        let state = match dkim::store::load(config) {
            Ok(state) => state,
            Err(e) => {
                self.signing.error = Some(e.to_string());
                self.signing.next_ask = Some(Instant::now() + check_every(config));
                return;
            }
        };
        let now = dkim::unix_now();
        let algorithms = dkim::Algorithm::enabled(&config.dkim);
        let wanted: Vec<(String, dkim::Key)> = config
            .domains
            .iter()
            .flat_map(|d| {
                dkim::published(&state, d, now, &algorithms)
                    .into_iter()
                    .map(move |k| (d.clone(), k))
            })
            .collect();
        self.signing.next_ask = None;
        tokio::spawn(async move {
            let mut seen = Seen::new();
            let round = async {
                match Dns::system() {
                    Ok(dns) => {
                        for (domain, key) in &wanted {
                            seen.insert(key.record_name(domain), dns.seen(domain, key).await);
                        }
                    }
                    Err(e) => {
                        for (domain, key) in &wanted {
                            seen.insert(
                                key.record_name(domain),
                                dkim::Seen::Unknown(e.to_string()),
                            );
                        }
                    }
                }
            };
            if tokio::time::timeout(DNS_ROUND, round).await.is_err() {
                for (domain, key) in &wanted {
                    seen.entry(key.record_name(domain)).or_insert_with(|| {
                        dkim::Seen::Unknown(format!("no answer within {} s", DNS_ROUND.as_secs()))
                    });
                }
            }
            let _ = answers.send(seen).await;
        });
    }

    pub(super) fn dns_answered(&mut self, seen: Seen) {
        for (name, what) in &seen {
            if self.signing.seen.get(name) != Some(what) {
                info!(record = %name, found = %what, "DKIM record {name} in DNS: {what}");
            }
        }
        self.signing.seen = seen;
        self.signing.last_asked = Some(SystemTime::now());
        self.signing.next_ask = Some(Instant::now() + check_every(&self.resolved.config));
    }

    /// Makes missing keys, switches to a pending key DNS shows, carries out
    /// `extra` (a rotation), and reloads rspamd when its table changed.
    pub(super) async fn check_dkim(&mut self, extra: &[Step]) -> Result<Vec<String>, DkimError> {
        let config = self.resolved.config.clone();
        if !config.dkim.enabled {
            self.status.send_if_modified(|s| s.dkim.take().is_some());
            return Ok(Vec::new());
        }
        let result = pipeline::apply_dkim(&config, &self.signing.seen, extra);
        let outcome = match result {
            Ok(report) => {
                for line in &report.done {
                    info!(change = %line, "DKIM");
                }
                if report.table_changed {
                    // It reads the table when it starts: nothing to do if it is not running.
                    let _ = self.reload_unit(&config.units.rspamd).await;
                }
                // A new key's record may be there already: ask at once (unless
                // a round is under way, whose answers come soon anyway).
                if !report.done.is_empty()
                    && let Some(at) = &mut self.signing.next_ask
                {
                    *at = Instant::now();
                }
                self.signing.error = None;
                self.show_dkim(&report.state);
                Ok(report.done)
            }
            Err(e) => {
                error!(error = %e, "DKIM keys could not be kept up to date; rspamd signs with the keys it has");
                self.signing.error = Some(e.to_string());
                if let Ok(state) = dkim::store::load(&config) {
                    self.show_dkim(&state);
                }
                Err(e)
            }
        };
        if outcome.is_err() {
            self.status.send_modify(|s| {
                s.dkim.get_or_insert_with(Default::default).error = self.signing.error.clone()
            });
        }
        outcome
    }

    /// `postmaster dkim rotate [DOMAIN]`.
    pub(super) async fn rotate_dkim(&mut self, domain: &str) -> Outcome {
        let config = self.resolved.config.clone();
        let refuse = |why: Vec<NotRotated>| Outcome {
            ok: false,
            summary: "no key was rotated".into(),
            errors: why.iter().map(ToString::to_string).collect(),
        };
        if !config.dkim.enabled {
            return refuse(vec![NotRotated::SigningOff]);
        }
        let domains: Vec<String> = if domain.is_empty() {
            config.domains.clone()
        } else if config.domains.iter().any(|d| d == domain) {
            vec![domain.to_string()]
        } else {
            return refuse(vec![NotRotated::NotHosted {
                domain: domain.to_string(),
                hosted: config.domains.clone(),
            }]);
        };
        let state = match dkim::store::load(&config) {
            Ok(state) => state,
            Err(e) => return refuse(vec![NotRotated::Keys(e)]),
        };
        let algorithms = dkim::Algorithm::enabled(&config.dkim);
        let waiting: Vec<NotRotated> = domains
            .iter()
            .flat_map(|d| algorithms.iter().map(move |a| (d, *a)))
            .filter_map(|(d, a)| {
                state.pending_of(d, a).map(|k| NotRotated::AwaitingRecord {
                    domain: d.clone(),
                    selector: k.selector.clone(),
                    record: k.record_name(d),
                })
            })
            .collect();
        if !waiting.is_empty() {
            return refuse(waiting);
        }
        let steps: Vec<Step> = domains
            .iter()
            .flat_map(|d| algorithms.iter().map(move |a| (d, *a)))
            .map(|(d, algorithm)| Step::Generate {
                domain: d.clone(),
                algorithm,
                activate: state.active_of(d, algorithm).is_none(),
            })
            .collect();
        match self.check_dkim(&steps).await {
            Ok(done) => {
                let state = dkim::store::load(&config).unwrap_or_default();
                let publish: Vec<String> = domains
                    .iter()
                    .flat_map(|d| algorithms.iter().map(move |a| (d, *a)))
                    .filter_map(|(d, a)| state.pending_of(d, a).map(|k| (d, k)))
                    .map(|(d, k)| {
                        format!("publish {}. TXT \"{}\"", k.record_name(d), k.record_text())
                    })
                    .collect();
                warn!(rotated = ?done, "DKIM rotation asked for");
                let mut summary = format!(
                    "{}\nEach new key is used once DNS shows its record (`postmaster status` tells when):",
                    done.join("\n")
                );
                for line in publish {
                    summary.push('\n');
                    summary.push_str(&line);
                }
                Outcome {
                    ok: true,
                    summary,
                    errors: Vec::new(),
                }
            }
            Err(e) => refuse(vec![NotRotated::Keys(e)]),
        }
    }

    fn show_dkim(&mut self, state: &dkim::State) {
        let config = &self.resolved.config;
        let now = dkim::unix_now();
        let algorithms = dkim::Algorithm::enabled(&config.dkim);
        let domains = config
            .domains
            .iter()
            .map(|d| {
                let mut keys: Vec<DkimKeyStatus> = dkim::published(state, d, now, &algorithms)
                    .iter()
                    .map(|k| DkimKeyStatus {
                        selector: k.selector.clone(),
                        created: tls::format_rfc3339(dkim::unix_time(k.created)),
                        phase: dkim::describe_phase(k, now),
                        in_use: matches!(k.phase, dkim::Phase::Active { .. }),
                        record: self
                            .signing
                            .seen
                            .get(&k.record_name(d))
                            .map_or_else(|| "not checked yet".into(), ToString::to_string),
                    })
                    .collect();
                keys.sort_by_key(|k| !k.in_use);
                DkimDomainStatus {
                    domain: d.clone(),
                    keys,
                }
            })
            .collect();
        let dkim = DkimStatus {
            signer_unit: config.units.rspamd.clone(),
            domains,
            error: self.signing.error.clone(),
            last_dns_check: self.signing.last_asked.map(tls::format_rfc3339),
        };
        self.status.send_if_modified(|s| {
            if s.dkim.as_ref() == Some(&dkim) {
                false
            } else {
                s.dkim = Some(dkim);
                true
            }
        });
    }
}

fn check_every(config: &Config) -> Duration {
    Duration::from_secs(config.dkim.dns_check_seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn why_no_key_was_rotated_reads_as_before() {
        assert_eq!(
            NotRotated::SigningOff.to_string(),
            "DKIM signing is off ([dkim] enabled = false)"
        );
        assert_eq!(
            NotRotated::NotHosted {
                domain: "example.com".into(),
                hosted: vec!["example.org".into(), "example.net".into()]
            }
            .to_string(),
            "example.com is not a hosted domain (domains: example.org, example.net)"
        );
        let damaged = DkimError::Damaged {
            path: "/var/lib/postmaster/dkim/state.json".into(),
            detail: "EOF while parsing".into(),
        };
        let text = damaged.to_string();
        assert_eq!(NotRotated::Keys(damaged).to_string(), text);
        assert_eq!(
            NotRotated::AwaitingRecord {
                domain: "example.org".into(),
                selector: "pm202612r".into(),
                record: "pm202612r._domainkey.example.org".into()
            }
            .to_string(),
            "example.org: key pm202612r is still waiting for its DNS record pm202612r._domainkey.example.org; publish it (postmaster dns prints it)"
        );
    }
}
