//! The fuser adapter: the only module that translates between fuser's
//! request and reply types and the filesystem core ([`crate::fs`]);
//! [`crate::mount`] uses fuser only to start and end the session.
//!
//! Callbacks never wait on the network. Lookups, attributes and listings
//! are answered from the in-memory tree right away; a read is polled once
//! on the FUSE thread, which answers cache hits and local blob files at
//! once, and anything still pending moves to the tokio runtime, which
//! replies when the data arrives. Every error reaching the kernel goes through [`errno`], one
//! exhaustive match. The view is immutable, so entries and attributes carry
//! a long TTL, files open with keep-cache, and when the kernel supports it
//! opens are skipped altogether (no-open support), which lets a second epoch
//! be served from the page cache without any round trip.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};

use crate::fs::{Attr, FsError, Kind, OpenMode, Opened, ViewFs};
use crate::metrics::{FuseOp, Metrics};

/// Entry and attribute TTL inside a view: a view's tree never changes.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// TTL of the root and its entries, which change when specs are added,
/// edited or removed (the kernel is also told, where it listens).
const ROOT_TTL: Duration = Duration::from_secs(1);

/// The TTL for an answer about the root or one of its entries (`in_root`),
/// or about anything inside a view.
fn ttl(in_root: bool) -> &'static Duration {
    if in_root { &ROOT_TTL } else { &TTL }
}
/// Largest readahead asked of the kernel; it clamps to what it allows.
const MAX_READAHEAD: u32 = 1 << 20;
/// The block size files report. Readers size their buffers by it (Python's
/// `open()` buffers `st_blksize` bytes): at 4 KiB, the kernel's readahead
/// ramps up from small first reads and a 100 KB image costs three READ
/// round trips; at 1 MiB the first read asks for the whole file, one READ.
const BLKSIZE: u32 = 1 << 20;
/// Background requests the kernel may keep in flight (parallel DataLoader workers).
const MAX_BACKGROUND: u16 = 64;

/// Maps a core error to its errno: the only place errnos are chosen.
pub fn errno(e: &FsError) -> Errno {
    match e {
        FsError::NotFound => Errno::ENOENT,
        FsError::NotDir => Errno::ENOTDIR,
        FsError::IsDir => Errno::EISDIR,
        FsError::ReadOnly => Errno::EROFS,
        FsError::Unsupported => Errno::ENOSYS,
        FsError::NoData => Errno::ENODATA,
        FsError::Fetch(_) => Errno::EIO,
    }
}

fn reply_read(result: Result<bytes::Bytes, FsError>, reply: ReplyData, metrics: &Metrics) {
    match result {
        Ok(bytes) => {
            metrics.bytes_served.inc_by(bytes.len() as u64);
            reply.data(&bytes)
        }
        Err(e) => reply.error(errno(&e)),
    }
}

/// Backing files registered with the kernel for passthrough, by inode: the
/// kernel wants one registration per inode while any handle is open.
type Backings = Arc<Mutex<HashMap<u64, (Arc<BackingId>, usize)>>>;

/// `name`'s bytes into `out` (reused across a listing).
fn name_bytes(name: &crate::view::FileName<'_>, out: &mut Vec<u8>) {
    out.clear();
    for part in name.parts() {
        out.extend_from_slice(part);
    }
}

/// Registers `file` with the kernel as the backing file of `ino` (one
/// registration per inode while any handle is open) and opens it for
/// passthrough; falls back to reads through lakemount if the kernel refuses.
fn open_passthrough(ino: u64, file: std::fs::File, backings: &Backings, reply: ReplyOpen) {
    let Ok(mut map) = backings.lock() else {
        return reply.opened(
            FileHandle(0),
            FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
        );
    };
    if let Some((id, n)) = map.get_mut(&ino) {
        *n += 1;
        return reply.opened_passthrough(FileHandle(ino), FopenFlags::FOPEN_NOFLUSH, id);
    }
    match reply.open_backing(&file) {
        Ok(id) => {
            let id = Arc::new(id);
            map.insert(ino, (id.clone(), 1));
            reply.opened_passthrough(FileHandle(ino), FopenFlags::FOPEN_NOFLUSH, &id);
        }
        Err(e) => {
            tracing::warn!(ino, "kernel refused passthrough ({e}); serving reads");
            reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
            );
        }
    }
}

/// Serves a [`ViewFs`] to the kernel.
pub struct FuseAdapter {
    fs: Arc<ViewFs>,
    rt: tokio::runtime::Handle,
    uid: u32,
    gid: u32,
    no_open: AtomicBool,
    want_passthrough: bool,
    local_blobs: bool,
    passthrough: AtomicBool,
    backings: Backings,
    metrics: Arc<Metrics>,
}

impl FuseAdapter {
    /// Files appear owned by `uid`/`gid`; reads run on `rt`.
    /// With `local_blobs`, samples stored as local files are read by the
    /// kernel straight from the blob store (FUSE passthrough, Linux 6.9+),
    /// skipping the daemon and its content-id check; with `disk_tier`,
    /// samples whose verified entry is on the disk tier are.
    pub fn new(
        fs: Arc<ViewFs>,
        rt: tokio::runtime::Handle,
        uid: u32,
        gid: u32,
        local_blobs: bool,
        disk_tier: bool,
    ) -> Self {
        Self {
            metrics: fs.metrics().clone(),
            fs,
            rt,
            uid,
            gid,
            no_open: AtomicBool::new(false),
            want_passthrough: local_blobs || disk_tier,
            local_blobs,
            passthrough: AtomicBool::new(false),
            backings: Arc::default(),
        }
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        let (kind, perm, nlink) = match a.kind {
            Kind::Dir => (FileType::Directory, 0o555, 2),
            Kind::File => (FileType::RegularFile, 0o444, 1),
        };
        FileAttr {
            ino: INodeNo(a.ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: a.mtime,
            mtime: a.mtime,
            ctime: a.mtime,
            crtime: a.mtime,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLKSIZE,
            flags: 0,
        }
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each capability is optional: an older kernel simply lacks the speed-up.
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
        ] {
            let _ = config.add_capabilities(cap);
        }
        if self.want_passthrough {
            // Passthrough needs every OPEN, so it excludes no-open support.
            let ok = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            self.passthrough.store(ok, Ordering::Relaxed);
            if !ok {
                tracing::warn!(
                    "the kernel does not offer FUSE passthrough; reads go through lakemount"
                );
            }
        } else if config
            .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT)
            .is_ok()
        {
            self.no_open.store(true, Ordering::Relaxed);
        }
        let _ = config.add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        if let Err(max) = config.set_max_readahead(MAX_READAHEAD) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(MAX_BACKGROUND);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.metrics.op(FuseOp::Lookup);
        let Some(name) = name.to_str() else {
            return reply.error(errno(&FsError::NotFound));
        };
        match self.fs.lookup(parent.0, name) {
            Ok(a) => reply.entry(
                ttl(parent.0 == crate::fs::ROOT),
                &self.attr(&a),
                Generation(0),
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.metrics.op(FuseOp::Getattr);
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(ttl(ino.0 == crate::fs::ROOT), &self.attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.metrics.op(FuseOp::Open);
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let mode = OpenMode {
            no_open: self.no_open.load(Ordering::Relaxed),
            passthrough: self.passthrough.load(Ordering::Relaxed),
            local_blobs: self.local_blobs,
        };
        let fs = self.fs.clone();
        let backings = self.backings.clone();
        let answer = move || match fs.open(ino.0, write, mode) {
            Ok(Opened::Passthrough(file)) => open_passthrough(ino.0, file, &backings, reply),
            // With no-open support negotiated, ENOSYS tells the kernel to
            // stop sending OPEN and RELEASE for this mount and to keep page
            // caches.
            Ok(Opened::Skip) => reply.error(errno(&FsError::Unsupported)),
            // Kernels without no-open support: keep page caches across
            // opens and skip the FLUSH round trip on close.
            Ok(Opened::Cached) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
            ),
            Err(e) => reply.error(errno(&e)),
        };
        if mode.passthrough {
            // Opening a blob file may block on the disk.
            self.rt.spawn_blocking(answer);
        } else {
            answer();
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.metrics.op(FuseOp::Release);
        if let Ok(mut map) = self.backings.lock()
            && let Some((_, n)) = map.get_mut(&ino.0)
        {
            *n -= 1;
            if *n == 0 {
                map.remove(&ino.0);
            }
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.metrics.op(FuseOp::Opendir);
        match self.fs.getattr(ino.0) {
            // The root's listing changes with the specs: not cached.
            Ok(a) if a.kind == Kind::Dir && ino.0 == crate::fs::ROOT => {
                reply.opened(FileHandle(0), FopenFlags::empty())
            }
            Ok(a) if a.kind == Kind::Dir => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Ok(_) => reply.error(errno(&FsError::NotDir)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.metrics.op(FuseOp::Read);
        let fs = self.fs.clone();
        let mut read = Box::pin(async move { fs.read(ino.0, offset, size).await });
        // Poll once on this thread: a cached chunk or a local blob file is
        // answered right here, without handing the request to another thread.
        // Anything that has to wait (a remote fetch, a chunk another reader
        // is fetching) moves to the runtime, which polls it again with a
        // real waker.
        let _runtime = self.rt.enter();
        let mut cx = Context::from_waker(Waker::noop());
        match read.as_mut().poll(&mut cx) {
            Poll::Ready(result) => reply_read(result, reply, &self.metrics),
            Poll::Pending => {
                let metrics = self.metrics.clone();
                self.rt
                    .spawn(async move { reply_read(read.await, reply, &metrics) });
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.metrics.op(FuseOp::Readdir);
        match self.fs.readdir(ino.0, offset) {
            Ok(entries) => {
                let mut name = Vec::with_capacity(256);
                for e in entries.iter() {
                    let kind = match e.attr.kind {
                        Kind::Dir => FileType::Directory,
                        Kind::File => FileType::RegularFile,
                    };
                    name_bytes(&e.name, &mut name);
                    if reply.add(
                        INodeNo(e.attr.ino),
                        e.next_offset,
                        kind,
                        OsStr::from_bytes(&name),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.metrics.op(FuseOp::Readdirplus);
        match self.fs.readdir(ino.0, offset) {
            Ok(entries) => {
                let mut name = Vec::with_capacity(256);
                let ttl = ttl(ino.0 == crate::fs::ROOT);
                for e in entries.iter() {
                    name_bytes(&e.name, &mut name);
                    if reply.add(
                        INodeNo(e.attr.ino),
                        e.next_offset,
                        OsStr::from_bytes(&name),
                        ttl,
                        &self.attr(&e.attr),
                        Generation(0),
                    ) {
                        break;
                    }
                    // The kernel takes a lookup on every entry but `.` and `..`.
                    if name != b"." && name != b".." {
                        self.fs.looked_up(e.attr.ino);
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever written, so there is nothing to flush. ENOSYS makes
        // the kernel stop sending FLUSH on every close for this mount, which
        // is what keeps a warm epoch close to local-disk speed.
        reply.error(errno(&FsError::Unsupported));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        self.metrics.op(FuseOp::Getxattr);
        reply.error(errno(&FsError::NoData));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.metrics.op(FuseOp::Other);
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }
}
