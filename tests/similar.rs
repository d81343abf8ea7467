//! Similarity views, vector indexes, pins and time travel.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use common::*;
use lakemount::encode::Encoder;
use lakemount::encode::builtin::BuiltinEncoder;

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    wh: PathBuf,
    /// content id -> (label, bytes)
    samples: HashMap<String, (String, Vec<u8>)>,
}

fn fixture(per_label: u32) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let files = image_folder(
        &root.join("in"),
        &[("a", per_label), ("b", per_label), ("c", per_label)],
    );
    let wh = root.join("wh");
    ingest_cli(&wh, &[root.join("in").to_str().unwrap()]);
    let samples = files
        .into_iter()
        .map(|(path, bytes)| {
            let label = path.rsplit('/').nth(1).unwrap().to_string();
            (sha256(&bytes), (label, bytes))
        })
        .collect();
    Fixture {
        _tmp: tmp,
        root,
        wh,
        samples,
    }
}

/// Brute force, written independently of the library: ids ordered by
/// (distance, id) under SQL-free, textbook definitions of each metric.
fn brute_force(
    f: &Fixture,
    query: &[f32],
    metric: &str,
    k: usize,
    keep: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut scored: Vec<(f64, String)> = f
        .samples
        .iter()
        .filter(|(_, (label, _))| keep(label))
        .map(|(id, (_, bytes))| {
            let v = BuiltinEncoder.encode(bytes, "image/png").unwrap();
            let dot: f64 = query
                .iter()
                .zip(&v)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            let d = match metric {
                "l2" => query
                    .iter()
                    .zip(&v)
                    .map(|(a, b)| f64::from(a - b).powi(2))
                    .sum(),
                "dot" => -dot,
                _ => {
                    let nq: f64 = query
                        .iter()
                        .map(|a| f64::from(*a).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    let nv: f64 = v.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>().sqrt();
                    1.0 - dot / (nq * nv)
                }
            };
            (d, id.clone())
        })
        .collect();
    scored.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)));
    scored.into_iter().take(k).map(|(_, id)| id).collect()
}

fn spec(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, body).unwrap();
    p
}

/// The ids of a resolved spec in rank order, from `_index.jsonl` via `lakemount ls` + mount-free resolve.
async fn ranked(wh: &Path, spec: &Path) -> (Vec<String>, serde_json::Value) {
    let w = lakemount::warehouse::Warehouse::open(&wh_config(wh), false)
        .await
        .unwrap();
    let s = lakemount::spec::load(spec, &table_name(wh)).unwrap();
    let view = resolve(&w, &s).await.unwrap_or_else(|e| panic!("{e:#}"));
    let index = view.index_bytes(0..u64::MAX);
    // The listing is rendered on demand; the receipt's digest covers exactly it.
    assert_eq!(sha256(&index), view.listing_sha256());
    let ids = std::str::from_utf8(&index)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["content_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    (ids, serde_json::from_slice(&view.receipt()).unwrap())
}

#[tokio::test]
async fn exact_search_equals_brute_force_for_every_metric_and_query_kind() {
    let f = fixture(8);
    let mut ids: Vec<&String> = f.samples.keys().collect();
    ids.sort();
    let query_id = ids[3].clone();
    let query_vec = BuiltinEncoder
        .encode(&f.samples[&query_id].1, "image/png")
        .unwrap();
    for metric in ["cosine", "l2", "dot"] {
        let s = spec(
            &f.root,
            &format!("s-{metric}"),
            &format!(
                "similar:\n  to: {{content_id: \"{query_id}\"}}\n  k: 7\n  metric: {metric}\n"
            ),
        );
        let (got, receipt) = ranked(&f.wh, &s).await;
        assert_eq!(
            got,
            brute_force(&f, &query_vec, metric, 7, |_| true),
            "{metric}"
        );
        assert_eq!(
            got[0], query_id,
            "{metric}: a sample is its own nearest neighbour"
        );
        assert_eq!(receipt["similar"]["search"], "exact");
    }

    // to: vector, from an .npy file next to the spec (relative path).
    let other = write_query_npy(&f.root);
    let s = spec(
        &f.root,
        "vec",
        "similar: {to: {vector: q.npy}, k: 5, metric: l2}\n",
    );
    assert_eq!(
        ranked(&f.wh, &s).await.0,
        brute_force(&f, &other, "l2", 5, |_| true)
    );

    // to: file, embedded with the table's encoder.
    std::fs::write(f.root.join("q.png"), lakemount_test_png()).unwrap();
    let s = spec(&f.root, "file", "similar: {to: {file: q.png}, k: 5}\n");
    assert_eq!(
        ranked(&f.wh, &s).await.0,
        brute_force(&f, &other, "cosine", 5, |_| true)
    );
}

fn lakemount_test_png() -> Vec<u8> {
    png(9999, 24)
}

/// Writes the test image's embedding to `dir/q.npy` and returns it.
fn write_query_npy(dir: &Path) -> Vec<f32> {
    let q = BuiltinEncoder
        .encode(&lakemount_test_png(), "image/png")
        .unwrap();
    std::fs::write(dir.join("q.npy"), lakemount::npy::write_vector(&q)).unwrap();
    q
}

#[tokio::test]
async fn filter_first_then_nearest_never_leaves_the_filter() {
    let f = fixture(8);
    let q = write_query_npy(&f.root);
    let s = spec(
        &f.root,
        "filtered",
        "filter: \"label IN ('a', 'c')\"\nsimilar: {to: {vector: q.npy}, k: 5}\nlayout: '{rank}-{label}-{content_id}{ext}'\n",
    );
    let (got, _) = ranked(&f.wh, &s).await;
    assert_eq!(
        got,
        brute_force(&f, &q, "cosine", 5, |l| l == "a" || l == "c")
    );
    // k larger than what passes the filter: exactly the filtered rows.
    let s = spec(
        &f.root,
        "all-b",
        "filter: \"label = 'b'\"\nsimilar: {to: {vector: q.npy}, k: 100}\n",
    );
    let (got, _) = ranked(&f.wh, &s).await;
    assert_eq!(got.len(), 8);
    assert!(got.iter().all(|id| f.samples[id].0 == "b"));
    // The rank layout names files in rank order; metadata carries rank and distance.
    let listing = ls(&f.wh, &[&f.root.join("filtered.yaml")]);
    let files: Vec<&String> = listing.keys().filter(|p| p.ends_with(".png")).collect();
    assert_eq!(files.len(), 5);
    assert!(files[0].starts_with("filtered/0-"), "{files:?}");
    let mnt = f.root.join("mnt");
    let _g = MountGuard::start(&f.wh, &[&f.root.join("filtered.yaml")], &mnt);
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(mnt.join(files[4].replace(".png", ".json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["rank"], 4);
    assert!(meta["distance"].as_f64().unwrap() >= 0.0);
}

#[tokio::test]
async fn encoder_and_dimension_mismatches_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("a.png"), png(1, 8)).unwrap();
    std::fs::write(tmp.path().join("m.csv"), "path\na.png\n").unwrap();
    let mut npy = lakemount::npy::write_vector(&[1.0, 0.0, 0.0, 0.0]);
    std::fs::write(tmp.path().join("e.npy"), &npy).unwrap();
    let wh = tmp.path().join("wh");
    ingest_cli(
        &wh,
        &[
            "--manifest",
            tmp.path().join("m.csv").to_str().unwrap(),
            "--embeddings",
            tmp.path().join("e.npy").to_str().unwrap(),
            "--embedding-model",
            "clip-vit-b32",
        ],
    );
    let s = spec(tmp.path(), "f", "similar: {to: {file: a.png}, k: 1}\n");
    let out = bin().arg("ls").args(wh_args(&wh)).arg(&s).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`similar.to.file`") && err.contains("embedded by `clip-vit-b32`"),
        "{err}"
    );

    npy = lakemount::npy::write_vector(&[1.0; 8]);
    std::fs::write(tmp.path().join("q8.npy"), &npy).unwrap();
    let s = spec(tmp.path(), "v", "similar: {to: {vector: q8.npy}, k: 1}\n");
    let out = bin().arg("ls").args(wh_args(&wh)).arg(&s).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the query has 8 dimensions, the table's embeddings have 4"),
        "{err}"
    );
}

#[tokio::test]
async fn pin_then_ingest_and_index_keeps_listing_bytes_and_receipt() {
    // 300 samples: enough rows to train an index.
    let f = fixture(100);
    let q = write_query_npy(&f.root);
    let s = spec(
        &f.root,
        "sim",
        "# nearest to the query\nname: sim\nsnapshot: latest\nfilter: \"label != 'b'\"\nsimilar: {to: {vector: q.npy}, k: 20}\n",
    );
    let pinned = f.root.join("sim.pinned.yaml");
    pin_cli(&f.wh, &s, &pinned);
    let text = std::fs::read_to_string(&pinned).unwrap();
    let snap = snapshot_ids(&f.wh)[0];
    assert!(
        text.starts_with("# nearest to the query\nname: sim\n"),
        "{text}"
    );
    assert!(text.contains(&format!("snapshot: {snap}")), "{text}");
    assert!(
        text.contains("lance_version: 1") && text.contains(&lakemount::similar::query_digest(&q)),
        "{text}"
    );

    let before_listing = ls(&f.wh, &[&pinned]);
    let (before_ids, before_receipt) = ranked(&f.wh, &pinned).await;
    assert_eq!(before_ids, brute_force(&f, &q, "cosine", 20, |l| l != "b"));

    // More data, then an index.
    image_folder(&f.root.join("more"), &[("a", 0)]);
    std::fs::create_dir_all(f.root.join("more/a")).unwrap();
    for i in 0..5 {
        std::fs::write(f.root.join(format!("more/a/n{i}.png")), png(7000 + i, 24)).unwrap();
    }
    ingest_cli(&f.wh, &[f.root.join("more").to_str().unwrap()]);
    let out = bin().args(["index"]).args(wh_args(&f.wh)).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(ls(&f.wh, &[&pinned]), before_listing);
    let (after_ids, after_receipt) = ranked(&f.wh, &pinned).await;
    assert_eq!(after_ids, before_ids);
    assert_eq!(after_receipt, before_receipt);
    let mnt = f.root.join("mnt");
    {
        let _g = MountGuard::start(&f.wh, &[&pinned], &mnt);
        for (p, _) in before_listing.iter().filter(|(p, _)| p.ends_with(".png")) {
            let id = p.rsplit('/').next().unwrap().trim_end_matches(".png");
            assert_eq!(std::fs::read(mnt.join(p)).unwrap(), f.samples[id].1);
        }
        let receipt = std::fs::read(mnt.join("sim/_receipt.json")).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&receipt).unwrap(),
            before_receipt
        );
    }

    // The unpinned spec now sees the new rows and searches with the index,
    // still only inside its filter, with high overlap with exact search.
    let (latest_ids, latest_receipt) = ranked(&f.wh, &s).await;
    assert!(
        latest_receipt["similar"]["search"]
            .as_str()
            .unwrap()
            .starts_with("ivf_pq"),
        "{latest_receipt}"
    );
    assert_eq!(latest_ids.len(), 20);
    let exact: Vec<String> = brute_force_with_new(&f, &q, 20);
    let overlap = latest_ids.iter().filter(|id| exact.contains(id)).count();
    assert!(
        overlap >= 16,
        "indexed search found {overlap}/20 of the exact neighbours"
    );

    // Time travel: a spec pinned to the first snapshot shows the older dataset.
    let old = spec(&f.root, "old", &format!("snapshot: {snap}\n"));
    let new = spec(&f.root, "new", "snapshot: latest\n");
    let count = |m: BTreeMap<String, u64>| m.keys().filter(|p| p.ends_with(".png")).count();
    assert_eq!(count(ls(&f.wh, &[&old])), 300);
    assert_eq!(count(ls(&f.wh, &[&new])), 305);
}

/// Exact neighbours among all rows now in the table with label != 'b'.
fn brute_force_with_new(f: &Fixture, q: &[f32], k: usize) -> Vec<String> {
    let mut all = f.samples.clone();
    for i in 0..5 {
        let b = png(7000 + i, 24);
        all.insert(sha256(&b), ("a".into(), b));
    }
    let g = Fixture {
        _tmp: tempfile::tempdir().unwrap(),
        root: f.root.clone(),
        wh: f.wh.clone(),
        samples: all,
    };
    brute_force(&g, q, "cosine", k, |l| l != "b")
}

#[tokio::test]
async fn large_candidate_sets_use_the_flat_kernel_and_stay_exact() {
    use lakemount::similar::{SearchParams, rank};
    use lakemount::spec::Metric;
    let tmp = tempfile::tempdir().unwrap();
    let uri = tmp.path().join("v.lance").display().to_string();
    let mut x = 12345u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let rows: Vec<lakemount::vectors::VectorRow> = (0..10_000)
        .map(|i| lakemount::vectors::VectorRow {
            content_id: format!("{i:064x}"),
            embedding: (0..8).map(|_| next()).collect(),
            uri: "x://".into(),
            media_type: "application/octet-stream".into(),
            size_bytes: 0,
            inline: None,
        })
        .collect();
    let ds = lakemount::vectors::append(&uri, &Default::default(), None, &rows, 8)
        .await
        .unwrap();
    let ids: std::collections::HashMap<String, u64> = lakemount::vectors::row_ids_by_content(&ds)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, row)| (id.hex(), row))
        .collect();
    // Every other row is allowed.
    let candidates: Vec<(String, u64)> = rows
        .iter()
        .step_by(2)
        .map(|r| (r.content_id.clone(), ids[&r.content_id]))
        .collect();
    // More candidates than rank() scores by fetching them all: the flat
    // kernel (k + margin from Lance, then exact re-scoring) decides.
    assert!(candidates.len() > lakemount::similar::TAKE_ALL_LIMIT);
    let q: Vec<f32> = (0..8).map(|_| next()).collect();
    for metric in [Metric::Cosine, Metric::L2, Metric::Dot] {
        let p = SearchParams {
            k: 25,
            metric,
            nprobes: 1,
            refine: 1,
        };
        let got: Vec<String> = rank(&ds, None, &candidates, &q, p)
            .await
            .unwrap()
            .into_iter()
            .map(|(i, _)| candidates[i].0.clone())
            .collect();
        let mut want: Vec<(f32, String)> = candidates
            .iter()
            .map(|(id, _)| {
                let v = &rows.iter().find(|r| &r.content_id == id).unwrap().embedding;
                (lakemount::similar::distance(metric, &q, v), id.clone())
            })
            .collect();
        want.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let want: Vec<String> = want.into_iter().take(25).map(|w| w.1).collect();
        assert_eq!(got, want, "{metric:?}");
    }
}
