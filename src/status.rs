//! `lakemount status MOUNTPOINT`: a running mount answers on a Unix socket
//! named after its mountpoint with its views and counters (JSON).
//!
//! The socket lives in the private runtime directory ([`crate::runtime`]);
//! its name is a digest of the mountpoint's absolute path, so any process
//! of the same user finds it from the mountpoint alone. The client checks
//! the directory is private and that the process answering is the user's
//! own (or root's), so another user can neither listen in its place nor
//! answer for it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Context, Result, bail};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::fs::ViewFs;

/// The name of the status socket of the mount at `mountpoint`, inside
/// the runtime directory `dir`.
pub fn socket_path_in(dir: &Path, mountpoint: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(mountpoint)
        .with_context(|| format!("bad mountpoint {}", mountpoint.display()))?;
    let digest = Sha256::digest(abs.as_os_str().as_encoded_bytes());
    Ok(dir.join(format!("{}.sock", hex::encode(&digest[..12]))))
}

/// The status document of a mount.
pub fn document(fs: &ViewFs, mountpoint: &Path) -> serde_json::Value {
    let views: Vec<serde_json::Value> = fs
        .views()
        .iter()
        .map(|v| {
            json!({
                "name": v.name,
                "snapshot_id": v.snapshot_id,
                "samples": v.len(),
                "lance_version": v.lance.as_ref().map(|l| l.version),
            })
        })
        .collect();
    json!({
        "mountpoint": std::path::absolute(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf()).display().to_string(),
        "pid": std::process::id(),
        "views": views,
        "metrics": fs.metrics().render(),
    })
}

/// Removes the socket when the mount ends.
pub struct Listening {
    path: PathBuf,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Answers status queries for the mount at `mountpoint` until dropped.
pub fn serve(fs: Arc<ViewFs>, mountpoint: &Path) -> Result<Listening> {
    let dir = crate::runtime::ensure()?;
    let path = socket_path_in(&dir, mountpoint)?;
    // A socket left by a mount that died: nothing answers on it. The
    // directory is private, so whatever is there is the user's own.
    if let Ok(meta) = std::fs::symlink_metadata(&path)
        && std::os::unix::net::UnixStream::connect(&path).is_err()
    {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(&path);
        }
    }
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    let mountpoint = mountpoint.to_path_buf();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut stream, _)) = listener.accept().await {
            let doc = document(&fs, &mountpoint).to_string();
            tokio::spawn(async move {
                let _ = stream.write_all(doc.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(Listening { path })
}

/// Asks the mount at `mountpoint` for its status document.
pub fn query(mountpoint: &Path) -> Result<serde_json::Value> {
    use std::io::Read;
    let dir = crate::runtime::dir();
    crate::runtime::check_private(&dir)?;
    let path = socket_path_in(&dir, mountpoint)?;
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) => bail!(
            "no lakemount mount answers for {} ({}: {e}); is it mounted by this user (see `mount -t fuse.lakemount`)?",
            mountpoint.display(),
            path.display()
        ),
    };
    let peer = peer_uid(&stream)?;
    // SAFETY: getuid has no preconditions and cannot fail.
    let me = unsafe { libc::getuid() };
    if peer != me && peer != 0 {
        bail!(
            "the process answering on {} runs as uid {peer}, not as you (uid {me}) or root; not trusting it",
            path.display()
        );
    }
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("bad status from {}", path.display()))
}

/// The uid of the process at the other end of a Unix socket.
fn peer_uid(stream: &std::os::unix::net::UnixStream) -> Result<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: ucred is plain data; zeroed is a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket, and a buffer of the size given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        bail!(
            "cannot tell who answers on the status socket: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(cred.uid)
}

/// Human-readable status: views, then the counters (without comments).
/// A closed pipe (`| head`) ends the output quietly.
pub fn print(doc: &serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = (|| -> std::io::Result<()> {
        writeln!(
            out,
            "mount {} (pid {})",
            doc["mountpoint"].as_str().unwrap_or("?"),
            doc["pid"]
        )?;
        writeln!(out, "{:<32}  {:>20}  {:>10}", "VIEW", "SNAPSHOT", "SAMPLES")?;
        for v in doc["views"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "{:<32}  {:>20}  {:>10}",
                v["name"].as_str().unwrap_or("?"),
                v["snapshot_id"],
                v["samples"]
            )?;
        }
        writeln!(out)?;
        for line in doc["metrics"].as_str().unwrap_or("").lines() {
            if !line.starts_with('#') {
                writeln!(out, "{line}")?;
            }
        }
        out.flush()
    })();
}
