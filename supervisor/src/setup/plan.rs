//! What setup does to each file it installs, decided from what is on disk and
//! what its manifest says it installed: pure values, so a second run, an upgrade,
//! an admin's edit and a foreign configuration are all unit-tested here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::diff;
use super::judge::{self, DebianFacts, Refusal};

/// Where the manifest lives: what setup installed, with hashes. Root's own
/// directory, not under /var/lib/postmaster: the daemon's user owns that one and
/// could rename a subdirectory there and put its own in place, and uninstall, as
/// root, writes the "originals" it lists back into /etc.
pub(crate) const MANIFEST: &str = "/var/lib/postmaster-setup/manifest.json";
/// Where the files setup replaced are kept (same paths below it).
pub(crate) const ORIGINALS: &str = "/var/lib/postmaster-setup/originals";

/// A file setup installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Desired {
    pub(crate) path: PathBuf,
    pub(crate) content: Vec<u8>,
    pub(crate) mode: u32,
}

/// What setup installed, recorded after each run that changed anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    /// Every file setup installed: its sha256 as installed, and where the file it
    /// replaced (Debian's) was kept, if there was one.
    pub(crate) files: BTreeMap<PathBuf, Installed>,
    /// Files setup created once and leaves to the admin (config, accounts).
    pub(crate) created: Vec<PathBuf>,
    /// Debian packages setup installed (uninstall names them, removes none).
    pub(crate) packages: Vec<String>,
    /// A whole setup finished: from now on a change to an installed file is an
    /// upgrade, shown first and made only with --yes.
    pub(crate) complete: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Installed {
    pub(crate) sha256: String,
    pub(crate) original: Option<PathBuf>,
}

pub(crate) fn sha256(content: &[u8]) -> String {
    Sha256::digest(content)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What happens to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// On disk as setup would write it.
    Unchanged,
    /// Not there: written.
    Create,
    /// Debian's (or a package's) original: kept under ORIGINALS and replaced.
    Replace,
    /// Installed by setup and untouched since; the new content differs (an
    /// upgrade: a new binary or a changed config.toml).
    Update,
    /// Installed by setup, changed or removed by someone since.
    LocallyChanged,
    /// Someone's configuration that setup did not install.
    Foreign(judge::ForeignReason),
}

/// One file's plan: the action and the difference it makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) path: PathBuf,
    pub(crate) action: Action,
    /// What is there now → what setup writes (empty for Unchanged and Create).
    pub(crate) diff: String,
}

/// Decides each file's action. `on_disk` maps every desired path to what is
/// there now (None: nothing).
pub(crate) fn plan(
    desired: &[Desired],
    on_disk: &BTreeMap<PathBuf, Option<Vec<u8>>>,
    manifest: &Manifest,
    facts: &DebianFacts,
) -> Vec<Step> {
    desired
        .iter()
        .map(|d| {
            let now = on_disk.get(&d.path).cloned().flatten();
            let recorded = manifest.files.get(&d.path);
            let action = match (&now, recorded) {
                (Some(c), _) if *c == d.content => Action::Unchanged,
                (None, None) => Action::Create,
                (None, Some(_)) => Action::LocallyChanged,
                (Some(c), Some(r)) if sha256(c) == r.sha256 => Action::Update,
                (Some(_), Some(_)) => Action::LocallyChanged,
                (Some(c), None) => match judge::foreign(&d.path, c, &d.content, facts) {
                    None => Action::Replace,
                    Some(why) => Action::Foreign(why),
                },
            };
            let diff = match (&action, &now) {
                (Action::Unchanged | Action::Create, _) => String::new(),
                (_, now) => describe_change(&d.path, now.as_deref().unwrap_or(b""), &d.content),
            };
            Step {
                path: d.path.clone(),
                action,
                diff,
            }
        })
        .collect()
}

/// A unified diff for text, a line with both hashes for anything else (the binary).
fn describe_change(path: &Path, old: &[u8], new: &[u8]) -> String {
    let name = path.display().to_string();
    match (std::str::from_utf8(old), std::str::from_utf8(new)) {
        (Ok(o), Ok(n)) => diff::unified(&name, &format!("{name} (new)"), o, n),
        _ => format!(
            "{name}: binary, sha256 {} -> {}\n",
            sha256(old),
            sha256(new)
        ),
    }
}

/// What setup does with a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Write what the plan says (possibly nothing).
    Proceed,
    /// An upgrade of a finished setup: show the differences, change nothing
    /// until the admin runs it again with --yes.
    NeedsYes,
    Refuse(Vec<Refusal>),
}

/// The whole decision: admins' files are never replaced without --force, and a
/// finished setup changes nothing without --yes.
pub(crate) fn decide(steps: &[Step], manifest: &Manifest, yes: bool, force: bool) -> Verdict {
    if !force {
        let refusals: Vec<Refusal> = steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::LocallyChanged => Some(Refusal::LocallyChanged {
                    path: s.path.clone(),
                }),
                Action::Foreign(why) => Some(Refusal::Foreign {
                    path: s.path.clone(),
                    why: why.clone(),
                }),
                _ => None,
            })
            .collect();
        if !refusals.is_empty() {
            return Verdict::Refuse(refusals);
        }
    }
    let changes = steps.iter().any(|s| s.action != Action::Unchanged);
    if manifest.complete && changes && !yes {
        Verdict::NeedsYes
    } else {
        Verdict::Proceed
    }
}

/// What uninstall does with one file setup installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Removal {
    /// Put the original back (from ORIGINALS).
    Restore(PathBuf),
    /// Setup created it: delete it.
    Delete,
    /// Changed since setup installed it: left as it is, and said so.
    Leave,
    /// Already gone.
    Gone,
}

pub(crate) fn removal(installed: &Installed, now: Option<&[u8]>) -> Removal {
    match now {
        None => Removal::Gone,
        Some(c) if sha256(c) != installed.sha256 => Removal::Leave,
        Some(_) => match &installed.original {
            Some(o) => Removal::Restore(o.clone()),
            None => Removal::Delete,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(path: &str, content: &str) -> Desired {
        Desired {
            path: path.into(),
            content: content.as_bytes().to_vec(),
            mode: 0o644,
        }
    }

    fn disk(entries: &[(&str, Option<&str>)]) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
        entries
            .iter()
            .map(|(p, c)| (PathBuf::from(p), c.map(|c| c.as_bytes().to_vec())))
            .collect()
    }

    fn installed(entries: &[(&str, &str)]) -> Manifest {
        Manifest {
            files: entries
                .iter()
                .map(|(p, c)| {
                    (
                        PathBuf::from(p),
                        Installed {
                            sha256: sha256(c.as_bytes()),
                            original: None,
                        },
                    )
                })
                .collect(),
            complete: true,
            ..Default::default()
        }
    }

    const MAIN: &str = "/etc/postfix/main.cf";
    const RSPAMD: &str = "/etc/rspamd/local.d/actions.conf";

    fn actions(steps: &[Step]) -> Vec<Action> {
        steps.iter().map(|s| s.action.clone()).collect()
    }

    #[test]
    fn a_fresh_host_gets_debian_s_files_replaced_and_new_ones_created_without_yes() {
        let want = [desired(MAIN, "ours\n"), desired(RSPAMD, "reject = 15;\n")];
        let steps = plan(
            &want,
            &disk(&[(MAIN, Some("myhostname = x\n")), (RSPAMD, None)]),
            &Manifest::default(),
            &DebianFacts::default(),
        );
        assert_eq!(actions(&steps), vec![Action::Replace, Action::Create]);
        assert!(
            steps[0].diff.contains("-myhostname = x\n+ours\n"),
            "{}",
            steps[0].diff
        );
        assert_eq!(
            decide(&steps, &Manifest::default(), false, false),
            Verdict::Proceed
        );
    }

    #[test]
    fn a_second_run_changes_nothing() {
        let want = [desired(MAIN, "ours\n")];
        let m = installed(&[(MAIN, "ours\n")]);
        let steps = plan(
            &want,
            &disk(&[(MAIN, Some("ours\n"))]),
            &m,
            &DebianFacts::default(),
        );
        assert_eq!(actions(&steps), vec![Action::Unchanged]);
        assert_eq!(decide(&steps, &m, false, false), Verdict::Proceed);
    }

    #[test]
    fn an_upgrade_shows_its_diff_and_needs_yes() {
        let want = [desired(MAIN, "size = 2\n")];
        let m = installed(&[(MAIN, "size = 1\n")]);
        let steps = plan(
            &want,
            &disk(&[(MAIN, Some("size = 1\n"))]),
            &m,
            &DebianFacts::default(),
        );
        assert_eq!(actions(&steps), vec![Action::Update]);
        assert_eq!(
            steps[0].diff,
            "--- /etc/postfix/main.cf\n+++ /etc/postfix/main.cf (new)\n@@ -1 +1 @@\n-size = 1\n+size = 2\n"
        );
        assert_eq!(decide(&steps, &m, false, false), Verdict::NeedsYes);
        assert_eq!(decide(&steps, &m, true, false), Verdict::Proceed);
        // Before a setup ever finished (it stopped half-way), no --yes is needed.
        let unfinished = Manifest {
            complete: false,
            ..m
        };
        assert_eq!(decide(&steps, &unfinished, false, false), Verdict::Proceed);
    }

    #[test]
    fn an_admin_s_edit_is_refused_even_with_yes_and_replaced_with_force() {
        let want = [desired(MAIN, "size = 2\n")];
        let m = installed(&[(MAIN, "size = 1\n")]);
        let steps = plan(
            &want,
            &disk(&[(MAIN, Some("size = 1\nmine = yes\n"))]),
            &m,
            &DebianFacts::default(),
        );
        assert_eq!(actions(&steps), vec![Action::LocallyChanged]);
        assert!(steps[0].diff.contains("-mine = yes\n"), "{}", steps[0].diff);
        assert_eq!(
            decide(&steps, &m, true, false),
            Verdict::Refuse(vec![Refusal::LocallyChanged { path: MAIN.into() }])
        );
        assert_eq!(decide(&steps, &m, true, true), Verdict::Proceed);
        // Removed by the admin counts as changed too.
        let gone = plan(&want, &disk(&[(MAIN, None)]), &m, &DebianFacts::default());
        assert_eq!(actions(&gone), vec![Action::LocallyChanged]);
    }

    #[test]
    fn someone_else_s_configuration_is_refused_without_force() {
        let want = [desired(MAIN, "ours\n")];
        let steps = plan(
            &want,
            &disk(&[(MAIN, Some("virtual_mailbox_domains = a\n"))]),
            &Manifest::default(),
            &DebianFacts::default(),
        );
        assert!(
            matches!(&steps[0].action, Action::Foreign(judge::ForeignReason::SetsParameters(p)) if p == &["virtual_mailbox_domains"])
        );
        assert!(
            matches!(decide(&steps, &Manifest::default(), true, false), Verdict::Refuse(r) if r.len() == 1)
        );
        assert_eq!(
            decide(&steps, &Manifest::default(), false, true),
            Verdict::Proceed
        );
    }

    #[test]
    fn a_binary_change_is_named_by_its_hashes() {
        let want = [Desired {
            path: "/usr/local/bin/postmaster".into(),
            content: vec![0, 159, 1],
            mode: 0o755,
        }];
        let m = Manifest {
            files: [(
                PathBuf::from("/usr/local/bin/postmaster"),
                Installed {
                    sha256: sha256(&[0, 159, 2]),
                    original: None,
                },
            )]
            .into(),
            complete: true,
            ..Default::default()
        };
        let steps = plan(
            &want,
            &[(
                PathBuf::from("/usr/local/bin/postmaster"),
                Some(vec![0, 159, 2]),
            )]
            .into(),
            &m,
            &DebianFacts::default(),
        );
        assert_eq!(actions(&steps), vec![Action::Update]);
        assert!(
            steps[0]
                .diff
                .starts_with("/usr/local/bin/postmaster: binary, sha256 "),
            "{}",
            steps[0].diff
        );
    }

    #[test]
    fn uninstall_restores_originals_deletes_its_own_files_and_leaves_edited_ones() {
        let with_original = Installed {
            sha256: sha256(b"ours"),
            original: Some("/orig/main.cf".into()),
        };
        assert_eq!(
            removal(&with_original, Some(b"ours")),
            Removal::Restore("/orig/main.cf".into())
        );
        let created = Installed {
            original: None,
            ..with_original.clone()
        };
        assert_eq!(removal(&created, Some(b"ours")), Removal::Delete);
        assert_eq!(removal(&created, Some(b"edited")), Removal::Leave);
        assert_eq!(removal(&created, None), Removal::Gone);
    }

    #[test]
    fn the_manifest_survives_a_round_trip() {
        let m = installed(&[(MAIN, "x")]);
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&text).unwrap(), m);
    }
}
