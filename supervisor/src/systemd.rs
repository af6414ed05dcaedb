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
    /// How the last reload ended: `success`, `exit-code`, `timeout`, …
    #[zbus(property)]
    fn reload_result(&self) -> zbus::Result<String>;
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
        // disappearance means the job has finished. Every 10 ms: a new certificate
        // waits for dovecot's job to end before anything else happens, and at
        // 50 ms this poll added 25 ms on average (measured in ./bench); a poll is
        // one property read.
        let job_proxy = JobProxy::builder(&self.connection)
            .path(job.clone())
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        let wait = async {
            let mut poll = tokio::time::interval(Duration::from_millis(10));
            loop {
                tokio::select! {
                    message = removed.next() => {
                        let Some(message) = message else {
                            return Err(zbus::Error::Failure("systemd's signal stream ended".into()));
                        };
                        let (_id, removed_job, _unit, result): (u32, OwnedObjectPath, String, String) = message?.body().deserialize()?;
                        if removed_job == job {
                            return Ok(Some(result));
                        }
                    }
                    _ = poll.tick() => {
                        if job_proxy.state().await.is_err() {
                            return Ok(None);
                        }
                    }
                }
            }
        };
        let signalled = match tokio::time::timeout(timeout, wait).await {
            Err(_) => {
                return Err(SystemdError::Timeout {
                    unit: unit.to_string(),
                    timeout,
                });
            }
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(signalled)) => signalled,
        };
        // Without the signal, the job's end says nothing of how it ended: a reload
        // whose ExecReload failed ends as quietly as one that worked. The unit
        // keeps that.
        let kept = match signalled {
            Some(_) => None,
            None => self.reload_result(unit).await,
        };
        match reload_failure(signalled.as_deref(), kept.as_deref()) {
            None => Ok(()),
            Some(result) => Err(SystemdError::JobFailed {
                unit: unit.to_string(),
                result,
            }),
        }
    }

    /// The unit's record of how its last reload ended, if it keeps one.
    async fn reload_result(&self, unit: &str) -> Option<String> {
        let path = self.manager.get_unit(unit).await.ok()?;
        let service = ServiceProxy::builder(&self.connection)
            .path(path)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .ok()?;
        service.reload_result().await.ok()
    }
}

/// Why a reload failed, from the job's result in systemd's JobRemoved signal when
/// it was seen, else from the unit's ReloadResult; `None` when it worked (or when
/// neither says otherwise).
fn reload_failure(signalled: Option<&str>, kept: Option<&str>) -> Option<String> {
    match (signalled, kept) {
        (Some("done"), _) => None,
        (Some(result), _) => Some(result.to_string()),
        (None, Some(result)) if result != "success" => Some(result.to_string()),
        (None, _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::reload_failure;

    #[test]
    fn a_reload_failed_when_the_signal_or_else_the_unit_says_so() {
        assert_eq!(reload_failure(Some("done"), None), None);
        assert_eq!(reload_failure(Some("failed"), None), Some("failed".into()));
        assert_eq!(
            reload_failure(Some("timeout"), Some("success")),
            Some("timeout".into())
        );
        // Only the job's disappearance was seen: the unit's record decides.
        assert_eq!(reload_failure(None, Some("success")), None);
        assert_eq!(
            reload_failure(None, Some("exit-code")),
            Some("exit-code".into())
        );
        // A unit that keeps no record (not a service): nothing says it failed.
        assert_eq!(reload_failure(None, None), None);
    }
}
