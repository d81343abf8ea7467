//! The compact encodings a view is held in. A mount may show millions of
//! samples, so each per-sample string is stored once, in a shape that
//! leaves out what can be recomputed:
//!
//! - [`PathArena`]: every sample's path back to back in one buffer, the
//!   content id (64 hex digits in most file names) stored as one mark byte;
//! - [`BlobUris`]: a URI that is a shared prefix plus the content id is
//!   stored as a prefix number, any other URI whole;
//! - [`prefix16`] / [`sort_by_prefix16`]: sorting by a 16-byte numeric
//!   prefix kept next to each index, so most comparisons touch no string.
//!
//! Each type owns its invariant and is tested against the plain encoding
//! it replaces.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use crate::content_id::ContentId;

/// Stands for the content id in a stored file name. Never part of a real
/// name: path components are made safe before they are stored (no NUL).
const ID_MARK: char = '\0';

/// The first 16 bytes of `bytes`, big-endian, zero-padded: compares as the
/// byte strings do wherever they differ in those bytes (names hold no NUL,
/// so a shorter name's padding sorts first, as the shorter string does).
pub fn prefix16(bytes: impl IntoIterator<Item = u8>) -> u128 {
    let mut head = [0u8; 16];
    for (slot, b) in head.iter_mut().zip(bytes) {
        *slot = b;
    }
    u128::from_be_bytes(head)
}

/// `keys` (prefix, index) sorted by prefix, then by `full` for equal
/// prefixes, then by index: the order of the whole keys, ties kept stable.
pub fn sort_by_prefix16(
    mut keys: Vec<(u128, u32)>,
    full: impl Fn(u32, u32) -> Ordering,
) -> Vec<u32> {
    keys.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| full(a.1, b.1))
            .then(a.1.cmp(&b.1))
    });
    keys.into_iter().map(|(_, k)| k).collect()
}

/// Where one path lives in a [`PathArena`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathSpan {
    start: u32,
    len: u32,
}

/// Paths back to back; a path's content id is stored as one mark byte.
#[derive(Debug, Default)]
pub struct PathArena {
    text: String,
}

/// Where `needle` first occurs in `hay`, for a file name (at most 255
/// bytes) and an id's hex: a plain scan, which beats building a Two-Way
/// searcher (`str::find`) per name by far.
fn find_short(hay: &str, needle: &str) -> Option<usize> {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    let first = *n.first()?;
    (0..(h.len() + 1).checked_sub(n.len())?).find(|&k| h[k] == first && h[k..].starts_with(n))
}

/// The arena outgrew its 32-bit offsets.
#[derive(Debug, thiserror::Error)]
#[error("the view's paths exceed 4 GiB")]
pub struct ArenaFull;

impl PathArena {
    /// Stores `path` of the sample `id`; the first occurrence of the id's
    /// hex in the file name (the last component) becomes the mark.
    pub fn push(&mut self, path: &str, id: &ContentId) -> Result<PathSpan, ArenaFull> {
        let hex = id.hex_bytes();
        let hex = std::str::from_utf8(&hex).unwrap_or_default();
        let start = self.text.len();
        let cut = path.rfind('/').map_or(0, |k| k + 1);
        match find_short(&path[cut..], hex) {
            Some(pos) => {
                self.text.push_str(&path[..cut + pos]);
                self.text.push(ID_MARK);
                self.text.push_str(&path[cut + pos + hex.len()..]);
            }
            None => self.text.push_str(path),
        }
        let end = u32::try_from(self.text.len()).map_err(|_| ArenaFull)?;
        Ok(PathSpan {
            start: start as u32,
            len: end - start as u32,
        })
    }

    /// Stores a path given as its directory part (with the trailing `/`)
    /// and a file name in which `\0` already stands for the content id (as
    /// a materialized index keeps names), without searching for the id.
    pub fn push_marked(&mut self, dir: &str, name: &str) -> Result<PathSpan, ArenaFull> {
        let start = self.text.len();
        self.text.push_str(dir);
        self.text.push_str(name);
        let end = u32::try_from(self.text.len()).map_err(|_| ArenaFull)?;
        Ok(PathSpan {
            start: start as u32,
            len: end - start as u32,
        })
    }

    /// The stored path: its directory part (with the trailing `/`) and its
    /// file name, in which the mark stands for the content id.
    pub fn split(&self, span: PathSpan) -> (&str, &str) {
        let p = &self.text[span.start as usize..(span.start + span.len) as usize];
        let cut = p.rfind('/').map_or(0, |k| k + 1);
        p.split_at(cut)
    }

    /// Frees unused capacity.
    pub fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
    }
}

/// A file name in pieces: a short `lead` kept inline (an epoch entry's
/// position, say), `head`, the content id in hex, `tail`, `suffix`.
#[derive(Debug, Clone, Copy)]
pub struct FileName<'a> {
    lead: ([u8; 32], u8),
    head: &'a str,
    id: Option<[u8; 64]>,
    tail: &'a str,
    suffix: &'static str,
}

impl<'a> FileName<'a> {
    /// A name with no content id in it.
    pub fn plain(name: &'a str) -> Self {
        Self {
            lead: ([0; 32], 0),
            head: name,
            id: None,
            tail: "",
            suffix: "",
        }
    }

    /// A short name held inline (at most 32 bytes: longer is cut).
    pub fn inline(text: &str) -> FileName<'static> {
        FileName::plain("").with_lead(text)
    }

    /// This name with `lead` (at most 32 bytes) in front.
    pub fn with_lead(mut self, lead: &str) -> Self {
        let n = lead.len().min(32);
        self.lead.0[..n].copy_from_slice(&lead.as_bytes()[..n]);
        self.lead.1 = n as u8;
        self
    }

    /// A stored file name (mark = `id`) with `suffix` appended.
    pub fn stored(name: &'a str, id: &ContentId, suffix: &'static str) -> Self {
        match name.split_once(ID_MARK) {
            Some((head, tail)) => Self {
                lead: ([0; 32], 0),
                head,
                id: Some(id.hex_bytes()),
                tail,
                suffix,
            },
            None => Self {
                lead: ([0; 32], 0),
                head: name,
                id: None,
                tail: "",
                suffix,
            },
        }
    }

    /// The name's pieces in order, as bytes.
    pub fn parts(&self) -> [&[u8]; 5] {
        let id: &[u8] = self.id.as_ref().map_or(&[], |id| &id[..]);
        [
            &self.lead.0[..self.lead.1 as usize],
            self.head.as_bytes(),
            id,
            self.tail.as_bytes(),
            self.suffix.as_bytes(),
        ]
    }

    fn bytes(&self) -> impl Iterator<Item = u8> + '_ {
        let id: &[u8] = self.id.as_ref().map_or(&[], |id| &id[..]);
        self.lead.0[..self.lead.1 as usize]
            .iter()
            .copied()
            .chain(self.head.bytes())
            .chain(id.iter().copied())
            .chain(self.tail.bytes())
            .chain(self.suffix.bytes())
    }

    /// Compares with `other` as strings compare.
    pub fn cmp_str(&self, other: &str) -> Ordering {
        self.bytes().cmp(other.bytes())
    }

    /// Compares two names as strings compare.
    pub fn cmp_name(&self, other: &FileName<'_>) -> Ordering {
        self.bytes().cmp(other.bytes())
    }

    /// See [`prefix16`].
    pub fn prefix16(&self) -> u128 {
        prefix16(self.bytes())
    }
}

impl fmt::Display for FileName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in self.parts() {
            // Every piece is a whole UTF-8 string (hex is ASCII).
            f.write_str(std::str::from_utf8(part).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

/// How a sample's URI is stored in [`BlobUris`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UriRef(u32);

/// The URI is stored whole.
const FULL: u32 = 1 << 31;
/// The URI is the prefix, the id's first two hex digits, `/`, the id.
const FANNED: u32 = 1 << 30;
/// Both bits: the URI names a range of an object (a packed sample).
const PACKED: u32 = FULL | FANNED;
const INDEX: u32 = FANNED - 1;

/// How a sample's URI is stored, as a materialized index writes it
/// (`uri_shape`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum UriShape {
    /// The text is the whole URI.
    Whole = 0,
    /// The URI is the text, the id's first two hex digits, `/`, the id.
    Fanned = 1,
    /// The URI is the text then the id.
    Inline = 2,
    /// The URI is `<text>#offset=<offset>&length=<length>`.
    Packed = 3,
}

/// A packed sample's URI: the object, by number, and the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedAt {
    /// The object (pack), a number in [`BlobUris::object`].
    pub object: u32,
    /// Length of the range.
    pub length: u32,
    /// Offset of the range.
    pub offset: u64,
}

/// Room for `#offset=<u64>&length=<u64>`.
pub type FragmentBuf = [u8; 64];

/// Sample URIs: blob-store URIs (`<prefix><xx>/<id>`) and inline-blob URIs
/// (`<prefix><id>`) as a few shared prefixes, packed samples' URIs
/// (`<object>#offset=O&length=N`, [`crate::packs`]) as an object number and
/// two numbers (16 bytes), any other URI whole.
#[derive(Debug, Default, Clone)]
pub struct BlobUris {
    prefixes: Vec<String>,
    full: Vec<Box<str>>,
    objects: Vec<Box<str>>,
    object_no: std::collections::HashMap<Box<str>, u32>,
    packed: Vec<PackedAt>,
}

impl BlobUris {
    /// Stores `uri` of sample `id`.
    pub fn intern(&mut self, uri: &str, id: &ContentId) -> UriRef {
        if let (object, Some((offset, length))) = crate::packs::split(uri)
            && let Ok(length) = u32::try_from(length)
            && self.packed.len() < INDEX as usize
        {
            let object = self.object(object);
            self.packed.push(PackedAt {
                object,
                length,
                offset,
            });
            return UriRef((self.packed.len() - 1) as u32 | PACKED);
        }
        let hex = id.hex_bytes();
        let hex = std::str::from_utf8(&hex).unwrap_or_default();
        let shared = match uri.strip_suffix(hex) {
            Some(rest) => match rest
                .strip_suffix('/')
                .and_then(|r| r.strip_suffix(&hex[..2]))
                .filter(|p| p.ends_with('/'))
            {
                Some(prefix) => Some((prefix, FANNED)),
                None if rest.ends_with('#') => Some((rest, 0)),
                None => None,
            },
            None => None,
        };
        match shared {
            Some((prefix, shape)) => self.prefixed(prefix, shape),
            None => {
                self.full.push(uri.into());
                UriRef((self.full.len() - 1) as u32 | FULL)
            }
        }
    }

    /// Stores the URI `prefix` + the id (`fanned`: + its first two hex
    /// digits, `/`, the id), as [`BlobUris::intern`] stores such a URI,
    /// without building it.
    pub fn intern_prefix(&mut self, prefix: &str, fanned: bool) -> UriRef {
        self.prefixed(prefix, if fanned { FANNED } else { 0 })
    }

    fn prefixed(&mut self, prefix: &str, shape: u32) -> UriRef {
        let n = match self.prefixes.iter().rposition(|p| p == prefix) {
            Some(n) => n,
            None => {
                self.prefixes.push(prefix.to_string());
                self.prefixes.len() - 1
            }
        };
        UriRef(n as u32 | shape)
    }

    /// The number of object `uri`, added if new.
    fn object(&mut self, uri: &str) -> u32 {
        if self.object_no.len() != self.objects.len() {
            // Dropped by `shrink_to_fit`: rebuilt for more interning.
            self.object_no = self
                .objects
                .iter()
                .enumerate()
                .map(|(n, o)| (o.clone(), n as u32))
                .collect();
        }
        if let Some(&n) = self.object_no.get(uri) {
            return n;
        }
        self.objects.push(uri.into());
        let n = (self.objects.len() - 1) as u32;
        self.object_no.insert(uri.into(), n);
        n
    }

    /// Copies `r` of `from` into this table (prefixes shared by value).
    pub fn copy(&mut self, from: &BlobUris, r: UriRef) -> UriRef {
        if r.0 & PACKED == PACKED {
            let mut at = from.packed[(r.0 & INDEX) as usize];
            at.object = self.object(&from.objects[at.object as usize]);
            self.packed.push(at);
            return UriRef((self.packed.len() - 1) as u32 | PACKED);
        }
        if r.0 & FULL != 0 {
            self.full.push(from.full[(r.0 & !FULL) as usize].clone());
            return UriRef((self.full.len() - 1) as u32 | FULL);
        }
        let prefix = &from.prefixes[(r.0 & INDEX) as usize];
        let n = match self.prefixes.iter().position(|p| p == prefix) {
            Some(n) => n,
            None => {
                self.prefixes.push(prefix.clone());
                self.prefixes.len() - 1
            }
        };
        UriRef(n as u32 | (r.0 & FANNED))
    }

    /// How `r` is stored: its shape and text (the whole URI, a prefix, or
    /// a pack's object URI), and a packed sample's range.
    pub fn parts(&self, r: UriRef) -> (UriShape, &str, Option<PackedAt>) {
        if let Some(at) = self.packed_at(r) {
            return (
                UriShape::Packed,
                &self.objects[at.object as usize],
                Some(at),
            );
        }
        if r.0 & FULL != 0 {
            return (UriShape::Whole, &self.full[(r.0 & !FULL) as usize], None);
        }
        let prefix = &self.prefixes[(r.0 & INDEX) as usize];
        if r.0 & FANNED != 0 {
            (UriShape::Fanned, prefix, None)
        } else {
            (UriShape::Inline, prefix, None)
        }
    }

    /// Where `r` lies when it names a range of an object (a packed sample).
    pub fn packed_at(&self, r: UriRef) -> Option<PackedAt> {
        (r.0 & PACKED == PACKED).then(|| self.packed[(r.0 & INDEX) as usize])
    }

    /// The URI of object number `n` (see [`PackedAt::object`]).
    pub fn object_uri(&self, n: u32) -> &str {
        &self.objects[n as usize]
    }

    /// Number of distinct objects packed samples lie in.
    pub fn objects(&self) -> usize {
        self.objects.len()
    }

    /// Appends `r` of sample `id` to `out` in pieces (no allocation);
    /// `scratch` holds a packed sample's range.
    pub fn pieces<'a>(
        &'a self,
        r: UriRef,
        hex: &'a [u8; 64],
        scratch: &'a mut FragmentBuf,
    ) -> [&'a [u8]; 4] {
        if let Some(at) = self.packed_at(r) {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut scratch[..]);
            // 64 bytes hold the longest fragment (56).
            let _ = write!(cursor, "#offset={}&length={}", at.offset, at.length);
            let n = cursor.position() as usize;
            return [
                self.objects[at.object as usize].as_bytes(),
                &scratch[..n],
                &[],
                &[],
            ];
        }
        if r.0 & FULL != 0 {
            return [self.full[(r.0 & !FULL) as usize].as_bytes(), &[], &[], &[]];
        }
        let prefix = self.prefixes[(r.0 & INDEX) as usize].as_bytes();
        if r.0 & FANNED != 0 {
            [prefix, &hex[..2], b"/", hex]
        } else {
            [prefix, hex, &[], &[]]
        }
    }

    /// The URI `r` of sample `id`.
    pub fn get(&self, r: UriRef, id: &ContentId) -> Cow<'_, str> {
        if r.0 & PACKED != PACKED && r.0 & FULL != 0 {
            return Cow::Borrowed(&self.full[(r.0 & !FULL) as usize]);
        }
        let hex = id.hex_bytes();
        let mut scratch = [0u8; 64];
        let text: Vec<u8> = self.pieces(r, &hex, &mut scratch).concat();
        Cow::Owned(String::from_utf8(text).unwrap_or_default())
    }

    /// Frees unused capacity, and the lookup table interning needs.
    pub fn shrink_to_fit(&mut self) {
        self.full.shrink_to_fit();
        self.packed.shrink_to_fit();
        self.object_no = Default::default();
    }

    /// `allows` applied once per prefix (to the prefix with a stand-in id:
    /// the id's hex cannot move a URI out of where its prefix points),
    /// once per object packed samples lie in, and once per whole URI.
    pub fn verdicts(&self, allows: impl Fn(&str) -> bool) -> Verdicts {
        let zeros = "0".repeat(64);
        Verdicts {
            prefixes: self
                .prefixes
                .iter()
                .map(|p| allows(&format!("{p}00/{zeros}")) && allows(&format!("{p}{zeros}")))
                .collect(),
            full: self.full.iter().map(|u| allows(u)).collect(),
            objects: self.objects.iter().map(|u| allows(u)).collect(),
            packed: self.packed.iter().map(|p| p.object).collect(),
        }
    }
}

/// Which of a [`BlobUris`]' URIs pass a rule.
#[derive(Debug)]
pub struct Verdicts {
    prefixes: Vec<bool>,
    full: Vec<bool>,
    objects: Vec<bool>,
    packed: Vec<u32>,
}

impl Verdicts {
    /// Whether URI `r` passes.
    pub fn allows(&self, r: UriRef) -> bool {
        if r.0 & PACKED == PACKED {
            self.objects[self.packed[(r.0 & INDEX) as usize] as usize]
        } else if r.0 & FULL != 0 {
            self.full[(r.0 & !FULL) as usize]
        } else {
            self.prefixes[(r.0 & INDEX) as usize]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_short_agrees_with_find() {
        for (hay, needle) in [
            ("abcabd", "abd"),
            ("ab", "abc"),
            ("", "a"),
            ("xaa", "aa"),
            ("aaa", "a"),
            ("q", "q"),
        ] {
            assert_eq!(
                find_short(hay, needle),
                hay.find(needle),
                "{hay:?} {needle:?}"
            );
        }
    }
    use proptest::prelude::*;

    fn id(seed: u8) -> ContentId {
        ContentId::of(&[seed])
    }

    #[test]
    fn uris_keep_their_shape() {
        let a = id(1);
        let h = a.hex();
        let mut u = BlobUris::default();
        for uri in [
            format!("file:///wh/blobs/{}/{h}", &h[..2]),
            format!("lance:/wh/lance/x.lance#{h}"),
            format!("s3://b/p/{h}"),
            format!("file:///wh/blobs/zz/{h}"),
            "https://elsewhere/x.png".to_string(),
        ] {
            let r = u.intern(&uri, &a);
            assert_eq!(u.get(r, &a), uri);
            let mut copy = BlobUris::default();
            let r2 = copy.copy(&u, r);
            assert_eq!(copy.get(r2, &a), uri);
        }
        assert_eq!(u.prefixes.len(), 2, "{u:?}");
    }

    fn name_strategy() -> impl Strategy<Value = String> {
        // Hostile characters, hex runs and separators, no NUL (names never hold one).
        proptest::string::string_regex("[a-f0-9/._~é\u{202e}\n -]{0,80}").unwrap()
    }

    proptest! {
        #[test]
        fn arena_round_trips(paths in proptest::collection::vec(name_strategy(), 1..20),
                             seeds in proptest::collection::vec(any::<u8>(), 20)) {
            let mut arena = PathArena::default();
            let mut spans = Vec::new();
            for (k, p) in paths.iter().enumerate() {
                let cid = id(seeds[k]);
                // Half the paths carry the content id in their file name.
                let path = if k % 2 == 0 { format!("{p}{}x", cid.hex()) } else { p.clone() };
                spans.push((arena.push(&path, &cid).unwrap(), path, cid));
            }
            for (span, path, cid) in &spans {
                let (dir, name) = arena.split(*span);
                let name = FileName::stored(name, cid, "");
                prop_assert_eq!(format!("{dir}{name}"), path.clone());
            }
        }

        #[test]
        fn prefix_order_is_string_order(a in name_strategy(), b in name_strategy()) {
            let (pa, pb) = (prefix16(a.bytes()), prefix16(b.bytes()));
            if pa != pb {
                prop_assert_eq!(pa.cmp(&pb), a.cmp(&b));
            }
            let fa = FileName::plain(&a);
            prop_assert_eq!(fa.cmp_str(&b), a.as_str().cmp(b.as_str()));
            prop_assert_eq!(fa.prefix16(), pa);
        }

        #[test]
        fn sorting_by_prefix_sorts_strings(names in proptest::collection::vec(name_strategy(), 0..50)) {
            let keys = names.iter().enumerate().map(|(k, n)| (prefix16(n.bytes()), k as u32)).collect();
            let order = sort_by_prefix16(keys, |a, b| names[a as usize].cmp(&names[b as usize]));
            let sorted: Vec<&String> = order.iter().map(|&k| &names[k as usize]).collect();
            let mut expected: Vec<&String> = names.iter().collect();
            expected.sort();
            prop_assert_eq!(sorted, expected);
        }

        #[test]
        fn any_uri_round_trips(uri in "[a-z:/#._0-9]{0,40}", seed in any::<u8>(), with_id in any::<bool>()) {
            let cid = id(seed);
            let uri = if with_id { format!("{uri}{}", cid.hex()) } else { uri };
            let mut u = BlobUris::default();
            let r = u.intern(&uri, &cid);
            prop_assert_eq!(u.get(r, &cid), uri);
        }
    }
}
