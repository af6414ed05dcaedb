//! The `postmaster` command line: flags become validated values here, and every
//! failure becomes an exit code in one place ([`ExitCode`]).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::accounts::Accounts;
use crate::apply;
use crate::bus;
use crate::certificate::{self, Decision};
use crate::config::{self, Config};
use crate::diag::Invalid;
use crate::password::{self, Scheme};
use crate::pipeline::{self, Resolved};
use crate::render;
use crate::setup::{self, text::Certificate};
use crate::status::Status;
use crate::tomlwalk;

/// Exit codes scripts can rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    /// The configuration or accounts file is invalid; the errors were printed.
    Invalid = 1,
    // 2 is wrong usage: clap's own code, returned by clap itself.
    /// Something in the system failed: a file could not be written, a program failed,
    /// the daemon cannot be reached.
    Failed = 3,
    /// The daemon runs and refused the call: the caller is neither root nor in the
    /// admin group.
    NotAllowed = 4,
}

#[derive(Debug, Parser)]
#[command(
    name = "postmaster",
    version,
    about = "A postfix + dovecot mail host that runs itself"
)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, short, global = true, default_value = config::DEFAULT_PATH, env = "POSTMASTER_CONFIG")]
    pub(crate) config: PathBuf,
    #[command(subcommand)]
    pub(crate) command: Commands,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Commands {
    /// Validate the configuration and the accounts file; print every error as
    /// file:line:column.
    Check,
    /// Write the generated maps, the passwd-file and the whole mail host's postfix and
    /// dovecot configuration into a directory.
    Render {
        /// Where to write (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Validate and install, once: the generated maps and passwd-file, and the
    /// certificate pair (a self-signed placeholder when none is valid yet). Reloads
    /// nothing; the daemon does all this on every change and reloads as needed.
    Apply,
    /// Run the daemon: keep the mail host in step with the accounts file and the
    /// certificate (normally started by systemd as postmaster.service).
    Run,
    /// Show what the running daemon serves and whether anything is wrong.
    /// Exit 0 when healthy, 1 when something needs attention, 3 when the daemon
    /// cannot be reached.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the running daemon to re-read its configuration, the accounts file and
    /// the certificate now. Exit 0 when all of it is served, 1 when something was
    /// refused (the errors are printed), 3 when the daemon cannot be reached.
    Reload,
    /// Ask the running daemon to renew the certificate (ACME).
    Renew {
        /// Renew even if the certificate is not due.
        #[arg(long)]
        force: bool,
    },
    /// Let an address blocked for failed logins (see `postmaster status`) log in
    /// again now, and forget its failures. Exit 1 when it was not blocked.
    Unblock {
        /// As status shows it: 192.0.2.7, or an IPv6 address (its /64 is lifted).
        address: String,
    },
    /// Hash a password for the accounts file. Reads it from the terminal without
    /// echo, or one line from standard input when that is not a terminal.
    HashPassword {
        #[arg(long, value_enum, default_value_t = HashScheme::Sha512Crypt)]
        scheme: HashScheme,
    },
    /// The DNS records this mail host needs, per hosted domain, in zone-file form:
    /// MX, SPF, DKIM, DMARC, SRV, and the host's address and reverse name.
    Dns {
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
        /// Ask DNS and say, per record, ok / missing / different (with what was
        /// found). Exit 0 only when every required record is right.
        #[arg(long)]
        check: bool,
    },
    /// DKIM keys: `rotate [DOMAIN]` makes a new key, used once DNS shows it.
    Dkim {
        #[command(subcommand)]
        command: DkimCommand,
    },
    /// Mailboxes in the accounts file: add, passwd, disable, enable, remove, list.
    Mailbox {
        #[command(subcommand)]
        command: MailboxCommand,
    },
    /// Aliases in the accounts file: add, remove, list.
    Alias {
        #[command(subcommand)]
        command: AliasCommand,
    },
    /// Make this Debian 13 host a mail host, as root: install the packages it
    /// needs, write /etc/postmaster/config.toml and an accounts file, install the
    /// postfix, dovecot and rspamd configuration (Debian's files kept as backups) and
    /// postmaster's units, start it all and say what to publish in DNS. Run again
    /// after changing config.toml or installing a new postmaster: it shows how the
    /// installed configuration would change and changes it only with --yes.
    Setup {
        /// The mail host's name (host_name), e.g. mail.example.org.
        #[arg(long)]
        host: Option<String>,
        /// A mail domain served here; repeat for more. The first is the primary one.
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// Get the certificate from Let's Encrypt (the default) with this contact
        /// address; repeat for more.
        #[arg(long, conflicts_with_all = ["cert", "key"])]
        acme_contact: Vec<String>,
        /// Use this certificate chain (PEM), kept up to date by another tool.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// Install an upgrade that was shown (a changed configuration, a new binary).
        #[arg(long)]
        yes: bool,
        /// Replace configuration that is not Debian's or postmaster's, or that was
        /// changed after setup installed it (each is kept as a backup).
        #[arg(long)]
        force: bool,
    },
    /// Stop and remove what `postmaster setup` installed and put Debian's
    /// configuration back; mail, keys, accounts and configuration stay.
    Uninstall,
    /// Relay postfix's LMTP deliveries to dovecot from the socket systemd holds
    /// (postmaster-lmtp.socket, started by systemd as postmaster-lmtp.service):
    /// connects to dovecot and waits for its greeting, trying again while a dovecot
    /// reload replaces its socket, then passes the dialogue on unchanged but for
    /// a RCPT dovecot answered 451 4.3.0 (a user lookup a reload cut), which it
    /// sends again.
    #[command(name = "lmtp-relay")]
    LmtpRelay {
        /// dovecot's LMTP socket.
        #[arg(long, default_value = crate::lmtp_relay::DEFAULT_BACKEND)]
        backend: PathBuf,
        /// Seconds one delivery waits for dovecot's greeting before postfix is
        /// answered 421 (it keeps the mail and tries again later).
        #[arg(long, default_value_t = 30)]
        give_up_after: u64,
        /// Deliveries relayed at once; more wait in the socket, unrefused.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        max_connections: u32,
    },
    /// TLS for IMAP (993, and 143 after STARTTLS), POP3 (995, 110 after STLS) and
    /// ManageSieve (4190 after STARTTLS) in front of dovecot, on the sockets
    /// systemd passes (postmaster-tls.socket, started as postmaster-tls.service).
    /// Each client goes on to dovecot on loopback with a PROXY header (its address,
    /// and that it spoke TLS). SIGHUP (systemctl reload) reads the pair again: a
    /// new certificate without reloading dovecot.
    #[command(name = "tls-front")]
    TlsFront {
        /// The pair postmaster installs: the private key, then the chain.
        #[arg(long, default_value = "/var/lib/postmaster/tls/pair.pem")]
        pair: PathBuf,
        /// What a socket on a port other than 993, 995, 143, 110 or 4190 speaks:
        /// PORT=imaps, pop3s, imap, pop3 or sieve (repeat for each).
        #[arg(long = "role", value_parser = crate::tls_front::parse_role)]
        roles: Vec<(u16, crate::tls_front::Role)>,
        /// dovecot's IMAP listener for the front (`haproxy = yes`).
        #[arg(long, default_value_t = std::net::SocketAddr::from(([127, 0, 0, 1], crate::tls_front::IMAP_BACKEND_PORT)))]
        imap_backend: std::net::SocketAddr,
        /// dovecot's POP3 listener for the front (`haproxy = yes`).
        #[arg(long, default_value_t = std::net::SocketAddr::from(([127, 0, 0, 1], crate::tls_front::POP3_BACKEND_PORT)))]
        pop3_backend: std::net::SocketAddr,
        /// dovecot's ManageSieve listener for the front (`haproxy = yes`).
        #[arg(long, default_value_t = std::net::SocketAddr::from(([127, 0, 0, 1], crate::tls_front::SIEVE_BACKEND_PORT)))]
        sieve_backend: std::net::SocketAddr,
        /// Clients served at once; more wait in the sockets' backlogs, unrefused.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        max_connections: u32,
    },
    /// Catch-alls in the accounts file: set, unset.
    #[command(name = "catch-all")]
    CatchAll {
        #[command(subcommand)]
        command: CatchAllCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DkimCommand {
    /// Make a new key with a new selector for DOMAIN (every hosted domain when
    /// none is named). The running daemon keeps signing with the current key until
    /// DNS shows the new one's record; then it switches, and the old record must
    /// stay published for [dkim] keep_published_days.
    Rotate { domain: Option<String> },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum HashScheme {
    #[value(name = "SHA512-CRYPT", alias = "sha512-crypt")]
    Sha512Crypt,
    #[value(name = "BLF-CRYPT", alias = "blf-crypt")]
    BlfCrypt,
    #[value(name = "ARGON2ID", alias = "argon2id")]
    Argon2id,
}

impl From<HashScheme> for Scheme {
    fn from(s: HashScheme) -> Scheme {
        match s {
            HashScheme::Sha512Crypt => Scheme::Sha512Crypt,
            HashScheme::BlfCrypt => Scheme::BlfCrypt,
            HashScheme::Argon2id => Scheme::Argon2id,
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Commands::Check => check(&cli.config),
        Commands::Render { out } => render_to(&cli.config, &out),
        Commands::Apply => apply_once(&cli.config),
        Commands::Run => run_daemon(&cli.config),
        Commands::Status { json } => status(&cli.config, json),
        Commands::Reload => ask(&cli.config, |c| Box::pin(async move { c.reload().await })),
        Commands::Renew { force } => ask(&cli.config, move |c| {
            Box::pin(async move { c.renew(force).await })
        }),
        Commands::Unblock { address } => ask(&cli.config, move |c| {
            Box::pin(async move { c.unblock(&address).await })
        }),
        Commands::Dns { json, check } => dns(&cli.config, json, check),
        Commands::Dkim {
            command: DkimCommand::Rotate { domain },
        } => ask(&cli.config, move |c| {
            Box::pin(async move { c.rotate_dkim(domain.as_deref().unwrap_or("")).await })
        }),
        Commands::HashPassword { scheme } => hash_password(scheme.into()),
        Commands::Mailbox { command } => accounts_cli::mailbox(&cli.config, command),
        Commands::Alias { command } => accounts_cli::alias(&cli.config, command),
        Commands::CatchAll { command } => accounts_cli::catch_all(&cli.config, command),
        Commands::Setup {
            host,
            domains,
            acme_contact,
            cert,
            key,
            yes,
            force,
        } => {
            let certificate = match (cert, key) {
                (Some(cert), Some(key)) => Some(Certificate::Files { cert, key }),
                _ if !acme_contact.is_empty() => Some(Certificate::Acme {
                    contact: acme_contact,
                }),
                _ => None,
            };
            setup_result(setup::setup(&setup::Options {
                config_path: cli.config.clone(),
                host,
                domains,
                certificate,
                yes,
                force,
            }))
        }
        Commands::Uninstall => setup_result(setup::uninstall(&cli.config)),
        Commands::LmtpRelay {
            backend,
            give_up_after,
            max_connections,
        } => {
            crate::logging::init();
            crate::lmtp_relay::run(crate::lmtp_relay::Settings {
                backend,
                give_up_after: std::time::Duration::from_secs(give_up_after),
                max_connections: max_connections as usize,
            })
            .map_err(|e| Failure::Failed(e.to_string()))
        }
        Commands::TlsFront {
            pair,
            roles,
            imap_backend,
            pop3_backend,
            sieve_backend,
            max_connections,
        } => {
            crate::logging::init();
            crate::tls_front::run(crate::tls_front::Settings {
                pair,
                roles,
                imap_backend,
                pop3_backend,
                sieve_backend,
                max_connections: max_connections as usize,
            })
            .map_err(|e| Failure::Failed(e.to_string()))
        }
    };
    match result {
        Ok(()) => ExitCode::Ok,
        Err(Failure::Invalid(invalid)) => {
            eprintln!("{invalid}");
            let n = invalid.0.len();
            eprintln!(
                "{n} error{}; nothing was changed",
                if n == 1 { "" } else { "s" }
            );
            ExitCode::Invalid
        }
        Err(Failure::Failed(message)) => {
            eprintln!("postmaster: {message}");
            ExitCode::Failed
        }
        Err(Failure::Reported) => ExitCode::Invalid,
        Err(Failure::NotAllowed { group }) => {
            eprintln!("postmaster: {}", not_allowed(&group));
            ExitCode::NotAllowed
        }
    }
}

/// Setup's outcome as the command line reports it.
fn setup_result(r: Result<(), setup::SetupError>) -> Result<(), Failure> {
    match r {
        Ok(()) => Ok(()),
        Err(setup::SetupError::Refused(refusals)) => {
            for r in &refusals {
                eprintln!("postmaster: refused: {r}");
            }
            eprintln!("nothing more was changed");
            Err(Failure::Reported)
        }
        Err(setup::SetupError::NeedsYes) => {
            eprintln!(
                "postmaster: this is what an upgrade would change; nothing was changed: run \
                 `postmaster setup --yes` to install it"
            );
            Err(Failure::Reported)
        }
        Err(setup::SetupError::Invalid(i)) => Err(Failure::Invalid(i)),
        Err(setup::SetupError::Failed(m)) => Err(Failure::Failed(m.to_string())),
    }
}

/// What a refused D-Bus call says.
fn not_allowed(group: &str) -> String {
    format!("not allowed: run as root or as a member of {group}")
}

enum Failure {
    Invalid(Invalid),
    Failed(String),
    /// The daemon answered and reported a problem; it was printed.
    Reported,
    /// The bus or polkit refused the call on purpose.
    NotAllowed {
        group: String,
    },
}

impl From<Invalid> for Failure {
    fn from(i: Invalid) -> Self {
        Failure::Invalid(i)
    }
}

impl From<apply::ApplyError> for Failure {
    fn from(e: apply::ApplyError) -> Self {
        Failure::Failed(e.to_string())
    }
}

/// Loads and validates both files.
pub(crate) fn load(config_path: &Path) -> Result<(Config, Accounts), Invalid> {
    let config = Config::load(config_path)?;
    let accounts = pipeline::load_accounts(&config)?;
    Ok((config, accounts))
}

fn check(config_path: &Path) -> Result<(), Failure> {
    let (config, accounts) = load(config_path)?;
    println!(
        "ok: {} mailbox{}, {} alias address{}, {} catch-all{} for {}",
        accounts.mailboxes.len(),
        if accounts.mailboxes.len() == 1 {
            ""
        } else {
            "es"
        },
        accounts.aliases.len(),
        if accounts.aliases.len() == 1 {
            ""
        } else {
            "es"
        },
        accounts.catch_all.len(),
        if accounts.catch_all.len() == 1 {
            ""
        } else {
            "s"
        },
        config.domains.join(", ")
    );
    Ok(())
}

fn render_to(config_path: &Path, out: &Path) -> Result<(), Failure> {
    let (config, accounts) = load(config_path)?;
    // Rendered whole, beside the host's configuration: this is not the apply
    // that runs on every edit.
    let mut files: Vec<render::File> = render::generated(&config, &accounts)
        .iter()
        .map(render::Generated::to_file)
        .collect();
    let resolved = Resolved::probe(config);
    files.extend(render::host_config(
        &resolved.config,
        resolved.map_type,
        &config_path.display().to_string(),
    ));
    let options = apply::Options {
        compile_maps: None,
        passwd_group: None,
        postmap: "postmap".into(),
    };
    let report = apply::apply(out, &files, &options)?;
    for f in &files {
        println!("{}", out.join(&f.path).display());
    }
    eprintln!(
        "{} written, {} unchanged",
        report.written.len(),
        report.unchanged.len()
    );
    Ok(())
}

/// `postmaster apply`: the certificate, then the accounts, once. The certificate
/// comes first and whatever the accounts file says: postfix and dovecot need a pair
/// to start, and a mistake in the accounts must not leave them without one (the
/// NixOS module runs this before they start).
fn apply_once(config_path: &Path) -> Result<(), Failure> {
    let resolved = Resolved::probe(Config::load(config_path)?);
    let config = &resolved.config;
    apply_certificate(config)?;
    let accounts = match pipeline::load_accounts(config) {
        Ok(accounts) => accounts,
        Err(invalid) => {
            eprintln!("{invalid}");
            let n = invalid.0.len();
            eprintln!(
                "{n} error{} in the accounts file; the accounts were not applied",
                if n == 1 { "" } else { "s" }
            );
            return Err(Failure::Reported);
        }
    };
    let report = pipeline::apply_accounts(&resolved, &accounts)?;
    for p in &report.written {
        println!("written: {}", p.display());
    }
    for p in &report.unchanged {
        println!("unchanged: {}", p.display());
    }
    // The first DKIM keys, so that rspamd signs from its first start; without DNS
    // here, a rotation is the daemon's to finish.
    let dkim = pipeline::apply_dkim(config, &Default::default(), &[])
        .map_err(|e| Failure::Failed(e.to_string()))?;
    for line in &dkim.done {
        println!("dkim: {line}");
    }
    Ok(())
}

/// `postmaster dns`: what to publish, from the configuration and the DKIM state
/// (no daemon needed; the daemon makes a domain's first key).
fn dns(config_path: &Path, json: bool, check: bool) -> Result<(), Failure> {
    let config = Config::load(config_path)?;
    let keys = crate::dkim::store::load(&config).map_err(|e| Failure::Failed(e.to_string()))?;
    let now = crate::dkim::unix_now();
    if config.dkim.enabled {
        for d in config.domains.iter().filter(|d| keys.active(d).is_none()) {
            eprintln!(
                "postmaster: {d} has no DKIM key yet: the daemon makes one when it runs (or `postmaster apply`)"
            );
        }
    }
    if !check {
        let records = crate::dns::records(&config, &keys, now);
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&records).expect("records serialise")
            );
        } else {
            print!("{}", crate::dns::zone_text(&config, &records));
        }
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(e.to_string()))?;
    let judged = runtime.block_on(crate::dns::lookup::check(&config, &keys, now));
    let failing = judged
        .iter()
        .filter(|(r, v)| r.required && *v != crate::dns::Verdict::Ok)
        .count();
    if json {
        #[derive(serde::Serialize)]
        struct Judged<'a> {
            #[serde(flatten)]
            record: &'a crate::dns::Record,
            #[serde(flatten)]
            verdict: &'a crate::dns::Verdict,
        }
        let list: Vec<Judged<'_>> = judged
            .iter()
            .map(|(record, verdict)| Judged { record, verdict })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).expect("records serialise")
        );
    } else {
        for (r, v) in &judged {
            let what = match v {
                crate::dns::Verdict::Ok => "ok".to_string(),
                crate::dns::Verdict::Missing => "MISSING".to_string(),
                crate::dns::Verdict::Different(found) => format!("DIFFERENT, found: {found}"),
                crate::dns::Verdict::Unknown(why) => format!("UNKNOWN, DNS did not answer: {why}"),
            };
            let optional = if r.required { "" } else { " (recommended)" };
            println!(
                "{:<9} {} {}{optional}",
                what.split(',').next().unwrap_or(""),
                r.rtype.name(),
                r.name
            );
            if *v != crate::dns::Verdict::Ok {
                println!("          want: {}", r.value);
                if let Some((_, detail)) = what.split_once(", ") {
                    println!("          {detail}");
                }
            }
        }
        println!(
            "{}",
            if failing == 0 {
                "every required record is right".to_string()
            } else {
                format!(
                    "{failing} required record{} not right",
                    if failing == 1 { " is" } else { "s are" }
                )
            }
        );
    }
    if failing == 0 {
        Ok(())
    } else {
        Err(Failure::Reported)
    }
}

/// Installs the source pair when it is new and valid, a placeholder when nothing
/// valid is installed, and otherwise leaves the installed pair alone.
fn apply_certificate(config: &Config) -> Result<(), Failure> {
    let installed = certificate::installed(config);
    let (info, pair) =
        match certificate::decide(config, certificate::read_source(config), installed.as_ref()) {
            Decision::Unchanged(_) => {
                println!("unchanged: {}", config.installed_pair().display());
                return Ok(());
            }
            Decision::AwaitingAcme => {
                println!(
                    "unchanged: {} (a placeholder until the daemon obtains a certificate)",
                    config.installed_pair().display()
                );
                return Ok(());
            }
            Decision::Keep(refusal) => {
                eprintln!(
                    "certificate not installed, the current one stays: {}",
                    refusal.why
                );
                return Ok(());
            }
            Decision::Placeholder(refusal) => {
                eprintln!(
                    "certificate not usable ({}); installing a self-signed placeholder",
                    refusal.why
                );
                certificate::placeholder(config).map_err(|p| Failure::Failed(p.to_string()))?
            }
            Decision::Install(info, pair) => (info, pair),
        };
    certificate::install(config, &pair)?;
    println!(
        "written: {} ({}, until {})",
        config.installed_pair().display(),
        info.names.join(", "),
        crate::tls::format_utc(info.not_after)
    );
    Ok(())
}

fn run_daemon(config_path: &Path) -> Result<(), Failure> {
    crate::logging::init();
    crate::daemon::run(config_path).map_err(|e| Failure::Failed(e.to_string()))
}

/// Runs one call to the daemon over the system bus.
/// Whether the bus (its policy) or polkit refused a call on purpose, as opposed to
/// the daemon not being there.
fn is_refusal(e: &zbus::Error) -> bool {
    const REFUSALS: [&str; 2] = [
        "org.freedesktop.DBus.Error.AccessDenied",
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
    ];
    match e {
        zbus::Error::MethodError(name, _, _) => REFUSALS.contains(&name.as_str()),
        zbus::Error::FDO(e) => matches!(
            **e,
            zbus::fdo::Error::AccessDenied(_)
                | zbus::fdo::Error::InteractiveAuthorizationRequired(_)
        ),
        _ => false,
    }
}

/// The admin group to name in a refusal: the configured one when the configuration
/// can be read (a refused caller often cannot read it), else the default.
fn admin_group(config_path: &Path) -> String {
    Config::load(config_path)
        .map(|c| c.units.admin_group)
        .unwrap_or_else(|_| config::DEFAULT_ADMIN_GROUP.to_string())
}

fn call<T>(
    config_path: &Path,
    f: impl for<'c> FnOnce(
        &'c bus::SupervisorClientProxy<'static>,
    )
        -> std::pin::Pin<Box<dyn std::future::Future<Output = zbus::Result<T>> + 'c>>,
) -> Result<T, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(e.to_string()))?;
    runtime.block_on(async {
        let unreachable = |e: zbus::Error| {
            if is_refusal(&e) {
                Failure::NotAllowed {
                    group: admin_group(config_path),
                }
            } else {
                Failure::Failed(format!(
                    "cannot reach the postmaster daemon on the system bus ({}): {e}",
                    bus::BUS_NAME
                ))
            }
        };
        let connection = zbus::Connection::system().await.map_err(unreachable)?;
        let proxy = bus::SupervisorClientProxy::new(&connection)
            .await
            .map_err(unreachable)?;
        f(&proxy).await.map_err(unreachable)
    })
}

fn status(config_path: &Path, json: bool) -> Result<(), Failure> {
    let text = call(config_path, |c| Box::pin(async move { c.status().await }))?;
    let status: Status = serde_json::from_str(&text)
        .map_err(|e| Failure::Failed(format!("the daemon's status is not understood: {e}")))?;
    if json {
        println!("{text}");
    } else {
        print!("{}", status.human());
    }
    if status.healthy() {
        Ok(())
    } else {
        Err(Failure::Reported)
    }
}

/// Reload or Renew: prints the daemon's outcome.
fn ask(
    config_path: &Path,
    f: impl for<'c> FnOnce(
        &'c bus::SupervisorClientProxy<'static>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = zbus::Result<String>> + 'c>,
    >,
) -> Result<(), Failure> {
    let text = call(config_path, f)?;
    let outcome: bus::Outcome = serde_json::from_str(&text)
        .map_err(|e| Failure::Failed(format!("the daemon's answer is not understood: {e}")))?;
    println!("{}", outcome.summary);
    for e in &outcome.errors {
        eprintln!("{e}");
    }
    if outcome.ok {
        Ok(())
    } else {
        Err(Failure::Reported)
    }
}

fn hash_password(scheme: Scheme) -> Result<(), Failure> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")
            .map_err(|e| Failure::Failed(format!("reading the password: {e}")))?;
        let again = rpassword::prompt_password("Again: ")
            .map_err(|e| Failure::Failed(format!("reading the password: {e}")))?;
        if first != again {
            return Err(Failure::Failed(
                "the two passwords differ; nothing was hashed".into(),
            ));
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map_err(|e| {
            Failure::Failed(format!("reading the password from standard input: {e}"))
        })?;
        line.strip_suffix('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .unwrap_or(&line)
            .to_string()
    };
    let hashed = password::hash(scheme, &password).map_err(|e| Failure::Failed(e.to_string()))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{hashed}").map_err(|e| Failure::Failed(e.to_string()))?;
    Ok(())
}

// ---- accounts from the command line: mailbox, alias, catch-all -----------------------

pub(crate) use accounts_cli::{AliasCommand, CatchAllCommand, MailboxCommand};

/// The effects around [`accounts::edit`]: reading the file, asking for a password,
/// writing the file back only if nobody changed it meanwhile, and waiting for the
/// daemon to serve it.
mod accounts_cli {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::accounts::edit::{self, Edit, Refused};

    #[derive(Debug, Subcommand)]
    pub(crate) enum MailboxCommand {
        /// Add a mailbox: asks for its password twice on a terminal, or reads one
        /// line from standard input.
        Add {
            name: String,
            /// Storage quota, like 500M or 2G.
            #[arg(long)]
            quota: Option<String>,
            /// More addresses it may send as (an address, or @domain).
            #[arg(long = "send-as", num_args = 1..)]
            send_as: Vec<String>,
            #[arg(long, value_enum, default_value_t = HashScheme::Sha512Crypt)]
            scheme: HashScheme,
        },
        /// Set a mailbox's password (asked as for `add`).
        Passwd {
            name: String,
            #[arg(long, value_enum, default_value_t = HashScheme::Sha512Crypt)]
            scheme: HashScheme,
        },
        /// No more logins; mail to it is still accepted and kept.
        Disable { name: String },
        /// Logins again.
        Enable { name: String },
        /// Remove a mailbox from the accounts file (its stored mail stays on disk).
        Remove {
            name: String,
            /// Also remove the alias and catch-all targets that deliver to it.
            #[arg(long)]
            force: bool,
        },
        /// Names, addresses, quota, disabled.
        List {
            #[arg(long)]
            json: bool,
        },
    }

    #[derive(Debug, Subcommand)]
    pub(crate) enum AliasCommand {
        /// Create an alias, or add targets to it: mailbox names or addresses.
        Add {
            address: String,
            #[arg(required = true)]
            targets: Vec<String>,
        },
        /// Remove an alias, or only the targets given.
        Remove {
            address: String,
            targets: Vec<String>,
        },
        /// Every alias and catch-all, and what it delivers to.
        List {
            #[arg(long)]
            json: bool,
        },
    }

    #[derive(Debug, Subcommand)]
    pub(crate) enum CatchAllCommand {
        /// Deliver mail to addresses of DOMAIN that nothing else matches to TARGET.
        Set { domain: String, target: String },
        /// Remove the catch-all of DOMAIN: such mail is rejected again.
        Unset { domain: String },
    }

    pub(crate) fn mailbox(config_path: &Path, command: MailboxCommand) -> Result<(), Failure> {
        match command {
            MailboxCommand::Add {
                name,
                quota,
                send_as,
                scheme,
            } => edit_file(config_path, || {
                Ok(Edit::AddMailbox {
                    password: new_password(scheme.into())?,
                    name,
                    quota,
                    send_as,
                })
            }),
            MailboxCommand::Passwd { name, scheme } => edit_file(config_path, || {
                Ok(Edit::SetPassword {
                    password: new_password(scheme.into())?,
                    name,
                })
            }),
            MailboxCommand::Disable { name } => edit_file(config_path, || {
                Ok(Edit::SetDisabled {
                    name,
                    disabled: true,
                })
            }),
            MailboxCommand::Enable { name } => edit_file(config_path, || {
                Ok(Edit::SetDisabled {
                    name,
                    disabled: false,
                })
            }),
            MailboxCommand::Remove { name, force } => {
                edit_file(config_path, || Ok(Edit::RemoveMailbox { name, force }))
            }
            MailboxCommand::List { json } => {
                let (config, accounts) = load(config_path)?;
                let list = edit::mailbox_list(&accounts, &config.accounts_policy());
                if json {
                    return print_json(&list);
                }
                for m in list {
                    let mut extra = Vec::new();
                    if let Some(q) = m.quota {
                        extra.push(format!("quota {q} bytes"));
                    }
                    if m.disabled {
                        extra.push("disabled".into());
                    }
                    if !m.send_as.is_empty() {
                        extra.push(format!("sends as {}", m.send_as.join(", ")));
                    }
                    let extra = if extra.is_empty() {
                        String::new()
                    } else {
                        format!("  ({})", extra.join("; "))
                    };
                    println!("{}  {}{extra}", m.name, m.addresses.join(", "));
                }
                Ok(())
            }
        }
    }

    pub(crate) fn alias(config_path: &Path, command: AliasCommand) -> Result<(), Failure> {
        match command {
            AliasCommand::Add { address, targets } => {
                edit_file(config_path, || Ok(Edit::AddAlias { address, targets }))
            }
            AliasCommand::Remove { address, targets } => {
                edit_file(config_path, || Ok(Edit::RemoveAlias { address, targets }))
            }
            AliasCommand::List { json } => {
                let (_, accounts) = load(config_path)?;
                let list = edit::alias_list(&accounts);
                if json {
                    return print_json(&list);
                }
                for a in list {
                    let outside = if a.external { " (and outside)" } else { "" };
                    println!(
                        "{} -> {}  [mailboxes: {}{outside}]",
                        a.address,
                        a.targets.join(", "),
                        a.mailboxes.join(", ")
                    );
                }
                Ok(())
            }
        }
    }

    pub(crate) fn catch_all(config_path: &Path, command: CatchAllCommand) -> Result<(), Failure> {
        match command {
            CatchAllCommand::Set { domain, target } => {
                edit_file(config_path, || Ok(Edit::SetCatchAll { domain, target }))
            }
            CatchAllCommand::Unset { domain } => {
                edit_file(config_path, || Ok(Edit::UnsetCatchAll { domain }))
            }
        }
    }

    fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
        let text =
            serde_json::to_string_pretty(value).map_err(|e| Failure::Failed(e.to_string()))?;
        println!("{text}");
        Ok(())
    }

    const WHO: &str = "run it as root (sudo), or as a member of the admin group with write access to the file and its directory";

    fn io_failure(action: &str, path: &Path, e: &std::io::Error) -> Failure {
        let hint = match e.kind() {
            std::io::ErrorKind::PermissionDenied => format!("; {WHO}"),
            std::io::ErrorKind::ReadOnlyFilesystem => {
                "; the file system is read-only (on NixOS with declared accounts, change services.postmaster.accounts instead)".into()
            }
            _ => String::new(),
        };
        Failure::Failed(format!(
            "cannot {action} {}: {e}{hint}; nothing was changed",
            path.display()
        ))
    }

    /// Reads, edits, checks, writes, and waits for the daemon.
    fn edit_file(
        config_path: &Path,
        make: impl FnOnce() -> Result<Edit, Failure>,
    ) -> Result<(), Failure> {
        let config = Config::load(config_path)?;
        let path = config.accounts_file.clone();
        let original =
            std::fs::read(&path).map_err(|e| io_failure("read the accounts file", &path, &e))?;
        let source = tomlwalk::decode(&path, original.clone()).map_err(|d| Invalid(vec![d]))?;
        if let Some(why) = edit::declared_elsewhere(&path, &source.text) {
            return Err(Failure::Failed(format!("not changed: {why}")));
        }
        // Asked before anything is written, and before the check that nobody else
        // wrote the file, so that typing the password does not widen that window.
        let edit = make()?;
        let edited = match edit::apply(&path, &source.text, &edit, &config.accounts_policy()) {
            Ok(e) => e,
            Err(Refused::Invalid(invalid)) => {
                eprintln!("the edit would make the accounts file invalid:");
                return Err(Failure::Invalid(invalid));
            }
            Err(refused) => {
                eprintln!("postmaster: {refused}; nothing was changed");
                return Err(Failure::Reported);
            }
        };
        if !edited.changed {
            println!("{} already says so; nothing to change", path.display());
            return Ok(());
        }
        let before = daemon_status(config_path).ok();
        write_unless_changed(&path, &original, edited.text.as_bytes())?;
        println!("changed {}", path.display());
        for r in &edited.removed_references {
            println!("removed {r}");
        }
        if let Edit::RemoveMailbox { name, .. } = &edit {
            println!(
                "the mail stored for `{name}` stays in {}; delete it by hand when it is no longer needed",
                config.dovecot.mail_root.join(name).display()
            );
        }
        wait_for_daemon(config_path, before, &edited.accounts)
    }

    /// A new password, hashed: twice on a terminal, or one line of standard input.
    fn new_password(scheme: Scheme) -> Result<String, Failure> {
        let reading = |e: std::io::Error| Failure::Failed(format!("reading the password: {e}"));
        let password = if std::io::stdin().is_terminal() {
            let first = rpassword::prompt_password("New password: ").map_err(reading)?;
            let again = rpassword::prompt_password("Again: ").map_err(reading)?;
            if first != again {
                return Err(Failure::Failed(
                    "the two passwords differ; nothing was changed".into(),
                ));
            }
            first
        } else {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(reading)?;
            line.trim_end_matches(['\n', '\r']).to_string()
        };
        if password.is_empty() {
            return Err(Failure::Failed(
                "the password is empty; nothing was changed".into(),
            ));
        }
        password::hash(scheme, &password).map_err(|e| Failure::Failed(e.to_string()))
    }

    /// Writes `content` in place of the file atomically (temporary file in the same
    /// directory, fsync, rename), with the old file's owner, group and mode, and
    /// only if the file still holds `original` just before the rename.
    fn write_unless_changed(path: &Path, original: &[u8], content: &[u8]) -> Result<(), Failure> {
        let meta =
            std::fs::metadata(path).map_err(|e| io_failure("read the accounts file", path, &e))?;
        let mode = meta.permissions().mode() & 0o7777;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.postmaster-edit"));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| io_failure("create a file next to", path, &e))?;
            let created = f.metadata().map_err(|e| io_failure("write", &tmp, &e))?;
            if (created.uid(), created.gid()) != (meta.uid(), meta.gid()) {
                rustix::fs::fchown(
                    &f,
                    Some(rustix::fs::Uid::from_raw(meta.uid())),
                    Some(rustix::fs::Gid::from_raw(meta.gid())),
                )
                .map_err(|e| {
                    io_failure("give the new file the owner and group of", path, &e.into())
                })?;
            }
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| io_failure("set the mode of", &tmp, &e))?;
            f.write_all(content)
                .map_err(|e| io_failure("write", &tmp, &e))?;
            f.sync_all().map_err(|e| io_failure("flush", &tmp, &e))?;
            if std::fs::read(path).map_err(|e| io_failure("read the accounts file", path, &e))?
                != original
            {
                return Err(Failure::Failed(format!(
                    "{} changed on disk while this command ran (an editor?); it was not overwritten: run the command again",
                    path.display()
                )));
            }
            std::fs::rename(&tmp, path).map_err(|e| io_failure("replace", path, &e))?;
            if let Some(dir) = path.parent()
                && let Ok(d) = std::fs::File::open(dir)
            {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn daemon_status(config_path: &Path) -> Result<Status, Failure> {
        let text = call(config_path, |c| Box::pin(async move { c.status().await }))?;
        serde_json::from_str(&text)
            .map_err(|e| Failure::Failed(format!("the daemon's status is not understood: {e}")))
    }

    /// Until the daemon reports the new file applied or refused. Its status names
    /// no file version, so a new `applied` event (or an error) is the sign; an
    /// apply that changes no generated file records none, and after a short wait a
    /// Reload asks it directly.
    /// What the daemon's status says about an edit, compared with the status
    /// before it.
    #[derive(Debug, PartialEq, Eq)]
    pub(super) enum Answer {
        Pending,
        Refused,
        Applied,
    }

    pub(super) fn answer(
        before: &crate::status::AccountsStatus,
        now: &crate::status::AccountsStatus,
        counts: (usize, usize, usize),
    ) -> Answer {
        // Errors the status showed before the edit are the old file's (a new
        // host's accounts file has no mailbox yet): not an answer to this one.
        if !now.errors.is_empty() && now.errors != before.errors {
            Answer::Refused
        } else if now.applied != before.applied
            && (now.mailboxes, now.alias_addresses, now.catch_alls) == counts
        {
            Answer::Applied
        } else {
            Answer::Pending
        }
    }

    fn wait_for_daemon(
        config_path: &Path,
        before: Option<Status>,
        expected: &Accounts,
    ) -> Result<(), Failure> {
        let Some(before) = before else {
            println!(
                "the daemon is not reachable on the system bus; it applies the file when it runs"
            );
            return Ok(());
        };
        let counts = (
            expected.mailboxes.len(),
            expected.aliases.len(),
            expected.catch_all.len(),
        );
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let Ok(now) = daemon_status(config_path) else {
                continue;
            };
            match answer(&before.accounts, &now.accounts, counts) {
                Answer::Pending => {}
                Answer::Refused => {
                    eprintln!(
                        "the daemon refused the accounts file; it keeps serving the last good one:"
                    );
                    for e in &now.accounts.errors {
                        eprintln!("{e}");
                    }
                    return Err(Failure::Reported);
                }
                Answer::Applied => {
                    println!(
                        "the daemon applied it: {} mailboxes, {} alias addresses, {} catch-alls served",
                        counts.0, counts.1, counts.2
                    );
                    return Ok(());
                }
            }
        }
        ask(config_path, |c| Box::pin(async move { c.reload().await }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edit_is_answered_by_a_new_application_or_new_errors_not_by_old_errors() {
        use super::accounts_cli::{Answer, answer};
        use crate::status::{AccountsStatus, Event};
        let no_mailbox = AccountsStatus {
            errors: vec!["accounts.toml:1:1: the accounts file defines no mailbox".into()],
            ..Default::default()
        };
        // The daemon has not seen the edit yet: the old file's error is still shown.
        assert_eq!(answer(&no_mailbox, &no_mailbox, (1, 0, 0)), Answer::Pending);
        let applied = AccountsStatus {
            mailboxes: 1,
            applied: Some(Event::default()),
            ..Default::default()
        };
        assert_eq!(answer(&no_mailbox, &applied, (1, 0, 0)), Answer::Applied);
        let refused = AccountsStatus {
            errors: vec!["accounts.toml:3:1: something else".into()],
            ..Default::default()
        };
        assert_eq!(answer(&applied, &refused, (2, 0, 0)), Answer::Refused);
        assert_eq!(answer(&applied, &applied, (1, 0, 0)), Answer::Pending);
    }

    #[test]
    fn exit_codes_are_what_the_readme_says() {
        let codes = [
            ExitCode::Ok,
            ExitCode::Invalid,
            ExitCode::Failed,
            ExitCode::NotAllowed,
        ];
        assert_eq!(codes.map(|c| c as i32), [0, 1, 3, 4]);
    }

    #[test]
    fn a_refusal_is_told_apart_from_an_absent_daemon() {
        let denied = zbus::Error::FDO(Box::new(zbus::fdo::Error::AccessDenied(
            "Rejected send message".into(),
        )));
        assert!(is_refusal(&denied));
        let polkit = zbus::Error::FDO(Box::new(
            zbus::fdo::Error::InteractiveAuthorizationRequired("".into()),
        ));
        assert!(is_refusal(&polkit));
        let absent = zbus::Error::FDO(Box::new(zbus::fdo::Error::ServiceUnknown(
            "io.postmaster.Supervisor1".into(),
        )));
        assert!(!is_refusal(&absent));
        assert!(!is_refusal(&zbus::Error::Address("no bus".into())));
        assert_eq!(
            not_allowed("mailadmins"),
            "not allowed: run as root or as a member of mailadmins"
        );
    }

    #[test]
    fn the_refusal_names_the_configured_admin_group() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "host_name = \"mail.example.org\"\ndomains = [\"example.org\"]\n[systemd]\nadmin_group = \"mailadmins\"\n").unwrap();
        assert_eq!(admin_group(&config), "mailadmins");
        assert_eq!(
            admin_group(&dir.path().join("unreadable.toml")),
            "postmaster-admin"
        );
    }
}
