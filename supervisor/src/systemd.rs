//! Talking to systemd over D-Bus: reload a unit and wait for the job's result, and
//! read a unit's state and main PID. Effects only; no policy here.

use std::time::Duration;

use futures_util::StreamExt;
use zbus::OwnedObjectPath;

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn reload_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn subscribe(&self) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Job",
    default_service = "org.freedesktop.systemd1"
)]
trait Job {
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
trait Service {
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SystemdError {
    #[error("D-Bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error("reloading {unit} ended with result `{result}`")]
    JobFailed { unit: String, result: String },
    #[error("reloading {unit} did not finish within {0:?}", timeout)]
    Timeout { unit: String, timeout: Duration },
}

/// A unit's state as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct UnitState {
    pub(crate) name: String,
    /// `active`, `inactive`, `failed`, `reloading`, … or `unknown` when not loaded.
    pub(crate) active_state: String,
    /// 0 when the unit has no main process.
    pub(crate) main_pid: u32,
}

#[derive(Clone)]
pub(crate) struct Systemd {
    connection: zbus::Connection,
    manager: ManagerProxy<'static>,
}

impl Systemd {
    pub(crate) async fn new(connection: zbus::Connection) -> zbus::Result<Systemd> {
        let manager = ManagerProxy::new(&connection).await?;
        // Without Subscribe systemd does not send JobRemoved to us.
        manager.subscribe().await?;
        Ok(Systemd {
            connection,
            manager,
        })
    }

    pub(crate) async fn unit_state(&self, name: &str) -> UnitState {
        let unknown = || UnitState {
            name: name.to_string(),
            active_state: "unknown".into(),
            main_pid: 0,
        };
        let Ok(path) = self.manager.get_unit(name).await else {
            return unknown();
        };
        let active_state = match UnitProxy::builder(&self.connection)
            .path(path.clone())
            .build()
            .await
        {
            Ok(unit) => unit
                .active_state()
                .await
                .unwrap_or_else(|_| "unknown".into()),
            Err(_) => "unknown".into(),
        };
        let main_pid = match ServiceProxy::builder(&self.connection)
            .path(path)
            .build()
            .await
        {
            Ok(service) => service.main_pid().await.unwrap_or(0),
            Err(_) => 0,
        };
        UnitState {
            name: name.to_string(),
            active_state,
            main_pid,
        }
    }

    /// Reloads `unit` and waits for the job to finish. The JobRemoved stream is
    /// opened before the call, or a fast job could finish before we listen.
    pub(crate) async fn reload(&self, unit: &str, timeout: Duration) -> Result<(), SystemdError> {
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender("org.freedesktop.systemd1")
            .path("/org/freedesktop/systemd1")
            .interface("org.freedesktop.systemd1.Manager")
            .member("JobRemoved")
            .build()?;
        let mut removed = zbus::MessageStream::for_match_rule(rule, &self.connection, None).await?;
        let job = self.manager.reload_unit(unit, "replace").await?;
        tracing::debug!(unit, job = %job.as_str(), "reload job queued");
        // JobRemoved carries the job's result. Measured in the test bed: when the
        // caller is not root (the reload went through polkit), the signal is
        // emitted but does not reach us; so the job object is also polled, and its
        // disappearance means the job has finished.
        let job_proxy = JobProxy::builder(&self.connection)
            .path(job.clone())
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        let wait = async {
            let mut poll = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    message = removed.next() => {
                        let Some(message) = message else {
                            return Err(zbus::Error::Failure("systemd's signal stream ended".into()));
                        };
                        let (_id, removed_job, _unit, result): (u32, OwnedObjectPath, String, String) = message?.body().deserialize()?;
                        if removed_job == job {
                            return Ok(result);
                        }
                    }
                    _ = poll.tick() => {
                        if job_proxy.state().await.is_err() {
                            return Ok("done".to_string());
                        }
                    }
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Err(_) => Err(SystemdError::Timeout {
                unit: unit.to_string(),
                timeout,
            }),
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(result)) if result == "done" => Ok(()),
            Ok(Ok(result)) => Err(SystemdError::JobFailed {
                unit: unit.to_string(),
                result,
            }),
        }
    }
}
