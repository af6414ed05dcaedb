//! Shared by the integration tests: a scratch mail host setup on disk, and the
//! real postfix/dovecot tools they check generated output with.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_postmaster");

/// Runs a system tool that the test command installs; a missing tool fails the
/// test with a message saying how to get it, never skips it.
pub(crate) fn tool(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}); install postfix, postfix-lmdb and dovecot-core (the README's test command does)"))
}

pub(crate) fn postmaster(config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run postmaster");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A configuration and accounts file in a temporary directory, with the generated
/// directory inside it.
pub(crate) struct Setup {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: PathBuf,
    pub(crate) accounts: PathBuf,
    pub(crate) generated: PathBuf,
}

impl Setup {
    pub(crate) fn new(extra_config: &str, accounts: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let accounts_path = dir.path().join("accounts.toml");
        let generated = dir.path().join("generated");
        std::fs::write(
            &config,
            format!(
                "host_name = \"mail.example.org\"\ndomains = [\"example.org\", \"example.net\"]\naccounts_file = \"accounts.toml\"\nstate_dir = \"{}\"\ngenerated_dir = \"generated\"\n{extra_config}",
                dir.path().display()
            ),
        )
        .unwrap();
        std::fs::write(&accounts_path, accounts).unwrap();
        // The DKIM key directory as tmpfiles makes it: setgid, so that keys are
        // the signer's group (here the test's own) from the moment they exist.
        let keys = dir.path().join("dkim");
        std::fs::create_dir(&keys).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o2750)).unwrap();
        Setup {
            dir,
            config,
            accounts: accounts_path,
            generated,
        }
    }

    pub(crate) fn seed() -> Setup {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let accounts =
            std::fs::read_to_string(manifest.join("../examples/seed/accounts.toml")).unwrap();
        Setup::new("", &accounts)
    }
}
