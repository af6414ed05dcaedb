//! Serving a newly installed certificate: the sequence of reloads and checks that
//! makes the TLS front (IMAP, POP3, ManageSieve) and postfix hand it to clients, as
//! plain values.
//!
//! The order is what makes it work without disturbing clients (measured in the
//! bed, see the README):
//!
//! 1. The TLS front (`postmaster tls-front`, postmaster-tls.service) is reloaded
//!    first, and seen serving the new certificate: it reads the pair again and
//!    swaps it for the next handshake, sessions in flight untouched. dovecot is
//!    never reloaded for a certificate: each dovecot reload replaces its auth
//!    process, which fails logins in flight and takes postfix's SMTP AUTH socket
//!    away for a moment.
//! 2. postfix, if it runs: the table every smtpd has open is republished, so each
//!    one starts over before its next client and reads the new pair, without the
//!    1-2 s stalls a `postfix reload` causes.
//! 3. If that could not be done, or a postfix port still shows the old
//!    certificate after [`POSTFIX_GRACE`], postfix is reloaded after all.
//!
//! [`Serving::start`] and [`Serving::advance`] are the pure state machine: each
//! step names one [`Action`] for the host and takes what it observed. [`serve`]
//! drives it against a [`Host`]; the daemon's host is systemd over D-Bus and real
//! TLS handshakes, the unit tests' is a fake.

use std::time::Duration;

/// How long the new certificate may take to be served after a reload.
pub(crate) const SERVED_DEADLINE: Duration = Duration::from_secs(15);
/// How long postfix's smtpd processes get to start over with a new certificate by
/// themselves before postfix is reloaded. They do it within ~100 ms of the next
/// client (measured in the bed); the check of what is served is such a client.
pub(crate) const POSTFIX_GRACE: Duration = Duration::from_secs(5);

/// The two daemons that serve the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Server {
    /// `postmaster tls-front`: TLS for dovecot's IMAP, POP3 (and ManageSieve).
    Front,
    Postfix,
}

impl Server {
    /// The TLS ports this server listens on (its share of the mail host's ports).
    pub(crate) fn ports(self) -> &'static [u16] {
        match self {
            Server::Postfix => &[25, 465, 587],
            Server::Front => &[993, 995, 143, 110],
        }
    }
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Server::Front => "the TLS front",
            Server::Postfix => "postfix",
        })
    }
}

/// One port that does not serve the new certificate, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortFailure {
    pub(crate) port: u16,
    pub(crate) why: NotServed,
}

/// Why a port does not serve the new certificate; the journal and the status show
/// the text, after the port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotServed {
    /// The server could not be reloaded: it still serves the old certificate.
    #[error("{server} could not be reloaded: {why}")]
    NotReloaded { server: Server, why: ReloadFailed },
    /// What the port was seen doing by the deadline.
    #[error(transparent)]
    Seen(crate::probe::NotServing),
    /// The driver answered an action with another's observation (a bug): every
    /// port fails rather than guess. Says which, as debug text.
    #[error("internal error: {0}")]
    Confused(String),
}

/// What the host is asked to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Reload the server's unit if it runs (the host retries with back-off).
    Reload(Server),
    /// Whether the server's unit runs.
    IsRunning(Server),
    /// Put a fresh copy of the table postfix's smtpd processes have open in place.
    Republish,
    /// Wait until every port of the server serves the new certificate, at most
    /// this long.
    AwaitServed(Server, Duration),
}

/// What the host saw doing an [`Action`]; each answers the action of that name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Observation {
    Reloaded(ReloadResult),
    Running(bool),
    Republished(Result<(), RepublishError>),
    Served(Result<(), Vec<PortFailure>>),
}

/// Why the table postfix's smtpd processes have open was not republished (postfix
/// is reloaded instead). The sequence only needs to know that it failed; the
/// journal needs what failed and where. Shared, since the sequence's values are
/// `Clone` and these errors are not.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum RepublishError {
    /// Writing or compiling the fresh copy failed: apply's text, naming the file.
    #[error(transparent)]
    Table(std::sync::Arc<crate::apply::ApplyError>),
    /// The blocking task that republishes panicked or was cancelled.
    #[error("republishing stopped before it finished: {0}")]
    Interrupted(std::sync::Arc<tokio::task::JoinError>),
}

/// The same failure saying the same (neither error has an equality of its own), so
/// that tests compare observations whole.
impl PartialEq for RepublishError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (RepublishError::Table(a), RepublishError::Table(b)) => a.to_string() == b.to_string(),
            (RepublishError::Interrupted(a), RepublishError::Interrupted(b)) => {
                a.to_string() == b.to_string()
            }
            _ => false,
        }
    }
}

impl Eq for RepublishError {}

/// How a reload went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReloadResult {
    Done,
    /// The unit does not run: it reads the new files when it starts.
    NotRunning,
    /// Every attempt failed; the unit still serves the old certificate.
    Failed(ReloadFailed),
}

/// Why a reload failed after every attempt; the journal and the status show it.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ReloadFailed {
    /// The daemon has no D-Bus connection to systemd.
    #[error("no connection to systemd")]
    NoSystemd,
    /// systemd's answer to the last attempt; shared, since the sequence's values
    /// are `Clone` and a D-Bus error is not.
    #[error(transparent)]
    Systemd(std::sync::Arc<crate::systemd::SystemdError>),
}

/// The same failure saying the same (a D-Bus error has no equality of its own), so
/// that tests compare outcomes whole.
impl PartialEq for ReloadFailed {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ReloadFailed::NoSystemd, ReloadFailed::NoSystemd) => true,
            (ReloadFailed::Systemd(a), ReloadFailed::Systemd(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

impl Eq for ReloadFailed {}

/// Where the sequence stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    ReloadingFront,
    AwaitingFront,
    AskingPostfix,
    Republishing,
    /// postfix's smtpd processes are starting over by themselves.
    PostfixGrace,
    /// postfix is reloaded after all; `late` are the ports the grace ended with.
    ReloadingPostfix {
        late: Vec<PortFailure>,
    },
    AwaitingPostfix,
}

/// The serving sequence in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Serving {
    phase: Phase,
    /// Ports that will not serve the new certificate, so far.
    failures: Vec<PortFailure>,
    /// Whether any running server was there to check: one that does not run reads
    /// the new pair when it starts, and there is nothing to verify.
    checked: bool,
    /// Whether postfix had to be reloaded (the republish did not do it).
    postfix_reloaded: bool,
}

/// How serving a new certificate ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Neither server runs: each reads the new pair when it starts.
    NothingRunning,
    /// Every port of every running server serves the new certificate.
    Served { postfix_reloaded: bool },
    /// These ports do not.
    NotServed {
        failures: Vec<PortFailure>,
        postfix_reloaded: bool,
    },
}

/// The next thing to do: another action, or the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    Do(Serving, Action),
    Finished(Outcome),
}

/// Every port of `server`, failed for `why`.
fn all_ports(server: Server, why: &NotServed) -> Vec<PortFailure> {
    server
        .ports()
        .iter()
        .map(|&port| PortFailure {
            port,
            why: why.clone(),
        })
        .collect()
}

impl Serving {
    /// The sequence for a pair that was just installed.
    pub(crate) fn start() -> (Serving, Action) {
        let serving = Serving {
            phase: Phase::ReloadingFront,
            failures: Vec::new(),
            checked: false,
            postfix_reloaded: false,
        };
        (serving, Action::Reload(Server::Front))
    }

    /// Takes what the host saw doing the last action and says what comes next.
    ///
    /// An observation that does not answer the last action is a bug in the driver;
    /// it ends the sequence with every port failed rather than guessing.
    pub(crate) fn advance(mut self, seen: Observation) -> Next {
        use Observation as O;
        let phase = std::mem::replace(&mut self.phase, Phase::AskingPostfix);
        match (phase, seen) {
            (Phase::ReloadingFront, O::Reloaded(ReloadResult::Done)) => {
                self.checked = true;
                self.then(
                    Phase::AwaitingFront,
                    Action::AwaitServed(Server::Front, SERVED_DEADLINE),
                )
            }
            (Phase::ReloadingFront, O::Reloaded(ReloadResult::NotRunning)) => self.ask_postfix(),
            // It still serves the old certificate: no use waiting to see that.
            (Phase::ReloadingFront, O::Reloaded(ReloadResult::Failed(e))) => {
                self.checked = true;
                self.failures.extend(all_ports(
                    Server::Front,
                    &NotServed::NotReloaded {
                        server: Server::Front,
                        why: e,
                    },
                ));
                self.ask_postfix()
            }
            (Phase::AwaitingFront, O::Served(served)) => {
                self.failures.extend(served.err().unwrap_or_default());
                self.ask_postfix()
            }
            (Phase::AskingPostfix, O::Running(false)) => self.finish(),
            (Phase::AskingPostfix, O::Running(true)) => {
                self.checked = true;
                self.then(Phase::Republishing, Action::Republish)
            }
            (Phase::Republishing, O::Republished(Ok(()))) => self.then(
                Phase::PostfixGrace,
                Action::AwaitServed(Server::Postfix, POSTFIX_GRACE),
            ),
            (Phase::Republishing, O::Republished(Err(_))) => self.then(
                Phase::ReloadingPostfix { late: Vec::new() },
                Action::Reload(Server::Postfix),
            ),
            (Phase::PostfixGrace, O::Served(Ok(()))) => self.finish(),
            (Phase::PostfixGrace, O::Served(Err(late))) => self.then(
                Phase::ReloadingPostfix { late },
                Action::Reload(Server::Postfix),
            ),
            (Phase::ReloadingPostfix { .. }, O::Reloaded(ReloadResult::Done)) => {
                self.postfix_reloaded = true;
                self.then(
                    Phase::AwaitingPostfix,
                    Action::AwaitServed(Server::Postfix, SERVED_DEADLINE),
                )
            }
            // It stopped meanwhile: it reads the new pair when it starts, but the
            // ports the grace ended with are what clients saw until then.
            (Phase::ReloadingPostfix { late }, O::Reloaded(ReloadResult::NotRunning)) => {
                self.failures.extend(late);
                self.finish()
            }
            (Phase::ReloadingPostfix { .. }, O::Reloaded(ReloadResult::Failed(e))) => {
                self.failures.extend(all_ports(
                    Server::Postfix,
                    &NotServed::NotReloaded {
                        server: Server::Postfix,
                        why: e,
                    },
                ));
                self.finish()
            }
            (Phase::AwaitingPostfix, O::Served(served)) => {
                self.failures.extend(served.err().unwrap_or_default());
                self.finish()
            }
            (phase, seen) => {
                self.checked = true;
                let why = NotServed::Confused(format!("{seen:?} does not answer {phase:?}"));
                self.failures.extend(all_ports(Server::Front, &why));
                self.failures.extend(all_ports(Server::Postfix, &why));
                self.finish()
            }
        }
    }

    fn then(mut self, phase: Phase, action: Action) -> Next {
        self.phase = phase;
        Next::Do(self, action)
    }

    fn ask_postfix(self) -> Next {
        self.then(Phase::AskingPostfix, Action::IsRunning(Server::Postfix))
    }

    fn finish(self) -> Next {
        Next::Finished(if !self.checked {
            Outcome::NothingRunning
        } else if self.failures.is_empty() {
            Outcome::Served {
                postfix_reloaded: self.postfix_reloaded,
            }
        } else {
            Outcome::NotServed {
                failures: self.failures,
                postfix_reloaded: self.postfix_reloaded,
            }
        })
    }
}

/// The effects the serving sequence needs from the host.
pub(crate) trait Host {
    /// Reloads the server's unit if it runs, retrying as the host sees fit.
    async fn reload(&mut self, server: Server) -> ReloadResult;
    async fn is_running(&mut self, server: Server) -> bool;
    /// Republishes the table postfix's smtpd processes have open.
    async fn republish(&mut self) -> Result<(), RepublishError>;
    /// Waits until every port of `server` serves the certificate being installed.
    async fn await_served(
        &mut self,
        server: Server,
        deadline: Duration,
    ) -> Result<(), Vec<PortFailure>>;
}

/// Runs the serving sequence against `host` to its end.
pub(crate) async fn serve(host: &mut impl Host) -> Outcome {
    let (mut serving, mut action) = Serving::start();
    loop {
        let seen = match action {
            Action::Reload(server) => Observation::Reloaded(host.reload(server).await),
            Action::IsRunning(server) => Observation::Running(host.is_running(server).await),
            Action::Republish => Observation::Republished(host.republish().await),
            Action::AwaitServed(server, deadline) => {
                Observation::Served(host.await_served(server, deadline).await)
            }
        };
        match serving.advance(seen) {
            Next::Do(next, next_action) => (serving, action) = (next, next_action),
            Next::Finished(outcome) => return outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host whose answers are scripted, and which records what it was asked.
    #[derive(Default)]
    struct FakeHost {
        front_reload: Vec<ReloadResult>,
        postfix_reload: Vec<ReloadResult>,
        postfix_running: bool,
        republish: Option<Result<(), RepublishError>>,
        /// Answers to await_served, in order.
        served: Vec<Result<(), Vec<PortFailure>>>,
        asked: Vec<Action>,
    }

    impl FakeHost {
        fn take<T>(answers: &mut Vec<T>, what: &str) -> T {
            assert!(
                !answers.is_empty(),
                "the sequence asked for an unscripted {what}"
            );
            answers.remove(0)
        }
    }

    impl Host for FakeHost {
        async fn reload(&mut self, server: Server) -> ReloadResult {
            self.asked.push(Action::Reload(server));
            match server {
                Server::Front => Self::take(&mut self.front_reload, "TLS front reload"),
                Server::Postfix => Self::take(&mut self.postfix_reload, "postfix reload"),
            }
        }
        async fn is_running(&mut self, server: Server) -> bool {
            self.asked.push(Action::IsRunning(server));
            assert_eq!(
                server,
                Server::Postfix,
                "only postfix is asked whether it runs"
            );
            self.postfix_running
        }
        async fn republish(&mut self) -> Result<(), RepublishError> {
            self.asked.push(Action::Republish);
            self.republish.take().expect("an unscripted republish")
        }
        async fn await_served(
            &mut self,
            server: Server,
            deadline: Duration,
        ) -> Result<(), Vec<PortFailure>> {
            self.asked.push(Action::AwaitServed(server, deadline));
            Self::take(&mut self.served, "served check")
        }
    }

    fn run(host: &mut FakeHost) -> Outcome {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(serve(host))
    }

    fn job_failed(unit: &str) -> ReloadFailed {
        ReloadFailed::Systemd(std::sync::Arc::new(
            crate::systemd::SystemdError::JobFailed {
                unit: unit.into(),
                result: "failed".into(),
            },
        ))
    }

    fn late(port: u16) -> PortFailure {
        PortFailure {
            port,
            why: NotServed::Seen(crate::probe::NotServing::OtherCertificate {
                seen: "old".into(),
                expected: "new".into(),
            }),
        }
    }

    #[test]
    fn the_front_first_then_postfix_recycles_without_a_reload() {
        let mut host = FakeHost {
            front_reload: vec![ReloadResult::Done],
            postfix_running: true,
            republish: Some(Ok(())),
            served: vec![Ok(()), Ok(())],
            ..FakeHost::default()
        };
        assert_eq!(
            run(&mut host),
            Outcome::Served {
                postfix_reloaded: false
            }
        );
        assert_eq!(
            host.asked,
            [
                Action::Reload(Server::Front),
                Action::AwaitServed(Server::Front, SERVED_DEADLINE),
                Action::IsRunning(Server::Postfix),
                Action::Republish,
                Action::AwaitServed(Server::Postfix, POSTFIX_GRACE),
            ]
        );
    }

    #[test]
    fn postfix_still_serving_the_old_certificate_after_the_grace_is_reloaded() {
        let mut host = FakeHost {
            front_reload: vec![ReloadResult::Done],
            postfix_reload: vec![ReloadResult::Done],
            postfix_running: true,
            republish: Some(Ok(())),
            served: vec![Ok(()), Err(vec![late(587)]), Ok(())],
            ..FakeHost::default()
        };
        assert_eq!(
            run(&mut host),
            Outcome::Served {
                postfix_reloaded: true
            }
        );
        assert_eq!(
            host.asked[4..],
            [
                Action::AwaitServed(Server::Postfix, POSTFIX_GRACE),
                Action::Reload(Server::Postfix),
                Action::AwaitServed(Server::Postfix, SERVED_DEADLINE),
            ]
        );
    }

    fn postmap_failed(detail: &str) -> RepublishError {
        RepublishError::Table(std::sync::Arc::new(crate::apply::ApplyError::Postmap {
            path: "/var/lib/postmaster/sender_login".into(),
            detail: detail.into(),
        }))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn republish_errors_say_what_failed() {
        assert_eq!(
            postmap_failed("exit 1").to_string(),
            "postmap could not compile /var/lib/postmaster/sender_login: exit 1"
        );
        assert_eq!(postmap_failed("exit 1"), postmap_failed("exit 1"));
        assert_ne!(postmap_failed("exit 1"), postmap_failed("exit 2"));
        let task = tokio::spawn(std::future::pending::<()>());
        task.abort();
        let cancelled = task.await.unwrap_err();
        let text = format!("republishing stopped before it finished: {cancelled}");
        assert!(text.ends_with("was cancelled"), "{text}");
        assert_eq!(
            RepublishError::Interrupted(std::sync::Arc::new(cancelled)).to_string(),
            text
        );
    }

    #[test]
    fn a_table_that_cannot_be_republished_reloads_postfix_at_once() {
        let mut host = FakeHost {
            front_reload: vec![ReloadResult::Done],
            postfix_reload: vec![ReloadResult::Done],
            postfix_running: true,
            republish: Some(Err(postmap_failed("No space left on device"))),
            served: vec![Ok(()), Ok(())],
            ..FakeHost::default()
        };
        assert_eq!(
            run(&mut host),
            Outcome::Served {
                postfix_reloaded: true
            }
        );
        assert_eq!(
            host.asked[3..],
            [
                Action::Republish,
                Action::Reload(Server::Postfix),
                Action::AwaitServed(Server::Postfix, SERVED_DEADLINE)
            ]
        );
    }

    #[test]
    fn a_failed_front_reload_fails_its_ports_without_waiting_and_postfix_still_gets_the_certificate()
     {
        let mut host = FakeHost {
            front_reload: vec![ReloadResult::Failed(job_failed("postmaster-tls.service"))],
            postfix_running: true,
            republish: Some(Ok(())),
            served: vec![Ok(())],
            ..FakeHost::default()
        };
        let Outcome::NotServed {
            failures,
            postfix_reloaded: false,
        } = run(&mut host)
        else {
            panic!("a failed reload of the front must not count as served");
        };
        let ports: Vec<u16> = failures.iter().map(|f| f.port).collect();
        assert_eq!(ports, [993, 995, 143, 110]);
        assert!(
            failures
                .iter()
                .all(|f| f.why.to_string()
                    == "the TLS front could not be reloaded: reloading postmaster-tls.service ended with result `failed`"),
            "{failures:?}"
        );
        assert!(
            !host
                .asked
                .contains(&Action::AwaitServed(Server::Front, SERVED_DEADLINE))
        );
    }

    #[test]
    fn front_reloaded_but_not_serving_reports_those_ports() {
        let mut host = FakeHost {
            front_reload: vec![ReloadResult::Done],
            postfix_running: false,
            served: vec![Err(vec![late(993)])],
            ..FakeHost::default()
        };
        assert_eq!(
            run(&mut host),
            Outcome::NotServed {
                failures: vec![late(993)],
                postfix_reloaded: false
            }
        );
    }

    #[test]
    fn a_failed_postfix_reload_fails_every_postfix_port() {
        let mut host = FakeHost {
            front_reload: vec![ReloadResult::Done],
            postfix_reload: vec![ReloadResult::Failed(ReloadFailed::NoSystemd)],
            postfix_running: true,
            republish: Some(Ok(())),
            served: vec![Ok(()), Err(vec![late(25)])],
            ..FakeHost::default()
        };
        let Outcome::NotServed {
            failures,
            postfix_reloaded: false,
        } = run(&mut host)
        else {
            panic!("a failed postfix reload must not count as served");
        };
        let ports: Vec<u16> = failures.iter().map(|f| f.port).collect();
        assert_eq!(ports, [25, 465, 587]);
    }

    #[test]
    fn postfix_that_stopped_during_the_fallback_reports_the_late_ports() {
        let mut host = FakeHost {
            front_reload: vec![ReloadResult::Done],
            postfix_reload: vec![ReloadResult::NotRunning],
            postfix_running: true,
            republish: Some(Ok(())),
            served: vec![Ok(()), Err(vec![late(465)])],
            ..FakeHost::default()
        };
        assert_eq!(
            run(&mut host),
            Outcome::NotServed {
                failures: vec![late(465)],
                postfix_reloaded: false
            }
        );
    }

    #[test]
    fn postfix_reloaded_but_still_not_serving_reports_those_ports() {
        let mut host = FakeHost {
            front_reload: vec![ReloadResult::Done],
            postfix_reload: vec![ReloadResult::Done],
            postfix_running: true,
            republish: Some(Ok(())),
            served: vec![Ok(()), Err(vec![late(587)]), Err(vec![late(25)])],
            ..FakeHost::default()
        };
        assert_eq!(
            run(&mut host),
            Outcome::NotServed {
                failures: vec![late(25)],
                postfix_reloaded: true
            }
        );
    }

    #[test]
    fn nothing_running_is_nothing_to_verify() {
        let mut host = FakeHost {
            front_reload: vec![ReloadResult::NotRunning],
            ..FakeHost::default()
        };
        assert_eq!(run(&mut host), Outcome::NothingRunning);
        assert_eq!(
            host.asked,
            [
                Action::Reload(Server::Front),
                Action::IsRunning(Server::Postfix)
            ]
        );
    }

    #[test]
    fn only_postfix_running_skips_the_fronts_checks() {
        let mut host = FakeHost {
            front_reload: vec![ReloadResult::NotRunning],
            postfix_running: true,
            republish: Some(Ok(())),
            served: vec![Ok(())],
            ..FakeHost::default()
        };
        assert_eq!(
            run(&mut host),
            Outcome::Served {
                postfix_reloaded: false
            }
        );
    }

    #[test]
    fn an_observation_that_answers_another_action_fails_everything_instead_of_guessing() {
        let (serving, _) = Serving::start();
        let Next::Finished(Outcome::NotServed { failures, .. }) =
            serving.advance(Observation::Running(true))
        else {
            panic!("a confused driver must not end in success");
        };
        assert_eq!(failures.len(), 7);
        assert!(
            failures[0]
                .why
                .to_string()
                .starts_with("internal error: Running(true) does not answer ReloadingFront")
        );
    }

    #[test]
    fn why_a_port_does_not_serve_reads_as_before() {
        assert_eq!(
            NotServed::NotReloaded {
                server: Server::Front,
                why: job_failed("postmaster-tls.service")
            }
            .to_string(),
            "the TLS front could not be reloaded: reloading postmaster-tls.service ended with result `failed`"
        );
        assert_eq!(
            NotServed::NotReloaded {
                server: Server::Postfix,
                why: ReloadFailed::NoSystemd
            }
            .to_string(),
            "postfix could not be reloaded: no connection to systemd"
        );
        assert_eq!(job_failed("postfix.service"), job_failed("postfix.service"));
        assert_ne!(job_failed("postfix.service"), ReloadFailed::NoSystemd);
        assert_eq!(
            NotServed::Seen(crate::probe::NotServing::NoProbeFinished(SERVED_DEADLINE)).to_string(),
            "no probe finished within 15s"
        );
        assert_eq!(
            NotServed::Confused("Running(true) does not answer ReloadingFront".into()).to_string(),
            "internal error: Running(true) does not answer ReloadingFront"
        );
    }
}
