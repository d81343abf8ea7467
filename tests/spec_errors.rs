//! Bad specs: `lakemount mount` refuses before mounting and names the spec
//! file and the key.

mod common;

use common::*;

#[test]
fn each_bad_spec_is_refused_before_mounting_with_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    image_folder(&tmp.path().join("in"), &[("cat", 2)]);
    let wh = tmp.path().join("wh");
    ingest_cli(&wh, &[tmp.path().join("in").to_str().unwrap()]);
    let good = tmp.path().join("good.yaml");
    std::fs::write(&good, "name: good\n").unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();

    let cases: &[(&str, &str, &[&str])] = &[
        (
            "unknown-key",
            "name: x\nfilters: \"label = 'a'\"\n",
            &["unknown field `filters`"],
        ),
        (
            "bad-type",
            "limit: lots\n",
            &["limit: invalid type: string \"lots\""],
        ),
        ("not-a-map", "- a\n- b\n", &["invalid type: sequence"]),
        (
            "unknown-column",
            "filter: \"lable = 'cat'\"\n",
            &["`filter`", "unknown column `lable`"],
        ),
        (
            "wrong-literal",
            "filter: \"size_bytes > 'big'\"\n",
            &[
                "`filter`",
                "column `size_bytes` is long: expected an integer",
            ],
        ),
        (
            "bad-date",
            "filter: \"ingested_at > 'last week'\"\n",
            &["`filter`", "expected a date or time"],
        ),
        (
            "unsupported",
            "filter: \"label LIKE '%at'\"\n",
            &["`filter`", "only prefix patterns"],
        ),
        (
            "unknown-snapshot",
            "snapshot: 12345\n",
            &[
                "`snapshot`",
                "snapshot 12345 does not exist in table",
                "lakemount snapshots",
            ],
        ),
        (
            "bad-snapshot",
            "snapshot: newest\n",
            &["`snapshot`", "\"latest\""],
        ),
        (
            "missing-table",
            "table: datasets.nope\n",
            &["`table`", "table datasets.nope does not exist"],
        ),
        (
            "bad-layout-column",
            "layout: '{lable}/{content_id}{ext}'\n",
            &["`layout`", "unknown column `{lable}`"],
        ),
        (
            "bad-layout",
            "layout: '/abs/{content_id}'\n",
            &["`layout`", "relative path"],
        ),
        (
            "bad-sidecar",
            "sidecars: [thumbnails]\n",
            &["`sidecars`", "unknown sidecar \"thumbnails\""],
        ),
        (
            "similar-no-to",
            "similar: {k: 3}\n",
            &["missing field `to`"],
        ),
        (
            "similar-unknown-id",
            "similar: {to: {content_id: \"0000000000000000000000000000000000000000000000000000000000000000\"}, k: 3}\n",
            &["`similar.to.content_id`", "no sample with content id"],
        ),
        (
            "similar-bad-vector",
            "similar: {to: {vector: missing.npy}, k: 3}\n",
            &["`similar.to.vector`", "missing.npy"],
        ),
    ];
    for (name, text, expected) in cases {
        let path = tmp.path().join(format!("{name}.yaml"));
        std::fs::write(&path, text).unwrap();
        // A good spec alongside does not get mounted either.
        let out = bin()
            .arg("mount")
            .args(wh_args(&wh))
            .arg(&good)
            .arg(&path)
            .arg(&mnt)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{name}: {err}");
        assert!(
            err.contains(&format!("spec {}", path.display())),
            "{name}: no file named in {err}"
        );
        for e in *expected {
            assert!(err.contains(e), "{name}: expected {e:?} in {err}");
        }
        assert!(!is_mounted(&mnt), "{name}: mounted despite the error");
    }

    // Two specs with the same name.
    let twin = tmp.path().join("twin.yaml");
    std::fs::write(&twin, "name: good\n").unwrap();
    let out = bin()
        .arg("ls")
        .args(wh_args(&wh))
        .arg(&good)
        .arg(&twin)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("both use the name \"good\""), "{err}");
}

#[test]
fn the_example_specs_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("specs");
    let specs = lakemount::spec::load_all(
        std::slice::from_ref(&dir),
        lakemount::warehouse::DEFAULT_TABLE,
    )
    .unwrap();
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["digits-train", "digits-val-small", "digits-train-ddp"]
    );
    let clip = lakemount::spec::load_all(&[dir.join("clip")], lakemount::warehouse::DEFAULT_TABLE)
        .unwrap();
    let similar = clip[0].similar.as_ref().unwrap();
    assert_eq!(
        similar.to,
        lakemount::spec::Query::Text("a photo of a damaged part".into())
    );
    assert_eq!(similar.k, 500);
    let ddp = &specs[2];
    assert_eq!(ddp.shard.map(|s| s.world_size), Some(4));
    assert_eq!(ddp.order, Some(lakemount::spec::Order::Shuffle(2024)));
}
