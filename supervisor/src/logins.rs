//! Password guessing, refused: dovecot's auth asks postmaster before every login
//! (IMAP, POP3, and SMTP AUTH, which postfix hands to dovecot's auth socket) and
//! reports how each one ended, over dovecot's auth policy protocol (HTTP + JSON on
//! a loopback address). After `block_after_failures` failed logins from one
//! address within `failure_window_seconds`, its further attempts are refused for
//! `block_seconds`. Blocks are shown by `postmaster status` and lifted with
//! `postmaster unblock ADDRESS`.
//!
//! Why here and not in dovecot or postfix: dovecot's own penalty (anvil) only slows
//! an address down and cannot be listed or lifted; postfix's anvil counts
//! connections and AUTH commands, not failures; a firewall needs root. The daemon
//! runs without privileges, and dovecot's auth is the one place every password
//! passes through.
//!
//! [`Guard`] is the decision, pure (time is passed in); [`respond`] is one HTTP
//! exchange as values; [`serve`] is the listener.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};

use crate::config::Logins;

/// More distinct addresses than this are not tracked: when full, entries that
/// block nobody are dropped first, so a spread-out attack cannot exhaust memory
/// (about 100 bytes each).
const MAX_TRACKED: usize = 100_000;
/// dovecot's request bodies are a few hundred bytes.
const MAX_BODY: usize = 16 * 1024;

/// One address (an IPv6 address counts by its /64: one host usually holds a whole
/// /64, so counting single addresses would let it guess 2^64 times as often).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Source(IpAddr);

impl Source {
    pub(crate) fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(_) => Source(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    Source(IpAddr::V6(Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
        }
    }

    /// An address as an admin types it (`192.0.2.7`, `2001:db8::1`, `2001:db8::/64`).
    pub(crate) fn parse(text: &str) -> Result<Source, NotAnAddress> {
        let trimmed = text.trim();
        let bare = trimmed.strip_suffix("/64").unwrap_or(trimmed);
        bare.parse::<IpAddr>()
            .map(Source::of)
            .map_err(|_| NotAnAddress(text.to_string()))
    }
}

/// What an admin typed where an address to unblock was due (`postmaster unblock`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{}` is not an IP address (like 192.0.2.7 or 2001:db8::1)",
    .0.escape_default()
)]
pub(crate) struct NotAnAddress(pub(crate) String);

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// One blocked address, as `postmaster status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Block {
    pub(crate) address: String,
    /// Failed logins counted when it was blocked.
    pub(crate) failures: u32,
    /// Unix seconds.
    pub(crate) since: u64,
    pub(crate) until: u64,
    /// The protocol of the last failure (imap, pop3, smtp).
    pub(crate) protocol: String,
}

#[derive(Debug, Default)]
struct Entry {
    /// Unix seconds of the failures inside the window, oldest first.
    failures: Vec<u64>,
    blocked: Option<(u64, u64, u32)>,
    protocol: String,
}

/// The counts and blocks. Time is unix seconds, given by the caller.
#[derive(Debug)]
pub(crate) struct Guard {
    limits: Logins,
    entries: HashMap<Source, Entry>,
    /// The uids of `limits.policy_clients`, as resolved on this host.
    client_uids: Vec<u32>,
}

/// What dovecot is told before a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    /// Refused, with the text dovecot logs.
    Refuse(String),
}

impl Guard {
    pub(crate) fn new(limits: Logins) -> Guard {
        Guard {
            limits,
            entries: HashMap::new(),
            client_uids: Vec::new(),
        }
    }

    /// Whose connections are answered, besides root's (see [`socket_owner`]).
    pub(crate) fn set_client_uids(&mut self, uids: Vec<u32>) {
        self.client_uids = uids;
    }

    /// Whether a connection made by `uid` may ask and report.
    pub(crate) fn answers(&self, uid: u32) -> bool {
        uid == 0 || self.client_uids.contains(&uid)
    }

    /// New limits (a reloaded configuration); counts and blocks are kept.
    pub(crate) fn set_limits(&mut self, limits: Logins) {
        self.limits = limits;
    }

    /// Before a login from `source`.
    pub(crate) fn allow(&mut self, source: Source, now: u64) -> Verdict {
        match self.entries.get(&source).and_then(|e| e.blocked) {
            Some((_, until, _)) if until > now => Verdict::Refuse(format!(
                "too many failed logins from {source}; blocked for {} more seconds",
                until - now
            )),
            _ => Verdict::Allow,
        }
    }

    /// After a login from `source`: a failure counts, a success changes nothing
    /// (one known password must not buy more guesses at the others). A login the
    /// policy itself refused is not counted: the block runs its time and ends.
    /// Returns the new block when this failure started one.
    pub(crate) fn report(
        &mut self,
        source: Source,
        success: bool,
        refused_by_policy: bool,
        protocol: &str,
        now: u64,
    ) -> Option<Block> {
        let max = self.limits.block_after_failures;
        if success || refused_by_policy || max == 0 {
            return None;
        }
        if !self.entries.contains_key(&source) && self.entries.len() >= MAX_TRACKED {
            self.prune(now);
            if self.entries.len() >= MAX_TRACKED {
                return None;
            }
        }
        let window = self.limits.failure_window_seconds;
        let block_seconds = self.limits.block_seconds;
        let entry = self.entries.entry(source).or_default();
        if let Some((_, until, _)) = entry.blocked {
            if until > now {
                return None;
            }
            entry.blocked = None;
            entry.failures.clear();
        }
        entry.failures.retain(|&t| t + window > now);
        entry.failures.push(now);
        entry.protocol = protocol.chars().take(16).collect();
        let count = u32::try_from(entry.failures.len()).unwrap_or(u32::MAX);
        if count < max {
            return None;
        }
        entry.blocked = Some((now, now + block_seconds, count));
        entry.failures.clear();
        Some(Block {
            address: source.to_string(),
            failures: count,
            since: now,
            until: now + block_seconds,
            protocol: entry.protocol.clone(),
        })
    }

    /// Lifts the block of `source` and forgets its failures; false when it had none.
    pub(crate) fn lift(&mut self, source: Source, now: u64) -> bool {
        let blocked = self
            .entries
            .get(&source)
            .and_then(|e| e.blocked)
            .is_some_and(|(_, until, _)| until > now);
        self.entries.remove(&source);
        blocked
    }

    /// The blocks in force, oldest first.
    pub(crate) fn blocks(&self, now: u64) -> Vec<Block> {
        let mut blocks: Vec<Block> = self
            .entries
            .iter()
            .filter_map(|(source, e)| {
                let (since, until, failures) = e.blocked?;
                (until > now).then(|| Block {
                    address: source.to_string(),
                    failures,
                    since,
                    until,
                    protocol: e.protocol.clone(),
                })
            })
            .collect();
        blocks.sort_by(|a, b| (a.since, &a.address).cmp(&(b.since, &b.address)));
        blocks
    }

    /// Forgets what no longer counts: expired blocks, failures outside the window.
    fn prune(&mut self, now: u64) {
        let window = self.limits.failure_window_seconds;
        self.entries.retain(|_, e| {
            if e.blocked.is_some_and(|(_, until, _)| until > now) {
                return true;
            }
            e.blocked = None;
            e.failures.retain(|&t| t + window > now);
            !e.failures.is_empty()
        });
    }
}

/// The guard as the listener, the D-Bus interface and the event loop share it.
pub(crate) type Shared = Arc<Mutex<Guard>>;

pub(crate) fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Guard> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What dovecot sends (auth_policy_request_attributes, plus `success` and
/// `policy_reject` on reports). Unknown fields are ignored.
#[derive(Debug, Deserialize)]
struct PolicyRequest {
    #[serde(default)]
    remote: String,
    #[serde(default)]
    protocol: String,
    #[serde(default)]
    success: Option<bool>,
    #[serde(default)]
    policy_reject: bool,
}

/// One exchange: dovecot POSTs `?command=allow` or `?command=report` with a JSON
/// body. Returns the HTTP status and the JSON answer (`status` -1 refuses, 0
/// allows). Anything malformed gets a 400, which dovecot treats as "allow"
/// (auth_policy_reject_on_fail = no): a broken guard never locks everyone out.
pub(crate) fn respond(
    guard: &mut Guard,
    method: &Method,
    query: Option<&str>,
    body: &[u8],
    now: u64,
) -> (StatusCode, String) {
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "{}".into());
    }
    let command = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("command="));
    let Ok(request) = serde_json::from_slice::<PolicyRequest>(body) else {
        return (StatusCode::BAD_REQUEST, "{}".into());
    };
    // No remote address (a local doveadm auth test): nothing to count.
    let source = request.remote.parse::<IpAddr>().ok().map(Source::of);
    match (command, source) {
        (Some("allow"), Some(source)) => match guard.allow(source, now) {
            Verdict::Allow => (StatusCode::OK, r#"{"status":0}"#.into()),
            Verdict::Refuse(msg) => (
                StatusCode::OK,
                serde_json::json!({"status": -1, "msg": msg}).to_string(),
            ),
        },
        (Some("allow"), None) => (StatusCode::OK, r#"{"status":0}"#.into()),
        (Some("report"), source) => {
            if let (Some(source), Some(success)) = (source, request.success)
                && let Some(block) = guard.report(
                    source,
                    success,
                    request.policy_reject,
                    &request.protocol,
                    now,
                )
            {
                tracing::warn!(
                    address = %block.address,
                    failures = block.failures,
                    protocol = %block.protocol,
                    until = block.until,
                    "logins: too many failed logins; address blocked (postmaster unblock ADDRESS lifts it)"
                );
            }
            (StatusCode::OK, "{}".into())
        }
        _ => (StatusCode::BAD_REQUEST, "{}".into()),
    }
}

/// Serves dovecot's auth policy requests on `listener` until the task is dropped.
pub(crate) async fn serve(listener: tokio::net::TcpListener, guard: Shared) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5))
        .max_buf_size(MAX_BODY.max(8192));
    let http = Arc::new(http);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "logins: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Only dovecot's auth may ask and report: anyone else on the host could
        // otherwise report failures for any address and block it.
        let owner = stream
            .local_addr()
            .ok()
            .and_then(|local| connection_owner(peer, local));
        match owner {
            Some(uid) if lock(&guard).answers(uid) => {}
            _ => {
                tracing::warn!(
                    %peer,
                    uid = ?owner,
                    "logins: a policy connection not made by dovecot's auth ([logins] policy_clients) was refused"
                );
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        let (http, guard) = (http.clone(), guard.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let guard = guard.clone();
                async move { Ok::<_, std::convert::Infallible>(exchange(request, &guard).await) }
            });
            if let Err(e) = http.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%peer, error = %e, "logins: policy connection ended");
            }
        });
    }
}

async fn exchange(request: Request<Incoming>, guard: &Shared) -> Response<String> {
    use http_body_util::BodyExt;
    let method = request.method().clone();
    let query = request.uri().query().map(str::to_owned);
    let body = http_body_util::Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes());
    let (status, text) = match body {
        Ok(bytes) => respond(
            &mut lock(guard),
            &method,
            query.as_deref(),
            &bytes,
            unix_now(),
        ),
        Err(_) => (StatusCode::BAD_REQUEST, "{}".into()),
    };
    let mut response = Response::new(text);
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// The uid of the process that made the loopback connection from `client` to
/// `server`, from the kernel's socket table (the tables /proc/self/net/tcp and tcp6
/// list every socket with its owner; visible under the unit's ProcSubset=pid).
fn connection_owner(client: SocketAddr, server: SocketAddr) -> Option<u32> {
    let table = if client.is_ipv4() { "tcp" } else { "tcp6" };
    let text = std::fs::read_to_string(format!("/proc/self/net/{table}")).ok()?;
    socket_owner(&text, client, server)
}

/// In a /proc/net/tcp or tcp6 table, the owner of the established connection
/// whose local end is `local` and whose remote end is `remote`. Only state 01
/// (ESTABLISHED) counts: a closed connection's TIME_WAIT entry with the same ends
/// is listed with uid 0.
pub(crate) fn socket_owner(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    let (local, remote) = (proc_net_address(local), proc_net_address(remote));
    table.lines().skip(1).find_map(|line| {
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid ...
        let fields: Vec<&str> = line.split_whitespace().collect();
        let matches = fields.get(1) == Some(&local.as_str())
            && fields.get(2) == Some(&remote.as_str())
            && fields.get(3) == Some(&"01");
        matches.then(|| fields.get(7)?.parse().ok())?
    })
}

/// An address as the kernel prints it in /proc/net/tcp: each 32-bit word of the
/// address as the machine holds it in memory, in hex, then the port in hex.
fn proc_net_address(address: SocketAddr) -> String {
    let octets: Vec<u8> = match address.ip() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let words: String = octets
        .chunks(4)
        .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
        .collect();
    format!("{words}:{:04X}", address.port())
}

/// Why failed logins are not limited although `[logins]` asks for it; the daemon
/// logs it and the status shows it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotLimited {
    /// The policy listener could not be bound (the port is taken, say).
    #[error(
        "cannot listen on {address} for dovecot's auth policy requests ({source}); failed logins are not limited"
    )]
    CannotListen {
        address: SocketAddr,
        source: std::io::Error,
    },
    /// `policy_clients` names users this host does not have: no request can be
    /// trusted, so every one is refused.
    #[error(
        "[logins] policy_clients: no user {} on this host: dovecot's auth policy requests are refused, so failed logins are not limited",
        names.join(", ")
    )]
    UnknownClients { names: Vec<String> },
}

/// Binds the policy listener (loopback only: the configuration refuses anything else).
pub(crate) fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = std::net::TcpListener::bind(address)?;
    socket.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(socket)
}

#[cfg(test)]
mod tests;
