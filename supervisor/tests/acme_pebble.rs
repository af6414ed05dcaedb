//! The ACME client against a real pebble (Let's Encrypt's test CA) on 127.0.0.1,
//! with pebble-challtestsrv as its DNS (every name resolves to 127.0.0.1): real
//! http-01 validation, never PEBBLE_VA_ALWAYS_VALID.
//!
//! Each test starts its own pebble on free ports, killed when the test ends. A missing
//! pebble fails the tests (the README's test command installs it).

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use postmaster::acme::{self, AcmeError, Http01Server, Responder};
use postmaster::config;
use postmaster::tls;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PEBBLE: &str = "/usr/bin/pebble";
const CHALLTESTSRV: &str = "/usr/bin/pebble-challtestsrv";

struct Pebble {
    dir: tempfile::TempDir,
    pebble: Child,
    dns: Child,
    directory: String,
    management: SocketAddr,
    /// The root that signs pebble's own HTTPS listener (not the issuing root).
    api_root: PathBuf,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.dns] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(program: &str, args: &[&str], log: &Path, envs: &[(&str, &str)]) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): install Debian's pebble package (the README's test command does: apt-get install pebble)")
        })
}

impl Pebble {
    /// Starts pebble; it validates http-01 on 127.0.0.1:`http_port`.
    async fn start(http_port: u16) -> Pebble {
        Pebble::start_with(http_port, serde_json::json!({})).await
    }

    /// Like [`Pebble::start`], with `extra` settings merged into pebble's configuration.
    async fn start_with(http_port: u16, extra: serde_json::Value) -> Pebble {
        for program in [PEBBLE, CHALLTESTSRV] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: install Debian's pebble package (the README's test command does: apt-get install pebble)"
            );
        }
        let dir = tempfile::tempdir().unwrap();

        // pebble's HTTPS listener needs a certificate: a throwaway CA and a leaf for 127.0.0.1.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "postmaster test pebble API root");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        let api_root = dir.path().join("api-root.pem");
        std::fs::write(&api_root, ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem()).unwrap();

        let (listen, management, tls_port, dns_port, dns_management) = (
            free_tcp_port(),
            free_tcp_port(),
            free_tcp_port(),
            free_udp_port(),
            free_tcp_port(),
        );
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": dir.path().join("cert.pem"),
                "privateKey": dir.path().join("key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        for (key, value) in extra.as_object().unwrap() {
            config["pebble"][key] = value.clone();
        }
        let config_path = dir.path().join("pebble-config.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();

        let dns = spawn(
            CHALLTESTSRV,
            &[
                "-management",
                &format!("127.0.0.1:{dns_management}"),
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ],
            &dir.path().join("challtestsrv.log"),
            &[],
        );
        let pebble = spawn(
            PEBBLE,
            &[
                "-config",
                config_path.to_str().unwrap(),
                "-dnsserver",
                &format!("127.0.0.1:{dns_port}"),
            ],
            &dir.path().join("pebble.log"),
            &[
                ("PEBBLE_VA_NOSLEEP", "1"),
                // Pebble rejects 5% of nonces by default to exercise clients' retries: not here.
                ("PEBBLE_WFE_NONCEREJECT", "0"),
                // Every order must be validated afresh.
                ("PEBBLE_AUTHZREUSE", "0"),
            ],
        );
        let env = Pebble {
            dir,
            pebble,
            dns,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management: ([127, 0, 0, 1], management).into(),
            api_root,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in [listen, management, dns_management] {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                assert!(
                    Instant::now() < deadline,
                    "pebble did not start listening on {port} within 10 s:\n{}",
                    env.logs()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        env
    }

    fn logs(&self) -> String {
        ["pebble.log", "challtestsrv.log"]
            .iter()
            .map(|f| {
                format!(
                    "--- {f}\n{}",
                    std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default()
                )
            })
            .collect()
    }

    fn settings(&self) -> config::Acme {
        config::Acme {
            directory: self.directory.clone(),
            contact: vec!["mailto:postmaster@example.org".into()],
            extra_names: vec![],
            challenge: config::Challenge::Http01,
            webroot: None,
            trust_root: Some(self.api_root.clone()),
            eab: None,
        }
    }

    /// The root that issued the certificates (new at every pebble start), from the
    /// management interface.
    async fn issuing_root(&self) -> CertificateDer<'static> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&self.api_root).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(self.management)
            .await
            .unwrap();
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"GET /roots/0 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        // Go may close without close_notify: what arrived is enough.
        let _ = tls.read_to_end(&mut response).await;
        let text = String::from_utf8_lossy(&response);
        let start = text
            .find("-----BEGIN CERTIFICATE-----")
            .unwrap_or_else(|| panic!("no root in {text}"));
        CertificateDer::from_pem_slice(text[start..].as_bytes()).unwrap()
    }

    /// Checks that `chain` leads from a leaf for `names` to pebble's issuing root.
    async fn assert_chain_trusted(&self, chain_pem: &str, names: &[String]) {
        let root = self.issuing_root().await;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .map(Result::unwrap)
                .collect();
        let (leaf, intermediates) = certs.split_first().unwrap();
        for name in names {
            verifier
                .verify_server_cert(
                    leaf,
                    intermediates,
                    &ServerName::try_from(name.clone()).unwrap(),
                    &[],
                    UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("the chain is not trusted for {name}: {e}"));
        }
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn challenge_files(webroot: &Path) -> Vec<String> {
    match std::fs::read_dir(webroot.join(".well-known/acme-challenge")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn issues_through_the_builtin_http01_server() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let pebble = Pebble::start(listener.local_addr().unwrap().port()).await;
    let server = Http01Server::start(listener).unwrap();
    let state = tempfile::tempdir().unwrap();
    let account = acme::account(&pebble.settings(), state.path())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()));

    let names = names(&["mail.example.org", "example.org"]);
    let started = Instant::now();
    let (chain, key) = acme::obtain(&account, &names, &Responder::Listener(server.clone()), None)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()));
    eprintln!(
        "issuance for {names:?} through Http01Server took {:?}",
        started.elapsed()
    );

    let info =
        tls::validate_pair(chain.as_bytes(), key.as_bytes(), &names, SystemTime::now()).unwrap();
    let mut covered = info.names.clone();
    covered.sort();
    assert_eq!(covered, ["example.org", "mail.example.org"]);
    assert!(info.chain_len >= 2, "{info:?}");
    pebble.assert_chain_trusted(&chain, &names).await;
    // pebble really fetched both answers from the server.
    assert!(
        server.answered() >= 2,
        "the server answered {} challenge requests",
        server.answered()
    );

    // ARI: used when pebble offers it, None otherwise; either way a window must be sane.
    let id = acme::certificate_id(&chain).expect("pebble's leaf has an authority key identifier");
    match acme::renewal_window(&account, &id)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()))
    {
        Some(w) => {
            eprintln!(
                "ARI window: {} .. {}, ask again in {:?}",
                tls::format_utc(w.start),
                tls::format_utc(w.end),
                w.ask_again
            );
            assert!(w.start <= w.end && w.start > info.not_before && w.end <= info.not_after);
        }
        None => eprintln!("this pebble offers no ARI"),
    }

    // The renewal names the certificate it replaces; a CA without ARI refuses
    // `replaces`, and the order goes through without it.
    let (renewed, _) = acme::obtain(
        &account,
        &names,
        &Responder::Listener(server.clone()),
        Some(&id),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()));
    assert_ne!(
        acme::certificate_id(&renewed),
        Some(id),
        "a new certificate, with a new serial"
    );
}

/// A static file server for a webroot, as nginx would be: records what it served.
async fn serve_webroot(listener: TcpListener, root: PathBuf, served: Arc<Mutex<Vec<String>>>) {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        let (mut stream, _) = listener.accept().await.unwrap();
        let root = root.clone();
        let served = served.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                match stream.read(&mut buf[len..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => len += n,
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]).into_owned();
            let path = head.split(' ').nth(1).unwrap_or("/").to_string();
            let file = root.join(path.trim_start_matches('/'));
            let response = match (path.contains(".."), std::fs::read(&file)) {
                (false, Ok(body)) => {
                    served.lock().unwrap().push(path.clone());
                    [
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes(),
                        body,
                    ]
                    .concat()
                }
                _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = stream.write_all(&response).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[tokio::test(flavor = "current_thread")]
async fn issues_through_a_webroot() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let pebble = Pebble::start(listener.local_addr().unwrap().port()).await;
    let webroot = tempfile::tempdir().unwrap();
    let served = Arc::new(Mutex::new(Vec::new()));
    let web = tokio::spawn(serve_webroot(
        listener,
        webroot.path().to_path_buf(),
        served.clone(),
    ));
    let state = tempfile::tempdir().unwrap();
    let account = acme::account(&pebble.settings(), state.path())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()));

    let names = names(&["webroot.example.org"]);
    let started = Instant::now();
    let (chain, key) = acme::obtain(
        &account,
        &names,
        &Responder::Webroot(webroot.path().to_path_buf()),
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()));
    eprintln!(
        "issuance for {names:?} through a webroot took {:?}",
        started.elapsed()
    );
    web.abort();

    tls::validate_pair(chain.as_bytes(), key.as_bytes(), &names, SystemTime::now()).unwrap();
    pebble.assert_chain_trusted(&chain, &names).await;
    let served = served.lock().unwrap().clone();
    assert!(
        !served.is_empty()
            && served
                .iter()
                .all(|p| p.starts_with("/.well-known/acme-challenge/")),
        "the token did not travel through the webroot: {served:?}"
    );
    assert_eq!(
        challenge_files(webroot.path()),
        Vec::<String>::new(),
        "tokens left behind in the webroot"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn the_stored_account_is_reused() {
    let mut pebble = Pebble::start(free_tcp_port()).await;
    let state = tempfile::tempdir().unwrap();
    let settings = pebble.settings();
    let first = acme::account(&settings, state.path())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()));
    let path = state.path().join(acme::ACCOUNT_FILE);
    let stored = std::fs::read(&path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let json: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(json["directory"], settings.directory.as_str(), "{json}");
    assert_eq!(json["id"], first.id(), "{json}");

    let second = acme::account(&settings, state.path()).await.unwrap();
    assert_eq!(
        second.id(),
        first.id(),
        "a second account was registered instead of loading the stored one"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        stored,
        "the stored credentials changed"
    );
    assert!(
        first
            .id()
            .starts_with(&format!("{}/", settings.directory.trim_end_matches("/dir"))),
        "{}",
        first.id()
    );

    // Credentials for another CA are not used there: a new account replaces them.
    let mut other = settings.clone();
    other.directory = format!("{}?other", settings.directory);
    let third = acme::account(&other, state.path()).await.unwrap();
    assert_ne!(third.id(), first.id());
    assert_ne!(std::fs::read(&path).unwrap(), stored);

    // A CA that cannot be reached is reported as such, not as a broken account file.
    pebble.pebble.kill().unwrap();
    pebble.pebble.wait().unwrap();
    let Err(err) = acme::account(&other, state.path()).await else {
        panic!("loaded an account from a dead CA")
    };
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "cannot reach the ACME CA at {}: ",
            other.directory
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_responder_nobody_reaches_gives_a_clear_error() {
    // Nothing listens on pebble's http-01 port; the webroot is served by no one.
    let pebble = Pebble::start(free_tcp_port()).await;
    let state = tempfile::tempdir().unwrap();
    let account = acme::account(&pebble.settings(), state.path())
        .await
        .unwrap();
    let webroot = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let err = acme::obtain(
        &account,
        &names(&["refused.example.org"]),
        &Responder::Webroot(webroot.path().to_path_buf()),
        None,
    )
    .await
    .expect_err("issuance succeeded though nothing answered http-01");
    eprintln!("rejection took {:?}: {err}", started.elapsed());
    assert!(matches!(err, AcmeError::Challenge { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("the CA could not validate refused.example.org with http-01: "),
        "{text}"
    );
    assert!(
        text.contains("127.0.0.1") && text.to_lowercase().contains("connection refused"),
        "{text}"
    );
    assert_eq!(
        challenge_files(webroot.path()),
        Vec::<String>::new(),
        "the token was not withdrawn"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_wrong_answer_gives_a_clear_error() {
    // pebble asks a server that has no answer (404), while the answer is published on
    // another server pebble does not reach.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let pebble = Pebble::start(listener.local_addr().unwrap().port()).await;
    let _unanswering = Http01Server::start(listener).unwrap();
    let elsewhere = Http01Server::start(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    let state = tempfile::tempdir().unwrap();
    let account = acme::account(&pebble.settings(), state.path())
        .await
        .unwrap();
    let err = acme::obtain(
        &account,
        &names(&["wrong.example.org"]),
        &Responder::Listener(elsewhere),
        None,
    )
    .await
    .expect_err("issuance succeeded though the answer was never served");
    let text = err.to_string();
    eprintln!("wrong answer: {text}");
    assert!(
        text.starts_with("the CA could not validate wrong.example.org with http-01: "),
        "{text}"
    );
    assert!(text.contains("404"), "{text}");
}

#[tokio::test(flavor = "current_thread")]
async fn external_account_binding_is_sent_when_configured() {
    const KID: &str = "kid-1";
    const HMAC: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let pebble = Pebble::start_with(
        free_tcp_port(),
        serde_json::json!({"externalAccountBindingRequired": true, "externalAccountMACKeys": {KID: HMAC}}),
    )
    .await;
    let state = tempfile::tempdir().unwrap();
    let mut settings = pebble.settings();

    // Without a binding, the CA refuses, and nothing is stored.
    let Err(err) = acme::account(&settings, state.path()).await else {
        panic!("registered without EAB")
    };
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "cannot register an ACME account at {}: ",
            settings.directory
        )),
        "{text}"
    );
    assert!(text.contains("externalAccountRequired"), "{text}");
    assert!(!state.path().join(acme::ACCOUNT_FILE).exists());

    // A wrong key is refused too.
    let key_file = state.path().join("eab.key");
    std::fs::write(
        &key_file,
        "b10lLJs8l1GPIzsLP0s6pMt8O0XVGnfTaCeROxQM0BIt2XrJMDHJZBM5NuQmQJQH\n",
    )
    .unwrap();
    settings.eab = Some(config::Eab {
        kid: KID.into(),
        hmac_key_file: key_file.clone(),
    });
    let Err(err) = acme::account(&settings, state.path()).await else {
        panic!("registered with a wrong EAB key")
    };
    assert!(
        err.to_string()
            .starts_with("cannot register an ACME account at "),
        "{err}"
    );

    // The right key (with the newline editors add) registers the account.
    std::fs::write(&key_file, format!("{HMAC}\n")).unwrap();
    let account = acme::account(&settings, state.path())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()));
    assert!(state.path().join(acme::ACCOUNT_FILE).exists());
    let again = acme::account(&settings, state.path()).await.unwrap();
    assert_eq!(again.id(), account.id());
}
