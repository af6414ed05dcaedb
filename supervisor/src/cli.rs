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
use crate::status::Status;

/// Exit codes scripts can rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    /// The configuration or accounts file is invalid; the errors were printed.
    Invalid = 1,
    /// Wrong usage (clap's own code).
    Usage = 2,
    /// Something in the system failed: a file could not be written, a program failed,
    /// the daemon cannot be reached.
    Failed = 3,
    /// The daemon runs and refused the call: the caller is neither root nor in the
    /// admin group.
    NotAllowed = 4,
}

#[derive(Debug, Parser)]
#[command(name = "postmaster", version, about = "A postfix + dovecot mail host that runs itself")]
pub struct Cli {
    /// The configuration file.
    #[arg(long, short, global = true, default_value = config::DEFAULT_PATH, env = "POSTMASTER_CONFIG")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Commands,
}

#[derive(Debug, Subcommand)]
pub enum Commands {
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
    /// Hash a password for the accounts file. Reads it from the terminal without
    /// echo, or one line from standard input when that is not a terminal.
    HashPassword {
        #[arg(long, value_enum, default_value_t = HashScheme::Sha512Crypt)]
        scheme: HashScheme,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum HashScheme {
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
        Commands::Renew { force } => ask(&cli.config, move |c| Box::pin(async move { c.renew(force).await })),
        Commands::HashPassword { scheme } => hash_password(scheme.into()),
    };
    match result {
        Ok(()) => ExitCode::Ok,
        Err(Failure::Invalid(invalid)) => {
            eprintln!("{invalid}");
            let n = invalid.0.len();
            eprintln!("{n} error{}; nothing was changed", if n == 1 { "" } else { "s" });
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
    NotAllowed { group: String },
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
pub fn load(config_path: &Path) -> Result<(Config, Accounts), Invalid> {
    let config = Config::load(config_path)?;
    let accounts = pipeline::load_accounts(&config)?;
    Ok((config, accounts))
}

fn check(config_path: &Path) -> Result<(), Failure> {
    let (config, accounts) = load(config_path)?;
    println!(
        "ok: {} mailbox{}, {} alias address{}, {} catch-all{} for {}",
        accounts.mailboxes.len(),
        if accounts.mailboxes.len() == 1 { "" } else { "es" },
        accounts.aliases.len(),
        if accounts.aliases.len() == 1 { "" } else { "es" },
        accounts.catch_all.len(),
        if accounts.catch_all.len() == 1 { "" } else { "s" },
        config.domains.join(", ")
    );
    Ok(())
}

fn render_to(config_path: &Path, out: &Path) -> Result<(), Failure> {
    let (config, accounts) = load(config_path)?;
    let mut files = render::generated(&config, &accounts);
    let resolved = Resolved::probe(config);
    files.extend(render::host_config(&resolved.config, resolved.map_type, &config_path.display().to_string()));
    let options = apply::Options { compile_maps: None, passwd_group: None, postmap: "postmap".into() };
    let report = apply::apply(out, &files, &options)?;
    for f in &files {
        println!("{}", out.join(&f.path).display());
    }
    eprintln!("{} written, {} unchanged", report.written.len(), report.unchanged.len());
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
            eprintln!("{n} error{} in the accounts file; the accounts were not applied", if n == 1 { "" } else { "s" });
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
    Ok(())
}

/// Installs the source pair when it is new and valid, a placeholder when nothing
/// valid is installed, and otherwise leaves the installed pair alone.
fn apply_certificate(config: &Config) -> Result<(), Failure> {
    let installed = certificate::installed(config);
    let (info, pair) = match certificate::decide(config, certificate::read_source(config), installed.as_ref()) {
        Decision::Unchanged(_) => {
            println!("unchanged: {}", config.installed_pair().display());
            return Ok(());
        }
        Decision::AwaitingAcme => {
            println!("unchanged: {} (a placeholder until the daemon obtains a certificate)", config.installed_pair().display());
            return Ok(());
        }
        Decision::Keep(refusal) => {
            eprintln!("certificate not installed, the current one stays: {}", refusal.why);
            return Ok(());
        }
        Decision::Placeholder(refusal) => {
            eprintln!("certificate not usable ({}); installing a self-signed placeholder", refusal.why);
            certificate::placeholder(config).map_err(Failure::Failed)?
        }
        Decision::Install(info, pair) => (info, pair),
    };
    certificate::install(config, &pair)?;
    println!("written: {} ({}, until {})", config.installed_pair().display(), info.names.join(", "), crate::tls::format_utc(info.not_after));
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
    const REFUSALS: [&str; 2] = ["org.freedesktop.DBus.Error.AccessDenied", "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"];
    match e {
        zbus::Error::MethodError(name, _, _) => REFUSALS.contains(&name.as_str()),
        zbus::Error::FDO(e) => matches!(**e, zbus::fdo::Error::AccessDenied(_) | zbus::fdo::Error::InteractiveAuthorizationRequired(_)),
        _ => false,
    }
}

/// The admin group to name in a refusal: the configured one when the configuration
/// can be read (a refused caller often cannot read it), else the default.
fn admin_group(config_path: &Path) -> String {
    Config::load(config_path).map(|c| c.units.admin_group).unwrap_or_else(|_| config::DEFAULT_ADMIN_GROUP.to_string())
}

fn call<T>(
    config_path: &Path,
    f: impl for<'c> FnOnce(&'c bus::SupervisorClientProxy<'static>) -> std::pin::Pin<Box<dyn std::future::Future<Output = zbus::Result<T>> + 'c>>,
) -> Result<T, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(e.to_string()))?;
    runtime.block_on(async {
        let unreachable = |e: zbus::Error| {
            if is_refusal(&e) {
                Failure::NotAllowed { group: admin_group(config_path) }
            } else {
                Failure::Failed(format!("cannot reach the postmaster daemon on the system bus ({}): {e}", bus::BUS_NAME))
            }
        };
        let connection = zbus::Connection::system().await.map_err(unreachable)?;
        let proxy = bus::SupervisorClientProxy::new(&connection).await.map_err(unreachable)?;
        f(&proxy).await.map_err(unreachable)
    })
}

fn status(config_path: &Path, json: bool) -> Result<(), Failure> {
    let text = call(config_path, |c| Box::pin(async move { c.status().await }))?;
    let status: Status = serde_json::from_str(&text).map_err(|e| Failure::Failed(format!("the daemon's status is not understood: {e}")))?;
    if json {
        println!("{text}");
    } else {
        print!("{}", status.human());
    }
    if status.healthy() { Ok(()) } else { Err(Failure::Reported) }
}

/// Reload or Renew: prints the daemon's outcome.
fn ask(
    config_path: &Path,
    f: impl for<'c> FnOnce(&'c bus::SupervisorClientProxy<'static>) -> std::pin::Pin<Box<dyn std::future::Future<Output = zbus::Result<String>> + 'c>>,
) -> Result<(), Failure> {
    let text = call(config_path, f)?;
    let outcome: bus::Outcome = serde_json::from_str(&text).map_err(|e| Failure::Failed(format!("the daemon's answer is not understood: {e}")))?;
    println!("{}", outcome.summary);
    for e in &outcome.errors {
        eprintln!("{e}");
    }
    if outcome.ok { Ok(()) } else { Err(Failure::Reported) }
}

fn hash_password(scheme: Scheme) -> Result<(), Failure> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").map_err(|e| Failure::Failed(format!("reading the password: {e}")))?;
        let again = rpassword::prompt_password("Again: ").map_err(|e| Failure::Failed(format!("reading the password: {e}")))?;
        if first != again {
            return Err(Failure::Failed("the two passwords differ; nothing was hashed".into()));
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::Failed(format!("reading the password from standard input: {e}")))?;
        line.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(&line).to_string()
    };
    let hashed = password::hash(scheme, &password).map_err(|e| Failure::Failed(e.to_string()))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{hashed}").map_err(|e| Failure::Failed(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_what_the_readme_says() {
        let codes = [ExitCode::Ok, ExitCode::Invalid, ExitCode::Usage, ExitCode::Failed, ExitCode::NotAllowed];
        assert_eq!(codes.map(|c| c as i32), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_refusal_is_told_apart_from_an_absent_daemon() {
        let denied = zbus::Error::FDO(Box::new(zbus::fdo::Error::AccessDenied("Rejected send message".into())));
        assert!(is_refusal(&denied));
        let polkit = zbus::Error::FDO(Box::new(zbus::fdo::Error::InteractiveAuthorizationRequired("".into())));
        assert!(is_refusal(&polkit));
        let absent = zbus::Error::FDO(Box::new(zbus::fdo::Error::ServiceUnknown("io.postmaster.Supervisor1".into())));
        assert!(!is_refusal(&absent));
        assert!(!is_refusal(&zbus::Error::Address("no bus".into())));
        assert_eq!(not_allowed("mailadmins"), "not allowed: run as root or as a member of mailadmins");
    }

    #[test]
    fn the_refusal_names_the_configured_admin_group() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "host_name = \"mail.example.org\"\ndomains = [\"example.org\"]\n[systemd]\nadmin_group = \"mailadmins\"\n").unwrap();
        assert_eq!(admin_group(&config), "mailadmins");
        assert_eq!(admin_group(&dir.path().join("unreadable.toml")), "postmaster-admin");
    }
}
