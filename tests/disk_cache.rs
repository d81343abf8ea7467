//! The disk tier (`--cache-dir`) with real mounts, on every backend:
//! persistence across a daemon restart, two daemons sharing one
//! directory, bad entries dropped and fetched again, a kill -9 during a
//! fill, a full disk, eviction to the size bound, and a hot-edited spec
//! keeping its hits. Source fetches are counted by the mount's own metrics
//! (`lakemount status --json`: the fetch latency histogram's count).

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// `name -> value` of a mount's counters (Prometheus text, no comments).
fn counters(mnt: &Path) -> BTreeMap<String, f64> {
    let out = bin().args(["status", "--json"]).arg(mnt).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["metrics"]
        .as_str()
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Requests the mount made to storage so far.
fn fetches(mnt: &Path) -> f64 {
    counters(mnt)["lakemount_fetch_seconds_count"]
}

/// Every sample file under `dir`: relative path -> bytes.
fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    walk(dir)
        .into_keys()
        .filter(|p| !p.ends_with(".jsonl") && !p.ends_with(".json") && !p.ends_with(".npy"))
        .map(|p| {
            let bytes = std::fs::read(dir.join(&p)).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Drops the kernel's page cache, so a read reaches the mount.
fn drop_page_cache() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

struct Setup {
    tmp: tempfile::TempDir,
    wh: PathBuf,
    spec: PathBuf,
    /// content id -> bytes of every sample
    ids: std::collections::HashSet<String>,
}

/// A warehouse with `n` small images and a 2.5 MB sample, and a spec
/// showing them without sidecars.
fn setup(n: u32) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    pngs(&tmp.path().join("in"), "x", 1, n);
    let mut big = vec![0u8; 2_500_000];
    for (i, b) in big.iter_mut().enumerate() {
        *b = (i * 13 % 251) as u8;
    }
    std::fs::create_dir_all(tmp.path().join("in/big")).unwrap();
    std::fs::write(tmp.path().join("in/big/big.bin"), &big).unwrap();
    let wh = tmp.path().join("wh");
    ingest_cli(&wh, &[tmp.path().join("in").to_str().unwrap()]);
    let spec = tmp.path().join("s.yaml");
    std::fs::write(&spec, "name: s\nsidecars: []\n").unwrap();
    let mut ids: std::collections::HashSet<String> = (1..=n)
        .map(|s| sha256(&std::fs::read(tmp.path().join(format!("in/x/{s}.png"))).unwrap()))
        .collect();
    ids.insert(sha256(&big));
    Setup { tmp, wh, spec, ids }
}

fn cache_args(dir: &Path) -> Vec<String> {
    vec![
        "--cache-dir".into(),
        dir.display().to_string(),
        // A small RAM tier, so reads after the first reach the disk tier.
        "--cache-size".into(),
        "2MiB".into(),
    ]
}

fn mount(s: &Setup, name: &str, extra: &[String]) -> MountGuard {
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    MountGuard::start_with(&s.wh, &[&s.spec], &s.tmp.path().join(name), &extra)
}

fn check_bytes(s: &Setup, tree: &BTreeMap<String, Vec<u8>>) {
    let got: std::collections::HashSet<String> = tree.values().map(|b| sha256(b)).collect();
    assert_eq!(got, s.ids, "the mount served other bytes than the samples");
}

/// Waits until the disk tier holds `n` entries (writes are asynchronous).
fn wait_entries(dir: &Path, n: u64) {
    for _ in 0..200 {
        let out = bin().args(["cache", "stats"]).arg(dir).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let entries: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("entries"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if entries >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the disk tier never held {n} entries");
}

#[test]
fn a_restarted_daemon_serves_from_disk_without_fetching() {
    let s = setup(30);
    let cache = s.tmp.path().join("cache");
    let first = mount(&s, "mnt1", &cache_args(&cache));
    let tree = read_tree(&first.mountpoint.join("s"));
    check_bytes(&s, &tree);
    assert!(fetches(&first.mountpoint) > 0.0);
    // 30 one-chunk samples and the 3 chunks of the large one.
    wait_entries(&cache, 33);
    let mode = std::fs::metadata(&cache).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700, "the cache directory is private");
    assert!(first.stop().success());

    let second = mount(&s, "mnt2", &cache_args(&cache));
    drop_page_cache();
    let again = read_tree(&second.mountpoint.join("s"));
    assert_eq!(again, tree);
    let c = counters(&second.mountpoint);
    assert_eq!(c["lakemount_fetch_seconds_count"], 0.0, "{c:?}");
    assert!(c["lakemount_disk_hits_total"] >= 31.0, "{c:?}");
    // As root the kernel reads the one-chunk samples' entry files itself
    // (passthrough): only the large sample's reads reach the daemon.
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        let served = c["lakemount_samples_served_total"];
        assert_eq!(served, 1.0, "samples read through the daemon: {c:?}");
    }
}

#[test]
fn two_daemons_share_one_cache_directory() {
    let s = setup(24);
    let cache = s.tmp.path().join("cache");
    let a = mount(&s, "mnt-a", &cache_args(&cache));
    let b = mount(&s, "mnt-b", &cache_args(&cache));
    check_bytes(&s, &read_tree(&a.mountpoint.join("s")));
    wait_entries(&cache, 27);
    drop_page_cache();
    check_bytes(&s, &read_tree(&b.mountpoint.join("s")));
    assert_eq!(fetches(&b.mountpoint), 0.0, "b fetched what a had cached");
    // Both filling at once: each entry counted once.
    let out = bin().args(["cache", "stats"]).arg(&cache).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("entries     27"), "{text}");
}

/// The entry files of the disk tier, by name.
fn entries(cache: &Path) -> Vec<PathBuf> {
    walk(&cache.join("v2"))
        .into_keys()
        .map(|p| cache.join("v2").join(p))
        .collect()
}

/// The checksum attribute a daemon sets on the entries it writes.
fn checksum_attr(path: &Path) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut v = [0u8; 64];
    // SAFETY: NUL-terminated strings and a buffer of the length given.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            c"user.lakemount.crc32c".as_ptr(),
            v.as_mut_ptr().cast(),
            v.len(),
        )
    };
    (n >= 0).then(|| v[..n as usize].to_vec())
}

/// Whether the filesystem of `dir` keeps user extended attributes (where
/// it does not, entries are checked by SHA-256 alone).
fn xattrs_work(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let probe = dir.join("tmp/xattr-probe");
    std::fs::write(&probe, b"").unwrap();
    let p = std::ffi::CString::new(probe.as_os_str().as_bytes()).unwrap();
    // SAFETY: as above.
    let ok = unsafe {
        libc::setxattr(
            p.as_ptr(),
            c"user.probe".as_ptr(),
            b"1".as_ptr().cast(),
            1,
            0,
        )
    } == 0;
    std::fs::remove_file(&probe).unwrap();
    ok
}

#[test]
fn bad_entries_are_dropped_and_fetched_again() {
    let s = setup(12);
    let cache = s.tmp.path().join("cache");
    {
        let m = mount(&s, "mnt1", &cache_args(&cache));
        read_tree(&m.mountpoint.join("s"));
        wait_entries(&cache, 15);
    }
    // One entry with a flipped byte, one truncated, one holding another
    // sample's bytes, and a file that is not an entry at all.
    let files: Vec<PathBuf> = entries(&cache)
        .into_iter()
        .filter(|p| !p.file_name().unwrap().to_string_lossy().contains('.'))
        .collect();
    let mut b = std::fs::read(&files[0]).unwrap();
    b[10] ^= 1;
    std::fs::write(&files[0], b).unwrap();
    let b = std::fs::read(&files[1]).unwrap();
    std::fs::write(&files[1], &b[..b.len() / 2]).unwrap();
    std::fs::write(&files[2], std::fs::read(&files[3]).unwrap()).unwrap();
    let stray = files[4].parent().unwrap().join("not-an-entry");
    std::fs::write(&stray, b"x").unwrap();
    // Good bytes in a new file, without the checksum attribute its writer
    // set: checked by SHA-256 against its name, kept, and given one.
    let bytes = std::fs::read(&files[5]).unwrap();
    std::fs::remove_file(&files[5]).unwrap();
    std::fs::write(&files[5], &bytes).unwrap();
    assert_eq!(checksum_attr(&files[5]), None);
    // A directory of the earlier layout is deleted.
    let old = cache.join("v1/ab/cd");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("x"), b"old").unwrap();

    let m = mount(&s, "mnt2", &cache_args(&cache));
    drop_page_cache();
    check_bytes(&s, &read_tree(&m.mountpoint.join("s")));
    let c = counters(&m.mountpoint);
    assert_eq!(c["lakemount_disk_dropped_total"], 3.0, "{c:?}");
    assert_eq!(c["lakemount_fetch_seconds_count"], 3.0, "{c:?}");
    // The scan at open removes what is not an entry.
    for _ in 0..100 {
        if !stray.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!stray.exists());
    assert!(!cache.join("v1").exists());
    if xattrs_work(&cache) {
        assert_eq!(checksum_attr(&files[5]).map(|v| v.len()), Some(12));
    }
    // `cache verify` finds everything in order now.
    let out = bin()
        .args(["cache", "verify"])
        .arg(&cache)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0 corrupt deleted"), "{text}");
}

#[test]
fn a_daemon_killed_mid_fill_leaves_nothing_partial_to_serve() {
    let s = setup(60);
    let cache = s.tmp.path().join("cache");
    {
        let mut m = mount(&s, "mnt1", &cache_args(&cache));
        let root = m.mountpoint.join("s");
        let files: Vec<String> = walk(&root).into_keys().collect();
        for f in files.iter().take(30) {
            let _ = std::fs::read(root.join(f));
        }
        let mut child = m.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // A partial write left behind by a writer that died (its pid is gone).
    std::fs::write(cache.join("tmp/4194303-1"), b"partial").unwrap();
    let m = mount(&s, "mnt2", &cache_args(&cache));
    drop_page_cache();
    check_bytes(&s, &read_tree(&m.mountpoint.join("s")));
    assert!(!cache.join("tmp/4194303-1").exists());
}

#[test]
fn eviction_holds_the_size_bound() {
    let s = setup(80);
    let cache = s.tmp.path().join("cache");
    let mut args = cache_args(&cache);
    args.extend(["--cache-dir-size".into(), "1MiB".into()]);
    let m = mount(&s, "mnt", &args);
    check_bytes(&s, &read_tree(&m.mountpoint.join("s")));
    let mut bytes = u64::MAX;
    for _ in 0..100 {
        let out = bin().args(["cache", "stats"]).arg(&cache).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        bytes = text
            .lines()
            .find_map(|l| l.strip_prefix("bytes"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        if bytes <= 1 << 20 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(bytes <= 1 << 20, "{bytes} bytes in a 1 MiB disk tier");
    let on_disk: u64 = entries(&cache)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(on_disk <= 1 << 20, "{on_disk} bytes of entry files");
    assert!(counters(&m.mountpoint)["lakemount_disk_evictions_total"] > 0.0);
}

#[test]
fn a_full_disk_keeps_the_mount_serving() {
    let s = setup(40);
    let cache = s.tmp.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "lm-cache"])
        .arg(&cache)
        .status()
        .unwrap();
    assert!(st.success(), "mount -t tmpfs needs root");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _tmpfs = Unmount(cache.clone());
    // Something else fills the disk.
    let filler = vec![7u8; 900 << 10];
    let _ = std::fs::write(cache.join("filler"), &filler);
    let mut args = cache_args(&cache);
    args.extend(["--cache-dir-min-free".into(), "0%".into()]);
    let mut m = mount(&s, "mnt", &args);
    check_bytes(&s, &read_tree(&m.mountpoint.join("s")));
    drop_page_cache();
    check_bytes(&s, &read_tree(&m.mountpoint.join("s")));
    let child = m.child.take().unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        log.matches("cannot be written").count(),
        1,
        "one warning: {log}"
    );
}

#[test]
fn a_hot_edited_spec_keeps_its_cache_hits() {
    let s = setup(20);
    let cache = s.tmp.path().join("cache");
    let dir = s.tmp.path().join("specs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("v.yaml"), "name: v\nsidecars: []\n").unwrap();
    let mnt = s.tmp.path().join("mnt");
    let m = MountGuard::start_with(
        &s.wh,
        &[&dir],
        &mnt,
        &cache_args(&cache)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    check_bytes(&s, &read_tree(&mnt.join("v")));
    let before = fetches(&m.mountpoint);
    // Another layout of the same samples: new paths, same bytes.
    std::fs::write(
        dir.join("v.yaml"),
        "name: v\nlayout: \"by-id/{content_id}{ext}\"\nsidecars: []\n",
    )
    .unwrap();
    for _ in 0..100 {
        if mnt.join("v/by-id").is_dir() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check_bytes(&s, &read_tree(&mnt.join("v")));
    assert_eq!(
        fetches(&m.mountpoint),
        before,
        "the edited view fetched again"
    );
}

#[test]
fn a_read_only_cache_directory_is_a_warning_not_a_failure() {
    let s = setup(10);
    let cache = s.tmp.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m,mode=0700", "lm-ro"])
        .arg(&cache)
        .status()
        .unwrap();
    assert!(st.success(), "mount -t tmpfs needs root");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _ro = Unmount(cache.clone());
    let mut m = mount(&s, "mnt", &cache_args(&cache));
    check_bytes(&s, &read_tree(&m.mountpoint.join("s")));
    let child = m.child.take().unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("serving from memory and the source only"),
        "{log}"
    );
}

/// `lakemount_disk_checked_total` of a mount once it reaches `at_least`,
/// or its last value after 10 s.
fn checked_reaching(mnt: &Path, at_least: f64) -> f64 {
    let mut n = 0.0;
    for _ in 0..100 {
        n = counters(mnt)["lakemount_disk_checked_total"];
        if n >= at_least {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    n
}

/// A restarted daemon checks each disk-tier entry before its first use.
/// Its readers need not wait for that: once their opens have waited for
/// 16 checks, the rest of the view's entries are checked in the
/// background (not with --no-auto-warm). Needs root (passthrough opens,
/// as in CI).
#[test]
fn a_restarted_daemon_checks_entries_ahead_of_its_readers() {
    let s = setup(40);
    let cache = s.tmp.path().join("cache");
    let tree = {
        let m = mount(&s, "mnt1", &cache_args(&cache));
        let tree = read_tree(&m.mountpoint.join("s"));
        wait_entries(&cache, 43);
        tree
    };
    let names: Vec<&String> = tree.keys().filter(|p| p.starts_with("x/")).collect();
    // A shuffled order (no two reads a few places apart in a row).
    let mut shuffled = names.clone();
    shuffled.sort_by_key(|p| sha256(p.as_bytes()));
    let no_prefetch = |extra: &[&str]| {
        let mut args = cache_args(&cache);
        args.extend(
            ["--prefetch", "0"]
                .iter()
                .chain(extra)
                .map(|a| a.to_string()),
        );
        args
    };

    // Shuffled, 20 reads: the other 20 entries are checked in the background.
    let m = mount(&s, "mnt2", &no_prefetch(&[]));
    drop_page_cache();
    let root = m.mountpoint.join("s");
    for p in &shuffled[..20] {
        assert_eq!(&std::fs::read(root.join(p)).unwrap(), &tree[*p]);
    }
    assert_eq!(checked_reaching(&m.mountpoint, 40.0), 40.0);
    for p in &shuffled[20..] {
        assert_eq!(&std::fs::read(root.join(p)).unwrap(), &tree[*p]);
    }
    let c = counters(&m.mountpoint);
    assert_eq!(
        c["lakemount_disk_checked_total"], 40.0,
        "checked twice: {c:?}"
    );
    assert_eq!(c["lakemount_fetch_seconds_count"], 0.0, "{c:?}");
    drop(m);

    // The same with --no-auto-warm: only what was read is checked.
    let m = mount(&s, "mnt3", &no_prefetch(&["--no-auto-warm"]));
    let root = m.mountpoint.join("s");
    for p in &shuffled[..20] {
        assert_eq!(&std::fs::read(root.join(p)).unwrap(), &tree[*p]);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(checked_reaching(&m.mountpoint, 21.0), 20.0);
    drop(m);

    // Walked in name order (with prefetch, whose walks passthrough opens
    // do not feed): the same.
    let m = mount(&s, "mnt4", &cache_args(&cache));
    let root = m.mountpoint.join("s");
    let mut in_order: Vec<&String> = names.clone();
    in_order.sort();
    for p in &in_order[..20] {
        assert_eq!(&std::fs::read(root.join(p)).unwrap(), &tree[*p]);
    }
    assert_eq!(checked_reaching(&m.mountpoint, 40.0), 40.0);
}
