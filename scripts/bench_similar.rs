//! Similarity search benchmark: exact vs IVF-PQ, latency and recall.
//!
//! Generates `--rows` clustered vectors of `--dim` dimensions (a Gaussian
//! mixture: real embeddings cluster, uniform noise does not), writes them to
//! a Lance dataset through lakemount's own writer, builds the index with the
//! parameters `lakemount index` derives, then runs `--queries` queries near
//! random rows through lakemount's ranking (the path a similarity view
//! takes): exact (no index) and indexed (default nprobes/refine). Reports
//! median latencies, their ratio, and recall@k of indexed against exact.
//!
//! cargo run --release --example bench_similar -- [--rows 200000] [--dim 512] [--k 100] [--queries 30]
//!     [--clusters 1000] [--spread 35]   (within-cluster spread, in hundredths)

use std::time::Instant;

use lakemount::Result;
use lakemount::similar::{self, IndexParams, SearchParams};
use lakemount::spec::Metric;
use lakemount::vectors::{self, VectorRow};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.unit().max(1e-7), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let rows = arg("--rows", 200_000);
    let dim = arg("--dim", 512);
    let k = arg("--k", 100);
    let queries = arg("--queries", 30);
    let clusters = arg("--clusters", 1000);
    // Within-cluster spread in hundredths of the centres' spread.
    let spread = arg("--spread", 35) as f32 / 100.0;
    let dir = tempfile::tempdir()?;
    let uri = dir.path().join("bench.lance").display().to_string();
    let storage = lakemount::storage::Storage::default();

    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..dim).map(|_| rng.normal()).collect())
        .collect();
    let make = |rng: &mut Rng, i: usize| -> Vec<f32> {
        let c = &centres[(rng.next() % clusters as u64) as usize];
        let _ = i;
        c.iter().map(|x| x + spread * rng.normal()).collect()
    };
    let start = Instant::now();
    let mut existing = None;
    let mut all: Vec<Vec<f32>> = Vec::with_capacity(rows);
    for chunk_start in (0..rows).step_by(20_000) {
        let n = 20_000.min(rows - chunk_start);
        let batch: Vec<VectorRow> = (chunk_start..chunk_start + n)
            .map(|i| {
                let v = make(&mut rng, i);
                all.push(v.clone());
                VectorRow {
                    content_id: format!("{i:064x}"),
                    embedding: v,
                    uri: format!("bench://{i}"),
                    media_type: "application/octet-stream".into(),
                    size_bytes: 0,
                    inline: None,
                }
            })
            .collect();
        existing = Some(vectors::append(&uri, &storage, existing.take(), &batch, dim).await?);
    }
    eprintln!(
        "wrote {rows} x {dim} vectors in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    let ds = existing.expect("dataset written");
    let ids = vectors::row_ids_by_content(&ds).await?;
    let mut candidates: Vec<(String, u64)> =
        ids.into_iter().map(|(id, row)| (id.hex(), row)).collect();
    candidates.sort();

    let params = IndexParams::derive(rows, dim, Metric::Cosine);
    let start = Instant::now();
    let version = similar::build_index(&uri, &storage, params, false).await?;
    let build_s = start.elapsed().as_secs_f64();
    eprintln!(
        "built IVF-PQ ({} partitions, {} sub-vectors) in {build_s:.1} s",
        params.partitions, params.sub_vectors
    );
    let indexed_ds = ds.checkout_version(version).await?;

    let p = SearchParams {
        k,
        metric: Metric::Cosine,
        nprobes: similar::DEFAULT_NPROBES,
        refine: similar::DEFAULT_REFINE,
    };
    let (mut exact_ms, mut index_ms, mut recalls) = (Vec::new(), Vec::new(), Vec::new());
    for q in 0..queries {
        let base = &all[(rng.next() % rows as u64) as usize];
        let query: Vec<f32> = base.iter().map(|x| x + 0.1 * rng.normal()).collect();
        let t = Instant::now();
        let exact = similar::rank(&ds, None, &candidates, &query, p).await?;
        exact_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let approx = similar::rank(&ds, Some(&indexed_ds), &candidates, &query, p).await?;
        index_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let truth: std::collections::HashSet<usize> = exact.iter().map(|e| e.0).collect();
        let hit = approx.iter().filter(|a| truth.contains(&a.0)).count();
        recalls.push(hit as f64 / k as f64);
        if q == 0 {
            eprintln!(
                "first query: exact {:.1} ms, indexed {:.1} ms",
                exact_ms[0], index_ms[0]
            );
        }
    }
    let (e, i, r) = (median(exact_ms), median(index_ms), median(recalls.clone()));
    let min_recall = recalls.iter().cloned().fold(1.0, f64::min);
    let mean_recall = recalls.iter().sum::<f64>() / recalls.len() as f64;
    println!(
        "similarity search, {rows} vectors x {dim} dims in {clusters} clusters (spread {spread}), k={k}, {queries} queries, cosine"
    );
    println!(
        "  index: {} partitions, {} sub-vectors, built in {build_s:.1} s",
        params.partitions, params.sub_vectors
    );
    println!("  exact   median {e:8.1} ms");
    println!(
        "  indexed median {i:8.1} ms  (nprobes {}, refine {})  speed-up {:.1}x",
        p.nprobes,
        p.refine,
        e / i
    );
    println!("  recall@{k}: median {r:.3}, mean {mean_recall:.3}, min {min_recall:.3}");
    let json = serde_json::json!({
        "rows": rows, "dim": dim, "k": k, "queries": queries, "clusters": clusters, "spread": spread,
        "partitions": params.partitions, "sub_vectors": params.sub_vectors, "build_s": build_s,
        "exact_median_ms": e, "indexed_median_ms": i, "speedup": e / i,
        "recall_median": r, "recall_mean": mean_recall, "recall_min": min_recall,
        "nprobes": p.nprobes, "refine": p.refine,
    });
    std::fs::create_dir_all("scripts/out")?;
    std::fs::write(
        "scripts/out/bench_similar.json",
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(())
}
