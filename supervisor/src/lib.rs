//! postmaster: a postfix + dovecot mail host that runs itself.
//!
//! The crate is a pure core with effects at its edges:
//!
//! - [`config`]: the configuration file, read into a validated [`config::Config`].
//! - [`accounts`]: the accounts file (mailboxes, aliases, catch-alls), validated;
//!   read line by line in its usual form (`fast`), the aliases one compact sorted
//!   table (`table`).
//! - [`address`], [`password`]: the small value types both are made of.
//! - [`diag`], [`tomlwalk`]: `file:line:column` diagnostics, all at once.
//! - [`render`]: pure functions from config + accounts to file contents (postfix
//!   maps and configuration, dovecot passwd-file and configuration).
//! - [`apply`]: the effects: atomic writes, `postmap`, ownership and modes.
//! - [`pipeline`]: the one way from the accounts file to the generated files, used
//!   by `postmaster apply` and the daemon; the configuration resolved against what
//!   the host offers.
//! - [`daemon`]: `postmaster run`, the event loop that keeps the mail host in step;
//!   `serve` is its sequence for serving a new certificate, as pure values;
//!   [`watch`] notices file changes, [`systemd`] reloads units over D-Bus,
//!   [`bus`] is postmaster's own D-Bus interface, [`status`] what it reports.
//! - [`tls`]: certificate pair validation (pure); [`certificate`]: from source files
//!   to the installed pair, and the decision what to do about it; [`probe`]: what a
//!   port serves.
//! - [`dkim`]: the DKIM keys postmaster makes, rotates only once DNS shows the new
//!   one, and hands to rspamd (which signs as postfix's milter); [`dns`]: the
//!   records a mail host needs (`postmaster dns`) and what DNS says about them.
//! - [`acme`]: the ACME client, a module each: `account` (the account at the CA,
//!   stored in the state directory), `order` (ordering, validation, download),
//!   `http01` (the answers: the port 80 server on hyper, or a webroot), `schedule`
//!   (when to renew: plan, back-off, the CA's renewal information).
//! - [`setup`]: `postmaster setup`/`uninstall` on Debian 13: judging the host,
//!   planning each file against a manifest of what setup installed, the diff an
//!   upgrade shows (pure), and the effects (apt-get, files, systemctl).
//! - [`logins`]: password guessing refused: dovecot's auth asks the daemon before
//!   each login and reports each failure; blocks in the status, lifted by `unblock`.
//! - [`lmtp_relay`]: `postmaster lmtp-relay`, postfix's LMTP deliveries to dovecot
//!   through a socket systemd holds, so that a dovecot reload (which replaces its
//!   own socket) defers none; it follows the LMTP dialogue (`dialogue`, pure) to
//!   send again a RCPT a reload's cut user lookup refused.
//! - [`tls_front`]: `postmaster tls-front`, TLS for IMAP, POP3 and ManageSieve in
//!   front of dovecot (STARTTLS answered before TLS by `plaintext`, pure; dovecot
//!   told the client's address by a PROXY header, `proxy_header`, pure), so that a
//!   new certificate is a reload of the front, never of dovecot.
//! - [`cli`]: the `postmaster` command line.
//!
//! Only what the binary (`cli`) and the integration tests (`acme`, `apply`,
//! `config`, `probe`, `tls`) use is `pub`; everything else is `pub(crate)`, and the
//! `unreachable_pub` lint keeps it so.

pub(crate) mod accounts;
pub mod acme;
pub(crate) mod address;
pub mod apply;
pub(crate) mod bus;
pub(crate) mod certificate;
pub mod cli;
pub mod config;
pub(crate) mod daemon;
pub(crate) mod diag;
pub(crate) mod dkim;
pub(crate) mod dns;
pub(crate) mod lmtp_relay;
pub(crate) mod logging;
pub(crate) mod logins;
pub(crate) mod password;
pub(crate) mod pipeline;
pub mod probe;
pub(crate) mod render;
pub(crate) mod serve;
pub(crate) mod setup;
pub(crate) mod status;
pub(crate) mod systemd;
pub mod tls;
pub(crate) mod tls_front;
pub(crate) mod tomlwalk;
pub(crate) mod watch;
