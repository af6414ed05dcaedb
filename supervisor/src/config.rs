//! The configuration file (`/etc/postmaster/config.toml`), read into [`Config`]: a
//! value the rest of postmaster trusts. Unknown keys are errors (a typo must not
//! silently fall back to a default), and every problem is reported at once.
//!
//! ```toml
//! host_name = "mail.example.org"          # the name clients and other servers use
//! domains = ["example.org", "example.net"] # hosted mail domains; the first is primary
//! accounts_file = "/etc/postmaster/accounts.toml"
//! state_dir = "/var/lib/postmaster"
//!
//! [tls]
//! source = "acme"                         # or "files": another tool writes them
//!
//! [acme]
//! contact = ["mailto:postmaster@example.org"]
//! ```
//!
//! `postmaster.example.toml` at the top of the repository documents every key.

use std::path::{Path, PathBuf};

use crate::address::check_domain;
use crate::diag::{Diagnostics, Invalid, Source};
use crate::tomlwalk::{self, Table};

pub(crate) const DEFAULT_PATH: &str = "/etc/postmaster/config.toml";
pub(crate) const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub(crate) const LETS_ENCRYPT_STAGING: &str =
    "https://acme-staging-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Config {
    /// The mail host's own name: HELO, TLS certificate, clients' server setting.
    pub(crate) host_name: String,
    /// Hosted mail domains; the first is the primary one.
    pub(crate) domains: Vec<String>,
    pub(crate) accounts_file: PathBuf,
    /// Where the daemon keeps what it owns: ACME account, certificates, schedule.
    pub(crate) state_dir: PathBuf,
    /// Where generated postfix maps and the dovecot passwd-file go.
    pub(crate) generated_dir: PathBuf,
    /// Allow `{PLAIN}` passwords in the accounts file. For test setups only.
    pub(crate) insecure_allow_plain_passwords: bool,
    pub(crate) tls: Tls,
    pub(crate) acme: Acme,
    pub(crate) units: Units,
    pub(crate) postfix: Postfix,
    pub(crate) dovecot: Dovecot,
    pub(crate) dkim: Dkim,
    pub(crate) dns: Dns,
    pub(crate) inbound: Inbound,
    pub(crate) logins: Logins,
}

/// Password guessing: after this many failed logins from one address, its
/// further attempts are refused for a while (see [`crate::logins`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Logins {
    /// Failed logins from one address that block it; 0: nothing is blocked.
    pub(crate) block_after_failures: u32,
    /// The failures counted are those of the last this many seconds.
    pub(crate) failure_window_seconds: u64,
    /// How long a blocked address is refused.
    pub(crate) block_seconds: u64,
    /// Where the daemon answers dovecot's auth policy requests (loopback only).
    pub(crate) policy_address: std::net::SocketAddr,
    /// The users whose connections to `policy_address` are answered (root's always
    /// are): dovecot's auth process runs as dovecot's internal user. Anyone else on
    /// the host could otherwise report failures and block any address.
    pub(crate) policy_clients: Vec<String>,
}

pub(crate) const DEFAULT_POLICY_ADDRESS: &str = "127.0.0.1:10041";

impl Default for Logins {
    fn default() -> Logins {
        Logins {
            block_after_failures: 10,
            failure_window_seconds: 600,
            block_seconds: 900,
            policy_address: DEFAULT_POLICY_ADDRESS.parse().expect("a socket address"),
            policy_clients: vec!["dovecot".into()],
        }
    }
}

/// Checks of the mail arriving on port 25 by the same rspamd that signs: SPF,
/// DKIM, DMARC and spam scoring, through its milter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Inbound {
    /// Mail on 25 goes through rspamd; off: it is accepted unchecked.
    pub(crate) enabled: bool,
    /// From this score on, a message is refused at SMTP time (5xx, no bounce).
    pub(crate) reject_score: f64,
    /// From this score on, a message gets an `X-Spam: Yes` header (and dovecot
    /// files it into the recipient's Junk folder).
    pub(crate) add_header_score: f64,
    /// Moving a message into Junk teaches rspamd's Bayes filter "spam", moving
    /// it out "ham" (IMAPSieve); Bayes keeps what it learned in valkey.
    pub(crate) learning: bool,
    /// Whose DNS resolver rspamd asks (SPF, DKIM, DMARC, blocklists).
    pub(crate) resolver: Resolver,
}

/// The DNS resolver of the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolver {
    /// unbound on this host (loopback only), caching and DNSSEC-validating:
    /// public DNS blocklists refuse queries that arrive through shared public
    /// resolvers, and a host of its own answers fast and is not lied to.
    Local,
    /// Whatever `/etc/resolv.conf` names, as rspamd has it by default.
    System,
}

pub(crate) const DEFAULT_REJECT_SCORE: f64 = 15.0;
pub(crate) const DEFAULT_ADD_HEADER_SCORE: f64 = 6.0;

/// DKIM signing of outgoing mail: rspamd signs as postfix's milter, with keys
/// postmaster makes and keeps (see [`crate::dkim`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dkim {
    /// Sign what is submitted (587, 465) and what the host itself sends.
    pub(crate) enabled: bool,
    /// Where postfix reaches rspamd's milter (postfix's `smtpd_milters` syntax).
    pub(crate) milter: String,
    /// Start a rotation on its own once the key in use is this old; `None`: only
    /// `postmaster dkim rotate` does.
    pub(crate) rotate_after_days: Option<u32>,
    /// How long a replaced selector must stay published, so that mail signed with
    /// it and still on its way verifies.
    pub(crate) keep_published_days: u32,
    /// How often DNS is asked about the selectors (a new one before it is used,
    /// the one in use for `postmaster status`).
    pub(crate) dns_check_seconds: u64,
    /// Also sign with an Ed25519 key (RFC 8463), beside the RSA signature.
    pub(crate) ed25519: bool,
}

/// What `postmaster dns` prints and checks besides the DKIM keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dns {
    /// The SPF record of every hosted domain.
    pub(crate) spf: String,
    /// The DMARC record (`_dmarc.<domain>`) of every hosted domain.
    pub(crate) dmarc: String,
    /// The host's public addresses: its A/AAAA records and the names their PTR
    /// records must give. Empty: `--check` looks up the host name instead.
    pub(crate) addresses: Vec<std::net::IpAddr>,
    /// The TTL written into the printed records.
    pub(crate) ttl: u32,
}

pub(crate) const DEFAULT_SPF: &str = "v=spf1 mx -all";
pub(crate) const DEFAULT_DMARC: &str = "v=DMARC1; p=quarantine";
/// rspamd's milter socket, relative to postfix's queue directory (its smtpd and
/// cleanup run chrooted there); `postmaster render` has rspamd listen on it.
pub(crate) const DEFAULT_MILTER: &str = "unix:rspamd/milter.sock";
/// Where postfix's queue directory is on Debian.
pub(crate) const DEBIAN_QUEUE_DIRECTORY: &str = "/var/spool/postfix";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsSource {
    /// postmaster obtains and renews the certificate itself.
    Acme,
    /// Another tool (certbot, NixOS security.acme, a person) writes the files;
    /// postmaster watches, validates and installs them.
    Files,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tls {
    pub(crate) source: TlsSource,
    /// The full chain (leaf first) in PEM.
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// The daemon answers http-01 on port 80, from a socket systemd hands it.
    Http01,
    /// The daemon writes http-01 tokens into a directory a web server serves.
    Webroot,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    pub directory: String,
    pub contact: Vec<String>,
    /// Names besides the host name to put on the certificate.
    pub extra_names: Vec<String>,
    pub challenge: Challenge,
    pub webroot: Option<PathBuf>,
    /// An extra root certificate to trust for the CA's API (test CAs like pebble).
    pub trust_root: Option<PathBuf>,
    /// External account binding, for CAs that want one.
    pub eab: Option<Eab>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eab {
    pub kid: String,
    /// The HMAC key is a secret: it lives in its own file, not here.
    pub hmac_key_file: PathBuf,
}

/// systemd unit names: they differ between distributions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Units {
    pub(crate) postfix: String,
    pub(crate) dovecot: String,
    /// `postmaster tls-front`, TLS for dovecot's IMAP, POP3 and ManageSieve: reloaded
    /// (not dovecot) when the certificate changes.
    pub(crate) tls_front: String,
    /// rspamd, which signs outgoing mail: reloaded when the keys it signs with change.
    pub(crate) rspamd: String,
    /// The Redis-compatible store of rspamd's Bayes filter (valkey on Debian 13),
    /// watched while `[inbound] learning` is on.
    pub(crate) valkey: String,
    /// The local resolver of the inbound checks (`[inbound] resolver = "local"`):
    /// while it does not run, mail on port 25 is deferred.
    pub(crate) resolver: String,
    /// The group whose members may call the daemon over D-Bus besides root (its
    /// D-Bus policy and polkit rule name it): named when a call is refused.
    pub(crate) admin_group: String,
}

/// The admin group of units/ and of the NixOS module's default.
pub(crate) const DEFAULT_ADMIN_GROUP: &str = "postmaster-admin";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapType {
    Lmdb,
    Hash,
}

impl MapType {
    pub(crate) fn name(self) -> &'static str {
        match self {
            MapType::Lmdb => "lmdb",
            MapType::Hash => "hash",
        }
    }

    /// The file postmap makes next to the source.
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            MapType::Lmdb => ".lmdb",
            MapType::Hash => ".db",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Postfix {
    /// `None`: lmdb where this postfix has it, else hash (decided where postfix is).
    pub(crate) map_type: Option<MapType>,
    pub(crate) message_size_limit: u64,
    /// Reject mail on port 25 whose sender domain has no DNS records. Needs DNS.
    pub(crate) reject_unknown_sender_domain: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DovecotVersion {
    V2_3,
    V2_4,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dovecot {
    pub(crate) version: DovecotVersion,
    /// Mail lives in `<mail_root>/<mailbox>/`.
    pub(crate) mail_root: PathBuf,
    pub(crate) vmail_user: String,
    pub(crate) vmail_uid: u32,
    pub(crate) vmail_gid: u32,
}

const ROOT_KEYS: &[&str] = &[
    "host_name",
    "domains",
    "accounts_file",
    "state_dir",
    "generated_dir",
    "insecure_allow_plain_passwords",
    "tls",
    "acme",
    "systemd",
    "postfix",
    "dovecot",
    "dkim",
    "dns",
    "inbound",
    "logins",
];

impl Config {
    /// Reads and validates a configuration file.
    pub(crate) fn load(path: &Path) -> Result<Config, Invalid> {
        let bytes = std::fs::read(path).map_err(|e| {
            Invalid(vec![crate::diag::whole_file(
                path,
                format!("cannot read the configuration: {e}"),
                format!("create it (see postmaster.example.toml) or pass --config; the default is {DEFAULT_PATH}"),
            )])
        })?;
        let source = tomlwalk::decode(path, bytes).map_err(|d| Invalid(vec![d]))?;
        Config::parse(&source)
    }

    pub(crate) fn parse(source: &Source) -> Result<Config, Invalid> {
        let mut d = Diagnostics::new(source);
        let config = parse_into(source, &mut d);
        match config {
            Some(c) if d.is_empty() => Ok(c),
            _ => Err(Invalid(d.into_sorted())),
        }
    }

    /// The accounts file's rules, as this configuration sets them.
    pub(crate) fn accounts_policy(&self) -> crate::accounts::Policy {
        crate::accounts::Policy {
            domains: self.domains.clone(),
            allow_plain_passwords: self.insecure_allow_plain_passwords,
        }
    }

    /// Where the validated pair is installed for postfix and dovecot: one file with
    /// the key followed by the chain, so that one rename switches both at once, and
    /// a broken pair in `tls.cert`/`tls.key` never reaches them.
    pub(crate) fn installed_pair(&self) -> PathBuf {
        self.state_dir.join("tls/pair.pem")
    }

    /// The DKIM private keys: readable by rspamd through the directory's group.
    pub(crate) fn dkim_key_dir(&self) -> PathBuf {
        self.state_dir.join("dkim")
    }

    /// Which DKIM key is in which phase; public keys only, readable by anyone
    /// (`postmaster dns` reads it without the daemon).
    pub(crate) fn dkim_state_file(&self) -> PathBuf {
        self.state_dir.join("dkim.json")
    }

    /// Every name the certificate must cover.
    pub(crate) fn certificate_names(&self) -> Vec<String> {
        let mut names = vec![self.host_name.clone()];
        for n in &self.acme.extra_names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        names
    }
}

fn parse_into(source: &Source, d: &mut Diagnostics<'_>) -> Option<Config> {
    let root = tomlwalk::parse(source, d)?;
    let root_span = root.span();
    let root = root.get_ref();
    tomlwalk::check_keys(d, root, ROOT_KEYS, "the configuration");
    let mut f = Fields {
        d,
        table: root,
        section: "",
    };

    let host_name = f.required_str("host_name", root_span.start);
    if let Some((span, v)) = f.span_of("host_name")
        && let Err(why) = check_domain(&v)
    {
        f.d.error(
            span,
            format!("`host_name` `{v}` is not a valid host name: {why}"),
            "use the fully qualified name clients connect to, like mail.example.org",
        );
    }
    let domains = f.domains(root_span.start);
    let accounts_file = f
        .path("accounts_file")
        .unwrap_or_else(|| "/etc/postmaster/accounts.toml".into());
    let state_dir = f
        .path("state_dir")
        .unwrap_or_else(|| "/var/lib/postmaster".into());
    let generated_dir = f
        .path("generated_dir")
        .unwrap_or_else(|| state_dir.join("generated"));
    let insecure_allow_plain_passwords = f.bool("insecure_allow_plain_passwords").unwrap_or(false);

    let tls = {
        let mut s = f.section("tls", &["source", "cert", "key"]);
        let source = match s.choice("source", &["acme", "files"]).as_deref() {
            Some("files") => TlsSource::Files,
            _ => TlsSource::Acme,
        };
        let (cert, key) = match source {
            TlsSource::Acme => (
                s.path("cert")
                    .unwrap_or_else(|| state_dir.join("tls/fullchain.pem")),
                s.path("key")
                    .unwrap_or_else(|| state_dir.join("tls/privkey.pem")),
            ),
            TlsSource::Files => (
                s.required_path(
                    "cert",
                    "with source = \"files\", say where the certificate chain is",
                ),
                s.required_path(
                    "key",
                    "with source = \"files\", say where the private key is",
                ),
            ),
        };
        Tls { source, cert, key }
    };

    let acme = {
        let mut s = f.section(
            "acme",
            &[
                "directory",
                "contact",
                "extra_names",
                "challenge",
                "webroot",
                "trust_root",
                "eab_kid",
                "eab_hmac_key_file",
            ],
        );
        let directory = match s.str("directory").as_deref() {
            None | Some("letsencrypt") => LETS_ENCRYPT.to_string(),
            Some("letsencrypt-staging") => LETS_ENCRYPT_STAGING.to_string(),
            Some(url) => {
                if !url.starts_with("https://")
                    && let Some((span, _)) = s.span_of("directory")
                {
                    s.d.error(
                        span,
                        "`directory` must be an https:// URL",
                        "or \"letsencrypt\" / \"letsencrypt-staging\"",
                    );
                }
                url.to_string()
            }
        };
        let contact = s.str_list("contact");
        for c in &contact {
            if !c.starts_with("mailto:")
                && let Some((span, _)) = s.span_of("contact")
            {
                s.d.error(
                    span,
                    format!("contact `{c}` must be a mailto: URL"),
                    "write it as \"mailto:you@example.org\"",
                );
            }
        }
        let extra_names = s.str_list("extra_names");
        for n in &extra_names {
            if let Err(why) = check_domain(n)
                && let Some((span, _)) = s.span_of("extra_names")
            {
                s.d.error(
                    span,
                    format!("extra name `{n}` is not a valid host name: {why}"),
                    "",
                );
            }
        }
        let challenge = match s.choice("challenge", &["http-01", "webroot"]).as_deref() {
            Some("webroot") => Challenge::Webroot,
            _ => Challenge::Http01,
        };
        let webroot = s.path("webroot");
        if challenge == Challenge::Webroot && webroot.is_none() && tls.source == TlsSource::Acme {
            let at = s.section_start(root_span.start);
            s.d.error(
                at..at,
                "challenge = \"webroot\" needs `webroot`",
                "set webroot = the directory your web server serves for this host name",
            );
        }
        let trust_root = s.path("trust_root");
        let eab_kid = s.str("eab_kid");
        let eab_hmac_key_file = s.path("eab_hmac_key_file");
        let eab = match (eab_kid, eab_hmac_key_file) {
            (Some(kid), Some(hmac_key_file)) => Some(Eab { kid, hmac_key_file }),
            (None, None) => None,
            _ => {
                let at = s.section_start(root_span.start);
                s.d.error(
                    at..at,
                    "external account binding needs both `eab_kid` and `eab_hmac_key_file`",
                    "set both, or neither",
                );
                None
            }
        };
        Acme {
            directory,
            contact,
            extra_names,
            challenge,
            webroot,
            trust_root,
            eab,
        }
    };

    let units = {
        let mut s = f.section(
            "systemd",
            &[
                "postfix_unit",
                "dovecot_unit",
                "tls_front_unit",
                "rspamd_unit",
                "valkey_unit",
                "resolver_unit",
                "admin_group",
            ],
        );
        Units {
            postfix: s
                .unit("postfix_unit")
                .unwrap_or_else(|| "postfix.service".into()),
            dovecot: s
                .unit("dovecot_unit")
                .unwrap_or_else(|| "dovecot.service".into()),
            tls_front: s
                .unit("tls_front_unit")
                .unwrap_or_else(|| "postmaster-tls.service".into()),
            rspamd: s
                .unit("rspamd_unit")
                .unwrap_or_else(|| "rspamd.service".into()),
            valkey: s
                .unit("valkey_unit")
                .unwrap_or_else(|| "valkey-server.service".into()),
            resolver: s
                .unit("resolver_unit")
                .unwrap_or_else(|| "unbound.service".into()),
            admin_group: s
                .str("admin_group")
                .unwrap_or_else(|| DEFAULT_ADMIN_GROUP.into()),
        }
    };

    let postfix = {
        let mut s = f.section(
            "postfix",
            &[
                "map_type",
                "message_size_limit",
                "reject_unknown_sender_domain",
            ],
        );
        let map_type = match s.choice("map_type", &["lmdb", "hash"]).as_deref() {
            Some("lmdb") => Some(MapType::Lmdb),
            Some("hash") => Some(MapType::Hash),
            _ => None,
        };
        let message_size_limit = s.u64("message_size_limit").unwrap_or(64 << 20);
        if message_size_limit < (1 << 20)
            && let Some((span, _)) = s.span_of("message_size_limit")
        {
            s.d.error(
                span,
                "`message_size_limit` is below 1 MiB: most mail with an attachment would bounce",
                "it is in bytes; 67108864 is 64 MiB",
            );
        }
        Postfix {
            map_type,
            message_size_limit,
            reject_unknown_sender_domain: s.bool("reject_unknown_sender_domain").unwrap_or(true),
        }
    };

    let dovecot = {
        let mut s = f.section(
            "dovecot",
            &[
                "version",
                "mail_root",
                "vmail_user",
                "vmail_uid",
                "vmail_gid",
            ],
        );
        let version = match s.choice("version", &["2.4", "2.3"]).as_deref() {
            Some("2.3") => DovecotVersion::V2_3,
            _ => DovecotVersion::V2_4,
        };
        let id = |s: &mut Fields<'_, '_, '_>, key: &str| {
            let n = s.u64(key)?;
            match u32::try_from(n) {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    if let Some((span, _)) = s.span_of(key) {
                        s.d.error(span, format!("`{key}` must be a user or group id above 0 (mail is never stored as root)"), "");
                    }
                    None
                }
            }
        };
        Dovecot {
            version,
            mail_root: s.path("mail_root").unwrap_or_else(|| "/var/vmail".into()),
            vmail_user: s.str("vmail_user").unwrap_or_else(|| "vmail".into()),
            vmail_uid: id(&mut s, "vmail_uid").unwrap_or(5000),
            vmail_gid: id(&mut s, "vmail_gid").unwrap_or(5000),
        }
    };

    let dkim = {
        let mut s = f.section(
            "dkim",
            &[
                "enabled",
                "milter",
                "rotate_after_days",
                "keep_published_days",
                "dns_check_seconds",
                "ed25519",
            ],
        );
        let milter = s.str("milter").unwrap_or_else(|| DEFAULT_MILTER.into());
        if !(milter.starts_with("inet:") || milter.starts_with("unix:"))
            && let Some((span, _)) = s.span_of("milter")
        {
            s.d.error(
                span,
                format!("`milter` in [dkim] `{}` is not a milter address", milter.escape_default()),
                "like \"unix:rspamd/milter.sock\" (relative to postfix's queue directory) or \"inet:127.0.0.1:11332\"",
            );
        }
        let days = |s: &mut Fields<'_, '_, '_>, key: &str, min: u64| -> Option<u32> {
            let n = s.u64(key)?;
            match u32::try_from(n) {
                Ok(n) if u64::from(n) >= min => Some(n),
                _ => {
                    if let Some((span, _)) = s.span_of(key) {
                        s.d.error(
                            span,
                            format!("`{key}` in [dkim] must be at least {min}"),
                            "it is a number of days",
                        );
                    }
                    None
                }
            }
        };
        let rotate_after_days = days(&mut s, "rotate_after_days", 1);
        // Mail may wait in a sender's queue for five days (postfix's
        // maximal_queue_lifetime) before it is delivered and verified.
        let keep_published_days = days(&mut s, "keep_published_days", 1).unwrap_or(7);
        let dns_check_seconds = s.u64("dns_check_seconds").unwrap_or(300);
        if dns_check_seconds == 0
            && let Some((span, _)) = s.span_of("dns_check_seconds")
        {
            s.d.error(span, "`dns_check_seconds` in [dkim] must be at least 1", "");
        }
        Dkim {
            enabled: s.bool("enabled").unwrap_or(true),
            milter,
            rotate_after_days,
            keep_published_days,
            dns_check_seconds: dns_check_seconds.max(1),
            ed25519: s.bool("ed25519").unwrap_or(false),
        }
    };

    let dns = {
        let mut s = f.section("dns", &["spf", "dmarc", "addresses", "ttl"]);
        let spf = s.str("spf").unwrap_or_else(|| DEFAULT_SPF.into());
        if !spf.starts_with("v=spf1")
            && let Some((span, _)) = s.span_of("spf")
        {
            s.d.error(
                span,
                "`spf` in [dns] must start with `v=spf1`",
                "like \"v=spf1 mx -all\"",
            );
        }
        let dmarc = s.str("dmarc").unwrap_or_else(|| DEFAULT_DMARC.into());
        if !dmarc.starts_with("v=DMARC1;")
            && let Some((span, _)) = s.span_of("dmarc")
        {
            s.d.error(
                span,
                "`dmarc` in [dns] must start with `v=DMARC1;`",
                "like \"v=DMARC1; p=quarantine\"",
            );
        }
        let mut addresses = Vec::new();
        for text in s.str_list("addresses") {
            match text.parse::<std::net::IpAddr>() {
                Ok(ip) => addresses.push(ip),
                Err(_) => {
                    if let Some((_, v)) = tomlwalk::get(s.table, "addresses") {
                        s.d.error(
                            v.span(),
                            format!(
                                "`addresses` in [dns]: `{}` is not an IP address",
                                text.escape_default()
                            ),
                            "like \"192.0.2.25\" or \"2001:db8::25\"",
                        );
                    }
                }
            }
        }
        let ttl = s.u64("ttl").unwrap_or(3600);
        Dns {
            spf,
            dmarc,
            addresses,
            ttl: u32::try_from(ttl).unwrap_or(u32::MAX),
        }
    };

    let inbound = {
        let mut s = f.section(
            "inbound",
            &[
                "enabled",
                "reject_score",
                "add_header_score",
                "learning",
                "resolver",
            ],
        );
        let enabled = s.bool("enabled").unwrap_or(true);
        // Learning teaches the filter of port 25: without the checks there is
        // nothing to teach. On by default with them (see postmaster.example.toml).
        let learning = s.bool("learning").unwrap_or(enabled);
        if learning
            && !enabled
            && let Some((_, v)) = tomlwalk::get(s.table, "learning")
        {
            s.d.error(
                v.span(),
                "`learning` in [inbound] needs `enabled = true`",
                "what Junk teaches is rspamd's filter of the mail arriving on port 25, which is off",
            );
        }
        let resolver = match s.choice("resolver", &["local", "system"]).as_deref() {
            Some("system") => Resolver::System,
            _ => Resolver::Local,
        };
        // A score that is given but wrong is reported once, and not compared.
        let score = |s: &mut Fields<'_, '_, '_>, key: &str, default: f64| -> Option<f64> {
            if tomlwalk::get(s.table, key).is_none() {
                return Some(default);
            }
            let n = s.f64(key)?;
            if n <= 0.0 {
                if let Some((_, v)) = tomlwalk::get(s.table, key) {
                    s.d.error(
                        v.span(),
                        format!("`{key}` in [inbound] must be above 0"),
                        "rspamd gives ordinary mail a score around 0; the defaults are 15 (refuse) and 6 (header)",
                    );
                }
                return None;
            }
            Some(n)
        };
        let reject_score = score(&mut s, "reject_score", DEFAULT_REJECT_SCORE);
        let add_header_score = score(&mut s, "add_header_score", DEFAULT_ADD_HEADER_SCORE);
        if let (Some(reject), Some(header)) = (reject_score, add_header_score)
            && header >= reject
            && let Some((_, v)) = tomlwalk::get(s.table, "add_header_score")
                .or_else(|| tomlwalk::get(s.table, "reject_score"))
        {
            s.d.error(
                v.span(),
                format!("`add_header_score` ({header}) in [inbound] must be below `reject_score` ({reject})"),
                "mail is marked as probable spam before it scores high enough to be refused",
            );
        }
        let reject_score = reject_score.unwrap_or(DEFAULT_REJECT_SCORE);
        let add_header_score = add_header_score.unwrap_or(DEFAULT_ADD_HEADER_SCORE);
        Inbound {
            enabled,
            reject_score,
            add_header_score,
            learning,
            resolver,
        }
    };

    let logins = {
        let mut s = f.section(
            "logins",
            &[
                "block_after_failures",
                "failure_window_seconds",
                "block_seconds",
                "policy_address",
                "policy_clients",
            ],
        );
        let d = Logins::default();
        let block_after_failures = s
            .u64("block_after_failures")
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
            .unwrap_or(d.block_after_failures);
        let seconds = |s: &mut Fields<'_, '_, '_>, key: &str, default: u64| {
            let n = s.u64(key)?;
            if n == 0 {
                if let Some((span, _)) = s.span_of(key) {
                    s.d.error(
                        span,
                        format!("`{key}` in [logins] must be above 0"),
                        "it is in seconds; block_after_failures = 0 turns blocking off",
                    );
                }
                return Some(default);
            }
            Some(n)
        };
        let failure_window_seconds =
            seconds(&mut s, "failure_window_seconds", d.failure_window_seconds)
                .unwrap_or(d.failure_window_seconds);
        let block_seconds =
            seconds(&mut s, "block_seconds", d.block_seconds).unwrap_or(d.block_seconds);
        let policy_address = match s.str("policy_address") {
            None => d.policy_address,
            Some(text) => match text.parse::<std::net::SocketAddr>() {
                Ok(a) if a.ip().is_loopback() && a.port() != 0 => a,
                _ => {
                    if let Some((span, _)) = s.span_of("policy_address") {
                        s.d.error(
                            span,
                            format!(
                                "`policy_address` in [logins] `{}` is not a loopback address and port",
                                text.escape_default()
                            ),
                            format!("only dovecot on this host asks it; like \"{DEFAULT_POLICY_ADDRESS}\""),
                        );
                    }
                    d.policy_address
                }
            },
        };
        let policy_clients = match s.span_of("policy_clients") {
            None => d.policy_clients,
            Some((span, _)) => {
                let names = s.str_list("policy_clients");
                if names.is_empty() {
                    s.d.error(
                        span,
                        "`policy_clients` in [logins] is empty".to_string(),
                        "name the user dovecot's auth runs as (default_internal_user), like [\"dovecot\"]; block_after_failures = 0 turns blocking off",
                    );
                }
                names
            }
        };
        Logins {
            block_after_failures,
            failure_window_seconds,
            block_seconds,
            policy_address,
            policy_clients,
        }
    };

    Some(Config {
        host_name: host_name?,
        domains: domains?,
        accounts_file,
        state_dir,
        generated_dir,
        insecure_allow_plain_passwords,
        tls,
        acme,
        units,
        postfix,
        dovecot,
        dkim,
        dns,
        inbound,
        logins,
    })
}

/// Typed access to one table's fields, recording what is wrong as it goes.
struct Fields<'d, 's, 't> {
    d: &'d mut Diagnostics<'s>,
    table: &'t Table<'t>,
    /// `""` for the root, else the section name, for messages.
    section: &'static str,
}

static EMPTY: std::sync::LazyLock<Table<'static>> = std::sync::LazyLock::new(Table::new);

impl<'d, 's, 't> Fields<'d, 's, 't> {
    fn name(&self, key: &str) -> String {
        if self.section.is_empty() {
            format!("`{key}`")
        } else {
            format!("`{key}` in [{}]", self.section)
        }
    }

    fn section<'e>(&'e mut self, name: &'static str, known: &[&str]) -> Fields<'e, 's, 't> {
        let table = match tomlwalk::get(self.table, name) {
            Some((_, v)) => tomlwalk::as_table(self.d, v, &format!("[{name}]")),
            None => None,
        };
        let table: &'t Table<'t> = table.unwrap_or(&EMPTY);
        tomlwalk::check_keys(self.d, table, known, &format!("[{name}]"));
        Fields {
            d: self.d,
            table,
            section: name,
        }
    }

    /// Where to point a diagnostic about the section as a whole.
    fn section_start(&self, fallback: usize) -> usize {
        self.table
            .iter()
            .next()
            .map_or(fallback, |(k, _)| k.span().start)
    }

    fn span_of(&self, key: &str) -> Option<(std::ops::Range<usize>, String)> {
        let (_, v) = tomlwalk::get(self.table, key)?;
        let text = v.get_ref().as_str().map(str::to_string).unwrap_or_default();
        Some((v.span(), text))
    }

    fn str(&mut self, key: &str) -> Option<String> {
        let (_, v) = tomlwalk::get(self.table, key)?;
        tomlwalk::as_str(self.d, v, &self.name(key)).map(str::to_string)
    }

    fn required_str(&mut self, key: &str, at: usize) -> Option<String> {
        if tomlwalk::get(self.table, key).is_none() {
            self.d.error(
                at..at,
                format!("{} is missing", self.name(key)),
                format!("add {key} = \"…\""),
            );
            return None;
        }
        self.str(key)
    }

    fn bool(&mut self, key: &str) -> Option<bool> {
        let (_, v) = tomlwalk::get(self.table, key)?;
        tomlwalk::as_bool(self.d, v, &self.name(key))
    }

    fn f64(&mut self, key: &str) -> Option<f64> {
        let (_, v) = tomlwalk::get(self.table, key)?;
        tomlwalk::as_f64(self.d, v, &self.name(key))
    }

    fn u64(&mut self, key: &str) -> Option<u64> {
        let (_, v) = tomlwalk::get(self.table, key)?;
        tomlwalk::as_u64(self.d, v, &self.name(key))
    }

    fn str_list(&mut self, key: &str) -> Vec<String> {
        let Some((_, v)) = tomlwalk::get(self.table, key) else {
            return Vec::new();
        };
        tomlwalk::as_str_list(self.d, v, &self.name(key))
            .map(|l| l.into_iter().map(|(_, s)| s.to_string()).collect())
            .unwrap_or_default()
    }

    fn choice(&mut self, key: &str, allowed: &[&str]) -> Option<String> {
        let value = self.str(key)?;
        if allowed.contains(&value.as_str()) {
            return Some(value);
        }
        let (_, v) = tomlwalk::get(self.table, key)?;
        let quoted: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
        self.d.error(
            v.span(),
            format!(
                "{} cannot be \"{}\"",
                self.name(key),
                value.escape_default()
            ),
            format!("use {}", quoted.join(" or ")),
        );
        None
    }

    fn path(&mut self, key: &str) -> Option<PathBuf> {
        let (_, v) = tomlwalk::get(self.table, key)?;
        let text = tomlwalk::as_str(self.d, v, &self.name(key))?;
        if text.is_empty() {
            self.d.error(
                v.span(),
                format!("{} is empty", self.name(key)),
                "give a path",
            );
            return None;
        }
        if let Some(c) = text.chars().find(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(c, ',' | '"' | '\'' | '<' | '$' | '{' | '}')
        }) {
            // postfix and dovecot configuration cannot quote these in a path.
            self.d.error(
                v.span(),
                format!("{} contains `{}`, which postfix or dovecot configuration cannot hold in a path", self.name(key), c.escape_default()),
                "choose a path without spaces, commas, quotes, `<`, `$` or braces",
            );
            return None;
        }
        // Relative paths are relative to the configuration file, not to wherever
        // the daemon happens to run.
        let base = self.d.source().path.parent().unwrap_or(Path::new("/"));
        Some(base.join(text))
    }

    fn required_path(&mut self, key: &str, hint: &str) -> PathBuf {
        match tomlwalk::get(self.table, key) {
            None => {
                let at = self.section_start(0);
                self.d.error(
                    at..at,
                    format!("{} is missing", self.name(key)),
                    hint.to_string(),
                );
                PathBuf::new()
            }
            Some(_) => self.path(key).unwrap_or_default(),
        }
    }

    fn unit(&mut self, key: &str) -> Option<String> {
        let name = self.str(key)?;
        let valid = name.ends_with(".service")
            && name.len() > ".service".len()
            && name.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':' | '\\')
            });
        if !valid && let Some((span, _)) = self.span_of(key) {
            self.d.error(
                span,
                format!(
                    "{} `{}` is not a service unit name",
                    self.name(key),
                    name.escape_default()
                ),
                "like postfix.service",
            );
        }
        valid.then_some(name)
    }

    fn domains(&mut self, at: usize) -> Option<Vec<String>> {
        let Some((_, v)) = tomlwalk::get(self.table, "domains") else {
            self.d.error(
                at..at,
                "`domains` is missing",
                "add domains = [\"example.org\"]: the mail domains this host serves",
            );
            return None;
        };
        let list = tomlwalk::as_str_list(self.d, v, "`domains`")?;
        if list.is_empty() {
            self.d.error(
                v.span(),
                "`domains` is empty",
                "list at least one mail domain",
            );
            return None;
        }
        let mut out: Vec<String> = Vec::new();
        let mut ok = true;
        for (span, domain) in list {
            if let Err(why) = check_domain(domain) {
                self.d.error(
                    span,
                    format!("domain `{}` is not valid: {why}", domain.escape_default()),
                    "",
                );
                ok = false;
            } else if out.iter().any(|d| d == domain) {
                self.d.error(
                    span,
                    format!("domain `{domain}` is listed twice"),
                    "remove one",
                );
                ok = false;
            } else {
                out.push(domain.to_string());
            }
        }
        ok.then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        Config::parse(&Source::new("/etc/postmaster/config.toml", text))
            .map_err(|i| i.0.iter().map(|d| d.to_string()).collect())
    }

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let c = parse("host_name = \"mail.example.org\"\ndomains = [\"example.org\"]\n").unwrap();
        assert_eq!(c.tls.source, TlsSource::Acme);
        assert_eq!(
            c.tls.cert,
            PathBuf::from("/var/lib/postmaster/tls/fullchain.pem")
        );
        assert_eq!(c.acme.directory, LETS_ENCRYPT);
        assert_eq!(
            c.generated_dir,
            PathBuf::from("/var/lib/postmaster/generated")
        );
        assert!(!c.insecure_allow_plain_passwords);
        assert!(c.postfix.reject_unknown_sender_domain);
        assert_eq!(c.postfix.map_type, None);
        assert_eq!(c.dovecot.version, DovecotVersion::V2_4);
        assert_eq!(c.units.dovecot, "dovecot.service");
        assert_eq!(c.units.tls_front, "postmaster-tls.service");
        assert_eq!(c.certificate_names(), vec!["mail.example.org"]);
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let c = parse("host_name = \"mail.example.org\"\ndomains = [\"example.org\"]\naccounts_file = \"accounts.toml\"\n").unwrap();
        assert_eq!(
            c.accounts_file,
            PathBuf::from("/etc/postmaster/accounts.toml")
        );
    }

    #[test]
    fn every_error_at_once_with_positions() {
        let e = parse(
            "host_name = \"localhost\"\ndomains = [\"example.org\", \"example.org\", \"Bad\"]\nstate_dir = \"/var/lib/post master\"\ncolour = 1\n[tls]\nsource = \"file\"\n[postfix]\nmap_type = \"btree\"\nmessage_size_limit = 1000\n[dovecot]\nvmail_uid = 0\n[systemd]\npostfix_unit = \"postfix\"\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            vec![
                "/etc/postmaster/config.toml:1:13: `host_name` `localhost` is not a valid host name: it needs at least two labels, like example.org; use the fully qualified name clients connect to, like mail.example.org",
                "/etc/postmaster/config.toml:2:27: domain `example.org` is listed twice; remove one",
                "/etc/postmaster/config.toml:2:42: domain `Bad` is not valid: it has uppercase letters; write it in lowercase",
                "/etc/postmaster/config.toml:3:13: `state_dir` contains ` `, which postfix or dovecot configuration cannot hold in a path; choose a path without spaces, commas, quotes, `<`, `$` or braces",
                "/etc/postmaster/config.toml:4:1: unknown key `colour` in the configuration; known keys here: host_name, domains, accounts_file, state_dir, generated_dir, insecure_allow_plain_passwords, tls, acme, systemd, postfix, dovecot, dkim, dns, inbound, logins",
                "/etc/postmaster/config.toml:6:10: `source` in [tls] cannot be \"file\"; use \"acme\" or \"files\"",
                "/etc/postmaster/config.toml:8:12: `map_type` in [postfix] cannot be \"btree\"; use \"lmdb\" or \"hash\"",
                "/etc/postmaster/config.toml:9:22: `message_size_limit` is below 1 MiB: most mail with an attachment would bounce; it is in bytes; 67108864 is 64 MiB",
                "/etc/postmaster/config.toml:11:13: `vmail_uid` must be a user or group id above 0 (mail is never stored as root)",
                "/etc/postmaster/config.toml:13:16: `postfix_unit` in [systemd] `postfix` is not a service unit name; like postfix.service",
            ]
        );
    }

    #[test]
    fn required_keys() {
        assert_eq!(
            parse("# nothing\n").unwrap_err(),
            vec![
                "/etc/postmaster/config.toml:1:1: `host_name` is missing; add host_name = \"…\"",
                "/etc/postmaster/config.toml:1:1: `domains` is missing; add domains = [\"example.org\"]: the mail domains this host serves",
            ]
        );
        let e =
            parse("host_name = \"mail.example.org\"\ndomains = []\n[tls]\nsource = \"files\"\n")
                .unwrap_err();
        assert_eq!(
            e,
            vec![
                "/etc/postmaster/config.toml:2:11: `domains` is empty; list at least one mail domain",
                "/etc/postmaster/config.toml:4:1: `cert` in [tls] is missing; with source = \"files\", say where the certificate chain is",
                "/etc/postmaster/config.toml:4:1: `key` in [tls] is missing; with source = \"files\", say where the private key is",
            ]
        );
    }

    #[test]
    fn logins_block_after_ten_failures_by_default_and_the_limits_are_checked() {
        let base = "host_name = \"mail.example.org\"\ndomains = [\"example.org\"]\n";
        let c = parse(base).unwrap();
        assert_eq!(c.logins, Logins::default());
        assert_eq!(
            (
                c.logins.block_after_failures,
                c.logins.failure_window_seconds,
                c.logins.block_seconds
            ),
            (10, 600, 900)
        );
        let c = parse(&format!(
            "{base}[logins]\nblock_after_failures = 0\nblock_seconds = 60\npolicy_address = \"[::1]:9000\"\n"
        ))
        .unwrap();
        assert_eq!(c.logins.block_after_failures, 0);
        assert_eq!(c.logins.block_seconds, 60);
        assert_eq!(c.logins.policy_address, "[::1]:9000".parse().unwrap());
        assert_eq!(c.logins.policy_clients, ["dovecot"]);
        let c = parse(&format!(
            "{base}[logins]\npolicy_clients = [\"dovecot2\"]\n"
        ))
        .unwrap();
        assert_eq!(c.logins.policy_clients, ["dovecot2"]);
        let e = parse(&format!("{base}[logins]\npolicy_clients = []\n")).unwrap_err();
        assert_eq!(
            e,
            vec![
                "/etc/postmaster/config.toml:4:18: `policy_clients` in [logins] is empty; name the user dovecot's auth runs as (default_internal_user), like [\"dovecot\"]; block_after_failures = 0 turns blocking off",
            ]
        );
        let e = parse(&format!(
            "{base}[logins]\nblock_seconds = 0\npolicy_address = \"0.0.0.0:10041\"\n"
        ))
        .unwrap_err();
        assert_eq!(
            e,
            vec![
                "/etc/postmaster/config.toml:4:17: `block_seconds` in [logins] must be above 0; it is in seconds; block_after_failures = 0 turns blocking off",
                "/etc/postmaster/config.toml:5:18: `policy_address` in [logins] `0.0.0.0:10041` is not a loopback address and port; only dovecot on this host asks it; like \"127.0.0.1:10041\"",
            ]
        );
    }

    #[test]
    fn inbound_checks_are_on_with_default_thresholds() {
        let c = parse("host_name = \"mail.example.org\"\ndomains = [\"example.org\"]\n").unwrap();
        assert_eq!(
            c.inbound,
            Inbound {
                enabled: true,
                reject_score: 15.0,
                add_header_score: 6.0,
                learning: true,
                resolver: Resolver::Local,
            }
        );
        assert_eq!(c.units.resolver, "unbound.service");
        let c = parse(
            "host_name = \"mail.example.org\"\ndomains = [\"example.org\"]\n[inbound]\nenabled = false\nreject_score = 20\nadd_header_score = 5.5\n",
        )
        .unwrap();
        assert!(!c.inbound.enabled);
        assert_eq!(
            (c.inbound.reject_score, c.inbound.add_header_score),
            (20.0, 5.5)
        );
        assert!(!c.inbound.learning, "no learning without the checks");
        let c = parse(
            "host_name = \"mail.example.org\"\ndomains = [\"example.org\"]\n[inbound]\nlearning = false\n",
        )
        .unwrap();
        assert!(c.inbound.enabled && !c.inbound.learning);
        let e = parse(
            "host_name = \"mail.example.org\"\ndomains = [\"example.org\"]\n[inbound]\nenabled = false\nlearning = true\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            vec![
                "/etc/postmaster/config.toml:5:12: `learning` in [inbound] needs `enabled = true`; what Junk teaches is rspamd's filter of the mail arriving on port 25, which is off",
            ]
        );
        let e = parse(
            "host_name = \"mail.example.org\"\ndomains = [\"example.org\"]\n[inbound]\nreject_score = 0\ngreylist = true\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            vec![
                "/etc/postmaster/config.toml:4:16: `reject_score` in [inbound] must be above 0; rspamd gives ordinary mail a score around 0; the defaults are 15 (refuse) and 6 (header)",
                "/etc/postmaster/config.toml:5:1: unknown key `greylist` in [inbound]; known keys here: enabled, reject_score, add_header_score, learning, resolver",
            ]
        );
        let e = parse(
            "host_name = \"mail.example.org\"\ndomains = [\"example.org\"]\n[inbound]\nreject_score = 5\nadd_header_score = \"6\"\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            vec![
                "/etc/postmaster/config.toml:5:20: `add_header_score` in [inbound] must be a number, not a string",
            ]
        );
        let e = parse(
            "host_name = \"mail.example.org\"\ndomains = [\"example.org\"]\n[inbound]\nreject_score = 5\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            vec![
                "/etc/postmaster/config.toml:4:16: `add_header_score` (6) in [inbound] must be below `reject_score` (5); mail is marked as probable spam before it scores high enough to be refused",
            ]
        );
    }

    #[test]
    fn the_inbound_checks_ask_the_local_resolver_unless_told_otherwise() {
        let c = parse(
            "host_name = \"mail.example.org\"\ndomains = [\"example.org\"]\n[inbound]\nresolver = \"system\"\n[systemd]\nresolver_unit = \"unbound-mail.service\"\n",
        )
        .unwrap();
        assert_eq!(c.inbound.resolver, Resolver::System);
        assert_eq!(c.units.resolver, "unbound-mail.service");
        let e = parse(
            "host_name = \"mail.example.org\"\ndomains = [\"example.org\"]\n[inbound]\nresolver = \"8.8.8.8\"\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            vec![
                "/etc/postmaster/config.toml:4:12: `resolver` in [inbound] cannot be \"8.8.8.8\"; use \"local\" or \"system\""
            ]
        );
    }

    #[test]
    fn acme_settings() {
        let c = parse(
            "host_name = \"mail.example.org\"\ndomains = [\"example.org\"]\n[acme]\ndirectory = \"letsencrypt-staging\"\ncontact = [\"mailto:a@example.org\"]\nextra_names = [\"example.org\", \"mail.example.org\"]\nchallenge = \"webroot\"\nwebroot = \"/var/www/html\"\n",
        )
        .unwrap();
        assert_eq!(c.acme.directory, LETS_ENCRYPT_STAGING);
        assert_eq!(c.acme.challenge, Challenge::Webroot);
        assert_eq!(
            c.certificate_names(),
            vec!["mail.example.org", "example.org"]
        );
        let e = parse(
            "host_name = \"mail.example.org\"\ndomains = [\"example.org\"]\n[acme]\ndirectory = \"http://ca.example\"\ncontact = [\"a@example.org\"]\nchallenge = \"webroot\"\neab_kid = \"k\"\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            vec![
                "/etc/postmaster/config.toml:4:1: challenge = \"webroot\" needs `webroot`; set webroot = the directory your web server serves for this host name",
                "/etc/postmaster/config.toml:4:1: external account binding needs both `eab_kid` and `eab_hmac_key_file`; set both, or neither",
                "/etc/postmaster/config.toml:4:13: `directory` must be an https:// URL; or \"letsencrypt\" / \"letsencrypt-staging\"",
                "/etc/postmaster/config.toml:5:11: contact `a@example.org` must be a mailto: URL; write it as \"mailto:you@example.org\"",
            ]
        );
    }
}
