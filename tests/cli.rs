//! The `lakemount` binary end to end: help, exit statuses, summaries.

mod common;

use common::*;

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_explains_every_ingest_option() {
    let out = bin().args(["ingest", "--help"]).output().unwrap();
    assert!(out.status.success());
    let (help, _) = text(&out);
    for opt in [
        "--manifest",
        "--embeddings",
        "--inline-blobs",
        "--split",
        "--batch-size",
        "--warehouse",
        "--catalog",
        "--table",
        "LAKEMOUNT_WAREHOUSE",
    ] {
        assert!(help.contains(opt), "ingest --help lacks {opt}:\n{help}");
    }
}

#[test]
fn ingest_then_snapshots_and_exit_status_reflects_rejections() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    image_folder(&dir, &[("a", 3)]);
    let wh = tmp.path().join("wh");

    let out = bin()
        .args(["ingest", "--quiet"])
        .args(wh_args(&wh))
        .arg(&dir)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("added 3 samples"), "{stdout}");
    assert!(stdout.contains("Lance version 1"), "{stdout}");

    std::fs::write(dir.join("a/empty.png"), b"").unwrap();
    let out = bin()
        .args(["ingest", "--quiet"])
        .args(wh_args(&wh))
        .arg(&dir)
        .output()
        .unwrap();
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(
        stdout.contains("skipped 3 duplicates, rejected 1"),
        "{stdout}"
    );
    assert!(stdout.contains("empty.png: file is empty"), "{stdout}");

    let out = bin()
        .args(["snapshots"])
        .args(wh_args(&wh))
        .output()
        .unwrap();
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].contains("LANCE VERSION"));
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cols[cols.len() - 3..], ["3", "3", "1"], "{stdout}");
}

#[test]
fn errors_say_what_to_do_next() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["snapshots"])
        .arg("--warehouse")
        .arg(tmp.path().join("nope"))
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr.contains("no warehouse at"), "{stderr}");
    assert!(stderr.contains("lakemount ingest"), "{stderr}");

    let out = bin()
        .args(["ingest"])
        .arg("--warehouse")
        .arg(tmp.path().join("wh"))
        .arg(tmp.path().join("missing-dir"))
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr.contains("cannot read input directory"), "{stderr}");

    let out = bin()
        .args(["ingest", "--split", "0.5,0.6,0.1", "x"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("add up to 1"), "{stderr}");
}

/// The exit status follows the error's kind (README, *Exit status*):
/// usage 2, bad input 4, storage 6 (conflict 5: `tests/mount.rs`, a stale
/// mount).
#[test]
fn exit_status_follows_the_kind_of_error() {
    let tmp = tempfile::tempdir().unwrap();
    let wh = tmp.path().join("wh");
    std::fs::create_dir(&wh).unwrap();
    let spec = tmp.path().join("bad.yaml");
    std::fs::write(&spec, "name: x\n\nlimit: -3\n").unwrap();
    let cases: [(&[&str], i32, &str); 5] = [
        (&["ls", "--bogus"], 2, "unexpected argument"),
        (
            &["snapshots", "--warehouse", "wh", "--catalog", "oracle://x"],
            2,
            "expected sqlite:PATH",
        ),
        (
            &[
                "ls",
                "--warehouse",
                "wh",
                "--rank",
                "1",
                "--world-size",
                "1",
                "bad.yaml",
            ],
            2,
            "is not below --world-size",
        ),
        (&["ls", "--warehouse", "wh", "bad.yaml"], 4, "line 3"),
        (
            &[
                "snapshots",
                "--warehouse",
                "s3://bucket/wh",
                "--catalog",
                "postgresql://u@127.0.0.1:1/db",
            ],
            6,
            "cannot reach the catalog database",
        ),
    ];
    for (args, code, says) in cases {
        let out = bin().current_dir(tmp.path()).args(args).output().unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
