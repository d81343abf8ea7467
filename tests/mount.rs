//! Real FUSE mounts of resolved specs: the tree, the bytes, the sidecars,
//! read-only enforcement, parallel readers, failures and unmounting.

mod common;

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use lakemount::encode::Encoder;
use lakemount::encode::builtin::BuiltinEncoder;

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    wh: PathBuf,
    /// content id -> original bytes
    originals: HashMap<String, Vec<u8>>,
}

/// A warehouse with images in three labels plus one 2.5 MB binary sample,
/// ingested through the CLI.
fn fixture() -> Fixture {
    fixture_with(&[])
}

/// The fixture, ingested with `extra` ingest options.
fn fixture_with(extra: &[&str]) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let files = image_folder(&root.join("in"), &[("cat", 6), ("dog", 5), ("eel", 4)]);
    let mut big = Vec::with_capacity(2_500_000);
    let mut x = 7u64;
    while big.len() < 2_500_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::create_dir_all(root.join("in/blob")).unwrap();
    std::fs::write(root.join("in/blob/big.bin"), &big).unwrap();
    let wh = root.join("wh");
    let input = root.join("in");
    let mut args = extra.to_vec();
    args.push(input.to_str().unwrap());
    ingest_cli(&wh, &args);
    let mut originals: HashMap<String, Vec<u8>> =
        files.into_values().map(|b| (sha256(&b), b)).collect();
    originals.insert(sha256(&big), big);
    Fixture {
        _tmp: tmp,
        root,
        wh,
        originals,
    }
}

fn spec(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, body).unwrap();
    p
}

/// Up to `size` bytes at `offset`, fewer only at the end of the file.
fn read_at_most(file: &std::fs::File, offset: u64, size: usize) -> Vec<u8> {
    let mut buf = vec![0u8; size];
    let mut got = 0;
    while got < size {
        let n = file.read_at(&mut buf[got..], offset + got as u64).unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    buf
}

fn stem(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap();
    file.split('.').next().unwrap()
}

#[test]
fn mounted_tree_equals_ls_and_every_file_is_exact() {
    let f = fixture();
    let all = spec(&f.root, "all", "name: all\n");
    let pets = spec(
        &f.root,
        "pets",
        "filter: \"label IN ('cat', 'dog')\"\nsidecars: [metadata]\n",
    );
    let mnt = f.root.join("mnt");
    let guard = MountGuard::start(&f.wh, &[&all, &pets], &mnt);

    let listing = ls(&f.wh, &[&all, &pets]);
    let walked = walk(&mnt);
    assert_eq!(walked, listing);
    // The root holds only spec directories; a spec root only class dirs and plain files.
    let mut top: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["all", "pets"]);
    let mut classes: Vec<String> = std::fs::read_dir(mnt.join("all"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    classes.sort();
    assert_eq!(classes, ["blob", "cat", "dog", "eel"]);

    let mut samples = 0;
    for (path, size) in &walked {
        let full = mnt.join(path);
        if path.ends_with(".png") || path.ends_with(".bin") {
            samples += 1;
            let bytes = std::fs::read(&full).unwrap();
            assert_eq!(bytes.len() as u64, *size);
            let id = stem(path);
            assert_eq!(sha256(&bytes), id, "{path}");
            assert_eq!(&bytes, &f.originals[id]);
        } else if path.ends_with(".npy") {
            let m = lakemount::npy::read_matrix(&std::fs::read(&full).unwrap()).unwrap();
            let id = stem(path);
            let media = if path.contains("/blob/") {
                "application/octet-stream"
            } else {
                "image/png"
            };
            let expected = BuiltinEncoder.encode(&f.originals[id], media).unwrap();
            assert_eq!((m.rows, m.cols), (1, 256));
            assert_eq!(m.data, expected, "{path}");
        } else if path.ends_with(".json") && !path.contains("/_") {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&full).unwrap()).unwrap();
            assert_eq!(v["content_id"], stem(path));
            let label = path.split('/').nth(1).unwrap();
            assert_eq!(v["label"], label);
        }
    }
    assert_eq!(samples, 16 + 11);
    assert!(
        !walked
            .keys()
            .any(|p| p.starts_with("pets/") && p.ends_with(".npy"))
    );

    let index = std::fs::read_to_string(mnt.join("all/_index.jsonl")).unwrap();
    assert_eq!(index.lines().count(), 16);
    let receipt: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mnt.join("pets/_receipt.json")).unwrap()).unwrap();
    assert_eq!(receipt["row_count"], 11);
    assert_eq!(receipt["lance_version"], 1);
    let digest = sha256(&std::fs::read(mnt.join("pets/_index.jsonl")).unwrap());
    assert_eq!(receipt["listing_sha256"], digest);

    assert!(guard.stop().success());
    assert!(!is_mounted(&mnt), "SIGTERM left a mount behind");
}

#[test]
fn reads_at_any_offset_and_size_are_exact() {
    let f = fixture();
    let s = spec(&f.root, "s", "filter: \"label = 'blob'\"\n");
    let mnt = f.root.join("mnt");
    let _guard = MountGuard::start(&f.wh, &[&s], &mnt);
    let (path, _) = walk(&mnt)
        .into_iter()
        .find(|(p, _)| p.ends_with(".bin"))
        .unwrap();
    let original = &f.originals[stem(&path)];
    let file = std::fs::File::open(mnt.join(&path)).unwrap();
    let mut x = 99u64;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let offset = (x % (original.len() as u64 + 10)) as usize;
        let size = ((x >> 20) % 3_000_000) as usize;
        let buf = read_at_most(&file, offset as u64, size);
        let end = (offset + size).min(original.len());
        let expected = if offset >= original.len() {
            &[][..]
        } else {
            &original[offset..end]
        };
        assert_eq!(&buf[..], expected, "offset {offset} size {size}");
    }
    // Seek to the end and read nothing.
    let mut file = file;
    file.seek(SeekFrom::End(0)).unwrap();
    let mut rest = Vec::new();
    assert_eq!(file.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn every_write_fails_with_erofs() {
    let f = fixture();
    let s = spec(&f.root, "ro", "name: ro\n");
    let mnt = f.root.join("mnt");
    let _guard = MountGuard::start(&f.wh, &[&s], &mnt);
    let (sample, _) = walk(&mnt)
        .into_iter()
        .find(|(p, _)| p.ends_with(".png"))
        .unwrap();
    let sample = mnt.join(sample);
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs(std::fs::write(mnt.join("ro/new.txt"), b"x"), "create");
    erofs(std::fs::create_dir(mnt.join("ro/newdir")), "mkdir");
    erofs(std::fs::remove_file(&sample), "unlink");
    erofs(std::fs::remove_dir(mnt.join("ro/cat")), "rmdir");
    erofs(std::fs::rename(&sample, mnt.join("ro/moved.png")), "rename");
    erofs(
        std::fs::OpenOptions::new()
            .write(true)
            .open(&sample)
            .map(|_| ()),
        "open for writing",
    );
    erofs(
        std::fs::OpenOptions::new()
            .append(true)
            .open(&sample)
            .map(|_| ()),
        "open for append",
    );
    use std::os::unix::fs::PermissionsExt;
    erofs(
        std::fs::set_permissions(&sample, std::fs::Permissions::from_mode(0o777)),
        "chmod",
    );
    erofs(
        std::os::unix::fs::symlink(&sample, mnt.join("ro/link")),
        "symlink",
    );
    erofs(std::fs::hard_link(&sample, mnt.join("ro/hard")), "link");
    // Reading still works afterwards.
    assert!(!std::fs::read(&sample).unwrap().is_empty());
}

#[test]
fn eight_parallel_readers_in_random_order_read_correct_bytes() {
    let f = fixture();
    let s = spec(&f.root, "par", "name: par\n");
    let mnt = f.root.join("mnt");
    let _guard = MountGuard::start(&f.wh, &[&s], &mnt);
    let paths: Vec<String> = walk(&mnt)
        .into_keys()
        .filter(|p| p.ends_with(".png") || p.ends_with(".bin"))
        .collect();
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let paths = paths.clone();
            let mnt = &mnt;
            let originals = &f.originals;
            scope.spawn(move || {
                let mut order: Vec<usize> = (0..paths.len()).collect();
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                for i in (1..order.len()).rev() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    order.swap(i, (x % (i as u64 + 1)) as usize);
                }
                for _round in 0..3 {
                    for &i in &order {
                        let bytes = std::fs::read(mnt.join(&paths[i])).unwrap();
                        assert_eq!(&bytes, &originals[stem(&paths[i])], "{}", paths[i]);
                    }
                }
            });
        }
    });
}

#[test]
fn unreadable_blobs_give_eio_and_the_mount_stays_up() {
    // One object per sample, so one can be deleted or corrupted alone.
    let f = fixture_with(&["--pack", "off"]);
    let s = spec(&f.root, "e", "name: e\nfilter: \"label = 'cat'\"\n");
    let mnt = f.root.join("mnt");
    let _guard = MountGuard::start(&f.wh, &[&s], &mnt);
    let pngs: Vec<String> = walk(&mnt)
        .into_keys()
        .filter(|p| p.ends_with(".png"))
        .collect();
    let (deleted, corrupted, fine) = (stem(&pngs[0]), stem(&pngs[1]), &pngs[2]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        delete_blob(&f.wh, deleted).await;
        flip_blob(&f.wh, corrupted, 20).await;
    });

    for p in &pngs[..2] {
        let e = std::fs::read(mnt.join(p)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{p}: {e}");
    }
    // Other files, sidecars and listings still work.
    assert_eq!(sha256(&std::fs::read(mnt.join(fine)).unwrap()), stem(fine));
    assert!(std::fs::read(mnt.join(pngs[0].replace(".png", ".npy"))).is_ok());
    assert_eq!(walk(&mnt).len(), ls(&f.wh, &[&s]).len());
}

#[test]
fn pinned_spec_shows_the_same_dataset_after_more_ingests() {
    let f = fixture();
    let table = snapshot_ids(&f.wh);
    let pinned = spec(&f.root, "pinned", &format!("snapshot: {}\n", table[0]));
    let latest = spec(&f.root, "latest", "snapshot: latest\n");
    let before = ls(&f.wh, &[&pinned]);

    image_folder(&f.root.join("more"), &[("cat", 0)]);
    std::fs::create_dir_all(f.root.join("more/cat")).unwrap();
    std::fs::write(f.root.join("more/cat/new.png"), png(500, 30)).unwrap();
    ingest_cli(&f.wh, &[f.root.join("more").to_str().unwrap()]);

    let after = ls(&f.wh, &[&pinned]);
    assert_eq!(before, after);
    let latest_listing = ls(&f.wh, &[&latest]);
    assert_eq!(latest_listing.len(), before.len() + 3);

    let mnt = f.root.join("mnt");
    let _guard = MountGuard::start(&f.wh, &[&pinned], &mnt);
    let walked = walk(&mnt);
    assert_eq!(walked, before);
    for p in walked.keys().filter(|p| p.ends_with(".png")) {
        assert_eq!(sha256(&std::fs::read(mnt.join(p)).unwrap()), stem(p));
    }
    let receipt: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mnt.join("pinned/_receipt.json")).unwrap()).unwrap();
    assert_eq!(receipt["snapshot_id"].as_i64(), Some(table[0]));
    assert_eq!(receipt["lance_version"], 1);
}

#[test]
fn umount_clears_a_stale_mount_after_the_daemon_is_killed() {
    let f = fixture();
    let s = spec(&f.root, "k", "name: k\n");
    let mnt = f.root.join("mnt");
    let mut guard = MountGuard::start(&f.wh, &[&s], &mnt);
    let mut child = guard.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let e = std::fs::read_dir(&mnt).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");

    // Mounting over it is refused with a hint.
    let out = bin()
        .arg("mount")
        .args(wh_args(&f.wh))
        .arg(&s)
        .arg(&mnt)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "a conflict: {err}");
    assert!(
        err.contains("stale mount") && err.contains("lakemount umount"),
        "{err}"
    );

    let out = bin().arg("umount").arg(&mnt).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&mnt));
    assert!(std::fs::read_dir(&mnt).unwrap().next().is_none());

    let out = bin().arg("umount").arg(&mnt).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not mounted"));
}

#[test]
fn inline_blobs_are_served_from_lance() {
    let tmp = tempfile::tempdir().unwrap();
    let files = image_folder(&tmp.path().join("in"), &[("a", 3), ("b", 2)]);
    let wh = tmp.path().join("wh");
    ingest_cli(
        &wh,
        &["--inline-blobs", tmp.path().join("in").to_str().unwrap()],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    for b in files.values() {
        assert!(rt.block_on(read_blob(&wh, &sha256(b))).is_none());
    }
    let s = spec(
        tmp.path(),
        "inl",
        "layout: '{split}/{label}/{content_id}{ext}'\n",
    );
    let mnt = tmp.path().join("mnt");
    let _guard = MountGuard::start(&wh, &[&s], &mnt);
    let walked = walk(&mnt);
    let originals: HashMap<String, Vec<u8>> =
        files.into_values().map(|b| (sha256(&b), b)).collect();
    let pngs: Vec<&String> = walked.keys().filter(|p| p.ends_with(".png")).collect();
    assert_eq!(pngs.len(), 5);
    for p in pngs {
        assert_eq!(p.split('/').count(), 4, "{p}");
        assert_eq!(std::fs::read(mnt.join(p)).unwrap(), originals[stem(p)]);
    }
}

#[test]
fn passthrough_serves_the_same_bytes_and_refuses_missing_blobs() {
    if local_only("passthrough hands local blob files to the kernel") {
        return;
    }
    let f = fixture();
    let s = spec(&f.root, "pt", "name: pt\n");
    let mnt = f.root.join("mnt");
    let _guard = MountGuard::start_with(&f.wh, &[&s], &mnt, &["--passthrough"]);
    let walked = walk(&mnt);
    assert_eq!(walked, ls(&f.wh, &[&s]));
    let samples: Vec<&String> = walked
        .keys()
        .filter(|p| p.ends_with(".png") || p.ends_with(".bin"))
        .collect();
    for p in &samples {
        assert_eq!(
            &std::fs::read(mnt.join(p)).unwrap(),
            &f.originals[stem(p)],
            "{p}"
        );
    }
    // Sidecars still come through lakemount.
    let npy = samples[0].replace(".png", ".npy").replace(".bin", ".npy");
    assert!(lakemount::npy::read_matrix(&std::fs::read(mnt.join(npy)).unwrap()).is_ok());
    // A deleted or resized blob is refused at open; other files still read.
    let pngs: Vec<&&String> = samples.iter().filter(|p| p.ends_with(".png")).collect();
    let (gone, resized) = (stem(pngs[0]), stem(pngs[1]));
    // Every open reaches lakemount in passthrough mode, so the next read re-checks.
    std::fs::remove_file(f.wh.join("blobs").join(&gone[..2]).join(gone)).unwrap();
    let path = f.wh.join("blobs").join(&resized[..2]).join(resized);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.push(0);
    std::fs::write(&path, bytes).unwrap();
    for p in &pngs[..2] {
        let e = std::fs::read(mnt.join(p)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{p}: {e}");
    }
    assert_eq!(
        &std::fs::read(mnt.join(pngs[2])).unwrap(),
        &f.originals[stem(pngs[2])]
    );
}

#[test]
fn long_listings_read_at_any_offset_and_clashing_names_get_suffixes() {
    // 230 samples: the listing spans several of the marks it is rendered
    // from, and a layout without the content id makes names clash.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let files = image_folder(&root.join("in"), &[("cat", 150), ("dog", 80)]);
    let wh = root.join("wh");
    ingest_cli(&wh, &[root.join("in").to_str().unwrap()]);
    let s = spec(
        root,
        "flat",
        "layout: '{label}{ext}'\nsidecars: [metadata]\n",
    );
    let mnt = root.join("mnt");
    let _guard = MountGuard::start(&wh, &[&s], &mnt);

    let walked = walk(&mnt);
    assert_eq!(walked, ls(&wh, &[&s]));
    let by_id: HashMap<String, Vec<u8>> = files.into_values().map(|b| (sha256(&b), b)).collect();
    let pngs: Vec<&String> = walked.keys().filter(|p| p.ends_with(".png")).collect();
    assert_eq!(pngs.len(), by_id.len());
    // The first cat in content-id order keeps `cat.png`; the others carry a
    // prefix of their content id, and every sidecar follows its sample.
    assert!(walked.contains_key("flat/cat.png") && walked.contains_key("flat/dog.png"));
    for p in &pngs {
        let bytes = std::fs::read(mnt.join(p)).unwrap();
        let id = sha256(&bytes);
        assert!(by_id.contains_key(&id));
        let name = p
            .strip_prefix("flat/")
            .unwrap()
            .strip_suffix(".png")
            .unwrap();
        if let Some((_, tag)) = name.split_once('~') {
            assert!(id.starts_with(tag), "{p} holds {id}");
        }
        let json = format!("{}.json", p.strip_suffix(".png").unwrap());
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(mnt.join(&json)).unwrap()).unwrap();
        assert_eq!(meta["content_id"], id, "{json}");
    }

    // The listing, read first in random pieces (each page the kernel asks
    // for is rendered from the nearest mark) and then whole, is one
    // consistent file whose digest the receipt records.
    let file = std::fs::File::open(mnt.join("flat/_index.jsonl")).unwrap();
    let len = file.metadata().unwrap().len();
    let mut pieces = Vec::new();
    let mut x = 5u64;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let offset = (x % (len + 50)) as usize;
        let size = 1 + ((x >> 24) % 40_000) as usize;
        let buf = read_at_most(&file, offset as u64, size);
        pieces.push((offset, buf));
    }
    let index = std::fs::read(mnt.join("flat/_index.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = index
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), by_id.len());
    let mut listed: Vec<&str> = lines.iter().map(|l| l["path"].as_str().unwrap()).collect();
    let sorted = {
        let mut s = listed.clone();
        s.sort();
        s
    };
    assert_eq!(listed, sorted, "the listing is in path order");
    listed.dedup();
    assert_eq!(listed.len(), lines.len());
    let receipt: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mnt.join("flat/_receipt.json")).unwrap()).unwrap();
    assert_eq!(receipt["listing_sha256"], sha256(&index));
    for (offset, piece) in pieces {
        let end = (offset + piece.len()).min(index.len());
        assert_eq!(
            piece,
            index.get(offset..end).unwrap_or(&[]),
            "offset {offset}"
        );
    }
}
