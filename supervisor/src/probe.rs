//! Which certificate do clients really get on this port?
//!
//! Installing a pair and reloading postfix and dovecot is not the end: a reload can
//! fail quietly, and smtpd processes from before a `postfix reload` keep serving the
//! old certificate for a second or two. So after an install the daemon connects like
//! a client (STARTTLS dance included), completes a TLS handshake and compares the
//! leaf it was shown with the one it installed.
//!
//! Effects: network and tokio timers. The chain is deliberately not verified (the
//! question is what is served, even a self-signed placeholder), and session
//! resumption is off, because a resumed session shows no certificate at all.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::tls::leaf_fingerprint_of_der;

/// How TLS starts on a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartTls {
    /// TLS from the first byte (465 submissions, 993 IMAPS, 995 POP3S).
    Implicit,
    Smtp,
    Imap,
    Pop3,
}

/// Which step of a probe failed, said so that the journal line alone is enough.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProbeError {
    #[error("{0:?} cannot be sent as a TLS server name")]
    BadServerName(String),
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// `expected` is the protocol's greeting: "220", "* OK" or "+OK".
    #[error("no {expected} greeting from {addr}: {got}")]
    Greeting {
        addr: SocketAddr,
        expected: &'static str,
        got: String,
    },
    #[error("EHLO refused by {addr}: {reply}")]
    EhloRefused { addr: SocketAddr, reply: String },
    #[error("STARTTLS refused by {addr}: {reply}")]
    StartTlsRefused { addr: SocketAddr, reply: String },
    /// Bytes that arrive before the handshake would be read as if they came over TLS
    /// (the CVE-2011-0411 class of bug): a server doing this is broken or not the one
    /// we think.
    #[error("{addr} sent more after agreeing to STARTTLS: refusing to start TLS on top of it")]
    DataAfterStartTls { addr: SocketAddr },
    /// `doing` is what the probe was sending ("sending STARTTLS").
    #[error("connection to {addr} lost while {doing}: {reason}")]
    Io {
        addr: SocketAddr,
        doing: &'static str,
        reason: String,
    },
    #[error("TLS handshake with {addr} failed: {reason}")]
    Handshake { addr: SocketAddr, reason: String },
    #[error("{addr} completed the TLS handshake without showing a certificate")]
    NoCertificate { addr: SocketAddr },
    #[error("timed out after {:?} talking to {addr} ({step})", whole_millis(*after))]
    TimedOut {
        addr: SocketAddr,
        after: Duration,
        step: &'static str,
    },
}

/// Why a port was not seen serving the expected certificate by the deadline; the
/// journal and the status show the text, after the port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotServing {
    /// It serves another certificate (the old one, as a rule); fingerprints.
    #[error("serves {seen}, not {expected}")]
    OtherCertificate { seen: String, expected: String },
    /// Its last probe failed.
    #[error(transparent)]
    Probe(ProbeError),
    /// No probe of it finished within the deadline.
    #[error("no probe finished within {0:?}")]
    NoProbeFinished(Duration),
}

/// Rounded up to whole milliseconds: a timeout computed from a deadline should read
/// "800ms", not "799.936325ms".
fn whole_millis(d: Duration) -> Duration {
    let millis = d.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
}

/// Connects to `addr`, starts TLS the way `mode` says with SNI `server_name`, and
/// returns the SHA-256 fingerprint of the leaf certificate shown (the same form as
/// [`crate::tls::CertInfo::sha256_fingerprint`]). Everything, goodbye included, is
/// bounded by `timeout`.
pub async fn served_fingerprint(
    addr: SocketAddr,
    server_name: &str,
    mode: StartTls,
    timeout: Duration,
) -> Result<String, ProbeError> {
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|_| ProbeError::BadServerName(server_name.to_owned()))?;
    let started = Instant::now();
    // Written by the probe as it goes, read if the timeout cuts it off.
    let step = Mutex::new(STEP_CONNECT);
    let outcome = tokio::time::timeout(timeout, handshake(addr, name, mode, &step)).await;
    let (fingerprint, mut tls) = match outcome {
        Ok(result) => result?,
        Err(_) => {
            let step = *step.lock().unwrap_or_else(PoisonError::into_inner);
            return Err(ProbeError::TimedOut {
                addr,
                after: timeout,
                step,
            });
        }
    };
    // Saying goodbye keeps postfix from logging "lost connection after STARTTLS" for
    // every probe; whether it works changes nothing about the answer.
    let goodbye = timeout
        .saturating_sub(started.elapsed())
        .min(GOODBYE_TIMEOUT);
    let _ = tokio::time::timeout(goodbye, async {
        let quit: &[u8] = match mode {
            StartTls::Smtp | StartTls::Pop3 => b"QUIT\r\n",
            StartTls::Imap => b"a LOGOUT\r\n",
            StartTls::Implicit => b"",
        };
        if !quit.is_empty() {
            tls.write_all(quit).await?;
        }
        tls.shutdown().await
    })
    .await;
    Ok(fingerprint)
}

/// Probes every port about every 50 ms until the latest probe of each shows
/// `fingerprint`; returns how long that took. At `deadline`, returns for each port
/// that does not serve it what its latest probe saw or how it failed.
///
/// "Latest probe of each", not "each once": after a `postfix reload`, a new smtpd may
/// show the new certificate while an old one still answers the next connection. Each
/// port is polled on its own, so one hung port does not hold up what the others show.
pub async fn wait_until_served(
    addrs: &[(SocketAddr, StartTls)],
    server_name: &str,
    fingerprint: &str,
    deadline: Duration,
) -> Result<Duration, Vec<(SocketAddr, NotServing)>> {
    if addrs.is_empty() {
        return Ok(Duration::ZERO);
    }
    let started = tokio::time::Instant::now();
    let end = started + deadline;
    let server_name: Arc<str> = Arc::from(server_name);
    let (report, mut reports) = tokio::sync::mpsc::unbounded_channel();
    // Dropping the set when this function returns aborts the pollers.
    let mut pollers = tokio::task::JoinSet::new();
    for (index, &(addr, mode)) in addrs.iter().enumerate() {
        let report = report.clone();
        let server_name = Arc::clone(&server_name);
        pollers.spawn(async move {
            loop {
                let timeout = end
                    .saturating_duration_since(tokio::time::Instant::now())
                    .min(PROBE_TIMEOUT);
                if timeout.is_zero() {
                    return;
                }
                let result = served_fingerprint(addr, &server_name, mode, timeout).await;
                if report.send((index, result)).is_err() {
                    return;
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        });
    }
    drop(report);

    let mut latest: Vec<Option<Result<String, ProbeError>>> = vec![None; addrs.len()];
    let serves =
        |r: &Option<Result<String, ProbeError>>| matches!(r, Some(Ok(seen)) if seen == fingerprint);
    // Probes cut off by the deadline report just after it; the grace lets a port that
    // never answered say at which step it hung.
    while let Ok(Some((index, result))) =
        tokio::time::timeout_at(end + REPORT_GRACE, reports.recv()).await
    {
        // A probe the deadline cut short knows less than the one before it, and after
        // the deadline only ports that never answered are still waited for.
        let cut_short =
            matches!(&result, Err(ProbeError::TimedOut { after, .. }) if *after < PROBE_TIMEOUT);
        let late = tokio::time::Instant::now() > end;
        if (cut_short || late) && latest[index].is_some() {
            continue;
        }
        latest[index] = Some(result);
        if latest.iter().all(serves) {
            return Ok(started.elapsed());
        }
    }
    Err(addrs
        .iter()
        .zip(latest)
        .filter_map(|(&(addr, _), result)| match result {
            Some(Ok(seen)) if seen == fingerprint => None,
            Some(Ok(seen)) => Some((
                addr,
                NotServing::OtherCertificate {
                    seen,
                    expected: fingerprint.to_string(),
                },
            )),
            Some(Err(e)) => Some((addr, NotServing::Probe(e))),
            None => Some((addr, NotServing::NoProbeFinished(deadline))),
        })
        .collect())
}

/// A port's next probe after one that did not show the new certificate. Not much
/// shorter: each probe is a session of postfix's smtpd, whose processes exit after
/// max_use (100) sessions, so probing faster would cycle old processes out by
/// itself and hide an smtpd that needs postfix's reload (the fallback, which the
/// bed tests prove).
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// One probe of a local port takes milliseconds; a port silent this long is hung.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const REPORT_GRACE: Duration = Duration::from_millis(100);
const GOODBYE_TIMEOUT: Duration = Duration::from_millis(250);
/// Longer lines are not a mail server talking.
const MAX_LINE: usize = 4096;

const STEP_CONNECT: &str = "connecting";
const STEP_GREETING: &str = "waiting for the greeting";
const STEP_EHLO: &str = "waiting for the EHLO reply";
const STEP_STARTTLS: &str = "waiting for the STARTTLS reply";
const STEP_HANDSHAKE: &str = "in the TLS handshake";

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn handshake(
    addr: SocketAddr,
    name: ServerName<'static>,
    mode: StartTls,
    step: &Mutex<&'static str>,
) -> Result<(String, Tls), ProbeError> {
    let at = |s: &'static str| *step.lock().unwrap_or_else(PoisonError::into_inner) = s;
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| ProbeError::Connect {
            addr,
            reason: e.to_string(),
        })?;
    let mut plain = Plain {
        addr,
        stream,
        buf: Vec::new(),
    };
    // Each read failure is reported as the step's failure (see `NoReply`).
    let greeting = |expected: &'static str| {
        move |got| ProbeError::Greeting {
            addr,
            expected,
            got,
        }
    };
    let refused = |reply| ProbeError::StartTlsRefused { addr, reply };
    match mode {
        StartTls::Implicit => {}
        StartTls::Smtp => {
            at(STEP_GREETING);
            match plain
                .smtp_reply()
                .await
                .map_err(|e| greeting("220")(e.to_string()))?
            {
                (220, _) => {}
                (_, text) => return Err(greeting("220")(text)),
            }
            at(STEP_EHLO);
            plain
                .send(b"EHLO postmaster.probe\r\n", "sending EHLO")
                .await?;
            match plain.smtp_reply().await {
                Ok((250, _)) => {}
                Ok((_, reply)) => return Err(ProbeError::EhloRefused { addr, reply }),
                Err(e) => {
                    let reply = e.to_string();
                    return Err(ProbeError::EhloRefused { addr, reply });
                }
            }
            at(STEP_STARTTLS);
            plain.send(b"STARTTLS\r\n", "sending STARTTLS").await?;
            match plain
                .smtp_reply()
                .await
                .map_err(|e| refused(e.to_string()))?
            {
                (220, _) => {}
                (_, reply) => return Err(refused(reply)),
            }
        }
        StartTls::Imap => {
            at(STEP_GREETING);
            let line = plain
                .line()
                .await
                .map_err(|e| greeting("* OK")(e.to_string()))?;
            if !starts_with_ignore_case(&line, "* OK") {
                return Err(greeting("* OK")(shown(line)));
            }
            at(STEP_STARTTLS);
            plain.send(b"a STARTTLS\r\n", "sending STARTTLS").await?;
            // Untagged lines (a CAPABILITY, say) may come before the tagged answer.
            let reply = loop {
                let line = plain.line().await.map_err(|e| refused(e.to_string()))?;
                if starts_with_ignore_case(&line, "a ") {
                    break line;
                }
            };
            if !starts_with_ignore_case(&reply, "a OK") {
                return Err(refused(shown(reply)));
            }
        }
        StartTls::Pop3 => {
            at(STEP_GREETING);
            let line = plain
                .line()
                .await
                .map_err(|e| greeting("+OK")(e.to_string()))?;
            if !line.starts_with("+OK") {
                return Err(greeting("+OK")(shown(line)));
            }
            at(STEP_STARTTLS);
            plain.send(b"STLS\r\n", "sending STLS").await?;
            let reply = plain.line().await.map_err(|e| refused(e.to_string()))?;
            if !reply.starts_with("+OK") {
                return Err(refused(shown(reply)));
            }
        }
    }
    if !plain.buf.is_empty() {
        return Err(ProbeError::DataAfterStartTls { addr });
    }

    at(STEP_HANDSHAKE);
    let tls = TlsConnector::from(client_config())
        .connect(name, plain.stream)
        .await
        .map_err(|e| ProbeError::Handshake {
            addr,
            reason: e.to_string(),
        })?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first());
    match leaf {
        Some(leaf) => Ok((leaf_fingerprint_of_der(leaf), tls)),
        None => Err(ProbeError::NoCertificate { addr }),
    }
}

/// The plaintext part of a STARTTLS session: line reading without over-reading into
/// what must go to the TLS layer.
struct Plain {
    addr: SocketAddr,
    stream: TcpStream,
    /// Received, not yet consumed. Must be empty when TLS starts.
    buf: Vec<u8>,
}

impl Plain {
    async fn send(&mut self, bytes: &[u8], doing: &'static str) -> Result<(), ProbeError> {
        let addr = self.addr;
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| ProbeError::Io {
                addr,
                doing,
                reason: e.to_string(),
            })
    }

    /// One line without its line end.
    async fn line(&mut self) -> Result<String, NoReply> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line);
                return Ok(text.trim_end_matches(['\r', '\n']).to_string());
            }
            if self.buf.len() > MAX_LINE {
                return Err(NoReply::LineTooLong);
            }
            let mut chunk = [0u8; 1024];
            match self.stream.read(&mut chunk).await {
                Ok(0) => return Err(NoReply::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(NoReply::Read(e)),
            }
        }
    }

    /// A whole SMTP reply, continuation lines (`250-`) included: its code and its
    /// lines joined.
    async fn smtp_reply(&mut self) -> Result<(u16, String), NoReply> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await?;
            let Some((code, last)) = smtp_reply_line(&line) else {
                return Err(NoReply::NotSmtp(shown(line)));
            };
            lines.push(line);
            if last {
                return Ok((code, shown(lines.join(" / "))));
            }
        }
    }
}

/// Why no line, or no SMTP reply, came where one was due. The step's error carries
/// this text ("no 220 greeting from …: the server closed the connection"): that is
/// what the admin needs to know.
#[derive(Debug, thiserror::Error)]
enum NoReply {
    #[error("a line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("the server closed the connection")]
    Closed,
    #[error("{0}")]
    Read(std::io::Error),
    /// What came instead of an SMTP reply line, made fit for the journal by [`shown`].
    #[error("{0}")]
    NotSmtp(String),
}

/// `250-text` is (250, more follows), `250 text` and `250` are (250, last).
fn smtp_reply_line(line: &str) -> Option<(u16, bool)> {
    let code = line
        .get(..3)
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))?
        .parse()
        .ok()?;
    match line.as_bytes().get(3) {
        None | Some(b' ') => Some((code, true)),
        Some(b'-') => Some((code, false)),
        Some(_) => None,
    }
}

fn starts_with_ignore_case(line: &str, prefix: &str) -> bool {
    line.get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

/// A server's words fit for one journal line: control characters escaped, length capped.
fn shown(text: String) -> String {
    const MAX: usize = 300;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if out.is_empty() {
        out = "an empty line".to_string();
    }
    if out.len() > MAX {
        let mut cut = MAX;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

fn client_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ShowMeAnything { provider }))
            .with_no_client_auth();
        // A resumed session shows no certificate: every probe must see a fresh one.
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }))
}

/// Accepts whatever the server shows: the probe asks which certificate is served, not
/// whether a client would trust it (a placeholder is self-signed). Handshake
/// signatures are not checked either, so a certificate that webpki cannot parse is
/// still reported rather than turned into a handshake error.
#[derive(Debug)]
struct ShowMeAnything {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for ShowMeAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::ServerConfig;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::server::{ClientHello, ResolvesServerCert};
    use rustls::sign::CertifiedKey;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    /// A certificate for a test server and the fingerprint the probe should report.
    struct Served {
        key: Arc<CertifiedKey>,
        fingerprint: String,
    }

    fn served(name: &str) -> Served {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let key_der = PrivateKeyDer::try_from(signing_key.serialize_der()).unwrap();
        let key = rustls::crypto::ring::sign::any_supported_type(&key_der).unwrap();
        let fingerprint = leaf_fingerprint_of_der(cert.der());
        Served {
            key: Arc::new(CertifiedKey::new(vec![cert.der().clone()], key)),
            fingerprint,
        }
    }

    /// Picks the certificate by SNI (`b.example` gets `b`), and can be switched at run
    /// time like a reload.
    #[derive(Debug)]
    struct Resolver {
        current: Mutex<Arc<CertifiedKey>>,
        by_sni_b: Option<Arc<CertifiedKey>>,
    }

    impl ResolvesServerCert for Resolver {
        fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            if hello.server_name() == Some("b.example")
                && let Some(b) = &self.by_sni_b
            {
                return Some(Arc::clone(b));
            }
            Some(Arc::clone(&self.current.lock().unwrap()))
        }
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Script {
        Implicit,
        Smtp,
        Imap,
        Pop3,
        /// Accepts the connection and never says a word.
        Silent,
        SmtpNoTls,
        SmtpRejects,
        /// Sends a line more right after its STARTTLS "go ahead".
        SmtpInjects,
        ImapRefuses,
        Pop3Refuses,
    }

    struct Server {
        addr: SocketAddr,
        resolver: Arc<Resolver>,
    }

    impl Server {
        fn switch_to(&self, key: &Served) {
            *self.resolver.current.lock().unwrap() = Arc::clone(&key.key);
        }
    }

    async fn server(script: Script, first: &Served) -> Server {
        server_with(script, first, None, None).await
    }

    async fn server_with(
        script: Script,
        first: &Served,
        by_sni_b: Option<&Served>,
        only: Option<&'static rustls::SupportedProtocolVersion>,
    ) -> Server {
        let resolver = Arc::new(Resolver {
            current: Mutex::new(Arc::clone(&first.key)),
            by_sni_b: by_sni_b.map(|s| s.key.clone()),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = match only {
            Some(v) => vec![v],
            None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(talk(script, stream, acceptor.clone()));
            }
        });
        Server { addr, resolver }
    }

    /// Reads one line a byte at a time, so nothing meant for TLS is consumed.
    async fn read_line(stream: &mut TcpStream) -> String {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stream.read(&mut byte).await.unwrap_or(0) == 1 {
            line.push(byte[0]);
            if byte[0] == b'\n' {
                break;
            }
        }
        String::from_utf8_lossy(&line).into_owned()
    }

    async fn talk(script: Script, mut stream: TcpStream, acceptor: TlsAcceptor) {
        let say = async |stream: &mut TcpStream, text: &str| {
            stream.write_all(text.as_bytes()).await.unwrap()
        };
        match script {
            Script::Implicit => {}
            Script::Silent => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                return;
            }
            Script::Smtp | Script::SmtpNoTls | Script::SmtpInjects => {
                // Multi-line, like postscreen's pregreet test.
                say(&mut stream, "220-mail.example.org ESMTP\r\n220 Postfix\r\n").await;
                assert!(read_line(&mut stream).await.starts_with("EHLO "));
                say(
                    &mut stream,
                    "250-mail.example.org\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n",
                )
                .await;
                assert_eq!(read_line(&mut stream).await, "STARTTLS\r\n");
                match script {
                    Script::SmtpNoTls => {
                        say(
                            &mut stream,
                            "454 4.7.0 TLS not available due to local problem\r\n",
                        )
                        .await;
                        return;
                    }
                    Script::SmtpInjects => {
                        say(
                            &mut stream,
                            "220 2.0.0 Ready to start TLS\r\n250 injected\r\n",
                        )
                        .await
                    }
                    _ => say(&mut stream, "220 2.0.0 Ready to start TLS\r\n").await,
                }
            }
            Script::SmtpRejects => {
                say(
                    &mut stream,
                    "554 5.7.1 mail.example.org: no SMTP service here\r\n",
                )
                .await;
                return;
            }
            Script::Imap | Script::ImapRefuses => {
                say(
                    &mut stream,
                    "* OK [CAPABILITY IMAP4rev1 STARTTLS] Dovecot ready.\r\n",
                )
                .await;
                assert_eq!(read_line(&mut stream).await, "a STARTTLS\r\n");
                if script == Script::ImapRefuses {
                    say(&mut stream, "a BAD TLS support isn't enabled.\r\n").await;
                    return;
                }
                say(
                    &mut stream,
                    "* CAPABILITY IMAP4rev1\r\na OK Begin TLS negotiation now.\r\n",
                )
                .await;
            }
            Script::Pop3 | Script::Pop3Refuses => {
                say(&mut stream, "+OK Dovecot ready.\r\n").await;
                assert_eq!(read_line(&mut stream).await, "STLS\r\n");
                if script == Script::Pop3Refuses {
                    say(&mut stream, "-ERR TLS support isn't enabled.\r\n").await;
                    return;
                }
                say(&mut stream, "+OK Begin TLS negotiation now.\r\n").await;
            }
        }
        if let Ok(mut tls) = acceptor.accept(stream).await {
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
        }
    }

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn no_reply_says_what_came_instead() {
        assert_eq!(
            NoReply::LineTooLong.to_string(),
            "a line longer than 4096 bytes"
        );
        assert_eq!(
            NoReply::Closed.to_string(),
            "the server closed the connection"
        );
        assert_eq!(
            NoReply::Read(std::io::Error::from(std::io::ErrorKind::ConnectionReset)).to_string(),
            "connection reset"
        );
        assert_eq!(
            NoReply::NotSmtp(shown("* OK IMAP".into())).to_string(),
            "* OK IMAP"
        );
    }

    #[test]
    fn smtp_reply_lines() {
        assert_eq!(smtp_reply_line("220-mail ESMTP"), Some((220, false)));
        assert_eq!(smtp_reply_line("220 mail ESMTP"), Some((220, true)));
        assert_eq!(smtp_reply_line("250"), Some((250, true)));
        assert_eq!(smtp_reply_line("25"), None);
        assert_eq!(smtp_reply_line("2x0 no"), None);
        assert_eq!(smtp_reply_line("220mail"), None);
        assert_eq!(smtp_reply_line("* OK IMAP"), None);
        assert_eq!(smtp_reply_line("ü20 x"), None);
    }

    #[test]
    fn every_probe_error_text() {
        let addr: SocketAddr = "127.0.0.1:25".parse().unwrap();
        let t = |e: ProbeError| e.to_string();
        assert_eq!(
            t(ProbeError::BadServerName("a b".into())),
            "\"a b\" cannot be sent as a TLS server name"
        );
        assert_eq!(
            t(ProbeError::Connect {
                addr,
                reason: "Connection refused (os error 111)".into()
            }),
            "cannot connect to 127.0.0.1:25: Connection refused (os error 111)"
        );
        assert_eq!(
            t(ProbeError::Greeting {
                addr,
                expected: "220",
                got: "the server closed the connection".into()
            }),
            "no 220 greeting from 127.0.0.1:25: the server closed the connection"
        );
        assert_eq!(
            t(ProbeError::EhloRefused {
                addr,
                reply: "502 5.5.2 Error: command not recognized".into()
            }),
            "EHLO refused by 127.0.0.1:25: 502 5.5.2 Error: command not recognized"
        );
        assert_eq!(
            t(ProbeError::StartTlsRefused {
                addr,
                reply: "454 4.7.0 TLS not available due to local problem".into()
            }),
            "STARTTLS refused by 127.0.0.1:25: 454 4.7.0 TLS not available due to local problem"
        );
        assert_eq!(
            t(ProbeError::DataAfterStartTls { addr }),
            "127.0.0.1:25 sent more after agreeing to STARTTLS: refusing to start TLS on top of it"
        );
        assert_eq!(
            t(ProbeError::Io {
                addr,
                doing: "sending STARTTLS",
                reason: "Broken pipe (os error 32)".into()
            }),
            "connection to 127.0.0.1:25 lost while sending STARTTLS: Broken pipe (os error 32)"
        );
        assert_eq!(
            t(ProbeError::Handshake {
                addr,
                reason: "received corrupt message of type InvalidContentType".into()
            }),
            "TLS handshake with 127.0.0.1:25 failed: received corrupt message of type InvalidContentType"
        );
        assert_eq!(
            t(ProbeError::NoCertificate { addr }),
            "127.0.0.1:25 completed the TLS handshake without showing a certificate"
        );
        assert_eq!(
            t(ProbeError::TimedOut {
                addr,
                after: Duration::from_secs(2),
                step: STEP_HANDSHAKE
            }),
            "timed out after 2s talking to 127.0.0.1:25 (in the TLS handshake)"
        );
    }

    #[test]
    fn timeouts_read_in_whole_milliseconds() {
        let addr: SocketAddr = "127.0.0.1:25".parse().unwrap();
        let err = |after| {
            ProbeError::TimedOut {
                addr,
                after,
                step: STEP_STARTTLS,
            }
            .to_string()
        };
        assert_eq!(
            err(Duration::from_nanos(799_936_325)),
            "timed out after 800ms talking to 127.0.0.1:25 (waiting for the STARTTLS reply)"
        );
        assert_eq!(
            err(Duration::from_secs(3)),
            "timed out after 3s talking to 127.0.0.1:25 (waiting for the STARTTLS reply)"
        );
    }

    #[test]
    fn server_words_are_made_safe_for_the_journal() {
        assert_eq!(
            shown("454 TLS not available".to_string()),
            "454 TLS not available"
        );
        assert_eq!(shown("evil\u{1b}[2Jline".to_string()), "evil\\u{1b}[2Jline");
        assert_eq!(shown(String::new()), "an empty line");
        let long = shown("é".repeat(400));
        assert!(long.ends_with('…') && long.len() <= 304, "{long}");
    }

    #[tokio::test]
    async fn each_way_in_to_tls() {
        // Implicit TLS; SMTP STARTTLS after a multi-line greeting; IMAP STARTTLS; POP3 STLS.
        let cert = served("mail.example.org");
        for (script, mode) in [
            (Script::Implicit, StartTls::Implicit),
            (Script::Smtp, StartTls::Smtp),
            (Script::Imap, StartTls::Imap),
            (Script::Pop3, StartTls::Pop3),
        ] {
            let server = server(script, &cert).await;
            let got = served_fingerprint(server.addr, "mail.example.org", mode, T)
                .await
                .unwrap();
            assert_eq!(got, cert.fingerprint, "{mode:?}");
        }
    }

    #[tokio::test]
    async fn a_tls_1_2_only_server_is_probed_too() {
        let cert = served("mail.example.org");
        for script in [Script::Implicit, Script::Smtp] {
            let server = server_with(script, &cert, None, Some(&rustls::version::TLS12)).await;
            let mode = if script == Script::Smtp {
                StartTls::Smtp
            } else {
                StartTls::Implicit
            };
            let got = served_fingerprint(server.addr, "mail.example.org", mode, T)
                .await
                .unwrap();
            assert_eq!(got, cert.fingerprint);
        }
    }

    #[tokio::test]
    async fn sends_the_server_name_as_sni() {
        let a = served("a.example");
        let b = served("b.example");
        let server = server_with(Script::Implicit, &a, Some(&b), None).await;
        assert_eq!(
            served_fingerprint(server.addr, "a.example", StartTls::Implicit, T)
                .await
                .unwrap(),
            a.fingerprint
        );
        assert_eq!(
            served_fingerprint(server.addr, "b.example", StartTls::Implicit, T)
                .await
                .unwrap(),
            b.fingerprint
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out_saying_where() {
        let cert = served("mail.example.org");
        let server = server(Script::Silent, &cert).await;
        let started = Instant::now();
        let timeout = Duration::from_millis(300);
        let err = served_fingerprint(server.addr, "mail.example.org", StartTls::Smtp, timeout)
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            err,
            ProbeError::TimedOut {
                addr: server.addr,
                after: timeout,
                step: STEP_GREETING
            }
        );
        assert_eq!(
            err.to_string(),
            format!(
                "timed out after 300ms talking to {} (waiting for the greeting)",
                server.addr
            )
        );
        // Implicit TLS: the server never answers the ClientHello.
        let err = served_fingerprint(server.addr, "mail.example.org", StartTls::Implicit, timeout)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ProbeError::TimedOut {
                addr: server.addr,
                after: timeout,
                step: STEP_HANDSHAKE
            }
        );
    }

    #[tokio::test]
    async fn starttls_refusals_are_clear() {
        let cert = served("mail.example.org");
        let smtp = server(Script::SmtpNoTls, &cert).await;
        let err = served_fingerprint(smtp.addr, "mail.example.org", StartTls::Smtp, T)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "STARTTLS refused by {}: 454 4.7.0 TLS not available due to local problem",
                smtp.addr
            )
        );
        let imap = server(Script::ImapRefuses, &cert).await;
        let err = served_fingerprint(imap.addr, "mail.example.org", StartTls::Imap, T)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "STARTTLS refused by {}: a BAD TLS support isn't enabled.",
                imap.addr
            )
        );
        let pop3 = server(Script::Pop3Refuses, &cert).await;
        let err = served_fingerprint(pop3.addr, "mail.example.org", StartTls::Pop3, T)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "STARTTLS refused by {}: -ERR TLS support isn't enabled.",
                pop3.addr
            )
        );
    }

    #[tokio::test]
    async fn wrong_greetings_are_clear() {
        let cert = served("mail.example.org");
        let smtp = server(Script::SmtpRejects, &cert).await;
        let err = served_fingerprint(smtp.addr, "mail.example.org", StartTls::Smtp, T)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no 220 greeting from {}: 554 5.7.1 mail.example.org: no SMTP service here",
                smtp.addr
            )
        );
        // An IMAP server asked to speak SMTP, and the other way round.
        let imap = server(Script::Imap, &cert).await;
        let err = served_fingerprint(imap.addr, "mail.example.org", StartTls::Smtp, T)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no 220 greeting from {}: * OK [CAPABILITY IMAP4rev1 STARTTLS] Dovecot ready.",
                imap.addr
            )
        );
        let smtp = server(Script::Smtp, &cert).await;
        let err = served_fingerprint(smtp.addr, "mail.example.org", StartTls::Imap, T)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no * OK greeting from {}: 220-mail.example.org ESMTP",
                smtp.addr
            )
        );
        let err = served_fingerprint(smtp.addr, "mail.example.org", StartTls::Pop3, T)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no +OK greeting from {}: 220-mail.example.org ESMTP",
                smtp.addr
            )
        );
    }

    #[tokio::test]
    async fn a_closed_connection_before_the_greeting() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        let err = served_fingerprint(addr, "mail.example.org", StartTls::Smtp, T)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no 220 greeting from {addr}: the server closed the connection")
        );
        let err = served_fingerprint(addr, "mail.example.org", StartTls::Imap, T)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no * OK greeting from {addr}: the server closed the connection")
        );
        let err = served_fingerprint(addr, "mail.example.org", StartTls::Pop3, T)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no +OK greeting from {addr}: the server closed the connection")
        );
    }

    #[tokio::test]
    async fn refuses_data_injected_after_starttls() {
        let cert = served("mail.example.org");
        let server = server(Script::SmtpInjects, &cert).await;
        let err = served_fingerprint(server.addr, "mail.example.org", StartTls::Smtp, T)
            .await
            .unwrap_err();
        assert_eq!(err, ProbeError::DataAfterStartTls { addr: server.addr });
    }

    #[tokio::test]
    async fn plaintext_where_tls_was_expected_fails_the_handshake() {
        let cert = served("mail.example.org");
        let server = server(Script::Smtp, &cert).await;
        let err = served_fingerprint(server.addr, "mail.example.org", StartTls::Implicit, T)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("TLS handshake with {} failed: ", server.addr)),
            "{err}"
        );
    }

    #[tokio::test]
    async fn nobody_listening() {
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let err = served_fingerprint(addr, "mail.example.org", StartTls::Implicit, T)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot connect to {addr}: ")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_unusable_server_name() {
        let err = served_fingerprint(
            "127.0.0.1:1".parse().unwrap(),
            "not a name",
            StartTls::Implicit,
            T,
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"not a name\" cannot be sent as a TLS server name"
        );
    }

    #[tokio::test]
    async fn wait_returns_when_every_port_serves_it() {
        let cert = served("mail.example.org");
        let ports = [
            (server(Script::Smtp, &cert).await.addr, StartTls::Smtp),
            (
                server(Script::Implicit, &cert).await.addr,
                StartTls::Implicit,
            ),
            (server(Script::Imap, &cert).await.addr, StartTls::Imap),
            (server(Script::Pop3, &cert).await.addr, StartTls::Pop3),
        ];
        let took = wait_until_served(&ports, "mail.example.org", &cert.fingerprint, T)
            .await
            .unwrap();
        assert!(took < Duration::from_secs(1), "{took:?}");
        let nothing = wait_until_served(&[], "mail.example.org", "x", T)
            .await
            .unwrap();
        assert!(nothing < Duration::from_millis(10));
    }

    #[tokio::test]
    async fn wait_sees_a_reload_take_effect() {
        let old = served("mail.example.org");
        let new = served("mail.example.org");
        let smtp = server(Script::Smtp, &old).await;
        let imaps = server(Script::Implicit, &new).await;
        let ports = [
            (smtp.addr, StartTls::Smtp),
            (imaps.addr, StartTls::Implicit),
        ];
        let expected = new.fingerprint.clone();
        let reload = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            smtp.switch_to(&new);
        });
        let took = wait_until_served(&ports, "mail.example.org", &expected, T)
            .await
            .unwrap();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(2),
            "{took:?}"
        );
        reload.await.unwrap();
    }

    #[tokio::test]
    async fn a_hung_port_does_not_hide_what_the_others_show() {
        let old = served("mail.example.org");
        let new = served("mail.example.org");
        let hung = server(Script::Silent, &new).await;
        let reloaded = server(Script::Pop3, &old).await;
        let ports = [(hung.addr, StartTls::Smtp), (reloaded.addr, StartTls::Pop3)];
        let expected = new.fingerprint.clone();
        let reload = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            reloaded.switch_to(&new);
        });
        let deadline = Duration::from_millis(800);
        let failed = wait_until_served(&ports, "mail.example.org", &expected, deadline)
            .await
            .unwrap_err();
        // Only the hung port: the other one was seen switching.
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].0, hung.addr);
        let said = failed[0].1.to_string();
        assert!(
            said.starts_with("timed out after ") && said.ends_with("(waiting for the greeting)"),
            "{said}"
        );
        reload.await.unwrap();
    }

    #[tokio::test]
    async fn wait_gives_up_saying_what_each_port_showed() {
        let old = served("mail.example.org");
        let new = served("mail.example.org");
        let stale = server(Script::Smtp, &old).await;
        let silent = server(Script::Silent, &old).await;
        let fresh = server(Script::Implicit, &new).await;
        let ports = [
            (stale.addr, StartTls::Smtp),
            (silent.addr, StartTls::Imap),
            (fresh.addr, StartTls::Implicit),
        ];
        let started = Instant::now();
        let deadline = Duration::from_millis(400);
        let failed = wait_until_served(&ports, "mail.example.org", &new.fingerprint, deadline)
            .await
            .unwrap_err();
        let waited = started.elapsed();
        assert!(
            waited >= deadline && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        assert_eq!(failed.len(), 2, "{failed:?}");
        assert_eq!(
            failed[0],
            (
                stale.addr,
                NotServing::OtherCertificate {
                    seen: old.fingerprint.clone(),
                    expected: new.fingerprint.clone()
                }
            )
        );
        assert_eq!(
            failed[0].1.to_string(),
            format!("serves {}, not {}", old.fingerprint, new.fingerprint)
        );
        assert_eq!(failed[1].0, silent.addr);
        let said = failed[1].1.to_string();
        assert!(
            said.starts_with("timed out after ") && said.ends_with("(waiting for the greeting)"),
            "{said}"
        );
    }

    #[test]
    fn why_a_port_does_not_serve_reads_as_before() {
        assert_eq!(
            NotServing::OtherCertificate {
                seen: "AA:BB".into(),
                expected: "CC:DD".into()
            }
            .to_string(),
            "serves AA:BB, not CC:DD"
        );
        let addr: SocketAddr = "127.0.0.1:587".parse().unwrap();
        assert_eq!(
            NotServing::Probe(ProbeError::NoCertificate { addr }).to_string(),
            "127.0.0.1:587 completed the TLS handshake without showing a certificate"
        );
        assert_eq!(
            NotServing::NoProbeFinished(Duration::from_secs(15)).to_string(),
            "no probe finished within 15s"
        );
    }
}
