//! The account at the CA: loaded from the state directory, or registered and stored.

use std::io;
use std::path::Path;

use bytes::Bytes;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{Account, AccountCredentials, BodyWrapper, ExternalAccountKey, NewAccount};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::{AcmeError, store};
use crate::config;

/// The account credentials, below the state directory.
pub const ACCOUNT_FILE: &str = "acme/account.json";

/// Loads the account stored under `state_dir`, or registers one and stores it.
///
/// Stored credentials are used only when they were made for `settings.directory`;
/// otherwise (a switch from a staging to a production CA, say) a new account is
/// registered and replaces them.
pub async fn account(settings: &config::Acme, state_dir: &Path) -> Result<Account, AcmeError> {
    match stored_account(settings, state_dir).await? {
        Some(account) => Ok(account),
        None => register(settings, state_dir).await,
    }
}

/// The account stored under `state_dir` for the CA in `settings`; `None` when there
/// is none (or it is for another CA). Registers nothing.
pub(crate) async fn stored_account(
    settings: &config::Acme,
    state_dir: &Path,
) -> Result<Option<Account>, AcmeError> {
    let path = state_dir.join(ACCOUNT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(AcmeError::AccountFile {
                path,
                detail: e.to_string(),
            });
        }
    };
    let bad = |detail: String| AcmeError::AccountFile {
        path: path.clone(),
        detail,
    };
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if value.get("directory").and_then(|d| d.as_str()) != Some(settings.directory.as_str()) {
        tracing::info!(
            path = %path.display(),
            directory = settings.directory,
            "the stored ACME account is for another CA: registering a new one"
        );
        return Ok(None);
    }
    let credentials: AccountCredentials =
        serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    let account = account_builder(settings)?
        .from_credentials(credentials)
        .await
        .map_err(|e| AcmeError::Unreachable {
            directory: settings.directory.clone(),
            detail: e.to_string(),
        })?;
    Ok(Some(account))
}

fn account_builder(settings: &config::Acme) -> Result<instant_acme::AccountBuilder, AcmeError> {
    let tls = match &settings.trust_root {
        Some(root) => {
            let bad = |detail: String| AcmeError::TrustRoot {
                path: root.clone(),
                detail,
            };
            let der = CertificateDer::from_pem_file(root).map_err(|e| bad(e.to_string()))?;
            let mut roots = rustls::RootCertStore::empty();
            roots.add(der).map_err(|e| bad(e.to_string()))?;
            HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        }
        None => HttpsConnectorBuilder::new()
            .try_with_platform_verifier()
            .map_err(|e| AcmeError::Protocol {
                step: "setting up the HTTPS client",
                detail: e.to_string(),
            })?,
    };
    // instant-acme's own client, but with TCP_NODELAY: rustls may write a request
    // as more than one segment, and with Nagle's algorithm the second then waits
    // for the CA's delayed ACK (40 ms on Linux), on each of the ten or so requests of
    // an order.
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    let https = tls
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp);
    let client: HyperClient<_, BodyWrapper<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(https);
    Ok(Account::builder_with_http(Box::new(client)))
}

/// Registers a new account with the CA in `settings` and stores its credentials
/// under `state_dir` (mode 0600), replacing any stored before.
pub(crate) async fn register(
    settings: &config::Acme,
    state_dir: &Path,
) -> Result<Account, AcmeError> {
    let path = state_dir.join(ACCOUNT_FILE);
    let eab = match &settings.eab {
        Some(eab) => {
            let bad = |detail: String| AcmeError::EabKey {
                path: eab.hmac_key_file.clone(),
                detail,
            };
            let text =
                std::fs::read_to_string(&eab.hmac_key_file).map_err(|e| bad(e.to_string()))?;
            let key = base64url_decode(text.trim()).map_err(|e| bad(e.to_string()))?;
            if key.is_empty() {
                return Err(bad("the file is empty".into()));
            }
            Some(ExternalAccountKey::new(eab.kid.clone(), &key))
        }
        None => None,
    };
    let contact: Vec<&str> = settings.contact.iter().map(String::as_str).collect();
    let new_account = NewAccount {
        contact: &contact,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, credentials) = account_builder(settings)?
        .create(&new_account, settings.directory.clone(), eab.as_ref())
        .await
        .map_err(|e| AcmeError::Register {
            directory: settings.directory.clone(),
            detail: e.to_string(),
        })?;
    let json =
        serde_json::to_vec_pretty(&credentials).expect("account credentials serialize to JSON");
    store(&path, &json, 0o600, "the ACME account credentials")?;
    tracing::info!(
        account = account.id(),
        directory = settings.directory,
        "registered an ACME account"
    );
    Ok(account)
}

/// Why the external account binding key is not base64url; the text follows "cannot
/// read the external account binding key PATH: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum NotBase64url {
    /// `position` counts characters from 1.
    #[error("character {position} ({found:?}) is not base64url")]
    Character { position: usize, found: char },
    #[error("the text is cut short (its length is not possible for base64url)")]
    CutShort,
}

/// Decodes base64url (RFC 4648 §5), with or without padding; also accepts the
/// standard alphabet's `+` and `/`, which people paste by mistake.
fn base64url_decode(text: &str) -> Result<Vec<u8>, NotBase64url> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for (i, c) in text.trim_end_matches('=').chars().enumerate() {
        let v = match c {
            'A'..='Z' => c as u32 - 'A' as u32,
            'a'..='z' => c as u32 - 'a' as u32 + 26,
            '0'..='9' => c as u32 - '0' as u32 + 52,
            '-' | '+' => 62,
            '_' | '/' => 63,
            _ => {
                return Err(NotBase64url::Character {
                    position: i + 1,
                    found: c,
                });
            }
        };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 {
        return Err(NotBase64url::CutShort);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_decodes_with_and_without_padding() {
        assert_eq!(base64url_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64url_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64url_decode("_-8").unwrap(), [0xff, 0xef]);
        assert_eq!(base64url_decode("/+8").unwrap(), [0xff, 0xef]);
        assert_eq!(base64url_decode("").unwrap(), b"");
        assert_eq!(base64url_decode("a"), Err(NotBase64url::CutShort));
        assert_eq!(
            base64url_decode("ab c"),
            Err(NotBase64url::Character {
                position: 3,
                found: ' '
            })
        );
    }

    #[test]
    fn why_a_key_is_not_base64url_reads_as_before() {
        assert_eq!(
            NotBase64url::Character {
                position: 3,
                found: ' '
            }
            .to_string(),
            "character 3 (' ') is not base64url"
        );
        assert_eq!(
            NotBase64url::CutShort.to_string(),
            "the text is cut short (its length is not possible for base64url)"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn eab_key_file_problems_are_reported_before_any_network() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hmac"), "not base64!").unwrap();
        let settings = config::Acme {
            directory: "https://127.0.0.1:9/dir".into(),
            contact: vec![],
            extra_names: vec![],
            challenge: config::Challenge::Http01,
            webroot: None,
            trust_root: None,
            eab: Some(config::Eab {
                kid: "kid".into(),
                hmac_key_file: dir.path().join("hmac"),
            }),
        };
        let Err(e) = account(&settings, dir.path()).await else {
            panic!("account() succeeded")
        };
        let e = e.to_string();
        assert!(
            e.starts_with(&format!(
                "cannot read the external account binding key {}/hmac: character 4",
                dir.path().display()
            )),
            "{e}"
        );
        std::fs::create_dir_all(dir.path().join("acme")).unwrap();
        std::fs::write(dir.path().join(ACCOUNT_FILE), "garbage").unwrap();
        let Err(e) = account(&settings, dir.path()).await else {
            panic!("account() succeeded")
        };
        let e = e.to_string();
        assert!(
            e.contains("account.json cannot be used: expected value"),
            "{e}"
        );
    }
}
