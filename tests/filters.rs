//! Spec filters select exactly the rows an independent evaluation (SQL
//! three-valued logic written out by hand below) selects, for every operator.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use lakemount::encode::builtin::BuiltinEncoder;
use lakemount::ingest::{self, InputSource};

#[derive(Debug, Clone)]
struct Rec {
    id: String,
    label: Option<&'static str>,
    split: &'static str,
    score: Option<f64>,
    n: Option<i64>,
    flag: Option<bool>,
    tag: Option<&'static str>,
}

fn records(dir: &Path) -> Vec<Rec> {
    let labels = [Some("cat"), Some("dog"), Some("eel"), None];
    let splits = ["train", "val", "test"];
    let tags = ["ab", "abc", "b", "xyz"];
    let mut csv = String::from("path,label,split,score,n,flag,tag\n");
    let mut out = Vec::new();
    for i in 0..60i64 {
        let text = format!("sample number {i} with some words");
        std::fs::write(dir.join(format!("{i}.txt")), &text).unwrap();
        let r = Rec {
            id: sha256(text.as_bytes()),
            label: labels[i as usize % 4],
            split: splits[i as usize % 3],
            score: (i % 7 != 0).then(|| i as f64 / 10.0),
            n: (i % 5 != 0).then_some(i),
            flag: (i % 11 != 0).then_some(i % 2 == 0),
            tag: (i % 6 != 0).then(|| tags[i as usize % 4]),
        };
        let opt = |v: Option<String>| v.unwrap_or_default();
        csv.push_str(&format!(
            "{i}.txt,{},{},{},{},{},{}\n",
            r.label.unwrap_or(""),
            r.split,
            opt(r.score.map(|s| s.to_string())),
            opt(r.n.map(|s| s.to_string())),
            opt(r.flag.map(|s| s.to_string())),
            r.tag.unwrap_or("")
        ));
        out.push(r);
    }
    std::fs::write(dir.join("m.csv"), csv).unwrap();
    out
}

#[tokio::test]
async fn every_operator_selects_exactly_the_right_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let recs = records(tmp.path());
    let wh = open(&tmp.path().join("wh")).await;
    let r = ingest::run(
        &quiet(InputSource::Manifest(tmp.path().join("m.csv"))),
        &wh,
        &BuiltinEncoder,
    )
    .await
    .unwrap();
    assert_eq!(r.added, 60);

    type Case = (&'static str, fn(&Rec) -> bool);
    let cases: Vec<Case> = vec![
        ("label = 'cat'", |r| r.label == Some("cat")),
        ("label != 'cat'", |r| r.label.is_some_and(|l| l != "cat")),
        ("label <> 'cat'", |r| r.label.is_some_and(|l| l != "cat")),
        ("score < 2.5", |r| r.score.is_some_and(|s| s < 2.5)),
        ("score <= 2.5", |r| r.score.is_some_and(|s| s <= 2.5)),
        ("score > 2.5", |r| r.score.is_some_and(|s| s > 2.5)),
        ("score >= 2.5", |r| r.score.is_some_and(|s| s >= 2.5)),
        ("30 > n", |r| r.n.is_some_and(|n| n < 30)),
        ("n BETWEEN 10 AND 20", |r| {
            r.n.is_some_and(|n| (10..=20).contains(&n))
        }),
        ("n NOT BETWEEN 10 AND 20", |r| {
            r.n.is_some_and(|n| !(10..=20).contains(&n))
        }),
        ("label IN ('cat', 'dog')", |r| {
            matches!(r.label, Some("cat" | "dog"))
        }),
        (
            "label NOT IN ('cat', 'dog')",
            |r| matches!(r.label, Some(l) if l != "cat" && l != "dog"),
        ),
        ("label IS NULL", |r| r.label.is_none()),
        ("label IS NOT NULL", |r| r.label.is_some()),
        ("tag LIKE 'ab%'", |r| {
            r.tag.is_some_and(|t| t.starts_with("ab"))
        }),
        ("tag NOT LIKE 'ab%'", |r| {
            r.tag.is_some_and(|t| !t.starts_with("ab"))
        }),
        ("flag = true", |r| r.flag == Some(true)),
        ("flag = FALSE", |r| r.flag == Some(false)),
        ("split = 'train' AND label = 'dog'", |r| {
            r.split == "train" && r.label == Some("dog")
        }),
        ("split = 'val' OR n < 5", |r| {
            r.split == "val" || r.n.is_some_and(|n| n < 5)
        }),
        ("NOT (label = 'cat')", |r| {
            r.label.is_some_and(|l| l != "cat")
        }),
        ("NOT (label = 'cat' OR score > 3)", |r| {
            r.label.is_some_and(|l| l != "cat") && r.score.is_some_and(|s| s <= 3.0)
        }),
        ("NOT (label IS NULL) AND (tag = 'b' OR flag = false)", |r| {
            r.label.is_some() && (r.tag == Some("b") || r.flag == Some(false))
        }),
        ("ingested_at >= '2000-01-01'", |_| true),
        ("ingested_at < '2000-01-01 00:00:00'", |_| false),
        (
            "split IN ('test') AND NOT (n IN (3, 6, 9) OR tag LIKE 'x%')",
            |r| {
                r.split == "test"
                    && r.n.is_some_and(|n| ![3, 6, 9].contains(&n))
                    && r.tag.is_some_and(|t| !t.starts_with('x'))
            },
        ),
    ];
    for (sql, expected) in cases {
        let spec_text = format!("name: f\nfilter: \"{sql}\"\n");
        let spec = lakemount::spec::parse(
            &spec_text,
            Path::new("f.yaml"),
            &table_name(&tmp.path().join("wh")),
        )
        .unwrap();
        let view = resolve(&wh, &spec)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:#}"));
        let got: BTreeSet<String> = (0..view.len()).map(|i| view.content_id(i)).collect();
        let want: BTreeSet<String> = recs
            .iter()
            .filter(|r| expected(r))
            .map(|r| r.id.clone())
            .collect();
        assert_eq!(
            got,
            want,
            "filter {sql}: got {} rows, expected {}",
            got.len(),
            want.len()
        );
    }

    // `limit` keeps the first N by content id.
    let spec = lakemount::spec::parse(
        "limit: 7\n",
        Path::new("l.yaml"),
        &table_name(&tmp.path().join("wh")),
    )
    .unwrap();
    let view = resolve(&wh, &spec).await.unwrap();
    let mut ids: Vec<String> = recs.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    let got: BTreeSet<String> = (0..view.len()).map(|i| view.content_id(i)).collect();
    assert_eq!(got, ids[..7].iter().cloned().collect());
}
