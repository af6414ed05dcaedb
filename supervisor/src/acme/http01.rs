//! How http-01 answers reach the CA: postmaster's own server on port 80, or files in
//! a webroot another web server serves.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::AcmeError;
use crate::apply;

/// How http-01 answers reach the CA.
pub enum Responder {
    /// postmaster serves them itself (systemd's `acme-http` socket on port 80).
    Listener(Http01Server),
    /// A web server serves this directory: answers go to
    /// `WEBROOT/.well-known/acme-challenge/TOKEN`.
    Webroot(PathBuf),
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
    pub fn publish(&self, token: &str, key_authorization: &str) -> Result<(), String> {
        if !valid_token(token) {
            return Err(format!(
                "the CA sent a token that is not base64url: {token:?}"
            ));
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
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
                apply::write_atomic(&dir.join(token), key_authorization.as_bytes(), 0o644, None)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// What must hold for the CA to get the answers for `name`: the end of a
    /// failed challenge's message.
    pub fn hint(&self, name: &str) -> String {
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
    pub fn withdraw(&self, token: &str) {
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

/// Requests larger than this (request line and headers) are refused.
const MAX_REQUEST: usize = 8 * 1024;
/// A client must send its whole request within this time.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; a new one beyond them closes the oldest, so that a
/// flood of idle connections cannot keep a well-formed request (the CA's) out.
const MAX_CONNECTIONS: usize = 64;

/// What the server answers, shared with its connections.
#[derive(Default)]
struct Shared {
    answers: Mutex<HashMap<String, String>>,
    /// Challenge requests answered with a key authorization.
    answered: AtomicU64,
}

type Answers = Arc<Shared>;

/// A tiny HTTP/1.1 server for http-01 answers. Cheap to clone; it stops when the last
/// clone is dropped. Must be started inside a tokio runtime.
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
    pub fn start(listener: std::net::TcpListener) -> Result<Http01Server, AcmeError> {
        listener
            .set_nonblocking(true)
            .map_err(AcmeError::Listener)?;
        let local_addr = listener.local_addr().map_err(AcmeError::Listener)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| AcmeError::Listener(io::Error::other(e)))?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(AcmeError::Listener)?;
        let answers: Answers = Arc::default();
        let task = runtime
            .spawn(serve(listener, answers.clone()))
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

    pub fn publish(&self, token: &str, key_authorization: &str) {
        self.answers()
            .insert(token.to_string(), key_authorization.to_string());
    }

    pub fn withdraw(&self, token: &str) {
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

async fn serve(listener: tokio::net::TcpListener, answers: Answers) {
    // Only this loop touches it: oldest first.
    let mut live: std::collections::VecDeque<tokio::task::AbortHandle> =
        std::collections::VecDeque::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: do not spin.
                tracing::warn!(error = %e, "http-01: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        live.retain(|task| !task.is_finished());
        if live.len() >= MAX_CONNECTIONS
            && let Some(oldest) = live.pop_front()
        {
            // Aborting drops its stream: the connection closes.
            oldest.abort();
        }
        let answers = answers.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = answer(stream, &answers).await {
                tracing::debug!(%peer, error = %e, "http-01: connection ended");
            }
        });
        live.push_back(task.abort_handle());
    }
}

/// Serves one request, then closes the connection.
async fn answer(mut stream: tokio::net::TcpStream, answers: &Answers) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = head_end(&buf) {
                return Ok(Some(end));
            }
            if buf.len() > MAX_REQUEST {
                return Ok(None);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before the request ended",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request not received in time"))??;

    let response = match head {
        None => response(
            431,
            "Request Header Fields Too Large",
            "request too large\n",
            false,
        ),
        Some(end) => {
            let (status, reason, body) = route(&buf[..end], answers);
            let head_only = buf.starts_with(b"HEAD ");
            response(status, reason, &body, head_only)
        }
    };
    tokio::time::timeout(READ_TIMEOUT, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response not sent in time"))?
}

/// Where the request head ends (the blank line): CRLF CRLF, or LF LF, which RFC 9112
/// §2.2 lets a server accept as a line end.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Decides the answer to a request head (without the final blank line).
fn route(head: &[u8], answers: &Answers) -> (u16, &'static str, String) {
    let first = head
        .split(|&b| b == b'\n')
        .next()
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let Some(line) = first.and_then(|l| std::str::from_utf8(l).ok()) else {
        return (400, "Bad Request", "bad request\n".into());
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (400, "Bad Request", "bad request\n".into());
    };
    if !version.starts_with("HTTP/1.") {
        return (400, "Bad Request", "bad request\n".into());
    }
    if method != "GET" && method != "HEAD" {
        return (405, "Method Not Allowed", "method not allowed\n".into());
    }
    // An absolute-form target (`http://host/path`) is allowed by HTTP/1.1.
    let path = match target.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let path = path.split('?').next().unwrap_or(path);
    if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX)
        && valid_token(token)
        && let Some(key_authorization) = answers
            .answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    {
        answers.answered.fetch_add(1, Ordering::Relaxed);
        return (200, "OK", key_authorization);
    }
    (404, "Not Found", "not found\n".into())
}

fn response(status: u16, reason: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_that_are_not_base64url_are_refused() {
        assert!(valid_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        for bad in ["", "../etc/passwd", "a/b", "a.b", "a b", "%2e%2e"] {
            assert!(!valid_token(bad), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let responder = Responder::Webroot(dir.path().to_path_buf());
        assert!(
            responder
                .publish("../x", "ka")
                .unwrap_err()
                .contains("not base64url")
        );
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
    fn routing() {
        let a = answers_with("tok", "tok.thumb");
        assert_eq!(
            route(
                b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: x",
                &a
            ),
            (200, "OK", "tok.thumb".into())
        );
        assert_eq!(
            route(
                b"GET http://x/.well-known/acme-challenge/tok?a=1 HTTP/1.0",
                &a
            )
            .0,
            200
        );
        assert_eq!(
            route(b"HEAD /.well-known/acme-challenge/tok HTTP/1.1", &a).0,
            200
        );
        assert_eq!(
            route(b"GET /.well-known/acme-challenge/other HTTP/1.1", &a).0,
            404
        );
        assert_eq!(route(b"GET / HTTP/1.1", &a).0, 404);
        assert_eq!(
            route(b"POST /.well-known/acme-challenge/tok HTTP/1.1", &a).0,
            405
        );
        assert_eq!(
            route(b"GET /.well-known/acme-challenge/tok HTTP/1.1\nHost: x", &a).0,
            200
        );
        assert_eq!(
            (
                head_end(b"GET / HTTP/1.1\n\n"),
                head_end(b"GET / HTTP/1.1\r\n\r\n")
            ),
            (Some(14), Some(14))
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(route(b"GET /x", &a).0, 400);
        assert_eq!(route(b"GET /x SPDY/3", &a).0, 400);
        assert_eq!(route(b"\xff\xfe garbage", &a).0, 400);
        assert_eq!(route(b"", &a).0, 400);
        assert_eq!(a.answered.load(Ordering::Relaxed), 4);
    }

    async fn request(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn server_outside_a_runtime_is_an_error_not_a_panic() {
        let Err(e) = Http01Server::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        else {
            panic!("started without a runtime")
        };
        assert!(
            e.to_string()
                .starts_with("cannot serve http-01 on the given socket: "),
            "{e}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn server_answers_tokens_and_survives_garbage() {
        let server =
            Http01Server::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
        let addr = server.local_addr();
        server.publish("tok", "tok.thumb");
        let ok = request(
            addr,
            b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain\r\n") && ok.ends_with("\r\n\r\ntok.thumb"),
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
        let missing = request(
            addr,
            b"GET /.well-known/acme-challenge/nope HTTP/1.1\r\n\r\n",
        )
        .await;
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        // Garbage, a huge header, a client that leaves early: none stops the server.
        assert!(
            request(addr, b"\x00\x01\x02\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 400 ")
        );
        let huge = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &vec![b'a'; 20_000]].concat();
        assert!(request(addr, &huge).await.starts_with("HTTP/1.1 431 "));
        drop(tokio::net::TcpStream::connect(addr).await.unwrap());
        // Several connections at once.
        let many: Vec<_> = (0..10)
            .map(|_| {
                tokio::spawn(request(
                    addr,
                    b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\n\r\n",
                ))
            })
            .collect();
        for r in many {
            assert!(r.await.unwrap().ends_with("tok.thumb"));
        }
        server.withdraw("tok");
        let gone = request(
            addr,
            b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\n\r\n",
        )
        .await;
        assert!(gone.starts_with("HTTP/1.1 404 "), "{gone}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_flood_of_idle_connections_does_not_keep_a_request_out() {
        let server =
            Http01Server::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
        let addr = server.local_addr();
        server.publish("tok", "tok.thumb");
        let mut idle = Vec::new();
        for _ in 0..300 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /.well-known/acme-chall").await.unwrap();
            idle.push(s);
        }
        let ok = tokio::time::timeout(
            Duration::from_secs(2),
            request(
                addr,
                b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: a\r\n\r\n",
            ),
        )
        .await
        .expect("answered while 300 idle connections are held");
        assert!(
            ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("tok.thumb"),
            "{ok}"
        );
        drop(idle);
    }
}
