//! A reference-model test of the filesystem core, FUSE-free: random
//! sequences of lookups, listings, reads at random offsets and sizes, hot
//! spec swaps, removals and forgets, checked against a plain model of what
//! every path of every view holds.
//!
//! The model of a view is a map from path to bytes: a sample's bytes are
//! the input file with its content id (the truth the table was written
//! from), the generated files (`_index.jsonl`, `_receipt.json`, sidecars)
//! are what one whole read from a fresh core gives. The core under test
//! lives through the whole sequence: a handle (the lookups the kernel
//! holds on a file and its directories) keeps reading the bytes of the
//! view it was opened in after that view is replaced or removed, until it
//! is forgotten; once every handle on a retired view is forgotten, its
//! inodes are gone (an error, never bytes). Over a memory source, every
//! read succeeds; over a failing one, a read may fail but never returns a
//! wrong byte.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use common::*;
use lakemount::cache::ChunkCache;
use lakemount::content_id::{CHUNK, ContentId};
use lakemount::fs::{FsError, Kind, ROOT, ViewFs};
use lakemount::source::Source;
use lakemount::source::testing::{FaultySource, MemorySource};
use lakemount::view::View;
use proptest::prelude::*;

/// What one path of a view is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir(Vec<String>),
    File(Arc<Vec<u8>>),
}

/// A view and its model: path (relative to the mount root, starting with
/// the view's name) to what it holds.
struct Modelled {
    view: Arc<View>,
    paths: BTreeMap<String, Node>,
}

struct World {
    _tmp: tempfile::TempDir,
    /// Variants of view "v" (swapped in and out) and view "w" (epochs).
    v: Vec<Modelled>,
    w: Modelled,
    bytes: HashMap<ContentId, Vec<u8>>,
    /// Every path any variant has, so lookups also try paths that are gone.
    all_paths: Vec<String>,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Built once for all cases; a failure to build it (the model's own
/// checks against the inputs) fails every case at once, not by rebuilding.
fn world() -> &'static World {
    static W: OnceLock<Result<World, String>> = OnceLock::new();
    let built = W.get_or_init(|| {
        std::panic::catch_unwind(|| runtime().block_on(build_world())).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        })
    });
    match built {
        Ok(w) => w,
        Err(e) => panic!("building the model failed: {e}"),
    }
}

fn memory(bytes: &HashMap<ContentId, Vec<u8>>) -> MemorySource {
    let mut m = MemorySource::default();
    for (id, b) in bytes {
        m.bytes.insert(*id, Bytes::from(b.clone()));
        // An embedding of its own per sample, so sidecars differ.
        m.embeddings
            .insert(*id, (0..256).map(|k| f32::from(id.0[k % 32])).collect());
    }
    m
}

async fn build_world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let wh = open(&tmp.path().join("wh")).await;
    // With a sample of several chunks, whose edges the random reads cross.
    let labels = [("cat", 5), ("dog", 3)];
    let bytes = ingest_images_and_big(&tmp.path().join("in"), &wh, &labels, 2_300_000).await;
    let table = table_name(&tmp.path().join("wh"));
    let view = |text: &str| {
        let spec = lakemount::spec::parse(text, std::path::Path::new("s.yaml"), &table).unwrap();
        let wh = &wh;
        async move { Arc::new(resolve(wh, &spec).await.unwrap()) }
    };
    let variants = [
        "name: v\n",
        "name: v\nfilter: \"label = 'cat'\"\nsidecars: [embedding]\n",
        "name: v\nlayout: \"{label}/{pos}-{content_id}{ext}\"\norder: {shuffle: 7}\nsidecars: []\n",
    ];
    let mut v = Vec::new();
    for text in variants {
        v.push(model(view(text).await, &bytes).await);
    }
    let w = model(
        view("name: w\nepochs: 2\norder: {shuffle: 3}\nshard: {world_size: 2}\n").await,
        &bytes,
    )
    .await;
    let mut all: Vec<String> = v
        .iter()
        .chain([&w])
        .flat_map(|m| m.paths.keys().cloned())
        .collect();
    all.sort();
    all.dedup();
    World {
        _tmp: tmp,
        v,
        w,
        bytes,
        all_paths: all,
    }
}

/// The model of `view`: its tree walked and read whole through a fresh
/// core; each sample file checked against the input with its content id.
async fn model(view: Arc<View>, bytes: &HashMap<ContentId, Vec<u8>>) -> Modelled {
    let fs = ViewFs::new(
        vec![view.clone()],
        ChunkCache::new(64 << 20, Arc::new(memory(bytes))),
        0,
    );
    let mut paths = BTreeMap::new();
    let root = fs.lookup(ROOT, &view.name).unwrap();
    let mut stack = vec![(view.name.clone(), root.ino)];
    while let Some((path, ino)) = stack.pop() {
        let mut names = Vec::new();
        for (name, attr) in list(&fs, ino, 1000).unwrap() {
            let child = format!("{path}/{name}");
            names.push(name);
            match attr.kind {
                Kind::Dir => stack.push((child, attr.ino)),
                Kind::File => {
                    let got = fs.read(attr.ino, 0, attr.size as u32 + 1).await.unwrap();
                    assert_eq!(got.len() as u64, attr.size, "{child}");
                    paths.insert(child, Node::File(Arc::new(got.to_vec())));
                }
            }
        }
        paths.insert(path, Node::Dir(names));
    }
    // The truth the model rests on: every sample's path holds the input
    // file with its content id, and every sample file of an epoch view is
    // one of the inputs.
    let epochs = view.epochs.is_some();
    if !epochs {
        for i in 0..view.len() {
            let p = format!("{}/{}", view.name, view.path(i));
            let want = &bytes[&view.sample(i).content_id];
            assert_eq!(
                paths.get(&p),
                Some(&Node::File(Arc::new(want.clone()))),
                "{p}"
            );
        }
    }
    let samples = paths
        .iter()
        .filter(|(p, _)| p.ends_with(".png") || p.ends_with(".bin"))
        .count();
    assert!(
        samples >= view.len(),
        "{} sample files for {} samples",
        samples,
        view.len()
    );
    for (p, n) in &paths {
        if let Node::File(b) = n
            && (p.ends_with(".png") || p.ends_with(".bin"))
        {
            assert!(bytes.contains_key(&ContentId::of(b)), "{p} is no input");
        }
    }
    Modelled { view, paths }
}

/// `ino`'s listing without `.` and `..`, fetched `page` entries at a time
/// (as the kernel does, continuing from the last entry's offset).
fn list(fs: &ViewFs, ino: u64, page: usize) -> Result<Vec<(String, lakemount::fs::Attr)>, FsError> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let dir = fs.readdir(ino, offset)?;
        let got: Vec<_> = dir
            .iter()
            .take(page.max(1))
            .map(|e| (e.name.to_string(), e.attr, e.next_offset))
            .collect();
        let Some(last) = got.last() else {
            break;
        };
        offset = last.2;
        out.extend(
            got.into_iter()
                .filter(|(n, _, _)| n != "." && n != "..")
                .map(|(n, a, _)| (n, a)),
        );
    }
    Ok(out)
}

/// Where a read starts: a fraction of the file (per mille), or a few
/// bytes before or after a chunk edge (where reads go wrong).
#[derive(Debug, Clone, Copy)]
enum Pos {
    Frac(u16),
    Edge(u8, i8),
}

/// How much a read asks for: bytes, or up to a few bytes around the next
/// chunk edge.
#[derive(Debug, Clone, Copy)]
enum Len {
    Bytes(u32),
    ToEdge(i8),
}

impl Pos {
    fn offset(self, len: u64) -> u64 {
        let at = match self {
            Pos::Frac(f) => len * u64::from(f) / 1000,
            Pos::Edge(c, d) => (u64::from(c) * CHUNK).saturating_add_signed(i64::from(d)),
        };
        at.min(len)
    }
}

impl Len {
    fn size(self, offset: u64) -> u32 {
        match self {
            Len::Bytes(n) => n,
            Len::ToEdge(d) => {
                let edge = (offset / CHUNK + 1) * CHUNK;
                (edge - offset).saturating_add_signed(i64::from(d)).max(1) as u32
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Look a path up (any variant's), compare, forget at once.
    Lookup(usize),
    /// List a directory in pages of this size.
    List(usize, usize),
    /// Look a file up and keep the lookups (an open file).
    Open(usize),
    /// Read from an open handle.
    Read(usize, Pos, Len),
    /// Forget an open handle's lookups.
    Forget(usize),
    /// Make variant k the mounted "v".
    Swap(usize),
    /// Remove "v".
    Remove,
    /// Touch an inode of a view that is gone and forgotten.
    Stale(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<usize>().prop_map(Op::Lookup),
        2 => (any::<usize>(), 1usize..6).prop_map(|(d, p)| Op::List(d, p)),
        3 => any::<usize>().prop_map(Op::Open),
        6 => (
            any::<usize>(),
            prop_oneof![
                (0u16..1001).prop_map(Pos::Frac),
                (0u8..4, -3i8..4).prop_map(|(c, d)| Pos::Edge(c, d)),
            ],
            prop_oneof![
                prop_oneof![1u32..64, 1u32..300_000, Just(1 << 20)].prop_map(Len::Bytes),
                (-3i8..4).prop_map(Len::ToEdge),
            ],
        )
            .prop_map(|(h, at, n)| Op::Read(h, at, n)),
        2 => any::<usize>().prop_map(Op::Forget),
        2 => (0usize..3).prop_map(Op::Swap),
        1 => Just(Op::Remove),
        1 => any::<usize>().prop_map(Op::Stale),
    ]
}

/// An open file: the inodes looked up to reach it (one lookup each) and
/// the bytes it must keep showing.
struct Handle {
    inos: Vec<u64>,
    want: Arc<Vec<u8>>,
    path: String,
}

/// What is mounted now: the current variant of "v" (None: removed).
struct Mounted {
    v: Option<usize>,
}

impl Mounted {
    fn node<'a>(&self, w: &'a World, path: &str) -> Option<&'a Node> {
        let m = if path == "w" || path.starts_with("w/") {
            &w.w
        } else {
            &w.v[self.v?]
        };
        m.paths.get(path)
    }
}

/// Looks `path` up component by component; the inodes looked up.
fn walk(fs: &ViewFs, path: &str) -> Result<Vec<lakemount::fs::Attr>, FsError> {
    let mut out: Vec<lakemount::fs::Attr> = Vec::new();
    for name in path.split('/') {
        let parent = out.last().map_or(ROOT, |a| a.ino);
        match fs.lookup(parent, name) {
            Ok(a) => out.push(a),
            Err(e) => {
                for a in &out {
                    fs.forget(a.ino, 1);
                }
                return Err(e);
            }
        }
    }
    Ok(out)
}

fn run(ops: &[Op], failing: bool) -> Result<(), TestCaseError> {
    let w = world();
    let inner: Arc<dyn Source> = Arc::new(memory(&w.bytes));
    let source: Arc<dyn Source> = if failing {
        let mut f = FaultySource::new(inner);
        f.fail_every = 3;
        Arc::new(f)
    } else {
        inner
    };
    let fs = ViewFs::new(
        vec![w.v[0].view.clone(), w.w.view.clone()],
        ChunkCache::new(4 << 20, source),
        0,
    );
    let mut mounted = Mounted { v: Some(0) };
    let mut handles: Vec<Handle> = Vec::new();
    // Inodes of retired views whose every handle was forgotten.
    let mut stale: Vec<u64> = Vec::new();
    // The variant each handle was opened in, and inodes seen per variant
    // instance (a swap makes a new instance).
    let mut instance = 0u32;
    let mut opened_in: Vec<u32> = Vec::new();
    let mut seen: HashMap<u32, Vec<u64>> = HashMap::new();
    let rt = runtime();
    for op in ops {
        match op {
            Op::Lookup(k) => {
                let path = &w.all_paths[k % w.all_paths.len()];
                let want = mounted.node(w, path);
                match (walk(&fs, path), want) {
                    (Ok(attrs), Some(node)) => {
                        let a = attrs.last().unwrap();
                        match node {
                            Node::Dir(_) => prop_assert!(a.kind == Kind::Dir, "{path}"),
                            Node::File(b) => {
                                prop_assert!(a.kind == Kind::File, "{path}");
                                prop_assert_eq!(a.size, b.len() as u64, "{}", path);
                            }
                        }
                        for a in &attrs {
                            fs.forget(a.ino, 1);
                        }
                    }
                    (Err(FsError::NotFound), None) => {}
                    (got, want) => prop_assert!(
                        false,
                        "lookup {path}: got {:?}, model {:?}",
                        got.map(|a| a.len()),
                        want.is_some()
                    ),
                }
            }
            Op::List(k, page) => {
                let dirs: Vec<&String> = w
                    .all_paths
                    .iter()
                    .filter(|p| matches!(mounted.node(w, p), Some(Node::Dir(_))))
                    .collect();
                if dirs.is_empty() {
                    continue;
                }
                let path = dirs[k % dirs.len()];
                let Some(Node::Dir(names)) = mounted.node(w, path) else {
                    unreachable!()
                };
                let attrs =
                    walk(&fs, path).map_err(|e| TestCaseError::fail(format!("{path}: {e}")))?;
                let listed = list(&fs, attrs.last().unwrap().ino, *page)
                    .map_err(|e| TestCaseError::fail(format!("list {path}: {e}")))?;
                for a in &attrs {
                    fs.forget(a.ino, 1);
                }
                let mut got: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
                let mut want: Vec<&str> = names.iter().map(String::as_str).collect();
                got.sort_unstable();
                want.sort_unstable();
                prop_assert_eq!(got, want, "{}", path);
                for (name, a) in &listed {
                    if let Some(Node::File(b)) = mounted.node(w, &format!("{path}/{name}")) {
                        prop_assert_eq!(a.size, b.len() as u64, "{}/{}", path, name);
                    }
                }
            }
            Op::Open(k) => {
                // Every other open takes a file of several chunks.
                let large = |p: &String| match mounted.node(w, p) {
                    Some(Node::File(b)) => b.len() as u64 > CHUNK || k % 2 == 1,
                    _ => false,
                };
                let files: Vec<&String> = w.all_paths.iter().filter(|p| large(p)).collect();
                if files.is_empty() {
                    continue;
                }
                let path = files[k % files.len()];
                let Some(Node::File(b)) = mounted.node(w, path) else {
                    unreachable!()
                };
                let attrs =
                    walk(&fs, path).map_err(|e| TestCaseError::fail(format!("{path}: {e}")))?;
                let inos: Vec<u64> = attrs.iter().map(|a| a.ino).collect();
                let key = if path.starts_with("w/") {
                    u32::MAX
                } else {
                    instance
                };
                seen.entry(key).or_default().extend(&inos);
                opened_in.push(key);
                handles.push(Handle {
                    inos,
                    want: b.clone(),
                    path: path.clone(),
                });
            }
            Op::Read(h, at, n) => {
                if handles.is_empty() {
                    continue;
                }
                let h = &handles[h % handles.len()];
                let len = h.want.len() as u64;
                let offset = at.offset(len);
                let n = n.size(offset);
                let ino = *h.inos.last().unwrap();
                match rt.block_on(fs.read(ino, offset, n)) {
                    Ok(got) => {
                        let end = (offset + u64::from(n)).min(len) as usize;
                        let want = &h.want[offset as usize..end];
                        prop_assert!(
                            got[..] == *want,
                            "{} at {} size {}: {} bytes, want {}",
                            h.path,
                            offset,
                            n,
                            got.len(),
                            want.len()
                        );
                    }
                    Err(e) if failing && matches!(e, FsError::Fetch(_)) => {}
                    Err(e) => prop_assert!(false, "read {} at {offset}: {e}", h.path),
                }
            }
            Op::Forget(k) => {
                if handles.is_empty() {
                    continue;
                }
                let k = k % handles.len();
                let h = handles.remove(k);
                let key = opened_in.remove(k);
                for ino in &h.inos {
                    fs.forget(*ino, 1);
                }
                // A retired instance with no handle left is gone.
                if key != instance && key != u32::MAX && !opened_in.contains(&key) {
                    stale.extend(seen.remove(&key).unwrap_or_default());
                }
            }
            Op::Swap(k) => {
                fs.upsert(w.v[*k].view.clone());
                retire(&mut instance, &opened_in, &mut seen, &mut stale);
                mounted.v = Some(*k);
            }
            Op::Remove => {
                fs.remove("v");
                retire(&mut instance, &opened_in, &mut seen, &mut stale);
                mounted.v = None;
            }
            Op::Stale(k) => {
                if stale.is_empty() {
                    continue;
                }
                let ino = stale[k % stale.len()];
                prop_assert!(
                    fs.getattr(ino).is_err(),
                    "inode {ino:#x} of a forgotten view"
                );
                let read = rt.block_on(fs.read(ino, 0, 10));
                prop_assert!(read.is_err(), "read of inode {ino:#x} of a forgotten view");
            }
        }
    }
    Ok(())
}

/// The mounted "v" is replaced: its instance retires, gone at once when
/// no handle holds it.
fn retire(
    instance: &mut u32,
    opened_in: &[u32],
    seen: &mut HashMap<u32, Vec<u64>>,
    stale: &mut Vec<u64>,
) {
    if !opened_in.contains(instance) {
        stale.extend(seen.remove(instance).unwrap_or_default());
    }
    *instance += 1;
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("LAKEMOUNT_MODEL_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(96),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_core_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(&ops, false)?;
    }

    #[test]
    fn a_failing_source_never_gives_a_wrong_byte(ops in proptest::collection::vec(op(), 1..60)) {
        run(&ops, true)?;
    }
}
