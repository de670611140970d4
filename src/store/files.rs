//! The store's files on disk. They hold names, card ids and face thumbnails, so they are
//! created private whatever the umask: the database 0600 (SQLite gives its `-wal` and `-shm`
//! the database's mode), each directory gated creates for it 0700. And one gated at a time:
//! `<database>.lock` holds an exclusive `flock` and the pid of its holder, so that a second
//! `gated run` on the same store stops at start instead of fighting the first for the broker.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::StoreError;

pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;

fn io(path: &Path, what: &'static str, source: std::io::Error) -> StoreError {
    StoreError::File {
        path: path.display().to_string(),
        what,
        source,
    }
}

/// The lock file beside the database: `gated.db` → `gated.db.lock`.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// The files SQLite keeps beside the database in WAL mode.
fn companions(db: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [with("-wal"), with("-shm"), lock_path(db)]
}

/// Creates the directories missing above `db`, each `DIR_MODE`. Directories that exist are
/// left as they are (the warning is for the files, which are what hold the data).
pub fn create_dirs(db: &Path) -> Result<(), StoreError> {
    let Some(parent) = db.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    let missing: Vec<&Path> = parent.ancestors().take_while(|d| !d.exists()).collect();
    for dir in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
            Ok(()) => {}
            // Made meanwhile by someone else: theirs to set.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(dir, "cannot create the directory", e)),
        }
        // The umask can only take bits away: set the mode itself.
        std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
            .map_err(|e| io(dir, "cannot set the mode of", e))?;
    }
    Ok(())
}

/// Creates `path` empty and `FILE_MODE` if it is not there.
fn create_private(path: &Path) -> Result<File, StoreError> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(f) => {
            f.set_permissions(Permissions::from_mode(FILE_MODE))
                .map_err(|e| io(path, "cannot set the mode of", e))?;
            Ok(f)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io(path, "cannot open", e)),
        Err(e) => Err(io(path, "cannot create", e)),
    }
}

/// Creates the database file empty and private if it is not there, before SQLite opens it:
/// SQLite would create it 0644 less the umask, and its WAL and index after it.
pub fn create_db(db: &Path) -> Result<(), StoreError> {
    create_private(db).map(drop)
}

/// Held while the store is open. The kernel releases the `flock` when the process ends, however
/// it ends: a lock file left by a killed gated stops nobody.
pub struct Lock {
    _file: File,
}

/// Takes the store's lock, or says who holds it.
pub fn lock(db: &Path) -> Result<Lock, StoreError> {
    let path = lock_path(db);
    let mut file = create_private(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            // The pid is a courtesy to the reader of the error; the lock is what refuses.
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                "another gated (its pid not yet written)".to_string()
            } else {
                format!("gated pid {holder}")
            };
            return Err(StoreError::InUse {
                path: db.display().to_string(),
                holder,
                lock: path.display().to_string(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(&path, "cannot lock", e)),
    }
    let pid = format!("{}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(|e| io(&path, "cannot write the pid into", e))?;
    Ok(Lock { _file: file })
}

/// The store's files that group or others can read or write, with their modes.
pub fn too_wide(db: &Path) -> Vec<(PathBuf, u32)> {
    std::iter::once(db.to_path_buf())
        .chain(companions(db))
        .filter_map(|p| {
            let mode = std::fs::metadata(&p).ok()?.permissions().mode() & 0o777;
            (mode & !FILE_MODE != 0).then_some((p, mode))
        })
        .collect()
}

/// What `Store::open` would refuse about the place of a store that is not there yet: the
/// nearest existing ancestor of its directory must be a directory.
pub fn check_place(db: &Path) -> Result<(), StoreError> {
    let Some(parent) = db.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    match parent.ancestors().find(|d| d.exists()) {
        Some(d) if !d.is_dir() => Err(StoreError::Invalid(format!(
            "{}: cannot create the store's directory {}: {} is not a directory",
            db.display(),
            parent.display(),
            d.display()
        ))),
        _ => Ok(()),
    }
}

/// The name a new database is made under: `gated.db` → `gated.db.new`.
pub fn new_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

/// Removes what a start that stopped while making a new database left under `new_path`.
pub fn remove_new(new: &Path) -> Result<(), StoreError> {
    let [wal, shm, _] = companions(new);
    for file in [new.to_path_buf(), wal, shm] {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&file, "cannot remove", e)),
        }
    }
    Ok(())
}

/// Renames the new database (closed, its log checkpointed into it) to `db`, synced so that
/// after a power loss either nothing or the whole database is at `db`.
pub fn put_in_place(new: &Path, db: &Path) -> Result<(), StoreError> {
    File::open(new)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(new, "cannot sync", e))?;
    std::fs::rename(new, db).map_err(|e| io(db, "cannot rename the new database to", e))?;
    sync_dir(db)?;
    remove_new(new)
}

/// Refuses a database file of no bytes: see `StoreError::Empty`.
pub fn refuse_empty(db: &Path) -> Result<(), StoreError> {
    let len = std::fs::metadata(db)
        .map_err(|e| io(db, "cannot read the size of", e))?
        .len();
    if len == 0 {
        return Err(StoreError::Empty {
            path: db.display().to_string(),
        });
    }
    Ok(())
}

/// Copies the damaged database `db` (and its `-wal`, if any) aside as
/// `<db>.damaged-<stamp>` (`-2`, `-3`, ... when that name is taken: never over a file), each
/// 0600 and synced. Returns the copy's path; its log, if any, is beside it as `<copy>-wal`,
/// where SQLite looks for it.
pub fn set_aside(db: &Path, stamp: &str) -> Result<PathBuf, StoreError> {
    let [wal, _, _] = companions(db);
    for n in 1u32.. {
        let mut name = db.as_os_str().to_owned();
        name.push(format!(".damaged-{stamp}"));
        if n > 1 {
            name.push(format!("-{n}"));
        }
        let aside = PathBuf::from(name);
        let [aside_wal, _, _] = companions(&aside);
        if aside_wal.exists() {
            continue;
        }
        match copy_new(db, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(&aside, "cannot copy the damaged store to", e)),
        }
        if wal.exists()
            && let Err(e) = copy_new(&wal, &aside_wal)
        {
            remove_aside(&aside);
            return Err(io(&aside_wal, "cannot copy the damaged store's log to", e));
        }
        sync_dir(db)?;
        return Ok(aside);
    }
    unreachable!("the names run out only after u32::MAX copies")
}

/// Copies `from` to a new private file `to`, synced; fails if `to` exists.
fn copy_new(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut src = File::open(from)?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(to)?;
    let done = dst
        .set_permissions(Permissions::from_mode(FILE_MODE))
        .and_then(|()| std::io::copy(&mut src, &mut dst))
        .and_then(|_| dst.sync_all());
    if done.is_err() {
        let _ = std::fs::remove_file(to);
    }
    done
}

/// Removes a copy set aside (a salvage that was refused leaves nothing behind).
pub fn remove_aside(aside: &Path) {
    let [wal, shm, _] = companions(aside);
    for f in [aside.to_path_buf(), wal, shm] {
        let _ = std::fs::remove_file(f);
    }
}

/// Removes the `-shm` SQLite made beside a copy to read it: an index of its log, not data.
pub fn remove_shm(aside: &Path) {
    let [_, shm, _] = companions(aside);
    let _ = std::fs::remove_file(shm);
}

/// Removes the log and its index beside `db` (copied aside first): a log left beside a new
/// database would be replayed into it.
pub fn remove_log(db: &Path) -> Result<(), StoreError> {
    let [wal, shm, _] = companions(db);
    for file in [wal, shm] {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&file, "cannot remove", e)),
        }
    }
    Ok(())
}

/// `<db>.salvage`: while it exists, a salvage of `db` has begun replacing it. It names the copy
/// set aside, which holds the damaged store whole with its log.
fn marker_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".salvage");
    PathBuf::from(name)
}

/// Written and synced before the damaged store's log is removed: from then until the new
/// database is in place, the log's only copy is the one aside, and a start after a crash
/// must rebuild from it (`read_marker`), not open the file at `db` without its log.
pub fn write_marker(db: &Path, aside: &Path) -> Result<(), StoreError> {
    let marker = marker_path(db);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&marker)
        .map_err(|e| io(&marker, "cannot create", e))?;
    use std::os::unix::ffi::OsStrExt as _;
    std::io::Write::write_all(&mut f, aside.as_os_str().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io(&marker, "cannot write", e))?;
    sync_dir(db)
}

/// The copy aside of a salvage that began and did not finish, if any.
pub fn read_marker(db: &Path) -> Result<Option<PathBuf>, StoreError> {
    let marker = marker_path(db);
    match std::fs::read(&marker) {
        Ok(bytes) if !bytes.is_empty() => {
            use std::os::unix::ffi::OsStringExt as _;
            Ok(Some(PathBuf::from(std::ffi::OsString::from_vec(bytes))))
        }
        // Cut short before its name was synced: the log was not removed yet either (the next
        // salvage writes the marker anew, and removes it).
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&marker, "cannot read", e)),
    }
}

/// The salvage is done: the new database is in place.
pub fn remove_marker(db: &Path) -> Result<(), StoreError> {
    let marker = marker_path(db);
    match std::fs::remove_file(&marker) {
        Ok(()) => sync_dir(db),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(&marker, "cannot remove", e)),
    }
}

/// Syncs the directory holding `db`, so that a rename or a new file in it survives a power cut.
fn sync_dir(db: &Path) -> Result<(), StoreError> {
    let dir = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(dir, "cannot sync the directory", e))
}
