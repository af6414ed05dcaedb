//! Noticing that the accounts file or the certificate pair changed.
//!
//! inotify on a file goes quiet after the file is replaced by rename, and never sees
//! a symlink swap (certbot's live/ -> archive/). So the watches are on the parent
//! directories, of each path and of what it resolves to, and events are filtered by
//! name. Events only say "look again": the daemon re-reads, compares and validates,
//! and a slow timer re-checks anyway in case an event was lost.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// Which input an event was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Input {
    Accounts,
    Certificate,
}

/// An event about one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) input: Input,
    /// The writer is done with the file: it was renamed into place, or a writer
    /// closed it. Other events (data written, the file renamed away or removed)
    /// say more is probably coming.
    pub(crate) complete: bool,
}

/// Whether `event` leaves `target` complete (see [`Change::complete`]).
fn completes(event: &notify::Event, target: &Path) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
    let is_target = |p: Option<&PathBuf>| {
        p.is_some_and(|p| p.file_name() == target.file_name() && p.parent() == target.parent())
    };
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => is_target(event.paths.first()),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => is_target(event.paths.first()),
        // (from, to): complete only when the target is where it went.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => is_target(event.paths.get(1)),
        _ => false,
    }
}

pub(crate) struct Watcher {
    inner: notify::RecommendedWatcher,
    watched_dirs: BTreeSet<PathBuf>,
    targets: std::sync::Arc<std::sync::Mutex<Vec<(Input, PathBuf)>>>,
}

impl Watcher {
    /// Starts watching; events arrive on the returned channel.
    pub(crate) fn new() -> notify::Result<(Watcher, mpsc::UnboundedReceiver<Change>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let targets: std::sync::Arc<std::sync::Mutex<Vec<(Input, PathBuf)>>> = Default::default();
        let seen = targets.clone();
        let inner = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else {
                // An overflowed queue loses events: look at everything again.
                let _ = tx.send(Change {
                    input: Input::Accounts,
                    complete: false,
                });
                let _ = tx.send(Change {
                    input: Input::Certificate,
                    complete: false,
                });
                return;
            };
            // Reads are no change; a writer closing the file is (it is done).
            let close_write = matches!(
                event.kind,
                notify::EventKind::Access(notify::event::AccessKind::Close(
                    notify::event::AccessMode::Write
                ))
            );
            if event.kind.is_access() && !close_write {
                return;
            }
            let targets = seen.lock().expect("watch targets lock");
            // Per input: was it hit, and did the event leave every hit target complete.
            let mut hit = std::collections::BTreeMap::new();
            for path in &event.paths {
                for (input, target) in targets.iter() {
                    if path.file_name() == target.file_name() && path.parent() == target.parent() {
                        let complete = completes(&event, target);
                        hit.entry(*input)
                            .and_modify(|c: &mut bool| *c &= complete)
                            .or_insert(complete);
                    }
                }
            }
            for (input, complete) in hit {
                let _ = tx.send(Change { input, complete });
            }
        })?;
        Ok((
            Watcher {
                inner,
                watched_dirs: BTreeSet::new(),
                targets,
            },
            rx,
        ))
    }

    /// Watches `files` (re-resolving symlinks): call again after every check, as a
    /// symlink may point elsewhere now.
    pub(crate) fn watch(&mut self, files: &[(Input, &Path)]) {
        let mut targets = Vec::new();
        for (input, path) in files {
            targets.push((*input, path.to_path_buf()));
            if let Ok(resolved) = std::fs::canonicalize(path)
                && resolved != *path
            {
                targets.push((*input, resolved));
            }
        }
        let dirs: BTreeSet<PathBuf> = targets
            .iter()
            .filter_map(|(_, p)| p.parent().map(Path::to_path_buf))
            .collect();
        for dir in dirs.difference(&self.watched_dirs.clone()) {
            match self.inner.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched_dirs.insert(dir.clone());
                }
                // A directory that does not exist yet is covered by the timer.
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "cannot watch directory yet")
                }
            }
        }
        for dir in self.watched_dirs.clone().difference(&dirs) {
            let _ = self.inner.unwatch(dir);
            self.watched_dirs.remove(dir);
        }
        *self.targets.lock().expect("watch targets lock") = targets;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RemoveKind,
        RenameMode,
    };

    fn event(kind: EventKind, paths: &[&str]) -> notify::Event {
        let mut e = notify::Event::new(kind);
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        e
    }

    #[test]
    fn a_file_is_complete_when_renamed_into_place_or_closed_by_its_writer() {
        let target = Path::new("/etc/postmaster/accounts.toml");
        let t = "/etc/postmaster/accounts.toml";
        let tmp = "/etc/postmaster/.accounts.toml.swp";
        // An editor or `postmaster` writing a temporary file and renaming it over.
        assert!(completes(
            &event(EventKind::Modify(ModifyKind::Name(RenameMode::To)), &[t]),
            target
        ));
        assert!(completes(
            &event(
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                &[tmp, t]
            ),
            target
        ));
        // `cat >`, an editor writing in place: done when it closes the file.
        assert!(completes(
            &event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &[t]
            ),
            target
        ));
        // More is coming: data written, the file created empty, moved away (vim's
        // backup rename) or removed.
        assert!(!completes(
            &event(EventKind::Modify(ModifyKind::Data(DataChange::Any)), &[t]),
            target
        ));
        assert!(!completes(
            &event(EventKind::Create(CreateKind::File), &[t]),
            target
        ));
        assert!(!completes(
            &event(EventKind::Modify(ModifyKind::Name(RenameMode::From)), &[t]),
            target
        ));
        assert!(!completes(
            &event(
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                &[t, "/etc/postmaster/accounts.toml~"]
            ),
            target
        ));
        assert!(!completes(
            &event(EventKind::Remove(RemoveKind::File), &[t]),
            target
        ));
        // Another file's events say nothing about this one.
        assert!(!completes(
            &event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &[tmp]
            ),
            target
        ));
    }
}
