//! `postmaster run`: keeps the mail host in step with the accounts file and the
//! certificate, unattended, and never applies anything broken.
//!
//! One event loop does all the work, one thing at a time: a file change, the
//! backstop timer, a D-Bus request or a signal becomes a check; a check validates
//! what is on disk now and, only if it is good and different, applies it (and
//! reloads postfix and the TLS front when they need it); the outcome goes to the journal,
//! to systemd's STATUS line and to the D-Bus status. Doing everything in one loop
//! is what makes "never two reloads at once" and "coalesce bursts" simple.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

mod signing;

use crate::acme;
use crate::apply;
use crate::bus::{self, Outcome, Request};
use crate::certificate::{self, Decision};
use crate::config::{Config, TlsSource};
use crate::pipeline::{self, Resolved};
use crate::probe::{self, StartTls};
use crate::render;
use crate::serve::{self, ReloadResult, Server};
use crate::status::{Event, Status};
use crate::systemd::Systemd;
use crate::tls::{self, CertInfo};
use crate::watch::{Change, Input, Watcher};

/// Quiet time after the last file event before looking: editors and certbot write
/// in bursts, and a cp of a pair is two writes.
const DEBOUNCE: Duration = Duration::from_millis(300);
/// Quiet time after an event that left a file complete (renamed into place, or
/// closed by its writer): none. Only the events already queued with it are
/// coalesced (a timeout of zero still takes what is ready); any wait here is added
/// to every edit a person waits for (it was 5 ms, a tenth of a new login's wait). A
/// later event is simply looked at again: an apply of what is already applied
/// changes nothing, and a pair whose second half is not there yet waits for it
/// (`check_certificate`).
const QUICK: Duration = Duration::ZERO;
/// Re-check a pair that did not match this soon: the second half may be on its way.
const SETTLE: Duration = Duration::from_secs(2);
/// Look at everything this often even without events (lost events, expiry).
const BACKSTOP: Duration = Duration::from_secs(30);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(20);
const RELOAD_ATTEMPTS: u32 = 3;
/// How often to try again to reach the system bus, systemd on it, or our name.
const BUS_RETRY: Duration = Duration::from_secs(1);
/// An apply that failed (a full disk, say) is tried again after this, doubling up
/// to [`ACCOUNTS_RETRY_MOST`]: the space may come back at any moment, and nobody
/// may touch the accounts file again to make us look. An apply that changes
/// nothing is cheap, so trying every few seconds costs little.
const ACCOUNTS_RETRY_FIRST: Duration = Duration::from_secs(1);
const ACCOUNTS_RETRY_MOST: Duration = Duration::from_secs(10);
/// A certificate that postfix or the TLS front could not be made to serve (a reload
/// that failed every attempt) is served again after this, doubling up to
/// [`SERVING_RETRY_MOST`].
const SERVING_RETRY_FIRST: Duration = Duration::from_secs(5);
const SERVING_RETRY_MOST: Duration = Duration::from_secs(300);
/// The least wait after the CA refused an order for its rate limits: they count
/// over hours, and asking sooner only fails again.
const RATE_LIMIT_PAUSE: Duration = Duration::from_secs(3600);
/// The local ports whose served certificate is checked after an install.
const TLS_PORTS: [(u16, StartTls); 7] = [
    (25, StartTls::Smtp),
    (465, StartTls::Implicit),
    (587, StartTls::Smtp),
    (993, StartTls::Implicit),
    (995, StartTls::Implicit),
    (143, StartTls::Imap),
    (110, StartTls::Pop3),
];

pub(crate) fn run(config_path: &Path) -> Result<(), StartError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    runtime.block_on(main_loop(config_path))
}

struct Daemon {
    config_path: PathBuf,
    /// The configuration, with what the host offers (probed once per load).
    resolved: Resolved,
    systemd: Option<Systemd>,
    status: watch::Sender<Status>,
    watcher: Watcher,
    /// Digest of the accounts file as last looked at, good or bad: unchanged bytes
    /// need no second look.
    accounts_seen: Option<[u8; 32]>,
    pair_seen: Option<[u8; 32]>,
    /// The certificate postfix and dovecot are configured to serve.
    installed: Option<CertInfo>,
    settle_at: Option<Instant>,
    /// The pair bytes a settle re-check was already scheduled for (once per pair).
    settled: Option<[u8; 32]>,
    /// Set when the certificate comes from ACME.
    acme: Option<Acme>,
    /// The http-01 server on the port 80 socket systemd handed over, if it did. It
    /// is taken once per start (the descriptor cannot be taken twice), and kept
    /// across reloads whatever the configuration says.
    http01: Option<Result<acme::Http01Server, acme::NoResponder>>,
    /// DKIM: what DNS said about each published selector, and when to ask again.
    signing: signing::Signing,
    /// Failed-login counts and blocks, shared with the policy listener and D-Bus.
    logins: crate::logins::Shared,
    /// The policy listener dovecot's auth asks: its address and task, or why it
    /// could not be bound.
    policy: Option<(
        std::net::SocketAddr,
        Result<tokio::task::AbortHandle, crate::logins::NotLimited>,
    )>,
    /// When to apply the accounts again after an apply failed.
    accounts_retry: Option<Retry>,
    /// When to serve the installed certificate again after serving it failed.
    serving_retry: Option<Retry>,
}

/// What the daemon keeps for ACME between attempts.
struct Acme {
    /// How http-01 challenges are answered; `Err` says why they cannot be.
    responder: Result<acme::Responder, acme::NoResponder>,
    /// When to try next, and how the last attempts went; survives restarts.
    schedule: acme::Schedule,
}

async fn main_loop(config_path: &Path) -> Result<(), StartError> {
    let config = Config::load(config_path).map_err(StartError::Config)?;
    let (watcher, mut changes) = Watcher::new().map_err(StartError::Watch)?;
    let (status_tx, status_rx) = watch::channel(Status::default());
    let (requests_tx, mut requests) = mpsc::channel::<Request>(8);
    let (seen_tx, mut seen_rx) = mpsc::channel::<signing::Seen>(1);

    let (systemd_tx, systemd_rx) = watch::channel(None);
    let mut link = BusLink {
        connection: None,
        object_served: false,
        name_owned: false,
        systemd: systemd_tx,
        supervisor: None,
        trouble: None,
    };
    link.connect().await;
    let systemd = link.systemd();

    let config_logins = config.logins.clone();
    let mut daemon = Daemon {
        config_path: config_path.to_path_buf(),
        installed: certificate::installed(&config),
        resolved: Resolved::probe(config),
        systemd,
        status: status_tx,
        watcher,
        accounts_seen: None,
        pair_seen: None,
        settle_at: None,
        settled: None,
        acme: None,
        http01: take_http01_socket(),
        signing: signing::Signing::new(),
        logins: std::sync::Arc::new(std::sync::Mutex::new(crate::logins::Guard::new(
            config_logins.clone(),
        ))),
        policy: None,
        accounts_retry: None,
        serving_retry: None,
    };
    daemon.logins_setup();
    daemon.acme = acme_setup(&daemon.resolved.config, daemon.http01.as_ref());
    daemon.show_acme();
    if let Some(info) = daemon.installed.clone() {
        daemon.show_certificate(&info, None);
    }
    daemon.watch();
    daemon.check(true).await;

    link.supervisor = Some(SupervisorParts {
        requests: requests_tx.clone(),
        status: status_rx,
        systemd: systemd_rx,
        logins: daemon.logins.clone(),
    });
    link.offer().await;

    notify(&[sd_notify::NotifyState::Ready]);
    info!(summary = %daemon.status.borrow().summary(), "ready");

    let handle = |kind: SignalKind, name: &'static str| {
        signal(kind).map_err(|source| StartError::Signal {
            signal: name,
            source,
        })
    };
    let mut hangup = handle(SignalKind::hangup(), "SIGHUP")?;
    let mut terminate = handle(SignalKind::terminate(), "SIGTERM")?;
    let mut interrupt = handle(SignalKind::interrupt(), "SIGINT")?;
    // The watchdog is fed from its own task, so that a legitimately long step (a
    // reload that is retried) does not get us killed; but only while no step has
    // been running for longer than any step may take, so a hung loop still does.
    let busy_since = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    if let Some(every) = watchdog_interval() {
        tokio::spawn(feed_watchdog(every, busy_since.clone()));
    }
    let mut backstop = tokio::time::interval(BACKSTOP);
    let mut bus_retry = tokio::time::interval(BUS_RETRY);
    bus_retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    backstop.tick().await;

    loop {
        let settle = async {
            match daemon.settle_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let acme_due = async {
            match daemon.acme.as_ref() {
                Some(a) => {
                    let wait = a
                        .schedule
                        .next_attempt_time()
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    tokio::time::sleep(wait.min(BACKSTOP)).await;
                }
                None => std::future::pending().await,
            }
        };
        let ask_dns = daemon.signing.due(&daemon.resolved.config);
        let accounts_retry = Retry::due(daemon.accounts_retry);
        let serving_retry = Retry::due(daemon.serving_retry);
        let bus_lost = {
            let connection = link.connection.clone();
            async move {
                match connection {
                    Some(c) => c.closed().await,
                    None => std::future::pending().await,
                }
            }
        };
        busy_since.store(0, std::sync::atomic::Ordering::Relaxed);
        tokio::select! {
            Some(first) = changes.recv() => {
                busy(&busy_since);
                let burst = Burst::collect(first, &mut changes).await;
                if burst.accounts {
                    daemon.check_accounts(false).await;
                }
                if burst.certificate {
                    daemon.check_certificate(false, burst.quick).await;
                }
                daemon.publish();
                daemon.watch();
            }
            _ = settle => {
                busy(&busy_since);
                daemon.settle_at = None;
                daemon.pair_seen = None; // look at the same bytes once more
                daemon.check_certificate(false, false).await;
                daemon.publish();
            }
            _ = backstop.tick() => {
                busy(&busy_since);
                daemon.check(false).await;
            }
            _ = acme_due => {
                busy(&busy_since);
                daemon.renew_if_due().await;
            }
            _ = ask_dns => {
                daemon.ask_dns(seen_tx.clone());
            }
            Some(seen) = seen_rx.recv() => {
                busy(&busy_since);
                daemon.dns_answered(seen);
                // A failure is in the status and the journal.
                let _ = daemon.check_dkim(&[]).await;
                daemon.publish();
            }
            _ = accounts_retry => {
                busy(&busy_since);
                let due = daemon.accounts_retry;
                daemon.check_accounts(false).await;
                // A look that ended before applying (the file became unreadable or
                // invalid meanwhile) leaves the retry as it was: it is done with.
                if daemon.accounts_retry == due {
                    daemon.accounts_retry = None;
                }
                daemon.publish();
            }
            _ = serving_retry => {
                busy(&busy_since);
                let due = daemon.serving_retry;
                daemon.serve_again().await;
                if daemon.serving_retry == due {
                    daemon.serving_retry = None;
                }
                daemon.publish();
            }
            // dbus restarted, or killed: everything on the bus is set up again on a
            // new connection, by the retry below.
            _ = bus_lost => {
                link.lost();
                daemon.systemd = None;
            }
            // The bus may be away (restarting), or refuse the name at boot before it
            // has re-read its policy, or systemd may not be on the new bus yet: keep
            // trying.
            _ = bus_retry.tick(), if !link.complete() => {
                link.connect().await;
                link.offer().await;
                daemon.systemd = link.systemd();
            }
            Some(request) = requests.recv() => {
                busy(&busy_since);
                match request {
                    Request::Reload(reply) => {
                        let _ = reply.send(daemon.reload().await);
                    }
                    Request::Renew { force, reply } => {
                        let _ = reply.send(daemon.renew(force).await);
                    }
                    Request::RotateDkim { domain, reply } => {
                        let _ = reply.send(daemon.rotate_dkim(&domain).await);
                        daemon.publish();
                    }
                }
            }
            _ = hangup.recv() => {
                busy(&busy_since);
                notify(&[sd_notify::NotifyState::Reloading, monotonic_usec()]);
                let outcome = daemon.reload().await;
                info!(ok = outcome.ok, summary = %outcome.summary, "reloaded on SIGHUP");
                notify(&[sd_notify::NotifyState::Ready]);
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    info!("stopping");
    Ok(())
}

impl Daemon {
    /// The limits for failed logins, and the listener dovecot's auth asks, as the
    /// configuration says now. Counts and blocks survive a reload; a listener whose
    /// address is unchanged keeps running.
    fn logins_setup(&mut self) {
        let limits = self.resolved.config.logins.clone();
        crate::logins::lock(&self.logins).set_limits(limits.clone());
        let wanted = (limits.block_after_failures > 0).then_some(limits.policy_address);
        let current = self.policy.as_ref().map(|(address, _)| *address);
        if wanted != current || matches!(&self.policy, Some((_, Err(_)))) {
            if let Some((_, Ok(task))) = self.policy.take() {
                task.abort();
            }
            self.policy = wanted.map(|address| {
                let bound = crate::logins::bind(address)
                    .map(|listener| {
                        info!(%address, "logins: answering dovecot's auth policy requests");
                        tokio::spawn(crate::logins::serve(listener, self.logins.clone()))
                            .abort_handle()
                    })
                    .map_err(|source| {
                        error!(%address, error = %source, "logins: cannot listen for dovecot's auth policy requests; failed logins are not limited");
                        crate::logins::NotLimited::CannotListen { address, source }
                    });
                (address, bound)
            });
        }
        let (uids, unknown) = resolve_policy_clients(&limits.policy_clients);
        crate::logins::lock(&self.logins).set_client_uids(uids);
        let error = match &self.policy {
            Some((_, Err(e))) => Some(e.to_string()),
            _ if wanted.is_some() && !unknown.is_empty() => {
                let e = crate::logins::NotLimited::UnknownClients { names: unknown };
                error!("logins: {e}");
                Some(e.to_string())
            }
            _ => None,
        };
        let status = crate::status::LoginsStatus {
            block_after_failures: limits.block_after_failures,
            failure_window_seconds: limits.failure_window_seconds,
            block_seconds: limits.block_seconds,
            policy_address: limits.policy_address.to_string(),
            error,
            blocked: Vec::new(),
        };
        self.status.send_if_modified(|s| {
            let changed = s.logins.as_ref() != Some(&status);
            s.logins = Some(status);
            changed
        });
    }

    fn watch(&mut self) {
        let accounts = self.resolved.config.accounts_file.clone();
        let cert = self.resolved.config.tls.cert.clone();
        let key = self.resolved.config.tls.key.clone();
        self.watcher.watch(&[
            (Input::Accounts, &accounts),
            (Input::Certificate, &cert),
            (Input::Certificate, &key),
        ]);
    }

    /// Looks at everything; `force` looks even at unchanged bytes.
    async fn check(&mut self, force: bool) {
        self.check_accounts(force).await;
        self.check_certificate(force, false).await;
        // A failure is in the status and the journal.
        let _ = self.check_dkim(&[]).await;
        self.publish();
    }

    /// Re-reads the configuration too, then looks at everything again.
    async fn reload(&mut self) -> Outcome {
        let mut errors = Vec::new();
        match Config::load(&self.config_path) {
            Ok(config) => {
                if config != self.resolved.config {
                    info!(file = %self.config_path.display(), "configuration changed");
                    let acme_changed = config.tls != self.resolved.config.tls
                        || config.acme != self.resolved.config.acme;
                    self.resolved = Resolved::probe(config);
                    if acme_changed {
                        // The schedule is on disk after every change: nothing is lost.
                        self.acme = acme_setup(&self.resolved.config, self.http01.as_ref());
                        self.show_acme();
                    }
                }
            }
            Err(invalid) => {
                for d in &invalid.0 {
                    error!(error = %d, "configuration refused; the running one is kept");
                    errors.push(d.to_string());
                }
            }
        }
        self.watch();
        self.logins_setup();
        self.check(true).await;
        let status = self.status.borrow().clone();
        errors.extend(status.accounts.errors.iter().cloned());
        errors.extend(status.certificate.error.iter().cloned());
        Outcome {
            ok: errors.is_empty() && status.healthy(),
            summary: status.summary(),
            errors,
        }
    }

    /// `postmaster renew`: renews when due, or at once with `force`. Without `force`
    /// it asks the CA for renewal information first: the CA may want it renewed now.
    async fn renew(&mut self, force: bool) -> Outcome {
        if self.acme.is_none() {
            let summary =
                "the certificate comes from files another tool writes: renew it with that tool"
                    .to_string();
            return Outcome {
                ok: false,
                summary: summary.clone(),
                errors: vec![summary],
            };
        }
        if !force {
            self.ask_renewal_info().await;
        }
        let next = self
            .acme
            .as_ref()
            .filter(|a| !a.schedule.due(SystemTime::now()))
            .map(|a| a.schedule.next_attempt_time());
        if let Some(next) = next
            && !force
            && !self.renewal_needed()
        {
            let summary = format!(
                "not due: next renewal at {}; --force renews now",
                tls::format_rfc3339(next)
            );
            return Outcome {
                ok: true,
                summary,
                errors: Vec::new(),
            };
        }
        match self.obtain_certificate().await {
            Ok(summary) => Outcome {
                ok: true,
                summary,
                errors: Vec::new(),
            },
            Err(e) => Outcome {
                ok: false,
                summary: format!("renewal failed: {e}"),
                errors: vec![e.to_string()],
            },
        }
    }

    /// Whether a certificate is needed now, whatever the schedule says: none was
    /// obtained yet (a placeholder serves), or the names changed.
    fn renewal_needed(&self) -> bool {
        match certificate::read_source(&self.resolved.config) {
            Err(_) => true,
            Ok((chain, key)) => certificate::prepare(&self.resolved.config, &chain, &key).is_err(),
        }
    }

    async fn renew_if_due(&mut self) {
        if self
            .acme
            .as_ref()
            .is_some_and(|a| a.schedule.ari_due(SystemTime::now()))
        {
            self.ask_renewal_info().await;
        }
        let due = match &self.acme {
            Some(a) => {
                a.schedule.due(SystemTime::now())
                    || (self.renewal_needed() && a.schedule.failures == 0)
            }
            None => false,
        };
        if due {
            let _ = self.obtain_certificate().await;
        }
        self.publish();
    }

    /// Asks the CA when to renew the current certificate (ARI, RFC 9773) and moves
    /// the plan if its window changed. Needs the stored account (for the CA's
    /// directory); registers none. A failure here is logged and asked again later:
    /// the plan already made stands.
    async fn ask_renewal_info(&mut self) {
        let Some(id) = certificate::read_source(&self.resolved.config)
            .ok()
            .and_then(|(chain, _)| acme::certificate_id(&String::from_utf8_lossy(&chain)))
        else {
            return;
        };
        let answer =
            match acme::stored_account(&self.resolved.config.acme, &self.resolved.config.state_dir)
                .await
            {
                Ok(Some(account)) => acme::renewal_window(&account, &id).await,
                Ok(None) => return,
                Err(e) => Err(acme::RenewalInfoUnavailable::Account(e)),
            };
        let Some(acme_state) = self.acme.as_mut() else {
            return;
        };
        let now = SystemTime::now();
        if let Err(e) = &answer {
            warn!(error = %e, "cannot ask the ACME CA when to renew; keeping the current plan");
        }
        let window = answer.as_ref().ok().copied().flatten();
        if acme_state.schedule.record_renewal_info(
            now,
            answer.map_err(|_| ()),
            rand::random::<f64>(),
        ) {
            let w = window.expect("a plan moves only for a window");
            info!(
                window_start = %tls::format_rfc3339(w.start),
                window_end = %tls::format_rfc3339(w.end),
                next_renewal = %tls::format_rfc3339(acme_state.schedule.next_attempt_time()),
                "the ACME CA suggests another renewal window; renewal moved"
            );
        }
        if let Err(e) = acme_state.schedule.store(&self.resolved.config.state_dir) {
            error!(error = %e, "cannot store the renewal schedule");
        }
        self.show_acme();
    }

    /// One ACME attempt. The new pair is written where `tls.cert`/`tls.key` point and
    /// goes through the same validate, install and verify path as a pair another
    /// tool writes.
    async fn obtain_certificate(&mut self) -> Result<String, ObtainError> {
        let Some(acme_state) = self.acme.as_mut() else {
            return Err(ObtainError::NotAcme);
        };
        let now = SystemTime::now();
        let names = self.resolved.config.certificate_names();
        // The certificate this one replaces, named in the order (RFC 9773 §5).
        let replaces = certificate::read_source(&self.resolved.config)
            .ok()
            .and_then(|(chain, _)| acme::certificate_id(&String::from_utf8_lossy(&chain)));
        let attempt = async {
            let responder = acme_state
                .responder
                .as_ref()
                .map_err(|e| acme::AcmeError::NoResponder(e.clone()))?;
            let settings = &self.resolved.config.acme;
            let state_dir = &self.resolved.config.state_dir;
            let mut account = acme::account(settings, state_dir).await?;
            let (chain, key) = match acme::obtain(&account, &names, responder, replaces.as_ref())
                .await
            {
                Err(acme::AcmeError::AccountUnknown { detail }) => {
                    warn!(detail = %detail, "the ACME CA no longer knows the stored account; registering a new one");
                    account = acme::register(settings, state_dir).await?;
                    acme::obtain(&account, &names, responder, None).await?
                }
                other => other?,
            };
            let ari = match acme::certificate_id(&chain) {
                Some(id) => acme::renewal_window(&account, &id).await.unwrap_or_else(|e| {
                    info!(error = %e, "ACME renewal information unavailable: renewing at two thirds of the lifetime");
                    None
                }),
                None => None,
            };
            Ok::<_, acme::AcmeError>((chain, key, ari))
        };
        let result = attempt.await;
        // The CA's rate limit holds the next attempt back at least an hour.
        let at_least = match &result {
            Err(acme::AcmeError::RateLimited { .. }) => RATE_LIMIT_PAUSE,
            _ => Duration::ZERO,
        };
        let outcome = match result.map_err(ObtainError::Acme) {
            Ok((chain, key, ari)) => {
                // What the new pair is, to tell afterwards whether it is what got
                // installed: the old certificate stays installed when this one is not.
                let obtained =
                    certificate::prepare(&self.resolved.config, chain.as_bytes(), key.as_bytes())
                        .map(|(info, _)| info);
                let config = self.resolved.config.clone();
                let written = tokio::task::spawn_blocking(move || {
                    certificate::store_source(&config, chain.as_bytes(), key.as_bytes())
                })
                .await
                .unwrap_or_else(|e| {
                    Err(apply::ApplyError::Io {
                        action: "storing",
                        path: "the new certificate".into(),
                        source: std::io::Error::other(e),
                    })
                });
                match written {
                    Err(e) => Err(ObtainError::Store(e)),
                    Ok(()) => {
                        self.check_certificate(true, false).await;
                        match installed_as_obtained(obtained, self.installed.as_ref()) {
                            Ok(info) => {
                                let window = ari.map(|w| (w.start, w.end));
                                let next = acme::renewal_time(
                                    info.not_before,
                                    info.not_after,
                                    window,
                                    rand::random::<f64>(),
                                );
                                Ok((
                                    format!(
                                        "obtained a certificate for {} valid until {}",
                                        names.join(", "),
                                        tls::format_rfc3339(info.not_after)
                                    ),
                                    next,
                                    ari,
                                ))
                            }
                            Err(e) => Err(e),
                        }
                    }
                }
            }
            Err(e) => Err(e),
        };
        let Some(acme_state) = self.acme.as_mut() else {
            return Err(ObtainError::NotAcme);
        };
        let result = match outcome {
            Ok((summary, next, ari)) => {
                info!(next_renewal = %tls::format_rfc3339(next), renewal_window_from_ca = ari.is_some(), "{summary}");
                acme_state.schedule.record_success(now, next, ari);
                Ok(summary)
            }
            Err(e) => {
                acme_state
                    .schedule
                    .record_failure(now, &e.to_string(), at_least);
                let days = self
                    .installed
                    .as_ref()
                    .map(|i| i.days_left(SystemTime::now()));
                error!(error = %e, days_left = ?days, retry_at = %tls::format_rfc3339(acme_state.schedule.next_attempt_time()), "obtaining a certificate failed; the current one keeps being served");
                Err(e)
            }
        };
        if let Err(e) = acme_state.schedule.store(&self.resolved.config.state_dir) {
            error!(error = %e, "cannot store the renewal schedule");
        }
        self.show_acme();
        result
    }

    fn show_acme(&mut self) {
        let status = self.acme.as_ref().map(|a| crate::status::AcmeStatus {
            directory: self.resolved.config.acme.directory.clone(),
            last_attempt: a.schedule.last_attempt.map(|at| Event {
                at: tls::format_rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(at)),
                ok: a.schedule.failures == 0,
                detail: a.schedule.last_result.clone().unwrap_or_default(),
            }),
            next_attempt: tls::format_rfc3339(a.schedule.next_attempt_time()),
            failures: a.schedule.failures,
            renewal_window: a.schedule.ari_window.map(|(start, end)| {
                let at = |secs: u64| {
                    tls::format_rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
                };
                [at(start), at(end)]
            }),
        });
        self.status.send_modify(|s| s.acme = status);
    }

    async fn check_accounts(&mut self, force: bool) {
        let path = self.resolved.config.accounts_file.clone();
        // Hashed in pieces: an unchanged file is never held whole.
        let digest = match pipeline::accounts_digest(&path) {
            Ok(digest) => digest,
            Err(e) => {
                let message = format!("{}: cannot read the accounts file: {e}", path.display());
                self.accounts_refused(vec![message]);
                self.accounts_seen = None;
                return;
            }
        };
        if !force && self.accounts_seen == Some(digest) {
            return;
        }
        // What is seen is what was validated: the file read again for it.
        let (accounts, validated) = pipeline::read_and_parse_accounts(&self.resolved.config);
        self.accounts_seen = validated;
        let accounts = match accounts {
            Ok(a) => a,
            Err(invalid) => {
                // Only a change of the file can mend it: no timed retry. A file that
                // could not be read again since its digest (no digest of what was
                // validated) is a failed read, as above: a pending retry stays.
                if validated.is_some() {
                    self.accounts_retry = None;
                }
                self.accounts_refused(invalid.0.iter().map(|d| d.to_string()).collect());
                return;
            }
        };
        let resolved = self.resolved.clone();
        let counts = (
            accounts.mailboxes.len(),
            accounts.aliases.len(),
            accounts.catch_all.len(),
        );
        // Paired with "accounts applied" (or "applying the accounts failed"): a
        // daemon that stopped between the two stopped during an apply.
        info!(file = %path.display(), "applying the accounts");
        let applied =
            tokio::task::spawn_blocking(move || pipeline::apply_accounts(&resolved, &accounts))
                .await
                .map_err(AccountsNotApplied::Interrupted)
                .and_then(|r| r.map_err(AccountsNotApplied::Apply));
        match applied {
            Ok(report) => {
                let written: Vec<String> = report
                    .written
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                if report.changed() {
                    info!(file = %path.display(), mailboxes = counts.0, aliases = counts.1, written = ?written, "accounts applied");
                } else {
                    info!(file = %path.display(), "accounts unchanged: nothing written");
                }
                if let Some(retry) = self.accounts_retry.take() {
                    info!(
                        failed_attempts = retry.failures,
                        "accounts applied after earlier attempts failed"
                    );
                }
                self.status.send_modify(|s| {
                    let a = &mut s.accounts;
                    (a.mailboxes, a.alias_addresses, a.catch_alls) = counts;
                    a.errors.clear();
                    a.apply_failed = false;
                    if report.changed() || a.applied.is_none() {
                        a.applied = Some(event(true, format!("{} file(s) written", written.len())));
                    }
                });
            }
            Err(e) => {
                // Not marked as seen: the next look tries again, and one comes soon
                // even if nothing else happens.
                self.accounts_seen = None;
                let retry_in = Retry::fail(
                    &mut self.accounts_retry,
                    ACCOUNTS_RETRY_FIRST,
                    ACCOUNTS_RETRY_MOST,
                );
                error!(error = %e, ?retry_in, "applying the accounts failed; the last applied accounts keep being served");
                self.status.send_modify(|s| {
                    s.accounts.errors = vec![e.to_string()];
                    s.accounts.apply_failed = true;
                });
            }
        }
    }

    fn accounts_refused(&mut self, errors: Vec<String>) {
        for e in &errors {
            error!(error = %e, "accounts file refused; the last good accounts keep being served");
        }
        self.status.send_modify(|s| {
            s.accounts.errors = errors;
            s.accounts.apply_failed = false;
        });
    }

    /// Looks at the source pair and acts on what [`certificate::decide`] says.
    /// `quick` is a look right after a write completed: a pair whose other half may
    /// still be on its way is then only looked at again a little later, not
    /// reported, so that a pair written as two files is installed the moment its
    /// second half lands.
    async fn check_certificate(&mut self, force: bool, quick: bool) {
        if force {
            // Someone may have removed or replaced the installed pair behind our back.
            self.installed = certificate::installed(&self.resolved.config);
        }
        let read = certificate::read_source(&self.resolved.config);
        let digest: Option<[u8; 32]> = read.as_ref().ok().map(|(chain, key)| {
            Sha256::new()
                .chain_update(chain)
                .chain_update(key)
                .finalize()
                .into()
        });
        if digest.is_some() && !force && self.pair_seen == digest {
            self.refresh_days_left();
            return;
        }
        match certificate::decide(&self.resolved.config, read, self.installed.as_ref()) {
            Decision::AwaitingAcme => self.pair_seen = None,
            Decision::Unchanged(info) => {
                self.pair_seen = digest;
                self.status.send_modify(|s| s.certificate.error = None);
                self.show_certificate(&info, None);
            }
            Decision::Install(info, pair) => {
                self.pair_seen = digest;
                self.status.send_modify(|s| s.certificate.error = None);
                self.install(info, pair).await;
            }
            Decision::Placeholder(refusal) | Decision::Keep(refusal) => {
                if quick && refusal.may_be_in_progress {
                    // Not marked as seen: the second look is a full one.
                    self.settle_at = Some(Instant::now() + DEBOUNCE);
                    return;
                }
                // Look once more a little later, and report what is wrong meanwhile.
                // The same bytes are not looked at again after that, so a pair that
                // stays broken is reported once, not every few seconds.
                if refusal.may_be_in_progress && digest.is_some() && self.settled != digest {
                    self.settle_at = Some(Instant::now() + SETTLE);
                    self.settled = digest;
                }
                self.pair_seen = digest;
                self.certificate_refused(refusal.why);
                if self.installed.is_none() {
                    self.install_placeholder().await;
                }
            }
        }
    }

    async fn install_placeholder(&mut self) {
        match certificate::placeholder(&self.resolved.config) {
            Ok((info, pair)) => {
                warn!(
                    "installing a self-signed placeholder certificate until a valid one is available"
                );
                self.install(info, pair).await;
            }
            Err(e) => error!(error = %e, "the self-signed placeholder is invalid"),
        }
    }

    /// Installs a validated pair for postfix and dovecot, makes both serve it (in
    /// the order [`serve`] explains), and checks that the new certificate is what
    /// clients get.
    async fn install(&mut self, info: CertInfo, pair: Vec<u8>) {
        let config = self.resolved.config.clone();
        let written =
            tokio::task::spawn_blocking(move || certificate::install(&config, &pair)).await;
        let failed = match written {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(certificate::InstallFailed::Write(e)),
            Err(e) => Some(certificate::InstallFailed::Interrupted(e)),
        };
        if let Some(e) = failed {
            self.certificate_refused(e);
            return;
        }
        info!(subject = %info.subject, names = ?info.names, fingerprint = %info.sha256_fingerprint, "certificate installed");
        self.show_certificate(&info, Some(event(true, "installed".into())));
        self.installed = Some(info.clone());
        self.publish();
        self.serving_retry = None;
        self.serve_installed(&info).await;
    }

    /// Serves the installed certificate again after serving it failed.
    async fn serve_again(&mut self) {
        let Some(info) = self.installed.clone() else {
            self.serving_retry = None;
            return;
        };
        let failures = self.serving_retry.map_or(0, |r| r.failures);
        info!(fingerprint = %info.sha256_fingerprint, failed_attempts = failures, "serving the installed certificate again");
        self.serve_installed(&info).await;
    }

    /// Makes postfix and the TLS front serve `info` (installed already), checks what the
    /// ports serve, and schedules another go if they do not serve it: a reload that
    /// failed must not leave the old certificate served until the next change.
    async fn serve_installed(&mut self, info: &CertInfo) {
        let started = Instant::now();
        let outcome = serve::serve(&mut LiveHost { daemon: self, info }).await;
        let verified = match outcome {
            serve::Outcome::NothingRunning => {
                self.serving_retry = None;
                return;
            }
            serve::Outcome::Served { postfix_reloaded } => {
                self.serving_retry = None;
                let took = started.elapsed();
                info!(
                    took_ms = took.as_millis() as u64,
                    postfix_reloaded, "new certificate served on every port"
                );
                event(
                    true,
                    format!("served on every port after {} ms", took.as_millis()),
                )
            }
            serve::Outcome::NotServed { failures, .. } => {
                let detail: Vec<String> = failures
                    .iter()
                    .map(|f| format!("port {}: {}", f.port, f.why))
                    .collect();
                let retry_in = Retry::fail(
                    &mut self.serving_retry,
                    SERVING_RETRY_FIRST,
                    SERVING_RETRY_MOST,
                );
                error!(failures = ?detail, ?retry_in, "the new certificate is not served everywhere; trying again later");
                event(false, detail.join("; "))
            }
        };
        self.status
            .send_modify(|s| s.certificate.verified = Some(verified));
    }

    /// Reloads `unit` if it runs (retrying with back-off), and records the outcome.
    async fn reload_unit(&mut self, unit: &str) -> ReloadResult {
        let Some(systemd) = self.systemd.clone() else {
            self.status.send_modify(|s| {
                s.last_reload = Some(event(false, "no connection to systemd".into()))
            });
            return ReloadResult::Failed(serve::ReloadFailed::NoSystemd);
        };
        let state = systemd.unit_state(unit).await;
        if state.active_state != "active" && state.active_state != "reloading" {
            // It reads the new files when it starts; nothing to reload.
            info!(unit = %unit, state = %state.active_state, "not running; not reloaded");
            return ReloadResult::NotRunning;
        }
        let mut attempt = 0;
        let (outcome, detail) = loop {
            attempt += 1;
            match systemd.reload(unit, RELOAD_TIMEOUT).await {
                Ok(()) => {
                    info!(unit = %unit, main_pid = state.main_pid, "reloaded");
                    break (ReloadResult::Done, format!("reloaded {unit}"));
                }
                Err(e) if attempt < RELOAD_ATTEMPTS => {
                    let pause = Duration::from_secs(1 << attempt);
                    warn!(unit = %unit, error = %e, attempt, retry_in = ?pause, "reload failed; retrying");
                    tokio::time::sleep(pause).await;
                }
                Err(e) => {
                    error!(unit = %unit, error = %e, "reload failed");
                    let detail = format!("{unit}: {e}");
                    let failed = serve::ReloadFailed::Systemd(std::sync::Arc::new(e));
                    break (ReloadResult::Failed(failed), detail);
                }
            }
        };
        let ok = outcome == ReloadResult::Done;
        self.status
            .send_modify(|s| s.last_reload = Some(event(ok, detail)));
        outcome
    }

    /// Whether `unit` runs; without systemd to ask, assumed so (the TLS check tells).
    async fn running(&self, unit: &str) -> bool {
        match &self.systemd {
            Some(systemd) => matches!(
                systemd.unit_state(unit).await.active_state.as_str(),
                "active" | "reloading"
            ),
            None => true,
        }
    }

    fn certificate_refused(&mut self, why: impl std::fmt::Display) {
        error!(error = %why, "certificate pair refused; the current certificate keeps being served");
        self.status
            .send_modify(|s| s.certificate.error = Some(why.to_string()));
    }

    fn show_certificate(&mut self, info: &CertInfo, installed: Option<Event>) {
        let source = match self.resolved.config.tls.source {
            TlsSource::Acme => "acme",
            TlsSource::Files => "files",
        };
        self.status.send_modify(|s| {
            let c = &mut s.certificate;
            c.source = source.into();
            c.subject = info.subject.clone();
            c.names = info.names.clone();
            c.not_after = tls::format_rfc3339(info.not_after);
            c.days_left = info.days_left(SystemTime::now());
            c.fingerprint = info.sha256_fingerprint.clone();
            if installed.is_some() {
                c.installed = installed;
                c.verified = None;
            }
        });
    }

    fn refresh_days_left(&mut self) {
        if let Some(info) = &self.installed {
            let days = info.days_left(SystemTime::now());
            self.status.send_if_modified(|s| {
                std::mem::replace(&mut s.certificate.days_left, days) != days
            });
        }
    }

    /// Sends the status to systemd when its line changed.
    fn publish(&mut self) {
        let config = &self.resolved.config;
        self.status.send_if_modified(|s| describe_host(s, config));
        let line = self.status.borrow().summary();
        notify(&[sd_notify::NotifyState::Status(&line)]);
    }
}

/// The daemon's host for the serving sequence: systemd over D-Bus, the generated
/// table on disk, and real TLS handshakes on the local ports.
struct LiveHost<'d> {
    daemon: &'d mut Daemon,
    /// The certificate being served.
    info: &'d CertInfo,
}

impl LiveHost<'_> {
    fn unit(&self, server: Server) -> String {
        let units = &self.daemon.resolved.config.units;
        match server {
            Server::Front => units.tls_front.clone(),
            Server::Postfix => units.postfix.clone(),
        }
    }
}

impl serve::Host for LiveHost<'_> {
    async fn reload(&mut self, server: Server) -> ReloadResult {
        let unit = self.unit(server);
        self.daemon.reload_unit(&unit).await
    }

    async fn is_running(&mut self, server: Server) -> bool {
        let unit = self.unit(server);
        self.daemon.running(&unit).await
    }

    async fn republish(&mut self) -> Result<(), serve::RepublishError> {
        let table = self
            .daemon
            .resolved
            .config
            .generated_dir
            .join(render::paths::SENDER_LOGIN);
        let map_type = self.daemon.resolved.map_type;
        let republished =
            tokio::task::spawn_blocking(move || apply::republish_table(&table, map_type))
                .await
                .map_err(|e| serve::RepublishError::Interrupted(std::sync::Arc::new(e)))
                .and_then(|r| r.map_err(|e| serve::RepublishError::Table(std::sync::Arc::new(e))));
        match &republished {
            Ok(()) => info!(
                "postfix's smtpd processes start over for the new certificate (sender_login table republished)"
            ),
            Err(e) => {
                warn!(error = %e, "could not make postfix's smtpd start over by itself; reloading postfix")
            }
        }
        republished
    }

    async fn await_served(
        &mut self,
        server: Server,
        deadline: Duration,
    ) -> Result<(), Vec<serve::PortFailure>> {
        let addrs: Vec<_> = TLS_PORTS
            .iter()
            .filter(|(port, _)| server.ports().contains(port))
            .map(|(port, mode)| (std::net::SocketAddr::from(([127, 0, 0, 1], *port)), *mode))
            .collect();
        let served = probe::wait_until_served(
            &addrs,
            &self.daemon.resolved.config.host_name,
            &self.info.sha256_fingerprint,
            deadline,
        )
        .await;
        let late = served.err().map(|late| {
            late.into_iter()
                .map(|(addr, why)| serve::PortFailure {
                    port: addr.port(),
                    why: serve::NotServed::Seen(why),
                })
                .collect::<Vec<_>>()
        });
        if let Some(late) = &late
            && server == Server::Postfix
            && deadline == serve::POSTFIX_GRACE
        {
            let detail: Vec<String> = late
                .iter()
                .map(|f| format!("port {}: {}", f.port, f.why))
                .collect();
            warn!(failures = ?detail, grace = ?deadline, "postfix does not serve the new certificate yet; reloading it");
        }
        late.map_or(Ok(()), Err)
    }
}

/// Puts what the configuration says about the host into the status: its names,
/// the accounts file, and the units whose state the D-Bus status reports (a
/// reload may change them). Returns whether anything changed.
fn describe_host(s: &mut Status, config: &Config) -> bool {
    let mut units = vec![
        &config.units.postfix,
        &config.units.dovecot,
        &config.units.tls_front,
    ];
    if config.dkim.enabled || config.inbound.enabled {
        units.push(&config.units.rspamd);
    }
    if config.inbound.learning {
        units.push(&config.units.valkey);
    }
    let local_resolver = config.inbound.resolver == crate::config::Resolver::Local;
    if config.inbound.enabled && local_resolver {
        units.push(&config.units.resolver);
    }
    let inbound = config
        .inbound
        .enabled
        .then(|| crate::status::InboundStatus {
            checker_unit: config.units.rspamd.clone(),
            bayes_unit: config.inbound.learning.then(|| config.units.valkey.clone()),
            resolver_unit: local_resolver.then(|| config.units.resolver.clone()),
        });
    let units_changed = s.units.len() != units.len()
        || s.units.iter().zip(&units).any(|(u, name)| &u.name != *name);
    let inbound_changed = s.inbound != inbound;
    s.inbound = inbound;
    let changed = units_changed
        || inbound_changed
        || s.host_name != config.host_name
        || s.domains != config.domains
        || s.accounts.file != config.accounts_file.display().to_string();
    s.host_name = config.host_name.clone();
    s.domains = config.domains.clone();
    s.accounts.file = config.accounts_file.display().to_string();
    if units_changed {
        s.units = units
            .iter()
            .map(|name| crate::systemd::UnitState {
                name: name.to_string(),
                active_state: "unknown".into(),
                main_pid: 0,
            })
            .collect();
    }
    changed
}

/// Whether an ACME attempt ended with its own certificate installed: the one that
/// was installed before stays so when installing the new one fails, and counting
/// that as a success would plan the next renewal from the old certificate's dates.
fn installed_as_obtained(
    obtained: Result<CertInfo, tls::PairProblem>,
    installed: Option<&CertInfo>,
) -> Result<&CertInfo, ObtainError> {
    let obtained = obtained.map_err(ObtainError::Misfit)?.sha256_fingerprint;
    match installed {
        Some(info) if info.sha256_fingerprint == obtained => Ok(info),
        still => Err(ObtainError::NotInstalled {
            obtained,
            still_served: still.map(|i| i.sha256_fingerprint.clone()),
        }),
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("{0}")]
    Config(crate::diag::Invalid),
    #[error("cannot watch files: {0}")]
    Watch(#[source] notify::Error),
    #[error("cannot handle {signal}: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
}

/// Why an ACME attempt did not end with its certificate installed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ObtainError {
    #[error(
        "the certificate comes from files another tool writes (tls.source = \"files\"), not from ACME"
    )]
    NotAcme,
    #[error(transparent)]
    Acme(acme::AcmeError),
    #[error("storing the new certificate failed: {0}")]
    Store(#[source] apply::ApplyError),
    #[error("the CA's certificate does not fit this host: {0}")]
    Misfit(tls::PairProblem),
    #[error("the new certificate ({obtained}) was not installed{}", still_served.as_ref().map(|f| format!("; {f} is still served")).unwrap_or_default())]
    NotInstalled {
        obtained: String,
        still_served: Option<String>,
    },
}

/// Why the accounts were not applied (the last applied ones keep being served, and
/// the daemon tries again); the status shows this text.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AccountsNotApplied {
    /// Writing or compiling a generated file failed: apply's text, naming the file.
    #[error(transparent)]
    Apply(apply::ApplyError),
    /// The blocking task that applies them panicked or was cancelled.
    #[error("the apply task failed: {0}")]
    Interrupted(#[source] tokio::task::JoinError),
}

/// The file events that are looked at together: which inputs they touched, and
/// whether the last of them left its file complete.
#[derive(Debug, PartialEq, Eq)]
struct Burst {
    accounts: bool,
    certificate: bool,
    /// The last event left its file complete: see `check_certificate`.
    quick: bool,
}

impl Burst {
    /// Coalesces `first` and what follows it into one look at each input touched.
    /// A burst that so far only completed files (renamed into place, or closed by
    /// their writer) takes only what is already queued; one with a write still
    /// under way waits for quiet ([`DEBOUNCE`]), at most 2 s in all.
    async fn collect(first: Change, changes: &mut mpsc::UnboundedReceiver<Change>) -> Burst {
        let mut burst = Burst {
            accounts: first.input == Input::Accounts,
            certificate: first.input == Input::Certificate,
            quick: first.complete,
        };
        let mut quiet = quiet_after(first);
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Ok(Some(more)) = tokio::time::timeout(quiet, changes.recv()).await {
            burst.accounts |= more.input == Input::Accounts;
            burst.certificate |= more.input == Input::Certificate;
            burst.quick = more.complete;
            quiet = quiet_after(more);
            if Instant::now() > deadline {
                break;
            }
        }
        burst
    }
}

/// How long to wait for more events after `change`: a file that was completed
/// (renamed into place, or closed by its writer) is looked at at once; a
/// write still under way may be followed by more. A certificate pair is two files,
/// but its look after a completed write waits for the second half by itself (see
/// `check_certificate`), so it needs no longer wait here.
fn quiet_after(change: Change) -> Duration {
    if change.complete { QUICK } else { DEBOUNCE }
}

fn event(ok: bool, detail: String) -> Event {
    Event {
        at: tls::format_rfc3339(SystemTime::now()),
        ok,
        detail,
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

/// The uids of the users named in `[logins] policy_clients`, and the names that
/// are no user here.
fn resolve_policy_clients(names: &[String]) -> (Vec<u32>, Vec<String>) {
    let mut uids = Vec::new();
    let mut unknown = Vec::new();
    for name in names {
        match crate::apply::user_id(name) {
            Ok(Some(uid)) => uids.push(uid),
            _ => unknown.push(format!("`{name}`")),
        }
    }
    (uids, unknown)
}

/// ACME's parts that live as long as the daemon: the http-01 responder (the
/// listening socket systemd hands over as `acme-http`, or the webroot) and the
/// schedule from an earlier run.
/// Starts the http-01 server on the `acme-http` socket systemd passed, if any.
fn take_http01_socket() -> Option<Result<acme::Http01Server, acme::NoResponder>> {
    let fds = sd_notify::listen_fds_with_names()
        .map(|fds| fds.collect::<Vec<_>>())
        .unwrap_or_default();
    let (fd, _) = fds.into_iter().find(|(_, name)| name == "acme-http")?;
    // SAFETY: systemd passed this descriptor to us alone, as a listening socket
    // (postmaster-acme.socket); nothing else owns it, and it is taken only here, once.
    let listener = unsafe { <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    Some(
        acme::Http01Server::start(listener)
            .map_err(|e| acme::NoResponder::SocketUnusable(std::sync::Arc::new(e))),
    )
}

fn acme_setup(
    config: &Config,
    http01: Option<&Result<acme::Http01Server, acme::NoResponder>>,
) -> Option<Acme> {
    if config.tls.source != TlsSource::Acme {
        return None;
    }
    let responder = match config.acme.challenge {
        crate::config::Challenge::Webroot => match &config.acme.webroot {
            Some(dir) => Ok(acme::Responder::Webroot(dir.clone())),
            None => Err(acme::NoResponder::WebrootUnset),
        },
        crate::config::Challenge::Http01 => match http01 {
            Some(Ok(server)) => Ok(acme::Responder::Listener(server.clone())),
            Some(Err(e)) => Err(e.clone()),
            None => Err(acme::NoResponder::NoSocket),
        },
    };
    if let Err(e) = &responder {
        error!(error = %e, "http-01 challenges cannot be answered");
    }
    let schedule = match acme::Schedule::load(&config.state_dir) {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => {
            error!(error = %e, "the renewal schedule is unreadable; starting a new one");
            acme::Schedule::default()
        }
    };
    Some(Acme {
        responder,
        schedule,
    })
}

/// What the D-Bus interface is made of; kept to serve it again on a new connection.
struct SupervisorParts {
    requests: mpsc::Sender<Request>,
    status: watch::Receiver<Status>,
    systemd: watch::Receiver<Option<Systemd>>,
    logins: crate::logins::Shared,
}

/// The daemon's place on the system bus. The bus can go away under a running
/// daemon (`systemctl restart dbus`, a crash of the broker): the connection then
/// closes, and everything on it (systemd's client and its subscription, the
/// served interface, the bus name) is set up again on a new connection, piece by
/// piece as each becomes possible.
struct BusLink {
    connection: Option<zbus::Connection>,
    object_served: bool,
    name_owned: bool,
    /// systemd's client on the current connection, shared with the interface.
    systemd: watch::Sender<Option<Systemd>>,
    /// `None` until the first look is done: the name is offered only after it.
    supervisor: Option<SupervisorParts>,
    /// The last problem reported, so that a bus that stays away is reported once,
    /// not every second.
    trouble: Option<String>,
}

impl BusLink {
    fn systemd(&self) -> Option<Systemd> {
        self.systemd.borrow().clone()
    }

    /// Whether everything is in place (nothing left to retry).
    fn complete(&self) -> bool {
        self.connection.is_some()
            && self.systemd.borrow().is_some()
            && (self.supervisor.is_none() || (self.object_served && self.name_owned))
    }

    fn report(&mut self, problem: String) {
        if self.trouble.as_ref() != Some(&problem) {
            error!(error = %problem, "system bus: retrying every {BUS_RETRY:?}");
            self.trouble = Some(problem);
        }
    }

    /// Connects to the bus and to systemd on it, as far as that is possible now.
    async fn connect(&mut self) {
        if self.connection.as_ref().is_some_and(|c| c.is_closed()) {
            self.lost();
        }
        let connection = match &self.connection {
            Some(c) => c.clone(),
            None => match zbus::Connection::system().await {
                Ok(c) => {
                    if self.trouble.is_some() {
                        info!("connected to the system bus again");
                    }
                    self.connection = Some(c.clone());
                    c
                }
                Err(e) => {
                    self.report(format!(
                        "cannot connect to the system bus: {e}; no reloads, no D-Bus interface"
                    ));
                    return;
                }
            },
        };
        if self.systemd.borrow().is_none() {
            match Systemd::new(connection).await {
                Ok(s) => {
                    self.systemd.send_replace(Some(s));
                }
                Err(e) => self.report(format!(
                    "cannot talk to systemd: {e}; postfix and dovecot cannot be reloaded"
                )),
            }
        }
        if self.complete() {
            self.trouble = None;
        }
    }

    /// Serves the interface and owns its name on the current connection.
    async fn offer(&mut self) {
        let (Some(connection), Some(parts)) = (&self.connection, &self.supervisor) else {
            return;
        };
        let connection = connection.clone();
        if !self.object_served {
            let supervisor = bus::Supervisor {
                requests: parts.requests.clone(),
                status: parts.status.clone(),
                systemd: parts.systemd.clone(),
                logins: parts.logins.clone(),
            };
            match connection
                .object_server()
                .at(bus::OBJECT_PATH, supervisor)
                .await
            {
                Ok(_) => self.object_served = true,
                Err(e) => {
                    self.report(format!("cannot serve the D-Bus interface: {e}"));
                    return;
                }
            }
        }
        if !self.name_owned {
            self.name_owned = own_bus_name(&connection).await;
        }
        if self.complete() {
            self.trouble = None;
        }
    }

    /// The connection closed: nothing on it works any more.
    fn lost(&mut self) {
        warn!("the connection to the system bus was lost (was dbus restarted?); reconnecting");
        self.connection = None;
        self.object_served = false;
        self.name_owned = false;
        self.systemd.send_replace(None);
        self.trouble = Some("lost".into());
    }
}

/// A step that failed, to be tried again after a pause that doubles with each
/// failure in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retry {
    at: Instant,
    /// Failures in a row so far.
    failures: u32,
}

impl Retry {
    /// The next try after one more failure than `previous` counted.
    fn after_failure(
        previous: Option<Retry>,
        first: Duration,
        most: Duration,
        now: Instant,
    ) -> Retry {
        let failures = previous.map_or(1, |r| r.failures.saturating_add(1));
        Retry {
            at: now + pause(failures, first, most),
            failures,
        }
    }

    /// Counts one more failure in `slot` and sets its next try; returns the pause.
    fn fail(slot: &mut Option<Retry>, first: Duration, most: Duration) -> Duration {
        let now = Instant::now();
        let next = Retry::after_failure(*slot, first, most, now);
        *slot = Some(next);
        next.at - now
    }

    /// Resolves when `retry` is due; never without one.
    async fn due(retry: Option<Retry>) {
        match retry {
            Some(r) => tokio::time::sleep_until(r.at.into()).await,
            None => std::future::pending().await,
        }
    }
}

/// The pause after `failures` failures in a row: `first`, doubling, at most `most`.
fn pause(failures: u32, first: Duration, most: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    first.saturating_mul(factor).min(most)
}

async fn own_bus_name(connection: &zbus::Connection) -> bool {
    match connection.request_name(bus::BUS_NAME).await {
        Ok(()) => {
            info!(name = bus::BUS_NAME, "D-Bus interface offered");
            true
        }
        Err(e) => {
            error!(error = %e, name = bus::BUS_NAME, "cannot own the D-Bus name (is the D-Bus policy installed?); retrying");
            false
        }
    }
}

/// The longest a single step of the loop may take before the watchdog stops being
/// fed: two units, each reloaded up to three times with back-off, plus the check of
/// what is served.
const STEP_LIMIT: Duration = Duration::from_secs(180);

fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    // +1: 0 means idle.
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Marks the loop as working on a step from now.
fn busy(busy_since: &std::sync::atomic::AtomicU64) {
    busy_since.store(monotonic_ms(), std::sync::atomic::Ordering::Relaxed);
}

async fn feed_watchdog(every: Duration, busy_since: std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let mut tick = tokio::time::interval(every);
    let mut complained = false;
    loop {
        tick.tick().await;
        let since = busy_since.load(std::sync::atomic::Ordering::Relaxed);
        if since == 0 || monotonic_ms().saturating_sub(since) < STEP_LIMIT.as_millis() as u64 {
            notify(&[sd_notify::NotifyState::Watchdog]);
            complained = false;
        } else if !complained {
            error!(limit = ?STEP_LIMIT, "a step has been running too long; no longer feeding the watchdog");
            complained = true;
        }
    }
}

/// Half the watchdog timeout systemd set, if it set one.
fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Source;

    fn config(extra: &str) -> Config {
        let text =
            format!("host_name = \"mail.example.org\"\ndomains = [\"example.org\"]\n{extra}");
        Config::parse(&Source::new("/etc/postmaster/config.toml", &text))
            .expect("a valid configuration")
    }

    fn info(fingerprint: &str) -> CertInfo {
        CertInfo {
            subject: String::new(),
            issuer: "CN=Pebble Intermediate CA".into(),
            names: vec!["mail.example.org".into()],
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(90 * 86_400),
            sha256_fingerprint: fingerprint.into(),
            chain_len: 2,
        }
    }

    #[test]
    fn an_acme_attempt_succeeds_only_when_its_own_certificate_is_installed() {
        let new = info("11");
        assert_eq!(
            installed_as_obtained(Ok(new.clone()), Some(&new)).unwrap(),
            &new
        );
        // Installing the new pair failed: the old one is still installed.
        let old = info("00");
        let text = |r: Result<&CertInfo, ObtainError>| r.unwrap_err().to_string();
        assert_eq!(
            text(installed_as_obtained(Ok(new.clone()), Some(&old))),
            "the new certificate (11) was not installed; 00 is still served"
        );
        assert_eq!(
            text(installed_as_obtained(Ok(new), None)),
            "the new certificate (11) was not installed"
        );
        assert!(
            text(installed_as_obtained(
                Err(tls::PairProblem::KeyMismatch),
                Some(&old)
            ))
            .starts_with("the CA's certificate does not fit this host: ")
        );
    }

    #[test]
    fn error_messages_say_what_happened() {
        assert_eq!(
            ObtainError::NotAcme.to_string(),
            "the certificate comes from files another tool writes (tls.source = \"files\"), not from ACME"
        );
        let full = |path: &str| apply::ApplyError::Io {
            action: "writing",
            path: path.into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        assert_eq!(
            ObtainError::Store(full("/var/lib/postmaster/tls/key.pem")).to_string(),
            "storing the new certificate failed: writing /var/lib/postmaster/tls/key.pem: No space left on device (os error 28)"
        );
        assert_eq!(
            AccountsNotApplied::Apply(full("/var/lib/postmaster/postfix/virtual")).to_string(),
            "writing /var/lib/postmaster/postfix/virtual: No space left on device (os error 28)"
        );
        let signal = StartError::Signal {
            signal: "SIGHUP",
            source: std::io::Error::from_raw_os_error(1),
        };
        assert_eq!(
            signal.to_string(),
            "cannot handle SIGHUP: Operation not permitted (os error 1)"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_interrupted_apply_says_so() {
        let task = tokio::spawn(std::future::pending::<()>());
        task.abort();
        let cancelled = task.await.unwrap_err();
        let text = format!("the apply task failed: {cancelled}");
        assert!(text.ends_with("was cancelled"), "{text}");
        assert_eq!(AccountsNotApplied::Interrupted(cancelled).to_string(), text);
    }

    /// Describes the host with `extra` configuration; the units the status then
    /// reports. Fails when that changed nothing.
    #[test]
    fn the_status_follows_the_units_a_reload_configures() {
        let mut status = Status::default();
        // Describes the host as configured by `extra`; the units' names, whether
        // anything changed.
        let mut describe = |extra: &str| {
            let changed = describe_host(&mut status, &config(extra));
            let names: Vec<String> = status.units.iter().map(|u| u.name.clone()).collect();
            (names, changed, status.inbound.clone())
        };
        let all = [
            "postfix.service",
            "dovecot.service",
            "postmaster-tls.service",
            "rspamd.service",
            "valkey-server.service",
            "unbound.service",
        ];
        assert_eq!(describe("").0, all);
        assert!(!describe("").1, "the same configuration changes nothing");

        let (names, changed, _) = describe(
            "[systemd]\npostfix_unit = \"postfix@-.service\"\nvalkey_unit = \"redis-rspamd.service\"\n",
        );
        assert!(changed);
        assert_eq!(
            names,
            [
                "postfix@-.service",
                "dovecot.service",
                "postmaster-tls.service",
                "rspamd.service",
                "redis-rspamd.service",
                "unbound.service"
            ]
        );

        // Without DKIM signing and inbound checks rspamd is none of the mail
        // host's business, nor is unbound; valkey only matters while Junk teaches
        // Bayes.
        let (names, _, inbound) = describe("[dkim]\nenabled = false\n[inbound]\nenabled = false\n");
        assert_eq!(
            names,
            [
                "postfix.service",
                "dovecot.service",
                "postmaster-tls.service"
            ]
        );
        assert_eq!(inbound, None);
        assert_eq!(describe("[dkim]\nenabled = false\n").0, all);
        let (names, _, inbound) = describe("[inbound]\nlearning = false\n");
        assert_eq!(
            names,
            [
                "postfix.service",
                "dovecot.service",
                "postmaster-tls.service",
                "rspamd.service",
                "unbound.service"
            ]
        );
        assert_eq!(
            inbound,
            Some(crate::status::InboundStatus {
                checker_unit: "rspamd.service".into(),
                bayes_unit: None,
                resolver_unit: Some("unbound.service".into()),
            })
        );
        // The checks with the system's resolver: unbound is none of the mail
        // host's business; rspamd still checks and signs.
        let (names, _, inbound) = describe("[inbound]\nresolver = \"system\"\n");
        assert_eq!(names, all[..5]);
        assert_eq!(inbound.unwrap().resolver_unit, None);
    }

    fn change(input: Input, complete: bool) -> Change {
        Change { input, complete }
    }

    /// Paused time since `started` is `expected`, give or take the timer's
    /// millisecond.
    fn assert_waited(started: tokio::time::Instant, expected: Duration) {
        let waited = started.elapsed();
        assert!(
            waited >= expected && waited <= expected + Duration::from_millis(1),
            "waited {waited:?}, not {expected:?}"
        );
    }

    /// A file renamed into place is looked at with no wait at all: any wait here is
    /// part of every new login's. Events already queued with it are taken along.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_completed_file_is_looked_at_at_once_with_what_is_queued() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let started = tokio::time::Instant::now();
        let burst = Burst::collect(change(Input::Accounts, true), &mut rx).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        let expected = Burst {
            accounts: true,
            certificate: false,
            quick: true,
        };
        assert_eq!(burst, expected);

        // certbot's two renames (key, then chain) arrive together: one look.
        tx.send(change(Input::Certificate, true)).unwrap();
        let burst = Burst::collect(change(Input::Certificate, true), &mut rx).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(burst.certificate && burst.quick && !burst.accounts);
        assert!(rx.try_recv().is_err(), "the queued event was taken along");
    }

    /// A write under way (data written, a file created empty) waits for quiet; a
    /// completing event that follows ends the wait at once.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_write_under_way_waits_for_quiet_or_its_completion() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let started = tokio::time::Instant::now();
        let burst = Burst::collect(change(Input::Accounts, false), &mut rx).await;
        assert_waited(started, DEBOUNCE);
        assert!(burst.accounts && !burst.quick);

        let started = tokio::time::Instant::now();
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.send(change(Input::Accounts, true)).unwrap();
            tx
        });
        let burst = Burst::collect(change(Input::Accounts, false), &mut rx).await;
        assert_waited(started, Duration::from_millis(100));
        assert!(burst.accounts && burst.quick);
        drop(later.await.unwrap());
    }

    #[test]
    fn retries_back_off_doubling_up_to_a_limit() {
        let (first, most) = (Duration::from_secs(1), Duration::from_secs(30));
        let pauses: Vec<u64> = (1..=7).map(|n| pause(n, first, most).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30]);
        // However many failures: no overflow, still the limit.
        assert_eq!(pause(40, first, most), most);
        assert_eq!(pause(u32::MAX, first, most), most);
    }

    #[test]
    fn a_retry_counts_the_failures_in_a_row() {
        let now = Instant::now();
        let (first, most) = (Duration::from_secs(5), Duration::from_secs(300));
        let one = Retry::after_failure(None, first, most, now);
        assert_eq!((one.failures, one.at), (1, now + first));
        let two = Retry::after_failure(Some(one), first, most, now);
        assert_eq!((two.failures, two.at), (2, now + 2 * first));
        // A success forgets them (the daemon drops its Retry): the next failure
        // starts over at the first pause.
        let again = Retry::after_failure(None, first, most, now);
        assert_eq!(again.at, now + first);
    }
}
