//! Materialized views (`lakemount pin --materialize`) on every backend: a
//! mount of the materialized spec shows the same files with the same bytes
//! (listing and receipt included) as a mount that resolves the pinned spec,
//! for plain, filtered, sharded, shuffled, similarity, diverse and epoch
//! specs, whole and one rank at a time; a missing or corrupt index, an
//! edited spec and a mismatched world size are clear errors, never a wrong
//! listing; a rank's mount reads only its own row group.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;

/// `lakemount pin [--materialize ...] SPEC -o OUT`: stderr on success.
fn pin(wh: &Path, spec: &Path, out: &Path, extra: &[&str]) -> String {
    let res = bin()
        .arg("pin")
        .args(wh_args(wh))
        .args(extra)
        .arg(spec)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&res.stderr).into_owned();
    assert!(res.status.success(), "{err}");
    err
}

/// A warehouse of 45 images over three labels, with a `quality` column.
fn warehouse(root: &Path) -> PathBuf {
    image_folder(&root.join("in"), &[("cat", 20), ("dog", 15), ("owl", 10)]);
    let wh = root.join("wh");
    ingest_cli(&wh, &[root.join("in").to_str().unwrap()]);
    wh
}

fn write_spec(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, format!("name: {name}\n{body}")).unwrap();
    p
}

/// Pins each of `specs` twice under `dir`: plainly into `dir/plain/` and
/// materialized (with `extra`) into `dir/mat/`.
fn pin_both(wh: &Path, specs: &[PathBuf], dir: &Path, extra: &[&str]) -> (PathBuf, PathBuf) {
    let (plain, mat) = (dir.join("plain"), dir.join("mat"));
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::create_dir_all(&mat).unwrap();
    for s in specs {
        let name = s.file_name().unwrap();
        pin(wh, s, &plain.join(name), &[]);
        let mut args = vec!["--materialize"];
        args.extend(extra);
        pin(wh, s, &mat.join(name), &args);
        let text = std::fs::read_to_string(mat.join(name)).unwrap();
        assert!(text.contains("materialized:"), "{text}");
    }
    (plain, mat)
}

fn assert_same(plain: &Path, mat: &Path, what: &str) {
    let (a, b) = (digests(plain), digests(mat));
    assert!(!a.is_empty());
    if a != b {
        let only_a: Vec<_> = a
            .iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .take(5)
            .collect();
        let only_b: Vec<_> = b
            .iter()
            .filter(|(k, v)| a.get(*k) != Some(v))
            .take(5)
            .collect();
        panic!("{what}: resolved and materialized views differ:\n{only_a:?}\n{only_b:?}");
    }
}

#[test]
fn materialized_views_show_what_resolved_views_show() {
    let tmp = tempfile::tempdir().unwrap();
    let wh = warehouse(tmp.path());
    let ids: Vec<String> = ls(&wh, &[&write_spec(tmp.path(), "all", "")])
        .into_keys()
        .filter(|p| p.ends_with(".png"))
        .collect();
    let query = Path::new(&ids[3])
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let specs = tmp.path().join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    let whole = [
        write_spec(&specs, "plain", ""),
        write_spec(
            &specs,
            "filtered",
            "filter: \"label IN ('cat', 'owl')\"\nlimit: 25\n",
        ),
        write_spec(
            &specs,
            "sharded",
            "order: {shuffle: 3}\nshard: {world_size: 4, pad: true}\n",
        ),
        write_spec(
            &specs,
            "shuffled",
            "order: {shuffle: 11}\nlayout: '{pos}-{label}{ext}'\n",
        ),
        write_spec(
            &specs,
            "similar",
            &format!(
                "similar: {{to: {{content_id: \"{query}\"}}, k: 12}}\nlayout: '{{rank}}-{{content_id}}{{ext}}'\n"
            ),
        ),
        write_spec(
            &specs,
            "diverse",
            "select: {diverse: {clusters: 3, per_cluster: 4, seed: 1}}\n",
        ),
    ];
    let (plain, mat) = pin_both(&wh, &whole, &tmp.path().join("whole"), &[]);
    {
        let a = MountGuard::start(&wh, &[&plain], &tmp.path().join("m1"));
        let b = MountGuard::start(&wh, &[&mat], &tmp.path().join("m2"));
        assert_same(&a.mountpoint, &b.mountpoint, "whole views");
        let receipt = std::fs::read_to_string(b.mountpoint.join("similar/_receipt.json")).unwrap();
        assert!(receipt.contains("\"row_count\": 12"), "{receipt}");
    }

    // One rank of three: specs without `shard` materialized for that world
    // size, a spec with its own `shard`, and an (elastic) epoch spec.
    let ranked = [
        write_spec(&specs, "r-plain", "sidecars: [embedding]\n"),
        write_spec(&specs, "r-shuffled", "order: {shuffle: 5}\n"),
        write_spec(
            &specs,
            "r-sharded",
            "order: {shuffle: 2}\nshard: {world_size: 3}\n",
        ),
        write_spec(&specs, "r-epochs", "order: {shuffle: 9}\nepochs: 2\n"),
    ];
    let (plain, mat) = pin_both(
        &wh,
        &ranked,
        &tmp.path().join("ranked"),
        &["--world-size", "3"],
    );
    for rank in ["0", "2"] {
        let args = ["--rank", rank, "--world-size", "3"];
        let a = MountGuard::start_with(&wh, &[&plain], &tmp.path().join("m3"), &args);
        let b = MountGuard::start_with(&wh, &[&mat], &tmp.path().join("m4"), &args);
        assert_same(&a.mountpoint, &b.mountpoint, &format!("rank {rank}"));
        let receipt = std::fs::read_to_string(b.mountpoint.join("r-plain/_receipt.json")).unwrap();
        assert!(receipt.contains(&format!("\"rank\": {rank}")), "{receipt}");
    }
}

/// Flips one byte of the object at `uri`: `at` bytes from its start, or
/// from its end when negative.
async fn flip(wh: &Path, uri: &str, at: i64) {
    let w = open(wh).await;
    let pick = |len: usize| {
        if at < 0 {
            len - at.unsigned_abs() as usize
        } else {
            at as usize
        }
    };
    flip_object_byte(&w, uri, pick, 0x20).await;
}

fn ls_err(wh: &Path, spec: &Path, extra: &[&str]) -> String {
    let out = bin()
        .arg("ls")
        .args(wh_args(wh))
        .args(extra)
        .arg(spec)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_index_or_an_edited_spec_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let wh = warehouse(tmp.path());
    let s = write_spec(
        tmp.path(),
        "s",
        "order: {shuffle: 1}\nshard: {world_size: 2}\n",
    );
    let p = tmp.path().join("p.yaml");
    let said = pin(&wh, &s, &p, &["--materialize"]);
    let uri = said
        .split_whitespace()
        .find(|w| w.ends_with(".parquet"))
        .unwrap_or_else(|| panic!("{said}"))
        .to_string();
    let text = std::fs::read_to_string(&p).unwrap();
    let good = ls(&wh, &[&p]);
    assert_eq!(good.len(), ls(&wh, &[&s]).len());

    // An edited spec is refused, naming what changed.
    let edited = tmp.path().join("edited.yaml");
    std::fs::write(&edited, text.replace("shuffle: 1", "shuffle: 2")).unwrap();
    let err = ls_err(&wh, &edited, &[]);
    assert!(
        err.contains("different spec") && err.contains("order"),
        "{err}"
    );
    // A mount of another world size is refused, naming both.
    let err = ls_err(&wh, &p, &["--rank", "0", "--world-size", "4"]);
    assert!(err.contains("2 ranks") && err.contains("4 ranks"), "{err}");

    // A corrupt row group, then a corrupt footer: named, never shown.
    let w = open(&wh).await;
    let name = uri.rsplit('/').next().unwrap();
    let index_uri = format!("{}views/{name}", w.root_url);
    // Byte 10 lies in the first row group (rank 0's): the whole view and
    // rank 0 fail, rank 1 (which does not read it) does not.
    flip(&wh, &index_uri, 10).await;
    let err = ls_err(&wh, &p, &[]);
    assert!(
        err.contains(name) && err.contains("row group 0") && err.contains("corrupt"),
        "{err}"
    );
    let err = ls_err(&wh, &p, &["--rank", "0", "--world-size", "2"]);
    assert!(err.contains("row group 0"), "{err}");
    let rank1 = bin()
        .arg("ls")
        .args(wh_args(&wh))
        .args(["--rank", "1", "--world-size", "2"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        rank1.status.success(),
        "{}",
        String::from_utf8_lossy(&rank1.stderr)
    );
    flip(&wh, &index_uri, 10).await; // undo
    // A byte of the footer: the file no longer matches its name.
    flip(&wh, &index_uri, -20).await;
    let err = ls_err(&wh, &p, &[]);
    assert!(err.contains("footer") && err.contains(name), "{err}");
    flip(&wh, &index_uri, -20).await; // undo
    assert_eq!(ls(&wh, &[&p]), good, "restored bytes read again");

    // A missing index: named, with what to do.
    use object_store::ObjectStoreExt;
    let url = url::Url::parse(&index_uri).unwrap();
    let (_, path) = object_store::ObjectStoreScheme::parse(&url).unwrap();
    w.storage
        .object_store(&url)
        .unwrap()
        .delete(&path)
        .await
        .unwrap();
    let err = ls_err(&wh, &p, &[]);
    assert!(
        err.contains(name) && err.contains("does not exist") && err.contains("--materialize"),
        "{err}"
    );
    // A malformed digest in the spec names the key and line.
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(&bad, text.replace(name.trim_end_matches(".parquet"), "xyz")).unwrap();
    let err = ls_err(&wh, &bad, &[]);
    assert!(err.contains("pinned.materialized.index"), "{err}");
}

#[test]
fn a_rank_reads_its_own_row_group() {
    let tmp = tempfile::tempdir().unwrap();
    let wh = warehouse(tmp.path());
    let s = write_spec(tmp.path(), "s", "sidecars: []\n");
    let p = tmp.path().join("p.yaml");
    pin(&wh, &s, &p, &["--materialize", "--world-size", "5"]);
    // The whole view is 45 samples in 5 row groups of 9; rank 3 shows 9.
    let out = bin()
        .arg("ls")
        .args(wh_args(&wh))
        .args(["--rank", "3", "--world-size", "5"])
        .arg(&p)
        .env("LAKEMOUNT_LOG", "debug")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = String::from_utf8_lossy(&out.stdout);
    let pngs: Vec<&str> = files.lines().filter(|l| l.ends_with(".png")).collect();
    assert_eq!(pngs.len(), 9, "{files}");
    assert!(pngs.iter().all(|l| l.contains("s/rank-3/")), "{files}");
    let log = String::from_utf8_lossy(&out.stderr);
    let line = log
        .lines()
        .find(|l| l.contains("materialized view loaded"))
        .unwrap_or_else(|| panic!("{log}"));
    // One row group of five verified and decoded (the first read may
    // bring more bytes of a file this small; scripts/bench/views.py
    // measures bytes at scale).
    assert!(
        line.contains("row_groups=1") && line.contains("of=5"),
        "{line}"
    );
}

/// Where the format fixture's warehouse lives: its index names this path
/// (the Lance dataset and the blobs), so the test rebuilds the warehouse
/// here, from the same images, before reading the committed index.
const FIXTURE_WH: &str = "/tmp/lakemount-materialized-format-1/wh";

/// An index written by an earlier lakemount (format 1, committed under
/// tests/fixtures/materialized-v1/) is read by this one: the same files
/// with the same bytes as when it was written. `LAKEMOUNT_WRITE_FIXTURES=1`
/// writes the fixture anew (only when the format changes on purpose).
#[test]
fn an_index_written_by_an_earlier_version_reads_the_same() {
    if local_only("the fixture is a local warehouse") {
        return;
    }
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/materialized-v1");
    let root = Path::new(FIXTURE_WH).parent().unwrap();
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).unwrap();
    image_folder(&root.join("in"), &[("cat", 6), ("dog", 4)]);
    let wh = PathBuf::from(FIXTURE_WH);
    ingest_cli(&wh, &[root.join("in").to_str().unwrap()]);
    let spec = fixture.join("v.yaml");
    if std::env::var_os("LAKEMOUNT_WRITE_FIXTURES").is_some() {
        std::fs::create_dir_all(&fixture).unwrap();
        let s = write_spec(root, "v", "order: {shuffle: 4}\nshard: {world_size: 2}\n");
        pin(&wh, &s, &spec, &["--materialize"]);
        let text = std::fs::read_to_string(&spec).unwrap();
        let sha = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("index: "))
            .unwrap()
            .trim_matches('"');
        std::fs::copy(
            wh.join(format!("views/{sha}.parquet")),
            fixture.join(format!("{sha}.parquet")),
        )
        .unwrap();
        let m = MountGuard::start(&wh, &[&spec], &root.join("mnt"));
        let listing: String = digests(&m.mountpoint)
            .into_iter()
            .map(|(p, h)| format!("{p}\t{h}\n"))
            .collect();
        std::fs::write(fixture.join("expected.tsv"), listing).unwrap();
    }
    // The committed index goes where the pinned spec says it is.
    std::fs::create_dir_all(wh.join("views")).unwrap();
    for e in std::fs::read_dir(&fixture).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "parquet") {
            std::fs::copy(&p, wh.join("views").join(p.file_name().unwrap())).unwrap();
        }
    }
    let expected: BTreeMap<String, String> = std::fs::read_to_string(fixture.join("expected.tsv"))
        .unwrap()
        .lines()
        .map(|l| {
            let (p, h) = l.split_once('\t').unwrap();
            (p.to_string(), h.to_string())
        })
        .collect();
    assert!(expected.len() > 20);
    let m = MountGuard::start(&wh, &[&spec], &root.join("mnt"));
    assert_eq!(digests(&m.mountpoint), expected);
    drop(m);
    let _ = std::fs::remove_dir_all(root);
}
