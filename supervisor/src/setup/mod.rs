//! `postmaster setup` and `postmaster uninstall`: from a fresh Debian 13 host to a
//! running mail host in one command, and back.
//!
//! Setup is one binary doing what a person would otherwise piece together: the
//! binary carries its units, policies and rendering, so the command that installs
//! is the program that will run (no script to keep in step with it). The
//! decisions are pure values in the submodules, unit-tested without a host:
//! - [`judge`]: is this host fit (Debian 13, mail ports free, no one else's
//!   postfix/dovecot configuration), what packages are missing;
//! - [`plan`]: what happens to each file, from what is on disk and the manifest
//!   of what setup installed (hashes); whether to go on, ask for --yes or refuse;
//! - [`diff`]: the difference shown before an upgrade;
//! - [`text`]: the config.toml and accounts file written for the admin.
//!
//! This file is the edge: it gathers the facts, runs apt-get and systemctl, writes.

pub(crate) mod diff;
pub(crate) mod judge;
pub(crate) mod plan;
pub(crate) mod text;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::config::{Challenge, Config, TlsSource};
use crate::diag::Invalid;
use crate::pipeline::Resolved;
use crate::render;
use judge::{DebianFacts, Refusal};
use plan::{Action, Desired, Manifest, Removal, Step, Verdict};
use text::{Certificate, NewConfig};

/// What the command line asked for, validated.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) config_path: PathBuf,
    pub(crate) host: Option<String>,
    pub(crate) domains: Vec<String>,
    pub(crate) certificate: Option<Certificate>,
    pub(crate) yes: bool,
    pub(crate) force: bool,
}

#[derive(Debug)]
pub(crate) enum SetupError {
    /// Refused before changing anything it names; each says what to do.
    Refused(Vec<Refusal>),
    /// An upgrade was shown and not made: run again with --yes.
    NeedsYes,
    /// The configuration (given or written) is invalid.
    Invalid(Invalid),
    /// A step failed: a program, a file.
    Failed(StepFailed),
}

/// Why a step of setup or uninstall failed once the host was judged fit: a
/// program, a file. The command prints the text.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepFailed {
    #[error("cannot run {program}: {source}")]
    CannotRun {
        program: &'static str,
        source: std::io::Error,
    },
    /// `command` is the program and its arguments; `stderr` what it said, trimmed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Program {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    /// `args` as given to apt-get; `missing` the packages it was to install.
    #[error(
        "`apt-get {args}` failed ({status}); install {missing} yourself (or fix the package sources), then run setup again"
    )]
    Apt {
        args: String,
        status: std::process::ExitStatus,
        missing: String,
    },
    /// The certificate is installed through `postmaster apply` as the daemon's
    /// user; everything it printed.
    #[error("`postmaster apply` as user postmaster failed: {stdout}{stderr}")]
    ApplyAsPostmaster { stdout: String, stderr: String },
    #[error(
        "{} is damaged ({source}); it records what setup installed: restore it, or remove it and run setup with --force",
        plan::MANIFEST
    )]
    ManifestDamaged { source: serde_json::Error },
    #[error(
        "setup has not installed anything here ({} is missing); nothing to remove",
        plan::MANIFEST
    )]
    NothingInstalled,
    #[error(
        "{} does not exist yet: name the mail host and its domains, e.g. `postmaster setup --host mail.example.org --domain example.org`",
        .0.display()
    )]
    NoConfiguration(PathBuf),
    #[error("group postmaster is missing after systemd-sysusers")]
    NoPostmasterGroup,
    /// `doing` is "reading", "keeping" (a copy of Debian's file) or "removing".
    #[error("{doing} {}: {source}", path.display())]
    File {
        doing: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file operation whose error names no path: the system's text alone.
    #[error(transparent)]
    Io(std::io::Error),
    /// Writing a file, or reading /etc/group (the text names the file).
    #[error(transparent)]
    Apply(crate::apply::ApplyError),
    /// The DKIM keys whose records the summary lists cannot be read.
    #[error(transparent)]
    Dkim(crate::dkim::store::DkimError),
}

impl From<Refusal> for SetupError {
    fn from(r: Refusal) -> Self {
        SetupError::Refused(vec![r])
    }
}

impl From<StepFailed> for SetupError {
    fn from(e: StepFailed) -> Self {
        SetupError::Failed(e)
    }
}

fn file_failed(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StepFailed {
    move |source| StepFailed::File {
        doing,
        path: path.to_path_buf(),
        source,
    }
}

/// The Debian packages every mail host setup makes needs.
const PACKAGES: [&str; 10] = [
    "postfix",
    "postfix-lmdb",
    "dovecot-core",
    "dovecot-imapd",
    "dovecot-pop3d",
    "dovecot-lmtpd",
    // dovecot.conf as rendered files spam into Junk with Sieve and serves
    // ManageSieve: dovecot does not start without their modules.
    "dovecot-sieve",
    "dovecot-managesieved",
    "rspamd",
    "ca-certificates",
];

/// The packages `config` needs: [`PACKAGES`], valkey while Junk teaches rspamd's
/// Bayes filter, unbound (and the root trust anchor, which Debian's unbound only
/// recommends and cannot start without) while the checks ask a resolver of this
/// host's own.
fn packages(config: &Config) -> Vec<&'static str> {
    let mut wanted = PACKAGES.to_vec();
    if config.inbound.learning {
        wanted.push("valkey-server");
    }
    if local_resolver(config) {
        wanted.extend(["unbound", "dns-root-data"]);
    }
    wanted
}

fn local_resolver(config: &Config) -> bool {
    config.inbound.enabled && config.inbound.resolver == crate::config::Resolver::Local
}

const BINARY: &str = "/usr/local/bin/postmaster";
const SERVICE: &str = "postmaster.service";
const ACME_SOCKET: &str = "postmaster-acme.socket";
/// postfix's LMTP deliveries to dovecot, through a socket systemd holds across
/// dovecot's reloads (`postmaster lmtp-relay`, units/postmaster-lmtp.socket).
const LMTP_SOCKET: &str = "postmaster-lmtp.socket";
const LMTP_SERVICE: &str = "postmaster-lmtp.service";
/// TLS for IMAP, POP3 and ManageSieve in front of dovecot (`postmaster tls-front`,
/// units/postmaster-tls.socket): a new certificate reloads it, never dovecot.
const TLS_SOCKET: &str = "postmaster-tls.socket";
const TLS_SERVICE: &str = "postmaster-tls.service";

/// postmaster's own files, carried in the binary (units/ in the source tree).
fn own_files() -> Vec<(&'static str, &'static str, u32)> {
    vec![
        (
            "/usr/local/lib/systemd/system/postmaster.service",
            include_str!("../../../units/postmaster.service"),
            0o644,
        ),
        (
            "/usr/local/lib/systemd/system/postmaster-acme.socket",
            include_str!("../../../units/postmaster-acme.socket"),
            0o644,
        ),
        (
            "/usr/local/lib/systemd/system/postmaster-lmtp.socket",
            include_str!("../../../units/postmaster-lmtp.socket"),
            0o644,
        ),
        (
            "/usr/local/lib/systemd/system/postmaster-lmtp.service",
            include_str!("../../../units/postmaster-lmtp.service"),
            0o644,
        ),
        (
            "/usr/local/lib/systemd/system/postmaster-tls.socket",
            include_str!("../../../units/postmaster-tls.socket"),
            0o644,
        ),
        (
            "/usr/local/lib/systemd/system/postmaster-tls.service",
            include_str!("../../../units/postmaster-tls.service"),
            0o644,
        ),
        (
            "/usr/local/lib/sysusers.d/postmaster.conf",
            include_str!("../../../units/sysusers-postmaster.conf"),
            0o644,
        ),
        (
            "/usr/local/lib/tmpfiles.d/postmaster.conf",
            include_str!("../../../units/tmpfiles-postmaster.conf"),
            0o644,
        ),
        (
            "/usr/share/dbus-1/system.d/io.postmaster.Supervisor1.conf",
            include_str!("../../../units/dbus-io.postmaster.Supervisor1.conf"),
            0o644,
        ),
        (
            "/usr/share/polkit-1/rules.d/50-postmaster.rules",
            include_str!("../../../units/polkit-postmaster.rules"),
            0o644,
        ),
        // Debian's postfix and dovecot units with less exposure (units/*-hardening.conf).
        (
            "/usr/local/lib/systemd/system/dovecot.service.d/50-postmaster-hardening.conf",
            include_str!("../../../units/dovecot-hardening.conf"),
            0o644,
        ),
        (
            "/usr/local/lib/systemd/system/postfix.service.d/50-postmaster-hardening.conf",
            include_str!("../../../units/postfix-hardening.conf"),
            0o644,
        ),
        (
            "/usr/local/lib/systemd/system/postfix@.service.d/50-postmaster-hardening.conf",
            include_str!("../../../units/postfix-hardening.conf"),
            0o644,
        ),
        (
            text::EXAMPLE_PATH,
            include_str!("../../../postmaster.example.toml"),
            0o644,
        ),
    ]
}

/// Everything setup installs: the binary, postmaster's own files, and the mail
/// host's configuration rendered from `config` (to the same names under /etc).
fn desired_files(resolved: &Resolved, config_path: &Path, binary: Vec<u8>) -> Vec<Desired> {
    let mut files = vec![Desired {
        path: BINARY.into(),
        content: binary,
        mode: 0o755,
    }];
    files.extend(own_files().into_iter().map(|(p, c, mode)| Desired {
        path: p.into(),
        content: c.as_bytes().to_vec(),
        mode,
    }));
    files.extend(
        render::host_config(
            &resolved.config,
            resolved.map_type,
            &config_path.display().to_string(),
        )
        .into_iter()
        .map(|f| Desired {
            path: Path::new("/etc").join(&f.path),
            // The programs dovecot's Sieve scripts pipe messages to (learning).
            mode: if f.kind == render::Kind::Program {
                0o755
            } else {
                0o644
            },
            content: f.content.into_bytes(),
        }),
    );
    files
}

/// Which service reads a file setup installs: what to reload when it changes.
fn owner(path: &Path) -> Option<&'static str> {
    let dropin = |unit: &str| {
        path.parent()
            .and_then(|d| d.file_name())
            .is_some_and(|d| d.to_string_lossy() == format!("{unit}.service.d"))
    };
    if path.starts_with("/etc/postfix") || dropin("postfix") || dropin("postfix@") {
        Some("postfix")
    } else if path.starts_with("/etc/dovecot") || dropin("dovecot") {
        Some("dovecot")
    } else if path.starts_with("/etc/rspamd") || path.starts_with("/etc/tmpfiles.d") {
        // tmpfiles.d: the directory of rspamd's controller socket.
        Some("rspamd")
    } else if path.starts_with("/etc/unbound") {
        Some("unbound")
    } else {
        None
    }
}

// ---- facts --------------------------------------------------------------------

fn read_opt(path: &Path) -> Option<Vec<u8>> {
    fs::read(path).ok()
}

fn run(program: &'static str, args: &[&str]) -> Result<String, SetupError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| StepFailed::CannotRun { program, source })?;
    if !out.status.success() {
        return Err(StepFailed::Program {
            command: format!("{program} {}", args.join(" ")),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The programs (comm) holding each listening TCP port.
fn listening() -> BTreeMap<u16, BTreeSet<String>> {
    let listeners: Vec<judge::Listener> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .flat_map(|t| judge::listeners(&t))
        .collect();
    let inodes: BTreeSet<u64> = listeners.iter().map(|l| l.inode).collect();
    let mut holders: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
                && inodes.contains(&inode)
            {
                holders
                    .entry(inode)
                    .or_default()
                    .insert(comm.trim().to_string());
            }
        }
    }
    let mut ports: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    for l in listeners {
        let entry = ports.entry(l.port).or_default();
        entry.extend(holders.get(&l.inode).cloned().unwrap_or_default());
    }
    ports
}

fn debian_facts() -> DebianFacts {
    let verify = Command::new("dpkg")
        .arg("--verify")
        .args(PACKAGES)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    DebianFacts {
        master_cf_dist: fs::read_to_string("/usr/share/postfix/master.cf.dist").ok(),
        changed_conffiles: judge::changed_conffiles(&verify),
    }
}

fn load_manifest() -> Result<Manifest, SetupError> {
    match fs::read(plan::MANIFEST) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|source| StepFailed::ManifestDamaged { source }.into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
        Err(e) => Err(file_failed("reading", Path::new(plan::MANIFEST))(e).into()),
    }
}

fn save_manifest(m: &Manifest) -> Result<(), SetupError> {
    let path = Path::new(plan::MANIFEST);
    let dir = path.parent().expect("has a parent");
    fs::create_dir_all(dir).map_err(StepFailed::Io)?;
    // Root's alone: what is recorded here is written back into /etc by uninstall.
    fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(StepFailed::Io)?;
    let text = serde_json::to_string_pretty(m).expect("manifest serialises");
    crate::apply::write_atomic(path, text.as_bytes(), 0o600, None).map_err(StepFailed::Apply)?;
    Ok(())
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

// ---- the configuration ----------------------------------------------------------

/// The configuration: the existing file (the flags must agree with it), or a new
/// one from the flags. Returns it and the text to write when it is new.
fn configuration(opts: &Options) -> Result<(Config, Option<String>), SetupError> {
    if opts.config_path.exists() {
        let config = Config::load(&opts.config_path).map_err(SetupError::Invalid)?;
        let mut differs = Vec::new();
        if let Some(h) = &opts.host
            && *h != config.host_name
        {
            differs.push(format!(
                "--host {h}, but host_name is {} there",
                config.host_name
            ));
        }
        if !opts.domains.is_empty() && opts.domains != config.domains {
            differs.push(format!(
                "--domain {}, but domains are {} there",
                opts.domains.join(" --domain "),
                config.domains.join(", ")
            ));
        }
        if !differs.is_empty() {
            return Err(SetupError::Refused(
                differs
                    .into_iter()
                    .map(|what| Refusal::ConfigDiffers { what })
                    .collect(),
            ));
        }
        return Ok((config, None));
    }
    let (Some(host), false) = (&opts.host, opts.domains.is_empty()) else {
        return Err(StepFailed::NoConfiguration(opts.config_path.clone()).into());
    };
    let text = text::config_toml(&NewConfig {
        host_name: host.clone(),
        domains: opts.domains.clone(),
        certificate: opts.certificate.clone().unwrap_or(Certificate::Acme {
            contact: Vec::new(),
        }),
    });
    let source = crate::diag::Source::new(&opts.config_path, text.clone());
    let config = Config::parse(&source).map_err(SetupError::Invalid)?;
    Ok((config, Some(text)))
}

// ---- setup ------------------------------------------------------------------------

/// The plan for this host now, and what to do with it.
struct Planned {
    steps: Vec<Step>,
    desired: Vec<Desired>,
    verdict: Verdict,
}

fn make_plan(
    config: &Config,
    opts: &Options,
    manifest: &Manifest,
    binary: &[u8],
) -> Result<Planned, SetupError> {
    let resolved = Resolved::probe(config.clone());
    let desired = desired_files(&resolved, &opts.config_path, binary.to_vec());
    let on_disk = desired
        .iter()
        .map(|d| (d.path.clone(), read_opt(&d.path)))
        .collect();
    let facts = debian_facts();
    let steps = plan::plan(&desired, &on_disk, manifest, &facts);
    let mut verdict = plan::decide(&steps, manifest, opts.yes, opts.force);
    // conf.d changes matter only while dovecot.conf is not postmaster's yet.
    let dovecot_conf = Path::new("/etc/dovecot/dovecot.conf");
    if !opts.force && !manifest.files.contains_key(dovecot_conf) {
        let dropped = judge::dropped_dovecot_changes(&facts);
        if !dropped.is_empty() {
            verdict = match verdict {
                Verdict::Refuse(mut r) => {
                    r.extend(dropped);
                    Verdict::Refuse(r)
                }
                _ => Verdict::Refuse(dropped),
            };
        }
    }
    Ok(Planned {
        steps,
        desired,
        verdict,
    })
}

fn print_diffs<'a>(steps: impl Iterator<Item = &'a Step>) {
    for s in steps {
        if !s.diff.is_empty() {
            print!("{}", s.diff);
        }
    }
}

/// `postmaster setup`.
pub(crate) fn setup(opts: &Options) -> Result<(), SetupError> {
    if !is_root() {
        return Err(Refusal::NotRoot.into());
    }
    judge::judge_os(fs::read_to_string("/etc/os-release").ok().as_deref())?;
    let ports: Vec<(u16, BTreeSet<String>)> = listening().into_iter().collect();
    let taken = judge::judge_ports(&ports, unit_active(TLS_SOCKET));
    if !taken.is_empty() {
        return Err(SetupError::Refused(taken));
    }
    let (config, new_config) = configuration(opts)?;
    let mut manifest = load_manifest()?;
    let exe = std::env::current_exe().map_err(StepFailed::Io)?;
    let binary = fs::read(&exe).map_err(file_failed("reading", &exe))?;

    // Everything is judged before anything changes; once more after packages are
    // installed, when postconf can say what it supports.
    let first = make_plan(&config, opts, &manifest, &binary)?;
    check_verdict(&first)?;
    // From here on things change; the record of them comes first.
    save_manifest(&manifest)?;

    let wanted = packages(&config);
    let missing = {
        let status = Command::new("dpkg-query")
            .args(["-W", "-f", "${Package} ${db:Status-Abbrev}\n"])
            .args(&wanted)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        judge::missing_packages(&wanted, &status)
    };
    if !missing.is_empty() {
        println!("installing {}", missing.join(" "));
        install_packages(&missing)?;
        manifest
            .packages
            .extend(missing.iter().map(|p| p.to_string()));
        save_manifest(&manifest)?;
    }
    let planned = make_plan(&config, opts, &manifest, &binary)?;
    check_verdict(&planned)?;

    ensure_vmail(&config)?;
    install_files(&planned, &mut manifest, BINARY_AND_UNITS)?;
    // Users and directories first (the accounts file's group is postmaster), then
    // the bus policy that names them.
    run(
        "systemd-sysusers",
        &["/usr/local/lib/sysusers.d/postmaster.conf"],
    )?;
    write_admin_files(opts, &config, new_config.as_deref(), &mut manifest)?;
    run(
        "systemd-tmpfiles",
        &["--create", "/usr/local/lib/tmpfiles.d/postmaster.conf"],
    )?;
    if config.tls.source == TlsSource::Files {
        for p in [&config.tls.cert, &config.tls.key] {
            if !readable_by_daemon(p) {
                return Err(Refusal::Unreadable { path: p.clone() }.into());
            }
        }
    }
    install_files(&planned, &mut manifest, MAIL_CONFIG)?;
    save_manifest(&manifest)?;
    systemctl(&["daemon-reload"])?;
    if unit_active("dbus.service") {
        systemctl(&["reload", "dbus.service"])?;
    }

    // postfix makes its private directory (dovecot's sockets go there) at its
    // first check; then the maps, passwd-file, certificate and first DKIM keys, by
    // the daemon's user, so postfix and dovecot find them when they (re)start.
    run("postfix", &["check"])?;
    prepare_sieve_and_learning(&planned.desired)?;
    as_daemon_apply(&opts.config_path)?;
    start_services(&config, &planned.steps)?;
    manifest.complete = true;
    save_manifest(&manifest)?;
    report(&config, &planned.steps)
}

fn check_verdict(p: &Planned) -> Result<(), SetupError> {
    match &p.verdict {
        Verdict::Proceed => Ok(()),
        Verdict::NeedsYes => {
            print_diffs(p.steps.iter());
            for s in p.steps.iter().filter(|s| s.action != Action::Unchanged) {
                println!("would {}: {}", verb(&s.action), s.path.display());
            }
            Err(SetupError::NeedsYes)
        }
        Verdict::Refuse(r) => {
            print_diffs(
                p.steps
                    .iter()
                    .filter(|s| matches!(s.action, Action::LocallyChanged | Action::Foreign(_))),
            );
            Err(SetupError::Refused(r.clone()))
        }
    }
}

fn verb(a: &Action) -> &'static str {
    match a {
        Action::Unchanged => "leave",
        Action::Create => "create",
        Action::Replace => "replace (the original is kept)",
        Action::Update => "update",
        Action::LocallyChanged => "replace your changed copy",
        Action::Foreign(_) => "replace (kept as a backup)",
    }
}

fn install_packages(missing: &[&str]) -> Result<(), SetupError> {
    let apt = |args: &[&str]| -> Result<(), SetupError> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|source| StepFailed::CannotRun {
                program: "apt-get",
                source,
            })?;
        if status.success() {
            Ok(())
        } else {
            Err(StepFailed::Apt {
                args: args.join(" "),
                status,
                missing: missing.join(" "),
            }
            .into())
        }
    };
    apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(missing);
    apt(&args)
}

/// The vmail user and group own the mailboxes: made with the configured ids, or
/// checked when they exist.
fn ensure_vmail(config: &Config) -> Result<(), SetupError> {
    let d = &config.dovecot;
    let group = crate::apply::group_id(&d.vmail_user).map_err(StepFailed::Apply)?;
    match group {
        Some(gid) if gid != d.vmail_gid => {
            return Err(Refusal::VmailIds {
                what: format!("group {} has id {gid}, not {}", d.vmail_user, d.vmail_gid),
            }
            .into());
        }
        Some(_) => {}
        None => {
            run(
                "groupadd",
                &["--system", "--gid", &d.vmail_gid.to_string(), &d.vmail_user],
            )?;
        }
    }
    let uid = run("id", &["-u", &d.vmail_user]).ok();
    match uid.as_deref().map(str::trim) {
        Some(u) if u != d.vmail_uid.to_string() => {
            return Err(Refusal::VmailIds {
                what: format!("user {} has id {u}, not {}", d.vmail_user, d.vmail_uid),
            }
            .into());
        }
        Some(_) => {}
        None => {
            run(
                "useradd",
                &[
                    "--system",
                    "--uid",
                    &d.vmail_uid.to_string(),
                    "--gid",
                    &d.vmail_gid.to_string(),
                    "--home-dir",
                    &d.mail_root.display().to_string(),
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    "--comment",
                    "virtual mail (postmaster)",
                    &d.vmail_user,
                ],
            )?;
        }
    }
    if !d.mail_root.exists() {
        run(
            "install",
            &[
                "-d",
                "-m",
                "0770",
                "-o",
                &d.vmail_user,
                "-g",
                &d.vmail_user,
                &d.mail_root.display().to_string(),
            ],
        )?;
    }
    Ok(())
}

/// Which of the planned files an install pass writes.
type Pass = fn(&Path) -> bool;
const BINARY_AND_UNITS: Pass = |p| owner(p).is_none();
const MAIL_CONFIG: Pass = |p| owner(p).is_some();

fn install_files(p: &Planned, manifest: &mut Manifest, pass: Pass) -> Result<(), SetupError> {
    for (step, want) in p.steps.iter().zip(&p.desired) {
        if !pass(&step.path) {
            continue;
        }
        let path = &step.path;
        let mut original = manifest.files.get(path).and_then(|i| i.original.clone());
        match &step.action {
            Action::Unchanged => {}
            Action::Create | Action::Update => {}
            Action::Replace | Action::Foreign(_) => {
                // Kept once: a second replacement must not overwrite Debian's copy.
                let keep = Path::new(plan::ORIGINALS).join(path.strip_prefix("/").unwrap_or(path));
                if !keep.exists() {
                    fs::create_dir_all(keep.parent().expect("has a parent"))
                        .map_err(StepFailed::Io)?;
                    fs::copy(path, &keep).map_err(file_failed("keeping", path))?;
                }
                original = Some(keep);
            }
            Action::LocallyChanged => {
                if path.exists() {
                    let kept = PathBuf::from(format!("{}.postmaster-local", path.display()));
                    fs::copy(path, &kept).map_err(file_failed("keeping", path))?;
                    println!(
                        "kept your version of {} as {}",
                        path.display(),
                        kept.display()
                    );
                }
            }
        }
        if step.action != Action::Unchanged {
            fs::create_dir_all(path.parent().expect("absolute")).map_err(StepFailed::Io)?;
            crate::apply::write_atomic(path, &want.content, want.mode, Some(0))
                .map_err(StepFailed::Apply)?;
            println!("{}: {}", past(&step.action), path.display());
        }
        manifest.files.insert(
            path.clone(),
            plan::Installed {
                sha256: plan::sha256(&want.content),
                original,
            },
        );
    }
    Ok(())
}

fn past(a: &Action) -> &'static str {
    match a {
        Action::Create => "created",
        Action::Replace => "replaced (original kept)",
        Action::Update => "updated",
        Action::LocallyChanged | Action::Foreign(_) => "replaced (--force)",
        Action::Unchanged => "unchanged",
    }
}

/// config.toml and the accounts file, written once: from then on they are the
/// admin's, and setup never touches them again.
fn write_admin_files(
    opts: &Options,
    config: &Config,
    new_config: Option<&str>,
    manifest: &mut Manifest,
) -> Result<(), SetupError> {
    if let Some(text) = new_config {
        let path = &opts.config_path;
        fs::create_dir_all(path.parent().unwrap_or(Path::new("/"))).map_err(StepFailed::Io)?;
        crate::apply::write_atomic(path, text.as_bytes(), 0o644, Some(0))
            .map_err(StepFailed::Apply)?;
        println!("created: {}", path.display());
        manifest.created.push(path.clone());
    }
    let accounts = &config.accounts_file;
    if !accounts.exists() {
        let gid = crate::apply::group_id("postmaster")
            .map_err(StepFailed::Apply)?
            .ok_or(StepFailed::NoPostmasterGroup)?;
        fs::create_dir_all(accounts.parent().unwrap_or(Path::new("/"))).map_err(StepFailed::Io)?;
        let text = text::accounts_toml(&config.domains);
        crate::apply::write_atomic(accounts, text.as_bytes(), 0o640, Some(gid))
            .map_err(StepFailed::Apply)?;
        println!("created: {}", accounts.display());
        manifest.created.push(accounts.clone());
    }
    Ok(())
}

/// Whether user postmaster can read `path` (the certificate it will install).
fn readable_by_daemon(path: &Path) -> bool {
    Command::new("setpriv")
        .args([
            "--reuid=postmaster",
            "--regid=postmaster",
            "--init-groups",
            "--",
            "test",
            "-r",
        ])
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

fn as_daemon_apply(config_path: &Path) -> Result<(), SetupError> {
    let out = Command::new("setpriv")
        .args([
            "--reuid=postmaster",
            "--regid=postmaster",
            "--init-groups",
            "--",
            BINARY,
            "--config",
        ])
        .arg(config_path)
        .arg("apply")
        .output()
        .map_err(StepFailed::Io)?;
    // Exit 1 is a broken accounts file, which the daemon reports and keeps
    // reporting; the certificate is in place all the same.
    if !out.status.success() && out.status.code() != Some(1) {
        return Err(StepFailed::ApplyAsPostmaster {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
        .into());
    }
    Ok(())
}

/// dovecot runs the Sieve scripts setup installed as the mail user, who cannot
/// write their compiled form next to them: compiled here, each time (cheap, and a
/// script setup left unchanged may have been compiled by an older dovecot). The
/// directory of rspamd's controller socket (learning) is made now, before rspamd
/// starts, and at every boot by systemd-tmpfiles.
fn prepare_sieve_and_learning(desired: &[Desired]) -> Result<(), SetupError> {
    for d in desired {
        let path = d.path.to_string_lossy();
        if path.starts_with("/etc/dovecot/sieve/") && path.ends_with(".sieve") {
            // From the file just installed: without -c, sievec asks a running
            // dovecot for its configuration, which is the one from before setup
            // (no pipe extension for the learning scripts).
            run("sievec", &["-c", "/etc/dovecot/dovecot.conf", &path])?;
        } else if path.starts_with("/etc/tmpfiles.d/") {
            run("systemd-tmpfiles", &["--create", &path])?;
        }
    }
    Ok(())
}

fn systemctl(args: &[&str]) -> Result<(), SetupError> {
    run("systemctl", args).map(|_| ())
}

fn unit_active(unit: &str) -> bool {
    Command::new("systemctl")
        .args(["is-active", "--quiet", unit])
        .status()
        .is_ok_and(|s| s.success())
}

/// Enables the mail host's services and makes each run what was installed:
/// restarted when setup first gave it its configuration (new listeners),
/// reloaded when an upgrade changed its files.
fn start_services(config: &Config, steps: &[Step]) -> Result<(), SetupError> {
    let changed = |pred: &dyn Fn(&Path) -> bool| {
        steps
            .iter()
            .any(|s| s.action != Action::Unchanged && pred(&s.path))
    };
    start_lmtp_relay(steps)?;
    // What rspamd asks (unbound) and keeps Bayes in (valkey) first, then rspamd,
    // which postfix's milters need.
    let mut mail = Vec::new();
    if config.inbound.learning {
        mail.push(("valkey", config.units.valkey.as_str()));
    }
    if local_resolver(config) {
        mail.push(("unbound", config.units.resolver.as_str()));
    }
    mail.extend([
        ("rspamd", config.units.rspamd.as_str()),
        ("postfix", config.units.postfix.as_str()),
        ("dovecot", config.units.dovecot.as_str()),
    ]);
    for (name, unit) in mail {
        systemctl(&["enable", "--quiet", unit])?;
        let first_time = steps.iter().any(|s| {
            owner(&s.path) == Some(name)
                && matches!(
                    s.action,
                    Action::Create | Action::Replace | Action::Foreign(_) | Action::LocallyChanged
                )
        });
        // A unit's sandbox (its drop-in) takes effect only when it starts again.
        let dropin_changed =
            changed(&|p| owner(p) == Some(name) && p.to_string_lossy().contains(".service.d/"));
        // dovecot gives 993, 995, 143, 110 and 4190 up to the TLS front: until the
        // front's socket is there, a reload could leave an old login process
        // listening on one of them, and the socket would not bind.
        let giving_ports_up = name == "dovecot" && !unit_active(TLS_SOCKET);
        if !unit_active(unit) || first_time || dropin_changed || giving_ports_up {
            systemctl(&["restart", unit])?;
        } else if changed(&|p| owner(p) == Some(name)) {
            // rspamd dies from a SIGHUP in its first seconds: restart it instead.
            systemctl(&[
                if name == "rspamd" {
                    "restart"
                } else {
                    "reload"
                },
                unit,
            ])?;
        }
    }
    start_tls_front(steps)?;
    let acme_socket =
        config.tls.source == TlsSource::Acme && config.acme.challenge == Challenge::Http01;
    let daemon_changed = changed(&|p| owner(p).is_none());
    systemctl(&["enable", "--quiet", SERVICE])?;
    if acme_socket {
        systemctl(&["enable", "--quiet", ACME_SOCKET])?;
        // systemd hands the socket over at the service's start only, and will not
        // start a socket whose service runs.
        if !unit_active(ACME_SOCKET) {
            systemctl(&["stop", SERVICE])?;
            systemctl(&["start", ACME_SOCKET])?;
        }
    }
    if !unit_active(SERVICE) || daemon_changed {
        systemctl(&["restart", SERVICE])?;
    } else {
        // A changed config.toml: the daemon re-reads it.
        systemctl(&["reload", SERVICE])?;
    }
    Ok(())
}

/// The socket postfix delivers to (main.cf's virtual_transport) listening before
/// postfix reads that, and the relay behind it running what was installed.
fn start_lmtp_relay(steps: &[Step]) -> Result<(), SetupError> {
    systemctl(&["enable", "--quiet", LMTP_SOCKET])?;
    let service_changed = start_socket(steps, LMTP_SOCKET, LMTP_SERVICE)?;
    if service_changed {
        // Only if it runs (else its socket starts it at the next delivery). The
        // socket keeps listening meanwhile: deliveries wait, none is refused.
        systemctl(&["try-restart", LMTP_SERVICE])?;
    }
    Ok(())
}

/// The mail-access ports held for the TLS front once dovecot has let them go, and
/// the front running what was installed (from boot on, not only from the first
/// client: a pair it cannot read shows at once).
fn start_tls_front(steps: &[Step]) -> Result<(), SetupError> {
    systemctl(&["enable", "--quiet", TLS_SOCKET, TLS_SERVICE])?;
    let service_changed = start_socket(steps, TLS_SOCKET, TLS_SERVICE)?;
    // The socket keeps listening meanwhile: clients wait, none is refused.
    systemctl(&[
        if service_changed { "restart" } else { "start" },
        TLS_SERVICE,
    ])?;
    Ok(())
}

/// Starts `socket`, bound again if setup changed its unit (systemd refuses to
/// restart a socket whose service runs, so `service` is stopped for it). Returns
/// whether the service's unit or the binary changed: what runs is then not what
/// was installed.
fn start_socket(steps: &[Step], socket: &str, service: &str) -> Result<bool, SetupError> {
    let changed = |path: &Path| {
        steps
            .iter()
            .any(|s| s.action != Action::Unchanged && s.path == path)
    };
    let unit = |name: &str| Path::new("/usr/local/lib/systemd/system").join(name);
    if changed(&unit(socket)) && unit_active(socket) {
        systemctl(&["stop", service])?;
        systemctl(&["restart", socket])?;
    } else {
        systemctl(&["start", socket])?;
    }
    Ok(changed(&unit(service)) || changed(Path::new(BINARY)))
}

fn report(config: &Config, steps: &[Step]) -> Result<(), SetupError> {
    let changed = steps
        .iter()
        .filter(|s| s.action != Action::Unchanged)
        .count();
    // The mail ports open as the services finish starting.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ports = listening();
    while !judge::MAIL_PORTS.iter().all(|p| ports.contains_key(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        ports = listening();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\npostmaster setup: done ({changed} file{} changed).",
        if changed == 1 { "" } else { "s" }
    );
    let units = [
        config.units.postfix.as_str(),
        config.units.dovecot.as_str(),
        config.units.rspamd.as_str(),
        SERVICE,
        LMTP_SOCKET,
        TLS_SOCKET,
    ];
    let states: Vec<String> = units
        .iter()
        .map(|u| {
            format!(
                "{u} {}",
                if unit_active(u) {
                    "active"
                } else {
                    "NOT ACTIVE"
                }
            )
        })
        .collect();
    let _ = writeln!(out, "Running: {}", states.join(", "));
    let listed: Vec<String> = [25u16, 465, 587, 143, 993, 110, 995, 80]
        .iter()
        .filter_map(|p| {
            ports.get(p).map(|progs| {
                format!(
                    "{p} ({})",
                    progs.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            })
        })
        .collect();
    let _ = writeln!(out, "Listening: {}", listed.join(", "));
    let keys = crate::dkim::store::load(config).map_err(StepFailed::Dkim)?;
    let records = crate::dns::records(config, &keys, crate::dkim::unix_now());
    let _ = writeln!(
        out,
        "\nPublish in DNS (`postmaster dns` prints it again, `postmaster dns --check` checks it):\n{}",
        crate::dns::zone_text(config, &records)
    );
    let _ = writeln!(
        out,
        "Add a mailbox:   postmaster mailbox add NAME   (asks for its password; NAME@{} logs in as NAME)",
        config.domains[0]
    );
    let _ = writeln!(out, "Is it healthy:   postmaster status");
    let _ = writeln!(
        out,
        "Change settings: edit {}, then `postmaster setup` (shows the difference) and `postmaster setup --yes`",
        crate::config::DEFAULT_PATH
    );
    print!("{out}");
    Ok(())
}

// ---- uninstall --------------------------------------------------------------------

/// `postmaster uninstall`: stops and removes what setup added, puts Debian's
/// files back, and says what it leaves.
pub(crate) fn uninstall(config_path: &Path) -> Result<(), SetupError> {
    if !is_root() {
        return Err(Refusal::NotRoot.into());
    }
    let manifest = load_manifest()?;
    if manifest.files.is_empty() {
        return Err(StepFailed::NothingInstalled.into());
    }
    let config = Config::load(config_path).ok();
    for unit in [
        SERVICE,
        ACME_SOCKET,
        LMTP_SOCKET,
        LMTP_SERVICE,
        TLS_SOCKET,
        TLS_SERVICE,
    ] {
        // Not there (a half-finished setup) is fine: nothing to stop.
        let _ = systemctl(&["disable", "--now", "--quiet", unit]);
    }
    let mut left = Vec::new();
    let mut restored = Vec::new();
    let mut removed = 0;
    for (path, installed) in &manifest.files {
        let now = read_opt(path);
        match plan::removal(installed, now.as_deref()) {
            Removal::Restore(original) => {
                let content = fs::read(&original).map_err(file_failed("reading", &original))?;
                let mode = fs::metadata(&original).map_err(StepFailed::Io)?.mode() & 0o7777;
                crate::apply::write_atomic(path, &content, mode, Some(0))
                    .map_err(StepFailed::Apply)?;
                restored.push(path.display().to_string());
            }
            Removal::Delete => {
                fs::remove_file(path).map_err(file_failed("removing", path))?;
                // The compiled form setup made of a Sieve script goes with it.
                if path.extension().is_some_and(|e| e == "sieve") {
                    let _ = fs::remove_file(path.with_extension("svbin"));
                }
                removed += 1;
            }
            Removal::Leave => left.push(path.display().to_string()),
            Removal::Gone => {}
        }
    }
    systemctl(&["daemon-reload"])?;
    if unit_active("dbus.service") {
        systemctl(&["reload", "dbus.service"])?;
    }
    // postfix and dovecot on Debian's configuration again.
    for unit in [
        "postfix.service",
        "dovecot.service",
        "rspamd.service",
        "unbound.service",
    ] {
        if unit_active(unit) {
            systemctl(&["restart", unit])?;
        }
    }
    let _ = fs::remove_dir_all(plan::ORIGINALS);
    let _ = fs::remove_file(plan::MANIFEST);
    let _ = fs::remove_dir(Path::new(plan::MANIFEST).parent().expect("has a parent"));

    println!(
        "postmaster uninstall: stopped and disabled {SERVICE}, {ACME_SOCKET}, {LMTP_SOCKET}, {LMTP_SERVICE}, {TLS_SOCKET} and {TLS_SERVICE}."
    );
    println!(
        "Removed {removed} file{} setup installed.",
        if removed == 1 { "" } else { "s" }
    );
    if !restored.is_empty() {
        println!("Debian's originals are back: {}", restored.join(", "));
    }
    if !left.is_empty() {
        println!(
            "Left because they were changed after setup installed them: {}",
            left.join(", ")
        );
    }
    let (mail_root, state_dir) = config
        .as_ref()
        .map(|c| (c.dovecot.mail_root.clone(), c.state_dir.clone()))
        .unwrap_or_else(|| ("/var/vmail".into(), "/var/lib/postmaster".into()));
    println!("Left on purpose (remove them yourself if you want them gone):");
    println!("  mail:          {}", mail_root.display());
    println!(
        "  DKIM keys:     {}/dkim (their DNS records may still be published)",
        state_dir.display()
    );
    println!(
        "  state:         {} (certificate, ACME account, generated maps)",
        state_dir.display()
    );
    println!(
        "  configuration: {} and the accounts file (password hashes) beside it",
        config_path.display()
    );
    println!("  users:         postmaster, postmaster-admin, vmail");
    if manifest.packages.is_empty() {
        println!("  packages:      postfix, dovecot, rspamd (were installed before setup)");
    } else {
        println!(
            "  packages setup installed: {} (apt-get purge them if not wanted)",
            manifest.packages.join(" ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    /// `postmaster setup` and `uninstall` print these texts.
    #[test]
    fn why_a_step_failed_reads_as_before() {
        let t = |e: StepFailed| e.to_string();
        let enoent = || std::io::Error::from_raw_os_error(2);
        let exit_1 = std::process::ExitStatus::from_raw(1 << 8);
        assert_eq!(
            t(StepFailed::CannotRun {
                program: "sievec",
                source: enoent()
            }),
            "cannot run sievec: No such file or directory (os error 2)"
        );
        assert_eq!(
            t(StepFailed::Program {
                command: "postfix check".into(),
                status: exit_1,
                stderr: "postfix: fatal: bad".into()
            }),
            "`postfix check` failed (exit status: 1): postfix: fatal: bad"
        );
        assert_eq!(
            t(StepFailed::Apt {
                args: "install -y postfix".into(),
                status: exit_1,
                missing: "postfix dovecot-core".into()
            }),
            "`apt-get install -y postfix` failed (exit status: 1); install postfix dovecot-core yourself \
             (or fix the package sources), then run setup again"
        );
        assert_eq!(
            t(StepFailed::ApplyAsPostmaster {
                stdout: "written: x\n".into(),
                stderr: "refused\n".into()
            }),
            "`postmaster apply` as user postmaster failed: written: x\nrefused\n"
        );
        let damaged = serde_json::from_slice::<Manifest>(b"{").unwrap_err();
        assert_eq!(
            t(StepFailed::ManifestDamaged { source: damaged }),
            format!(
                "{} is damaged (EOF while parsing an object at line 1 column 1); it records what setup \
                 installed: restore it, or remove it and run setup with --force",
                plan::MANIFEST
            )
        );
        assert_eq!(
            t(StepFailed::NothingInstalled),
            format!(
                "setup has not installed anything here ({} is missing); nothing to remove",
                plan::MANIFEST
            )
        );
        assert_eq!(
            t(StepFailed::NoConfiguration(
                "/etc/postmaster/config.toml".into()
            )),
            "/etc/postmaster/config.toml does not exist yet: name the mail host and its domains, \
             e.g. `postmaster setup --host mail.example.org --domain example.org`"
        );
        assert_eq!(
            t(StepFailed::NoPostmasterGroup),
            "group postmaster is missing after systemd-sysusers"
        );
        assert_eq!(
            t(StepFailed::File {
                doing: "keeping",
                path: "/etc/postfix/main.cf".into(),
                source: enoent()
            }),
            "keeping /etc/postfix/main.cf: No such file or directory (os error 2)"
        );
        assert_eq!(
            t(StepFailed::Io(enoent())),
            "No such file or directory (os error 2)"
        );
        let write = crate::apply::ApplyError::NoSuchGroup("postmaster".into());
        let text = write.to_string();
        assert_eq!(t(StepFailed::Apply(write)), text);
        let dkim = crate::dkim::store::DkimError::KeyDirectory {
            path: "/var/lib/postmaster/dkim".into(),
        };
        let text = dkim.to_string();
        assert_eq!(t(StepFailed::Dkim(dkim)), text);
    }
}
