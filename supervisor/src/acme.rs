//! The ACME client: account, http-01 issuance and renewal planning.
//!
//! - [`account`] loads the account from `STATE_DIR/acme/account.json` or registers one
//!   (and stores its credentials there, mode 0600).
//! - [`obtain`] orders a certificate for some names, answers http-01 through a
//!   [`Responder`] and returns a chain and key that [`tls::validate_pair`] accepted.
//! - [`Http01Server`] answers `GET /.well-known/acme-challenge/TOKEN` on a listener the
//!   caller hands over (systemd's `acme-http` socket); [`Responder::Webroot`] writes
//!   the answers into a directory another web server serves instead.
//! - [`renewal_time`], [`retry_after`] and [`Schedule`] plan when to act: pure
//!   functions plus a small state file that survives restarts.
//!
//! Nothing here touches the installed pair: the caller installs what [`obtain`] returns.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    ExternalAccountKey, Identifier, NewAccount, NewOrder, Order, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::apply;
use crate::config;
use crate::tls::{self, PairProblem};

/// The account credentials, below the state directory.
pub const ACCOUNT_FILE: &str = "acme/account.json";
/// The renewal schedule, below the state directory.
pub const SCHEDULE_FILE: &str = "acme/schedule.json";

/// How long [`obtain`] waits for the CA to validate all challenges.
pub const VALIDATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long [`obtain`] waits for the CA to issue once the order is finalized.
pub const ISSUANCE_TIMEOUT: Duration = Duration::from_secs(120);

/// What went wrong talking to the CA or preparing to. Each text says what happened
/// and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error(
        "the ACME account file {} cannot be used: {detail} (remove it to register a new account)",
        path.display()
    )]
    AccountFile { path: PathBuf, detail: String },
    #[error(
        "the renewal schedule {} cannot be read: {detail} (remove it: postmaster then plans afresh from the installed certificate)",
        path.display()
    )]
    ScheduleFile { path: PathBuf, detail: String },
    #[error("cannot store {what}: {source} (check that the state directory is writable)")]
    Store {
        what: &'static str,
        source: apply::ApplyError,
    },
    #[error(
        "cannot read the external account binding key {}: {detail} (it must hold the CA's HMAC key, base64url-encoded)",
        path.display()
    )]
    EabKey { path: PathBuf, detail: String },
    #[error(
        "cannot use acme.trust_root {}: {detail} (it must be a PEM file with the certificate of the CA's API server)",
        path.display()
    )]
    TrustRoot { path: PathBuf, detail: String },
    #[error(
        "cannot register an ACME account at {directory}: {detail} (check acme.directory, acme.contact and the CA's terms)"
    )]
    Register { directory: String, detail: String },
    #[error(
        "cannot reach the ACME CA at {directory}: {detail} (check acme.directory, DNS and that this host may open HTTPS connections)"
    )]
    Unreachable { directory: String, detail: String },
    #[error("the ACME CA refused the order for {names}: {detail}")]
    Order { names: String, detail: String },
    /// The CA has no account for the stored key (a test CA restarted, or the account
    /// was deactivated): registering a new one is the way out.
    #[error("the ACME CA does not know the stored account: {detail}")]
    AccountUnknown { detail: String },
    #[error(
        "the ACME CA refuses to issue for {names} now because of its rate limits: {detail} (postmaster waits at least an hour before trying again)"
    )]
    RateLimited { names: String, detail: String },
    #[error(
        "the ACME CA offers no http-01 challenge for {name} (it offers: {offered}): postmaster can only answer http-01"
    )]
    NoHttp01 { name: String, offered: String },
    #[error(
        "the authorization for {name} is {status}: the CA will not issue for it (order again later)"
    )]
    Authorization { name: String, status: String },
    #[error("cannot publish the http-01 answer for {name}: {detail}")]
    Publish { name: String, detail: String },
    /// `hint` says what must be true for the challenge to pass (see [`Responder::hint`]).
    #[error("the CA could not validate {name} with {challenge}: {detail} ({hint})")]
    Challenge {
        name: String,
        challenge: &'static str,
        detail: String,
        hint: String,
    },
    #[error("the CA did not finish validating {names} within {} s: will retry later", timeout.as_secs())]
    ValidationTimeout { names: String, timeout: Duration },
    #[error("the ACME CA failed during {step}: {detail}")]
    Protocol { step: &'static str, detail: String },
    #[error("the certificate the CA issued cannot be used: {0}")]
    Issued(PairProblem),
    #[error("cannot serve http-01 on the given socket: {0}")]
    Listener(io::Error),
    /// Why http-01 cannot be answered at all (the configuration says how to fix it).
    #[error("{0}")]
    NoResponder(String),
}

fn protocol(step: &'static str) -> impl FnOnce(instant_acme::Error) -> AcmeError {
    move |e| AcmeError::Protocol {
        step,
        detail: e.to_string(),
    }
}

// ---------------------------------------------------------------------------------
// Account

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
pub async fn stored_account(
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
    match &settings.trust_root {
        Some(root) => Account::builder_with_root(root).map_err(|e| AcmeError::TrustRoot {
            path: root.clone(),
            detail: e.to_string(),
        }),
        None => Account::builder().map_err(protocol("setting up the HTTPS client")),
    }
}

/// Registers a new account with the CA in `settings` and stores its credentials
/// under `state_dir` (mode 0600), replacing any stored before.
pub async fn register(settings: &config::Acme, state_dir: &Path) -> Result<Account, AcmeError> {
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

fn store(path: &Path, content: &[u8], mode: u32, what: &'static str) -> Result<(), AcmeError> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| AcmeError::Store {
                what,
                source: apply::ApplyError::Io {
                    action: "creating",
                    path: dir.to_path_buf(),
                    source,
                },
            })?;
    }
    apply::write_atomic(path, content, mode, None)
        .map(|_| ())
        .map_err(|source| AcmeError::Store { what, source })
}

/// Decodes base64url (RFC 4648 §5), with or without padding; also accepts the
/// standard alphabet's `+` and `/`, which people paste by mistake.
fn base64url_decode(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for (i, c) in text.trim_end_matches('=').chars().enumerate() {
        let v = match c {
            'A'..='Z' => c as u32 - 'A' as u32,
            'a'..='z' => c as u32 - 'a' as u32 + 26,
            '0'..='9' => c as u32 - '0' as u32 + 52,
            '-' | '+' => 62,
            '_' | '/' => 63,
            _ => return Err(format!("character {} ({c:?}) is not base64url", i + 1)),
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
        return Err("the text is cut short (its length is not possible for base64url)".into());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// Issuance

/// Orders a certificate for `names`, answers http-01 through `responder`, and returns
/// (chain PEM, PKCS#8 key PEM) once [`tls::validate_pair`] accepted them for `names`.
///
/// Waits at most [`VALIDATION_TIMEOUT`] for validation and [`ISSUANCE_TIMEOUT`] for the
/// certificate. Published answers are withdrawn whatever happens, even when the
/// future is dropped halfway.
///
/// `replaces` names the certificate this one renews (RFC 9773 §5): CAs may exempt
/// such orders from rate limits. A CA that refuses it (no ARI, a certificate it did
/// not issue, an earlier replacement order still pending) gets the plain order.
pub async fn obtain(
    account: &Account,
    names: &[String],
    responder: &Responder,
    replaces: Option<&CertificateIdentifier<'_>>,
) -> Result<(String, String), AcmeError> {
    let joined = names.join(", ");
    let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let plain = NewOrder::new(&identifiers);
    let first = match replaces {
        Some(id) => {
            account
                .new_order(&NewOrder::new(&identifiers).replaces(id.clone()))
                .await
        }
        None => account.new_order(&plain).await,
    };
    let first = match first {
        Err(e) if replaces.is_some() && replacement_refused(&e) => {
            tracing::info!(error = %e, "the ACME CA refused the order as a replacement: ordering without `replaces`");
            account.new_order(&plain).await
        }
        other => other,
    };
    let mut order = first.map_err(|e| order_error(e, &joined))?;

    let mut published = Published {
        responder,
        tokens: Vec::new(),
    };
    let mut pending = 0usize;
    {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(protocol("fetching an authorization"))?;
            let name = authz.identifier().to_string();
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(AcmeError::Authorization {
                        name,
                        status: status_text(other),
                    });
                }
            }
            let offered: Vec<String> = authz
                .challenges
                .iter()
                .map(|c| challenge_name(&c.r#type).to_string())
                .collect();
            let Some(mut challenge) = authz.challenge(ChallengeType::Http01) else {
                return Err(AcmeError::NoHttp01 {
                    name,
                    offered: offered.join(", "),
                });
            };
            let key_authorization = challenge.key_authorization();
            published.tokens.push(challenge.token.clone());
            responder
                .publish(&challenge.token, key_authorization.as_str())
                .map_err(|detail| AcmeError::Publish {
                    name: name.clone(),
                    detail,
                })?;
            challenge
                .set_ready()
                .await
                .map_err(protocol("telling the CA the http-01 answer is ready"))?;
            pending += 1;
        }
    }

    if pending > 0 {
        let policy = RetryPolicy::new()
            .initial_delay(Duration::from_millis(200))
            .backoff(1.5)
            .timeout(VALIDATION_TIMEOUT);
        match order.poll_ready(&policy).await {
            Ok(OrderStatus::Ready) => {}
            Ok(_) | Err(instant_acme::Error::Api(_)) => {
                return Err(explain_invalid(&mut order, &joined, responder).await);
            }
            Err(instant_acme::Error::Timeout(_)) => {
                return Err(AcmeError::ValidationTimeout {
                    names: joined,
                    timeout: VALIDATION_TIMEOUT,
                });
            }
            Err(e) => return Err(protocol("waiting for validation")(e)),
        }
    }
    drop(published);

    let key = order
        .finalize()
        .await
        .map_err(protocol("finalizing the order"))?;
    let policy = RetryPolicy::new()
        .initial_delay(Duration::from_millis(200))
        .backoff(1.5)
        .timeout(ISSUANCE_TIMEOUT);
    let chain = order
        .poll_certificate(&policy)
        .await
        .map_err(protocol("downloading the certificate"))?;
    tls::validate_pair(chain.as_bytes(), key.as_bytes(), names, SystemTime::now())
        .map_err(AcmeError::Issued)?;
    Ok((chain, key))
}

const ACCOUNT_DOES_NOT_EXIST: &str = "urn:ietf:params:acme:error:accountDoesNotExist";
const RATE_LIMITED: &str = "urn:ietf:params:acme:error:rateLimited";

fn problem_type(e: &instant_acme::Error) -> Option<&str> {
    match e {
        instant_acme::Error::Api(problem) => problem.r#type.as_deref(),
        _ => None,
    }
}

/// Whether a refused order may go through without `replaces`: the CA answered, and
/// not about the account or its rate limits.
fn replacement_refused(e: &instant_acme::Error) -> bool {
    match e {
        instant_acme::Error::Unsupported(_) => true,
        instant_acme::Error::Api(_) => {
            !matches!(problem_type(e), Some(ACCOUNT_DOES_NOT_EXIST | RATE_LIMITED))
        }
        _ => false,
    }
}

fn order_error(e: instant_acme::Error, names: &str) -> AcmeError {
    let detail = match &e {
        instant_acme::Error::Api(problem) => problem_text(problem),
        other => other.to_string(),
    };
    match problem_type(&e) {
        Some(ACCOUNT_DOES_NOT_EXIST) => AcmeError::AccountUnknown { detail },
        Some(RATE_LIMITED) => AcmeError::RateLimited {
            names: names.to_string(),
            detail,
        },
        _ => AcmeError::Order {
            names: names.to_string(),
            detail: e.to_string(),
        },
    }
}

/// The order did not become ready: find the authorization that failed and say why.
async fn explain_invalid(order: &mut Order, names: &str, responder: &Responder) -> AcmeError {
    let order_problem = order.state().error.as_ref().map(problem_text);
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let Ok(authz) = authz else { continue };
        if authz.status == AuthorizationStatus::Valid {
            continue;
        }
        let name = authz.identifier().to_string();
        for challenge in &authz.challenges {
            if let Some(problem) = &challenge.error {
                return AcmeError::Challenge {
                    hint: responder.hint(&name),
                    challenge: challenge_name(&challenge.r#type),
                    detail: problem_text(problem),
                    name,
                };
            }
        }
        if authz.status != AuthorizationStatus::Pending {
            return AcmeError::Authorization {
                name,
                status: status_text(authz.status),
            };
        }
    }
    AcmeError::Order {
        names: names.to_string(),
        detail: order_problem
            .unwrap_or_else(|| "the order became invalid without saying why".into()),
    }
}

fn problem_text(problem: &instant_acme::Problem) -> String {
    match (&problem.detail, &problem.r#type) {
        (Some(detail), _) => detail.clone(),
        (None, Some(kind)) => kind.clone(),
        (None, None) => "no detail given".into(),
    }
}

fn challenge_name(kind: &ChallengeType) -> &'static str {
    match kind {
        ChallengeType::Http01 => "http-01",
        ChallengeType::Dns01 => "dns-01",
        ChallengeType::TlsAlpn01 => "tls-alpn-01",
        _ => "another challenge type",
    }
}

fn status_text(status: AuthorizationStatus) -> String {
    format!("{status:?}").to_lowercase()
}

/// Withdraws what was published when dropped: on success, on error, on cancellation.
struct Published<'r> {
    responder: &'r Responder,
    tokens: Vec<String>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for token in self.tokens.drain(..) {
            self.responder.withdraw(&token);
        }
    }
}

// ---------------------------------------------------------------------------------
// Responders

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

// ---------------------------------------------------------------------------------
// Renewal planning

/// When to renew a certificate valid from `not_before` to `not_after`.
///
/// - With an ARI window from the CA (RFC 9773): at `start + jitter × (end − start)`,
///   a uniformly random point inside it, as the RFC asks, so hosts spread over it.
/// - Without: at two thirds of the lifetime (30 days before the end of a 90-day
///   certificate, as certbot and Let's Encrypt recommend; 2 days before the end of a
///   6-day one), moved EARLIER by `jitter` × 1 % of the lifetime (up to ~22 h for 90
///   days). Earlier, never later: the remaining third is the time left to fix a
///   failing renewal, and it must not shrink.
///
/// `jitter` comes from the caller's RNG, in 0..=1 (clamped; NaN counts as 0). A
/// certificate whose dates are reversed gets `not_before`: renew at once.
pub fn renewal_time(
    cert_not_before: SystemTime,
    cert_not_after: SystemTime,
    ari_window: Option<(SystemTime, SystemTime)>,
    jitter: f64,
) -> SystemTime {
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    if let Some((start, end)) = ari_window {
        let width = end.duration_since(start).unwrap_or(Duration::ZERO);
        return start + width.mul_f64(jitter);
    }
    let Ok(lifetime) = cert_not_after.duration_since(cert_not_before) else {
        return cert_not_before;
    };
    let planned = cert_not_before + lifetime * 2 / 3;
    planned - (lifetime / 100).mul_f64(jitter)
}

/// The longest wait between two attempts after failures.
pub const MAX_RETRY: Duration = Duration::from_secs(6 * 3600);

/// How long to wait after `failures` consecutive failed attempts: 1 min, 2, 4, 8, …
/// capped at 6 h (reached at the 10th failure; 0 failures counts as 1).
///
/// Why: a first failure is often passing (a CA hiccup, port 80 not yet forwarded), so
/// retry soon, when the admin is still watching; doubling then keeps a lasting
/// problem from hammering the CA (Let's Encrypt allows 5 failed validations per
/// name per hour: the first 5 attempts span 15 minutes, the next ones fall under the
/// limit). The 6-hour cap still tries 4 times a day, so a fix is picked up within
/// hours, and with a 30-day margin there are over 100 tries before expiry.
pub fn retry_after(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    Duration::from_secs(60u64 << exponent).min(MAX_RETRY)
}

/// What the daemon remembers between runs about renewal: `STATE_DIR/acme/schedule.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Unix seconds: when to try next (0: at once).
    pub next_attempt: u64,
    /// Consecutive failed attempts, reset by a success.
    pub failures: u32,
    /// Unix seconds of the last attempt.
    pub last_attempt: Option<u64>,
    /// `"ok"` or the last error's text.
    pub last_result: Option<String>,
    /// Unix seconds: the renewal window the CA last suggested (ARI), start and end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ari_window: Option<(u64, u64)>,
    /// Unix seconds: when to ask the CA for renewal information again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ari_next_check: Option<u64>,
}

/// How soon the CA's renewal information is asked again at the earliest, whatever
/// its Retry-After says: a CA's mistake must not make every host hammer it.
pub const ARI_ASK_AGAIN_MIN: Duration = Duration::from_secs(3600);
/// How long at most until it is asked again: RFC 9773 wants clients to keep asking,
/// so that a CA can call renewals early (after a mass revocation, say); and a CA
/// that starts offering ARI is noticed within a day.
pub const ARI_ASK_AGAIN_MAX: Duration = Duration::from_secs(24 * 3600);

/// Unix seconds of `t` (0 before 1970).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn from_unix_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

impl Schedule {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(SCHEDULE_FILE)
    }

    /// The stored schedule; `None` when there is none yet.
    pub fn load(state_dir: &Path) -> Result<Option<Schedule>, AcmeError> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| AcmeError::ScheduleFile {
                        path,
                        detail: format!("not valid JSON: {e}"),
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AcmeError::ScheduleFile {
                path,
                detail: e.to_string(),
            }),
        }
    }

    /// Stores the schedule atomically (mode 0644: it holds nothing secret).
    pub fn store(&self, state_dir: &Path) -> Result<(), AcmeError> {
        let json = serde_json::to_vec_pretty(self).expect("the schedule serializes to JSON");
        store(&Self::path(state_dir), &json, 0o644, "the renewal schedule")
    }

    pub fn next_attempt_time(&self) -> SystemTime {
        from_unix_secs(self.next_attempt)
    }

    /// True when an attempt is due at `now`.
    pub fn due(&self, now: SystemTime) -> bool {
        unix_secs(now) >= self.next_attempt
    }

    /// An attempt at `now` succeeded; the next one is at `next` (see [`renewal_time`]),
    /// planned with `ari`, the CA's window for the new certificate if it gave one.
    pub fn record_success(
        &mut self,
        now: SystemTime,
        next: SystemTime,
        ari: Option<RenewalWindow>,
    ) {
        self.failures = 0;
        self.last_attempt = Some(unix_secs(now));
        self.last_result = Some("ok".into());
        self.next_attempt = unix_secs(next);
        self.ari_window = ari.map(|w| (unix_secs(w.start), unix_secs(w.end)));
        let ask_again = ari.map_or(ARI_ASK_AGAIN_MAX, |w| w.ask_again);
        self.ari_next_check = Some(unix_secs(
            now + ask_again.clamp(ARI_ASK_AGAIN_MIN, ARI_ASK_AGAIN_MAX),
        ));
    }

    /// An attempt at `now` failed with `error`; the next one follows [`retry_after`],
    /// but not before `at_least` (a CA's rate limit).
    pub fn record_failure(&mut self, now: SystemTime, error: &str, at_least: Duration) {
        self.failures = self.failures.saturating_add(1);
        self.last_attempt = Some(unix_secs(now));
        self.last_result = Some(error.to_string());
        self.next_attempt = unix_secs(now + retry_after(self.failures).max(at_least));
    }

    /// True when the CA's renewal information is to be asked again at `now`: only
    /// while renewals succeed, since after a failure the retries come anyway.
    pub fn ari_due(&self, now: SystemTime) -> bool {
        self.failures == 0 && self.ari_next_check.is_some_and(|at| unix_secs(now) >= at)
    }

    /// The CA's renewal information, asked at `now`: `Ok(Some)` a window, `Ok(None)`
    /// none offered, `Err` asking failed. A window other than the one the plan came
    /// from moves the next attempt to the point `jitter` inside it (see
    /// [`renewal_time`]; a window in the past means at once); the same window again
    /// keeps the plan, so that asking often does not re-draw it; while attempts
    /// fail, the back-off keeps the plan. Returns whether the plan moved.
    pub fn record_renewal_info(
        &mut self,
        now: SystemTime,
        answer: Result<Option<RenewalWindow>, ()>,
        jitter: f64,
    ) -> bool {
        let ask_again = match answer {
            Ok(Some(w)) => w.ask_again,
            Ok(None) => ARI_ASK_AGAIN_MAX,
            Err(()) => ARI_ASK_AGAIN_MIN,
        };
        self.ari_next_check = Some(unix_secs(
            now + ask_again.clamp(ARI_ASK_AGAIN_MIN, ARI_ASK_AGAIN_MAX),
        ));
        let Ok(Some(w)) = answer else { return false };
        let window = (unix_secs(w.start), unix_secs(w.end));
        if self.ari_window == Some(window) {
            return false;
        }
        self.ari_window = Some(window);
        if self.failures > 0 {
            // Failing: the back-off's retries rule until one succeeds.
            return false;
        }
        let next = unix_secs(renewal_time(w.start, w.end, Some((w.start, w.end)), jitter));
        let moved = next != self.next_attempt;
        self.next_attempt = next;
        moved
    }
}

/// The leaf of `cert_chain_pem` as ACME renewal information names it (RFC 9773
/// §4.1: authority key identifier and serial); `None` when it cannot be parsed or
/// has no authority key identifier.
pub fn certificate_id(cert_chain_pem: &str) -> Option<CertificateIdentifier<'static>> {
    use rustls_pki_types::pem::PemObject;
    let leaf = rustls_pki_types::CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
        .next()?
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let aki = cert
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0)
            }
            _ => None,
        })?;
    let id = CertificateIdentifier::new(
        rustls_pki_types::Der::from_slice(aki),
        rustls_pki_types::Der::from_slice(cert.tbs_certificate.raw_serial()),
    );
    Some(id.into_owned())
}

/// What the CA says about renewing one certificate (ARI, RFC 9773).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalWindow {
    pub start: SystemTime,
    pub end: SystemTime,
    /// The CA's Retry-After: when to ask again.
    pub ask_again: Duration,
}

/// The CA's suggested renewal window for certificate `id`: `Ok(None)` when the CA
/// does not offer ARI; `Err` says why asking failed.
pub async fn renewal_window(
    account: &Account,
    id: &CertificateIdentifier<'_>,
) -> Result<Option<RenewalWindow>, String> {
    match account.renewal_info(id).await {
        Ok((info, ask_again)) => {
            let window = info.suggested_window;
            let start = window.start.unix_timestamp();
            let end = window.end.unix_timestamp();
            let at = |secs: i64| from_unix_secs(u64::try_from(secs).unwrap_or(0));
            Ok(Some(RenewalWindow {
                start: at(start),
                end: at(end.max(start)),
                ask_again,
            }))
        }
        Err(instant_acme::Error::Unsupported(_)) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    const DAY: u64 = 86_400;

    #[test]
    fn renewal_at_two_thirds_without_ari() {
        // 90 days: day 60, 30 days before the end.
        assert_eq!(renewal_time(t(0), t(90 * DAY), None, 0.0), t(60 * DAY));
        // 6-day certificate: day 4.
        assert_eq!(
            renewal_time(t(1000), t(1000 + 6 * DAY), None, 0.0),
            t(1000 + 4 * DAY)
        );
    }

    #[test]
    fn jitter_moves_renewal_earlier_by_at_most_one_percent() {
        let lifetime = 90 * DAY;
        let full = renewal_time(t(0), t(lifetime), None, 1.0);
        assert_eq!(full, t(60 * DAY - lifetime / 100));
        let half = renewal_time(t(0), t(lifetime), None, 0.5);
        assert_eq!(half, t(60 * DAY - lifetime / 200));
        for j in [0.0, 0.1, 0.33, 0.9, 1.0] {
            let r = renewal_time(t(0), t(lifetime), None, j);
            assert!(
                r <= t(60 * DAY) && r >= t(60 * DAY - lifetime / 100),
                "jitter {j}"
            );
        }
    }

    #[test]
    fn jitter_out_of_range_is_clamped() {
        assert_eq!(renewal_time(t(0), t(90 * DAY), None, -3.0), t(60 * DAY));
        assert_eq!(renewal_time(t(0), t(90 * DAY), None, f64::NAN), t(60 * DAY));
        assert_eq!(
            renewal_time(t(0), t(90 * DAY), None, 7.0),
            renewal_time(t(0), t(90 * DAY), None, 1.0)
        );
    }

    #[test]
    fn reversed_dates_renew_at_once() {
        assert_eq!(
            renewal_time(t(100 * DAY), t(10 * DAY), None, 0.5),
            t(100 * DAY)
        );
    }

    #[test]
    fn ari_window_is_used_when_given() {
        let window = Some((t(50 * DAY), t(52 * DAY)));
        assert_eq!(renewal_time(t(0), t(90 * DAY), window, 0.0), t(50 * DAY));
        assert_eq!(renewal_time(t(0), t(90 * DAY), window, 0.5), t(51 * DAY));
        assert_eq!(renewal_time(t(0), t(90 * DAY), window, 1.0), t(52 * DAY));
        // A window in the past (revocation) means renew now: its start is returned.
        let past = Some((t(5), t(5)));
        assert_eq!(renewal_time(t(0), t(90 * DAY), past, 0.7), t(5));
        // A reversed window collapses to its start.
        let reversed = Some((t(52 * DAY), t(50 * DAY)));
        assert_eq!(renewal_time(t(0), t(90 * DAY), reversed, 0.7), t(52 * DAY));
    }

    #[test]
    fn retry_backoff_doubles_from_a_minute_to_six_hours() {
        let minutes: Vec<u64> = (0..=12).map(|f| retry_after(f).as_secs() / 60).collect();
        assert_eq!(
            minutes,
            [1, 1, 2, 4, 8, 16, 32, 64, 128, 256, 360, 360, 360]
        );
        assert_eq!(retry_after(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn schedule_records_failures_and_success() {
        let mut s = Schedule::default();
        assert!(s.due(t(0)));
        s.record_failure(
            t(1000),
            "the CA could not validate x with http-01: refused",
            Duration::ZERO,
        );
        assert_eq!(s.failures, 1);
        assert_eq!(s.next_attempt, 1060);
        assert!(!s.due(t(1059)) && s.due(t(1060)));
        s.record_failure(t(1060), "again", Duration::ZERO);
        assert_eq!(
            (s.failures, s.next_attempt, s.last_attempt),
            (2, 1180, Some(1060))
        );
        assert_eq!(s.last_result.as_deref(), Some("again"));
        s.record_success(t(1200), t(60 * DAY), None);
        assert_eq!(
            s,
            Schedule {
                next_attempt: 60 * DAY,
                failures: 0,
                last_attempt: Some(1200),
                last_result: Some("ok".into()),
                ari_window: None,
                // No window from the CA: asked again in a day, in case it starts offering one.
                ari_next_check: Some(1200 + DAY),
            }
        );
        assert_eq!(s.next_attempt_time(), t(60 * DAY));
        // A rate limit holds the next attempt back at least as long as it says.
        s.record_failure(t(2000), "rate limited", Duration::from_secs(3600));
        assert_eq!((s.failures, s.next_attempt), (1, 2000 + 3600));
    }

    fn window(start: u64, end: u64, ask_again: u64) -> RenewalWindow {
        RenewalWindow {
            start: t(start),
            end: t(end),
            ask_again: Duration::from_secs(ask_again),
        }
    }

    #[test]
    fn renewal_information_is_asked_again_as_the_ca_says_within_bounds() {
        let mut s = Schedule::default();
        s.record_success(
            t(0),
            t(60 * DAY),
            Some(window(59 * DAY, 61 * DAY, 6 * 3600)),
        );
        assert_eq!(
            (s.ari_window, s.ari_next_check),
            (Some((59 * DAY, 61 * DAY)), Some(6 * 3600))
        );
        assert!(!s.ari_due(t(6 * 3600 - 1)) && s.ari_due(t(6 * 3600)));
        // Retry-After outside the bounds is clamped: not hourly more often, not rarer than daily.
        s.record_renewal_info(t(100), Ok(Some(window(59 * DAY, 61 * DAY, 5))), 0.5);
        assert_eq!(s.ari_next_check, Some(100 + 3600));
        s.record_renewal_info(t(100), Ok(Some(window(59 * DAY, 61 * DAY, 90 * DAY))), 0.5);
        assert_eq!(s.ari_next_check, Some(100 + DAY));
        // Asking failed: again in an hour; the plan stays.
        assert!(!s.record_renewal_info(t(200), Err(()), 0.5));
        assert_eq!(
            (s.next_attempt, s.ari_next_check),
            (60 * DAY, Some(200 + 3600))
        );
        // After a failed renewal the retries come anyway: no asking meanwhile.
        s.record_failure(t(300), "x", Duration::ZERO);
        assert!(!s.ari_due(t(100 * DAY)));
    }

    #[test]
    fn the_same_window_keeps_the_plan_and_a_new_one_moves_it() {
        let mut s = Schedule::default();
        s.record_success(t(0), t(60 * DAY), Some(window(59 * DAY, 61 * DAY, 3600)));
        assert!(!s.record_renewal_info(t(10), Ok(Some(window(59 * DAY, 61 * DAY, 3600))), 0.9));
        assert_eq!(
            s.next_attempt,
            60 * DAY,
            "the same window must not re-draw the plan"
        );
        // The CA moves the window (a mass revocation): the plan follows, into the past = now.
        assert!(s.record_renewal_info(t(20), Ok(Some(window(10, 11, 3600))), 0.0));
        assert_eq!(s.next_attempt, 10);
        assert!(s.due(t(20)));
        // A later window moves it later too: the CA knows best.
        assert!(s.record_renewal_info(t(30), Ok(Some(window(70 * DAY, 72 * DAY, 3600))), 0.5));
        assert_eq!(s.next_attempt, 71 * DAY);
        // No ARI (any more): the plan stays.
        assert!(!s.record_renewal_info(t(40), Ok(None), 0.5));
        assert_eq!(
            (s.next_attempt, s.ari_next_check),
            (71 * DAY, Some(40 + DAY))
        );
        // While renewals fail, the back-off's retries rule, whatever the window.
        s.record_failure(t(50), "refused", Duration::ZERO);
        assert!(!s.record_renewal_info(t(60), Ok(Some(window(80 * DAY, 82 * DAY, 3600))), 0.5));
        assert_eq!(
            (s.next_attempt, s.ari_window),
            (50 + 60, Some((80 * DAY, 82 * DAY)))
        );
    }

    #[test]
    fn schedule_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Schedule::load(dir.path()).unwrap(), None);
        let s = Schedule {
            next_attempt: 42,
            failures: 3,
            last_attempt: Some(7),
            last_result: Some("boom".into()),
            ari_window: Some((40, 50)),
            ari_next_check: Some(45),
        };
        s.store(dir.path()).unwrap();
        assert_eq!(Schedule::load(dir.path()).unwrap(), Some(s));
        let text = std::fs::read_to_string(dir.path().join(SCHEDULE_FILE)).unwrap();
        assert!(text.contains("\"next_attempt\": 42"), "{text}");
        // A schedule written before ARI was remembered still loads.
        std::fs::write(
            dir.path().join(SCHEDULE_FILE),
            r#"{"next_attempt": 9, "failures": 0, "last_attempt": null, "last_result": null}"#,
        )
        .unwrap();
        let old = Schedule::load(dir.path()).unwrap().unwrap();
        assert_eq!(
            (old.next_attempt, old.ari_window, old.ari_next_check),
            (9, None, None)
        );
        std::fs::write(dir.path().join(SCHEDULE_FILE), "{").unwrap();
        let e = Schedule::load(dir.path()).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "the renewal schedule {}/acme/schedule.json cannot be read: not valid JSON: EOF while parsing an object at line 1 column 1 (remove it: postmaster then plans afresh from the installed certificate)",
                dir.path().display()
            )
        );
    }

    #[test]
    fn base64url_decodes_with_and_without_padding() {
        assert_eq!(base64url_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64url_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64url_decode("_-8").unwrap(), [0xff, 0xef]);
        assert_eq!(base64url_decode("/+8").unwrap(), [0xff, 0xef]);
        assert_eq!(base64url_decode("").unwrap(), b"");
        assert!(base64url_decode("a").is_err());
        assert_eq!(
            base64url_decode("ab c").unwrap_err(),
            "character 3 (' ') is not base64url"
        );
    }

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

    #[test]
    fn error_texts() {
        let e = AcmeError::Challenge {
            name: "mail.example.org".into(),
            challenge: "http-01",
            detail: "127.0.0.1: Connection refused".into(),
            hint: "a hint".into(),
        };
        assert_eq!(
            e.to_string(),
            "the CA could not validate mail.example.org with http-01: 127.0.0.1: Connection refused (a hint)"
        );
        assert_eq!(
            Responder::Webroot("/srv/www".into()).hint("mail.example.org"),
            "the web server on port 80 of mail.example.org must serve /srv/www/.well-known/acme-challenge/ as /.well-known/acme-challenge/"
        );
        let e = AcmeError::NoHttp01 {
            name: "a.example".into(),
            offered: "dns-01".into(),
        };
        assert_eq!(
            e.to_string(),
            "the ACME CA offers no http-01 challenge for a.example (it offers: dns-01): postmaster can only answer http-01"
        );
        let e = AcmeError::AccountFile {
            path: "/s/acme/account.json".into(),
            detail: "EOF".into(),
        };
        assert_eq!(
            e.to_string(),
            "the ACME account file /s/acme/account.json cannot be used: EOF (remove it to register a new account)"
        );
        let e = AcmeError::EabKey {
            path: "/k".into(),
            detail: "the file is empty".into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot read the external account binding key /k: the file is empty (it must hold the CA's HMAC key, base64url-encoded)"
        );
        let e = AcmeError::ValidationTimeout {
            names: "a, b".into(),
            timeout: Duration::from_secs(120),
        };
        assert_eq!(
            e.to_string(),
            "the CA did not finish validating a, b within 120 s: will retry later"
        );
        let e = AcmeError::Register {
            directory: "https://ca/dir".into(),
            detail: "nope".into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot register an ACME account at https://ca/dir: nope (check acme.directory, acme.contact and the CA's terms)"
        );
        let e = AcmeError::Issued(PairProblem::KeyMismatch);
        assert!(e.to_string().starts_with(
            "the certificate the CA issued cannot be used: the private key does not match"
        ));
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
