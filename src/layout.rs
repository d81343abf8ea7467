//! Path templates (`layout: "{label}/{content_id}{ext}"`) and safe names.
//!
//! A template is a `/`-separated list of segments; each segment mixes
//! literal text and `{column}` fields. `{ext}` is the sample's canonical
//! extension (with the dot) from its media type. Every rendered segment is
//! made a safe path component:
//!
//! * a null value renders as `_null_`; `/`, NUL, other control characters
//!   (C0, DEL, C1) and the bidirectional marks and overrides (U+061C,
//!   U+200E/F, U+202A-E, U+2066-9) become `_`, so a listing cannot be made
//!   ambiguous (a newline in a name) or visually spoofed (`gpj.exe` shown as
//!   `exe.jpg`); `.json` sidecars and `_index.jsonl` keep the values intact;
//! * a segment that ends up empty becomes `_empty_`; `.` and `..` become
//!   `_` and `__`;
//! * a segment longer than 255 bytes is cut at a character boundary and
//!   suffixed with `~` and 16 hex digits of its hash, so distinct long names
//!   stay distinct ([`shorten`]); a file name whose `.npy`/`.json` sidecars
//!   would pass 255 bytes is shortened the same way so they fit (see
//!   [`crate::view`]'s placement);
//! * U+2028 and U+2029 (line and paragraph separators) become `_` as the
//!   control characters do, so one listed name is always one line.
//!
//! Two samples that still render to the same path are told apart in the
//! view (see [`crate::view`]): in content-id order, the first keeps the name
//! and each later one gets `~<first 12 hex digits of its content id>` before
//! its extension.

use crate::error::{Result, bail};

/// Longest file name most filesystems (and the kernel's FUSE layer) accept.
pub const NAME_MAX: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Field(String),
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    text: String,
    segments: Vec<Vec<Piece>>,
}

impl Layout {
    /// Parses a template; errors describe what is malformed.
    pub fn parse(text: &str) -> Result<Self> {
        if text.starts_with('/') || text.ends_with('/') {
            bail!(
                "{} must be a relative path that names a file (no leading or trailing /)",
                crate::files::quoted(text)
            );
        }
        let mut segments = Vec::new();
        for seg in text.split('/') {
            if seg.is_empty() {
                bail!(
                    "{} has an empty path segment (//)",
                    crate::files::quoted(text)
                );
            }
            if seg == "." || seg == ".." {
                bail!(
                    "{} may not contain . or .. segments",
                    crate::files::quoted(text)
                );
            }
            let mut pieces = Vec::new();
            let mut rest = seg;
            while !rest.is_empty() {
                if let Some(open) = rest.find('{') {
                    if open > 0 {
                        pieces.push(Piece::Lit(check_lit(&rest[..open], text)?));
                    }
                    let after = &rest[open + 1..];
                    let Some(close) = after.find('}') else {
                        bail!(
                            "{} has a `{{` without a matching `}}`",
                            crate::files::quoted(text)
                        );
                    };
                    let field = &after[..close];
                    let ident = field
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !ident {
                        bail!(
                            "{}: `{{{field}}}` is not a column name",
                            crate::files::quoted(text)
                        );
                    }
                    pieces.push(Piece::Field(field.to_string()));
                    rest = &after[close + 1..];
                } else {
                    pieces.push(Piece::Lit(check_lit(rest, text)?));
                    rest = "";
                }
            }
            segments.push(pieces);
        }
        if !segments
            .iter()
            .flatten()
            .any(|p| matches!(p, Piece::Field(_)))
        {
            bail!(
                "{} uses no column, so every sample would get the same name",
                crate::files::quoted(text)
            );
        }
        Ok(Self {
            text: text.to_string(),
            segments,
        })
    }

    /// The template as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Column names the template uses (`ext` included).
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().flatten().filter_map(|p| match p {
            Piece::Field(f) => Some(f.as_str()),
            Piece::Lit(_) => None,
        })
    }

    /// Appends one sample's path (components joined by `/`) to `out`
    /// without allocating: `value` appends a field's text to the buffer it
    /// is given and returns false for null. Same result as [`Layout::render`].
    pub fn render_into(
        &self,
        out: &mut String,
        scratch: &mut String,
        mut value: impl FnMut(&str, &mut String) -> bool,
    ) {
        for (k, seg) in self.segments.iter().enumerate() {
            if k > 0 {
                out.push('/');
            }
            scratch.clear();
            for p in seg {
                match p {
                    Piece::Lit(l) => scratch.push_str(l),
                    Piece::Field(f) => {
                        let mark = scratch.len();
                        if !value(f, scratch) {
                            scratch.truncate(mark);
                            scratch.push_str("_null_");
                        }
                    }
                }
            }
            // ASCII printable text is the fast path; anything else is checked
            // character by character.
            let plain = !scratch.is_empty()
                && scratch != "."
                && scratch != ".."
                && scratch.len() <= NAME_MAX
                && (scratch
                    .bytes()
                    .all(|b| (0x20..0x7f).contains(&b) && b != b'/')
                    || !scratch.chars().any(|c| c == '/' || is_unsafe_char(c)));
            if plain {
                out.push_str(scratch);
            } else {
                out.push_str(&safe_component(scratch));
            }
        }
    }

    /// Renders the path components for one sample; `value` gives a field's
    /// text (`None` for null).
    pub fn render(&self, value: impl Fn(&str) -> Option<String>) -> Vec<String> {
        self.segments
            .iter()
            .map(|seg| {
                let mut s = String::new();
                for p in seg {
                    match p {
                        Piece::Lit(l) => s.push_str(l),
                        Piece::Field(f) => s.push_str(&value(f).unwrap_or_else(|| "_null_".into())),
                    }
                }
                safe_component(&s)
            })
            .collect()
    }
}

fn check_lit(lit: &str, text: &str) -> Result<String> {
    if lit.contains('}') {
        bail!(
            "{} has a `}}` without a matching `{{`",
            crate::files::quoted(text)
        );
    }
    if lit.contains('\0') {
        bail!("{} contains a NUL character", crate::files::quoted(text));
    }
    Ok(lit.to_string())
}

/// Whether `c` may not appear in a file name: a control character (NUL
/// included) or a bidirectional mark, embedding, override or isolate.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `s` if it is at most `max` bytes; else cut at a character boundary and
/// suffixed with `~` and 16 hex digits of the hash of all of `s`, so
/// distinct long names stay distinct, `max` bytes in all.
pub fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let hash = crate::encode::builtin::fnv1a(s.as_bytes());
    let mut cut = max.saturating_sub(17);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{hash:016x}", &s[..cut])
}

/// Makes one path component safe (see the module docs).
pub fn safe_component(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c == '/' || is_unsafe_char(c) {
                '_'
            } else {
                c
            }
        })
        .collect();
    if out.is_empty() {
        out = "_empty_".into();
    } else if out == "." || out == ".." {
        out = out.replace('.', "_");
    }
    shorten(&out, NAME_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fields_and_literals() {
        let l = Layout::parse("{split}/{label}/img-{content_id}{ext}").unwrap();
        let v = |f: &str| match f {
            "split" => Some("train".to_string()),
            "label" => None,
            "content_id" => Some("abc".to_string()),
            "ext" => Some(".png".to_string()),
            _ => unreachable!(),
        };
        assert_eq!(l.render(v), ["train", "_null_", "img-abc.png"]);
        assert_eq!(
            l.fields().collect::<Vec<_>>(),
            ["split", "label", "content_id", "ext"]
        );
    }

    #[test]
    fn malformed_templates() {
        for bad in [
            "/a/{x}",
            "{x}/",
            "a//{x}",
            "{x",
            "x}",
            "{a b}",
            "static.png",
            "../{x}",
        ] {
            assert!(Layout::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unsafe_values_become_safe_names() {
        assert_eq!(safe_component("a/b"), "a_b");
        assert_eq!(safe_component(".."), "__");
        assert_eq!(safe_component("."), "_");
        assert_eq!(safe_component(""), "_empty_");
        assert_eq!(safe_component("x\0y"), "x_y");
        assert_eq!(safe_component("a\nb\tc\u{7f}d\u{85}"), "a_b_c_d_");
        assert_eq!(safe_component("photo\u{202E}gpj.exe"), "photo_gpj.exe");
        assert_eq!(safe_component("\u{2066}x\u{2069}\u{200F}"), "_x__");
        let long = "é".repeat(200);
        let a = safe_component(&long);
        assert!(a.len() <= NAME_MAX);
        assert_ne!(a, safe_component(&"é".repeat(201)));
    }

    #[test]
    fn render_into_matches_render() {
        let l = Layout::parse("{split}/x-{label}/{content_id}{ext}").unwrap();
        let long = "é".repeat(200);
        let values = [
            None,
            Some(""),
            Some("."),
            Some(".."),
            Some("a/b"),
            Some("c\0d"),
            Some(long.as_str()),
            Some("plain"),
        ];
        let (mut out, mut scratch) = (String::new(), String::new());
        for a in values {
            for b in values {
                let v = |f: &str| match f {
                    "split" => a,
                    "label" => b,
                    "content_id" => Some("abc"),
                    _ => Some(".png"),
                };
                out.clear();
                l.render_into(&mut out, &mut scratch, |f, buf| match v(f) {
                    Some(t) => {
                        buf.push_str(t);
                        true
                    }
                    None => false,
                });
                assert_eq!(out, l.render(|f| v(f).map(str::to_string)).join("/"));
            }
        }
    }

    #[test]
    fn arbitrary_values_never_escape_their_component() {
        // Seeded pseudo-random strings over a hostile alphabet.
        let alphabet: Vec<char> = "./\0a_é ..\n\u{202e}\u{85}".chars().collect();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let len = (state % 12) as usize;
            let s: String = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    alphabet[(state % alphabet.len() as u64) as usize]
                })
                .collect();
            let c = safe_component(&s);
            assert!(
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && !c.chars().any(|x| x == '/' || is_unsafe_char(x)),
                "{s:?} -> {c:?}"
            );
        }
    }
}
