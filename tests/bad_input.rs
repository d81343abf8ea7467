//! Every kind of bad input gets a message naming the file or line, and
//! nothing of it becomes visible.

mod common;

use common::*;
use lakemount::encode::builtin::BuiltinEncoder;
use lakemount::ingest::{self, InputSource};
use lakemount::warehouse::{Warehouse, WarehouseConfig};

async fn run_err(cfg: &lakemount::ingest::IngestConfig, wh: &Warehouse) -> String {
    let err = ingest::run(cfg, wh, &BuiltinEncoder).await.unwrap_err();
    format!("{err:#}")
}

#[tokio::test]
async fn unreadable_and_empty_files_are_rejected_by_name_and_the_rest_ingested() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    image_folder(&dir, &[("ok", 2)]);
    std::fs::create_dir_all(dir.join("bad")).unwrap();
    std::fs::write(dir.join("bad/empty.png"), b"").unwrap();
    std::os::unix::fs::symlink(tmp.path(), dir.join("bad/dir-link.png")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("nowhere"), dir.join("bad/dangling.png")).unwrap();
    std::fs::write(dir.join("bad/corrupt.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let wh = open(&tmp.path().join("wh")).await;

    let r = ingest::run(&quiet(InputSource::Dir(dir.clone())), &wh, &BuiltinEncoder)
        .await
        .unwrap();
    assert_eq!(r.added, 2);
    let reasons: Vec<(String, String)> = r
        .rejected
        .iter()
        .map(|x| {
            (
                x.what.rsplit('/').next().unwrap().to_string(),
                x.reason.clone(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    let reason = |name: &str| reasons.iter().find(|(w, _)| w == name).unwrap().1.clone();
    assert_eq!(reason("empty.png"), "file is empty");
    assert!(
        reason("dir-link.png").starts_with("cannot read"),
        "{}",
        reason("dir-link.png")
    );
    assert_eq!(reason("dangling.png"), "file not found");
    assert!(
        reason("corrupt.png").contains("cannot decode image/png"),
        "{}",
        reason("corrupt.png")
    );
    let rows = iceberg_rows(&wh).await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["label"].as_deref() == Some("ok")));
    assert_eq!(lance_row_count(&wh).await, 2);
}

#[tokio::test]
async fn empty_directory_is_an_error_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("in/empty-label")).unwrap();
    let wh = open(&tmp.path().join("wh")).await;
    let msg = run_err(&quiet(InputSource::Dir(tmp.path().join("in"))), &wh).await;
    assert!(msg.contains("no files found in"), "{msg}");
    assert!(msg.contains("/in"), "{msg}");
    assert_eq!(snapshot_count(&wh).await, 0);
    assert_eq!(lance_row_count(&wh).await, 0);
}

#[tokio::test]
async fn missing_manifest_file_is_rejected_with_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("a.png"), png(1, 8)).unwrap();
    let m = tmp.path().join("m.csv");
    std::fs::write(&m, "path,label\na.png,x\nmissing.png,y\n").unwrap();
    let wh = open(&tmp.path().join("wh")).await;
    let r = ingest::run(&quiet(InputSource::Manifest(m)), &wh, &BuiltinEncoder)
        .await
        .unwrap();
    assert_eq!(r.added, 1);
    assert_eq!(r.rejected.len(), 1);
    assert!(
        r.rejected[0].what.contains("missing.png"),
        "{:?}",
        r.rejected
    );
    assert!(r.rejected[0].what.contains("line 3"), "{:?}", r.rejected);
    assert_eq!(r.rejected[0].reason, "file not found");
    let rows = iceberg_rows(&wh).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["label"].as_deref(), Some("x"));
}

#[tokio::test]
async fn manifest_structure_errors_name_the_line_and_commit_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("a.png"), png(1, 8)).unwrap();
    std::fs::write(tmp.path().join("b.png"), png(2, 8)).unwrap();
    let wh = open(&tmp.path().join("wh")).await;
    let cases = [
        (
            "short.csv",
            "path,label\na.png,x\nb.png\n",
            "short.csv line 3: expected 2 fields",
        ),
        (
            "nopath.csv",
            "file,label\na.png,x\n",
            "nopath.csv line 1: the header has no `path` (files) or `text` (text samples) column",
        ),
        (
            "emptypath.csv",
            "path,label\na.png,x\n,y\n",
            "emptypath.csv line 3: `path` is empty",
        ),
        (
            "bad.jsonl",
            "{\"path\": \"a.png\"}\n{\"path\": \"b.png\",\n",
            "bad.jsonl line 2: not valid JSON",
        ),
        (
            "array.jsonl",
            "[1, 2]\n",
            "array.jsonl line 1: expected a JSON object",
        ),
        (
            "nested.jsonl",
            "{\"path\": \"a.png\", \"box\": [1, 2]}\n",
            "nested.jsonl line 1: `box` is a nested value",
        ),
        (
            "mixed.jsonl",
            "{\"path\": \"a.png\", \"q\": 1}\n{\"path\": \"b.png\", \"q\": \"hi\"}\n",
            "mixed.jsonl line 2: column `q`: is string here but long",
        ),
        (
            "reserved.csv",
            "path,uri\na.png,x\n",
            "reserved.csv line 2: column `uri` is computed by lakemount",
        ),
        ("empty.csv", "path,label\n", "empty.csv has no rows"),
    ];
    for (name, text, expected) in cases {
        let m = tmp.path().join(name);
        std::fs::write(&m, text).unwrap();
        let msg = run_err(&quiet(InputSource::Manifest(m)), &wh).await;
        assert!(
            msg.contains(expected),
            "{name}: got {msg:?}, expected {expected:?}"
        );
    }
    assert_eq!(snapshot_count(&wh).await, 0);
    assert_eq!(lance_row_count(&wh).await, 0);
}

#[tokio::test]
async fn extra_column_type_conflict_with_the_table_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("a.png"), png(1, 8)).unwrap();
    std::fs::write(tmp.path().join("b.png"), png(2, 8)).unwrap();
    let wh = open(&tmp.path().join("wh")).await;
    let first = tmp.path().join("first.csv");
    std::fs::write(&first, "path,annotation_quality_score\na.png,0.5\n").unwrap();
    ingest::run(&quiet(InputSource::Manifest(first)), &wh, &BuiltinEncoder)
        .await
        .unwrap();
    let snaps = snapshot_count(&wh).await;

    let second = tmp.path().join("second.csv");
    std::fs::write(&second, "path,annotation_quality_score\nb.png,high\n").unwrap();
    let msg = run_err(&quiet(InputSource::Manifest(second)), &wh).await;
    let table = table_name(&tmp.path().join("wh"));
    assert!(
        msg.contains(&format!("second.csv line 2: column `annotation_quality_score` is double in table {table}, got \"high\"")),
        "{msg}"
    );
    assert_eq!(snapshot_count(&wh).await, snaps);
    assert_eq!(iceberg_rows(&wh).await.len(), 1);
    assert_eq!(lance_row_count(&wh).await, 1);

    // An integer fits a double column.
    let third = tmp.path().join("third.csv");
    std::fs::write(&third, "path,annotation_quality_score\nb.png,2\n").unwrap();
    let r = ingest::run(&quiet(InputSource::Manifest(third)), &wh, &BuiltinEncoder)
        .await
        .unwrap();
    assert_eq!(r.added, 1);
}

#[tokio::test]
async fn unwritable_warehouse_is_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let wh = file.join("warehouse");
    let err = Warehouse::open(&WarehouseConfig::new(wh.display().to_string()), true)
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("is not writable"), "{msg}");
    assert!(msg.contains("a-file/warehouse"), "{msg}");
    assert!(!wh.exists());
}

#[tokio::test]
async fn embeddings_that_do_not_pair_with_the_manifest_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("a.png"), png(1, 8)).unwrap();
    let m = tmp.path().join("m.csv");
    std::fs::write(&m, "path\na.png\n").unwrap();
    let npy = lakemount::npy::write_vector(&[1.0, 2.0]);
    // write_vector gives shape (2,): one row of two; add a second manifest row.
    std::fs::write(tmp.path().join("e.npy"), &npy).unwrap();
    std::fs::write(&m, "path\na.png\na.png\n").unwrap();
    let wh = open(&tmp.path().join("wh")).await;
    let mut cfg = quiet(InputSource::Manifest(m));
    cfg.embeddings = Some(tmp.path().join("e.npy"));
    let msg = run_err(&cfg, &wh).await;
    assert!(
        msg.contains("e.npy has 1 rows but the manifest has 2 rows"),
        "{msg}"
    );

    // A table made with the built-in encoder refuses vectors of another model
    // (and so of another dimension).
    image_folder(&tmp.path().join("in"), &[("x", 1)]);
    ingest::run(
        &quiet(InputSource::Dir(tmp.path().join("in"))),
        &wh,
        &BuiltinEncoder,
    )
    .await
    .unwrap();
    std::fs::write(tmp.path().join("m.csv"), "path\na.png\n").unwrap();
    let msg = run_err(&cfg, &wh).await;
    assert!(
        msg.contains("holds embeddings from `lakemount-builtin-v1`")
            && msg.contains("never mixes models"),
        "{msg}"
    );
    assert_eq!(iceberg_rows(&wh).await.len(), 1);
}
