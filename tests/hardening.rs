//! The hardening issue's failure modes, each on real warehouses, real
//! processes and real mounts: concurrent ingests, corrupt large samples,
//! rows pointing outside the warehouse, unmounting what is not ours,
//! hostile labels and names, huge filters, leaked credentials.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use lakemount::catalog::write::{SampleRow, fast_append, write_files};

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `lakemount check` on every snapshot: (exit ok, output).
fn check(wh: &Path, extra: &[&str]) -> (bool, String) {
    let out = bin()
        .arg("check")
        .args(wh_args(wh))
        .args(extra)
        .output()
        .unwrap();
    (out.status.success(), text(&out))
}

/// Runs 4 ingests at once over overlapping inputs and checks the result.
fn four_concurrent_ingests(wh: &Path, root: &Path) {
    // Input k holds seeds 40k .. 40k+80: each overlaps the next by 40.
    let inputs: Vec<PathBuf> = (0..4u32)
        .map(|k| {
            let d = root.join(format!("in{k}"));
            pngs(&d, "x", 1000 + 40 * k, 80);
            d
        })
        .collect();
    let children: Vec<_> = inputs
        .iter()
        .map(|d| {
            bin()
                .args(["ingest", "--quiet", "--batch-size", "10"])
                .args(wh_args(wh))
                .arg(d)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
}

/// Writers that open a fresh catalog at the same moment all get it: the
/// first open creates the catalog's tables, and on PostgreSQL two
/// `CREATE TABLE IF NOT EXISTS` at once can fail on a system-catalog index
/// (seen as a failed concurrent ingest in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_opening_a_fresh_catalog_at_once_all_get_it() {
    for _ in 0..10 {
        let tmp = tempfile::tempdir().unwrap();
        let config = wh_config(&tmp.path().join("wh"));
        let opens: Vec<_> = (0..8)
            .map(|_| {
                let config = config.clone();
                tokio::spawn(async move {
                    lakemount::warehouse::Warehouse::open(&config, true)
                        .await
                        .map(|_| ())
                })
            })
            .collect();
        for open in opens {
            if let Err(e) = open.await.unwrap() {
                panic!("a concurrent open failed: {e:#}");
            }
        }
    }
}

#[tokio::test]
async fn concurrent_ingests_publish_each_sample_once_with_the_right_lance_version() {
    for existing in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let wh = tmp.path().join("wh");
        let mut expected = 4 * 40 + 40;
        if existing {
            pngs(&tmp.path().join("seed"), "x", 1, 30);
            ingest_cli(&wh, &[tmp.path().join("seed").to_str().unwrap()]);
            expected += 30;
        }
        four_concurrent_ingests(&wh, tmp.path());

        let w = open(&wh).await;
        let rows = iceberg_rows(&w).await;
        let ids: HashSet<String> = rows
            .iter()
            .map(|r| r["content_id"].clone().unwrap())
            .collect();
        assert_eq!(ids.len(), expected, "existing={existing}");
        assert_eq!(rows.len(), expected, "a sample was published twice");
        // Every snapshot: no duplicate, every row in Lance at its version.
        let (ok, out) = check(&wh, &[]);
        assert!(ok, "{out}");
        assert!(out.contains("snapshots hold the invariants"), "{out}");
        // And the newest view shows every sample with its embedding.
        let spec = tmp.path().join("all.yaml");
        std::fs::write(&spec, "name: all\n").unwrap();
        let listing = ls(&wh, &[&spec]);
        let npys = listing.keys().filter(|p| p.ends_with(".npy")).count();
        assert_eq!(npys, expected);
    }
}

#[test]
fn check_fails_on_a_duplicate_and_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    pngs(&tmp.path().join("in"), "x", 1, 3);
    let wh = tmp.path().join("wh");
    ingest_cli(&wh, &[tmp.path().join("in").to_str().unwrap()]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = rt.block_on(async {
        let w = open(&wh).await;
        let row = iceberg_rows(&w).await.remove(0);
        let id = row["content_id"].clone().unwrap();
        // Another engine appends the same content id again.
        append_foreign(&w, &id, row["uri"].as_deref().unwrap(), 4).await;
        id
    });
    let (ok, out) = check(&wh, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("listed more than once") && out.contains(&id),
        "{out}"
    );
}

/// Appends one row as another engine would (no chunk digests, no Lance row).
async fn append_foreign(w: &lakemount::warehouse::Warehouse, id: &str, uri: &str, size: i64) {
    let table = w.catalog.load_table(&w.table).await.unwrap();
    let row = SampleRow {
        content_id: id.to_string(),
        uri: uri.to_string(),
        label: Some("foreign".into()),
        split: "train".into(),
        media_type: "application/octet-stream".into(),
        size_bytes: size,
        source: None,
        ingested_at_us: chrono::Utc::now().timestamp_micros(),
        embedding_model: "other".into(),
        chunk_sha256: None,
        extras: Default::default(),
    };
    let files = write_files(&table, &[row]).await.unwrap();
    let tx = fast_append(&table, files, Default::default()).unwrap();
    lakemount::catalog::commit::commit_on(&w.catalog, &table, tx)
        .await
        .unwrap();
}

/// 3.5 MB of pseudo-random bytes.
fn big_bytes(seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(3_500_000);
    let mut x = seed | 1;
    while out.len() < 3_500_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn blob_path(wh: &Path, id: &str) -> PathBuf {
    wh.join("blobs").join(&id[..2]).join(id)
}

fn read_at(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

#[test]
fn a_corrupt_byte_anywhere_in_a_large_sample_is_eio() {
    let tmp = tempfile::tempdir().unwrap();
    let big = big_bytes(7);
    let id = sha256(&big);
    std::fs::create_dir_all(tmp.path().join("in/big")).unwrap();
    std::fs::write(tmp.path().join("in/big/large.bin"), &big).unwrap();
    let wh = tmp.path().join("wh");
    ingest_cli(&wh, &[tmp.path().join("in").to_str().unwrap()]);
    flip_blob_sync(&wh, &id, 2_000_000);

    let spec = tmp.path().join("s.yaml");
    std::fs::write(&spec, "name: s\n").unwrap();
    let mnt = tmp.path().join("mnt");
    let guard = MountGuard::start(&wh, &[&spec], &mnt);
    let file = mnt.join(format!("s/big/{id}.bin"));
    // No byte of it is served: the whole sample no longer hashes to its
    // content id (its chunk digests are the table's word, not proof).
    let e = read_at(&file, 0, 4096).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let e = read_at(&file, 2_000_000, 10).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_eq!(
        std::fs::read(&file).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    // The mount stays up and says which sample.
    assert!(is_mounted(&mnt));
    let mut guard = guard;
    let child = guard.child.take().unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(&id) && log.contains("do not hash to the content id"),
        "{log}"
    );
}

#[tokio::test]
async fn rows_without_chunk_digests_are_verified_whole_before_any_byte() {
    let tmp = tempfile::tempdir().unwrap();
    pngs(&tmp.path().join("in"), "x", 1, 2);
    let wh = tmp.path().join("wh");
    ingest_cli(&wh, &[tmp.path().join("in").to_str().unwrap()]);
    // Another engine wrote two large samples into the blob store and
    // published them without chunk digests; one is corrupt at its end.
    let w = open(&wh).await;
    let (good, bad) = (big_bytes(11), big_bytes(13));
    for (bytes, corrupt) in [(&good, false), (&bad, true)] {
        let id = sha256(bytes);
        let mut stored = bytes.clone();
        if corrupt {
            *stored.last_mut().unwrap() ^= 0xff;
        }
        write_blob(&wh, &id, stored).await;
        append_foreign(&w, &id, &w.blobs.uri(&id), bytes.len() as i64).await;
    }
    let spec = tmp.path().join("s.yaml");
    std::fs::write(&spec, "name: s\nfilter: \"label = 'foreign'\"\n").unwrap();
    let mnt = tmp.path().join("mnt");
    let _guard = MountGuard::start(&wh, &[&spec], &mnt);
    let dir = mnt.join("s/foreign");
    assert_eq!(
        std::fs::read(dir.join(format!("{}.bin", sha256(&good)))).unwrap(),
        good
    );
    // Even the first bytes of the corrupt one are refused: its last byte is wrong.
    let e = read_at(&dir.join(format!("{}.bin", sha256(&bad))), 0, 100).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
}

#[tokio::test]
async fn rows_pointing_outside_the_warehouse_are_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    pngs(&tmp.path().join("in"), "x", 1, 2);
    let wh = tmp.path().join("wh");
    ingest_cli(&wh, &[tmp.path().join("in").to_str().unwrap()]);
    // A file outside the warehouse, and a row naming it by its true hash.
    let outside = tmp.path().join("private");
    std::fs::create_dir_all(&outside).unwrap();
    let secret = big_bytes(17);
    std::fs::write(outside.join("secret.bin"), &secret).unwrap();
    let id = sha256(&secret);
    let uri = url::Url::from_file_path(outside.join("secret.bin"))
        .unwrap()
        .to_string();
    let w = open(&wh).await;
    append_foreign(&w, &id, &uri, secret.len() as i64).await;
    // A symlink inside a local blob store that leads outside, for an intact sample.
    let small = std::fs::read(tmp.path().join("in/x/1.png")).unwrap();
    let small_id = sha256(&small);
    if is_local() {
        std::fs::write(outside.join("copy.png"), &small).unwrap();
        let link = blob_path(&wh, &small_id);
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(outside.join("copy.png"), &link).unwrap();
    }

    let spec = tmp.path().join("s.yaml");
    std::fs::write(&spec, "name: s\n").unwrap();
    let mnt = tmp.path().join("mnt");
    {
        let _guard = MountGuard::start(&wh, &[&spec], &mnt);
        let e = std::fs::read(mnt.join(format!("s/foreign/{id}.bin"))).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        if is_local() {
            let e = std::fs::read(mnt.join(format!("s/x/{small_id}.png"))).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EIO));
        }
    }
    let (ok, out) = check(&wh, &[]);
    assert!(
        !ok && out.contains("outside the warehouse") && out.contains(&id),
        "{out}"
    );
    // The operator may allow the location explicitly.
    let allow = outside.to_str().unwrap();
    let (_, out) = check(&wh, &["--allow-uri-prefix", allow]);
    assert!(!out.contains("outside the warehouse"), "{out}");
    let _guard = MountGuard::start_with(&wh, &[&spec], &mnt, &["--allow-uri-prefix", allow]);
    assert_eq!(
        std::fs::read(mnt.join(format!("s/foreign/{id}.bin"))).unwrap(),
        secret
    );
}

#[test]
fn umount_refuses_what_is_not_a_lakemount_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let x = tmp.path().join("x");
    std::fs::create_dir_all(&x).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "t"])
        .arg(&x)
        .status()
        .unwrap();
    assert!(st.success(), "mount -t tmpfs needs root");
    let out = bin().arg("umount").arg(&x).output().unwrap();
    let still = is_mounted(&x);
    std::process::Command::new("umount")
        .arg(&x)
        .status()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("tmpfs mount, not a lakemount one"),
        "{}",
        text(&out)
    );
    assert!(still, "lakemount umount unmounted a tmpfs");
    let out = bin().arg("umount").arg(&x).output().unwrap();
    assert!(text(&out).contains("is not mounted"), "{}", text(&out));
}

#[test]
fn hostile_labels_never_panic_and_never_reach_names() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("in");
    let labels = [
        "_receipt.json",
        "_index.jsonl",
        "new\nline",
        "tab\there",
        "photo\u{202E}gpj.exe",
    ];
    for (k, label) in labels.iter().enumerate() {
        std::fs::create_dir_all(root.join(label)).unwrap();
        std::fs::write(root.join(label).join("a.png"), png(50 + k as u32, 10)).unwrap();
    }
    let wh = tmp.path().join("wh");
    ingest_cli(&wh, &[root.to_str().unwrap()]);
    let spec = tmp.path().join("d.yaml");
    std::fs::write(&spec, "name: d\n").unwrap();
    let listing = ls(&wh, &[&spec]);
    let dirs: std::collections::BTreeSet<&str> = listing
        .keys()
        .filter_map(|p| p.strip_prefix("d/")?.split_once('/').map(|(d, _)| d))
        .collect();
    let expected: std::collections::BTreeSet<&str> = [
        "_receipt.json~dir",
        "_index.jsonl~dir",
        "new_line",
        "tab_here",
        "photo_gpj.exe",
    ]
    .into();
    assert_eq!(dirs, expected);
    assert!(listing.contains_key("d/_receipt.json"));
    // Mounted: the sidecars keep the labels as they are.
    let mnt = tmp.path().join("mnt");
    let _guard = MountGuard::start(&wh, &[&spec], &mnt);
    let json = walk(&mnt.join("d/new_line"))
        .into_keys()
        .find(|p| p.ends_with(".json"))
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mnt.join("d/new_line").join(json)).unwrap()).unwrap();
    assert_eq!(v["label"], "new\nline");
}

#[test]
fn filters_of_ten_thousand_terms_work_and_deep_nesting_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    pngs(&tmp.path().join("in"), "l7", 1, 2);
    let wh = tmp.path().join("wh");
    ingest_cli(&wh, &[tmp.path().join("in").to_str().unwrap()]);
    for n in [1_000, 10_000] {
        let terms: Vec<String> = (0..n).map(|i| format!("label = 'l{i}'")).collect();
        let spec = tmp.path().join(format!("or{n}.yaml"));
        std::fs::write(&spec, format!("filter: \"{}\"\n", terms.join(" OR "))).unwrap();
        let listing = ls(&wh, &[&spec]);
        assert_eq!(listing.keys().filter(|p| p.ends_with(".png")).count(), 2);
    }
    let spec = tmp.path().join("not.yaml");
    std::fs::write(
        &spec,
        format!("filter: \"{}label = 'l7'\"\n", "NOT ".repeat(5000)),
    )
    .unwrap();
    let out = bin()
        .arg("ls")
        .args(wh_args(&wh))
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("`filter`: the filter nests NOT or parentheses"),
        "{}",
        text(&out)
    );
}

#[test]
fn credentials_never_appear_in_errors_or_help() {
    let tmp = tempfile::tempdir().unwrap();
    let wh = tmp.path().join("wh");
    std::fs::create_dir_all(&wh).unwrap();
    let spec = tmp.path().join("s.yaml");
    std::fs::write(&spec, "name: s\n").unwrap();
    let out = bin()
        .arg("ls")
        .arg("--warehouse")
        .arg(&wh)
        .arg("--catalog")
        .arg("postgres://lm:hunter2@127.0.0.1:9/iceberg")
        .arg(&spec)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let t = text(&out);
    assert!(!t.contains("hunter2"), "{t}");
    assert!(t.contains("postgres://lm:***@127.0.0.1:9/iceberg"), "{t}");
    let out = bin()
        .env("LAKEMOUNT_CATALOG", "postgres://lm:hunter2@db/iceberg")
        .args(["mount", "--help"])
        .output()
        .unwrap();
    assert!(!text(&out).contains("hunter2"), "{}", text(&out));
}

#[test]
fn mountpoints_must_be_empty_and_outside_the_warehouse() {
    if local_only("a mountpoint inside the warehouse needs a warehouse directory") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    pngs(&tmp.path().join("in"), "x", 1, 2);
    let wh = tmp.path().join("wh");
    ingest_cli(&wh, &[tmp.path().join("in").to_str().unwrap()]);
    let spec = tmp.path().join("s.yaml");
    std::fs::write(&spec, "name: s\n").unwrap();
    let full = tmp.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("keep.txt"), b"x").unwrap();
    let inside = wh.join("mnt");
    std::fs::create_dir_all(&inside).unwrap();
    for (mp, expected) in [
        (&full, "is not empty"),
        (&inside, "is inside the warehouse"),
    ] {
        let out = bin()
            .arg("mount")
            .args(wh_args(&wh))
            .arg(&spec)
            .arg(mp)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(4), "{}", text(&out));
        assert!(text(&out).contains(expected), "{}", text(&out));
        assert!(!is_mounted(mp));
    }
}

#[test]
fn over_long_spec_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("s.yaml");
    std::fs::write(&spec, format!("name: {}\n", "n".repeat(300))).unwrap();
    let out = bin()
        .arg("ls")
        .args(wh_args(tmp.path()))
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(
        text(&out).contains("`name`: is 300 bytes long"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn jsonl_integers_beyond_i64_are_errors_naming_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    pngs(&tmp.path().join("in"), "x", 1, 2);
    let m = tmp.path().join("m.jsonl");
    std::fs::write(
        &m,
        "{\"path\": \"in/x/1.png\", \"n\": 1}\n{\"path\": \"in/x/2.png\", \"n\": 18446744073709551615}\n",
    )
    .unwrap();
    let out = bin()
        .args(["ingest", "--quiet", "--manifest"])
        .arg(&m)
        .args(wh_args(&tmp.path().join("wh")))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let t = text(&out);
    assert!(
        t.contains("line 2") && t.contains("does not fit a 64-bit signed integer"),
        "{t}"
    );
    let w = open(&tmp.path().join("wh")).await;
    assert!(iceberg_rows(&w).await.is_empty());
}
