//! When to renew: pure planning functions, the CA's renewal information (ARI, RFC
//! 9773) and the schedule file that survives restarts.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{Account, CertificateIdentifier};
use serde::{Deserialize, Serialize};

use super::{AcmeError, store};

/// The renewal schedule, below the state directory.
pub(crate) const SCHEDULE_FILE: &str = "acme/schedule.json";

/// When to renew a certificate valid from `not_before` to `not_after`.
///
/// - With an ARI window from the CA (RFC 9773): at `start + jitter × (end − start)`,
///   a uniformly random point inside it, as the RFC asks, so hosts spread over it.
/// - Without: at two thirds of the lifetime (30 days before the end of a 90-day
///   certificate, as certbot and Let's Encrypt recommend; 2 days before the end of a
///   6-day one), moved EARLIER by `jitter` × 1 % of the lifetime (up to ~22 h for 90
///   days). Earlier, never later: the remaining third is the time left to fix a
///   failing renewal, and it must not shrink.
///
/// `jitter` comes from the caller's RNG, in 0..=1 (clamped; NaN counts as 0). A
/// certificate whose dates are reversed gets `not_before`: renew at once.
pub(crate) fn renewal_time(
    cert_not_before: SystemTime,
    cert_not_after: SystemTime,
    ari_window: Option<(SystemTime, SystemTime)>,
    jitter: f64,
) -> SystemTime {
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    if let Some((start, end)) = ari_window {
        let width = end.duration_since(start).unwrap_or(Duration::ZERO);
        return start + width.mul_f64(jitter);
    }
    let Ok(lifetime) = cert_not_after.duration_since(cert_not_before) else {
        return cert_not_before;
    };
    let planned = cert_not_before + lifetime * 2 / 3;
    planned - (lifetime / 100).mul_f64(jitter)
}

/// The longest wait between two attempts after failures.
pub(crate) const MAX_RETRY: Duration = Duration::from_secs(6 * 3600);

/// How long to wait after `failures` consecutive failed attempts: 1 min, 2, 4, 8, …
/// capped at 6 h (reached at the 10th failure; 0 failures counts as 1).
///
/// Why: a first failure is often passing (a CA hiccup, port 80 not yet forwarded), so
/// retry soon, when the admin is still watching; doubling then keeps a lasting
/// problem from hammering the CA (Let's Encrypt allows 5 failed validations per
/// name per hour: the first 5 attempts span 15 minutes, the next ones fall under the
/// limit). The 6-hour cap still tries 4 times a day, so a fix is picked up within
/// hours, and with a 30-day margin there are over 100 tries before expiry.
pub(crate) fn retry_after(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    Duration::from_secs(60u64 << exponent).min(MAX_RETRY)
}

/// What the daemon remembers between runs about renewal: `STATE_DIR/acme/schedule.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Schedule {
    /// Unix seconds: when to try next (0: at once).
    pub(crate) next_attempt: u64,
    /// Consecutive failed attempts, reset by a success.
    pub(crate) failures: u32,
    /// Unix seconds of the last attempt.
    pub(crate) last_attempt: Option<u64>,
    /// `"ok"` or the last error's text.
    pub(crate) last_result: Option<String>,
    /// Unix seconds: the renewal window the CA last suggested (ARI), start and end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ari_window: Option<(u64, u64)>,
    /// Unix seconds: when to ask the CA for renewal information again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ari_next_check: Option<u64>,
}

/// How soon the CA's renewal information is asked again at the earliest, whatever
/// its Retry-After says: a CA's mistake must not make every host hammer it.
pub(crate) const ARI_ASK_AGAIN_MIN: Duration = Duration::from_secs(3600);
/// How long at most until it is asked again: RFC 9773 wants clients to keep asking,
/// so that a CA can call renewals early (after a mass revocation, say); and a CA
/// that starts offering ARI is noticed within a day.
pub(crate) const ARI_ASK_AGAIN_MAX: Duration = Duration::from_secs(24 * 3600);

/// Unix seconds of `t` (0 before 1970).
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn from_unix_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

impl Schedule {
    pub(crate) fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(SCHEDULE_FILE)
    }

    /// The stored schedule; `None` when there is none yet.
    pub(crate) fn load(state_dir: &Path) -> Result<Option<Schedule>, AcmeError> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| AcmeError::ScheduleFile {
                        path,
                        detail: format!("not valid JSON: {e}"),
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AcmeError::ScheduleFile {
                path,
                detail: e.to_string(),
            }),
        }
    }

    /// Stores the schedule atomically (mode 0644: it holds nothing secret).
    pub(crate) fn store(&self, state_dir: &Path) -> Result<(), AcmeError> {
        let json = serde_json::to_vec_pretty(self).expect("the schedule serializes to JSON");
        store(&Self::path(state_dir), &json, 0o644, "the renewal schedule")
    }

    pub(crate) fn next_attempt_time(&self) -> SystemTime {
        from_unix_secs(self.next_attempt)
    }

    /// True when an attempt is due at `now`.
    pub(crate) fn due(&self, now: SystemTime) -> bool {
        unix_secs(now) >= self.next_attempt
    }

    /// An attempt at `now` succeeded; the next one is at `next` (see [`renewal_time`]),
    /// planned with `ari`, the CA's window for the new certificate if it gave one.
    pub(crate) fn record_success(
        &mut self,
        now: SystemTime,
        next: SystemTime,
        ari: Option<RenewalWindow>,
    ) {
        self.failures = 0;
        self.last_attempt = Some(unix_secs(now));
        self.last_result = Some("ok".into());
        self.next_attempt = unix_secs(next);
        self.ari_window = ari.map(|w| (unix_secs(w.start), unix_secs(w.end)));
        let ask_again = ari.map_or(ARI_ASK_AGAIN_MAX, |w| w.ask_again);
        self.ari_next_check = Some(unix_secs(
            now + ask_again.clamp(ARI_ASK_AGAIN_MIN, ARI_ASK_AGAIN_MAX),
        ));
    }

    /// An attempt at `now` failed with `error`; the next one follows [`retry_after`],
    /// but not before `at_least` (a CA's rate limit).
    pub(crate) fn record_failure(&mut self, now: SystemTime, error: &str, at_least: Duration) {
        self.failures = self.failures.saturating_add(1);
        self.last_attempt = Some(unix_secs(now));
        self.last_result = Some(error.to_string());
        self.next_attempt = unix_secs(now + retry_after(self.failures).max(at_least));
    }

    /// True when the CA's renewal information is to be asked again at `now`: only
    /// while renewals succeed, since after a failure the retries come anyway.
    pub(crate) fn ari_due(&self, now: SystemTime) -> bool {
        self.failures == 0 && self.ari_next_check.is_some_and(|at| unix_secs(now) >= at)
    }

    /// The CA's renewal information, asked at `now`: `Ok(Some)` a window, `Ok(None)`
    /// none offered, `Err` asking failed. A window other than the one the plan came
    /// from moves the next attempt to the point `jitter` inside it (see
    /// [`renewal_time`]; a window in the past means at once); the same window again
    /// keeps the plan, so that asking often does not re-draw it; while attempts
    /// fail, the back-off keeps the plan. Returns whether the plan moved.
    pub(crate) fn record_renewal_info(
        &mut self,
        now: SystemTime,
        answer: Result<Option<RenewalWindow>, ()>,
        jitter: f64,
    ) -> bool {
        let ask_again = match answer {
            Ok(Some(w)) => w.ask_again,
            Ok(None) => ARI_ASK_AGAIN_MAX,
            Err(()) => ARI_ASK_AGAIN_MIN,
        };
        self.ari_next_check = Some(unix_secs(
            now + ask_again.clamp(ARI_ASK_AGAIN_MIN, ARI_ASK_AGAIN_MAX),
        ));
        let Ok(Some(w)) = answer else { return false };
        let window = (unix_secs(w.start), unix_secs(w.end));
        if self.ari_window == Some(window) {
            return false;
        }
        self.ari_window = Some(window);
        if self.failures > 0 {
            // Failing: the back-off's retries rule until one succeeds.
            return false;
        }
        let next = unix_secs(renewal_time(w.start, w.end, Some((w.start, w.end)), jitter));
        let moved = next != self.next_attempt;
        self.next_attempt = next;
        moved
    }
}

/// The leaf of `cert_chain_pem` as ACME renewal information names it (RFC 9773
/// §4.1: authority key identifier and serial); `None` when it cannot be parsed or
/// has no authority key identifier.
pub fn certificate_id(cert_chain_pem: &str) -> Option<CertificateIdentifier<'static>> {
    use rustls_pki_types::pem::PemObject;
    let leaf = rustls_pki_types::CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
        .next()?
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let aki = cert
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0)
            }
            _ => None,
        })?;
    let id = CertificateIdentifier::new(
        rustls_pki_types::Der::from_slice(aki),
        rustls_pki_types::Der::from_slice(cert.tbs_certificate.raw_serial()),
    );
    Some(id.into_owned())
}

/// What the CA says about renewing one certificate (ARI, RFC 9773).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalWindow {
    pub start: SystemTime,
    pub end: SystemTime,
    /// The CA's Retry-After: when to ask again.
    pub ask_again: Duration,
}

/// Why the CA could not be asked when to renew (ARI): the daemon logs it and keeps
/// the plan it made, so the text is the one of what failed, unchanged.
#[derive(Debug, thiserror::Error)]
pub enum RenewalInfoUnavailable {
    /// The stored account (whose CA directory says where to ask) cannot be used.
    #[error(transparent)]
    Account(super::AcmeError),
    /// The CA or the connection to it failed.
    #[error(transparent)]
    Ca(instant_acme::Error),
}

/// The CA's suggested renewal window for certificate `id`: `Ok(None)` when the CA
/// does not offer ARI; `Err` says why asking failed.
pub async fn renewal_window(
    account: &Account,
    id: &CertificateIdentifier<'_>,
) -> Result<Option<RenewalWindow>, RenewalInfoUnavailable> {
    match account.renewal_info(id).await {
        Ok((info, ask_again)) => {
            let window = info.suggested_window;
            let start = window.start.unix_timestamp();
            let end = window.end.unix_timestamp();
            let at = |secs: i64| from_unix_secs(u64::try_from(secs).unwrap_or(0));
            Ok(Some(RenewalWindow {
                start: at(start),
                end: at(end.max(start)),
                ask_again,
            }))
        }
        Err(instant_acme::Error::Unsupported(_)) => Ok(None),
        Err(e) => Err(RenewalInfoUnavailable::Ca(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn why_renewal_info_is_unavailable_is_what_failed() {
        assert_eq!(
            RenewalInfoUnavailable::Ca(instant_acme::Error::Str("renewalInfo")).to_string(),
            "missing data: renewalInfo"
        );
        let account = super::super::AcmeError::AccountFile {
            path: "/var/lib/postmaster/acme/account.json".into(),
            detail: "expected value at line 1 column 1".into(),
        };
        assert_eq!(
            RenewalInfoUnavailable::Account(account).to_string(),
            "the ACME account file /var/lib/postmaster/acme/account.json cannot be used: expected value at line 1 column 1 (remove it to register a new account)"
        );
    }

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    const DAY: u64 = 86_400;

    #[test]
    fn renewal_at_two_thirds_without_ari() {
        // 90 days: day 60, 30 days before the end.
        assert_eq!(renewal_time(t(0), t(90 * DAY), None, 0.0), t(60 * DAY));
        // 6-day certificate: day 4.
        assert_eq!(
            renewal_time(t(1000), t(1000 + 6 * DAY), None, 0.0),
            t(1000 + 4 * DAY)
        );
    }

    #[test]
    fn jitter_moves_renewal_earlier_by_at_most_one_percent() {
        let lifetime = 90 * DAY;
        let full = renewal_time(t(0), t(lifetime), None, 1.0);
        assert_eq!(full, t(60 * DAY - lifetime / 100));
        let half = renewal_time(t(0), t(lifetime), None, 0.5);
        assert_eq!(half, t(60 * DAY - lifetime / 200));
        for j in [0.0, 0.1, 0.33, 0.9, 1.0] {
            let r = renewal_time(t(0), t(lifetime), None, j);
            assert!(
                r <= t(60 * DAY) && r >= t(60 * DAY - lifetime / 100),
                "jitter {j}"
            );
        }
    }

    #[test]
    fn jitter_out_of_range_is_clamped() {
        assert_eq!(renewal_time(t(0), t(90 * DAY), None, -3.0), t(60 * DAY));
        assert_eq!(renewal_time(t(0), t(90 * DAY), None, f64::NAN), t(60 * DAY));
        assert_eq!(
            renewal_time(t(0), t(90 * DAY), None, 7.0),
            renewal_time(t(0), t(90 * DAY), None, 1.0)
        );
    }

    #[test]
    fn reversed_dates_renew_at_once() {
        assert_eq!(
            renewal_time(t(100 * DAY), t(10 * DAY), None, 0.5),
            t(100 * DAY)
        );
    }

    #[test]
    fn ari_window_is_used_when_given() {
        let window = Some((t(50 * DAY), t(52 * DAY)));
        assert_eq!(renewal_time(t(0), t(90 * DAY), window, 0.0), t(50 * DAY));
        assert_eq!(renewal_time(t(0), t(90 * DAY), window, 0.5), t(51 * DAY));
        assert_eq!(renewal_time(t(0), t(90 * DAY), window, 1.0), t(52 * DAY));
        // A window in the past (revocation) means renew now: its start is returned.
        let past = Some((t(5), t(5)));
        assert_eq!(renewal_time(t(0), t(90 * DAY), past, 0.7), t(5));
        // A reversed window collapses to its start.
        let reversed = Some((t(52 * DAY), t(50 * DAY)));
        assert_eq!(renewal_time(t(0), t(90 * DAY), reversed, 0.7), t(52 * DAY));
    }

    #[test]
    fn retry_backoff_doubles_from_a_minute_to_six_hours() {
        let minutes: Vec<u64> = (0..=12).map(|f| retry_after(f).as_secs() / 60).collect();
        assert_eq!(
            minutes,
            [1, 1, 2, 4, 8, 16, 32, 64, 128, 256, 360, 360, 360]
        );
        assert_eq!(retry_after(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn schedule_records_failures_and_success() {
        let mut s = Schedule::default();
        assert!(s.due(t(0)));
        s.record_failure(
            t(1000),
            "the CA could not validate x with http-01: refused",
            Duration::ZERO,
        );
        assert_eq!(s.failures, 1);
        assert_eq!(s.next_attempt, 1060);
        assert!(!s.due(t(1059)) && s.due(t(1060)));
        s.record_failure(t(1060), "again", Duration::ZERO);
        assert_eq!(
            (s.failures, s.next_attempt, s.last_attempt),
            (2, 1180, Some(1060))
        );
        assert_eq!(s.last_result.as_deref(), Some("again"));
        s.record_success(t(1200), t(60 * DAY), None);
        assert_eq!(
            s,
            Schedule {
                next_attempt: 60 * DAY,
                failures: 0,
                last_attempt: Some(1200),
                last_result: Some("ok".into()),
                ari_window: None,
                // No window from the CA: asked again in a day, in case it starts offering one.
                ari_next_check: Some(1200 + DAY),
            }
        );
        assert_eq!(s.next_attempt_time(), t(60 * DAY));
        // A rate limit holds the next attempt back at least as long as it says.
        s.record_failure(t(2000), "rate limited", Duration::from_secs(3600));
        assert_eq!((s.failures, s.next_attempt), (1, 2000 + 3600));
    }

    fn window(start: u64, end: u64, ask_again: u64) -> RenewalWindow {
        RenewalWindow {
            start: t(start),
            end: t(end),
            ask_again: Duration::from_secs(ask_again),
        }
    }

    #[test]
    fn renewal_information_is_asked_again_as_the_ca_says_within_bounds() {
        let mut s = Schedule::default();
        s.record_success(
            t(0),
            t(60 * DAY),
            Some(window(59 * DAY, 61 * DAY, 6 * 3600)),
        );
        assert_eq!(
            (s.ari_window, s.ari_next_check),
            (Some((59 * DAY, 61 * DAY)), Some(6 * 3600))
        );
        assert!(!s.ari_due(t(6 * 3600 - 1)) && s.ari_due(t(6 * 3600)));
        // Retry-After outside the bounds is clamped: not hourly more often, not rarer than daily.
        s.record_renewal_info(t(100), Ok(Some(window(59 * DAY, 61 * DAY, 5))), 0.5);
        assert_eq!(s.ari_next_check, Some(100 + 3600));
        s.record_renewal_info(t(100), Ok(Some(window(59 * DAY, 61 * DAY, 90 * DAY))), 0.5);
        assert_eq!(s.ari_next_check, Some(100 + DAY));
        // Asking failed: again in an hour; the plan stays.
        assert!(!s.record_renewal_info(t(200), Err(()), 0.5));
        assert_eq!(
            (s.next_attempt, s.ari_next_check),
            (60 * DAY, Some(200 + 3600))
        );
        // After a failed renewal the retries come anyway: no asking meanwhile.
        s.record_failure(t(300), "x", Duration::ZERO);
        assert!(!s.ari_due(t(100 * DAY)));
    }

    #[test]
    fn the_same_window_keeps_the_plan_and_a_new_one_moves_it() {
        let mut s = Schedule::default();
        s.record_success(t(0), t(60 * DAY), Some(window(59 * DAY, 61 * DAY, 3600)));
        assert!(!s.record_renewal_info(t(10), Ok(Some(window(59 * DAY, 61 * DAY, 3600))), 0.9));
        assert_eq!(
            s.next_attempt,
            60 * DAY,
            "the same window must not re-draw the plan"
        );
        // The CA moves the window (a mass revocation): the plan follows, into the past = now.
        assert!(s.record_renewal_info(t(20), Ok(Some(window(10, 11, 3600))), 0.0));
        assert_eq!(s.next_attempt, 10);
        assert!(s.due(t(20)));
        // A later window moves it later too: the CA knows best.
        assert!(s.record_renewal_info(t(30), Ok(Some(window(70 * DAY, 72 * DAY, 3600))), 0.5));
        assert_eq!(s.next_attempt, 71 * DAY);
        // No ARI (any more): the plan stays.
        assert!(!s.record_renewal_info(t(40), Ok(None), 0.5));
        assert_eq!(
            (s.next_attempt, s.ari_next_check),
            (71 * DAY, Some(40 + DAY))
        );
        // While renewals fail, the back-off's retries rule, whatever the window.
        s.record_failure(t(50), "refused", Duration::ZERO);
        assert!(!s.record_renewal_info(t(60), Ok(Some(window(80 * DAY, 82 * DAY, 3600))), 0.5));
        assert_eq!(
            (s.next_attempt, s.ari_window),
            (50 + 60, Some((80 * DAY, 82 * DAY)))
        );
    }

    #[test]
    fn schedule_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Schedule::load(dir.path()).unwrap(), None);
        let s = Schedule {
            next_attempt: 42,
            failures: 3,
            last_attempt: Some(7),
            last_result: Some("boom".into()),
            ari_window: Some((40, 50)),
            ari_next_check: Some(45),
        };
        s.store(dir.path()).unwrap();
        assert_eq!(Schedule::load(dir.path()).unwrap(), Some(s));
        let text = std::fs::read_to_string(dir.path().join(SCHEDULE_FILE)).unwrap();
        assert!(text.contains("\"next_attempt\": 42"), "{text}");
        // A schedule written before ARI was remembered still loads.
        std::fs::write(
            dir.path().join(SCHEDULE_FILE),
            r#"{"next_attempt": 9, "failures": 0, "last_attempt": null, "last_result": null}"#,
        )
        .unwrap();
        let old = Schedule::load(dir.path()).unwrap().unwrap();
        assert_eq!(
            (old.next_attempt, old.ari_window, old.ari_next_check),
            (9, None, None)
        );
        std::fs::write(dir.path().join(SCHEDULE_FILE), "{").unwrap();
        let e = Schedule::load(dir.path()).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "the renewal schedule {}/acme/schedule.json cannot be read: not valid JSON: EOF while parsing an object at line 1 column 1 (remove it: postmaster then plans afresh from the installed certificate)",
                dir.path().display()
            )
        );
    }
}
