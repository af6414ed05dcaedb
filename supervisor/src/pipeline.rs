//! The one way from the files a person edits to what the mail host reads, shared by
//! `postmaster apply` and the daemon: read and validate the accounts file, render,
//! and write the generated files in an order that is safe at every moment. The
//! certificate's way is [`crate::certificate`]'s [`decide`](crate::certificate::decide);
//! the DKIM keys' is [`apply_dkim`].
//!
//! What the host offers is probed once, here, and travels with the configuration
//! ([`Resolved`]): the rest of the program never runs `postconf` itself.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read};
use std::path::Path;
use std::process::Command;

use crate::accounts::{self, Accounts};
use crate::apply::{self, ApplyError, Report};
use crate::config::{Config, MapType};
use crate::diag::Invalid;
use crate::dkim::{self, store::DkimError};
use crate::render;
use crate::tomlwalk;

use sha2::{Digest, Sha256};

/// The validated configuration together with what this host offers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Resolved {
    pub(crate) config: Config,
    /// The postfix lookup table type the maps are compiled to.
    pub(crate) map_type: MapType,
}

impl Resolved {
    /// Probes the host (`postconf -m`) for what the configuration leaves open.
    pub(crate) fn probe(config: Config) -> Resolved {
        let map_type = config.postfix.map_type.unwrap_or_else(offered_map_type);
        Resolved { config, map_type }
    }
}

/// lmdb where this postfix supports it, else hash.
fn offered_map_type() -> MapType {
    match Command::new("postconf").arg("-m").output() {
        Ok(out) if out.status.success() => {
            map_type_from_postconf(&String::from_utf8_lossy(&out.stdout))
        }
        // No postfix here (rendering on another machine): assume a current one.
        _ => MapType::Lmdb,
    }
}

/// The map type to use, from what `postconf -m` lists.
fn map_type_from_postconf(listed: &str) -> MapType {
    if listed.lines().any(|l| l.trim() == "lmdb") {
        MapType::Lmdb
    } else {
        MapType::Hash
    }
}

/// Reads the accounts file (`file:line:column` diagnostics when it is wrong).
pub(crate) fn read_accounts(config: &Config) -> Result<Vec<u8>, Invalid> {
    let path = &config.accounts_file;
    std::fs::read(path).map_err(|e| {
        Invalid(vec![crate::diag::whole_file(
            path,
            format!("cannot read the accounts file: {e}"),
            "create it, or set accounts_file in the configuration",
        )])
    })
}

/// Validates the accounts file's bytes against the configuration.
pub(crate) fn parse_accounts(
    config: &Config,
    path: &Path,
    bytes: Vec<u8>,
) -> Result<Accounts, Invalid> {
    let source = tomlwalk::decode(path, bytes).map_err(|d| Invalid(vec![d]))?;
    accounts::parse(&source, &config.accounts_policy())
}

/// Reads and validates the accounts file.
pub(crate) fn load_accounts(config: &Config) -> Result<Accounts, Invalid> {
    read_and_parse_accounts(config).0
}

/// Reads and validates the accounts file, with the SHA-256 of the bytes validated
/// (`None` when it could not be read). A file in the plain form is read line by
/// line and its text never held whole (with 100,000 aliases 4.7 MB of an edit's
/// peak); any other is read again, whole, and the digest is of that second read,
/// which is what is validated even if the file changed in between.
pub(crate) fn read_and_parse_accounts(
    config: &Config,
) -> (Result<Accounts, Invalid>, Option<[u8; 32]>) {
    let path = &config.accounts_file;
    if let Ok(file) = std::fs::File::open(path) {
        let mut file = Hashing::new(file);
        if let Some(accounts) = accounts::read_plain(&mut file, &config.accounts_policy()) {
            return (Ok(accounts), Some(file.hasher.finalize().into()));
        }
    }
    match read_accounts(config) {
        Ok(bytes) => {
            let digest = Sha256::digest(&bytes).into();
            (parse_accounts(config, path, bytes), Some(digest))
        }
        Err(invalid) => (Err(invalid), None),
    }
}

/// The SHA-256 of the accounts file, read in pieces.
pub(crate) fn accounts_digest(path: &Path) -> io::Result<[u8; 32]> {
    let mut file = Hashing::new(std::fs::File::open(path)?);
    while !file.fill_buf()?.is_empty() {
        let n = file.fill_buf()?.len();
        file.consume(n);
    }
    Ok(file.hasher.finalize().into())
}

/// A file read through a buffer, hashing each byte as it is consumed.
struct Hashing {
    file: io::BufReader<std::fs::File>,
    hasher: Sha256,
}

impl Hashing {
    fn new(file: std::fs::File) -> Self {
        Hashing {
            file: io::BufReader::with_capacity(64 * 1024, file),
            hasher: Sha256::new(),
        }
    }
}

impl Read for Hashing {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = {
            let buffered = self.fill_buf()?;
            let n = buffered.len().min(out.len());
            out[..n].copy_from_slice(&buffered[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Hashing {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.file.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.hasher.update(&self.file.buffer()[..n]);
        self.file.consume(n);
    }
}

/// Renders `accounts` and writes the generated files (maps compiled, passwd-file
/// readable by dovecot), in the order that never lets a login or a delivery see a
/// half-applied state (see [`render::in_safe_order`]).
pub(crate) fn apply_accounts(
    resolved: &Resolved,
    accounts: &Accounts,
) -> Result<Report, ApplyError> {
    let config = &resolved.config;
    // No passwd-file yet (a first apply): nothing is removed.
    let removes_a_login =
        std::fs::File::open(config.generated_dir.join(render::paths::PASSWD_FILE))
            .is_ok_and(|f| render::removes_a_login(std::io::BufReader::new(f), accounts));
    let files = render::in_safe_order(render::generated(config, accounts), removes_a_login);
    let options = apply::Options {
        compile_maps: Some(resolved.map_type),
        passwd_group: Some("dovecot".into()),
        postmap: "postmap".into(),
    };
    apply::apply(&config.generated_dir, &files, &options)
}

/// What one pass over the DKIM keys did.
#[derive(Debug, Default)]
pub(crate) struct DkimReport {
    /// One line per key made or switched to.
    pub(crate) done: Vec<String>,
    /// rspamd's table of keys changed: rspamd must reload to sign with it.
    pub(crate) table_changed: bool,
    pub(crate) state: dkim::State,
}

/// The one way to the DKIM keys, for `postmaster apply` and the daemon: makes the
/// keys the domains lack, switches to a pending key once DNS shows it (`seen`, by
/// record name), carries out `extra` steps (a rotation asked for), and writes
/// rspamd's table. With DKIM off, nothing happens.
pub(crate) fn apply_dkim(
    config: &Config,
    seen: &BTreeMap<String, dkim::Seen>,
    extra: &[dkim::Step],
) -> Result<DkimReport, DkimError> {
    if !config.dkim.enabled {
        return Ok(DkimReport::default());
    }
    let now = dkim::unix_now();
    let mut state = dkim::store::load(config)?;
    let mut done = dkim::store::carry_out(config, &mut state, extra, now)?;
    let planned = dkim::plan(
        &state,
        &config.domains,
        seen,
        &dkim::Policy::from_config(&config.dkim),
        now,
    );
    done.extend(dkim::store::carry_out(config, &mut state, &planned, now)?);
    let table_changed = dkim::store::write_rspamd_domains(config, &state)?;
    Ok(DkimReport {
        done,
        table_changed,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lmdb_is_used_where_postfix_offers_it() {
        assert_eq!(
            map_type_from_postconf("btree\ncidr\nhash\nlmdb\npcre\n"),
            MapType::Lmdb
        );
        assert_eq!(
            map_type_from_postconf("btree\ncidr\nhash\npcre\n"),
            MapType::Hash
        );
        // A name that merely contains lmdb is not lmdb.
        assert_eq!(map_type_from_postconf("hash\nlmdbx\n"), MapType::Hash);
    }

    /// A configuration with its state (and the accounts file) in `dir`.
    fn config_in(dir: &Path, more: &str) -> Config {
        let text = format!(
            "host_name = \"mail.example.org\"\ndomains = [\"example.org\", \"example.net\"]\nstate_dir = \"{0}\"\naccounts_file = \"{0}/accounts.toml\"\n{more}",
            dir.display()
        );
        Config::parse(&crate::diag::Source::new(
            "/etc/postmaster/config.toml",
            text,
        ))
        .unwrap()
    }

    #[test]
    fn the_accounts_file_is_read_line_by_line_or_again_whole_with_the_digest_of_what_was_validated()
    {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path(), "insecure_allow_plain_passwords = true\n");
        let whole = |text: &str| {
            let source = tomlwalk::decode(&config.accounts_file, text.into()).unwrap();
            accounts::parse(&source, &config.accounts_policy())
        };
        let files = [
            // The plain form: read line by line, more lines than one buffer holds.
            format!(
                "[mailboxes.thomas]\npassword = \"{{PLAIN}}x\"\n[aliases]\n{}",
                (0..5000)
                    .map(|i| format!("a{i} = \"thomas\"\n"))
                    .collect::<String>()
            ),
            // A multi-line array: read again, whole.
            "[mailboxes.thomas]\npassword = \"{PLAIN}x\"\n[aliases]\nx = [\n  \"thomas\",\n]\n"
                .into(),
            // A mistake: read again, whole, and reported.
            "[mailboxes.thomas]\npassword = \"{PLAIN}x\"\n[aliases]\nx = \"nobody\"\n".into(),
            // A control character: read again, whole, and reported.
            "[mailboxes.thomas]\npassword = \"{PLAIN}\u{1}\"\n".into(),
        ];
        for (i, text) in files.iter().enumerate() {
            let plain = accounts::read_plain(&mut text.as_bytes(), &config.accounts_policy());
            assert_eq!(plain.is_some(), i == 0, "{text}");
            std::fs::write(&config.accounts_file, text).unwrap();
            let (accounts, digest) = read_and_parse_accounts(&config);
            let expected: [u8; 32] = Sha256::digest(text.as_bytes()).into();
            assert_eq!(digest, Some(expected), "{text}");
            assert_eq!(accounts_digest(&config.accounts_file).unwrap(), expected);
            assert_eq!(accounts, whole(text), "{text}");
        }
        assert!(read_and_parse_accounts(&config).0.is_err());
        assert!(matches!(read_and_parse_accounts(&config).0, Err(ref i) if i.0.len() == 1));
        std::fs::remove_file(&config.accounts_file).unwrap();
        let (missing, digest) = read_and_parse_accounts(&config);
        assert_eq!(digest, None);
        let missing = missing.unwrap_err().to_string();
        assert!(
            missing.contains("cannot read the accounts file"),
            "{missing}"
        );
        assert!(accounts_digest(&config.accounts_file).is_err());
    }

    #[test]
    fn dkim_keys_are_made_once_and_switched_only_when_dns_shows_the_new_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path(), "");
        // Without the setgid directory rspamd could not read the keys: refused.
        let err = apply_dkim(&config, &BTreeMap::new(), &[]).unwrap_err();
        assert!(
            err.to_string().contains("is not readable by rspamd"),
            "{err}"
        );
        assert!(!config.dkim_state_file().exists());

        let keys = config.dkim_key_dir();
        std::fs::create_dir(&keys).unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o2750)).unwrap();
        let first = apply_dkim(&config, &BTreeMap::new(), &[]).unwrap();
        assert_eq!(first.done.len(), 2, "{:?}", first.done);
        assert!(first.table_changed);
        let org = first.state.active("example.org").unwrap().clone();
        let key_file = keys.join(org.file_name("example.org"));
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o640);
        let table = std::fs::read_to_string(config.generated_dir.join(dkim::store::RSPAMD_DOMAINS))
            .unwrap();
        assert!(
            table.contains(&format!("path = \"{}\";", key_file.display())),
            "{table}"
        );

        // Nothing new: nothing made, nothing rewritten.
        let again = apply_dkim(&config, &BTreeMap::new(), &[]).unwrap();
        assert!(again.done.is_empty() && !again.table_changed);

        // A rotation: the new key waits; rspamd's table keeps the old one.
        let rotate = [dkim::Step::Generate {
            domain: "example.org".into(),
            algorithm: dkim::Algorithm::Rsa2048,
            activate: false,
        }];
        let rotated = apply_dkim(&config, &BTreeMap::new(), &rotate).unwrap();
        let pending = rotated
            .state
            .pending_of("example.org", crate::dkim::Algorithm::Rsa2048)
            .unwrap()
            .clone();
        assert!(!rotated.table_changed);
        assert_eq!(
            rotated.state.active("example.org").unwrap().selector,
            org.selector
        );
        // DNS shows it: switched, old one retiring, table changed.
        let seen = BTreeMap::from([(pending.record_name("example.org"), dkim::Seen::Present)]);
        let switched = apply_dkim(&config, &seen, &[]).unwrap();
        assert!(switched.table_changed);
        assert_eq!(
            switched.state.active("example.org").unwrap().selector,
            pending.selector
        );
        // And it survives a restart: the state file says so.
        let loaded = dkim::store::load(&config).unwrap();
        assert_eq!(loaded, switched.state);

        // A damaged state file is never replaced by new keys.
        std::fs::write(config.dkim_state_file(), "{ not json").unwrap();
        let err = apply_dkim(&config, &BTreeMap::new(), &[]).unwrap_err();
        assert!(err.to_string().contains("is damaged"), "{err}");
        assert_eq!(
            std::fs::read_to_string(config.dkim_state_file()).unwrap(),
            "{ not json"
        );
    }
}
