//! The trust boundary between the table and the machine.
//!
//! The tables are a contract other writers follow, so what they say is
//! untrusted input. A row's `uri` decides which file or object a mount
//! reads, possibly as root for other users (`--allow-other`): a row that
//! says `file:///etc/shadow` must not turn the mount into a way to read it.
//! So a sample is read only from inside the warehouse or below a prefix
//! the operator allowed (`--allow-uri-prefix`); any other row's reads are
//! EIO with a log line, and `lakemount check` reports it.
//!
//! The rule is lexical and strict: the URI is parsed, percent-decoded, and
//! must not contain `..` or `.` path segments; its scheme and authority
//! must equal the root's and its path must start with the root's path, a
//! whole segment at a time. Local reads also refuse symlinks that leave
//! the root (see [`crate::source`]).
//!
//! [`redact`] keeps secrets (passwords and tokens in URIs) out of messages,
//! in two layers that do not depend on a URI parsing: the secrets the
//! command was given are registered ([`register_secret`], from the catalog
//! URI read leniently by [`uri_password`], catalog options and storage
//! keys) and replaced wherever they appear; and anything shaped like
//! `scheme://user:password@host` has its password replaced whether or not
//! the rest of it is a valid URI (a bad port, an empty host, brackets).

use crate::error::{Context, Result, bail};
use url::Url;

/// Which URIs samples may be read from.
#[derive(Debug, Clone)]
pub struct UriTrust {
    roots: Vec<Url>,
}

impl UriTrust {
    /// Trusts the warehouse root and each of `extra` (URIs or absolute paths).
    pub fn new(warehouse_root: &Url, extra: &[String]) -> Result<Self> {
        let mut roots = vec![dir_url(warehouse_root.clone())];
        for e in extra {
            let url = if e.contains("://") {
                Url::parse(e).with_context(|| format!("--allow-uri-prefix {e}: not a URI"))?
            } else {
                let path = std::path::Path::new(e);
                if !path.is_absolute() {
                    bail!("--allow-uri-prefix {e}: give an absolute path or a URI");
                }
                Url::from_directory_path(path)
                    .map_err(|_| crate::error::err!("--allow-uri-prefix {e}: not a usable path"))?
            };
            if segments(&url).is_none() {
                bail!("--allow-uri-prefix {e}: may not contain . or .. segments");
            }
            roots.push(dir_url(url));
        }
        Ok(Self { roots })
    }

    /// Trusts everything: for tools that read no sample bytes.
    pub fn any() -> Self {
        Self { roots: Vec::new() }
    }

    /// Whether a sample with this `uri` may be read. `lance:` URIs are
    /// markers (the bytes are read from the view's own Lance dataset, which
    /// [`UriTrust::allows_dataset`] checked), so they pass.
    pub fn allows(&self, uri: &str) -> bool {
        if self.roots.is_empty() || uri.starts_with("lance:") {
            return true;
        }
        let Ok(url) = Url::parse(uri) else {
            return false;
        };
        let Some(path) = segments(&url) else {
            return false;
        };
        self.roots.iter().any(|root| {
            root.scheme() == url.scheme()
                && root.host_str() == url.host_str()
                && root.port() == url.port()
                && segments(root).is_some_and(|r| {
                    let r: Vec<&String> = r.iter().filter(|s| !s.is_empty()).collect();
                    path.len() > r.len() && path.iter().zip(&r).all(|(a, b)| a == *b)
                })
        })
    }

    /// Whether the Lance dataset at `location` (a path or URI) may be read.
    pub fn allows_dataset(&self, location: &str) -> bool {
        if self.roots.is_empty() {
            return true;
        }
        if location.contains("://") {
            return self.allows(location);
        }
        let path = std::path::Path::new(location);
        path.is_absolute() && Url::from_file_path(path).is_ok_and(|u| self.allows(u.as_str()))
    }

    /// The warehouse root this rule was made for (`None` for [`UriTrust::any`]).
    pub fn warehouse(&self) -> Option<&Url> {
        self.roots.first()
    }

    /// The local directories among the roots.
    pub fn local_roots(&self) -> Vec<std::path::PathBuf> {
        self.roots
            .iter()
            .filter(|u| u.scheme() == "file")
            .filter_map(|u| u.to_file_path().ok())
            .collect()
    }
}

fn dir_url(mut url: Url) -> Url {
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    url
}

/// The URI's path segments, percent-decoded; `None` when one of them is
/// `.` or `..` or holds a `/` or NUL once decoded.
fn segments(url: &Url) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for seg in url.path_segments()? {
        let decoded = percent_encoding::percent_decode_str(seg)
            .decode_utf8()
            .ok()?
            .into_owned();
        if decoded == "." || decoded == ".." || decoded.contains(['/', '\0', '\\']) {
            return None;
        }
        out.push(decoded);
    }
    // A trailing empty segment is the directory itself.
    if out.last().is_some_and(String::is_empty) {
        out.pop();
    }
    Some(out)
}

/// Secrets this process was given; [`redact`] replaces each wherever it
/// appears.
static SECRETS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Shorter secrets are only redacted where they stand in a URI (replacing
/// every "ab" in a message would garble it and hide nothing).
const MIN_REGISTERED: usize = 3;

/// Registers a secret (and its percent-decoded form) to be redacted from
/// every message.
pub fn register_secret(secret: &str) {
    let decoded = percent_encoding::percent_decode_str(secret)
        .decode_utf8_lossy()
        .into_owned();
    register([secret.to_string(), decoded]);
}

/// Registers the password of a URI: redacted where it stands in
/// `user:password@`, in any message, also when what surrounds it does not
/// parse as a URI. (Not everywhere: a password equal to the user name or
/// a word of the message would garble it.)
pub fn register_uri_password(password: &str) {
    let decoded = percent_encoding::percent_decode_str(password)
        .decode_utf8_lossy()
        .into_owned();
    register([format!(":{password}@"), format!(":{decoded}@")]);
}

fn register(values: [String; 2]) {
    if let Ok(mut s) = SECRETS.lock() {
        for v in values {
            if v.len() >= MIN_REGISTERED && !s.contains(&v) {
                s.push(v);
            }
        }
        // Longest first, so a secret containing another is replaced whole.
        s.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }
}

/// The password of `scheme://user:password@host...`, read without parsing
/// the URI: between the first `:` after `://` and the last `@`, so a
/// password holding `@`, `/` or spaces, or a URI invalid elsewhere (bad
/// port, empty host), still yields it.
pub fn uri_password(uri: &str) -> Option<&str> {
    let (_, rest) = uri.split_once("://")?;
    let at = rest.rfind('@')?;
    let userinfo = &rest[..at];
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

/// `text` with the registered secrets, the password of any URI in it, and
/// the values of query parameters that look like secrets, replaced by `***`.
pub fn redact(text: &str) -> String {
    let mut text = text.to_string();
    if let Ok(secrets) = SECRETS.lock() {
        for s in secrets.iter() {
            if text.contains(s.as_str()) {
                let masked = if s.starts_with(':') && s.ends_with('@') {
                    ":***@"
                } else {
                    "***"
                };
                text = text.replace(s.as_str(), masked);
            }
        }
    }
    let text = text.as_str();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        // The URI runs from its scheme to the next whitespace or quote.
        let start = rest[..pos]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
            .map_or(0, |k| k + 1);
        let end = rest[pos..]
            .find(|c: char| c.is_whitespace() || "\"'`<>".contains(c))
            .map_or(rest.len(), |k| pos + k);
        out.push_str(&rest[..start]);
        out.push_str(&redact_uri(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn redact_uri(uri: &str) -> String {
    let Ok(mut url) = Url::parse(uri) else {
        return redact_userinfo(uri);
    };
    let mut changed = false;
    if url.password().is_some() {
        changed |= url.set_password(Some("***")).is_ok();
    }
    if url.query().is_some() {
        let secret = |k: &str| {
            let k = k.to_ascii_lowercase();
            [
                "password",
                "secret",
                "token",
                "credential",
                "key",
                "signature",
            ]
            .iter()
            .any(|s| k.contains(s))
        };
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        if pairs.iter().any(|(_, v)| v == "***") {
            url.query_pairs_mut().clear().extend_pairs(pairs);
            changed = true;
        }
    }
    if changed {
        url.to_string()
    } else {
        uri.to_string()
    }
}

/// The password of a URI-shaped text that does not parse, replaced: in
/// the authority (up to the first `/`), between the first `:` and the last
/// `@`.
fn redact_userinfo(uri: &str) -> String {
    let Some(pos) = uri.find("://") else {
        return uri.to_string();
    };
    let start = pos + 3;
    let end = uri[start..]
        .find(['/', '?', '#'])
        .map_or(uri.len(), |k| start + k);
    let authority = &uri[start..end];
    let Some(at) = authority.rfind('@') else {
        return uri.to_string();
    };
    let Some(colon) = authority[..at].find(':') else {
        return uri.to_string();
    };
    format!(
        "{}{}:***{}",
        &uri[..start],
        &authority[..colon],
        &uri[start + at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust() -> UriTrust {
        let root = Url::parse("file:///srv/wh/").unwrap();
        UriTrust::new(&root, &["/data/extra".into(), "s3://bucket/pre".into()]).unwrap()
    }

    #[test]
    fn inside_the_roots_only() {
        let t = trust();
        for ok in [
            "file:///srv/wh/blobs/ab/abcd",
            "file:///data/extra/x.png",
            "s3://bucket/pre/a/b",
            "lance:/anything#id",
        ] {
            assert!(t.allows(ok), "{ok}");
        }
        for bad in [
            "file:///etc/shadow",
            "file:///srv/wh",
            "file:///srv/wh2/x",
            "file:///srv/wh/blobs/../../etc/shadow",
            "file:///srv/wh/blobs/%2e%2e/%2e%2e/etc/shadow",
            "file:///srv/wh/x%2F..%2F..%2Fetc%2Fshadow",
            "file:///data/extrax/y",
            "s3://bucket/prefix/a",
            "s3://other/pre/a",
            "http://bucket/pre/a",
            "not a uri",
        ] {
            assert!(!t.allows(bad), "{bad}");
        }
        assert!(t.allows_dataset("/srv/wh/lance/x.lance"));
        assert!(!t.allows_dataset("/tmp/x.lance"));
        assert!(!t.allows_dataset("relative/x.lance"));
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            redact("cannot open postgres://lm:hunter2@db:5432/iceberg: refused"),
            "cannot open postgres://lm:***@db:5432/iceberg: refused"
        );
        assert_eq!(
            redact("uri=http://h/x?token=abc&x=1 and s3://b/k"),
            "uri=http://h/x?token=***&x=1 and s3://b/k"
        );
        assert_eq!(
            redact("sqlite:/wh/catalog.db?mode=rwc"),
            "sqlite:/wh/catalog.db?mode=rwc"
        );
        assert!(!redact("postgresql://u:p%40ss@h/db").contains("p%40ss"));
    }

    #[test]
    fn malformed_uris_are_redacted_before_parsing() {
        for (uri, secret) in [
            ("postgres://lm:hunter2@db:99999/iceberg", "hunter2"),
            ("postgres://lm:hunter3@:5432/iceberg", "hunter3"),
            ("postgres://lm:hunter4@[::1/iceberg", "hunter4"),
            ("postgres://lm:hunter5@db:port/x", "hunter5"),
        ] {
            let shown = redact(&format!("cannot open {uri}: refused"));
            assert!(!shown.contains(secret), "{shown}");
            assert!(shown.contains("lm:***@"), "{shown}");
        }
        // A user with a space ends the URI where a message scanner looks;
        // the registered secret is caught anyway.
        let uri = "postgres://my user:s3cr%2Ft@db/x";
        register_uri_password(uri_password(uri).unwrap());
        let shown = redact(&format!("bad catalog {uri} (user contains a space)"));
        assert!(!shown.contains("s3cr"), "{shown}");
        assert_eq!(uri_password("postgres://u:p@ss/w@h/db"), Some("p@ss/w"));
        assert_eq!(uri_password("sqlite:/x.db"), None);
    }
}
