//! dovecot's passwd-file: one line per mailbox, serving as passdb and userdb.
//!
//! `name:{SCHEME}hash:uid:gid::home::extra fields`. The login is the mailbox name;
//! dovecot strips the domain from `thomas@example.org` before looking it up (see the
//! dovecot configuration), so one line serves every hosted domain.

use std::io;

use crate::accounts::Accounts;
use crate::config::{Config, DovecotVersion};

/// Writes the passwd-file's lines to `out`.
pub(crate) fn render(
    config: &Config,
    accounts: &Accounts,
    out: &mut dyn io::Write,
) -> io::Result<()> {
    let dc = &config.dovecot;
    for m in accounts.mailboxes.values() {
        let home = config.dovecot.mail_root.join(&m.name);
        let mut extra: Vec<String> = Vec::new();
        if m.disabled {
            // `fail=y` makes every passdb lookup fail: IMAP, POP3 and SMTP AUTH alike.
            // (`nologin` does not: postfix's SASL ignores it and lets the login in.)
            // The userdb ignores it, so LMTP keeps delivering: nothing is lost.
            extra.push("fail=y".into());
        }
        if let Some(bytes) = m.quota {
            let size = size_with_unit(bytes);
            extra.push(match dc.version {
                DovecotVersion::V2_4 => format!("userdb_quota_storage_size={size}"),
                DovecotVersion::V2_3 => format!("userdb_quota_rule=*:storage={size}"),
            });
        }
        writeln!(
            out,
            "{}:{}:{}:{}::{}::{}",
            m.name,
            m.password.text,
            dc.vmail_uid,
            dc.vmail_gid,
            home.display(),
            extra.join(" ")
        )?;
    }
    Ok(())
}

/// A byte count in the largest unit that states it exactly, as dovecot reads sizes.
fn size_with_unit(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "k")] {
        if bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::size_with_unit;

    #[test]
    fn sizes_keep_their_exact_value() {
        assert_eq!(size_with_unit(2 << 30), "2G");
        assert_eq!(size_with_unit(1536 << 20), "1536M");
        assert_eq!(size_with_unit(1 << 40), "1T");
        assert_eq!(size_with_unit(1000), "1000B");
        assert_eq!(size_with_unit(4096), "4k");
    }
}
