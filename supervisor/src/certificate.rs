//! The certificate pair's way from its source files to what postfix and dovecot
//! serve: read, validate (tls.rs), install as one file. Shared by `postmaster run`
//! and `postmaster apply`; reloading and checking what is served is the daemon's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::apply;
use crate::config::Config;
use crate::tls::{self, CertInfo};

/// Why a file of the source pair cannot be read. The text starts with the path:
/// `postmaster setup` prints it before its hint (a key the daemon's group may not
/// read), and the system tests look for it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot read {}: {source}", path.display())]
pub(crate) struct SourceUnreadable {
    pub(crate) path: PathBuf,
    /// Shared: the [`Decision`] that carries it is `Clone`, an `io::Error` is not.
    pub(crate) source: Arc<std::io::Error>,
}

/// The same file failing the same way (an `io::Error` has no equality of its own),
/// so that tests compare decisions whole.
impl PartialEq for SourceUnreadable {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
            && self.source.kind() == other.source.kind()
            && self.source.raw_os_error() == other.source.raw_os_error()
    }
}

impl Eq for SourceUnreadable {}

/// Reads the source pair (`tls.cert`, `tls.key`).
pub(crate) fn read_source(config: &Config) -> Result<(Vec<u8>, Vec<u8>), SourceUnreadable> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| SourceUnreadable {
            path: p.to_path_buf(),
            source: Arc::new(e),
        })
    };
    Ok((read(&config.tls.cert)?, read(&config.tls.key)?))
}

/// Validates a source pair and makes the file to install: key, then chain.
pub(crate) fn prepare(
    config: &Config,
    chain: &[u8],
    key: &[u8],
) -> Result<(CertInfo, Vec<u8>), tls::PairProblem> {
    let info = tls::validate_pair(chain, key, &config.certificate_names(), SystemTime::now())?;
    let mut pair = key.to_vec();
    if !pair.ends_with(b"\n") {
        pair.push(b'\n');
    }
    pair.extend_from_slice(chain);
    Ok((info, pair))
}

/// A self-signed pair for the host's names, so postfix and dovecot can start before
/// a real certificate exists.
pub(crate) fn placeholder(config: &Config) -> Result<(CertInfo, Vec<u8>), tls::PairProblem> {
    let (chain, key) = tls::self_signed_placeholder(&config.certificate_names(), SystemTime::now());
    prepare(config, chain.as_bytes(), key.as_bytes())
}

/// Writes the pair atomically where postfix, dovecot and the TLS front read it.
pub(crate) fn install(config: &Config, pair: &[u8]) -> Result<(), apply::ApplyError> {
    let target = config.installed_pair();
    create_parent(&target)?;
    // The owner, root (postfix and dovecot read it as root) and the TLS front, whose
    // group the directory gives every file made in it (setgid, units/tmpfiles).
    apply::write_atomic(&target, pair, 0o640, None).map(|_| ())
}

/// Why the daemon could not install a pair; the status shows this text.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InstallFailed {
    #[error("installing the certificate failed: {0}")]
    Write(#[source] apply::ApplyError),
    /// The blocking task that writes it panicked or was cancelled.
    #[error("installing the certificate failed: {0}")]
    Interrupted(#[source] tokio::task::JoinError),
}

/// Writes a pair obtained over ACME where `tls.cert` and `tls.key` point, from
/// where it takes the same way as a pair another tool writes. The key goes first:
/// until the chain follows, the pair does not match and is refused, never
/// half-installed.
pub(crate) fn store_source(
    config: &Config,
    chain: &[u8],
    key: &[u8],
) -> Result<(), apply::ApplyError> {
    create_parent(&config.tls.key)?;
    create_parent(&config.tls.cert)?;
    apply::write_atomic(&config.tls.key, key, 0o600, None)?;
    apply::write_atomic(&config.tls.cert, chain, 0o644, None).map(|_| ())
}

fn create_parent(path: &Path) -> Result<(), apply::ApplyError> {
    match path.parent() {
        Some(dir) => std::fs::create_dir_all(dir).map_err(|source| apply::ApplyError::Io {
            action: "creating",
            path: dir.to_path_buf(),
            source,
        }),
        None => Ok(()),
    }
}

/// The pair an earlier run installed, if it is still a valid one.
pub(crate) fn installed(config: &Config) -> Option<CertInfo> {
    let pair = std::fs::read(config.installed_pair()).ok()?;
    // Names are not required here: a changed host name must lead to a new install.
    tls::validate_pair(&pair, &pair, &[], SystemTime::now()).ok()
}

/// What to do about the certificate, from what the source files hold and what is
/// installed. Both `postmaster apply` and the daemon act on this one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The installed pair is this one: nothing to do.
    Unchanged(CertInfo),
    /// A new valid pair: install it, and make it served.
    Install(CertInfo, Vec<u8>),
    /// Nothing valid and nothing installed: a self-signed placeholder, so that every
    /// port serves TLS (and authentication stays possible only over it).
    Placeholder(Refusal),
    /// The source pair is refused; the installed certificate keeps being served.
    Keep(Refusal),
    /// ACME has not obtained a certificate yet; the installed placeholder serves.
    AwaitingAcme,
}

/// Why the source pair is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) why: RefusalReason,
    /// The writer may be halfway through the pair (a cp writes two files): look
    /// again soon before reporting it loudly.
    pub(crate) may_be_in_progress: bool,
}

/// What is wrong with the source pair; the text is what `postmaster apply` prints
/// and the status shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RefusalReason {
    /// ACME has not written a pair yet, and no placeholder is installed either.
    #[error("no certificate obtained yet")]
    NotObtainedYet,
    #[error(transparent)]
    Unreadable(SourceUnreadable),
    #[error(transparent)]
    Pair(tls::PairProblem),
}

/// Decides what to do with the pair `read` from the source files (see
/// [`read_source`]), given the pair `installed` now.
pub(crate) fn decide(
    config: &Config,
    read: Result<(Vec<u8>, Vec<u8>), SourceUnreadable>,
    installed: Option<&CertInfo>,
) -> Decision {
    let refused = |refusal: Refusal| {
        if installed.is_some() {
            Decision::Keep(refusal)
        } else {
            Decision::Placeholder(refusal)
        }
    };
    let (chain, key) = match read {
        Ok(pair) => pair,
        Err(why) => {
            let awaiting_acme =
                config.tls.source == crate::config::TlsSource::Acme && !config.tls.cert.exists();
            if awaiting_acme && installed.is_some() {
                return Decision::AwaitingAcme;
            }
            let why = if awaiting_acme {
                RefusalReason::NotObtainedYet
            } else {
                RefusalReason::Unreadable(why)
            };
            return refused(Refusal {
                why,
                may_be_in_progress: false,
            });
        }
    };
    match prepare(config, &chain, &key) {
        Err(problem) => refused(Refusal {
            may_be_in_progress: problem.may_be_in_progress(),
            why: RefusalReason::Pair(problem),
        }),
        Ok((info, _))
            if installed.is_some_and(|i| i.sha256_fingerprint == info.sha256_fingerprint) =>
        {
            Decision::Unchanged(info)
        }
        Ok((info, pair)) => Decision::Install(info, pair),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Source;

    fn config(source: &str, dir: &Path) -> Config {
        let text = format!(
            "host_name = \"mail.example.org\"\ndomains = [\"example.org\"]\n[tls]\nsource = \"{source}\"\ncert = \"{}/fullchain.pem\"\nkey = \"{}/key.pem\"\n",
            dir.display(),
            dir.display()
        );
        Config::parse(&Source::new("/etc/postmaster/config.toml", &text))
            .expect("a valid configuration")
    }

    fn pair(names: &[&str]) -> (Vec<u8>, Vec<u8>) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let (chain, key) = tls::self_signed_placeholder(&names, SystemTime::now());
        (chain.into_bytes(), key.into_bytes())
    }

    fn info_of(config: &Config, (chain, key): &(Vec<u8>, Vec<u8>)) -> CertInfo {
        prepare(config, chain, key).unwrap().0
    }

    #[test]
    fn a_new_valid_pair_is_installed_and_the_installed_one_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let config = config("files", dir.path());
        let new = pair(&["mail.example.org"]);
        let Decision::Install(info, installed_file) = decide(&config, Ok(new.clone()), None) else {
            panic!("a valid pair is installed")
        };
        assert!(
            installed_file.starts_with(&new.1),
            "the installed file is key, then chain"
        );
        assert!(installed_file.ends_with(&new.0));
        assert_eq!(
            decide(&config, Ok(new.clone()), Some(&info)),
            Decision::Unchanged(info.clone())
        );
        let other = pair(&["mail.example.org"]);
        assert!(matches!(
            decide(&config, Ok(other), Some(&info)),
            Decision::Install(..)
        ));
    }

    #[test]
    fn a_refused_pair_keeps_the_installed_one_or_gets_a_placeholder() {
        let dir = tempfile::tempdir().unwrap();
        let config = config("files", dir.path());
        let installed = info_of(&config, &pair(&["mail.example.org"]));
        // A certificate for another name: refused for good.
        let wrong = pair(&["www.example.org"]);
        let Decision::Keep(refusal) = decide(&config, Ok(wrong.clone()), Some(&installed)) else {
            panic!("refused, installed kept")
        };
        assert!(!refusal.may_be_in_progress, "{refusal:?}");
        assert!(
            refusal.why.to_string().contains("mail.example.org"),
            "{}",
            refusal.why
        );
        assert!(matches!(
            decide(&config, Ok(wrong), None),
            Decision::Placeholder(_)
        ));
        // A new certificate with the old key: the key may be on its way.
        let (chain, _) = pair(&["mail.example.org"]);
        let (_, old_key) = pair(&["mail.example.org"]);
        let Decision::Keep(refusal) = decide(&config, Ok((chain, old_key)), Some(&installed))
        else {
            panic!("a mismatched pair is refused")
        };
        assert!(refusal.may_be_in_progress, "{refusal:?}");
        // Unreadable files.
        let unreadable = read_source(&config).unwrap_err();
        assert_eq!(
            decide(&config, Err(unreadable.clone()), Some(&installed)),
            Decision::Keep(Refusal {
                why: RefusalReason::Unreadable(unreadable),
                may_be_in_progress: false
            })
        );
    }

    /// `postmaster setup` and the system tests look for these texts.
    #[test]
    fn why_a_source_pair_is_refused_reads_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let config = config("files", dir.path());
        let unreadable = read_source(&config).unwrap_err();
        assert_eq!(unreadable.path, dir.path().join("fullchain.pem"));
        assert_eq!(
            unreadable.to_string(),
            format!(
                "cannot read {}/fullchain.pem: No such file or directory (os error 2)",
                dir.path().display()
            )
        );
        std::fs::write(dir.path().join("fullchain.pem"), b"").unwrap();
        assert_eq!(
            read_source(&config).unwrap_err().to_string(),
            format!(
                "cannot read {}/key.pem: No such file or directory (os error 2)",
                dir.path().display()
            )
        );
        assert_eq!(
            RefusalReason::Unreadable(unreadable.clone()).to_string(),
            unreadable.to_string()
        );
        assert_eq!(
            RefusalReason::NotObtainedYet.to_string(),
            "no certificate obtained yet"
        );
        assert_eq!(
            RefusalReason::Pair(tls::PairProblem::Swapped).to_string(),
            tls::PairProblem::Swapped.to_string()
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn why_an_install_failed_reads_as_before() {
        let write = apply::ApplyError::Io {
            action: "writing",
            path: "/var/lib/postmaster/pair.pem".into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        assert_eq!(
            InstallFailed::Write(write).to_string(),
            "installing the certificate failed: writing /var/lib/postmaster/pair.pem: No space left on device (os error 28)"
        );
        let task = tokio::spawn(std::future::pending::<()>());
        task.abort();
        let cancelled = task.await.unwrap_err();
        let text = format!("installing the certificate failed: {cancelled}");
        assert!(text.ends_with("was cancelled"), "{text}");
        assert_eq!(InstallFailed::Interrupted(cancelled).to_string(), text);
    }

    #[test]
    fn before_the_first_acme_certificate_the_placeholder_serves() {
        let dir = tempfile::tempdir().unwrap();
        let config = config("acme", dir.path());
        let missing = || read_source(&config);
        assert_eq!(
            decide(&config, missing(), None),
            Decision::Placeholder(Refusal {
                why: RefusalReason::NotObtainedYet,
                may_be_in_progress: false
            })
        );
        let placeholder = placeholder(&config).unwrap().0;
        assert_eq!(
            decide(&config, missing(), Some(&placeholder)),
            Decision::AwaitingAcme
        );
        // Once a chain exists, a broken one is reported like any other.
        std::fs::write(&config.tls.cert, b"").unwrap();
        assert!(matches!(
            decide(&config, missing(), Some(&placeholder)),
            Decision::Keep(_)
        ));
    }
}
