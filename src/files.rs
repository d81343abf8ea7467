//! Reading files a user names: spec files, manifests, ingest inputs, query
//! vectors and media, model folders, precomputed embeddings.
//!
//! A path on the command line or in a manifest may name anything: a FIFO
//! (an open blocks until a writer comes, forever), `/dev/zero` (a read
//! never ends), a terminal, a directory. So every such read goes through
//! [`read_regular`]: the file is opened with `O_NONBLOCK` (an open of a FIFO
//! returns at once), checked with `fstat` to be a regular file, and read
//! with a size bound, first against its size and then against what the
//! read actually returns (a file may grow while read). The open follows
//! symlinks: the user named the path, and what it leads to is checked by
//! the same rules. Spec files found in a watched directory add one rule of
//! their own ([`crate::spec`]).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Limits on what one read may return, by what is read.
pub mod limits {
    /// A YAML spec file.
    pub const SPEC: u64 = 1 << 20;
    /// A CSV or JSONL manifest.
    pub const MANIFEST: u64 = 4 << 30;
    /// An `.npy` query vector (`similar.to.vector`).
    pub const QUERY_VECTOR: u64 = 64 << 20;
    /// A media file embedded as a query (`similar.to.file`).
    pub const QUERY_FILE: u64 = 1 << 30;
    /// JSON configuration in a model folder (`config.json`, ...).
    pub const MODEL_CONFIG: u64 = 16 << 20;
    /// A model's `tokenizer.json`.
    pub const TOKENIZER: u64 = 256 << 20;
    /// A model's `model.safetensors` (read whole into memory).
    pub const WEIGHTS: u64 = 64 << 30;
    /// A precomputed embeddings matrix (`--embeddings`).
    pub const EMBEDDINGS: u64 = 64 << 30;
    /// One ingested sample, by default (`--max-sample-size`).
    pub const SAMPLE: u64 = 4 << 30;
}

/// Why a file could not be read. Says nothing of the file's contents.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Nothing at that path.
    #[error("no such file")]
    NotFound,
    /// Something that is not a regular file.
    #[error("not a regular file ({0})")]
    NotRegular(&'static str),
    /// Larger than the bound for what it is.
    #[error("larger than the limit of {max} bytes ({size} bytes)")]
    TooLarge {
        /// Bytes found (at least).
        size: u64,
        /// The bound.
        max: u64,
    },
    /// A symbolic link or `..` leads out of the directory it must stay in.
    #[error("leads outside the directory it must stay in (a symbolic link or ..)")]
    Outside,
    /// The system refused (permissions, I/O).
    #[error("{0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::NotFound {
            ReadError::NotFound
        } else {
            ReadError::Io(e)
        }
    }
}

/// What a file type is, in words, for messages.
pub fn describe(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading without blocking on FIFOs or devices and
/// checks that it is a regular file; returns it with its metadata.
pub fn open_regular(path: &Path) -> Result<(File, std::fs::Metadata), ReadError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotRegular(describe(meta.file_type())));
    }
    blocking(&file)?;
    Ok((file, meta))
}

/// Clears `O_NONBLOCK` once a file is known to be regular: it was there
/// only so that opening a FIFO could not block, and a file handed on (to
/// the kernel for passthrough, say) should carry no surprising flags.
fn blocking(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this File owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The bytes of the regular file at `path`, at most `max` of them.
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let (file, meta) = open_regular(path)?;
    read_bounded(file, &meta, max)
}

/// [`read_regular`] of `rel` resolved beneath the directory `base`:
/// neither `..` nor a symbolic link may lead out of it (an attempt is
/// [`ReadError::Outside`]).
pub fn read_regular_beneath(base: &Path, rel: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let dir = std::os::fd::OwnedFd::from(File::open(base)?);
    let file = open_beneath(&dir, rel).map_err(|e| match e.raw_os_error() {
        Some(libc::EXDEV) | Some(libc::ELOOP) => ReadError::Outside,
        _ => ReadError::from(e),
    })?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotRegular(describe(meta.file_type())));
    }
    read_bounded(file, &meta, max)
}

fn read_bounded(file: File, meta: &std::fs::Metadata, max: u64) -> Result<Vec<u8>, ReadError> {
    if meta.size() > max {
        return Err(ReadError::TooLarge {
            size: meta.size(),
            max,
        });
    }
    let mut out = Vec::with_capacity(meta.size() as usize);
    file.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(ReadError::TooLarge {
            size: out.len() as u64,
            max,
        });
    }
    Ok(out)
}

/// [`read_regular`] as UTF-8 text.
pub fn read_regular_string(path: &Path, max: u64) -> Result<String, ReadError> {
    String::from_utf8(read_regular(path, max)?).map_err(|_| {
        ReadError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not UTF-8 text",
        ))
    })
}

/// `openat2(dir, rel, O_RDONLY | O_NONBLOCK | O_CLOEXEC, RESOLVE_BENEATH)`:
/// fails with `EXDEV` if resolving `rel` (symlinks included) would leave
/// `dir`. Falls back to a canonical-path check where the kernel lacks
/// `openat2`. `O_NONBLOCK` keeps a FIFO from blocking the open.
pub fn open_beneath(dir: &std::os::fd::OwnedFd, rel: &Path) -> std::io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: open_how is plain data; zeroed is its documented initial state.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid fd, NUL-terminated path and a correctly sized open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd >= 0 {
        // SAFETY: the kernel returned a new, owned file descriptor.
        let file = unsafe { File::from_raw_fd(fd as i32) };
        if file.metadata()?.file_type().is_file() {
            blocking(&file)?;
        }
        return Ok(file);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    let base = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
    let full = base.join(rel).canonicalize()?;
    if !full.starts_with(&base) {
        return Err(std::io::Error::from_raw_os_error(libc::EXDEV));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(full)?;
    if file.metadata()?.file_type().is_file() {
        blocking(&file)?;
    }
    Ok(file)
}

/// [`excerpt`] of at most 64 characters in double quotes: how messages
/// quote a value taken from a file.
pub fn quoted(text: &str) -> String {
    format!("\"{}\"", excerpt(text, 64))
}

/// A short, escaped excerpt of text from a file, for messages: at most
/// `max` characters, control and non-ASCII characters escaped, `…` where
/// it was cut. Messages quote file contents only through this, so an
/// error about a file that is not what it should be (a secret a symlink
/// leads to, say) never carries more than a few characters of it.
pub fn excerpt(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_devices_and_directories_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let start = std::time::Instant::now();
        assert!(matches!(
            read_regular(&fifo, 10),
            Err(ReadError::NotRegular("a FIFO"))
        ));
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        assert!(matches!(
            read_regular(Path::new("/dev/zero"), 10),
            Err(ReadError::NotRegular("a character device"))
        ));
        assert!(matches!(
            read_regular(dir.path(), 10),
            Err(ReadError::NotRegular("a directory"))
        ));
        assert!(matches!(
            read_regular(&dir.path().join("none"), 10),
            Err(ReadError::NotFound)
        ));
    }

    #[test]
    fn reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"0123456789").unwrap();
        assert_eq!(read_regular(&f, 10).unwrap(), b"0123456789");
        assert!(matches!(
            read_regular(&f, 9),
            Err(ReadError::TooLarge { size: 10, max: 9 })
        ));
    }

    #[test]
    fn excerpts_are_short_and_escaped() {
        assert_eq!(excerpt("abc", 5), "abc");
        assert_eq!(excerpt("root:x:0:0:root:/root", 6), "root:x…");
        assert_eq!(excerpt("a\nb\u{202e}c", 10), "a\\nb\\u{202e}c");
    }
}
