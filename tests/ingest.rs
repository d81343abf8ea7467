//! Ingest against a real SQLite catalog and a real Lance dataset on disk.

mod common;

use std::collections::{HashMap, HashSet};

use common::*;
use lakemount::encode::Encoder;
use lakemount::encode::builtin::BuiltinEncoder;
use lakemount::ingest::{self, InputSource};

#[tokio::test]
async fn directory_ingest_reads_back_equal() {
    let tmp = tempfile::tempdir().unwrap();
    let files = image_folder(
        &tmp.path().join("in"),
        &[("cat", 5), ("dog", 4), ("eel", 3)],
    );
    let wh = open(&tmp.path().join("wh")).await;

    // One blob object per sample, to compare with the blob store's URIs.
    let mut config = quiet(InputSource::Dir(tmp.path().join("in")));
    config.pack = ingest::PackMode::Off;
    let report = ingest::run(&config, &wh, &BuiltinEncoder).await.unwrap();
    assert_eq!(report.added, 12);
    assert_eq!(report.duplicates, 0);
    assert!(report.rejected.is_empty());

    let rows = iceberg_rows(&wh).await;
    assert_eq!(rows.len(), 12);
    let by_id: HashMap<String, &Row> = rows
        .iter()
        .map(|r| (r["content_id"].clone().unwrap(), r))
        .collect();
    let lance = lance_rows(&wh).await;
    assert_eq!(lance.len(), 12);
    for (path, bytes) in &files {
        let id = sha256(bytes);
        let row = by_id
            .get(&id)
            .unwrap_or_else(|| panic!("{path} not ingested"));
        let label = path.rsplit('/').nth(1).unwrap();
        assert_eq!(row["label"].as_deref(), Some(label));
        assert_eq!(row["media_type"].as_deref(), Some("image/png"));
        assert_eq!(row["size_bytes"], Some(bytes.len().to_string()));
        assert_eq!(
            row["embedding_model"].as_deref(),
            Some("lakemount-builtin-v1")
        );
        let split = row["split"].clone().unwrap();
        assert_eq!(split, ingest::SplitRatios::default().assign(&id));
        // The blob store holds the original bytes under the row's URI.
        let uri = row["uri"].clone().unwrap();
        assert_eq!(uri, wh.blobs.uri(&id));
        assert_eq!(
            &read_blob(&tmp.path().join("wh"), &id).await.unwrap(),
            bytes
        );
        // The Lance embedding is what the encoder computes for these bytes.
        let (emb, inline) = &lance[&id];
        assert_eq!(emb, &BuiltinEncoder.encode(bytes, "image/png").unwrap());
        assert!(inline.is_none());
    }

    // Re-ingesting the same bytes adds nothing and commits nothing.
    let snaps = snapshot_count(&wh).await;
    let again = ingest::run(
        &quiet(InputSource::Dir(tmp.path().join("in"))),
        &wh,
        &BuiltinEncoder,
    )
    .await
    .unwrap();
    assert_eq!((again.added, again.duplicates), (0, 12));
    assert_eq!(again.snapshot_id, None);
    assert_eq!(snapshot_count(&wh).await, snaps);
    assert_eq!(iceberg_rows(&wh).await.len(), 12);
    assert_eq!(lance_row_count(&wh).await, 12);
}

#[tokio::test]
async fn snapshot_summary_records_the_lance_version() {
    let tmp = tempfile::tempdir().unwrap();
    image_folder(&tmp.path().join("a"), &[("x", 3)]);
    let wh = open(&tmp.path().join("wh")).await;
    let mut cfg = quiet(InputSource::Dir(tmp.path().join("a")));
    cfg.batch_size = 2;
    let r = ingest::run(&cfg, &wh, &BuiltinEncoder).await.unwrap();
    // Two batches: two Lance versions, two snapshots, each pointing at its own.
    let table = iceberg::Catalog::load_table(wh.catalog.as_ref(), &wh.table)
        .await
        .unwrap();
    let snaps = lakemount::catalog::snapshots(&table);
    assert_eq!(snaps.len(), 2);
    assert_eq!(snaps[0].snapshot_id, r.snapshot_id.unwrap());
    assert_eq!(snaps[0].lance_version, r.lance_version);
    assert!(snaps[1].lance_version.unwrap() < snaps[0].lance_version.unwrap());
    assert_eq!(snaps[0].total_rows, Some(3));
}

#[tokio::test]
async fn csv_manifest_with_extra_columns_and_splits() {
    let tmp = tempfile::tempdir().unwrap();
    let media = tmp.path().join("m");
    std::fs::create_dir_all(media.join("sub")).unwrap();
    std::fs::write(media.join("sub/a.png"), png(1, 16)).unwrap();
    std::fs::write(media.join("b.png"), png(2, 16)).unwrap();
    std::fs::write(media.join("c.txt"), b"a short caption about a cat").unwrap();
    std::fs::write(
        media.join("d.wav"),
        b"RIFF\x24\0\0\0WAVEfmt some audio-ish bytes",
    )
    .unwrap();
    let manifest = media.join("manifest.csv");
    std::fs::write(
        &manifest,
        "path,label,split,source,annotation_quality_score,reviewed,votes,note\n\
         sub/a.png,cat,train,crawl-1,0.9,true,3,first\n\
         b.png,dog,val,crawl-2,0.25,false,,\n\
         c.txt,cat,test,,1,true,7,\"with, comma\"\n\
         d.wav,bird,,crawl-1,,,-2,x\n",
    )
    .unwrap();
    let wh = open(&tmp.path().join("wh")).await;
    let r = ingest::run(
        &quiet(InputSource::Manifest(manifest)),
        &wh,
        &BuiltinEncoder,
    )
    .await
    .unwrap();
    assert_eq!(r.added, 4, "{:?}", r.rejected);

    let rows = iceberg_rows(&wh).await;
    let by_label_src: HashMap<(Option<String>, Option<String>), &Row> = rows
        .iter()
        .map(|r| ((r["label"].clone(), r["note"].clone()), r))
        .collect();
    let a = by_label_src[&(Some("cat".into()), Some("first".into()))];
    assert_eq!(a["split"].as_deref(), Some("train"));
    assert_eq!(a["source"].as_deref(), Some("crawl-1"));
    assert_eq!(a["annotation_quality_score"].as_deref(), Some("0.9"));
    assert_eq!(a["reviewed"].as_deref(), Some("true"));
    assert_eq!(a["votes"].as_deref(), Some("3"));
    let b = by_label_src[&(Some("dog".into()), None)];
    assert_eq!(b["split"].as_deref(), Some("val"));
    assert_eq!(b["votes"], None);
    assert_eq!(b["reviewed"].as_deref(), Some("false"));
    let c = by_label_src[&(Some("cat".into()), Some("with, comma".into()))];
    assert_eq!(c["media_type"].as_deref(), Some("text/plain"));
    assert_eq!(c["annotation_quality_score"].as_deref(), Some("1"));
    let d = by_label_src[&(Some("bird".into()), Some("x".into()))];
    assert_eq!(d["media_type"].as_deref(), Some("audio/wav"));
    // No split column value: assigned from the content hash.
    let id = d["content_id"].clone().unwrap();
    assert_eq!(
        d["split"].as_deref(),
        Some(ingest::SplitRatios::default().assign(&id))
    );

    // The schema carries typed columns.
    let table = iceberg::Catalog::load_table(wh.catalog.as_ref(), &wh.table)
        .await
        .unwrap();
    let schema = table.metadata().current_schema();
    let ty = |n: &str| schema.field_by_name(n).unwrap().field_type.to_string();
    assert_eq!(ty("annotation_quality_score"), "double");
    assert_eq!(ty("reviewed"), "boolean");
    assert_eq!(ty("votes"), "long");
    assert_eq!(ty("note"), "string");
}

#[tokio::test]
async fn jsonl_manifest_with_precomputed_embeddings_and_inline_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let media = tmp.path().join("m");
    std::fs::create_dir_all(&media).unwrap();
    let blobs: Vec<Vec<u8>> = (0..3).map(|i| png(10 + i, 20)).collect();
    let mut lines = String::new();
    for (i, b) in blobs.iter().enumerate() {
        std::fs::write(media.join(format!("{i}.png")), b).unwrap();
        lines.push_str(&format!(
            "{{\"path\": \"{i}.png\", \"label\": \"l{i}\", \"score\": {}, \"tag\": null}}\n",
            i as f64 + 0.5
        ));
    }
    std::fs::write(media.join("m.jsonl"), lines).unwrap();
    // A 3x4 float32 matrix in .npy format.
    let vectors: Vec<Vec<f32>> = (0..3).map(|i| vec![i as f32, 1.0, -1.0, 0.5]).collect();
    let mut npy = Vec::new();
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }";
    let pad = 64 - (10 + header.len() + 1) % 64;
    npy.extend_from_slice(b"\x93NUMPY\x01\x00");
    npy.extend_from_slice(&((header.len() + pad + 1) as u16).to_le_bytes());
    npy.extend_from_slice(header.as_bytes());
    npy.extend(std::iter::repeat_n(b' ', pad));
    npy.push(b'\n');
    for v in &vectors {
        for x in v {
            npy.extend_from_slice(&x.to_le_bytes());
        }
    }
    std::fs::write(tmp.path().join("emb.npy"), npy).unwrap();

    let wh = open(&tmp.path().join("wh")).await;
    let mut cfg = quiet(InputSource::Manifest(media.join("m.jsonl")));
    cfg.embeddings = Some(tmp.path().join("emb.npy"));
    cfg.embedding_model = Some("clip-test".into());
    cfg.inline_blobs = true;
    let r = ingest::run(&cfg, &wh, &BuiltinEncoder).await.unwrap();
    assert_eq!(r.added, 3);

    let lance = lance_rows(&wh).await;
    let rows = iceberg_rows(&wh).await;
    for (i, b) in blobs.iter().enumerate() {
        let id = sha256(b);
        let (emb, inline) = &lance[&id];
        assert_eq!(emb, &vectors[i]);
        assert_eq!(inline.as_deref(), Some(b.as_slice()));
        let row = rows
            .iter()
            .find(|r| r["content_id"].as_deref() == Some(&id))
            .unwrap();
        assert_eq!(row["embedding_model"].as_deref(), Some("clip-test"));
        assert_eq!(row["score"], Some((i as f64 + 0.5).to_string()));
        assert!(row["uri"].as_deref().unwrap().starts_with("lance:"));
    }
    // Inline mode writes nothing to the blob store.
    for row in &rows {
        let id = row["content_id"].clone().unwrap();
        assert!(read_blob(&tmp.path().join("wh"), &id).await.is_none());
    }
}

#[tokio::test]
async fn crash_between_lance_and_iceberg_leaves_nothing_visible_and_rerun_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let files = image_folder(&tmp.path().join("in"), &[("a", 4), ("b", 3)]);
    let wh = open(&tmp.path().join("wh")).await;

    let cfg = quiet(InputSource::Dir(tmp.path().join("in")));
    // The table exists first (its creation is not what fails).
    let model = lakemount::encode::Encoder::model_id(&BuiltinEncoder);
    lakemount::catalog::ensure_table(
        wh.catalog.as_ref(),
        &wh.table,
        None,
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
    let err = ingest::run(&cfg, &dying, &BuiltinEncoder)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("injected fault"), "{err:#}");
    // Lance has the rows, but no Iceberg snapshot lists them: invisible.
    assert_eq!(lance_row_count(&wh).await, 7);
    assert_eq!(snapshot_count(&wh).await, 0);
    assert!(iceberg_rows(&wh).await.is_empty());

    let r = ingest::run(&cfg, &wh, &BuiltinEncoder).await.unwrap();
    assert_eq!(r.added, 7);
    assert_eq!(r.adopted, 7);
    // Completed without duplicating anything in either table.
    assert_eq!(lance_row_count(&wh).await, 7);
    let rows = iceberg_rows(&wh).await;
    let ids: HashSet<String> = rows
        .iter()
        .map(|r| r["content_id"].clone().unwrap())
        .collect();
    assert_eq!(rows.len(), 7);
    let expected: HashSet<String> = files.values().map(|b| sha256(b)).collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn duplicate_bytes_within_one_input_are_published_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    std::fs::create_dir_all(dir.join("x")).unwrap();
    std::fs::create_dir_all(dir.join("y")).unwrap();
    std::fs::write(dir.join("x/1.png"), png(5, 8)).unwrap();
    std::fs::write(dir.join("y/1.png"), png(5, 8)).unwrap();
    let wh = open(&tmp.path().join("wh")).await;
    let r = ingest::run(&quiet(InputSource::Dir(dir)), &wh, &BuiltinEncoder)
        .await
        .unwrap();
    assert_eq!((r.added, r.duplicates), (1, 1));
    assert_eq!(iceberg_rows(&wh).await.len(), 1);
}
