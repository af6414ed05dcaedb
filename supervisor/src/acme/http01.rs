//! How http-01 answers reach the CA: postmaster's own server on port 80, or files in
//! a webroot another web server serves.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::task::AbortHandle;

use crate::apply;

/// How http-01 answers reach the CA.
pub enum Responder {
    /// postmaster serves them itself (systemd's `acme-http` socket on port 80).
    Listener(Http01Server),
    /// A web server serves this directory: answers go to
    /// `WEBROOT/.well-known/acme-challenge/TOKEN`.
    Webroot(PathBuf),
}

/// Why an http-01 answer could not be put where the CA looks for it.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Tokens become file names in a webroot: anything but base64url is refused.
    #[error("the CA sent a token that is not base64url: {0:?}")]
    TokenNotBase64url(String),
    #[error("creating {}: {source}", dir.display())]
    CreateDir { dir: PathBuf, source: io::Error },
    /// Writing the answer into the webroot failed (the text names the file).
    #[error(transparent)]
    Write(apply::ApplyError),
}

/// Why http-01 challenges cannot be answered at all; each text says how to fix it.
/// Kept by the daemon for as long as the configuration stays, so it is `Clone`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NoResponder {
    #[error("challenge = \"webroot\" needs `webroot`")]
    WebrootUnset,
    #[error(
        "no `acme-http` socket from systemd: enable postmaster-acme.socket (port 80) and restart postmaster, or use challenge = \"webroot\""
    )]
    NoSocket,
    /// The socket systemd passed was there but cannot be served.
    #[error("cannot serve http-01 on the `acme-http` socket: {0}")]
    SocketUnusable(Arc<io::Error>),
}

const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// ACME tokens are base64url (RFC 8555 §8.1): anything else must never become a path.
fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Responder {
    /// Makes `key_authorization` the answer for `token`.
    pub(crate) fn publish(&self, token: &str, key_authorization: &str) -> Result<(), PublishError> {
        if !valid_token(token) {
            return Err(PublishError::TokenNotBase64url(token.to_string()));
        }
        match self {
            Responder::Listener(server) => {
                server.publish(token, key_authorization);
                Ok(())
            }
            Responder::Webroot(root) => {
                let dir = root.join(&CHALLENGE_PREFIX[1..]);
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&dir)
                    .map_err(|source| PublishError::CreateDir {
                        dir: dir.clone(),
                        source,
                    })?;
                apply::write_atomic(&dir.join(token), key_authorization.as_bytes(), 0o644, None)
                    .map(|_| ())
                    .map_err(PublishError::Write)
            }
        }
    }

    /// What must hold for the CA to get the answers for `name`: the end of a
    /// failed challenge's message.
    pub(crate) fn hint(&self, name: &str) -> String {
        match self {
            Responder::Listener(_) => {
                format!(
                    "port 80 of {name} must reach postmaster's http-01 responder, the acme-http socket"
                )
            }
            Responder::Webroot(root) => format!(
                "the web server on port 80 of {name} must serve {} as /.well-known/acme-challenge/",
                root.join(&CHALLENGE_PREFIX[1..]).display()
            ),
        }
    }

    /// Removes the answer for `token`, if any.
    pub(crate) fn withdraw(&self, token: &str) {
        if !valid_token(token) {
            return;
        }
        match self {
            Responder::Listener(server) => server.withdraw(token),
            Responder::Webroot(root) => {
                let path = root.join(&CHALLENGE_PREFIX[1..]).join(token);
                if let Err(e) = std::fs::remove_file(&path)
                    && e.kind() != io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove an http-01 answer");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// The server on port 80
//
// Port 80 is open to anyone, and the CA's request must get through whatever else
// arrives meanwhile. hyper parses HTTP/1 (http1 only: the CA speaks nothing else
// here); what is ours is the bookkeeping of connections:
//
// - Each connection has deadlines: its first byte within HEAD_TIMEOUT of the accept,
//   then its whole request head within HEAD_TIMEOUT of that (hyper's
//   header_read_timeout: bytes that keep trickling in do not extend it), and no
//   connection lives longer than LIFETIME, whatever it does.
// - At most `max_connections` are held. A new one is never refused: when the table is
//   full, the oldest connection of the source (IPv4 address, IPv6 /64) holding the
//   most is closed instead. Idle connections are the old ones (a request is answered
//   within a round trip of its arrival), so a flood evicts itself, and a source with
//   few connections (the CA's validators) is not touched by a flood from elsewhere.
// - A connection costs a task (1 KiB) and its socket until its first byte arrives;
//   only then does hyper allocate its buffers (8 KiB for reading, never more).
// - One request per connection, answered from memory, then closed.

/// Request heads (request line and headers) larger than this get 431 and a close.
const MAX_HEAD: usize = 8 * 1024;
/// A client must send its first byte within this time, and then the rest of its
/// request head within this time again: the CA sends it at once, after its TCP
/// handshake (a lost segment is resent after 1 s, then 3 s: still in time).
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection is kept longer than this, whatever it does (one that does not read
/// its answer, say).
const LIFETIME: Duration = Duration::from_secs(10);
/// Connections held at once. About 1.5 KiB each until its first byte (the task, 1 KiB
/// of it, and the socket's registration), about 10 KiB while a request head is being
/// read (hyper's 8 KiB buffer): 5 MiB at most. Well below the service's soft limit of
/// 1024 open files (systemd's default), so accepting never runs out of descriptors.
const MAX_CONNECTIONS: usize = 512;

/// The server's limits; tests use smaller ones.
#[derive(Debug, Clone, Copy)]
struct Limits {
    head_timeout: Duration,
    lifetime: Duration,
    max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head_timeout: HEAD_TIMEOUT,
            lifetime: LIFETIME,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// What the server answers, shared with its connections.
#[derive(Default)]
struct Shared {
    answers: Mutex<HashMap<String, String>>,
    /// Challenge requests answered with a key authorization.
    answered: AtomicU64,
    /// Connections closed to make room for a new one.
    evicted: AtomicU64,
}

type Answers = Arc<Shared>;

/// The http-01 server: answers `GET /.well-known/acme-challenge/TOKEN` with what was
/// published for TOKEN. Cheap to clone; it stops when the last clone is dropped.
/// Must be started inside a tokio runtime.
#[derive(Clone)]
pub struct Http01Server {
    inner: Arc<ServerInner>,
}

struct ServerInner {
    answers: Answers,
    local_addr: SocketAddr,
    task: tokio::task::AbortHandle,
}

impl Drop for ServerInner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Http01Server {
    /// Serves on `listener` (bound by the caller: systemd's socket, or a test's) until
    /// the last clone is dropped. Fails outside a tokio runtime.
    pub fn start(listener: std::net::TcpListener) -> io::Result<Http01Server> {
        Self::start_with(listener, Limits::default())
    }

    fn start_with(listener: std::net::TcpListener, limits: Limits) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let answers: Answers = Arc::default();
        let task = runtime
            .spawn(serve(listener, answers.clone(), limits))
            .abort_handle();
        Ok(Http01Server {
            inner: Arc::new(ServerInner {
                answers,
                local_addr,
                task,
            }),
        })
    }

    /// How many challenge requests it answered with a key authorization so far.
    pub fn answered(&self) -> u64 {
        self.inner.answers.answered.load(Ordering::Relaxed)
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    pub(crate) fn publish(&self, token: &str, key_authorization: &str) {
        self.answers()
            .insert(token.to_string(), key_authorization.to_string());
    }

    pub(crate) fn withdraw(&self, token: &str) {
        self.answers().remove(token);
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.inner
            .answers
            .answers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// hyper's HTTP/1 settings for every connection.
fn http1(limits: &Limits) -> http1::Builder {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_header_size(MAX_HEAD)
        // The read buffer starts at, and never grows beyond, hyper's minimum (8 KiB).
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        // A client may end its sending side after the request and still get the answer.
        .half_close(true)
        .title_case_headers(true);
    http
}

async fn serve(listener: tokio::net::TcpListener, answers: Answers, limits: Limits) {
    let http = Arc::new(http1(&limits));
    let mut pool = Pool::new(limits.max_connections);
    let mut warned: Option<tokio::time::Instant> = None;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: free a descriptor if we hold any, and do not spin.
                tracing::warn!(error = %e, "http-01: accept failed");
                pool.evict_one();
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Some(source) = pool.make_room() {
            answers.evicted.fetch_add(1, Ordering::Relaxed);
            if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                warned = Some(tokio::time::Instant::now());
                tracing::warn!(
                    limit = limits.max_connections,
                    %source,
                    "http-01: port 80 holds its limit of connections; closing the oldest idle ones of the source holding the most (logged once a minute)"
                );
            }
        }
        let _ = stream.set_nodelay(true);
        let task = tokio::spawn(connection(
            stream,
            peer,
            http.clone(),
            answers.clone(),
            limits,
        ));
        pool.push(Source::of(peer.ip()), task.abort_handle());
    }
}

/// Why a connection on port 80 ended without a served exchange. Only logged at
/// debug level: anyone on the internet can open and abandon connections.
#[derive(Debug, thiserror::Error)]
enum ConnectionEnded {
    #[error("nothing received in time")]
    Silent,
    #[error("not done in time")]
    TooSlow,
    /// hyper refused the request or the connection failed (its text).
    #[error(transparent)]
    Http(hyper::Error),
}

/// Serves one request on `stream`, within the limits, then closes it.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    http: Arc<http1::Builder>,
    answers: Answers,
    limits: Limits,
) {
    let served = tokio::time::timeout(limits.lifetime, async {
        // Until its first byte, a connection costs no buffer. (`readable()` would not
        // do: a fresh socket counts as readable once, before anything arrived.)
        if tokio::time::timeout(limits.head_timeout, stream.peek(&mut [0u8; 1]))
            .await
            .is_err()
        {
            return Err(ConnectionEnded::Silent);
        }
        let service = hyper::service::service_fn(|request: Request<Incoming>| {
            let response = respond(request.method(), request.uri().path(), &answers);
            std::future::ready(Ok::<_, std::convert::Infallible>(response))
        });
        http.serve_connection(TokioIo::new(stream), service)
            .await
            .map_err(ConnectionEnded::Http)
    })
    .await
    .unwrap_or(Err(ConnectionEnded::TooSlow));
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "http-01: connection ended");
    }
}

/// The answer to a request for `path` (the target's path, without its query).
fn respond(method: &Method, path: &str, answers: &Shared) -> Response<String> {
    let (status, body) = if method != Method::GET && method != Method::HEAD {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        )
    } else if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX)
        && valid_token(token)
        && let Some(key_authorization) = answers
            .answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    {
        answers.answered.fetch_add(1, Ordering::Relaxed);
        (StatusCode::OK, key_authorization)
    } else {
        (StatusCode::NOT_FOUND, "not found\n".into())
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

/// Where connections come from, for sharing the connection limit fairly: an IPv4
/// address, or an IPv6 /64 (one host's usual allocation: its addresses are many).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(Ipv4Addr),
    V6(u64),
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => Source::V6((v6.to_bits() >> 64) as u64),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::V4(v4) => v4.fmt(f),
            Source::V6(prefix) => {
                write!(f, "{}/64", Ipv6Addr::from_bits(u128::from(*prefix) << 64))
            }
        }
    }
}

/// The connections held, by source, oldest first. Only the accept loop touches it.
struct Pool {
    max: usize,
    by_source: HashMap<Source, VecDeque<(u64, AbortHandle)>>,
    len: usize,
    /// Counts connections: orders the oldest of different sources.
    next: u64,
}

impl Pool {
    fn new(max: usize) -> Pool {
        Pool {
            max: max.max(1),
            by_source: HashMap::new(),
            len: 0,
            next: 0,
        }
    }

    fn push(&mut self, source: Source, connection: AbortHandle) {
        self.by_source
            .entry(source)
            .or_default()
            .push_back((self.next, connection));
        self.next += 1;
        self.len += 1;
    }

    /// Makes room for one more connection: forgets the finished ones and, when that
    /// is not enough, closes the oldest of the source holding the most. Returns that
    /// source when one was closed.
    fn make_room(&mut self) -> Option<Source> {
        if self.len < self.max {
            return None;
        }
        self.forget_finished();
        if self.len < self.max {
            return None;
        }
        self.evict_one()
    }

    fn forget_finished(&mut self) {
        self.by_source.retain(|_, held| {
            held.retain(|(_, c)| !c.is_finished());
            !held.is_empty()
        });
        self.len = self.by_source.values().map(VecDeque::len).sum();
    }

    /// Closes the oldest connection of the source holding the most (of those, the
    /// one whose oldest is oldest).
    fn evict_one(&mut self) -> Option<Source> {
        let (&source, _) = self
            .by_source
            .iter()
            .max_by_key(|(_, held)| (held.len(), std::cmp::Reverse(held[0].0)))?;
        let held = self.by_source.get_mut(&source)?;
        let (_, oldest) = held.pop_front()?;
        if held.is_empty() {
            self.by_source.remove(&source);
        }
        // Aborting drops its socket: the connection closes.
        oldest.abort();
        self.len -= 1;
        Some(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(flavor = "current_thread")]
    async fn why_a_connection_ended_is_logged_as_before() {
        assert_eq!(
            ConnectionEnded::Silent.to_string(),
            "nothing received in time"
        );
        assert_eq!(ConnectionEnded::TooSlow.to_string(), "not done in time");
        // hyper's own text, nothing added: a request that is not HTTP.
        let (mut client, server) = tokio::io::duplex(1024);
        client
            .write_all(b"\x16\x03\x01 hello\r\n\r\n")
            .await
            .unwrap();
        let service = hyper::service::service_fn(|_: Request<Incoming>| {
            std::future::ready(Ok::<_, std::convert::Infallible>(Response::new(
                String::new(),
            )))
        });
        let refused = http1::Builder::new()
            .serve_connection(TokioIo::new(server), service)
            .await
            .unwrap_err();
        let text = refused.to_string();
        assert!(text.starts_with("invalid HTTP"), "{text}");
        assert_eq!(ConnectionEnded::Http(refused).to_string(), text);
    }

    #[test]
    fn tokens_that_are_not_base64url_are_refused() {
        assert!(valid_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        for bad in ["", "../etc/passwd", "a/b", "a.b", "a b", "%2e%2e"] {
            assert!(!valid_token(bad), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let responder = Responder::Webroot(dir.path().to_path_buf());
        let e = responder.publish("../x", "ka").unwrap_err();
        assert!(
            matches!(&e, PublishError::TokenNotBase64url(t) if t == "../x"),
            "{e}"
        );
        // Refused before anything was written.
        assert!(!dir.path().join(".well-known").exists());
    }

    #[test]
    fn webroot_publishes_and_withdraws() {
        let dir = tempfile::tempdir().unwrap();
        let responder = Responder::Webroot(dir.path().join("www"));
        responder.publish("tok_1", "tok_1.thumb").unwrap();
        let path = dir.path().join("www/.well-known/acme-challenge/tok_1");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "tok_1.thumb");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        responder.withdraw("tok_1");
        assert!(!path.exists());
        responder.withdraw("tok_1"); // twice is fine
    }

    fn answers_with(token: &str, ka: &str) -> Answers {
        let a: Answers = Arc::default();
        a.answers.lock().unwrap().insert(token.into(), ka.into());
        a
    }

    #[test]
    fn what_is_answered() {
        let a = answers_with("tok", "tok.thumb");
        let status = |method: Method, path: &str| respond(&method, path, &a).status().as_u16();
        let ok = respond(&Method::GET, "/.well-known/acme-challenge/tok", &a);
        assert_eq!(
            (ok.status(), ok.body().as_str()),
            (StatusCode::OK, "tok.thumb")
        );
        assert_eq!(ok.headers()["content-type"], "text/plain");
        assert_eq!(ok.headers()["connection"], "close");
        assert_eq!(status(Method::HEAD, "/.well-known/acme-challenge/tok"), 200);
        assert_eq!(
            status(Method::GET, "/.well-known/acme-challenge/other"),
            404
        );
        assert_eq!(status(Method::GET, "/"), 404);
        assert_eq!(status(Method::GET, "/.well-known/acme-challenge/"), 404);
        // Nothing but a published token: no traversal, no prefix games.
        for path in [
            "/.well-known/acme-challenge/../acme-challenge/tok",
            "/.well-known/acme-challenge/%74ok",
            "/.well-known/acme-challenge/tok/",
            "/.well-known/acme-challenge/tok/x",
            "//.well-known/acme-challenge/tok",
            "/x/.well-known/acme-challenge/tok",
        ] {
            assert_eq!(status(Method::GET, path), 404, "{path}");
        }
        let post = respond(&Method::POST, "/.well-known/acme-challenge/tok", &a);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()["allow"], "GET, HEAD");
        assert_eq!(status(Method::PUT, "/"), 405);
        assert_eq!(a.answered.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn sources_share_the_limit_by_address_and_ipv6_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            Source::of(ip("::ffff:192.0.2.7")),
            Source::of(ip("192.0.2.7"))
        );
        assert_ne!(Source::of(ip("192.0.2.7")), Source::of(ip("192.0.2.8")));
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(Source::of(ip("::ffff:192.0.2.7")).to_string(), "192.0.2.7");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_pool_closes_the_oldest_of_the_source_holding_the_most() {
        let ip = |s: &str| Source::of(s.parse::<IpAddr>().unwrap());
        let (flood, ca, other) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
        let mut pool = Pool::new(4);
        let idle = || tokio::spawn(std::future::pending::<()>()).abort_handle();
        let first_ca = idle();
        pool.push(ca, first_ca.clone());
        let first_flood = idle();
        pool.push(flood, first_flood.clone());
        pool.push(flood, idle());
        pool.push(other, idle());
        assert_eq!(pool.make_room(), Some(flood), "full: the flood pays");
        tokio::task::yield_now().await;
        assert!(first_flood.is_finished() && !first_ca.is_finished());
        pool.push(ca, idle());
        // Two sources with two each: the one whose oldest is oldest (ca's first).
        assert_eq!(pool.make_room(), Some(ca));
        tokio::task::yield_now().await;
        assert!(first_ca.is_finished());
        // Finished connections make room without closing anything.
        let done = tokio::spawn(async {}).abort_handle();
        pool.push(other, done);
        tokio::task::yield_now().await;
        assert_eq!(pool.make_room(), None);
        assert_eq!(pool.len, 3);
    }

    async fn request(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        read_all(&mut s).await
    }

    async fn read_all(s: &mut tokio::net::TcpStream) -> String {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    const GET_TOK: &[u8] = b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: a\r\n\r\n";

    fn local_server(limits: Limits) -> Http01Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = Http01Server::start_with(listener, limits).unwrap();
        server.publish("tok", "tok.thumb");
        server
    }

    #[test]
    fn server_outside_a_runtime_is_an_error_not_a_panic() {
        let Err(e) = Http01Server::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        else {
            panic!("started without a runtime")
        };
        let e = NoResponder::SocketUnusable(Arc::new(e)).to_string();
        assert!(
            e.starts_with("cannot serve http-01 on the `acme-http` socket: ")
                && e.contains("Tokio"),
            "{e}"
        );
    }

    #[test]
    fn publish_and_responder_errors_say_what_and_where() {
        assert_eq!(
            PublishError::TokenNotBase64url("../x".into()).to_string(),
            r#"the CA sent a token that is not base64url: "../x""#
        );
        assert_eq!(
            PublishError::CreateDir {
                dir: PathBuf::from("/srv/www/.well-known/acme-challenge"),
                source: io::Error::from(io::ErrorKind::PermissionDenied),
            }
            .to_string(),
            "creating /srv/www/.well-known/acme-challenge: permission denied"
        );
        assert_eq!(
            NoResponder::WebrootUnset.to_string(),
            r#"challenge = "webroot" needs `webroot`"#
        );
        assert_eq!(
            NoResponder::NoSocket.to_string(),
            "no `acme-http` socket from systemd: enable postmaster-acme.socket (port 80) and restart postmaster, or use challenge = \"webroot\""
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn server_answers_tokens_and_survives_garbage() {
        let server = local_server(Limits::default());
        let addr = server.local_addr();
        let ok = request(addr, GET_TOK).await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain\r\n")
                && ok.contains("Connection: close\r\n")
                && ok.contains("Content-Length: 9\r\n")
                && ok.ends_with("\r\n\r\ntok.thumb"),
            "{ok}"
        );
        // LF-only line ends (RFC 9112 §2.2) are answered at once, not at the timeout.
        let lf = tokio::time::timeout(
            Duration::from_secs(2),
            request(
                addr,
                b"GET /.well-known/acme-challenge/tok HTTP/1.1\nHost: a\n\n",
            ),
        )
        .await
        .expect("an LF-only request is answered at once");
        assert!(
            lf.starts_with("HTTP/1.1 200 OK\r\n") && lf.ends_with("tok.thumb"),
            "{lf}"
        );
        // HTTP/1.0, no Host, an absolute-form target with a query.
        let old = request(
            addr,
            b"GET http://a/.well-known/acme-challenge/tok?x=1 HTTP/1.0\r\n\r\n",
        )
        .await;
        assert!(
            old.starts_with("HTTP/1.0 200 OK\r\n") && old.ends_with("tok.thumb"),
            "{old}"
        );
        let head = request(
            addr,
            b"HEAD /.well-known/acme-challenge/tok HTTP/1.1\r\n\r\n",
        )
        .await;
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let missing = request(
            addr,
            b"GET /.well-known/acme-challenge/nope HTTP/1.1\r\n\r\n",
        )
        .await;
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        let traversal = request(
            addr,
            b"GET /.well-known/acme-challenge/../../etc/passwd HTTP/1.1\r\n\r\n",
        )
        .await;
        assert!(traversal.starts_with("HTTP/1.1 404 "), "{traversal}");
        let post = request(
            addr,
            b"POST /.well-known/acme-challenge/tok HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
        )
        .await;
        assert!(
            post.starts_with("HTTP/1.1 405 ") && post.contains("Allow: GET, HEAD\r\n"),
            "{post}"
        );
        // Garbage gets a 400 and a close, whatever it ends with.
        for garbage in [
            b"\x00\x01\x02\r\n\r\n".as_slice(),
            b"\xff\xfe garbage\r\n\r\n",
            b"GET /x SPDY/3\r\n\r\n",
            b"GET /x\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // a TLS ClientHello
        ] {
            let answer = tokio::time::timeout(Duration::from_secs(2), request(addr, garbage))
                .await
                .expect("garbage is answered and closed at once");
            assert!(answer.starts_with("HTTP/1.1 400 "), "{garbage:?}: {answer}");
        }
        // A huge header: 431 and a close, before it is all sent.
        let huge = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &vec![b'a'; 20_000]].concat();
        assert!(request(addr, &huge).await.starts_with("HTTP/1.1 431 "));
        // Pipelined requests: the first is answered, then the connection closes.
        let two = request(addr, &[GET_TOK, GET_TOK].concat()).await;
        assert_eq!(two.matches("HTTP/1.1 200 OK").count(), 1, "{two}");
        // A client that ends its sending side after the request still gets its answer.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(GET_TOK).await.unwrap();
        s.shutdown().await.unwrap();
        assert!(read_all(&mut s).await.ends_with("tok.thumb"));
        // A client that leaves early does not stop the server.
        drop(tokio::net::TcpStream::connect(addr).await.unwrap());
        // Several connections at once.
        let many: Vec<_> = (0..10)
            .map(|_| tokio::spawn(request(addr, GET_TOK)))
            .collect();
        for r in many {
            assert!(r.await.unwrap().ends_with("tok.thumb"));
        }
        assert_eq!(server.answered(), 16);
        server.withdraw("tok");
        let gone = request(addr, GET_TOK).await;
        assert!(gone.starts_with("HTTP/1.1 404 "), "{gone}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn idle_and_slow_connections_are_closed_at_their_deadlines() {
        let server = local_server(Limits {
            head_timeout: Duration::from_millis(300),
            lifetime: Duration::from_secs(5),
            max_connections: 100,
        });
        let addr = server.local_addr();
        let started = std::time::Instant::now();
        // Silent; half a request line; one byte every 100 ms (a head never complete).
        let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET /.well-known/acme-chall")
            .await
            .unwrap();
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        let trickle = tokio::spawn(async move {
            for b in b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nX: "
                .iter()
                .cycle()
            {
                if slow.write_all(&[*b]).await.is_err() {
                    return started.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            unreachable!()
        });
        for (what, mut s) in [("silent", silent), ("half", half)] {
            let answer = tokio::time::timeout(Duration::from_secs(2), read_all(&mut s))
                .await
                .unwrap_or_else(|_| panic!("{what}: not closed at the head timeout"));
            assert!(!answer.contains("200"), "{what}: {answer}");
            let after = started.elapsed();
            assert!(
                after < Duration::from_millis(800),
                "{what}: closed after {after:?}"
            );
        }
        // Bytes that keep coming do not extend the head's deadline.
        let closed_after = tokio::time::timeout(Duration::from_secs(3), trickle)
            .await
            .expect("a trickling client is closed")
            .unwrap();
        assert!(
            closed_after < Duration::from_millis(1000),
            "closed after {closed_after:?}"
        );
    }

    /// Holds `n` connections from `from` that each sent half a request line; when
    /// `reopen_every` is given, reopens those the server closed at that pace (at once
    /// with ZERO), as an attacker would.
    async fn flood(addr: SocketAddr, from: IpAddr, n: usize, reopen_every: Option<Duration>) {
        async fn open(addr: SocketAddr, from: IpAddr) -> Option<tokio::net::TcpStream> {
            let socket = tokio::net::TcpSocket::new_v4().ok()?;
            socket.bind(SocketAddr::new(from, 0)).ok()?;
            let mut s = socket.connect(addr).await.ok()?;
            s.write_all(b"GET /.well-known/acme-chall").await.ok()?;
            Some(s)
        }
        let mut held = Vec::new();
        for _ in 0..n {
            held.extend(open(addr, from).await);
        }
        let Some(pace) = reopen_every else {
            return std::future::pending().await;
        };
        loop {
            for slot in held.iter_mut() {
                let mut probe = [0u8; 1];
                // Closed by the server (EOF or reset): open another.
                if let Ok(Ok(_) | Err(_)) =
                    tokio::time::timeout(Duration::ZERO, slot.read(&mut probe)).await
                    && let Some(s) = open(addr, from).await
                {
                    *slot = s;
                }
            }
            if pace.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(pace).await;
            }
        }
    }

    /// A request from `from` as it arrives over a network: `rtt` after the connection.
    async fn timed_request(addr: SocketAddr, from: IpAddr, rtt: Duration) -> String {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        tokio::time::sleep(rtt).await;
        s.write_all(GET_TOK).await.unwrap();
        read_all(&mut s).await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_flood_of_idle_connections_does_not_keep_a_request_out() {
        // The default limits, 600 held (more than the server keeps) from the request's
        // own address, reopened every 10 ms as the server closes them: the request's
        // connection is the newest of its source, the flood's idle ones go first.
        let server = local_server(Limits::default());
        let addr = server.local_addr();
        let attacker: IpAddr = "127.0.0.1".parse().unwrap();
        let flood = tokio::spawn(flood(addr, attacker, 600, Some(Duration::from_millis(10))));
        let evicted = || server.inner.answers.evicted.load(Ordering::Relaxed);
        while evicted() < 600 - MAX_CONNECTIONS as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for i in 0..10 {
            let answer = tokio::time::timeout(
                Duration::from_secs(2),
                timed_request(addr, attacker, Duration::from_millis(20)),
            )
            .await
            .unwrap_or_else(|_| panic!("request {i} not answered during the flood"));
            assert!(answer.ends_with("tok.thumb"), "request {i}: {answer}");
        }
        assert!(
            evicted() > 2 * (600 - MAX_CONNECTIONS as u64),
            "{}",
            evicted()
        );
        flood.abort();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_attacker_who_reopens_at_once_does_not_keep_the_ca_out() {
        // A small pool and an attacker from one address reopening at once every
        // connection the server closes; the CA's validators come from other addresses.
        let server = local_server(Limits {
            max_connections: 16,
            ..Limits::default()
        });
        let addr = server.local_addr();
        let attacker = "127.0.0.2".parse().unwrap();
        let flood = tokio::spawn(flood(addr, attacker, 64, Some(Duration::ZERO)));
        let evicted = || server.inner.answers.evicted.load(Ordering::Relaxed);
        while evicted() < 200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before = evicted();
        for i in 0..10 {
            let answer = tokio::time::timeout(
                Duration::from_secs(2),
                timed_request(
                    addr,
                    "127.0.0.3".parse().unwrap(),
                    Duration::from_millis(20),
                ),
            )
            .await
            .unwrap_or_else(|_| panic!("request {i} not answered during the flood"));
            assert!(answer.ends_with("tok.thumb"), "request {i}: {answer}");
        }
        // The flood went on meanwhile: far more than the pool was closed.
        assert!(evicted() - before > 16, "{}", evicted() - before);
        flood.abort();
    }
}
