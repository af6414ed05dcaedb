//! Logs go to the journal with structured fields when systemd runs us, and as
//! plain text to stderr on a terminal.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

pub(crate) fn init() {
    let filter =
        EnvFilter::try_from_env("POSTMASTER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // systemd sets JOURNAL_STREAM when stderr is connected to the journal.
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journald) = tracing_journald::layer()
    {
        tracing_subscriber::registry()
            .with(filter)
            .with(journald.with_syslog_identifier("postmaster".into()))
            .init();
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}
