//! The `postmaster` command line: flags become validated values here, and every
//! failure becomes an exit code in one place ([`ExitCode`]).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{Parser, Subcommand, ValueEnum};

use crate::accounts::{self, Accounts};
use crate::apply;
use crate::bus;
use crate::certificate;
use crate::status::Status;
use crate::config::{self, Config, MapType};
use crate::diag::Invalid;
use crate::password::{self, Scheme};
use crate::render;
use crate::tomlwalk;

/// Exit codes scripts can rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    /// The configuration or accounts file is invalid; the errors were printed.
    Invalid = 1,
    /// Wrong usage (clap's own code).
    Usage = 2,
    /// Something in the system failed: a file could not be written, a program failed.
    Failed = 3,
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
    /// Catch-alls in the accounts file: set, unset.
    #[command(name = "catch-all")]
    CatchAll {
        #[command(subcommand)]
        command: CatchAllCommand,
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
        Commands::Status { json } => status(json),
        Commands::Reload => ask(|c| Box::pin(async move { c.reload().await })),
        Commands::Renew { force } => ask(move |c| Box::pin(async move { c.renew(force).await })),
        Commands::HashPassword { scheme } => hash_password(scheme.into()),
        Commands::Mailbox { command } => accounts_cli::mailbox(&cli.config, command),
        Commands::Alias { command } => accounts_cli::alias(&cli.config, command),
        Commands::CatchAll { command } => accounts_cli::catch_all(&cli.config, command),
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
    }
}

enum Failure {
    Invalid(Invalid),
    Failed(String),
    /// The daemon answered and reported a problem; it was printed.
    Reported,
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
    let accounts = load_accounts(&config)?;
    Ok((config, accounts))
}

pub fn load_accounts(config: &Config) -> Result<Accounts, Invalid> {
    let path = &config.accounts_file;
    let bytes = std::fs::read(path).map_err(|e| {
        Invalid(vec![crate::diag::whole_file(
            path,
            format!("cannot read the accounts file: {e}"),
            "create it, or set accounts_file in the configuration",
        )])
    })?;
    let source = tomlwalk::decode(path, bytes).map_err(|d| Invalid(vec![d]))?;
    accounts::parse(&source, &config.accounts_policy())
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

/// The map type: the configured one, else lmdb where this postfix supports it.
pub fn map_type(config: &Config) -> MapType {
    if let Some(t) = config.postfix.map_type {
        return t;
    }
    match Command::new("postconf").arg("-m").output() {
        Ok(out) if out.status.success() => {
            if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == "lmdb") {
                MapType::Lmdb
            } else {
                MapType::Hash
            }
        }
        // No postfix here (rendering on another machine): assume a current one.
        _ => MapType::Lmdb,
    }
}

fn render_to(config_path: &Path, out: &Path) -> Result<(), Failure> {
    let (config, accounts) = load(config_path)?;
    let mut files = render::generated(&config, &accounts);
    files.extend(render::host_config(&config, map_type(&config), &config_path.display().to_string()));
    let options = apply::Options { compile_maps: None, passwd_group: None, postmap: "postmap".into() };
    let report = apply::apply(out, &files, &options)?;
    for f in &files {
        println!("{}", out.join(&f.path).display());
    }
    eprintln!("{} written, {} unchanged", report.written.len(), report.unchanged.len());
    Ok(())
}

fn apply_once(config_path: &Path) -> Result<(), Failure> {
    let (config, accounts) = load(config_path)?;
    let previous = std::fs::read_to_string(config.generated_dir.join(render::paths::PASSWD_FILE)).ok();
    let files = render::in_safe_order(render::generated(&config, &accounts), previous.as_deref(), &accounts);
    let options = apply::Options {
        compile_maps: Some(map_type(&config)),
        passwd_group: Some("dovecot".into()),
        postmap: "postmap".into(),
    };
    let report = apply::apply(&config.generated_dir, &files, &options)?;
    for p in &report.written {
        println!("written: {}", p.display());
    }
    for p in &report.unchanged {
        println!("unchanged: {}", p.display());
    }
    let installed = certificate::installed(&config);
    let (info, pair) = match certificate::read_source(&config)
        .and_then(|(chain, key)| certificate::prepare(&config, &chain, &key).map_err(|p| p.to_string()))
    {
        Ok(ready) => ready,
        Err(why) if installed.is_some() => {
            eprintln!("certificate not installed, the current one stays: {why}");
            return Ok(());
        }
        Err(why) => {
            eprintln!("certificate not usable ({why}); installing a self-signed placeholder");
            certificate::placeholder(&config).map_err(Failure::Failed)?
        }
    };
    if installed.is_some_and(|i| i.sha256_fingerprint == info.sha256_fingerprint) {
        println!("unchanged: {}", config.installed_pair().display());
    } else {
        certificate::install(&config, &pair).map_err(Failure::Failed)?;
        println!("written: {} ({}, until {})", config.installed_pair().display(), info.subject, crate::tls::format_utc(info.not_after));
    }
    Ok(())
}

fn run_daemon(config_path: &Path) -> Result<(), Failure> {
    crate::logging::init();
    crate::daemon::run(config_path).map_err(Failure::Failed)
}

/// Runs one call to the daemon over the system bus.
fn call<T>(
    f: impl for<'c> FnOnce(&'c bus::SupervisorClientProxy<'static>) -> std::pin::Pin<Box<dyn std::future::Future<Output = zbus::Result<T>> + 'c>>,
) -> Result<T, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(e.to_string()))?;
    runtime.block_on(async {
        let unreachable = |e: zbus::Error| Failure::Failed(format!("cannot reach the postmaster daemon on the system bus ({}): {e}", bus::BUS_NAME));
        let connection = zbus::Connection::system().await.map_err(unreachable)?;
        let proxy = bus::SupervisorClientProxy::new(&connection).await.map_err(unreachable)?;
        f(&proxy).await.map_err(unreachable)
    })
}

fn status(json: bool) -> Result<(), Failure> {
    let text = call(|c| Box::pin(async move { c.status().await }))?;
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
    f: impl for<'c> FnOnce(&'c bus::SupervisorClientProxy<'static>) -> std::pin::Pin<Box<dyn std::future::Future<Output = zbus::Result<String>> + 'c>>,
) -> Result<(), Failure> {
    let text = call(f)?;
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

// ---- accounts from the command line: mailbox, alias, catch-all -----------------------

pub use accounts_cli::{AliasCommand, CatchAllCommand, MailboxCommand};

/// The effects around [`accounts::edit`]: reading the file, asking for a password,
/// writing the file back only if nobody changed it meanwhile, and waiting for the
/// daemon to serve it.
mod accounts_cli {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::accounts::edit::{self, Edit, Refused};

    #[derive(Debug, Subcommand)]
    pub enum MailboxCommand {
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
    pub enum AliasCommand {
        /// Create an alias, or add targets to it: mailbox names or addresses.
        Add {
            address: String,
            #[arg(required = true)]
            targets: Vec<String>,
        },
        /// Remove an alias, or only the targets given.
        Remove { address: String, targets: Vec<String> },
        /// Every alias and catch-all, and what it delivers to.
        List {
            #[arg(long)]
            json: bool,
        },
    }

    #[derive(Debug, Subcommand)]
    pub enum CatchAllCommand {
        /// Deliver mail to addresses of DOMAIN that nothing else matches to TARGET.
        Set { domain: String, target: String },
        /// Remove the catch-all of DOMAIN: such mail is rejected again.
        Unset { domain: String },
    }

    pub fn mailbox(config_path: &Path, command: MailboxCommand) -> Result<(), Failure> {
        match command {
            MailboxCommand::Add { name, quota, send_as, scheme } => edit_file(config_path, || {
                Ok(Edit::AddMailbox { password: new_password(scheme.into())?, name, quota, send_as })
            }),
            MailboxCommand::Passwd { name, scheme } => {
                edit_file(config_path, || Ok(Edit::SetPassword { password: new_password(scheme.into())?, name }))
            }
            MailboxCommand::Disable { name } => edit_file(config_path, || Ok(Edit::SetDisabled { name, disabled: true })),
            MailboxCommand::Enable { name } => edit_file(config_path, || Ok(Edit::SetDisabled { name, disabled: false })),
            MailboxCommand::Remove { name, force } => edit_file(config_path, || Ok(Edit::RemoveMailbox { name, force })),
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
                    let extra = if extra.is_empty() { String::new() } else { format!("  ({})", extra.join("; ")) };
                    println!("{}  {}{extra}", m.name, m.addresses.join(", "));
                }
                Ok(())
            }
        }
    }

    pub fn alias(config_path: &Path, command: AliasCommand) -> Result<(), Failure> {
        match command {
            AliasCommand::Add { address, targets } => edit_file(config_path, || Ok(Edit::AddAlias { address, targets })),
            AliasCommand::Remove { address, targets } => edit_file(config_path, || Ok(Edit::RemoveAlias { address, targets })),
            AliasCommand::List { json } => {
                let (_, accounts) = load(config_path)?;
                let list = edit::alias_list(&accounts);
                if json {
                    return print_json(&list);
                }
                for a in list {
                    let outside = if a.external { " (and outside)" } else { "" };
                    println!("{} -> {}  [mailboxes: {}{outside}]", a.address, a.targets.join(", "), a.mailboxes.join(", "));
                }
                Ok(())
            }
        }
    }

    pub fn catch_all(config_path: &Path, command: CatchAllCommand) -> Result<(), Failure> {
        match command {
            CatchAllCommand::Set { domain, target } => edit_file(config_path, || Ok(Edit::SetCatchAll { domain, target })),
            CatchAllCommand::Unset { domain } => edit_file(config_path, || Ok(Edit::UnsetCatchAll { domain })),
        }
    }

    fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
        let text = serde_json::to_string_pretty(value).map_err(|e| Failure::Failed(e.to_string()))?;
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
        Failure::Failed(format!("cannot {action} {}: {e}{hint}; nothing was changed", path.display()))
    }

    /// Reads, edits, checks, writes, and waits for the daemon.
    fn edit_file(config_path: &Path, make: impl FnOnce() -> Result<Edit, Failure>) -> Result<(), Failure> {
        let config = Config::load(config_path)?;
        let path = config.accounts_file.clone();
        let original = std::fs::read(&path).map_err(|e| io_failure("read the accounts file", &path, &e))?;
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
        let before = daemon_status().ok();
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
        wait_for_daemon(before, &edited.accounts)
    }

    /// A new password, hashed: twice on a terminal, or one line of standard input.
    fn new_password(scheme: Scheme) -> Result<String, Failure> {
        let reading = |e: std::io::Error| Failure::Failed(format!("reading the password: {e}"));
        let password = if std::io::stdin().is_terminal() {
            let first = rpassword::prompt_password("New password: ").map_err(reading)?;
            let again = rpassword::prompt_password("Again: ").map_err(reading)?;
            if first != again {
                return Err(Failure::Failed("the two passwords differ; nothing was changed".into()));
            }
            first
        } else {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map_err(reading)?;
            line.trim_end_matches(['\n', '\r']).to_string()
        };
        if password.is_empty() {
            return Err(Failure::Failed("the password is empty; nothing was changed".into()));
        }
        password::hash(scheme, &password).map_err(|e| Failure::Failed(e.to_string()))
    }

    /// Writes `content` in place of the file atomically (temporary file in the same
    /// directory, fsync, rename), with the old file's owner, group and mode, and
    /// only if the file still holds `original` just before the rename.
    fn write_unless_changed(path: &Path, original: &[u8], content: &[u8]) -> Result<(), Failure> {
        let meta = std::fs::metadata(path).map_err(|e| io_failure("read the accounts file", path, &e))?;
        let mode = meta.permissions().mode() & 0o7777;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
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
                rustix::fs::fchown(&f, Some(rustix::fs::Uid::from_raw(meta.uid())), Some(rustix::fs::Gid::from_raw(meta.gid())))
                    .map_err(|e| io_failure("give the new file the owner and group of", path, &e.into()))?;
            }
            f.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|e| io_failure("set the mode of", &tmp, &e))?;
            f.write_all(content).map_err(|e| io_failure("write", &tmp, &e))?;
            f.sync_all().map_err(|e| io_failure("flush", &tmp, &e))?;
            if std::fs::read(path).map_err(|e| io_failure("read the accounts file", path, &e))? != original {
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

    fn daemon_status() -> Result<Status, Failure> {
        let text = call(|c| Box::pin(async move { c.status().await }))?;
        serde_json::from_str(&text).map_err(|e| Failure::Failed(format!("the daemon's status is not understood: {e}")))
    }

    /// Until the daemon reports the new file applied or refused. Its status names
    /// no file version, so a new `applied` event (or an error) is the sign; an
    /// apply that changes no generated file records none, and after a short wait a
    /// Reload asks it directly.
    fn wait_for_daemon(before: Option<Status>, expected: &Accounts) -> Result<(), Failure> {
        let Some(before) = before else {
            println!("the daemon is not reachable on the system bus; it applies the file when it runs");
            return Ok(());
        };
        let counts = (expected.mailboxes.len(), expected.aliases.len(), expected.catch_all.len());
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let Ok(now) = daemon_status() else { continue };
            let a = &now.accounts;
            if !a.errors.is_empty() {
                eprintln!("the daemon refused the accounts file; it keeps serving the last good one:");
                for e in &a.errors {
                    eprintln!("{e}");
                }
                return Err(Failure::Reported);
            }
            if a.applied != before.accounts.applied && (a.mailboxes, a.alias_addresses, a.catch_alls) == counts {
                println!("the daemon applied it: {} mailboxes, {} alias addresses, {} catch-alls served", counts.0, counts.1, counts.2);
                return Ok(());
            }
        }
        ask(|c| Box::pin(async move { c.reload().await }))
    }
}
