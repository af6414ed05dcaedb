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
pub enum Input {
    Accounts,
    Certificate,
}

pub struct Watcher {
    inner: notify::RecommendedWatcher,
    watched_dirs: BTreeSet<PathBuf>,
    targets: std::sync::Arc<std::sync::Mutex<Vec<(Input, PathBuf)>>>,
}

impl Watcher {
    /// Starts watching; events arrive on the returned channel.
    pub fn new() -> notify::Result<(Watcher, mpsc::UnboundedReceiver<Input>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let targets: std::sync::Arc<std::sync::Mutex<Vec<(Input, PathBuf)>>> = Default::default();
        let seen = targets.clone();
        let inner = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else {
                // An overflowed queue loses events: look at everything again.
                let _ = tx.send(Input::Accounts);
                let _ = tx.send(Input::Certificate);
                return;
            };
            if event.kind.is_access() {
                return;
            }
            let targets = seen.lock().expect("watch targets lock");
            let mut hit = BTreeSet::new();
            for path in &event.paths {
                for (input, target) in targets.iter() {
                    if path.file_name() == target.file_name() && path.parent() == target.parent() {
                        hit.insert(*input);
                    }
                }
            }
            for input in hit {
                let _ = tx.send(input);
            }
        })?;
        Ok((Watcher { inner, watched_dirs: BTreeSet::new(), targets }, rx))
    }

    /// Watches `files` (re-resolving symlinks): call again after every check, as a
    /// symlink may point elsewhere now.
    pub fn watch(&mut self, files: &[(Input, &Path)]) {
        let mut targets = Vec::new();
        for (input, path) in files {
            targets.push((*input, path.to_path_buf()));
            if let Ok(resolved) = std::fs::canonicalize(path)
                && resolved != *path
            {
                targets.push((*input, resolved));
            }
        }
        let dirs: BTreeSet<PathBuf> = targets.iter().filter_map(|(_, p)| p.parent().map(Path::to_path_buf)).collect();
        for dir in dirs.difference(&self.watched_dirs.clone()) {
            match self.inner.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched_dirs.insert(dir.clone());
                }
                // A directory that does not exist yet is covered by the timer.
                Err(e) => tracing::debug!(dir = %dir.display(), error = %e, "cannot watch directory yet"),
            }
        }
        for dir in self.watched_dirs.clone().difference(&dirs) {
            let _ = self.inner.unwatch(dir);
            self.watched_dirs.remove(dir);
        }
        *self.targets.lock().expect("watch targets lock") = targets;
    }
}
