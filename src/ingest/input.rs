//! What an ingest reads: an ImageFolder directory or a CSV/JSONL manifest,
//! parsed and validated completely before anything is written, and the
//! typing of manifest extra columns against the table.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::error::{Context, Result, bail, err};

use crate::catalog::write::Value;
use crate::catalog::{ExtraType, is_base_column};

/// An untyped manifest cell: CSV text, or a JSON scalar.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    /// A CSV field (never empty: empty fields are null).
    Text(String),
    /// A JSONL scalar (never null).
    Json(serde_json::Value),
}

/// One file to ingest.
#[derive(Debug, Clone)]
pub struct InputItem {
    /// Where the file is.
    pub path: PathBuf,
    /// How messages name this item: the path, plus the manifest line if any.
    pub origin: String,
    /// Class label.
    pub label: Option<String>,
    /// Split given by the manifest.
    pub split: Option<String>,
    /// Source given by the manifest.
    pub source: Option<String>,
    /// Extra columns, untyped until [`type_extras`] runs.
    pub raw_extras: BTreeMap<String, Raw>,
    /// Extra columns after typing.
    pub extras: HashMap<String, Value>,
    /// Manifest line number (1-based, counting the header), if from a manifest.
    pub line: Option<usize>,
    /// The sample itself, for manifest rows with a `text` column and no
    /// `path`: a text sample (`text/plain`), no file read.
    pub text: Option<String>,
    /// For manifest rows: the directory the file must be read beneath (the
    /// manifest's folder or an allowed prefix) and the path below it.
    pub beneath: Option<(PathBuf, PathBuf)>,
}

/// Everything an ingest will process, in a deterministic order.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The files.
    pub items: Vec<InputItem>,
    /// The directory or manifest they came from (for messages).
    pub origin: PathBuf,
    /// Extra column names in first-seen order.
    pub extra_names: Vec<String>,
}

/// Walks `DIR/<label>/<file>` (deeper files take the first directory as label;
/// files directly in `DIR` have no label). Hidden entries are skipped.
pub fn from_dir(dir: &Path) -> Result<Inputs> {
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read input directory {}", dir.display()))?;
    if !meta.is_dir() {
        bail!(
            "{} is not a directory; to ingest a manifest use --manifest {}",
            dir.display(),
            dir.display()
        );
    }
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.sort();
    if files.is_empty() {
        bail!(
            "no files found in {} (expected an ImageFolder layout: {}/<label>/<file>)",
            dir.display(),
            dir.display()
        );
    }
    let items = files
        .into_iter()
        .map(|path| {
            let rel = path.strip_prefix(dir).unwrap_or(&path);
            let mut comps = rel.components();
            let first = comps.next();
            let label = if comps.next().is_some() {
                first.map(|c| c.as_os_str().to_string_lossy().into_owned())
            } else {
                None
            };
            InputItem {
                origin: path.display().to_string(),
                path,
                label,
                split: None,
                source: None,
                raw_extras: BTreeMap::new(),
                extras: HashMap::new(),
                line: None,
                text: None,
                beneath: None,
            }
        })
        .collect();
    Ok(Inputs {
        items,
        origin: dir.to_path_buf(),
        extra_names: Vec::new(),
    })
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list directory {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list directory {}", dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let ft = entry
            .file_type()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        if ft.is_dir() {
            walk(&path, out)?;
        } else {
            // Regular files and symlinks; unreadable ones are rejected later
            // with a per-file reason instead of failing the whole walk.
            out.push(path);
        }
    }
    Ok(())
}

/// Parses a manifest; `.jsonl`/`.ndjson` are JSON lines, anything else CSV.
/// Its `path`s must lie below the manifest's folder or below one of
/// `allowed` (absolute directories, `--allow-path-prefix`), so a manifest
/// someone else wrote cannot make an ingest copy any file the ingesting
/// user can read into the warehouse.
pub fn from_manifest(file: &Path, allowed: &[PathBuf]) -> Result<Inputs> {
    let text = crate::files::read_regular_string(file, crate::files::limits::MANIFEST)
        .with_context(|| format!("cannot read manifest {}", file.display()))?;
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let base = std::path::absolute(&base)
        .map(|b| lexical(&b).unwrap_or(b))
        .with_context(|| format!("manifest {}: bad folder", file.display()))?;
    let allowed: Vec<PathBuf> = allowed
        .iter()
        .map(|a| {
            let a = std::path::absolute(a)
                .with_context(|| format!("--allow-path-prefix {}: bad path", a.display()))?;
            lexical(&a)
                .with_context(|| format!("--allow-path-prefix {}: may not contain ..", a.display()))
        })
        .collect::<Result<_>>()?;
    let ext = file
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let rows = if ext == "jsonl" || ext == "ndjson" {
        parse_jsonl(file, &text)?
    } else {
        parse_csv(file, &text)?
    };
    if rows.is_empty() {
        bail!("manifest {} has no rows", file.display());
    }
    let mut extra_names: Vec<String> = Vec::new();
    let mut items = Vec::with_capacity(rows.len());
    for (line, mut cells) in rows {
        let at = || format!("{} line {line}", file.display());
        // A row names a file (`path`) or, without one, is a text sample
        // (`text`); with a `path`, `text` is an ordinary column.
        let (path, inline) = match cells.remove("path") {
            Some(Raw::Text(s)) => (s, None),
            Some(Raw::Json(serde_json::Value::String(s))) => (s, None),
            Some(other) => bail!("{}: `path` must be a string, got {other:?}", at()),
            None => match cells.remove("text") {
                Some(Raw::Text(t)) => (String::new(), Some(t)),
                Some(Raw::Json(serde_json::Value::String(t))) => (String::new(), Some(t)),
                Some(other) => bail!("{}: `text` must be a string, got {other:?}", at()),
                None => bail!(
                    "{}: no `path` (the file's path) and no `text` (a text sample); every row needs one",
                    at()
                ),
            },
        };
        let mut text_of = |k: &str| -> Result<Option<String>> {
            Ok(match cells.remove(k) {
                None => None,
                Some(Raw::Text(s)) => Some(s),
                Some(Raw::Json(serde_json::Value::String(s))) => Some(s),
                Some(Raw::Json(v)) => Some(match v {
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    other => bail!("{}: `{k}` must be a string, got {other}", at()),
                }),
            })
        };
        let label = text_of("label")?;
        let split = text_of("split")?;
        let source = text_of("source")?;
        for name in cells.keys() {
            validate_column_name(name).map_err(|e| err!("{}: {e}", at()))?;
            if !extra_names.contains(name) {
                extra_names.push(name.clone());
            }
        }
        let (full, beneath) = if inline.is_some() {
            (PathBuf::new(), None)
        } else {
            let full = lexical(&base.join(&path));
            let under = |root: &Path| {
                full.as_ref()
                    .and_then(|f| f.strip_prefix(root).ok())
                    .filter(|rel| !rel.as_os_str().is_empty())
                    .map(|rel| (root.to_path_buf(), rel.to_path_buf()))
            };
            let beneath = under(&base)
                .or_else(|| allowed.iter().find_map(|a| under(a)))
                .with_context(|| {
                    format!(
                        "{}: path {:?} is outside the manifest's folder {}; a manifest may name only files \
                         below its own folder, unless a location is allowed with --allow-path-prefix DIR",
                        at(),
                        crate::files::excerpt(&path, 80),
                        base.display()
                    )
                })?;
            (beneath.0.join(&beneath.1), Some(beneath))
        };
        items.push(InputItem {
            origin: match inline {
                None => format!("{} ({}, line {line})", path, file.display()),
                Some(_) => format!("text ({}, line {line})", file.display()),
            },
            path: full,
            beneath,
            text: inline,
            label,
            split,
            source,
            raw_extras: cells,
            extras: HashMap::new(),
            line: Some(line),
        });
    }
    Ok(Inputs {
        items,
        origin: file.to_path_buf(),
        extra_names,
    })
}

/// `path` with `.` segments dropped and `..` applied, without touching the
/// filesystem; `None` when `..` would climb above the root.
fn lexical(path: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() || out.as_os_str().is_empty() {
                    return None;
                }
            }
            other => out.push(other),
        }
    }
    Some(out)
}

fn validate_column_name(name: &str) -> Result<()> {
    if is_base_column(name) {
        bail!(
            "column `{name}` is computed by lakemount and cannot come from a manifest; rename it"
        );
    }
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        bail!(
            "column name `{name}` is not an identifier (letters, digits and _, not starting with a digit)"
        );
    }
    Ok(())
}

type Row = (usize, BTreeMap<String, Raw>);

fn parse_csv(file: &Path, text: &str) -> Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .with_context(|| format!("{}: cannot read the CSV header", file.display()))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    if !headers.iter().any(|h| h == "path" || h == "text") {
        bail!(
            "{} line 1: the header has no `path` (files) or `text` (text samples) column (found: {})",
            file.display(),
            headers.join(", ")
        );
    }
    let mut seen = std::collections::HashSet::new();
    for h in &headers {
        if !seen.insert(h) {
            bail!(
                "{} line 1: column `{h}` appears twice in the header",
                file.display()
            );
        }
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            match e.kind() {
                csv::ErrorKind::UnequalLengths {
                    expected_len, len, ..
                } => err!(
                    "{} line {line}: expected {expected_len} fields ({}), found {len}",
                    file.display(),
                    headers.join(",")
                ),
                _ => err!("{} line {line}: malformed CSV: {e}", file.display()),
            }
        })?;
        let line = record.position().map(|p| p.line() as usize).unwrap_or(0);
        let mut cells = BTreeMap::new();
        for (h, v) in headers.iter().zip(record.iter()) {
            if !v.is_empty() {
                cells.insert(h.clone(), Raw::Text(v.to_string()));
            }
        }
        if !cells.contains_key("path") && !cells.contains_key("text") {
            bail!(
                "{} line {line}: `path` is empty (every row needs the file's path, or a `text`)",
                file.display()
            );
        }
        rows.push((line, cells));
    }
    Ok(rows)
}

fn parse_jsonl(file: &Path, text: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| err!("{} line {n}: not valid JSON: {e}", file.display()))?;
        let serde_json::Value::Object(map) = value else {
            bail!(
                "{} line {n}: expected a JSON object, got {value}",
                file.display()
            );
        };
        let mut cells = BTreeMap::new();
        for (k, v) in map {
            match v {
                serde_json::Value::Null => {}
                serde_json::Value::Array(_) | serde_json::Value::Object(_) => bail!(
                    "{} line {n}: `{k}` is a nested value; only strings, numbers and booleans are supported",
                    file.display()
                ),
                v => {
                    cells.insert(k, Raw::Json(v));
                }
            }
        }
        rows.push((n, cells));
    }
    Ok(rows)
}

/// Types every extra column and converts the raw values. Columns the table
/// already has keep the table's type (a value that does not fit is an error
/// naming the line); new columns get the narrowest type that fits every
/// value. Returns the columns the table must gain.
pub fn type_extras(
    inputs: &mut Inputs,
    table_columns: &HashMap<String, Option<ExtraType>>,
    table_name: &str,
) -> Result<Vec<(String, ExtraType)>> {
    let origin = inputs.origin.display().to_string();
    let mut new_columns = Vec::new();
    for name in inputs.extra_names.clone() {
        let ty = match table_columns.get(&name) {
            Some(Some(t)) => *t,
            Some(None) => bail!(
                "{origin}: column `{name}` exists in table {table_name} with a type ingest cannot write"
            ),
            None => {
                let t = infer(inputs.items.iter().filter_map(|i| i.raw_extras.get(&name)))
                    .map_err(|(line_of, msg)| {
                        let line = inputs
                            .items
                            .iter()
                            .find(|i| i.raw_extras.get(&name) == Some(&line_of))
                            .and_then(|i| i.line)
                            .unwrap_or(0);
                        err!("{origin} line {line}: column `{name}`: {msg}")
                    })?;
                new_columns.push((name.clone(), t));
                t
            }
        };
        for item in &mut inputs.items {
            if let Some(raw) = item.raw_extras.get(&name) {
                let v = convert(raw, ty).ok_or_else(|| {
                    err!(
                        "{origin} line {}: column `{name}` is {} in table {table_name}, got {}",
                        item.line.unwrap_or(0),
                        ty.name(),
                        describe(raw)
                    )
                })?;
                item.extras.insert(name.clone(), v);
            }
        }
    }
    Ok(new_columns)
}

fn describe(raw: &Raw) -> String {
    match raw {
        Raw::Text(s) => format!("{s:?}"),
        Raw::Json(v) => v.to_string(),
    }
}

/// The narrowest type for a column's values. On a conflict, returns the
/// first value that does not fit and why.
fn infer<'a>(values: impl Iterator<Item = &'a Raw>) -> Result<ExtraType, (Raw, String)> {
    let values: Vec<&Raw> = values.collect();
    let json = values.iter().any(|v| matches!(v, Raw::Json(_)));
    if !json {
        for t in [ExtraType::Boolean, ExtraType::Long, ExtraType::Double] {
            if values.iter().all(|v| convert(v, t).is_some()) {
                return Ok(t);
            }
        }
        return Ok(ExtraType::String);
    }
    let kind = |v: &Raw| match v {
        Raw::Json(serde_json::Value::Bool(_)) => ExtraType::Boolean,
        Raw::Json(serde_json::Value::Number(n)) if n.is_i64() => ExtraType::Long,
        Raw::Json(serde_json::Value::Number(_)) => ExtraType::Double,
        _ => ExtraType::String,
    };
    // An integer too large for a long must not quietly become a double:
    // one above i64::MAX (read as u64), or, in a column of integers, a
    // whole number beyond the long range (read as a float).
    let integers = values.iter().all(|v| match v {
        Raw::Json(serde_json::Value::Number(n)) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    });
    for v in &values {
        if let Raw::Json(serde_json::Value::Number(n)) = v {
            let too_big = (n.is_u64() && !n.is_i64())
                || integers && !n.is_i64() && n.as_f64().is_some_and(|f| f.abs() >= 9.2e18);
            if too_big {
                return Err((
                    (*v).clone(),
                    format!(
                        "integer {n} does not fit a 64-bit signed integer (at most {}); write it as a string or a float if that is what it is",
                        i64::MAX
                    ),
                ));
            }
        }
    }
    let mut acc: Option<ExtraType> = None;
    for v in &values {
        let k = kind(v);
        acc = Some(match (acc, k) {
            (None, k) => k,
            (Some(a), k) if a == k => a,
            (Some(ExtraType::Long), ExtraType::Double)
            | (Some(ExtraType::Double), ExtraType::Long) => ExtraType::Double,
            (Some(a), k) => {
                return Err((
                    (*v).clone(),
                    format!("is {} here but {} on an earlier line", k.name(), a.name()),
                ));
            }
        });
    }
    Ok(acc.unwrap_or(ExtraType::String))
}

fn convert(raw: &Raw, ty: ExtraType) -> Option<Value> {
    use serde_json::Value as J;
    match (raw, ty) {
        (Raw::Text(s), ExtraType::String) => Some(Value::Str(s.clone())),
        (Raw::Text(s), ExtraType::Boolean) => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        (Raw::Text(s), ExtraType::Long) => s.trim().parse().ok().map(Value::Long),
        (Raw::Text(s), ExtraType::Double) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|d| d.is_finite())
            .map(Value::Double),
        (Raw::Json(J::String(s)), ExtraType::String) => Some(Value::Str(s.clone())),
        (Raw::Json(J::Bool(b)), ExtraType::Boolean) => Some(Value::Bool(*b)),
        (Raw::Json(J::Number(n)), ExtraType::Long) => n.as_i64().map(Value::Long),
        (Raw::Json(J::Number(n)), ExtraType::Double) => n.as_f64().map(Value::Double),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_types_are_inferred_narrowest_first() {
        let t = |vals: &[&str]| {
            let raws: Vec<Raw> = vals.iter().map(|s| Raw::Text(s.to_string())).collect();
            infer(raws.iter()).unwrap()
        };
        assert_eq!(t(&["true", "FALSE"]), ExtraType::Boolean);
        assert_eq!(t(&["1", "-3"]), ExtraType::Long);
        assert_eq!(t(&["1", "0.5"]), ExtraType::Double);
        assert_eq!(t(&["1", "x"]), ExtraType::String);
    }

    #[test]
    fn json_type_conflicts_are_reported() {
        let raws = [
            Raw::Json(serde_json::json!(1)),
            Raw::Json(serde_json::json!("one")),
        ];
        let err = infer(raws.iter()).unwrap_err();
        assert!(err.1.contains("string here but long"), "{}", err.1);
    }

    #[test]
    fn integers_beyond_i64_are_errors_not_doubles() {
        let raws = [
            Raw::Json(serde_json::json!(1)),
            Raw::Json(serde_json::json!(u64::MAX)),
        ];
        let err = infer(raws.iter()).unwrap_err();
        assert!(
            err.1.contains("does not fit a 64-bit signed integer"),
            "{}",
            err.1
        );
        let big: serde_json::Value = serde_json::from_str("100000000000000000000").unwrap();
        let raws = [Raw::Json(serde_json::json!(1)), Raw::Json(big)];
        assert!(infer(raws.iter()).is_err());
        // A float column may hold large values.
        let raws = [
            Raw::Json(serde_json::json!(0.5)),
            Raw::Json(serde_json::json!(1e20)),
        ];
        assert_eq!(infer(raws.iter()).unwrap(), ExtraType::Double);
    }

    #[test]
    fn column_names_are_checked() {
        assert!(validate_column_name("quality_score").is_ok());
        assert!(validate_column_name("uri").is_err());
        assert!(validate_column_name("9lives").is_err());
        assert!(validate_column_name("a-b").is_err());
    }
}
