//! The ACME client: account, http-01 issuance and renewal planning, one module each.
//!
//! - [`account`](mod@account): the account at the CA, loaded from
//!   `STATE_DIR/acme/account.json` or registered (its credentials stored there, mode
//!   0600).
//! - [`order`]: [`obtain`] orders a certificate for some names, answers http-01
//!   through a [`Responder`] and returns a chain and key that [`tls::validate_pair`]
//!   accepted.
//! - [`http01`]: how the answers reach the CA: [`Http01Server`] answers
//!   `GET /.well-known/acme-challenge/TOKEN` on a listener the caller hands over
//!   (systemd's `acme-http` socket on port 80); [`Responder::Webroot`] writes them into
//!   a directory another web server serves instead.
//! - [`schedule`]: [`renewal_time`], [`retry_after`] and [`Schedule`] plan when to act
//!   (pure functions plus a small state file that survives restarts), with the CA's
//!   renewal information (ARI, RFC 9773).
//!
//! Nothing here touches the installed pair: the caller installs what [`obtain`] returns.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::apply;
#[cfg(doc)]
use crate::tls;
use crate::tls::PairProblem;

pub(crate) mod account;
pub(crate) mod http01;
pub(crate) mod order;
pub(crate) mod schedule;

pub use account::{ACCOUNT_FILE, account};
pub(crate) use account::{register, stored_account};
pub use http01::{Http01Server, NoResponder, PublishError, Responder};
pub use order::obtain;
pub use schedule::{RenewalInfoUnavailable, RenewalWindow, certificate_id, renewal_window};
pub(crate) use schedule::{Schedule, renewal_time};

/// What went wrong talking to the CA or preparing to. Each text says what happened
/// and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error(
        "the ACME account file {} cannot be used: {detail} (remove it to register a new account)",
        path.display()
    )]
    AccountFile { path: PathBuf, detail: String },
    #[error(
        "the renewal schedule {} cannot be read: {detail} (remove it: postmaster then plans afresh from the installed certificate)",
        path.display()
    )]
    ScheduleFile { path: PathBuf, detail: String },
    #[error("cannot store {what}: {source} (check that the state directory is writable)")]
    Store {
        what: &'static str,
        source: apply::ApplyError,
    },
    #[error(
        "cannot read the external account binding key {}: {detail} (it must hold the CA's HMAC key, base64url-encoded)",
        path.display()
    )]
    EabKey { path: PathBuf, detail: String },
    #[error(
        "cannot use acme.trust_root {}: {detail} (it must be a PEM file with the certificate of the CA's API server)",
        path.display()
    )]
    TrustRoot { path: PathBuf, detail: String },
    #[error(
        "cannot register an ACME account at {directory}: {detail} (check acme.directory, acme.contact and the CA's terms)"
    )]
    Register { directory: String, detail: String },
    #[error(
        "cannot reach the ACME CA at {directory}: {detail} (check acme.directory, DNS and that this host may open HTTPS connections)"
    )]
    Unreachable { directory: String, detail: String },
    #[error("the ACME CA refused the order for {names}: {detail}")]
    Order { names: String, detail: String },
    /// The CA has no account for the stored key (a test CA restarted, or the account
    /// was deactivated): registering a new one is the way out.
    #[error("the ACME CA does not know the stored account: {detail}")]
    AccountUnknown { detail: String },
    #[error(
        "the ACME CA refuses to issue for {names} now because of its rate limits: {detail} (postmaster waits at least an hour before trying again)"
    )]
    RateLimited { names: String, detail: String },
    #[error(
        "the ACME CA offers no http-01 challenge for {name} (it offers: {offered}): postmaster can only answer http-01"
    )]
    NoHttp01 { name: String, offered: String },
    #[error(
        "the authorization for {name} is {status}: the CA will not issue for it (order again later)"
    )]
    Authorization { name: String, status: String },
    #[error("cannot publish the http-01 answer for {name}: {source}")]
    Publish { name: String, source: PublishError },
    /// `hint` says what must be true for the challenge to pass (see [`Responder::hint`]).
    #[error("the CA could not validate {name} with {challenge}: {detail} ({hint})")]
    Challenge {
        name: String,
        challenge: &'static str,
        detail: String,
        hint: String,
    },
    #[error("the CA did not finish validating {names} within {} s: will retry later", timeout.as_secs())]
    ValidationTimeout { names: String, timeout: Duration },
    #[error("the ACME CA failed during {step}: {detail}")]
    Protocol { step: &'static str, detail: String },
    #[error("the certificate the CA issued cannot be used: {0}")]
    Issued(PairProblem),
    /// Why http-01 cannot be answered at all (the configuration says how to fix it).
    #[error("{0}")]
    NoResponder(NoResponder),
}

pub(crate) fn protocol(step: &'static str) -> impl FnOnce(instant_acme::Error) -> AcmeError {
    move |e| AcmeError::Protocol {
        step,
        detail: e.to_string(),
    }
}

/// Writes `content` to `path` atomically with `mode`, creating its directory (0700).
pub(crate) fn store(
    path: &Path,
    content: &[u8],
    mode: u32,
    what: &'static str,
) -> Result<(), AcmeError> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| AcmeError::Store {
                what,
                source: apply::ApplyError::Io {
                    action: "creating",
                    path: dir.to_path_buf(),
                    source,
                },
            })?;
    }
    apply::write_atomic(path, content, mode, None)
        .map(|_| ())
        .map_err(|source| AcmeError::Store { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts() {
        let e = AcmeError::Challenge {
            name: "mail.example.org".into(),
            challenge: "http-01",
            detail: "127.0.0.1: Connection refused".into(),
            hint: "a hint".into(),
        };
        assert_eq!(
            e.to_string(),
            "the CA could not validate mail.example.org with http-01: 127.0.0.1: Connection refused (a hint)"
        );
        assert_eq!(
            Responder::Webroot("/srv/www".into()).hint("mail.example.org"),
            "the web server on port 80 of mail.example.org must serve /srv/www/.well-known/acme-challenge/ as /.well-known/acme-challenge/"
        );
        let e = AcmeError::NoHttp01 {
            name: "a.example".into(),
            offered: "dns-01".into(),
        };
        assert_eq!(
            e.to_string(),
            "the ACME CA offers no http-01 challenge for a.example (it offers: dns-01): postmaster can only answer http-01"
        );
        let e = AcmeError::AccountFile {
            path: "/s/acme/account.json".into(),
            detail: "EOF".into(),
        };
        assert_eq!(
            e.to_string(),
            "the ACME account file /s/acme/account.json cannot be used: EOF (remove it to register a new account)"
        );
        let e = AcmeError::EabKey {
            path: "/k".into(),
            detail: "the file is empty".into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot read the external account binding key /k: the file is empty (it must hold the CA's HMAC key, base64url-encoded)"
        );
        let e = AcmeError::ValidationTimeout {
            names: "a, b".into(),
            timeout: Duration::from_secs(120),
        };
        assert_eq!(
            e.to_string(),
            "the CA did not finish validating a, b within 120 s: will retry later"
        );
        let e = AcmeError::Register {
            directory: "https://ca/dir".into(),
            detail: "nope".into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot register an ACME account at https://ca/dir: nope (check acme.directory, acme.contact and the CA's terms)"
        );
        let e = AcmeError::Issued(PairProblem::KeyMismatch);
        assert!(e.to_string().starts_with(
            "the certificate the CA issued cannot be used: the private key does not match"
        ));
    }
}
