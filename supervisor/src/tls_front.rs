//! `postmaster tls-front`: TLS for IMAP, POP3 and ManageSieve, in front of dovecot,
//! so that a new certificate never reloads dovecot.
//!
//! Why it exists: dovecot reads its certificate only when its configuration is
//! read (its login processes are unprivileged and chrooted), so every renewal
//! needed a dovecot reload, and every reload replaces dovecot's auth process: a
//! login in flight then fails ("Auth server restarted (pid A -> B), aborting
//! auth"), and postfix's SMTP AUTH loses its socket for a moment. Here the
//! certificate is read by this process on SIGHUP (systemd's `reload`) and swapped
//! for the next handshake; nothing in flight notices, and dovecot keeps running.
//!
//! systemd holds the ports (postmaster-tls.socket) and passes them; which protocol
//! a socket speaks is told by its port ([`Role`]): implicit TLS on 993 and 995,
//! STARTTLS on 143, 110 and 4190 (answered here before TLS, [`plaintext`]). After
//! the handshake each client gets its own connection to dovecot on loopback, which
//! begins with a PROXY v2 header ([`proxy_header`]): dovecot sees the client's
//! address (its logs, its brute-force policy) and that the client spoke TLS, and
//! takes passwords only then (`ssl = required`). Then bytes pass unchanged both ways.
//!
//! TLS is rustls': TLS 1.2 and 1.3, forward-secret AEAD suites only (ECDHE with
//! AES-GCM or ChaCha20-Poly1305), no finite-field DH at all: Mozilla's
//! "intermediate" profile, on every one of these ports.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use plaintext::{Answer, Lines, Next, Protocol};

mod plaintext;
mod proxy_header;

/// Where dovecot listens for the front (rendered into dovecot.conf: `listen =
/// 127.0.0.1`, `haproxy = yes`). Loopback only; nothing else connects there.
pub(crate) const IMAP_BACKEND_PORT: u16 = 10143;
pub(crate) const POP3_BACKEND_PORT: u16 = 10110;
pub(crate) const SIEVE_BACKEND_PORT: u16 = 14190;

/// How long a client has from its connection to a completed TLS handshake, the
/// dialogue before STARTTLS included: one deadline, not one per read, so a client
/// that trickles bytes does not hold a slot for longer.
const UNTIL_TLS: Duration = Duration::from_secs(60);
/// Connections from one address that have not completed TLS yet: more are closed
/// at once, so that one address cannot take every slot with half-open sessions.
const PENDING_PER_ADDRESS: usize = 20;
/// Connections from one address at all: an office behind one NAT address has a few
/// per mail client; more than this is one address taking the slots of the rest.
const SESSIONS_PER_ADDRESS: usize = 100;
/// How long one write to either side may wait: a client that stops reading (its
/// receive window full) does not hold its slot for longer.
const WRITE_STALL: Duration = Duration::from_secs(120);
/// Once dovecot has closed a session, how long the client gets to close its side
/// before the front lets go of it.
const LINGER: Duration = Duration::from_secs(5);
/// How long a client waits for dovecot while it is (re)starting before it is told
/// to come back later; dovecot's reloads keep its inet listeners, so only a
/// stopped or starting dovecot refuses.
const BACKEND_PATIENCE: Duration = Duration::from_secs(10);
/// The longest greeting taken from dovecot (ManageSieve's is its capability list).
const GREETING_LIMIT: usize = 8192;

/// What a port is: a protocol, with TLS at once or after STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Role {
    pub(crate) protocol: Protocol,
    pub(crate) implicit: bool,
}

/// The mail host's ports and what each speaks.
pub(crate) fn standard_role(port: u16) -> Option<Role> {
    let role = |protocol, implicit| Some(Role { protocol, implicit });
    match port {
        993 => role(Protocol::Imap, true),
        995 => role(Protocol::Pop3, true),
        143 => role(Protocol::Imap, false),
        110 => role(Protocol::Pop3, false),
        4190 => role(Protocol::Sieve, false),
        _ => None,
    }
}

/// Reads `PORT=ROLE` (`--role`, for ports other than the standard ones).
pub(crate) fn parse_role(text: &str) -> Result<(u16, Role), String> {
    let (port, name) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: expected PORT=ROLE, e.g. 993=imaps"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{text}`: `{port}` is not a port"))?;
    let role = |protocol, implicit| Role { protocol, implicit };
    let role = match name {
        "imaps" => role(Protocol::Imap, true),
        "pop3s" => role(Protocol::Pop3, true),
        "imap" => role(Protocol::Imap, false),
        "pop3" => role(Protocol::Pop3, false),
        "sieve" => role(Protocol::Sieve, false),
        _ => {
            return Err(format!(
                "`{text}`: `{name}` is none of imaps, pop3s, imap, pop3, sieve"
            ));
        }
    };
    Ok((port, role))
}

/// How the front runs (the command line's options).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The pair postmaster installs: private key, then the chain.
    pub(crate) pair: PathBuf,
    /// Roles of ports other than the standard ones.
    pub(crate) roles: Vec<(u16, Role)>,
    /// dovecot's listeners for the front.
    pub(crate) imap_backend: SocketAddr,
    pub(crate) pop3_backend: SocketAddr,
    pub(crate) sieve_backend: SocketAddr,
    /// Clients served at once; more wait in the sockets' backlogs.
    pub(crate) max_connections: usize,
}

impl Settings {
    fn role(&self, port: u16) -> Option<Role> {
        self.roles
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, r)| *r)
            .or_else(|| standard_role(port))
    }

    fn backend(&self, protocol: Protocol) -> SocketAddr {
        match protocol {
            Protocol::Imap => self.imap_backend,
            Protocol::Pop3 => self.pop3_backend,
            Protocol::Sieve => self.sieve_backend,
        }
    }
}

/// Why the front could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrontError {
    #[error("reading the sockets systemd passes (LISTEN_FDS): {0}")]
    ListenFds(io::Error),
    #[error("no socket was passed: start it through postmaster-tls.socket")]
    NoSocket,
    #[error("a passed socket is not a listening TCP socket: {0}")]
    NotTcp(io::Error),
    #[error(
        "a passed socket listens on port {0}, which is none of 993, 995, 143, 110, 4190 (name its role with --role {0}=...)"
    )]
    UnknownPort(u16),
    #[error("setting up TLS: {0}")]
    Tls(rustls::Error),
    #[error("starting the runtime: {0}")]
    Runtime(io::Error),
    #[error("waiting for signals: {0}")]
    Signals(io::Error),
}

/// The certificate handed to each handshake; replaced whole on reload.
#[derive(Debug, Default)]
struct Certificate(RwLock<Option<Arc<CertifiedKey>>>);

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Certificate {
    /// Reads the pair file; on any problem the certificate served stays as it was
    /// (the last good one keeps serving) and the journal says why.
    fn load(&self, pair: &std::path::Path) {
        let loaded = std::fs::read(pair)
            .map_err(|e| format!("reading {}: {e}", pair.display()))
            .and_then(|pem| {
                crate::tls::certified_pair(&pem).map_err(|e| format!("{}: {e}", pair.display()))
            });
        match loaded {
            Ok(key) => {
                let fingerprint = key
                    .end_entity_cert()
                    .map(|der| crate::tls::leaf_fingerprint_of_der(der))
                    .unwrap_or_default();
                tracing::info!(
                    "serving the certificate {fingerprint} from {}",
                    pair.display()
                );
                *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(key));
            }
            Err(why) => {
                let serving = self.0.read().unwrap_or_else(|e| e.into_inner()).is_some();
                tracing::error!(
                    "{why}; {}",
                    if serving {
                        "the certificate served so far stays"
                    } else {
                        "no certificate to serve: TLS handshakes fail until a reload reads a good one"
                    }
                );
            }
        }
    }
}

/// What every connection shares.
struct Shared {
    settings: Settings,
    acceptor: TlsAcceptor,
    /// dovecot's `"SIEVE" "..."` capability line, learnt at the first ManageSieve
    /// client and forgotten at each reload.
    sieve_capability: Mutex<Option<String>>,
    /// Connections per client address that have not completed TLS yet.
    pending: PerAddress,
    /// Connections per client address, whole sessions.
    sessions: PerAddress,
}

/// Connections counted per client address (an IPv6 client by its /64, which one
/// host usually has whole), with a limit.
struct PerAddress {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    fn new(limit: usize) -> PerAddress {
        PerAddress {
            limit,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a connection from `address` until the guard is dropped; `None` when
    /// the address has its limit already.
    fn enter(&self, address: IpAddr) -> Option<Counted<'_>> {
        let key = per_address_key(address);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(key).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Counted { within: self, key })
    }
}

/// The address a client is counted by: IPv4 as it is (an IPv4 client on a
/// dual-stack socket as IPv4), IPv6 by its /64.
fn per_address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
        v4 => v4,
    }
}

/// A connection counted in a [`PerAddress`] until dropped.
struct Counted<'s> {
    within: &'s PerAddress,
    key: IpAddr,
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        let mut counts = self.within.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// `postmaster tls-front`: the sockets systemd passes (LISTEN_FDS), served until
/// SIGTERM; SIGHUP reads the pair again.
pub(crate) fn run(settings: Settings) -> Result<(), FrontError> {
    // SAFETY: called before the runtime starts any thread.
    let fds: Vec<RawFd> = unsafe { sd_notify::listen_fds_and_unset_env() }
        .map_err(FrontError::ListenFds)?
        .collect();
    if fds.is_empty() {
        return Err(FrontError::NoSocket);
    }
    let mut listeners = Vec::with_capacity(fds.len());
    for fd in fds {
        // SAFETY: systemd passed this descriptor to this process, which owns it now.
        let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        let local = listener.local_addr().map_err(FrontError::NotTcp)?;
        let role = settings
            .role(local.port())
            .ok_or(FrontError::UnknownPort(local.port()))?;
        listener.set_nonblocking(true).map_err(FrontError::NotTcp)?;
        listeners.push((listener, role));
    }

    let certificate = Arc::new(Certificate::default());
    certificate.load(&settings.pair);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(FrontError::Tls)?
        .with_no_client_auth()
        .with_cert_resolver(certificate.clone());
    let shared = Arc::new(Shared {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        settings,
        sieve_capability: Mutex::new(None),
        pending: PerAddress::new(PENDING_PER_ADDRESS),
        sessions: PerAddress::new(SESSIONS_PER_ADDRESS),
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(FrontError::Runtime)?;
    runtime.block_on(serve(listeners, shared, certificate))
}

async fn serve(
    listeners: Vec<(std::net::TcpListener, Role)>,
    shared: Arc<Shared>,
    certificate: Arc<Certificate>,
) -> Result<(), FrontError> {
    let mut term = signal(SignalKind::terminate()).map_err(FrontError::Signals)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(FrontError::Signals)?;
    let slots = Arc::new(Semaphore::new(shared.settings.max_connections));
    let mut accepting = Vec::new();
    for (listener, role) in listeners {
        let listener = TcpListener::from_std(listener).map_err(FrontError::NotTcp)?;
        tracing::info!(
            "serving {:?} ({}) on {}",
            role.protocol,
            if role.implicit {
                "implicit TLS"
            } else {
                "STARTTLS"
            },
            listener.local_addr().map_err(FrontError::NotTcp)?
        );
        accepting.push(tokio::spawn(accept(
            listener,
            role,
            shared.clone(),
            slots.clone(),
        )));
    }
    notify(&[sd_notify::NotifyState::Ready]);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = hangup.recv() => {
                notify(&[sd_notify::NotifyState::Reloading, monotonic_usec()]);
                certificate.load(&shared.settings.pair);
                *shared.sieve_capability.lock().unwrap_or_else(|e| e.into_inner()) = None;
                notify(&[sd_notify::NotifyState::Ready]);
            }
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    for task in &accepting {
        task.abort();
    }
    // Sessions in flight get a moment to end; an IMAP IDLE never does, and its
    // client reconnects (systemd keeps the sockets: nothing is refused meanwhile).
    let all = u32::try_from(shared.settings.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(5), slots.acquire_many(all)).await;
    Ok(())
}

async fn accept(listener: TcpListener, role: Role, shared: Arc<Shared>, slots: Arc<Semaphore>) {
    loop {
        // A slot is taken after the accept, so that every port keeps accepting
        // whatever the limit; at the limit the accepted client waits for one.
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and the like: pass, the connection waits in the backlog.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let shared = shared.clone();
        tokio::spawn(async move {
            let local = stream.local_addr();
            match local {
                Ok(local) => {
                    if let Err(e) = client(stream, peer, local, role, &shared).await {
                        tracing::debug!("{peer} on port {}: {e}", local.port());
                    }
                }
                Err(e) => tracing::debug!("{peer}: {e}"),
            }
            drop(slot);
        });
    }
}

/// One client, from accept to the end of its session.
async fn client(
    mut stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    role: Role,
    shared: &Shared,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let protocol = role.protocol;
    let Some(_session) = shared.sessions.enter(peer.ip()) else {
        return Err(io::Error::other(format!(
            "more than {SESSIONS_PER_ADDRESS} connections from this address: closed"
        )));
    };
    let Some(pending) = shared.pending.enter(peer.ip()) else {
        return Err(io::Error::other(format!(
            "more than {PENDING_PER_ADDRESS} connections from this address before TLS: closed"
        )));
    };
    let until_tls = async {
        if !role.implicit && !before_tls(&mut stream, protocol, peer, local, shared).await? {
            return Ok(None);
        }
        shared.acceptor.accept(stream).await.map(Some)
    };
    let mut tls = match tokio::time::timeout(UNTIL_TLS, until_tls).await {
        Ok(Ok(Some(tls))) => tls,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no TLS session within a minute",
            ));
        }
    };
    drop(pending);
    let session = {
        let (_, connection) = tls.get_ref();
        proxy_header::Tls {
            version: match connection.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".into(),
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".into(),
                other => format!("{other:?}"),
            },
            cipher: connection
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or("")
                .into(),
        }
    };
    let backend = shared.settings.backend(protocol);
    let mut dovecot = match connect(backend, peer, local, Some(&session)).await {
        Ok(dovecot) => dovecot,
        Err(e) => {
            tracing::warn!("dovecot at {backend} not reachable for {peer}: {e}");
            farewell(&mut tls, plaintext::unavailable(protocol)).await;
            return Ok(());
        }
    };
    // After STARTTLS an IMAP or POP3 client expects no second greeting; ManageSieve's
    // greeting is the capability list a client must get again after STARTTLS. A
    // greeting that refuses (dovecot at its limits) goes to the client as it is.
    if !role.implicit && protocol != Protocol::Sieve {
        let greeted = tokio::time::timeout(BACKEND_PATIENCE, greeting(&mut dovecot, protocol))
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "dovecot did not greet",
                ))
            });
        match greeted {
            Ok(line) if refuses(&line) => {
                farewell(&mut tls, &line).await;
                return Ok(());
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("dovecot at {backend} did not greet {peer}: {e}");
                farewell(&mut tls, plaintext::unavailable(protocol)).await;
                return Ok(());
            }
        }
    }
    splice(tls, dovecot).await
}

/// Whether dovecot's IMAP or POP3 greeting turns the client away.
fn refuses(greeting: &[u8]) -> bool {
    greeting.starts_with(b"* BYE") || greeting.starts_with(b"-ERR")
}

/// Bytes both ways until the session ends. Each side's end is passed on to the
/// other (a FIN; close_notify towards the client). When dovecot has ended the
/// session, the client gets [`LINGER`] to close its side: a client that never does
/// does not hold its slot for longer. When the client has, dovecot answers what it
/// was sent and closes by itself.
async fn splice<C>(client: C, dovecot: TcpStream) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_in, mut client_out) = tokio::io::split(client);
    let (mut dovecot_in, mut dovecot_out) = dovecot.into_split();
    let upstream = copy_then_close(&mut client_in, &mut dovecot_out);
    let downstream = copy_then_close(&mut dovecot_in, &mut client_out);
    tokio::pin!(upstream, downstream);
    tokio::select! {
        copied = &mut downstream => {
            let _ = tokio::time::timeout(LINGER, &mut upstream).await;
            copied
        }
        copied = &mut upstream => {
            // dovecot answers what it was sent and closes; each write to the client
            // is bounded by WRITE_STALL, and a dovecot that keeps the session open
            // after the client's end is let go after the same time.
            let down = tokio::time::timeout(WRITE_STALL, &mut downstream)
                .await
                .unwrap_or(Ok(()));
            copied.and(down)
        }
    }
}

/// Copies until `from` ends, then ends `to`'s writing. Each write may wait at most
/// [`WRITE_STALL`]: a reader that stops reading ends the copy with an error.
async fn copy_then_close<R, W>(from: &mut R, to: &mut W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; 16 * 1024];
    let copied = async {
        loop {
            let n = from.read(&mut buffer).await?;
            if n == 0 {
                return Ok(());
            }
            tokio::time::timeout(WRITE_STALL, to.write_all(&buffer[..n]))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "the reader stopped reading")
                })??;
        }
    }
    .await;
    let _ = tokio::time::timeout(WRITE_STALL, to.shutdown()).await;
    copied
}

/// The dialogue before STARTTLS. True when the client asked for TLS and the
/// handshake may begin; false when it left or was sent away.
async fn before_tls(
    stream: &mut TcpStream,
    protocol: Protocol,
    peer: SocketAddr,
    local: SocketAddr,
    shared: &Shared,
) -> io::Result<bool> {
    let sieve = if protocol == Protocol::Sieve {
        sieve_capability(shared, peer, local).await
    } else {
        String::new()
    };
    stream
        .write_all(&plaintext::greeting(protocol, &sieve))
        .await?;
    let mut lines = Lines::default();
    let mut commands = 0;
    let mut buffer = [0u8; 2048];
    loop {
        let line = match lines.next_line() {
            Next::Line(line) => line,
            Next::TooLong => {
                farewell(stream, &plaintext::too_much(protocol)).await;
                return Ok(false);
            }
            Next::More => {
                let n = stream.read(&mut buffer).await?;
                if n == 0 {
                    return Ok(false);
                }
                lines.push(&buffer[..n]);
                continue;
            }
        };
        commands += 1;
        if commands > plaintext::COMMAND_LIMIT {
            farewell(stream, &plaintext::too_much(protocol)).await;
            return Ok(false);
        }
        match plaintext::answer(protocol, &line, &sieve) {
            Answer::Reply(reply) => stream.write_all(&reply).await?,
            Answer::Close(reply) => {
                farewell(stream, &reply).await;
                return Ok(false);
            }
            Answer::StartTls(_) if lines.has_more() => {
                tracing::warn!(
                    "{peer} sent more after asking for TLS on port {}: closed",
                    local.port()
                );
                return Ok(false);
            }
            Answer::StartTls(reply) => {
                stream.write_all(&reply).await?;
                return Ok(true);
            }
        }
    }
}

/// Sends a last reply and closes so that it arrives: the write side first, then
/// what the client still sends is read and dropped for a moment. Closing with
/// unread input would reset the connection, and a reset may discard the reply.
/// At most a few seconds, whatever the client does.
async fn farewell<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, reply: &[u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        if stream.write_all(reply).await.is_err() || stream.shutdown().await.is_err() {
            return;
        }
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    })
    .await;
}

/// dovecot's `"SIEVE" "..."` line, asked once: a connection that only reads
/// dovecot's greeting (no byte of the client's goes there).
async fn sieve_capability(shared: &Shared, peer: SocketAddr, local: SocketAddr) -> String {
    if let Some(known) = shared
        .sieve_capability
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    {
        return known;
    }
    let asked = async {
        let mut dovecot = connect(shared.settings.sieve_backend, peer, local, None).await?;
        greeting(&mut dovecot, Protocol::Sieve).await
    };
    match tokio::time::timeout(BACKEND_PATIENCE, asked).await {
        Ok(Ok(greeting)) => match plaintext::sieve_line(&greeting) {
            Some(line) => {
                *shared
                    .sieve_capability
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(line.clone());
                line
            }
            // Not remembered: the next client asks again.
            None => String::new(),
        },
        Ok(Err(e)) => {
            tracing::warn!("asking dovecot's ManageSieve for its capabilities: {e}");
            String::new()
        }
        Err(_) => String::new(),
    }
}

/// A connection to dovecot for the client at `peer`, its PROXY header sent.
/// Refused connections are tried again for [`BACKEND_PATIENCE`] (dovecot starting).
async fn connect(
    backend: SocketAddr,
    peer: SocketAddr,
    local: SocketAddr,
    session: Option<&proxy_header::Tls>,
) -> io::Result<TcpStream> {
    let deadline = tokio::time::Instant::now() + BACKEND_PATIENCE;
    let mut pause = Duration::from_millis(20);
    let mut stream = loop {
        match TcpStream::connect(backend).await {
            Ok(stream) => break stream,
            Err(e)
                if e.kind() == io::ErrorKind::ConnectionRefused
                    && tokio::time::Instant::now() + pause < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
    };
    let _ = stream.set_nodelay(true);
    stream
        .write_all(&proxy_header::header(peer, local, session))
        .await?;
    Ok(stream)
}

/// dovecot's greeting: one line for IMAP and POP3, up to the `OK` line for
/// ManageSieve. Read byte-wise in effect (never past the greeting), so nothing the
/// client should see is taken.
async fn greeting<R: AsyncRead + Unpin>(
    dovecot: &mut R,
    protocol: Protocol,
) -> io::Result<Vec<u8>> {
    let mut text = Vec::new();
    let mut byte = [0u8; 1];
    let mut line_start = 0;
    loop {
        if text.len() >= GREETING_LIMIT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "dovecot's greeting is too long",
            ));
        }
        if dovecot.read(&mut byte).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "dovecot closed before its greeting",
            ));
        }
        text.push(byte[0]);
        if byte[0] != b'\n' {
            continue;
        }
        let line = &text[line_start..];
        let done = match protocol {
            Protocol::Imap | Protocol::Pop3 => true,
            Protocol::Sieve => {
                line.len() >= 2 && line[..2].eq_ignore_ascii_case(b"OK")
                    || line.len() >= 3 && line[..3].eq_ignore_ascii_case(b"BYE")
            }
        };
        if done {
            return Ok(text);
        }
        line_start = text.len();
    }
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    // Outside systemd there is no socket; that is fine.
    let _ = sd_notify::notify(states);
}

fn monotonic_usec() -> sd_notify::NotifyState<'static> {
    sd_notify::NotifyState::monotonic_usec_now()
        .unwrap_or(sd_notify::NotifyState::Custom("MONOTONIC_USEC=0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_ports_and_their_roles() {
        let role = |protocol, implicit| Some(Role { protocol, implicit });
        assert_eq!(standard_role(993), role(Protocol::Imap, true));
        assert_eq!(standard_role(995), role(Protocol::Pop3, true));
        assert_eq!(standard_role(143), role(Protocol::Imap, false));
        assert_eq!(standard_role(110), role(Protocol::Pop3, false));
        assert_eq!(standard_role(4190), role(Protocol::Sieve, false));
        assert_eq!(standard_role(25), None);
        assert_eq!(standard_role(587), None);
    }

    #[test]
    fn roles_named_on_the_command_line() {
        assert_eq!(
            parse_role("10993=imaps"),
            Ok((
                10993,
                Role {
                    protocol: Protocol::Imap,
                    implicit: true
                }
            ))
        );
        assert_eq!(
            parse_role("4190=sieve").unwrap().1,
            Role {
                protocol: Protocol::Sieve,
                implicit: false
            }
        );
        assert_eq!(
            parse_role("993"),
            Err("`993`: expected PORT=ROLE, e.g. 993=imaps".into())
        );
        assert_eq!(
            parse_role("x=imap"),
            Err("`x=imap`: `x` is not a port".into())
        );
        assert_eq!(
            parse_role("25=smtp"),
            Err("`25=smtp`: `smtp` is none of imaps, pop3s, imap, pop3, sieve".into())
        );
    }

    fn served(certificate: &Certificate) -> Option<Vec<u8>> {
        let key = certificate.0.read().unwrap().clone()?;
        Some(key.end_entity_cert().unwrap().to_vec())
    }

    fn pair(name: &str) -> (Vec<u8>, Vec<u8>) {
        let (chain, key) =
            crate::tls::self_signed_placeholder(&[name.to_owned()], std::time::SystemTime::now());
        let leaf = crate::tls::certified_pair(format!("{key}{chain}").as_bytes())
            .unwrap()
            .end_entity_cert()
            .unwrap()
            .to_vec();
        (format!("{key}{chain}").into_bytes(), leaf)
    }

    #[test]
    fn a_reload_serves_a_good_pair_and_keeps_the_last_good_one_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pair.pem");
        let certificate = Certificate::default();
        // Nothing there yet: nothing to serve (handshakes fail), no panic.
        certificate.load(&path);
        assert_eq!(served(&certificate), None);
        let (first, first_leaf) = pair("mail.example.org");
        std::fs::write(&path, &first).unwrap();
        certificate.load(&path);
        assert_eq!(served(&certificate), Some(first_leaf.clone()));
        // Half-written, a key without its chain, garbage, gone: the first stays.
        let text = String::from_utf8(first.clone()).unwrap();
        let key_only = &text[..text.find("-----BEGIN CERTIFICATE-----").unwrap()];
        for bad in [
            &first[..first.len() / 2],
            key_only.as_bytes(),
            b"\0\0\0",
            b"",
        ] {
            std::fs::write(&path, bad).unwrap();
            certificate.load(&path);
            assert_eq!(served(&certificate), Some(first_leaf.clone()));
        }
        std::fs::remove_file(&path).unwrap();
        certificate.load(&path);
        assert_eq!(served(&certificate), Some(first_leaf.clone()));
        // A key that is not the certificate's: refused too.
        let (second, second_leaf) = pair("mail.example.org");
        let second_text = String::from_utf8(second.clone()).unwrap();
        let mismatched = format!(
            "{}{}",
            key_only,
            &second_text[second_text.find("-----BEGIN CERTIFICATE-----").unwrap()..]
        );
        std::fs::write(&path, mismatched).unwrap();
        certificate.load(&path);
        assert_eq!(served(&certificate), Some(first_leaf));
        // The next good pair is served.
        std::fs::write(&path, &second).unwrap();
        certificate.load(&path);
        assert_eq!(served(&certificate), Some(second_leaf));
    }

    /// A client end (in memory) and a dovecot end (loopback TCP) spliced.
    async fn spliced() -> (
        tokio::io::DuplexStream,
        TcpStream,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_side = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (dovecot, _) = listener.accept().await.unwrap();
        let (client, front_client_side) = tokio::io::duplex(4096);
        let session = tokio::spawn(splice(front_client_side, front_side));
        (client, dovecot, session)
    }

    #[tokio::test]
    async fn dovecot_ending_a_session_ends_it_for_the_client() {
        let (mut client, mut dovecot, session) = spliced().await;
        client.write_all(b"a LOGOUT\r\n").await.unwrap();
        let mut got = [0u8; 10];
        dovecot.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"a LOGOUT\r\n");
        dovecot
            .write_all(b"* BYE\r\na OK Logout completed.\r\n")
            .await
            .unwrap();
        drop(dovecot);
        let mut seen = Vec::new();
        // The client sees all of it, then the end (not a hang).
        client.read_to_end(&mut seen).await.unwrap();
        assert_eq!(seen, b"* BYE\r\na OK Logout completed.\r\n");
        drop(client);
        session.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_reading_ends_the_copy() {
        let (mut sender, mut from) = tokio::io::duplex(4096);
        // Nobody reads this one, and it holds 64 bytes.
        let (mut to, _never_read) = tokio::io::duplex(64);
        sender.write_all(&[b'x'; 1024]).await.unwrap();
        let started = tokio::time::Instant::now();
        let error = copy_then_close(&mut from, &mut to).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= WRITE_STALL);
    }

    #[test]
    fn connections_are_counted_per_address_and_ipv6_per_64() {
        let counts = PerAddress::new(2);
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let first = counts.enter(a).unwrap();
        let _second = counts.enter("::ffff:192.0.2.7".parse().unwrap()).unwrap();
        assert!(counts.enter(a).is_none(), "a third from the same address");
        assert!(counts.enter("192.0.2.8".parse().unwrap()).is_some());
        drop(first);
        assert!(counts.enter(a).is_some(), "a slot given back");
        let _v6 = counts.enter("2001:db8:1:2::1".parse().unwrap()).unwrap();
        let _v6b = counts
            .enter("2001:db8:1:2:ffff::9".parse().unwrap())
            .unwrap();
        assert!(
            counts.enter("2001:db8:1:2::77".parse().unwrap()).is_none(),
            "one /64 is one client"
        );
        assert!(counts.enter("2001:db8:1:3::1".parse().unwrap()).is_some());
    }

    #[test]
    fn counts_are_forgotten_when_they_reach_zero() {
        let counts = PerAddress::new(5);
        for i in 0..100u8 {
            drop(counts.enter(IpAddr::from([192, 0, 2, i])).unwrap());
        }
        assert!(counts.counts.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_client_that_never_closes_is_let_go_after_the_linger() {
        let (client, dovecot, session) = spliced().await;
        let started = std::time::Instant::now();
        drop(dovecot);
        // The client neither reads nor closes; the session ends anyway.
        tokio::time::timeout(LINGER * 2, session)
            .await
            .expect("the session ended")
            .unwrap()
            .unwrap();
        assert!(started.elapsed() >= LINGER - Duration::from_millis(100));
        drop(client);
    }

    #[tokio::test]
    async fn a_client_that_finished_sending_still_gets_dovecots_answer() {
        let (mut client, mut dovecot, session) = spliced().await;
        client.write_all(b"QUIT\r\n").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        // dovecot sees the command, then the client's end.
        dovecot.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"QUIT\r\n");
        dovecot.write_all(b"+OK Logging out.\r\n").await.unwrap();
        drop(dovecot);
        let mut seen = Vec::new();
        client.read_to_end(&mut seen).await.unwrap();
        assert_eq!(seen, b"+OK Logging out.\r\n");
        session.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn dovecots_greeting_is_read_to_its_end_and_no_further() {
        let imap: &[u8] = b"* OK [CAPABILITY IMAP4rev1] Dovecot ready.\r\na OK more\r\n";
        let mut reader = imap;
        assert_eq!(
            greeting(&mut reader, Protocol::Imap).await.unwrap(),
            b"* OK [CAPABILITY IMAP4rev1] Dovecot ready.\r\n"
        );
        assert_eq!(reader, b"a OK more\r\n");
        let sieve: &[u8] = b"\"IMPLEMENTATION\" \"Dovecot\"\r\n\"SIEVE\" \"x\"\r\nOK \"Dovecot ready.\"\r\nNO after";
        let mut reader = sieve;
        assert_eq!(
            greeting(&mut reader, Protocol::Sieve).await.unwrap(),
            &sieve[..sieve.len() - 8]
        );
        let mut cut: &[u8] = b"\"IMPLEMENTATION\" \"Dovecot\"\r\n";
        assert_eq!(
            greeting(&mut cut, Protocol::Sieve)
                .await
                .unwrap_err()
                .kind(),
            io::ErrorKind::UnexpectedEof
        );
        let long = vec![b'a'; GREETING_LIMIT + 10];
        let mut reader = long.as_slice();
        assert_eq!(
            greeting(&mut reader, Protocol::Pop3)
                .await
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidData
        );
    }
}
