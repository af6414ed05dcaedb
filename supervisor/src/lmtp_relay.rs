//! `postmaster lmtp-relay`: postfix's LMTP deliveries reach dovecot through a
//! socket systemd holds (postmaster-lmtp.socket), so a dovecot reload costs none.
//!
//! Why it exists: a dovecot reload unlinks and recreates every unix listener, its
//! LMTP socket included (src/master/service-listen.c, listener_equals(): "always
//! unlink and recreate unix/fifo listeners"). A connection postfix made to the old
//! socket that no lmtp process accepted yet dies with it, and a connect between the
//! unlink and the new bind fails: postfix defers the mail to its next queue run,
//! minutes later. systemd's socket never goes away. Behind it this relay connects to
//! dovecot and waits for dovecot's greeting, trying again while the socket is being
//! replaced; only then does it greet postfix with it.
//!
//! Then it follows the LMTP dialogue ([`dialogue`]) for one more thing a reload
//! does: it replaces dovecot's auth process, and a RCPT whose user lookup was cut
//! is answered `451 4.3.0`, which postfix would defer. The relay sends that RCPT
//! again, after a pause, at most 3 times within a second; postfix sees only the
//! last reply. A RCPT refused is nothing delivered, so this cannot deliver twice.
//! Everything else passes unchanged, and whatever the relay does not follow is
//! copied unchanged for the rest of the connection.
//!
//! It never sends anything of postfix's again but such a RCPT, and never opens a
//! second connection once a byte of postfix's went to dovecot: a lost connection is
//! postfix's to handle, exactly as without the relay, so the relay cannot cause a
//! duplicate. LMTP over loopback TCP would have avoided the unix socket's
//! replacement too, but lets any local user inject mail past rspamd; this keeps
//! both sockets postfix's own (0600).

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use dialogue::{Action, Dialogue, Reply, reply};

mod dialogue;

/// Where dovecot's LMTP listener is on Debian (dovecot.conf as rendered).
pub(crate) const DEFAULT_BACKEND: &str = "/var/spool/postfix/private/dovecot-lmtp";

/// The longest greeting taken: RFC 5321 allows 512 octets a reply line, and a
/// greeting may have several lines. Anything longer is not dovecot's.
const GREETING_LIMIT: usize = 4096;

/// The first pause between two tries, doubled each time up to [`LAST_PAUSE`]: a
/// reload replaces the socket within milliseconds (bench: the storm), so the first
/// tries come fast; a dovecot that is restarting takes seconds, and is not hammered.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LAST_PAUSE: Duration = Duration::from_millis(200);

/// What postfix is told when dovecot did not greet in time: a 4xx, so postfix
/// keeps the mail and tries again later (as it would have without the relay).
const GAVE_UP: &[u8] =
    b"421 4.3.0 Mailbox delivery (dovecot LMTP) not reachable, try again later\r\n";

/// The journal's lines for a RCPT sent again, and for one that was then accepted
/// (tests/lib/storm.py counts them).
const RCPT_RESENT: &str = "RCPT TO sent again after an internal error";
const RCPT_SAVED: &str = "RCPT TO accepted at try";

/// How the relay runs (the command line's options).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// dovecot's LMTP socket.
    pub(crate) backend: PathBuf,
    /// How long one delivery waits for dovecot to greet before postfix is told 421.
    /// Well below postfix's lmtp_helo_timeout (300 s), which would defer it anyway.
    pub(crate) give_up_after: Duration,
    /// Connections served at once; more wait in the socket's backlog, unrefused.
    pub(crate) max_connections: usize,
}

/// The pause before try `attempt + 1` (0 is the pause after the first try).
pub(crate) fn pause(attempt: u32) -> Duration {
    FIRST_PAUSE
        .saturating_mul(1u32 << attempt.min(16))
        .min(LAST_PAUSE)
}

/// Whether a failed connect to dovecot's socket can succeed later. During a
/// reload: NotFound (unlinked, not yet bound again), ConnectionRefused (bound, not
/// yet listening; or the old file, nobody behind it), PermissionDenied (bound by the
/// master as root, not yet chowned to postfix), WouldBlock (its backlog is full).
/// Anything else (a path that is not a socket, one too long) waiting will not mend.
pub(crate) fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::PermissionDenied
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Why one try to reach dovecot's greeting failed. Nothing of the delivery went to
/// dovecot in any of these.
#[derive(Debug, thiserror::Error)]
enum Missed {
    #[error("connecting to {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading dovecot's greeting: {0}")]
    Read(#[source] io::Error),
    #[error("dovecot closed the connection before its greeting")]
    ClosedEarly,
    /// A 4xx greeting ("421 ... shutting down"): not now.
    #[error("dovecot greeted {0}")]
    NotNow(String),
    #[error("not an LMTP greeting from {}: {seen:?}", path.display())]
    NotLmtp { path: PathBuf, seen: String },
    #[error("dovecot did not greet in time")]
    TimedOut,
}

impl Missed {
    /// Whether another try can succeed: what a reload does can, a path that is not a
    /// socket or a peer that is not dovecot cannot.
    fn worth_another(&self) -> bool {
        match self {
            Missed::Connect { source, .. } => retryable(source),
            Missed::NotLmtp { .. } => false,
            Missed::Read(_) | Missed::ClosedEarly | Missed::NotNow(_) | Missed::TimedOut => true,
        }
    }
}

/// Why a delivery got no greeting from dovecot: postfix is told 421 and keeps the
/// mail.
#[derive(Debug, thiserror::Error)]
enum NoGreeting {
    /// The first failure that no wait can mend.
    #[error(transparent)]
    Refused(Missed),
    #[error("no greeting after {tries} tries in {within:?}: {last}")]
    GaveUp {
        tries: u32,
        within: Duration,
        last: Missed,
    },
}

/// Why `postmaster lmtp-relay` could not start or serve.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    #[error("reading LISTEN_FDS: {0}")]
    ListenFds(#[source] io::Error),
    #[error(
        "lmtp-relay serves the one socket systemd passes it (postmaster-lmtp.socket); \
         start it with systemctl start postmaster-lmtp.socket"
    )]
    NotOneSocket,
    #[error("the socket systemd passed is not a unix socket: {0}")]
    NotUnix(#[source] io::Error),
    #[error("socket: {0}")]
    Socket(#[source] io::Error),
    #[error("starting the runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("{0}")]
    Serve(#[source] io::Error),
}

/// Connects to dovecot and reads its greeting. Nothing is written to dovecot here:
/// whatever goes wrong, nothing of the delivery has reached it.
async fn greeted_once(backend: &Path) -> Result<(UnixStream, Vec<u8>), Missed> {
    let mut stream = UnixStream::connect(backend)
        .await
        .map_err(|source| Missed::Connect {
            path: backend.to_path_buf(),
            source,
        })?;
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 512];
    loop {
        // Any read error before a byte was sent is a connection that can be made
        // again: typically the old socket's queue thrown away (ECONNRESET or EOF).
        let n = stream.read(&mut chunk).await.map_err(Missed::Read)?;
        if n == 0 {
            return Err(Missed::ClosedEarly);
        }
        buf.extend_from_slice(&chunk[..n]);
        match reply(&buf, GREETING_LIMIT) {
            Reply::Incomplete => {}
            // A 4xx greeting ("421 ... shutting down") says: not now. Nothing was
            // sent, so another connection is as safe as the first.
            Reply::Complete { code, len } if code / 100 == 4 => {
                return Err(Missed::NotNow(
                    String::from_utf8_lossy(&buf[..len]).trim_end().to_string(),
                ));
            }
            // 2xx, or a 5xx postfix must see as it is.
            Reply::Complete { .. } => return Ok((stream, buf)),
            Reply::Invalid => {
                return Err(Missed::NotLmtp {
                    path: backend.to_path_buf(),
                    seen: String::from_utf8_lossy(&buf[..buf.len().min(100)]).into_owned(),
                });
            }
        }
    }
}

/// Tries until dovecot greets or `settings.give_up_after` passes. Returns the
/// connection, its greeting's bytes, and how many tries it took.
async fn greeted(settings: &Settings) -> Result<(UnixStream, Vec<u8>, u32), NoGreeting> {
    let deadline = Instant::now() + settings.give_up_after;
    let mut attempt = 0u32;
    loop {
        let why = match tokio::time::timeout_at(deadline, greeted_once(&settings.backend)).await {
            Ok(Ok((stream, greeting))) => return Ok((stream, greeting, attempt + 1)),
            Ok(Err(why)) if !why.worth_another() => return Err(NoGreeting::Refused(why)),
            Ok(Err(why)) => why,
            Err(_) => Missed::TimedOut,
        };
        let wait = pause(attempt);
        attempt += 1;
        if Instant::now() + wait >= deadline {
            return Err(NoGreeting::GaveUp {
                tries: attempt,
                within: settings.give_up_after,
                last: why,
            });
        }
        tokio::time::sleep(wait).await;
    }
}

/// One delivery connection from postfix, to its end.
async fn relay(mut client: UnixStream, settings: &Settings) {
    match greeted(settings).await {
        Ok((mut backend, greeting, tries)) => {
            if tries > 1 {
                // What the relay is for: without it this delivery would have been
                // deferred. Counted by the storm bench.
                tracing::info!("dovecot's LMTP socket was being replaced: greeted at try {tries}");
            }
            if let Err(e) = client.write_all(&greeting).await {
                tracing::debug!("postfix left before dovecot's greeting reached it: {e}");
                return;
            }
            // From here on nothing of postfix's is sent again but a RCPT dovecot
            // answered with an internal error (see `dialogue`).
            if let Err(e) = follow(&mut client, &mut backend).await {
                tracing::debug!("LMTP connection ended: {e}");
            }
        }
        Err(why) => {
            tracing::warn!("{why}; answered postfix 421 (it keeps the mail and tries again)");
            let _ = client.write_all(GAVE_UP).await;
            let _ = client.shutdown().await;
        }
    }
}

/// How much is read from either side at once.
const READ_SIZE: usize = 16 * 1024;

/// The LMTP dialogue after dovecot's greeting: followed by a [`Dialogue`] for as
/// long as it can, then copied unchanged both ways to the end.
async fn follow(client: &mut UnixStream, backend: &mut UnixStream) -> io::Result<()> {
    let mut dialogue = Dialogue::new();
    let mut from_client = vec![0u8; READ_SIZE];
    let mut from_backend = vec![0u8; READ_SIZE];
    // When to send a RCPT again, while the dialogue pauses.
    let mut resume_at: Option<Instant> = None;
    let (mut client_done, mut backend_done) = (false, false);
    while !dialogue.is_raw() {
        let actions = tokio::select! {
            n = client.read(&mut from_client) => match n? {
                0 => {
                    client_done = true;
                    dialogue.stop()
                }
                n => dialogue.client_sent(&from_client[..n]),
            },
            n = backend.read(&mut from_backend) => match n? {
                0 => {
                    backend_done = true;
                    dialogue.stop()
                }
                n => dialogue.server_sent(&from_backend[..n]),
            },
            () = tokio::time::sleep_until(resume_at.unwrap_or_else(Instant::now)),
                if resume_at.is_some() =>
            {
                resume_at = None;
                dialogue.resume()
            }
        };
        for action in actions {
            match action {
                Action::ToServer(bytes) => backend.write_all(&bytes).await?,
                Action::ToClient(bytes) => client.write_all(&bytes).await?,
                Action::Pause(pause) => resume_at = Some(Instant::now() + pause),
                // Counted by the storm bench and test: each a deferral without the
                // relay.
                Action::Resent { try_no, reply } => {
                    tracing::info!("{RCPT_RESENT} (try {try_no}): dovecot answered {reply}");
                }
                Action::Saved { try_no } => {
                    tracing::info!("{RCPT_SAVED} {try_no}: postfix would have deferred it");
                }
                Action::GaveUp { tries, reply } => tracing::warn!(
                    "RCPT TO still answered {reply} after {tries} tries: postfix gets that \
                     and defers the recipient"
                ),
                Action::Unfollowed(why) => {
                    tracing::info!("LMTP dialogue no longer followed, copied unchanged: {why}");
                }
            }
        }
    }
    // A side that ended ends its direction: what copy_bidirectional would have done.
    if client_done {
        backend.shutdown().await?;
    }
    if backend_done {
        client.shutdown().await?;
    }
    tokio::io::copy_bidirectional(client, backend).await?;
    Ok(())
}

/// Serves `listener` until SIGTERM, then lets the deliveries in flight finish (at
/// most `settings.give_up_after` plus a little): the socket stays with systemd, and
/// postfix's next connections wait in it for the next relay.
pub(crate) async fn serve(listener: UnixListener, settings: Settings) -> io::Result<()> {
    let settings = Arc::new(settings);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let mut term = signal(SignalKind::terminate())?;
    loop {
        let slot = tokio::select! {
            _ = term.recv() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let client = tokio::select! {
            _ = term.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(e) => {
                    // EMFILE and the like: pass, the connection waits in the backlog.
                    tracing::warn!("accepting a connection from postfix: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let settings = settings.clone();
        tokio::spawn(async move {
            relay(client, &settings).await;
            drop(slot);
        });
    }
    drop(listener);
    let all = u32::try_from(settings.max_connections).unwrap_or(u32::MAX);
    let grace = settings.give_up_after + Duration::from_secs(5);
    if tokio::time::timeout(grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("stopping with LMTP connections still open after {grace:?}");
    }
    Ok(())
}

/// `postmaster lmtp-relay`: the socket systemd passes (exactly one, LISTEN_FDS),
/// served until SIGTERM.
pub(crate) fn run(settings: Settings) -> Result<(), RelayError> {
    // SAFETY: called before the runtime starts any thread.
    let mut fds: Vec<RawFd> = unsafe { sd_notify::listen_fds_and_unset_env() }
        .map_err(RelayError::ListenFds)?
        .collect();
    let fd = match (fds.pop(), fds.is_empty()) {
        (Some(fd), true) => fd,
        _ => return Err(RelayError::NotOneSocket),
    };
    // SAFETY: systemd passed this descriptor to this process, which owns it from now.
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    // Fails unless it is a unix socket.
    let local = listener.local_addr().map_err(RelayError::NotUnix)?;
    listener.set_nonblocking(true).map_err(RelayError::Socket)?;
    tracing::info!(
        "relaying LMTP from {:?} to {}",
        local.as_pathname().unwrap_or(Path::new("?")),
        settings.backend.display()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RelayError::Runtime)?;
    runtime.block_on(async {
        let listener = UnixListener::from_std(listener).map_err(RelayError::Socket)?;
        serve(listener, settings).await.map_err(RelayError::Serve)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts the journal shows (and an admin searches for), pinned.
    #[test]
    fn why_a_delivery_got_no_greeting_reads_as_before() {
        let path = PathBuf::from("/var/spool/postfix/private/dovecot-lmtp");
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        let connect = Missed::Connect {
            path: path.clone(),
            source: refused,
        };
        assert!(connect.worth_another());
        assert_eq!(
            NoGreeting::GaveUp {
                tries: 3,
                within: Duration::from_secs(30),
                last: connect,
            }
            .to_string(),
            format!(
                "no greeting after 3 tries in 30s: connecting to {}: {}",
                path.display(),
                io::Error::from(io::ErrorKind::ConnectionRefused)
            )
        );
        let not_lmtp = Missed::NotLmtp {
            path: path.clone(),
            seen: "HTTP/1.1".into(),
        };
        assert!(!not_lmtp.worth_another());
        assert_eq!(
            NoGreeting::Refused(not_lmtp).to_string(),
            "not an LMTP greeting from /var/spool/postfix/private/dovecot-lmtp: \"HTTP/1.1\""
        );
        assert_eq!(
            Missed::NotNow("421 4.3.2 Server shutting down".into()).to_string(),
            "dovecot greeted 421 4.3.2 Server shutting down"
        );
        assert_eq!(
            Missed::ClosedEarly.to_string(),
            "dovecot closed the connection before its greeting"
        );
        assert_eq!(
            Missed::TimedOut.to_string(),
            "dovecot did not greet in time"
        );
        assert_eq!(
            RelayError::NotOneSocket.to_string(),
            "lmtp-relay serves the one socket systemd passes it (postmaster-lmtp.socket); \
             start it with systemctl start postmaster-lmtp.socket"
        );
    }

    #[test]
    fn pauses_double_from_10_ms_to_200_ms() {
        let ms: Vec<u128> = (0..8).map(|a| pause(a).as_millis()).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 200, 200, 200]);
        assert_eq!(pause(u32::MAX), LAST_PAUSE);
    }

    #[test]
    fn what_a_reload_does_to_a_connect_is_retried_the_rest_is_not() {
        use io::ErrorKind::*;
        for kind in [
            NotFound,
            ConnectionRefused,
            PermissionDenied,
            WouldBlock,
            ConnectionReset,
        ] {
            assert!(retryable(&io::Error::from(kind)), "{kind:?}");
        }
        for kind in [InvalidInput, NotADirectory, Unsupported, OutOfMemory] {
            assert!(!retryable(&io::Error::from(kind)), "{kind:?}");
        }
    }
}
