//! `accommador backup`: a consistent copy of a SQLite database, taken beside a running server.
//!
//! `VACUUM INTO` writes the database as one read transaction sees it: a snapshot of everything
//! committed when the copy began, whatever the server's writer commits meanwhile (WAL lets the
//! two run side by side; the writer is never blocked). The copy is written next to the target,
//! synced, checked with `PRAGMA integrity_check`, and only then put in place, so a failed or
//! interrupted backup never leaves a half-written file under the target's name.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use rusqlite::{Connection, OpenFlags};

/// What a finished backup wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub bytes: u64,
}

/// Copies the database at `source` to `to`. An existing `to` is refused unless `overwrite`.
pub fn backup(source: &Path, to: &Path, overwrite: bool) -> anyhow::Result<Backup> {
    if !source.exists() {
        bail!("no SQLite database at {}", source.display());
    }
    if same_file(source, to) {
        bail!(
            "{} is the database itself; write the copy to another file",
            to.display()
        );
    }
    if !overwrite && to.exists() {
        bail!(
            "{} already exists; choose another file, or pass --force to replace it",
            to.display()
        );
    }
    let partial = partial_path(to);
    let _ = std::fs::remove_file(&partial);
    let result = copy_checked(source, &partial).and_then(|bytes| {
        if overwrite {
            std::fs::rename(&partial, to)
                .with_context(|| format!("moving the copy to {}", to.display()))?;
        } else {
            // A hard link fails if `to` appeared meanwhile: never replaces a file by accident.
            std::fs::hard_link(&partial, to).with_context(|| {
                format!(
                    "putting the copy at {} (pass --force to replace an existing file)",
                    to.display()
                )
            })?;
            std::fs::remove_file(&partial).ok();
        }
        sync_dir(to);
        Ok(Backup { bytes })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// Writes the snapshot to `partial`, syncs it and checks it; returns its size.
fn copy_checked(source: &Path, partial: &Path) -> anyhow::Result<u64> {
    // Read-write without create: a mistyped path is an error, not a new empty database.
    let conn = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", source.display()))?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let target = partial
        .to_str()
        .context("the backup path is not valid UTF-8")?;
    conn.execute("VACUUM INTO ?1", [target])
        .with_context(|| format!("copying {} to {}", source.display(), partial.display()))?;
    drop(conn);
    let file = std::fs::File::open(partial)?;
    file.sync_all()
        .with_context(|| format!("syncing {}", partial.display()))?;
    let bytes = file.metadata()?.len();
    let copy = Connection::open_with_flags(partial, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let verdict: String = copy
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .context("checking the copy")?;
    if verdict != "ok" {
        bail!("the copy failed PRAGMA integrity_check: {verdict}");
    }
    Ok(bytes)
}

/// Whether `to` names `source` (through links or another spelling of the path).
fn same_file(source: &Path, to: &Path) -> bool {
    let resolve = |p: &Path| -> Option<PathBuf> {
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Some(dir.canonicalize().ok()?.join(p.file_name()?))
    };
    match (
        source.canonicalize().ok(),
        to.canonicalize().ok().or_else(|| resolve(to)),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// `FILE.partial` beside `FILE`, so the final move stays on one file system.
fn partial_path(to: &Path) -> PathBuf {
    let mut name = to.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    to.with_file_name(name)
}

/// Makes the new directory entry durable (best effort: not every platform can open a
/// directory).
fn sync_dir(file: &Path) {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
