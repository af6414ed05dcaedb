//! The certificate path end to end through the public API, without postfix: the
//! placeholder pair validates, a TLS server built from exactly those PEM files serves
//! it, and the probe reports the fingerprint `validate_pair` computed. If these two
//! fingerprints ever disagreed, the daemon would wait for a certificate forever.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use postmaster::probe::{self, StartTls};
use postmaster::tls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// An implicit-TLS server for the given PEM pair, as postfix would load it.
async fn serve(chain_pem: &str, key_pem: &str) -> SocketAddr {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let mut rest = Vec::new();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest))
                            .await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_placeholder_validates_and_is_recognised_when_served() {
    let names = vec!["mail.example.org".to_string(), "example.org".to_string()];
    let (chain, key) = tls::self_signed_placeholder(&names, SystemTime::now());
    let info =
        tls::validate_pair(chain.as_bytes(), key.as_bytes(), &names, SystemTime::now()).unwrap();
    assert_eq!(info.sha256_fingerprint.len(), 64);
    assert!(info.days_left(SystemTime::now()) >= 89);

    let addr = serve(&chain, &key).await;
    let served = probe::served_fingerprint(
        addr,
        "mail.example.org",
        StartTls::Implicit,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(served, info.sha256_fingerprint);

    let ports = [(addr, StartTls::Implicit)];
    let took = probe::wait_until_served(
        &ports,
        "mail.example.org",
        &info.sha256_fingerprint,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[tokio::test]
async fn a_new_placeholder_is_not_mistaken_for_the_served_one() {
    let names = vec!["mail.example.org".to_string()];
    let (old_chain, old_key) = tls::self_signed_placeholder(&names, SystemTime::now());
    let (new_chain, new_key) = tls::self_signed_placeholder(&names, SystemTime::now());
    let new = tls::validate_pair(
        new_chain.as_bytes(),
        new_key.as_bytes(),
        &names,
        SystemTime::now(),
    )
    .unwrap();

    let addr = serve(&old_chain, &old_key).await;
    let failed = probe::wait_until_served(
        &[(addr, StartTls::Implicit)],
        "mail.example.org",
        &new.sha256_fingerprint,
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, addr);
    assert!(
        matches!(&failed[0].1, probe::NotServing::OtherCertificate { expected, .. } if *expected == new.sha256_fingerprint),
        "{:?}",
        failed[0].1
    );
    let said = failed[0].1.to_string();
    assert!(
        said.starts_with("serves ") && said.ends_with(&format!(", not {}", new.sha256_fingerprint)),
        "{said}"
    );
}
