//! Hardening, round two: a node's trust boundaries and bounded work on
//! every input, each case as a hostile user would try it, on real
//! warehouses, real processes and real mounts. (The cases that need a
//! second user, a daemon or a database to kill are in
//! `tests/python/test_shared_machine.py`.)

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use lakemount::catalog::write::{SampleRow, fast_append, write_files};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd`, failing the test if it has not finished within `secs`
/// (a hang is the bug some of these cases had).
fn run_within(cmd: &mut Command, secs: u64) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("still running after {secs} s (hung): {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

fn ingest(wh: &Path, args: &[&str]) -> Output {
    run_within(
        bin()
            .args(["ingest", "--quiet"])
            .args(wh_args(wh))
            .args(args),
        120,
    )
}

#[test]
fn fifos_and_devices_as_inputs_are_rejected_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    pngs(&input, "x", 1, 3);
    mkfifo(&input.join("x/pipe.png"));
    let wh = tmp.path().join("wh");
    // An ImageFolder with a FIFO in it: the FIFO is a rejection, the rest is ingested.
    let out = ingest(&wh, &[input.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("pipe.png") && text(&out).contains("not a regular file (a FIFO)"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("added 3 samples"), "{}", text(&out));

    // A manifest naming /dev/zero (allowed by prefix, so only its type stops it).
    let m = tmp.path().join("m.csv");
    std::fs::write(&m, "path\n/dev/zero\nin/x/1.png\n").unwrap();
    let out = ingest(
        &wh,
        &[
            "--manifest",
            m.to_str().unwrap(),
            "--allow-path-prefix",
            "/dev",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("not a regular file (a character device)"),
        "{}",
        text(&out)
    );

    // A FIFO as the manifest, as embeddings, as a spec, as a query vector.
    let fifo = tmp.path().join("fifo");
    mkfifo(&fifo);
    let out = ingest(&wh, &["--manifest", fifo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("not a regular file (a FIFO)"));
    let m1 = tmp.path().join("m1.csv");
    std::fs::write(&m1, "path\nin/x/1.png\n").unwrap();
    let out = ingest(
        &wh,
        &[
            "--manifest",
            m1.to_str().unwrap(),
            "--embeddings",
            "/dev/zero",
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("a character device"), "{}", text(&out));
    for spec in [fifo.as_path(), Path::new("/dev/zero")] {
        let out = run_within(bin().arg("ls").args(wh_args(&wh)).arg(spec), 30);
        assert_eq!(out.status.code(), Some(4), "{}", text(&out));
        assert!(text(&out).contains("not a regular file"), "{}", text(&out));
    }
    let spec = tmp.path().join("q.yaml");
    std::fs::write(&spec, "name: q\nsimilar: {to: {vector: /dev/zero}, k: 2}\n").unwrap();
    let out = run_within(bin().arg("ls").args(wh_args(&wh)).arg(&spec), 30);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("similar.to.vector") && text(&out).contains("a character device"),
        "{}",
        text(&out)
    );
    // A model folder whose config.json is a FIFO.
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    mkfifo(&model.join("config.json"));
    std::fs::write(model.join("model.safetensors"), b"").unwrap();
    let out = run_within(
        bin()
            .args(["embed", "--text", "x", "-o"])
            .arg(tmp.path().join("o.npy"))
            .arg("--encoder")
            .arg(format!("text:{}", model.display())),
        30,
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("a FIFO"), "{}", text(&out));
}

#[test]
fn manifests_name_only_files_below_their_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.png"), png(99, 8)).unwrap();
    let dir = tmp.path().join("job");
    pngs(&dir, "x", 1, 2);
    let wh = tmp.path().join("wh");
    for (row, line) in [
        (outside.join("secret.png").display().to_string(), 3),
        ("../outside/secret.png".to_string(), 3),
        ("x/../../outside/secret.png".to_string(), 3),
    ] {
        let m = dir.join("m.csv");
        std::fs::write(&m, format!("path\nx/1.png\n{row}\n")).unwrap();
        let out = ingest(&wh, &["--manifest", m.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(4), "{row}: {}", text(&out));
        let t = text(&out);
        assert!(
            t.contains(&format!("line {line}"))
                && t.contains("outside the manifest's folder")
                && t.contains("--allow-path-prefix"),
            "{t}"
        );
    }
    // Nothing was written by the refused manifests.
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert!(
        rt.block_on(async { iceberg_rows(&open(&wh).await).await })
            .is_empty()
    );

    // A symbolic link inside the folder that leads out of it: a rejection.
    std::os::unix::fs::symlink(outside.join("secret.png"), dir.join("x/link.png")).unwrap();
    let m = dir.join("m.csv");
    std::fs::write(&m, "path\nx/1.png\nx/link.png\n").unwrap();
    let out = ingest(&wh, &["--manifest", m.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("link.png") && text(&out).contains("leads outside"),
        "{}",
        text(&out)
    );
    let secret_id = sha256(&png(99, 8));
    let ids: Vec<String> = rt.block_on(async {
        iceberg_rows(&open(&wh).await)
            .await
            .into_iter()
            .map(|r| r["content_id"].clone().unwrap())
            .collect()
    });
    assert!(!ids.contains(&secret_id));

    // The operator allows the location: now it is read.
    let m = dir.join("m2.csv");
    std::fs::write(
        &m,
        format!("path\n{}\n", outside.join("secret.png").display()),
    )
    .unwrap();
    let out = ingest(
        &wh,
        &[
            "--manifest",
            m.to_str().unwrap(),
            "--allow-path-prefix",
            outside.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("added 1 samples"), "{}", text(&out));
}

#[test]
fn blobs_get_no_permission_the_warehouse_denies() {
    if local_only("blob file modes exist only on a local warehouse") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    pngs(&input, "x", 1, 2);
    for f in std::fs::read_dir(input.join("x")).unwrap() {
        std::fs::set_permissions(f.unwrap().path(), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }
    for (dir_mode, allowed) in [(0o750u32, 0o640u32), (0o700, 0o600), (0o755, 0o644)] {
        let wh = tmp.path().join(format!("wh{dir_mode:o}"));
        std::fs::create_dir_all(&wh).unwrap();
        std::fs::set_permissions(&wh, std::fs::Permissions::from_mode(dir_mode)).unwrap();
        let out = ingest(&wh, &[input.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        let id = sha256(&std::fs::read(input.join("x/1.png")).unwrap());
        let blob = wh.join("blobs").join(&id[..2]).join(&id);
        let mode = std::fs::metadata(&blob).unwrap().mode() & 0o777;
        assert_eq!(mode & !allowed, 0, "warehouse {dir_mode:o}: blob {mode:o}");
        // Every other file the ingest made follows the same rule.
        for f in walk(&wh).keys() {
            let m = std::fs::metadata(wh.join(f)).unwrap().mode() & 0o777;
            assert_eq!(m & !allowed & 0o666, 0, "{f}: {m:o}");
        }
    }
}

#[test]
fn spec_errors_quote_a_short_excerpt_and_foreign_links_are_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let wh = tmp.path().join("wh");
    pngs(&tmp.path().join("in"), "x", 1, 2);
    ingest_cli(&wh, &[tmp.path().join("in").to_str().unwrap()]);
    // A "secret": one long line, then more.
    let secret = tmp.path().join("secret");
    let line = format!("root:{}:19000:0:99999:7:::", "Zq8".repeat(40));
    std::fs::write(&secret, format!("{line}\nother:x:1:1\n")).unwrap();
    let spec = tmp.path().join("s.yaml");
    std::os::unix::fs::symlink(&secret, &spec).unwrap();
    let out = run_within(bin().arg("ls").args(wh_args(&wh)).arg(&spec), 30);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("s.yaml"), "{t}");
    // At most a short excerpt of the file: never the line, never the next.
    assert!(!t.contains(&line[..40]), "{t}");
    assert!(!t.contains("other:x"), "{t}");

    // In a spec directory, a link made by another user to a file that is
    // not theirs is refused; a link of one's own is followed.
    let dir = tmp.path().join("specs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(tmp.path().join("mine.yaml"), "name: mine\n").unwrap();
    std::os::unix::fs::symlink(tmp.path().join("mine.yaml"), dir.join("a.yaml")).unwrap();
    let listing = ls(&wh, &[&dir]);
    assert!(listing.keys().any(|p| p.starts_with("mine/")));
    let foreign = dir.join("b.yaml");
    std::os::unix::fs::symlink(tmp.path().join("mine.yaml"), &foreign).unwrap();
    let c = std::ffi::CString::new(foreign.to_str().unwrap()).unwrap();
    // SAFETY: a valid path; lchown changes the link itself (to nobody).
    assert_eq!(
        unsafe { libc::lchown(c.as_ptr(), 65534, 65534) },
        0,
        "needs root"
    );
    let out = run_within(bin().arg("ls").args(wh_args(&wh)).arg(&dir), 30);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("b.yaml") && text(&out).contains("links in a spec directory"),
        "{}",
        text(&out)
    );
}

/// 2.5 MB of pseudo-random bytes.
fn big(seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(2_500_000);
    let mut x = seed | 1;
    while out.len() < 2_500_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Appends a row as another engine would, with the given chunk digests.
async fn append_row(
    w: &lakemount::warehouse::Warehouse,
    id: &str,
    size: usize,
    chunk_sha256: Option<Vec<u8>>,
) {
    let table = w.catalog.load_table(&w.table).await.unwrap();
    let row = SampleRow {
        content_id: id.to_string(),
        uri: w.blobs.uri(id),
        label: Some("foreign".into()),
        split: "train".into(),
        media_type: "application/octet-stream".into(),
        size_bytes: size as i64,
        source: None,
        ingested_at_us: chrono::Utc::now().timestamp_micros(),
        embedding_model: "other".into(),
        chunk_sha256,
        extras: Default::default(),
    };
    let files = write_files(&table, &[row]).await.unwrap();
    let tx = fast_append(&table, files, Default::default()).unwrap();
    lakemount::catalog::commit::commit_on(&w.catalog, &table, tx)
        .await
        .unwrap();
}

#[tokio::test]
async fn large_samples_are_served_only_when_they_hash_to_their_content_id() {
    let tmp = tempfile::tempdir().unwrap();
    pngs(&tmp.path().join("in"), "x", 1, 2);
    let wh = tmp.path().join("wh");
    ingest_cli(&wh, &[tmp.path().join("in").to_str().unwrap()]);
    let w = open(&wh).await;
    // Forged: the row names the content id of `claimed`, the blob holds
    // `served`, and the chunk digests describe `served`.
    let (claimed, served) = (big(21), big(23));
    let forged_id = sha256(&claimed);
    write_blob(&wh, &forged_id, served.clone()).await;
    append_row(
        &w,
        &forged_id,
        served.len(),
        lakemount::content_id::chunk_digests(&served),
    )
    .await;
    // Honest bytes under wrong digests: the bytes are what the id names.
    let honest = big(25);
    let honest_id = sha256(&honest);
    write_blob(&wh, &honest_id, honest.clone()).await;
    append_row(&w, &honest_id, honest.len(), Some(vec![7u8; 32 * 3])).await;

    let spec = tmp.path().join("s.yaml");
    std::fs::write(&spec, "name: s\nfilter: \"label = 'foreign'\"\n").unwrap();
    let mnt = tmp.path().join("mnt");
    let _guard = MountGuard::start(&wh, &[&spec], &mnt);
    let dir = mnt.join("s/foreign");
    let e = std::fs::read(dir.join(format!("{forged_id}.bin"))).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let f = std::fs::File::open(dir.join(format!("{forged_id}.bin"))).unwrap();
    let mut buf = [0u8; 100];
    use std::os::unix::fs::FileExt;
    assert_eq!(
        f.read_at(&mut buf, 0).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    assert_eq!(
        std::fs::read(dir.join(format!("{honest_id}.bin"))).unwrap(),
        honest
    );
}

#[tokio::test]
async fn a_table_belongs_to_one_warehouse_even_in_a_shared_catalog() {
    let tmp = tempfile::tempdir().unwrap();
    pngs(&tmp.path().join("in"), "x", 1, 3);
    pngs(&tmp.path().join("in2"), "y", 10, 3);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    // Warehouse b uses a's catalog and table name.
    let ca = wh_config(&a);
    let mut args_b = wh_args(&b);
    let shared_catalog = match &ca.catalog {
        Some(c) => c.clone(),
        // Two local warehouses on one SQLite file that does not exist yet.
        None => format!("sqlite:{}", tmp.path().join("shared/catalog.db").display()),
    };
    let args_a: Vec<String> = {
        let mut v = wh_args(&a);
        if ca.catalog.is_none() {
            v.extend(["--catalog".into(), shared_catalog.clone()]);
        }
        v
    };
    if let Some(k) = args_b.iter().position(|x| x == "--catalog") {
        args_b[k + 1] = shared_catalog.clone();
    } else {
        args_b.extend(["--catalog".into(), shared_catalog.clone()]);
    }
    if let Some(k) = args_b.iter().position(|x| x == "--table") {
        args_b[k + 1] = ca.table.clone();
    } else if ca.table != lakemount::warehouse::DEFAULT_TABLE {
        args_b.extend(["--table".into(), ca.table.clone()]);
    }
    let run = |args: &[String], extra: &[&str]| {
        run_within(
            bin().args(["ingest", "--quiet"]).args(args).args(extra),
            120,
        )
    };
    let out = run(&args_a, &[tmp.path().join("in").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&args_b, &[tmp.path().join("in2").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("belongs to another warehouse")
            && t.contains(&format!("{}/lance", ca.location))
            && t.contains(&format!("{}/lance", wh_config(&b).location)),
        "{t}"
    );
    // a's table is untouched: every snapshot holds its invariants.
    let out = run_within(bin().arg("check").args(&args_a), 60);
    assert!(out.status.success(), "{}", text(&out));
    // A mount through b is refused, naming both.
    let spec = tmp.path().join("s.yaml");
    std::fs::write(&spec, "name: s\n").unwrap();
    let out = run_within(bin().arg("ls").args(&args_b).arg(&spec), 60);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("belongs to another warehouse"),
        "{}",
        text(&out)
    );
}

#[test]
fn malformed_catalog_uris_never_print_their_password() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("s.yaml");
    std::fs::write(&spec, "name: s\n").unwrap();
    for uri in [
        "postgres://lm:hunter2@127.0.0.1:99999/iceberg",
        "postgres://lm:hunter2@:5432/iceberg",
        "postgres://lm:hunter2@[::1/iceberg",
        "postgres://my user:hunter2@127.0.0.1:9/iceberg",
        "postgres://lm:hun ter2@127.0.0.1:9/iceberg",
        "postgres://lm:hunter2@127.0.0.1:port/iceberg",
    ] {
        let out = run_within(
            bin()
                .arg("ls")
                .args(["--warehouse", tmp.path().to_str().unwrap()])
                .args(["--catalog", uri])
                .arg(&spec),
            60,
        );
        assert!(!out.status.success());
        let t = text(&out);
        assert!(!t.contains("hunter2") && !t.contains("ter2"), "{uri}: {t}");
    }
}

#[test]
fn names_and_their_sidecars_fit_in_255_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    pngs(&dir, "x", 1, 3);
    let long = |c: char, n: usize| std::iter::repeat_n(c, n).collect::<String>();
    let m = tmp.path().join("m.jsonl");
    let names = [
        long('a', 251),
        long('é', 125),
        "line\u{2028}sep\u{2029}para".to_string(),
    ];
    let rows: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(k, n)| {
            serde_json::json!({"path": format!("in/x/{}.png", k + 1), "name": n}).to_string()
        })
        .collect();
    std::fs::write(&m, rows.join("\n")).unwrap();
    let wh = tmp.path().join("wh");
    ingest_cli(&wh, &["--manifest", m.to_str().unwrap()]);
    let spec = tmp.path().join("s.yaml");
    std::fs::write(&spec, "name: s\nlayout: \"{name}{ext}\"\n").unwrap();
    let listing = ls(&wh, &[&spec]);
    assert_eq!(listing.len(), 3 * 3 + 2, "{listing:?}");
    for path in listing.keys() {
        for comp in path.split('/') {
            assert!(comp.len() <= 255, "{} bytes: {comp}", comp.len());
            assert!(!comp.contains(['\u{2028}', '\u{2029}']), "{comp:?}");
        }
    }
    assert!(listing.contains_key("s/line_sep_para.png"), "{listing:?}");
    // A real copy of the mounted view succeeds.
    let mnt = tmp.path().join("mnt");
    let _guard = MountGuard::start(&wh, &[&spec], &mnt);
    let copy = tmp.path().join("copy");
    let out = Command::new("cp")
        .arg("-r")
        .arg(mnt.join("s"))
        .arg(&copy)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(walk(&copy).len(), listing.len());
}

#[test]
fn a_sqlite_catalog_file_that_does_not_exist_is_created() {
    if local_only("a SQLite catalog goes with a local warehouse here") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    pngs(&tmp.path().join("in"), "x", 1, 2);
    let cat = tmp.path().join("cat/new.db");
    let out = run_within(
        bin()
            .args(["ingest", "--quiet", "--warehouse"])
            .arg(tmp.path().join("wh"))
            .arg("--catalog")
            .arg(format!("sqlite:{}", cat.display()))
            .arg(tmp.path().join("in")),
        120,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(cat.is_file());
}

/// A copy of the CLIP fixture folder, with `edit` applied to its
/// preprocessor config.
fn clip_copy(tmp: &Path, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip/model");
    let dst = tmp.join("clip");
    std::fs::create_dir_all(&dst).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
    }
    let p = dst.join("preprocessor_config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
    dst
}

#[test]
fn model_preprocessing_is_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    // A 1 x 20000 strip: refused with the reason, in seconds.
    let strip = tmp.path().join("in/x/strip.png");
    std::fs::create_dir_all(strip.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_fn(1, 20_000, |_, y| image::Rgb([(y % 251) as u8, 3, 5]));
    img.save(&strip).unwrap();
    std::fs::write(tmp.path().join("in/x/ok.png"), png(3, 32)).unwrap();
    let clip = clip_copy(tmp.path(), |_| {});
    let wh = tmp.path().join("wh");
    let start = Instant::now();
    let out = ingest(
        &wh,
        &[
            "--encoder",
            &format!("clip:{}", clip.display()),
            tmp.path().join("in").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("strip.png") && text(&out).contains("more than the limit"),
        "{}",
        text(&out)
    );
    assert!(start.elapsed() < Duration::from_secs(60));
    // A config asking for a 100000-pixel edge: an error naming the field, not an abort.
    std::fs::remove_dir_all(tmp.path().join("clip")).unwrap();
    let clip = clip_copy(tmp.path(), |v| v["size"]["shortest_edge"] = 100_000.into());
    let out = run_within(
        bin()
            .args(["embed", "-o"])
            .arg(tmp.path().join("o.npy"))
            .arg("--encoder")
            .arg(format!("clip:{}", clip.display()))
            .arg(tmp.path().join("in/x/ok.png")),
        60,
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("preprocessor_config.json")
            && text(&out).contains("shortest_edge is 100000"),
        "{}",
        text(&out)
    );
}

#[test]
fn fstab_option_keys_must_be_known() {
    let tmp = tempfile::tempdir().unwrap();
    let helper = tmp.path().join("mount.fuse.lakemount");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_lakemount"), &helper).unwrap();
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, "root:TOPSECRETHASH:19000::\n").unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    for opts in [
        format!("warehouse={},={}", tmp.path().display(), secret.display()),
        format!(
            "warehouse={},spec={}",
            tmp.path().display(),
            secret.display()
        ),
        format!("warm={}", secret.display()),
    ] {
        let out = run_within(
            Command::new(&helper)
                .arg(tmp.path().join("specs"))
                .arg(&mnt)
                .args(["-o", &opts]),
            30,
        );
        assert_eq!(out.status.code(), Some(2), "{opts}: {}", text(&out));
        assert!(!text(&out).contains("TOPSECRET"), "{}", text(&out));
        assert!(!is_mounted(&mnt));
    }
}
