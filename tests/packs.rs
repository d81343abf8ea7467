//! Packed blobs and the fetch planner on every backend: ingest into packs
//! and read back through a real mount in few requests; a corrupt byte in a
//! pack fails only its sample; `repack` of a table with three snapshots
//! keeps every snapshot's listing and bytes and makes the newest read
//! packs; concurrent ingests; a crash before the commit leaves nothing
//! visible and no partial pack; rows other engines wrote with plain URIs
//! in the same table. Requests are counted by the mount's own metrics.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use common::*;
use lakemount::catalog::write::{SampleRow, fast_append, write_files};
use lakemount::encode::builtin::BuiltinEncoder;
use lakemount::ingest::{self, InputSource, PackMode};

fn counters(mnt: &Path) -> BTreeMap<String, f64> {
    let out = bin().args(["status", "--json"]).arg(mnt).output().unwrap();
    assert!(out.status.success());
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

fn requests(mnt: &Path) -> f64 {
    counters(mnt)["lakemount_fetch_seconds_count"]
}

/// Every sample under the mounted view `root` whose name is its content
/// id: (files read, files whose bytes hash to their name, read errors).
fn read_view(root: &Path) -> (usize, usize, Vec<(String, i32)>) {
    let mut good = 0;
    let mut errors = Vec::new();
    let files: Vec<String> = walk(root)
        .into_keys()
        .filter(|p| p.ends_with(".png") || p.ends_with(".bin"))
        .collect();
    for f in &files {
        match std::fs::read(root.join(f)) {
            Ok(b) => {
                let stem = Path::new(f)
                    .file_stem()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if sha256(&b) == stem {
                    good += 1;
                }
            }
            Err(e) => errors.push((f.clone(), e.raw_os_error().unwrap_or(0))),
        }
    }
    (files.len(), good, errors)
}

/// `n` small PNGs (~10 KB of noise each) in `dir/x/`.
fn noisy_pngs(dir: &Path, n: u32, seed: u32) {
    std::fs::create_dir_all(dir.join("x")).unwrap();
    for k in 0..n {
        let s = seed * 1000 + k;
        let img = image::RgbImage::from_fn(60, 60, |x, y| {
            let v = (x * 7919 + y * 104_729 + s * 31).wrapping_mul(2_654_435_761);
            image::Rgb([(v >> 8) as u8, (v >> 16) as u8, (v >> 24) as u8])
        });
        img.save(dir.join(format!("x/{s}.png"))).unwrap();
    }
}

/// Ingests `dir` into `wh`, packed in packs of `pack_size`.
fn ingest_packed(wh: &Path, pack_size: &str, dir: &Path) {
    ingest_cli(
        wh,
        &[
            "--pack",
            "on",
            "--pack-size",
            pack_size,
            dir.to_str().unwrap(),
        ],
    );
}

/// `files` in a fixed shuffle of their name order.
fn shuffled(mut files: Vec<PathBuf>) -> Vec<PathBuf> {
    files.sort();
    let n = files.len();
    (0..n).map(|k| files[(k * 73) % n].clone()).collect()
}

fn spec(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("s.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn packed_samples_round_trip_in_few_requests() {
    let tmp = tempfile::tempdir().unwrap();
    noisy_pngs(&tmp.path().join("in"), 60, 1);
    let mut big = vec![0u8; 2_500_000];
    for (i, b) in big.iter_mut().enumerate() {
        *b = (i * 17 % 253) as u8;
    }
    std::fs::create_dir_all(tmp.path().join("in/big")).unwrap();
    std::fs::write(tmp.path().join("in/big/big.bin"), &big).unwrap();
    let wh = tmp.path().join("wh");
    ingest_packed(&wh, "256KiB", &tmp.path().join("in"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rows = rt.block_on(async { iceberg_rows(&open(&wh).await).await });
    let packed = rows
        .iter()
        .filter(|r| {
            r["uri"].as_deref().unwrap().contains("/packs/")
                && r["uri"].as_deref().unwrap().contains("#offset=")
        })
        .count();
    assert_eq!(packed, 60, "every small sample is packed");
    let objects: HashSet<String> = rows
        .iter()
        .filter_map(|r| {
            r["uri"]
                .as_deref()?
                .split_once('#')
                .map(|(o, _)| o.to_string())
        })
        .collect();
    assert!(
        objects.len() >= 2 && objects.len() < 10,
        "{} packs",
        objects.len()
    );
    // The large sample keeps an object of its own.
    assert!(
        rows.iter()
            .any(|r| !r["uri"].as_deref().unwrap().contains('#'))
    );

    let s = spec(tmp.path(), "name: s\nsidecars: []\n");
    let mnt = tmp.path().join("mnt");
    let _m = MountGuard::start(&wh, &[&s], &mnt);
    let (n, good, errors) = read_view(&mnt.join("s"));
    assert_eq!((n, good), (61, 61), "{errors:?}");
    // A read per pack window and 3 for the large sample, not one per sample.
    let r = requests(&mnt);
    assert!(
        r <= (objects.len() + 3 + 4) as f64,
        "{r} requests for 61 samples"
    );
}

#[tokio::test]
async fn a_corrupt_byte_in_a_pack_fails_only_its_sample() {
    let tmp = tempfile::tempdir().unwrap();
    noisy_pngs(&tmp.path().join("in"), 30, 2);
    let wh = tmp.path().join("wh");
    ingest_cli(
        &wh,
        &["--pack", "on", tmp.path().join("in").to_str().unwrap()],
    );
    let w = open(&wh).await;
    let rows = iceberg_rows(&w).await;
    let victim = &rows[7];
    let uri = victim["uri"].clone().unwrap();
    let (object, range) = lakemount::packs::split(&uri);
    let (offset, length) = range.unwrap();
    // Flip a byte in the middle of the victim's range of the pack object.
    flip_object_byte(&w, object, |_| (offset + length / 2) as usize, 0x55).await;

    let s = spec(tmp.path(), "name: s\nsidecars: []\n");
    let mnt = tmp.path().join("mnt");
    let mut m = MountGuard::start(&wh, &[&s], &mnt);
    let (n, good, errors) = read_view(&mnt.join("s"));
    assert_eq!((n, good), (30, 29));
    let victim_id = victim["content_id"].clone().unwrap();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].0.contains(&victim_id) && errors[0].1 == libc::EIO,
        "{errors:?}"
    );
    // Its neighbours came in few reads (the bad sample is asked for again
    // on each retry the kernel and the reader make, more of them on a
    // loaded machine; one request per sample would be 30 and more).
    assert!(requests(&mnt) <= 20.0, "{} requests", requests(&mnt));
    let child = m.child.take().unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let log = String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr).into_owned();
    assert!(log.contains(&victim_id), "{log}");
}

#[test]
fn repack_keeps_every_snapshot_and_makes_the_newest_read_packs() {
    let tmp = tempfile::tempdir().unwrap();
    let wh = tmp.path().join("wh");
    for k in 0..3 {
        let dir = tmp.path().join(format!("in{k}"));
        noisy_pngs(&dir, 25, 10 + k);
        ingest_cli(&wh, &["--pack", "off", dir.to_str().unwrap()]);
    }
    let snaps = snapshot_ids(&wh);
    assert_eq!(snaps.len(), 3);
    let pinned = |sid: i64| {
        let p = tmp.path().join(format!("s{sid}.yaml"));
        std::fs::write(&p, format!("name: s{sid}\nsnapshot: {sid}\n")).unwrap();
        p
    };
    let before: Vec<BTreeMap<String, u64>> =
        snaps.iter().map(|&s| ls(&wh, &[&pinned(s)])).collect();
    let out = bin()
        .arg("repack")
        .args(wh_args(&wh))
        .args(["--pack-size", "128KiB"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("packed 75 samples"));
    let after = snapshot_ids(&wh);
    assert_eq!(after.len(), 4);
    for (sid, listing) in snaps.iter().zip(&before) {
        assert_eq!(
            &ls(&wh, &[&pinned(*sid)]),
            listing,
            "snapshot {sid} changed"
        );
    }
    let check = bin().arg("check").args(wh_args(&wh)).output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    // The oldest snapshot reads its objects, one request each; the newest
    // reads packs, a few requests for all.
    let specs = [pinned(snaps[2]), pinned(after[0])];
    let mnt = tmp.path().join("mnt");
    for (k, s) in specs.iter().enumerate() {
        let m = MountGuard::start_with(&wh, &[s], &mnt, &["--prefetch", "0"]);
        let name = s.file_stem().unwrap().to_string_lossy().into_owned();
        let (n, good, errors) = read_view(&mnt.join(&name));
        assert_eq!(n, good, "{errors:?}");
        let r = requests(&mnt);
        if k == 0 {
            assert_eq!((n, r), (25, 25.0));
        } else {
            assert_eq!(n, 75);
            assert!(r <= 20.0, "{r} requests for 75 repacked samples");
        }
        drop(m);
    }
    // A second repack finds nothing left to do.
    let out = bin().arg("repack").args(wh_args(&wh)).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to repack"));
}

#[test]
fn concurrent_ingests_write_packs_and_publish_each_sample_once() {
    let tmp = tempfile::tempdir().unwrap();
    let wh = tmp.path().join("wh");
    // Inputs overlap: seeds 0..40, 20..60, 40..80.
    let dirs: Vec<PathBuf> = (0..3)
        .map(|k| {
            let d = tmp.path().join(format!("in{k}"));
            std::fs::create_dir_all(d.join("x")).unwrap();
            d
        })
        .collect();
    noisy_pngs(&tmp.path().join("all"), 80, 3);
    let mut names: Vec<PathBuf> = std::fs::read_dir(tmp.path().join("all/x"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for (k, d) in dirs.iter().enumerate() {
        for p in &names[k * 20..k * 20 + 40] {
            std::fs::copy(p, d.join("x").join(p.file_name().unwrap())).unwrap();
        }
    }
    // The first ingest creates the table, so the others only race to commit.
    ingest_cli(&wh, &["--pack", "on", dirs[0].to_str().unwrap()]);
    let children: Vec<_> = dirs
        .iter()
        .map(|d| {
            bin()
                .args(["ingest", "--quiet", "--pack", "on", "--batch-size", "7"])
                .args(wh_args(&wh))
                .arg(d)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rows = rt.block_on(async { iceberg_rows(&open(&wh).await).await });
    let ids: HashSet<String> = rows
        .iter()
        .map(|r| r["content_id"].clone().unwrap())
        .collect();
    assert_eq!((rows.len(), ids.len()), (80, 80));
    let check = bin().arg("check").args(wh_args(&wh)).output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let s = spec(tmp.path(), "name: s\nsidecars: []\n");
    let mnt = tmp.path().join("mnt");
    let _m = MountGuard::start(&wh, &[&s], &mnt);
    let (n, good, errors) = read_view(&mnt.join("s"));
    assert_eq!((n, good), (80, 80), "{errors:?}");
}

#[tokio::test]
async fn a_crash_before_the_commit_leaves_no_partial_pack_and_nothing_visible() {
    let tmp = tempfile::tempdir().unwrap();
    noisy_pngs(&tmp.path().join("in"), 40, 4);
    let wh = open(&tmp.path().join("wh")).await;
    let mut cfg = quiet(InputSource::Dir(tmp.path().join("in")));
    cfg.pack = PackMode::On;
    cfg.pack_size = 64 << 10;
    let model = lakemount::encode::Encoder::model_id(&BuiltinEncoder);
    lakemount::catalog::ensure_table(
        wh.catalog.as_ref(),
        &wh.table,
        wh.table_location.as_deref(),
        &wh.lance_uri,
        256,
        model,
    )
    .await
    .unwrap();
    let mut dying = wh.clone();
    dying.catalog = std::sync::Arc::new(FailingCommits {
        inner: wh.catalog.clone(),
    });
    assert!(ingest::run(&cfg, &dying, &BuiltinEncoder).await.is_err());
    assert!(iceberg_rows(&wh).await.is_empty());
    // Every pack object there is whole: it hashes to its name.
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    let (store, packs_prefix) = wh.blobs.packs_location();
    let listed: Vec<_> = store.list(Some(&packs_prefix)).try_collect().await.unwrap();
    assert!(!listed.is_empty(), "the dying ingest wrote its packs first");
    for meta in &listed {
        let bytes = store
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let name = meta
            .location
            .filename()
            .unwrap()
            .trim_end_matches(".pack")
            .to_string();
        assert_eq!(sha256(&bytes), name, "a partial pack under a real name");
    }
    // The re-run publishes everything once, and reads back.
    let r = ingest::run(&cfg, &wh, &BuiltinEncoder).await.unwrap();
    assert_eq!(r.added, 40);
    assert_eq!(iceberg_rows(&wh).await.len(), 40);
}

#[tokio::test]
async fn rows_with_plain_uris_mount_next_to_packed_ones() {
    let tmp = tempfile::tempdir().unwrap();
    noisy_pngs(&tmp.path().join("in"), 10, 5);
    let whp = tmp.path().join("wh");
    ingest_cli(
        &whp,
        &["--pack", "on", tmp.path().join("in").to_str().unwrap()],
    );
    let w = open(&whp).await;
    // Another engine appends a row for a blob object of its own.
    let other = png(4242, 20);
    let id = sha256(&other);
    write_blob(&whp, &id, other.clone()).await;
    let table = w.catalog.load_table(&w.table).await.unwrap();
    let row = SampleRow {
        content_id: id.clone(),
        uri: w.blobs.uri(&id),
        label: Some("x".into()),
        split: "train".into(),
        media_type: "image/png".into(),
        size_bytes: other.len() as i64,
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
    let s = spec(tmp.path(), "name: s\nsidecars: []\n");
    let mnt = tmp.path().join("mnt");
    let _m = MountGuard::start(&whp, &[&s], &mnt);
    let (n, good, errors) = read_view(&mnt.join("s"));
    assert_eq!((n, good), (11, 11), "{errors:?}");
}

/// The samples under the mounted view `root`, by name.
fn samples_of(root: &Path) -> Vec<PathBuf> {
    walk(root)
        .into_keys()
        .filter(|p| p.ends_with(".png"))
        .map(|p| root.join(p))
        .collect()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..300 {
        if done() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn a_view_read_in_random_order_is_fetched_whole_and_a_walked_one_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    noisy_pngs(&tmp.path().join("in"), 200, 3);
    let wh = tmp.path().join("wh");
    // Small packs, so that a random reader misses in many of them.
    ingest_packed(&wh, "64KiB", &tmp.path().join("in"));
    let s = spec(tmp.path(), "name: s\nsidecars: []\n");

    // Shuffled, with auto warm-up (the default): after 16 misses the view
    // is fetched whole, and the rest of the epoch makes no request.
    let mnt = tmp.path().join("mnt");
    {
        let _m = MountGuard::start(&wh, &[&s], &mnt);
        let files = shuffled(samples_of(&mnt.join("s")));
        assert_eq!(files.len(), 200);
        let mut k = 0;
        while counters(&mnt)["lakemount_warm_samples_total"] == 0.0 {
            assert!(k < 60, "no warm-up after {k} random reads");
            std::fs::read(&files[k]).unwrap();
            k += 1;
        }
        wait_for("the warm-up", || {
            counters(&mnt)["lakemount_warm_samples_total"] >= 200.0
        });
        let before = requests(&mnt);
        for f in &files[k..] {
            let b = std::fs::read(f).unwrap();
            assert_eq!(sha256(&b), f.file_stem().unwrap().to_string_lossy());
        }
        assert_eq!(requests(&mnt), before, "reads after the warm-up fetched");
    }
    // The same with --no-auto-warm: the epoch keeps fetching.
    {
        let _m = MountGuard::start_with(&wh, &[&s], &mnt, &["--no-auto-warm"]);
        let files = shuffled(samples_of(&mnt.join("s")));
        let half = files.len() / 2;
        for f in &files[..half] {
            std::fs::read(f).unwrap();
        }
        let before = requests(&mnt);
        for f in &files[half..] {
            std::fs::read(f).unwrap();
        }
        assert!(requests(&mnt) > before, "the second half fetched nothing");
        assert_eq!(counters(&mnt)["lakemount_warm_samples_total"], 0.0);
    }
    // Read in name order, the view is served by prefetch: no warm-up.
    {
        let _m = MountGuard::start(&wh, &[&s], &mnt);
        let mut files = samples_of(&mnt.join("s"));
        files.sort();
        for f in &files {
            std::fs::read(f).unwrap();
        }
        assert_eq!(counters(&mnt)["lakemount_warm_samples_total"], 0.0);
    }
}

/// Two views read in random order, each fitting in the cache but not
/// together: only the first is fetched whole, so that the two warm-ups do
/// not evict each other's samples (each reads its view correctly either way).
#[test]
fn views_fetched_whole_for_their_readers_fit_in_the_cache_together() {
    const N: u32 = 200;
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    noisy_pngs(&input, N, 5);
    noisy_pngs(&tmp.path().join("other"), N, 6);
    std::fs::rename(tmp.path().join("other/x"), input.join("y")).unwrap();
    let bytes: u64 = std::fs::read_dir(input.join("x"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let wh = tmp.path().join("wh");
    ingest_packed(&wh, "32KiB", &input);
    let specs: Vec<PathBuf> = ["x", "y"]
        .iter()
        .map(|label| {
            let p = tmp.path().join(format!("{label}.yaml"));
            let text = format!("name: {label}\nsidecars: []\nfilter: \"label = '{label}'\"\n");
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect();
    // Room for one view in 90% of the cache, not for both.
    let cache = (bytes * 3 / 2).to_string();
    let mnt = tmp.path().join("mnt");
    let _m = MountGuard::start_with(
        &wh,
        &[&specs[0], &specs[1]],
        &mnt,
        &["--cache-size", &cache],
    );
    let warmed = || counters(&mnt)["lakemount_warm_samples_total"];
    let read_all = |files: &[PathBuf]| {
        for f in files {
            let b = std::fs::read(f).unwrap();
            assert_eq!(sha256(&b), f.file_stem().unwrap().to_string_lossy());
        }
    };
    let x = shuffled(samples_of(&mnt.join("x")));
    assert_eq!(x.len(), N as usize);
    let mut k = 0;
    while warmed() == 0.0 {
        assert!(k < x.len(), "no warm-up after {k} random reads");
        read_all(&x[k..k + 1]);
        k += 1;
    }
    wait_for("the first view's warm-up", || warmed() >= f64::from(N));
    read_all(&x[k..]);
    let y = shuffled(samples_of(&mnt.join("y")));
    assert_eq!(y.len(), N as usize);
    let before = requests(&mnt);
    read_all(&y);
    // Give a (wrongly) started warm-up of the second view time to show.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        warmed(),
        f64::from(N),
        "the second view was fetched whole too"
    );
    assert!(
        requests(&mnt) > before + 16.0,
        "the second view's reads did not fetch"
    );
}
