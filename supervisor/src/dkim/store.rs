//! Effects for DKIM: making keys, keeping them and the state file, and writing
//! rspamd's table of keys. The decisions are in the parent module.
//!
//! Layout in the state directory:
//! - `dkim/<domain>.<selector>.key`: private keys, mode 0640. The directory is
//!   group rspamd's and setgid (tmpfiles, or the NixOS module), so the keys are
//!   readable by rspamd and nobody else from the moment they exist.
//! - `dkim.json`: the [`State`]: selectors, phases, public keys. No secret.
//! - `<generated>/rspamd/dkim_domains.conf`: which key rspamd signs each domain
//!   with; rspamd's own `local.d/dkim_signing.conf` includes it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

use super::{Algorithm, Key, Phase, State, Step};
use crate::apply::{self, ApplyError};
use crate::config::Config;

/// rspamd's table of keys, relative to the generated directory.
pub(crate) const RSPAMD_DOMAINS: &str = "rspamd/dkim_domains.conf";

#[derive(Debug, thiserror::Error)]
pub(crate) enum DkimError {
    #[error("cannot read the DKIM state {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the DKIM state {} is damaged ({detail}); no key was changed: restore it from a backup, or move it away to start over with new keys (their records must then be published again)",
        path.display()
    )]
    Damaged { path: PathBuf, detail: String },
    #[error("cannot make a DKIM key: {0}")]
    KeyGeneration(String),
    #[error(transparent)]
    Write(#[from] ApplyError),
    #[error(
        "{} is not readable by rspamd: it must be group rspamd's and setgid (on Debian: chgrp _rspamd {0}; chmod 2750 {0})",
        path.display()
    )]
    KeyDirectory { path: PathBuf },
}

/// Reads the state; a missing file is an empty state (no keys yet).
pub(crate) fn load(config: &Config) -> Result<State, DkimError> {
    let path = config.dkim_state_file();
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| DkimError::Damaged {
            path,
            detail: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(source) => Err(DkimError::Read { path, source }),
    }
}

fn save(config: &Config, state: &State) -> Result<(), DkimError> {
    let mut text = serde_json::to_string_pretty(state).expect("the state serialises");
    text.push('\n');
    apply::write_atomic(&config.dkim_state_file(), text.as_bytes(), 0o644, None)?;
    Ok(())
}

/// A new key: (the private key file's content as rspamd reads it; the public key
/// for DNS). RSA: PKCS#8 PEM, and base64 of the DER SubjectPublicKeyInfo. Ed25519
/// (RFC 8463): base64 of the 32-byte seed followed by the 32-byte public key,
/// rspamd's format, and base64 of the raw public key.
pub(crate) fn generate(algorithm: Algorithm) -> Result<(String, String), DkimError> {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    match algorithm {
        Algorithm::Ed25519 => {
            let mut seed = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
            let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
                .map_err(|e| DkimError::KeyGeneration(e.to_string()))?;
            let public = ring::signature::KeyPair::public_key(&pair)
                .as_ref()
                .to_vec();
            let mut secret = seed.to_vec();
            secret.extend_from_slice(&public);
            Ok((format!("{}\n", b64(&secret)), b64(&public)))
        }
        Algorithm::Rsa2048 => {
            let mut rng = rsa::rand_core::OsRng;
            let private = rsa::RsaPrivateKey::new(&mut rng, 2048)
                .map_err(|e| DkimError::KeyGeneration(e.to_string()))?;
            let pem = private
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| DkimError::KeyGeneration(e.to_string()))?;
            let der = private
                .to_public_key()
                .to_public_key_der()
                .map_err(|e| DkimError::KeyGeneration(e.to_string()))?;
            Ok((pem.to_string(), b64(der.as_bytes())))
        }
    }
}

/// Carries out `steps`: a new key's file is written before the state names it,
/// and the state before rspamd's table does, so nothing ever refers to a key that
/// is not there. Returns one line per step for the journal.
pub(crate) fn carry_out(
    config: &Config,
    state: &mut State,
    steps: &[Step],
    now: i64,
) -> Result<Vec<String>, DkimError> {
    let policy = super::Policy::from_config(&config.dkim);
    let mut done = Vec::new();
    for step in steps {
        match step {
            Step::Generate {
                domain,
                algorithm,
                activate,
            } => {
                // Made by tmpfiles (or the NixOS module) as root: postmaster
                // cannot give a directory rspamd's group itself.
                let dir = config.dkim_key_dir();
                check_key_directory(&dir)?;
                let algorithm = *algorithm;
                let (pem, public_key) = generate(algorithm)?;
                let key = Key {
                    selector: state.new_selector(domain, now),
                    algorithm,
                    created: now,
                    public_key,
                    phase: Phase::Pending,
                };
                apply::write_atomic(
                    &dir.join(key.file_name(domain)),
                    pem.as_bytes(),
                    0o640,
                    None,
                )?;
                done.push(if *activate {
                    format!("{domain}: new key {} in use", key.selector)
                } else {
                    format!(
                        "{domain}: new key {} made; it is used once DNS shows {}",
                        key.selector,
                        key.record_name(domain)
                    )
                });
                state.add(domain, key, *activate, now);
            }
            Step::Activate { domain, selector } => {
                if state.activate(domain, selector, now, policy.keep_published) {
                    done.push(format!("{domain}: switched to key {selector}"));
                }
            }
            Step::Retire { domain, selector } => {
                if state.retire(domain, selector, now, policy.keep_published) {
                    done.push(format!(
                        "{domain}: key {selector} no longer used; keep its record published until {}",
                        super::fmt_time(now + policy.keep_published)
                    ));
                }
            }
        }
        save(config, state)?;
    }
    Ok(done)
}

/// Writes rspamd's table of keys; returns whether it changed (rspamd then needs
/// a reload to sign with it).
pub(crate) fn write_rspamd_domains(config: &Config, state: &State) -> Result<bool, DkimError> {
    let path = config.generated_dir.join(RSPAMD_DOMAINS);
    let dir = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir).map_err(|source| {
        DkimError::Write(ApplyError::Io {
            action: "creating directory",
            path: dir.to_path_buf(),
            source,
        })
    })?;
    let text = super::rspamd_domains(
        state,
        &config.domains,
        &config.dkim_key_dir(),
        &Algorithm::enabled(&config.dkim),
    );
    Ok(apply::write_atomic(&path, text.as_bytes(), 0o644, None)?)
}

/// Whether rspamd can read what is made in the key directory: it must be setgid
/// and of a group other than the writer's own (rspamd's).
pub(crate) fn check_key_directory(dir: &Path) -> Result<(), DkimError> {
    let refused = || DkimError::KeyDirectory {
        path: dir.to_path_buf(),
    };
    let meta = std::fs::metadata(dir).map_err(|_| refused())?;
    let own_group = rustix::process::getegid().as_raw();
    if meta.mode() & 0o2000 == 0 || (meta.gid() == own_group && own_group != 0) {
        return Err(refused());
    }
    Ok(())
}
