//! The certificate pair's way from its source files to what postfix and dovecot
//! serve: read, validate (tls.rs), install as one file. Shared by `postmaster run`
//! and `postmaster apply`; reloading and checking what is served is the daemon's.

use std::path::Path;
use std::time::SystemTime;

use crate::apply;
use crate::config::Config;
use crate::tls::{self, CertInfo};

/// Reads the source pair (`tls.cert`, `tls.key`).
pub fn read_source(config: &Config) -> Result<(Vec<u8>, Vec<u8>), String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    Ok((read(&config.tls.cert)?, read(&config.tls.key)?))
}

/// Validates a source pair and makes the file to install: key, then chain.
pub fn prepare(config: &Config, chain: &[u8], key: &[u8]) -> Result<(CertInfo, Vec<u8>), tls::PairProblem> {
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
pub fn placeholder(config: &Config) -> Result<(CertInfo, Vec<u8>), String> {
    let (chain, key) = tls::self_signed_placeholder(&config.certificate_names(), SystemTime::now());
    prepare(config, chain.as_bytes(), key.as_bytes()).map_err(|p| p.to_string())
}

/// Writes the pair atomically where postfix and dovecot read it.
pub fn install(config: &Config, pair: &[u8]) -> Result<(), String> {
    let target = config.installed_pair();
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    // Only the owner (and root, which postfix and dovecot read it as) may read a key.
    apply::write_atomic(&target, pair, 0o600, None).map(|_| ()).map_err(|e| e.to_string())
}

/// The pair an earlier run installed, if it is still a valid one.
pub fn installed(config: &Config) -> Option<CertInfo> {
    let pair = std::fs::read(config.installed_pair()).ok()?;
    // Names are not required here: a changed host name must lead to a new install.
    tls::validate_pair(&pair, &pair, &[], SystemTime::now()).ok()
}
