//! The module layering `src/view/mod.rs` and `src/fs/mod.rs` describe:
//! each step imports only the steps below it, so there is no import cycle
//! among `src/view/*` or `src/fs/*`. Read from the sources (code, not
//! comments or tests), so a new upward import fails here with its line.

use std::path::Path;

/// Bottom to top: a module may use the ones before it.
const VIEW: &[&str] = &[
    "compact",
    "epochs",
    "scan",
    "arrange",
    "nearest",
    "render",
    "place",
    "finish",
    "materialize",
    "resolve",
];
const FS: &[&str] = &["plan", "walks", "epochs", "tree", "prefetch"];

/// Sibling modules `file`'s code names, with the line (`super::x`,
/// `crate::<dir>::x`), outside comments and `#[cfg(test)]` items.
fn uses(dir: &str, file: &Path, siblings: &[&str]) -> Vec<(String, usize)> {
    let text = std::fs::read_to_string(file).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let line = line.split("//").next().unwrap_or_default();
        for prefix in ["super::".to_string(), format!("crate::{dir}::")] {
            for (at, _) in line.match_indices(&prefix) {
                let rest = &line[at + prefix.len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                // `super::{a, b}` lists: every name in the braces.
                let names: Vec<String> = if rest.starts_with('{') {
                    rest[1..rest.find('}').unwrap_or(rest.len())]
                        .split(',')
                        .map(|s| s.trim().split("::").next().unwrap_or_default().to_string())
                        .collect()
                } else {
                    vec![name]
                };
                for name in names {
                    if siblings.contains(&name.as_str()) {
                        out.push((name, n + 1));
                    }
                }
            }
        }
    }
    out
}

fn check(dir: &str, order: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
    let mut files: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".rs") && n != "mod.rs")
        .map(|n| n.trim_end_matches(".rs").to_string())
        .collect();
    files.sort();
    let mut listed: Vec<String> = order.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(
        files, listed,
        "src/{dir}: every module has a place in the order"
    );
    let mut wrong = Vec::new();
    for (level, module) in order.iter().enumerate() {
        let path = root.join(format!("{module}.rs"));
        for (used, line) in uses(dir, &path, order) {
            let at = order.iter().position(|m| *m == used).unwrap();
            if at >= level && used != *module {
                wrong.push(format!(
                    "src/{dir}/{module}.rs:{line} uses {used}, which is above it"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "upward imports:\n{}", wrong.join("\n"));
}

#[test]
fn view_steps_import_only_downward() {
    check("view", VIEW);
}

#[test]
fn fs_modules_import_only_downward() {
    check("fs", FS);
}

#[test]
fn the_checker_sees_an_upward_import() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("low.rs");
    std::fs::write(
        &file,
        "use super::{high::X, low2};\n// super::ignored\nfn f() { crate::view::high::g(); }\n#[cfg(test)]\nuse super::high;\n",
    )
    .unwrap();
    let got = uses("view", &file, &["high", "low2"]);
    assert_eq!(
        got,
        vec![("high".into(), 1), ("low2".into(), 1), ("high".into(), 3)]
    );
}
