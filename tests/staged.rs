//! The two-phase ingest (`stage` + `commit` + `gc`) through the command, on
//! every backend: staged partitions are invisible until the commit, which
//! publishes each sample once (duplicates across partitions and against
//! the table dropped) in one snapshot; a commit killed between its Lance
//! and Iceberg commits is re-run without appending anything twice; a stage
//! killed mid-partition leaves nothing visible and `gc` collects what it
//! wrote, never what a snapshot uses.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use common::*;

fn stage(
    wh: &Path,
    job: &str,
    partition: &str,
    dir: &Path,
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut c = bin();
    c.args(["stage", "--quiet", "--job", job, "--partition", partition])
        .args(wh_args(wh))
        .arg(dir);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Stages `dir` and returns the manifest path it printed.
fn stage_ok(wh: &Path, job: &str, partition: &str, dir: &Path) -> serde_json::Value {
    let out = stage(wh, job, partition, dir, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], true, "{doc}");
    doc
}

fn commit(wh: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = bin();
    c.args(["commit", "--json"]).args(wh_args(wh)).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn commit_ok(wh: &Path, args: &[&str]) -> serde_json::Value {
    let out = cli_ok("commit", wh, &[&["--json"], args].concat());
    serde_json::from_str(&out).unwrap()
}

fn check_ok(wh: &Path) {
    let text = cli_ok("check", wh, &[]);
    assert!(!text.contains("FAILED"), "{text}");
}

fn job_status(wh: &Path, job: &str) -> serde_json::Value {
    serde_json::from_str(&cli_ok("stage", wh, &["--list", "--job", job])).unwrap()
}

fn gc(wh: &Path, args: &[&str]) -> String {
    cli_ok("gc", wh, args)
}

/// The numbers in gc's summary line: (lance files, iceberg files, manifests, young).
fn gc_counts(line: &str) -> (u64, u64, u64, u64) {
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1], nums[2], nums[3])
}

fn published_ids(rows: &[Row]) -> Vec<String> {
    let mut ids: Vec<String> = rows
        .iter()
        .map(|r| r["content_id"].clone().unwrap())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn staged_partitions_publish_each_sample_once_in_one_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let wh = tmp.path().join("wh");
    // a: 0..10, b: 5..15 (5 shared with a), c: 20..26 plus a copy of 20.
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    pngs(&a, "x", 0, 10);
    pngs(&b, "y", 5, 10);
    pngs(&c, "z", 20, 6);
    std::fs::write(c.join("z").join("copy.png"), png(20, 12)).unwrap();

    let sa = stage_ok(&wh, "job1", "a", &a);
    let sb = stage_ok(&wh, "job1", "b", &b);
    let sc = stage_ok(&wh, "job1", "c", &c);
    assert_eq!(sc["duplicates"], 1, "{sc}");
    assert_eq!(sc["samples"], 6, "{sc}");
    // Staged is not published.
    let w = open(&wh).await;
    assert!(iceberg_rows(&w).await.is_empty());
    assert_eq!(snapshot_count(&w).await, 0);
    let st = job_status(&wh, "job1");
    assert_eq!(st["staged"].as_object().unwrap().len(), 3, "{st}");

    let r = commit_ok(&wh, &["--job", "job1"]);
    assert_eq!(r["added"], 21, "{r}");
    assert_eq!(r["duplicates"], 5, "{r}");
    assert_eq!(r["manifests"], 3, "{r}");
    assert_eq!(r["rewritten"], 1, "b lost rows to a: {r}");
    let w = open(&wh).await;
    let rows = iceberg_rows(&w).await;
    let ids = published_ids(&rows);
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids.len(), 21);
    assert_eq!(unique, ids, "a content id published twice");
    assert_eq!(snapshot_count(&w).await, 1, "one commit, one snapshot");
    // Labels come from the partition that published first.
    let label_of_5 = rows
        .iter()
        .find(|r| r["content_id"].as_deref() == Some(sha256(&png(5, 12)).as_str()))
        .unwrap()["label"]
        .clone();
    assert_eq!(label_of_5.as_deref(), Some("x"));
    // Every published sample has its embedding at the recorded version.
    let lance = lance_rows(&w).await;
    for id in &ids {
        assert!(lance.contains_key(id), "{id} has no Lance row");
    }
    check_ok(&wh);
    let st = job_status(&wh, "job1");
    assert!(st["staged"].as_object().unwrap().is_empty(), "{st}");
    assert_eq!(st["committed"], serde_json::json!(["a", "b", "c"]));
    for s in [&sa, &sb, &sc] {
        let again = commit(&wh, &[s["staged"].as_str().unwrap()], &[]);
        assert!(!again.status.success(), "a published manifest is gone");
        let err = String::from_utf8_lossy(&again.stderr);
        assert!(err.contains(s["staged"].as_str().unwrap()), "{err}");
    }

    // Staged against a table that already lists some of it.
    let d = tmp.path().join("d");
    pngs(&d, "w", 0, 3);
    pngs(&d, "w", 100, 4);
    let sd = stage_ok(&wh, "job2", "d", &d);
    let r = commit_ok(&wh, &[sd["staged"].as_str().unwrap()]);
    assert_eq!(
        (r["added"].as_u64(), r["duplicates"].as_u64()),
        (Some(4), Some(3)),
        "{r}"
    );
    let w = open(&wh).await;
    assert_eq!(iceberg_rows(&w).await.len(), 25);
    check_ok(&wh);

    // A mount shows exactly the published samples, bytes intact.
    let spec = tmp.path().join("s.yaml");
    std::fs::write(&spec, "name: s\nsidecars: [embedding]\n").unwrap();
    let m = MountGuard::start(&wh, &[&spec], &tmp.path().join("mnt"));
    let files: Vec<String> = walk(&m.mountpoint.join("s"))
        .into_keys()
        .filter(|p| p.ends_with(".png"))
        .collect();
    assert_eq!(files.len(), 25);
    for f in &files {
        let bytes = std::fs::read(m.mountpoint.join("s").join(f)).unwrap();
        assert!(f.contains(&sha256(&bytes)), "{f}");
    }
    m.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_killed_between_lance_and_iceberg_is_rerun_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let wh = tmp.path().join("wh");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    pngs(&a, "x", 0, 8);
    pngs(&b, "y", 8, 8);
    stage_ok(&wh, "j", "a", &a);
    stage_ok(&wh, "j", "b", &b);

    let out = commit(
        &wh,
        &["--job", "j"],
        &[("LAKEMOUNT_TEST_CRASH", "commit-after-lance")],
    );
    assert_eq!(out.status.signal(), Some(9), "{out:?}");
    let w = open(&wh).await;
    assert!(
        iceberg_rows(&w).await.is_empty(),
        "nothing visible after the crash"
    );
    let lance_after_crash = lance_row_count(&w).await;
    assert_eq!(lance_after_crash, 16, "the Lance commit happened");

    let r = commit_ok(&wh, &["--job", "j"]);
    assert_eq!(r["added"], 16, "{r}");
    assert_eq!(r["fragments"], 0, "nothing appended twice: {r}");
    assert!(r["fragments_already"].as_u64().unwrap() >= 2, "{r}");
    let w = open(&wh).await;
    assert_eq!(lance_row_count(&w).await, lance_after_crash);
    assert_eq!(iceberg_rows(&w).await.len(), 16);
    check_ok(&wh);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stage_killed_mid_partition_leaves_nothing_visible_and_gc_collects_it() {
    let tmp = tempfile::tempdir().unwrap();
    let wh = tmp.path().join("wh");
    let a = tmp.path().join("a");
    pngs(&a, "x", 0, 12);
    // Something published first, which gc must never touch.
    let base = tmp.path().join("base");
    pngs(&base, "b", 50, 5);
    ingest_cli(&wh, &[base.to_str().unwrap()]);

    let marker = tmp.path().join("crashed-once");
    let crash = format!("stage-before-manifest@{}", marker.display());
    let out = stage(
        &wh,
        "j",
        "a",
        &a,
        &[("LAKEMOUNT_TEST_CRASH", crash.as_str())],
    );
    assert_eq!(out.status.signal(), Some(9), "{out:?}");
    let st = job_status(&wh, "j");
    assert!(
        st["staged"].as_object().unwrap().is_empty(),
        "no manifest: {st}"
    );
    let w = open(&wh).await;
    assert_eq!(iceberg_rows(&w).await.len(), 5);

    // The retry (the marker exists now) runs through.
    let s = stage_ok(&wh, "j", "a", &a);
    commit_ok(&wh, &[s["staged"].as_str().unwrap()]);

    // Young garbage is kept; with no grace the dead attempt's files go.
    let (l, i, _, young) = gc_counts(&gc(&wh, &[]));
    assert_eq!((l, i), (0, 0));
    assert!(young >= 2, "the dead attempt's files are young: {young}");
    let (l, i, _, _) = gc_counts(&gc(&wh, &["--grace", "0s", "--dry-run"]));
    assert!(l >= 1 && i >= 1, "dry run sees the orphans: {l} {i}");
    let (l2, i2, _, _) = gc_counts(&gc(&wh, &["--grace", "0s"]));
    assert_eq!((l2, i2), (l, i));
    let (l3, i3, _, _) = gc_counts(&gc(&wh, &["--grace", "0s"]));
    assert_eq!((l3, i3), (0, 0), "nothing left to collect");

    // What snapshots use is intact: every row readable, check passes.
    let w = open(&wh).await;
    assert_eq!(iceberg_rows(&w).await.len(), 17);
    assert_eq!(lance_rows(&w).await.len(), 17);
    check_ok(&wh);
}

#[test]
fn bad_names_and_manifests_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let wh = tmp.path().join("wh");
    let a = tmp.path().join("a");
    pngs(&a, "x", 0, 2);
    let out = stage(&wh, "../up", "p", &a, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("job \"../up\""));
    stage_ok(&wh, "j", "p", &a);
    let out = commit(&wh, &["staging/nope.json"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("staging/nope.json"), "{err}");
}
