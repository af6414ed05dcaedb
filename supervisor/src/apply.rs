//! Effects: putting rendered files in place so that no reader ever sees a torn one.
//!
//! Every file is written to a temporary name in its own directory, flushed to disk
//! and renamed over the old one; the directory is flushed too. postfix maps are
//! compiled from a temporary source and the compiled table is renamed into place,
//! so postfix only ever opens a complete table. Unchanged content is not rewritten:
//! an unchanged map is not even recompiled, so the daemons see no change at all.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::MapType;
use crate::render::{Kind, Output};

/// Temporary files end in this, so that leftovers of a killed run can be recognised
/// and removed.
const TMP_SUFFIX: &str = ".postmaster-tmp";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("postmap could not compile {}: {detail}", path.display())]
    Postmap { path: PathBuf, detail: String },
    #[error(
        "group `{0}` does not exist; it must be able to read the passwd-file (is dovecot installed?)"
    )]
    NoSuchGroup(String),
}

fn io_err<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> ApplyError + 'p {
    move |source| ApplyError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// How the files are put in place.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Compile postfix maps with this table type; `None` writes the sources only
    /// (`postmaster render`).
    pub(crate) compile_maps: Option<MapType>,
    /// The group that may read the passwd-file (dovecot's); `None` keeps it private
    /// to the owner.
    pub(crate) passwd_group: Option<String>,
    /// The `postmap` program.
    pub(crate) postmap: PathBuf,
}

/// What applying changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    pub(crate) written: Vec<PathBuf>,
    pub(crate) unchanged: Vec<PathBuf>,
}

impl Report {
    pub(crate) fn changed(&self) -> bool {
        !self.written.is_empty()
    }

    fn add(&mut self, path: PathBuf, changed: bool) {
        if changed {
            self.written.push(path);
        } else {
            self.unchanged.push(path);
        }
    }
}

/// Writes `files` under `dir` (creating subdirectories), each atomically, in the
/// order given.
///
/// The changed maps are compiled first, all at once (one `postmap` each, side by
/// side: a one-line edit of a large accounts file changes two or three maps, and
/// compiling them one after the other doubled the wait). Each changed file is
/// renamed into place in `files`' order, which is the order that keeps mail safe
/// (see [`crate::render::in_safe_order`]): what comes before every map (the
/// passwd-file of an edit that adds logins) goes in place before the maps are
/// compiled, as it would have gone first anyway, so a new mailbox's login does not
/// wait for postmap; nothing after the first map is put in place until every map
/// compiled. So a map postmap refuses leaves every map, and all that comes after
/// the maps, as it was: the host is left in a state the safe order passes
/// through, and the apply is tried again.
pub(crate) fn apply<O: Output>(
    dir: &Path,
    files: &[O],
    options: &Options,
) -> Result<Report, ApplyError> {
    let passwd_gid = match &options.passwd_group {
        Some(name) => Some(group_id(name)?.ok_or_else(|| ApplyError::NoSuchGroup(name.clone()))?),
        None => None,
    };
    // Leftovers of a killed run go before this run makes temporaries of its own.
    let mut parents: Vec<PathBuf> = Vec::new();
    for file in files {
        let path = dir.join(file.path());
        let parent = path
            .parent()
            .expect("a file under a directory")
            .to_path_buf();
        if !parents.contains(&parent) {
            fs::create_dir_all(&parent).map_err(io_err("creating directory", &parent))?;
            remove_stale_temporaries(&parent)?;
            parents.push(parent);
        }
    }
    // What comes before every map goes in place first: it would anyway, and the
    // maps' temporaries, each flushed to disk, and their postmaps would delay it.
    let leading = files
        .iter()
        .take_while(|f| f.kind() != Kind::PostfixMap)
        .count();
    let mut report = Report::default();
    for file in &files[..leading] {
        let path = dir.join(file.path());
        let changed = write_file(&path, file, passwd_gid)?;
        report.add(path, changed);
    }
    let mut compiling: Vec<Option<Compiling>> = Vec::with_capacity(files.len());
    let mut failed = None;
    for file in files {
        let started = match (file.kind(), options.compile_maps) {
            (Kind::PostfixMap, Some(map_type)) if failed.is_none() => {
                let path = dir.join(file.path());
                match start_map(&path, file, map_type, &options.postmap) {
                    Ok(started) => started,
                    Err(e) => {
                        failed = Some(e);
                        None
                    }
                }
            }
            _ => None,
        };
        compiling.push(started);
    }
    // Every child is waited for, even after a failure: no postmap is left running
    // on a temporary that is about to be removed.
    let mut compiled: Vec<Option<Compiled>> = Vec::with_capacity(files.len());
    for started in compiling {
        compiled.push(match started {
            None => None,
            Some(c) => match c.finish() {
                Ok(done) if failed.is_none() => Some(done),
                Ok(done) => {
                    done.discard();
                    None
                }
                Err(e) => {
                    failed.get_or_insert(e);
                    None
                }
            },
        });
    }
    if let Some(e) = failed {
        for done in compiled.into_iter().flatten() {
            done.discard();
        }
        return Err(e);
    }

    for (file, done) in files.iter().zip(compiled).skip(leading) {
        let path = dir.join(file.path());
        let changed = match (file.kind(), options.compile_maps) {
            (Kind::PostfixMap, Some(_)) => match done {
                Some(done) => {
                    done.put_in_place()?;
                    true
                }
                None => false,
            },
            _ => write_file(&path, file, passwd_gid)?,
        };
        report.add(path, changed);
    }
    Ok(report)
}

/// Writes a file that is not compiled, with the mode its kind needs (the
/// passwd-file readable by `passwd_gid`, dovecot's group); returns whether
/// anything changed.
fn write_file(
    path: &Path,
    file: &impl Output,
    passwd_gid: Option<u32>,
) -> Result<bool, ApplyError> {
    let (mode, gid) = match file.kind() {
        Kind::PasswdFile => match passwd_gid {
            Some(gid) => (0o640, Some(gid)),
            None => (0o600, None),
        },
        Kind::Program => (0o755, None),
        _ => (0o644, None),
    };
    write_atomic_with(path, mode, gid, true, &|out| file.write_to(out))
}

/// Writes `content` to `path` atomically with `mode` (and group `gid`); returns
/// whether anything changed.
pub(crate) fn write_atomic(
    path: &Path,
    content: &[u8],
    mode: u32,
    gid: Option<u32>,
) -> Result<bool, ApplyError> {
    let old = fs::metadata(path).ok();
    if let Some(meta) = &old
        && meta.permissions().mode() & 0o7777 == mode
        && gid.is_none_or(|g| meta.gid() == g)
        && same_content(path, content)
    {
        return Ok(false);
    }
    write_atomic_with(path, mode, gid, false, &|out| out.write_all(content))
}

/// Writes what `write` writes to `path` atomically with `mode` (and group `gid`);
/// returns whether anything changed. With `compare`, the rendering is first
/// compared with the file in place (see [`renders_as`]): when it is the same, and so
/// are the mode and group, nothing is written, not even a temporary, so an apply
/// that changes nothing needs no free space.
fn write_atomic_with(
    path: &Path,
    mode: u32,
    gid: Option<u32>,
    compare: bool,
    write: &dyn Fn(&mut dyn Write) -> io::Result<()>,
) -> Result<bool, ApplyError> {
    let old = fs::metadata(path).ok();
    if compare
        && old.as_ref().is_some_and(|meta| {
            meta.permissions().mode() & 0o7777 == mode && gid.is_none_or(|g| meta.gid() == g)
        })
        && renders_as(path, write).map_err(io_err("comparing with", path))?
    {
        return Ok(false);
    }
    let tmp = temporary_name(path);
    let result = (|| {
        let f = create_temporary(&tmp, mode, gid)?;
        write_buffered(&f, write).map_err(io_err("writing", &tmp))?;
        if let Some(meta) = &old {
            bump_mtime(&f, meta).map_err(io_err("setting the time of", &tmp))?;
        }
        f.sync_all().map_err(io_err("flushing", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("renaming into place", path))?;
        sync_dir(path).map(|()| true)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A new file at `path` with `mode` exactly (and group `gid`).
fn create_temporary(path: &Path, mode: u32, gid: Option<u32>) -> Result<fs::File, ApplyError> {
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err("creating", path))?;
    if let Some(gid) = gid {
        rustix::fs::fchown(&f, None, Some(rustix::fs::Gid::from_raw(gid)))
            .map_err(|e| io_err("setting the group of", path)(e.into()))?;
    }
    // The umask may have narrowed the mode given to open().
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", path))?;
    Ok(f)
}

/// Writes what `write` writes to `out` through a buffer: a renderer writes row by
/// row.
fn write_buffered(
    out: &fs::File,
    write: &dyn Fn(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let mut buffered = io::BufWriter::with_capacity(COMPARED_PIECE, out);
    write(&mut buffered)?;
    buffered.flush()
}

/// How much of a rendering is compared, or written, at once.
const COMPARED_PIECE: usize = 64 * 1024;

/// Whether what `write` writes is byte for byte the file at `path`: compared piece
/// by piece as it is rendered, written nowhere, and the rendering stopped at the
/// first difference. No file, or one that cannot be read, is not the same.
fn renders_as(path: &Path, write: &dyn Fn(&mut dyn Write) -> io::Result<()>) -> io::Result<bool> {
    let Ok(old) = fs::File::open(path) else {
        return Ok(false);
    };
    let mut buffered = io::BufWriter::with_capacity(
        COMPARED_PIECE,
        Comparing {
            old,
            piece: vec![0; COMPARED_PIECE],
        },
    );
    match write(&mut buffered).and_then(|()| buffered.flush()) {
        Ok(()) => {}
        Err(e) if e.get_ref().is_some_and(|inner| inner.is::<Differs>()) => return Ok(false),
        Err(e) => return Err(e),
    }
    let Ok(mut comparing) = buffered.into_inner() else {
        return Ok(false);
    };
    // Every byte written was the old file's: the same if the old file has no more.
    Ok(matches!(comparing.old.read(&mut [0u8; 1]), Ok(0)))
}

/// Takes bytes written as the next bytes of a file, and stops the writer with
/// [`Differs`] at the first that are not.
struct Comparing {
    old: fs::File,
    piece: Vec<u8>,
}

/// The error [`Comparing`] stops a rendering with: it is not the file in place.
#[derive(Debug)]
struct Differs;

impl std::fmt::Display for Differs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not the file in place")
    }
}

impl std::error::Error for Differs {}

impl Write for Comparing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.piece.len());
        let piece = &mut self.piece[..n];
        // A read error is a difference: the file is written anew.
        if self.old.read_exact(piece).is_err() || piece[..] != buf[..n] {
            return Err(io::Error::other(Differs));
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Readers that poll by mtime and size (dovecot's passwd-file, for one) miss a
/// rewrite within the same second that keeps the size. Make the new file's mtime
/// differ from the old one's in whole seconds, whatever the clock says.
///
/// Judged by the mtime the kernel gave the new file, not by the clock: file times
/// come from the kernel's coarse clock, which can still be in the old second a few
/// milliseconds after `SystemTime::now()` has passed into the next one.
fn bump_mtime(f: &fs::File, old: &fs::Metadata) -> io::Result<()> {
    let written = f.metadata()?.mtime();
    if written > old.mtime() {
        return Ok(());
    }
    let ts = rustix::fs::Timespec {
        tv_sec: old.mtime() + 1,
        tv_nsec: 0,
    };
    rustix::fs::futimens(
        f,
        &rustix::fs::Timestamps {
            last_access: ts,
            last_modification: ts,
        },
    )?;
    Ok(())
}

/// Whether a map's table can stand for its source: it is there and no older
/// than its source (not so after a run killed between the two renames, or a
/// table removed by hand).
fn table_is_fresh(path: &Path, map_type: MapType) -> bool {
    let table = with_suffix(path, map_type.suffix());
    match (fs::metadata(&table), fs::metadata(path)) {
        (Ok(t), Ok(s)) => t.modified().ok() >= s.modified().ok(),
        _ => false,
    }
}

/// Whether the file at `path` holds exactly `content` (bytes already in memory: a
/// certificate, a key), read in pieces, so no second copy is made to compare.
fn same_content(path: &Path, content: &[u8]) -> bool {
    let Ok(mut f) = fs::File::open(path) else {
        return false;
    };
    if f.metadata().map(|m| m.len()).ok() != u64::try_from(content.len()).ok() {
        return false;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut rest = content;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return rest.is_empty(),
            Ok(n) if n <= rest.len() && buf[..n] == rest[..n] => rest = &rest[n..],
            Ok(_) => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// A map whose new source is written under a temporary name and whose `postmap`
/// runs.
struct Compiling {
    path: PathBuf,
    tmp_source: PathBuf,
    tmp_table: PathBuf,
    table: PathBuf,
    child: std::process::Child,
}

/// A map compiled under temporary names, ready to be renamed into place.
struct Compiled {
    path: PathBuf,
    tmp_source: PathBuf,
    tmp_table: PathBuf,
    table: PathBuf,
}

/// Writes a map's source under a temporary name and starts `postmap` on it;
/// `None` when the map is current: the same source, and its table fresh.
fn start_map(
    path: &Path,
    file: &impl Output,
    map_type: MapType,
    postmap: &Path,
) -> Result<Option<Compiling>, ApplyError> {
    let tmp_source = temporary_name(path);
    let tmp_table = with_suffix(&tmp_source, map_type.suffix());
    if table_is_fresh(path, map_type)
        && renders_as(path, &|out| file.write_to(out)).map_err(io_err("comparing with", path))?
    {
        return Ok(None);
    }
    let started = (|| {
        let f = create_temporary(&tmp_source, 0o644, None)?;
        write_buffered(&f, &|out| file.write_to(out)).map_err(io_err("writing", &tmp_source))?;
        f.sync_all().map_err(io_err("flushing", &tmp_source))?;
        Command::new(postmap)
            .arg(format!("{}:{}", map_type.name(), tmp_source.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(io_err("running postmap for", path))
    })();
    match started {
        Ok(child) => Ok(Some(Compiling {
            path: path.to_path_buf(),
            table: with_suffix(path, map_type.suffix()),
            tmp_source,
            tmp_table,
            child,
        })),
        Err(e) => {
            let _ = fs::remove_file(&tmp_source);
            Err(e)
        }
    }
}

impl Compiling {
    /// Waits for `postmap`; the table gets its mode and is flushed.
    fn finish(self) -> Result<Compiled, ApplyError> {
        let Compiling {
            path,
            tmp_source,
            tmp_table,
            table,
            child,
        } = self;
        let done = Compiled {
            path,
            tmp_source,
            tmp_table,
            table,
        };
        let result = (|| {
            let out = child
                .wait_with_output()
                .map_err(io_err("running postmap for", &done.path))?;
            if !out.status.success() {
                return Err(ApplyError::Postmap {
                    path: done.path.clone(),
                    detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            // postfix reads the maps as its own user; the daemon's umask must not
            // decide that, so the table gets the source's mode explicitly.
            let table_file =
                fs::File::open(&done.tmp_table).map_err(io_err("opening", &done.tmp_table))?;
            table_file
                .set_permissions(fs::Permissions::from_mode(0o644))
                .map_err(io_err("setting the mode of", &done.tmp_table))?;
            table_file
                .sync_all()
                .map_err(io_err("flushing", &done.tmp_table))
        })();
        match result {
            Ok(()) => Ok(done),
            Err(e) => {
                done.discard();
                Err(e)
            }
        }
    }
}

impl Compiled {
    /// The table first: a crash between the renames leaves an old source next to
    /// a new table, which differs from the next rendering and is rebuilt.
    fn put_in_place(self) -> Result<(), ApplyError> {
        let result = (|| {
            fs::rename(&self.tmp_table, &self.table)
                .map_err(io_err("renaming into place", &self.table))?;
            fs::rename(&self.tmp_source, &self.path)
                .map_err(io_err("renaming into place", &self.path))?;
            sync_dir(&self.path)
        })();
        if result.is_err() {
            self.discard();
        }
        result
    }

    fn discard(self) {
        let _ = fs::remove_file(&self.tmp_source);
        let _ = fs::remove_file(&self.tmp_table);
    }
}

/// Puts a copy of the compiled table of the map `source` in place of the table: the
/// same content under a new inode. Every postfix daemon that has the table open
/// checks, before it accepts its next client, whether the file it opened is still
/// the one in place ("table ... has changed -- restarting"), and exits if not; the
/// master starts a fresh process for that client. So this makes every smtpd process
/// start over, and read the certificate again, with no `postfix reload`. A reload
/// does the same more violently: it also restarts tlsmgr and anvil, and an smtpd
/// from before the reload that takes one more client then waits 1 s per broken
/// connection to them (seen as 1-2 s stalls on 587 in ./bench).
pub(crate) fn republish_table(source: &Path, map_type: MapType) -> Result<(), ApplyError> {
    let table = with_suffix(source, map_type.suffix());
    let tmp = with_suffix(&temporary_name(source), map_type.suffix());
    let result = (|| {
        fs::copy(&table, &tmp).map_err(io_err("copying", &table))?;
        let copy = fs::File::open(&tmp).map_err(io_err("opening", &tmp))?;
        copy.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(io_err("setting the mode of", &tmp))?;
        copy.sync_all().map_err(io_err("flushing", &tmp))?;
        fs::rename(&tmp, &table).map_err(io_err("renaming into place", &table))?;
        sync_dir(&table)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(path: &Path) -> Result<(), ApplyError> {
    let dir = path.parent().expect("a file under a directory");
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("flushing directory", dir))
}

/// `.name.postmaster-tmp` next to `name`: hidden, and recognisable as ours.
fn temporary_name(path: &Path) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(path.file_name().expect("a file name"));
    name.push(TMP_SUFFIX);
    path.with_file_name(name)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Removes temporaries a killed run left behind in `dir`.
fn remove_stale_temporaries(dir: &Path) -> Result<(), ApplyError> {
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.')
            && (name.ends_with(TMP_SUFFIX) || name.contains(&format!("{TMP_SUFFIX}.")))
        {
            let p = entry.path();
            fs::remove_file(&p).map_err(io_err("removing stale temporary", &p))?;
        }
    }
    Ok(())
}

/// The id of a group, from /etc/group.
pub fn group_id(name: &str) -> Result<Option<u32>, ApplyError> {
    id_in(Path::new("/etc/group"), name)
}

/// The id of a user, from /etc/passwd.
pub(crate) fn user_id(name: &str) -> Result<Option<u32>, ApplyError> {
    id_in(Path::new("/etc/passwd"), name)
}

/// The third field of `name`'s line in a `name:password:id:...` database.
fn id_in(path: &Path, name: &str) -> Result<Option<u32>, ApplyError> {
    let text = fs::read_to_string(path).map_err(io_err("reading", path))?;
    Ok(text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(name)).then(|| fields.nth(1)?.parse().ok())?
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::File;

    #[test]
    fn writes_atomically_and_skips_unchanged_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("users");
        assert!(write_atomic(&p, b"a\n", 0o600, None).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"a\n");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!write_atomic(&p, b"a\n", 0o600, None).unwrap());
        // A mode change alone is a change.
        assert!(write_atomic(&p, b"a\n", 0o640, None).unwrap());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![OsString::from("users")],
            "no temporary left behind"
        );
    }

    #[test]
    fn same_second_same_size_rewrite_changes_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("users");
        write_atomic(&p, b"aaaa\n", 0o600, None).unwrap();
        let before = fs::metadata(&p).unwrap().mtime();
        write_atomic(&p, b"bbbb\n", 0o600, None).unwrap();
        let after = fs::metadata(&p).unwrap().mtime();
        assert_ne!(
            before, after,
            "a same-size rewrite must be visible by mtime"
        );
    }

    #[test]
    fn a_rewrite_after_a_file_dated_in_the_future_is_still_newer() {
        // The old file's second is ahead of the clock (as the coarse file clock can
        // be of the fine one, only further): the new file must still differ.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("users");
        write_atomic(&p, b"aaaa\n", 0o600, None).unwrap();
        let ahead = fs::metadata(&p).unwrap().mtime() + 100;
        let ts = rustix::fs::Timespec {
            tv_sec: ahead,
            tv_nsec: 0,
        };
        let stamps = rustix::fs::Timestamps {
            last_access: ts,
            last_modification: ts,
        };
        rustix::fs::utimensat(rustix::fs::CWD, &p, &stamps, rustix::fs::AtFlags::empty()).unwrap();
        write_atomic(&p, b"bbbb\n", 0o600, None).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mtime(), ahead + 1);
    }

    #[test]
    fn republishing_a_table_keeps_its_content_under_a_new_inode() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("sender_login");
        let table = dir.path().join("sender_login.lmdb");
        fs::write(&table, b"compiled").unwrap();
        // What postfix holds open: after the swap it is a file no name points at.
        let held = fs::File::open(&table).unwrap();
        republish_table(&source, MapType::Lmdb).unwrap();
        assert_eq!(fs::read(&table).unwrap(), b"compiled");
        assert_eq!(
            held.metadata().unwrap().nlink(),
            0,
            "the open table must be unlinked"
        );
        assert_ne!(
            held.metadata().unwrap().ino(),
            fs::metadata(&table).unwrap().ino()
        );
        assert_eq!(
            fs::metadata(&table).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![OsString::from("sender_login.lmdb")],
            "no temporary left behind"
        );
    }

    #[test]
    fn republishing_a_missing_table_says_which() {
        let dir = tempfile::tempdir().unwrap();
        let e = republish_table(&dir.path().join("sender_login"), MapType::Hash)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("copying ") && e.contains("sender_login.db"),
            "{e}"
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_map_is_current_only_with_the_same_source_and_a_table_no_older() {
        let dir = tempfile::tempdir().unwrap();
        let postmap = fake_postmap(dir.path(), "touch \"${1#*:}.lmdb\" \"${1#*:}.db\"\n");
        let source = dir.path().join("virtual_alias");
        let table = dir.path().join("virtual_alias.lmdb");
        // Whether start_map compiles `content`; a compile is thrown away.
        let compiles = |content: &str, map_type| {
            let file = map("virtual_alias", content);
            match start_map(&source, &file, map_type, &postmap).unwrap() {
                None => false,
                Some(c) => {
                    c.finish().unwrap().discard();
                    true
                }
            }
        };
        fs::write(&source, "a@example.org\ta@example.org\n").unwrap();
        assert!(
            compiles("a@example.org\ta@example.org\n", MapType::Lmdb),
            "no table yet"
        );
        fs::write(&table, "compiled").unwrap();
        assert!(!compiles("a@example.org\ta@example.org\n", MapType::Lmdb));
        assert!(compiles("a@example.org\tb@example.org\n", MapType::Lmdb));
        assert!(compiles("a@example.org\ta@example.org\n\n", MapType::Lmdb));
        assert!(compiles("a@example.org\ta@example.org", MapType::Lmdb));
        assert!(
            compiles("a@example.org\ta@example.org\n", MapType::Hash),
            "a table of another type"
        );
        // A source newer than its table (a run killed between the renames).
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(&table)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(compiles("a@example.org\ta@example.org\n", MapType::Lmdb));
        // What was compiled went; the source and the table are as they were.
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".db") && n != "postmap")
            .collect();
        names.sort();
        assert_eq!(names, ["virtual_alias", "virtual_alias.lmdb"]);
        assert_eq!(
            fs::read_to_string(&source).unwrap(),
            "a@example.org\ta@example.org\n"
        );
    }

    #[test]
    fn a_rendering_is_compared_with_the_old_file_in_pieces_to_the_last_byte() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old");
        let mut content = vec![b'x'; 200_000];
        fs::write(&old, &content).unwrap();
        // Written in small pieces, as a renderer writes rows, and in one piece larger
        // than the buffer, as a rendered File writes itself.
        let same = |content: &[u8], compare: &Path| {
            let small = renders_as(compare, &|w| {
                content.chunks(7).try_for_each(|piece| w.write_all(piece))
            })
            .unwrap();
            let whole = renders_as(compare, &|w| w.write_all(content)).unwrap();
            assert_eq!(small, whole);
            small
        };
        assert!(same(&content, &old));
        content[199_999] = b'y';
        assert!(!same(&content, &old), "a difference past the first piece");
        assert!(!same(&content[..100], &old), "a shorter content");
        content[199_999] = b'x';
        content.push(b'x');
        assert!(!same(&content, &old), "a longer content");
        assert!(!same(b"", &dir.path().join("none")), "no file");
        fs::write(dir.path().join("empty"), b"").unwrap();
        assert!(same(b"", &dir.path().join("empty")), "both empty");
    }

    #[test]
    fn a_rendering_is_stopped_at_its_first_difference() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old");
        fs::write(&old, "row\n".repeat(100_000)).unwrap();
        let rows = std::cell::Cell::new(0);
        let same = renders_as(&old, &|w| {
            (0..100_000).try_for_each(|i| {
                rows.set(i);
                w.write_all(if i == 10 { b"new\n" } else { b"row\n" })
            })
        })
        .unwrap();
        assert!(!same);
        // The difference shows once the buffer (64 KiB, ~16,000 rows) is compared.
        assert!(rows.get() < 20_000, "rendered {} rows", rows.get());
    }

    #[test]
    fn an_unchanged_file_or_map_needs_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("virtual_alias");
        let postmap = fake_postmap(dir.path(), "cp \"${1#lmdb:}\" \"${1#lmdb:}.lmdb\"\n");
        let file = map(path.to_str().unwrap(), "a@example.org\ta@example.org\n");
        let compiled = start_map(&path, &file, MapType::Lmdb, &postmap)
            .unwrap()
            .expect("a new map is compiled")
            .finish()
            .unwrap();
        compiled.put_in_place().unwrap();
        // Where the temporary would go, something is in the way (as a full disk or a
        // read-only directory would be): what changes nothing must not need it.
        fs::write(temporary_name(&path), b"in the way").unwrap();
        assert!(
            start_map(&path, &file, MapType::Lmdb, &postmap)
                .unwrap()
                .is_none()
        );
        assert!(!write_file(&path, &file, None).unwrap());
        // A change does need it, and says so.
        let changed = map(path.to_str().unwrap(), "b@example.org\tb@example.org\n");
        let e = start_map(&path, &changed, MapType::Lmdb, &postmap)
            .err()
            .unwrap();
        assert!(e.to_string().contains("creating"), "{e}");
    }

    /// A stand-in for postmap, as an executable script in `dir`.
    fn fake_postmap(dir: &Path, script: &str) -> PathBuf {
        let path = dir.join("postmap");
        fs::write(&path, format!("#!/bin/sh\n{script}")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A postmap that runs `first`, then waits (5 s at most, else it fails) until
    /// `until` holds, then compiles by copying.
    fn waiting_postmap(dir: &Path, first: &str, until: &str) -> PathBuf {
        fake_postmap(
            dir,
            &format!(
                r#"src="${{1#lmdb:}}"
{first}
i=0
until {until}; do
  i=$((i+1)); [ $i -gt 500 ] && exit 3; sleep 0.01
done
cp "$src" "$src.lmdb"
"#
            ),
        )
    }

    fn map(path: &str, content: &str) -> File {
        File {
            path: path.into(),
            content: content.into(),
            kind: Kind::PostfixMap,
        }
    }

    fn options(postmap: PathBuf) -> Options {
        Options {
            compile_maps: Some(MapType::Lmdb),
            passwd_group: None,
            postmap,
        }
    }

    #[test]
    fn changed_maps_compile_side_by_side_and_unchanged_ones_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let generated = dir.path().join("generated");
        // Each compile waits (5 s at most) until two have started: run one after
        // the other, the first gives up and the apply fails.
        let marks = dir.path().join("marks");
        fs::create_dir(&marks).unwrap();
        let m = marks.display();
        let postmap = waiting_postmap(
            dir.path(),
            &format!(r#"touch "{m}/$(basename "$src")""#),
            &format!(r#"[ "$(ls -A "{m}" | wc -l)" -ge 2 ]"#),
        );
        let files = [
            map("postfix/virtual_alias", "a@example.org\tm@example.org\n"),
            map("postfix/sender_login", "a@example.org\tm\n"),
        ];
        let report = apply(&generated, &files, &options(postmap.clone())).unwrap();
        assert_eq!(report.written.len(), 2, "{report:?}");
        assert_eq!(
            fs::read_to_string(generated.join("postfix/virtual_alias.lmdb")).unwrap(),
            "a@example.org\tm@example.org\n"
        );
        // Nothing changed: postmap is not even run (it would wait and fail).
        fs::remove_dir_all(&marks).unwrap();
        let report = apply(&generated, &files, &options(postmap)).unwrap();
        assert!(report.written.is_empty(), "{report:?}");
        assert_just_the_maps(&generated);
    }

    /// The two maps' sources and tables are all there is: no temporary is left.
    fn assert_just_the_maps(generated: &Path) {
        let names: std::collections::BTreeSet<String> = fs::read_dir(generated.join("postfix"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let want = [
            "sender_login",
            "sender_login.lmdb",
            "virtual_alias",
            "virtual_alias.lmdb",
        ];
        assert!(names.iter().eq(want.iter()), "{names:?}");
    }

    /// What refuses `refuse` and compiles anything else by copying it.
    fn refusing_postmap(dir: &Path) -> PathBuf {
        fake_postmap(
            dir,
            r#"src="${1#lmdb:}"
if grep -q refuse "$src"; then echo "bad line in $src" >&2; exit 1; fi
cp "$src" "$src.lmdb"
"#,
        )
    }

    fn passwd_file(content: &str) -> File {
        File {
            path: "dovecot/users".into(),
            content: content.into(),
            kind: Kind::PasswdFile,
        }
    }

    /// `files` applied after the same files with "old" content: postmap refuses
    /// sender_login. Returns the passwd-file's content afterwards.
    fn refused_after_old(files: &[File]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let generated = dir.path().join("generated");
        let postmap = refusing_postmap(dir.path());
        let before: Vec<File> = files
            .iter()
            .map(|f| File {
                content: match f.kind {
                    Kind::PasswdFile => "m:{SHA512-CRYPT}old\n".into(),
                    _ => "old\n".into(),
                },
                ..f.clone()
            })
            .collect();
        apply(&generated, &before, &options(postmap.clone())).unwrap();
        let e = apply(&generated, files, &options(postmap))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("postmap could not compile ") && e.contains("sender_login: bad line"),
            "{e}"
        );
        // The map that compiled is not in place either.
        for (path, old) in [
            ("postfix/virtual_alias", "old\n"),
            ("postfix/virtual_alias.lmdb", "old\n"),
            ("postfix/sender_login.lmdb", "old\n"),
        ] {
            assert_eq!(
                fs::read_to_string(generated.join(path)).unwrap(),
                old,
                "{path}"
            );
        }
        assert_just_the_maps(&generated);
        fs::read_to_string(generated.join("dovecot/users")).unwrap()
    }

    #[test]
    fn a_map_postmap_refuses_leaves_every_map_and_what_follows_them_as_it_was() {
        let maps = [
            map("postfix/virtual_alias", "new\n"),
            map("postfix/sender_login", "refuse\n"),
        ];
        // A login removed: the passwd-file comes after the maps, and stays as it was.
        let last = [maps[0].clone(), maps[1].clone(), passwd_file("")];
        assert_eq!(refused_after_old(&last), "m:{SHA512-CRYPT}old\n");
        // Logins added or changed: the passwd-file comes before every map and went
        // in place before they compiled, as it goes first in any apply.
        let first = [
            passwd_file("m:{SHA512-CRYPT}new\n"),
            maps[0].clone(),
            maps[1].clone(),
        ];
        assert_eq!(refused_after_old(&first), "m:{SHA512-CRYPT}new\n");
    }

    /// A new mailbox's login does not wait for postmap: the passwd-file that goes
    /// first is in place before the maps have compiled.
    #[test]
    fn a_passwd_file_that_goes_first_is_in_place_before_the_maps_compile() {
        let dir = tempfile::tempdir().unwrap();
        let generated = dir.path().join("generated");
        let users = generated.join("dovecot/users");
        // Each compile waits (5 s at most) for the new passwd-file, and fails
        // without it.
        let postmap = waiting_postmap(
            dir.path(),
            "",
            &format!(r#"grep -q new "{}" 2>/dev/null"#, users.display()),
        );
        let files = [
            passwd_file("m:{SHA512-CRYPT}new\n"),
            map("postfix/virtual_alias", "a@example.org\tm@example.org\n"),
            map("postfix/sender_login", "a@example.org\tm\n"),
        ];
        let report = apply(&generated, &files, &options(postmap)).unwrap();
        assert_eq!(report.written.len(), 3, "{report:?}");
        assert_eq!(report.written[0], users);
        assert_eq!(
            fs::read_to_string(generated.join("postfix/sender_login.lmdb")).unwrap(),
            "a@example.org\tm\n"
        );
        assert_just_the_maps(&generated);
    }

    #[test]
    fn stale_temporaries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".users.postmaster-tmp"), "half").unwrap();
        fs::write(dir.path().join(".virtual.postmaster-tmp.lmdb"), "half").unwrap();
        fs::write(dir.path().join("keep"), "x").unwrap();
        remove_stale_temporaries(dir.path()).unwrap();
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("keep")]);
    }
}
