//! `lakemount mount --daemon` and the `mount.fuse.lakemount` helper.
//!
//! `--daemon` starts the same command again without `--daemon`, detached
//! (new session, stdin from /dev/null, stdout and stderr to the log file),
//! with a pipe on fd 3 (`LAKEMOUNT_READY_FD`). The child writes `ok` there
//! once the mount serves, or the error that stopped it; the parent waits
//! for that and exits 0 or 1 accordingly. So `--daemon` returns only once
//! the mount is ready, and its exit status says whether it is.
//!
//! The helper: `mount -t fuse.lakemount SPECS MOUNTPOINT -o OPTIONS` (and so
//! an `/etc/fstab` line) runs `/sbin/mount.fuse.lakemount SPECS MOUNTPOINT
//! -o OPTIONS`, a symlink to this binary; [`helper_args`] turns that into
//! `lakemount mount --daemon ...`.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Context, ErrorKind, Result, bail};

/// Environment variable naming the readiness pipe in a daemon's child.
pub const READY_FD: &str = "LAKEMOUNT_READY_FD";

/// The readiness pipe of this process, if a `--daemon` parent waits on it.
static READY: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Takes the readiness pipe from the environment (call once, early).
pub fn adopt_ready_pipe() {
    let Some(fd) = std::env::var(READY_FD)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    // SAFETY: the parent opened this descriptor for us and nothing else in
    // this process uses it; checked to be open first.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return;
    }
    // SAFETY: as above; ownership moves to the File.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: not inherited further (a hot-added spec's child processes).
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    if let Ok(mut ready) = READY.lock() {
        *ready = Some(file);
    }
    // SAFETY: single-threaded at this point (called before the runtime starts).
    unsafe { std::env::remove_var(READY_FD) };
}

/// Tells a waiting parent how the mount went (once; later calls do nothing).
pub fn report(outcome: Result<(), (crate::error::ErrorKind, String)>) {
    let Some(mut file) = READY.lock().ok().and_then(|mut r| r.take()) else {
        return;
    };
    let text = match outcome {
        Ok(()) => "ok\n".to_string(),
        Err((kind, e)) => format!("error {}: {e}\n", kind.exit_code()),
    };
    let _ = file.write_all(text.as_bytes());
}

/// Starts `lakemount <args>` detached, logging to `log`, and waits until
/// it reports; `Ok(pid)` when the mount is ready.
pub fn spawn(args: &[OsString], log: &Path) -> Result<u32> {
    let out = crate::runtime::open_log(log)?;
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!(kind: Internal, "cannot create a pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these two descriptors to us.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let write_raw = fds[1];
    let exe = std::env::current_exe().context("cannot find the lakemount binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .env(READY_FD, "3")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 clears close-on-exec on the copy.
            if libc::dup2(write_raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("cannot start the mount daemon")?;
    drop(write_end);
    let mut text = String::new();
    std::fs::File::from(read_end)
        .read_to_string(&mut text)
        .context("waiting for the mount daemon")?;
    match text.trim_end() {
        "ok" => Ok(child.id()),
        "" => bail!(
            kind: Internal,
            "the mount daemon exited before the mount was ready; see {}",
            log.display()
        ),
        other => {
            // `error CODE: message`, CODE the daemon's exit status.
            let rest = other.strip_prefix("error ").unwrap_or(other);
            let (kind, message) = match rest.split_once(": ") {
                Some((code, m)) => match code.parse().ok().and_then(ErrorKind::from_exit_code) {
                    Some(kind) => (kind, m),
                    None => (ErrorKind::Internal, rest),
                },
                None => (ErrorKind::Internal, rest),
            };
            Err(crate::error::Error::new(
                kind,
                format!("{message} (log: {})", log.display()),
            ))
        }
    }
}

/// The default log file of a daemon mounted at `mountpoint`: next to its
/// status socket in the private runtime directory.
pub fn default_log(mountpoint: &Path) -> Result<PathBuf> {
    let dir = crate::runtime::ensure()?;
    Ok(crate::status::socket_path_in(&dir, mountpoint)?.with_extension("log"))
}

/// Options of an fstab line / `mount -o` that are mount(8)'s, not ours.
const IGNORED: [&str; 12] = [
    "defaults", "rw", "ro", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail",
    "dev", "exec",
];

/// `mount.fuse.lakemount SPECS MOUNTPOINT [-o OPTS] [-n] [-f] [-s] [-v]` as
/// the arguments of `lakemount mount --daemon`. `OPTS` are `key=value`
/// pairs of the mount command's long options (`warehouse=/data/wh`,
/// `catalog=...`, `rank=0`, `world_size=8`, `cache_size=4GiB`, `warm`,
/// `metrics=127.0.0.1:9464`, `allow_other`, `log_file=...`, ...), `_`
/// standing for `-`; a spec list is separated by `:`. A key that is not
/// one of those options (an empty one included), a value given to a flag
/// and a missing value are errors: each option becomes one `--key=value`
/// argument, so no option text can turn into a spec path.
pub fn helper_args(argv: &[OsString]) -> Result<Vec<OsString>> {
    let mut positional = Vec::new();
    let mut opts: Vec<String> = Vec::new();
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-o") => {
                let o = it.next().context("-o needs a list of options")?;
                opts.extend(o.to_string_lossy().split(',').map(str::to_string));
            }
            Some(flag) if flag.starts_with("-o") => {
                opts.extend(flag[2..].split(',').map(str::to_string));
            }
            // -n (no mtab), -f (fake), -s (sloppy), -v (verbose): nothing to do.
            Some("-n" | "-f" | "-s" | "-v") => {}
            _ => positional.push(a.clone()),
        }
    }
    let [source, mountpoint] = positional.as_slice() else {
        bail!(kind: Usage,
            "usage: mount.fuse.lakemount SPECS MOUNTPOINT -o warehouse=DIR[,OPTION=VALUE...] (got {} arguments)",
            positional.len()
        );
    };
    let known = crate::cli::mount_options();
    let mut out: Vec<OsString> = vec!["mount".into(), "--daemon".into()];
    for o in opts {
        let o = o.trim();
        if o.is_empty() || IGNORED.contains(&o) || o.starts_with("x-") || o.starts_with("comment=")
        {
            continue;
        }
        let (key, value) = match o.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v)),
            None => (o, None),
        };
        let name = key.replace('_', "-");
        let takes_value = match known.iter().find(|(k, _)| *k == name && k != "daemon") {
            Some((_, v)) => *v,
            None if key.is_empty() => bail!(kind: Usage,
                "option {:?} has no name before `=`; options are KEY=VALUE or a flag name",
                crate::files::excerpt(o, 40)
            ),
            None => bail!(kind: Usage,
                "unknown option {:?}; options are the long options of `lakemount mount --help` with _ for - ({})",
                crate::files::excerpt(key, 40),
                known
                    .iter()
                    .filter(|(k, _)| k != "daemon" && k != "help")
                    .map(|(k, _)| k.replace('-', "_"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        match (takes_value, value) {
            (true, Some(v)) => out.push(format!("--{name}={v}").into()),
            (false, None) => out.push(format!("--{name}").into()),
            (true, None) => bail!(kind: Usage, "option {key} needs a value ({key}=...)"),
            (false, Some(_)) => bail!(kind: Usage, "option {key} is a flag and takes no value"),
        }
    }
    for spec in source.to_string_lossy().split(':') {
        out.push(spec.into());
    }
    out.push(mountpoint.clone());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_options_become_mount_arguments() {
        let argv: Vec<OsString> = [
            "/sbin/mount.fuse.lakemount",
            "/etc/lakemount/specs",
            "/mnt/data",
            "-o",
            "rw,_netdev,warehouse=/data/wh,rank=1,world_size=8,warm,x-systemd.after=network.target",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let args: Vec<String> = helper_args(&argv)
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "mount",
                "--daemon",
                "--warehouse=/data/wh",
                "--rank=1",
                "--world-size=8",
                "--warm",
                "/etc/lakemount/specs",
                "/mnt/data"
            ]
        );
        assert!(helper_args(&argv[..2]).is_err());
    }

    #[test]
    fn unknown_empty_and_misused_option_keys_are_errors() {
        let with = |opts: &str| {
            let argv: Vec<OsString> = ["/sbin/mount.fuse.lakemount", "/s", "/m", "-o", opts]
                .iter()
                .map(OsString::from)
                .collect();
            helper_args(&argv).map_err(|e| format!("{e:#}"))
        };
        let e = with("warehouse=/wh,=/etc/shadow").unwrap_err();
        assert!(e.contains("has no name before `=`"), "{e}");
        let e = with("warehouse=/wh,spec=/etc/shadow").unwrap_err();
        assert!(e.contains("unknown option \"spec\""), "{e}");
        let e = with("warm=/etc/shadow").unwrap_err();
        assert!(e.contains("is a flag"), "{e}");
        let e = with("catalog").unwrap_err();
        assert!(e.contains("needs a value"), "{e}");
        let e = with("daemon").unwrap_err();
        assert!(e.contains("unknown option"), "{e}");
        // A value with `=` or `,`-free text stays one argument.
        let ok = with("storage_option=endpoint=http://h:1,cache_size=4GiB").unwrap();
        assert!(ok.contains(&OsString::from("--storage-option=endpoint=http://h:1")));
    }
}
