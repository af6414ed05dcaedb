//! postmaster's own D-Bus interface on the system bus: the daemon serves it, the
//! CLI calls it. Its names are defined here and nowhere else.
//!
//! Methods (all return JSON text, so the CLI and scripts read one format):
//! - `Status() -> s`: a [`crate::status::Status`].
//! - `Reload() -> s`: re-read and re-apply everything now; an [`Outcome`].
//! - `Renew(force: b) -> s`: renew the certificate (ACME); an [`Outcome`].
//! - `RotateDkim(domain: s) -> s`: make a new DKIM key for the domain (every
//!   hosted domain when empty), used once DNS shows it; an [`Outcome`].
//! - `Unblock(address: s) -> s`: lift the block of an address that failed to log
//!   in too often ([`crate::logins`]); an [`Outcome`].
//!
//! Who may call is the D-Bus policy's business (units/): root and the admin group.

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::status::Status;

pub(crate) const BUS_NAME: &str = "io.postmaster.Supervisor1";
pub(crate) const OBJECT_PATH: &str = "/io/postmaster/Supervisor1";

/// The result of a Reload or Renew request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Outcome {
    pub(crate) ok: bool,
    /// One line: what happened.
    pub(crate) summary: String,
    /// Every problem, one per entry (`file:line:column: …` where it applies).
    pub(crate) errors: Vec<String>,
}

/// What the interface asks the daemon's event loop to do. The loop does all work
/// itself, one thing at a time, so a D-Bus call can never run beside an apply.
#[derive(Debug)]
pub(crate) enum Request {
    Reload(oneshot::Sender<Outcome>),
    Renew {
        force: bool,
        reply: oneshot::Sender<Outcome>,
    },
    RotateDkim {
        /// Empty: every hosted domain.
        domain: String,
        reply: oneshot::Sender<Outcome>,
    },
}

/// The object served at [`OBJECT_PATH`].
pub(crate) struct Supervisor {
    pub(crate) requests: mpsc::Sender<Request>,
    pub(crate) status: watch::Receiver<Status>,
    /// To report the units' live state with each Status call. Which units those are
    /// comes with the status: a reload may change them. A channel, not a value: after
    /// the bus restarts, systemd may answer on the new connection later than we do.
    pub(crate) systemd: watch::Receiver<Option<crate::systemd::Systemd>>,
    /// The failed-login counts and blocks, shared with the policy listener: blocks
    /// are read and lifted here directly, not through the event loop, so a long
    /// apply never holds up an admin letting someone back in.
    pub(crate) logins: crate::logins::Shared,
}

fn stopped() -> zbus::fdo::Error {
    zbus::fdo::Error::Failed("postmaster is shutting down".into())
}

fn to_json<T: Serialize>(value: &T) -> zbus::fdo::Result<String> {
    serde_json::to_string(value).map_err(|e| zbus::fdo::Error::Failed(e.to_string()))
}

#[zbus::interface(name = "io.postmaster.Supervisor1")]
impl Supervisor {
    async fn status(&self) -> zbus::fdo::Result<String> {
        let mut status = self.status.borrow().clone();
        if let Some(l) = &mut status.logins {
            l.blocked = crate::logins::lock(&self.logins).blocks(crate::logins::unix_now());
        }
        let systemd = self.systemd.borrow().clone();
        if let Some(systemd) = &systemd {
            for unit in &mut status.units {
                *unit = systemd.unit_state(&unit.name).await;
            }
        }
        to_json(&status)
    }

    async fn reload(&self) -> zbus::fdo::Result<String> {
        let (reply, outcome) = oneshot::channel();
        self.requests
            .send(Request::Reload(reply))
            .await
            .map_err(|_| stopped())?;
        to_json(&outcome.await.map_err(|_| stopped())?)
    }

    async fn renew(&self, force: bool) -> zbus::fdo::Result<String> {
        let (reply, outcome) = oneshot::channel();
        self.requests
            .send(Request::Renew { force, reply })
            .await
            .map_err(|_| stopped())?;
        to_json(&outcome.await.map_err(|_| stopped())?)
    }

    async fn unblock(&self, address: &str) -> zbus::fdo::Result<String> {
        to_json(&unblock(&self.logins, address, crate::logins::unix_now()))
    }

    async fn rotate_dkim(&self, domain: &str) -> zbus::fdo::Result<String> {
        let (reply, outcome) = oneshot::channel();
        self.requests
            .send(Request::RotateDkim {
                domain: domain.to_string(),
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        to_json(&outcome.await.map_err(|_| stopped())?)
    }
}

/// Lifts the block of `address` (as an admin types it).
pub(crate) fn unblock(logins: &crate::logins::Shared, address: &str, now: u64) -> Outcome {
    let source = match crate::logins::Source::parse(address) {
        Ok(s) => s,
        Err(e) => {
            return Outcome {
                ok: false,
                summary: "nothing lifted".into(),
                errors: vec![e.to_string()],
            };
        }
    };
    let lifted = crate::logins::lock(logins).lift(source, now);
    if lifted {
        tracing::info!(address = %source, "logins: block lifted by an admin");
    }
    Outcome {
        ok: lifted,
        summary: if lifted {
            format!("{source} may log in again; its failures are forgotten")
        } else {
            format!("{source} is not blocked")
        },
        errors: Vec::new(),
    }
}

/// The client side, for the CLI.
#[zbus::proxy(
    interface = "io.postmaster.Supervisor1",
    default_service = "io.postmaster.Supervisor1",
    default_path = "/io/postmaster/Supervisor1"
)]
pub(crate) trait SupervisorClient {
    fn status(&self) -> zbus::Result<String>;
    fn reload(&self) -> zbus::Result<String>;
    fn renew(&self, force: bool) -> zbus::Result<String>;
    fn rotate_dkim(&self, domain: &str) -> zbus::Result<String>;
    fn unblock(&self, address: &str) -> zbus::Result<String>;
}
