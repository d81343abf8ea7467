//! The per-user runtime directory (status sockets, daemon logs) and the
//! private files in it.
//!
//! On a shared machine other local users are hostile. The directory is
//! `$LAKEMOUNT_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/lakemount`, else
//! `/run/lakemount` for root and `/tmp/lakemount-<uid>` for others. The
//! last is a name anyone can take first in `/tmp`, so, as ssh-agent and
//! systemd do, the directory is created `0700` and used only if it is a
//! real directory (not a symbolic link), owned by the user, and closed to
//! everyone else; otherwise the command stops and says what to do. A log
//! is opened without following a symbolic link, created `0600`, and
//! refused when it is not a regular file of the user's own with one link
//! (another user's hard link to a victim's file, say).

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Context, Result, bail};

/// The runtime directory's path (not created or checked: see [`ensure`]).
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LAKEMOUNT_RUNTIME_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(d).join("lakemount");
    }
    let uid = uid();
    if uid == 0 {
        PathBuf::from("/run/lakemount")
    } else {
        PathBuf::from(format!("/tmp/lakemount-{uid}"))
    }
}

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// The runtime directory, created `0700` if missing, checked to be private.
pub fn ensure() -> Result<PathBuf> {
    let dir = dir();
    match std::fs::DirBuilder::new()
        .recursive(false)
        .mode(0o700)
        .create(&dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A parent is missing ($LAKEMOUNT_RUNTIME_DIR=/some/new/dir).
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .with_context(|| {
                    format!("cannot create the runtime directory {}", dir.display())
                })?;
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot create the runtime directory {}", dir.display()));
        }
    }
    check_private(&dir)?;
    Ok(dir)
}

/// Refuses a runtime directory another user could have prepared or can
/// change: a symbolic link, not a directory, not the user's, or open to
/// others.
pub fn check_private(dir: &Path) -> Result<()> {
    check_private_dir_fix(
        dir,
        "runtime directory",
        "remove it (it may have been made by another user) or set LAKEMOUNT_RUNTIME_DIR \
         to a private directory (mode 0700) of your own",
    )
}

/// Refuses a private directory of this user's (`what`: its role, for
/// messages) that is a symbolic link, not a directory, not the user's, or
/// open to others.
pub fn check_private_dir(dir: &Path, what: &str) -> Result<()> {
    check_private_dir_fix(
        dir,
        what,
        "remove it (it may have been made by another user) or give a private directory (mode 0700) of your own",
    )
}

fn check_private_dir_fix(dir: &Path, what: &str, fix: &str) -> Result<()> {
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("cannot inspect the {what} {}", dir.display()))?;
    if meta.file_type().is_symlink() {
        bail!("the {what} {} is a symbolic link; {fix}", dir.display());
    }
    if !meta.is_dir() {
        bail!("the {what} {} is not a directory; {fix}", dir.display());
    }
    if meta.uid() != uid() {
        bail!(
            "the {what} {} belongs to uid {}, not to you (uid {}); {fix}",
            dir.display(),
            meta.uid(),
            uid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        bail!(
            "the {what} {} is open to other users (mode {:04o}); run `chmod 700 {}`, or {fix}",
            dir.display(),
            meta.mode() & 0o7777,
            dir.display()
        );
    }
    Ok(())
}

/// Opens `path` to append log lines: never through a symbolic link,
/// created `0600`, and only a regular file of this user's with one link;
/// an existing log open to others is made private.
pub fn open_log(path: &Path) -> Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("cannot create the log directory {}", parent.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                crate::error::err!(
                    "the log file {} is a symbolic link; refusing to write through it (remove it, or pass --log-file a path of your own)",
                    path.display()
                )
            } else {
                crate::error::Error::from(e)
                    .context(format!("cannot open the log file {}", path.display()))
            }
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        bail!(
            "the log file {} is {}, not a regular file",
            path.display(),
            crate::files::describe(meta.file_type())
        );
    }
    if meta.uid() != uid() || meta.nlink() != 1 {
        bail!(
            "the log file {} belongs to uid {} with {} links; refusing to append to a file that is not your own (remove it, or pass --log-file a path of your own)",
            path.display(),
            meta.uid(),
            meta.nlink()
        );
    }
    if meta.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make the log file {} private", path.display()))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_directories_only() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("rt");
        std::fs::DirBuilder::new().mode(0o755).create(&d).unwrap();
        let e = format!("{:#}", check_private(&d).unwrap_err());
        assert!(e.contains("open to other users (mode 0755)"), "{e}");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        check_private(&d).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let e = format!("{:#}", check_private(&link).unwrap_err());
        assert!(e.contains("is a symbolic link"), "{e}");
    }

    #[test]
    fn logs_are_private_and_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("a.log");
        open_log(&log).unwrap();
        assert_eq!(std::fs::metadata(&log).unwrap().mode() & 0o777, 0o600);
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let link = tmp.path().join("b.log");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = format!("{:#}", open_log(&link).unwrap_err());
        assert!(e.contains("symbolic link"), "{e}");
        let hard = tmp.path().join("c.log");
        std::fs::hard_link(&victim, &hard).unwrap();
        let e = format!("{:#}", open_log(&hard).unwrap_err());
        assert!(e.contains("2 links"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }
}
