//! Helpers shared by the integration tests: generated media, a warehouse in
//! a temp dir, and read-back of both tables through the real readers.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use futures::TryStreamExt;
use lakemount::ingest::progress::ProgressMode;
use lakemount::ingest::{IngestConfig, InputSource};
use lakemount::warehouse::{Warehouse, WarehouseConfig};

/// A deterministic PNG whose pixels depend on `seed`.
pub fn png(seed: u32, side: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        let v = x
            .wrapping_mul(31 + seed)
            .wrapping_add(y.wrapping_mul(17 + 3 * seed))
            ^ seed;
        image::Rgb([
            (v & 0xff) as u8,
            ((v >> 3) & 0xff) as u8,
            (seed * 40 % 256) as u8,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Writes `DIR/<label>/<n>.png` for each (label, count), distinct images.
/// Returns a map from file path to bytes.
pub fn image_folder(dir: &Path, labels: &[(&str, u32)]) -> HashMap<String, Vec<u8>> {
    let mut seed = 0;
    let mut out = HashMap::new();
    for (label, count) in labels {
        std::fs::create_dir_all(dir.join(label)).unwrap();
        for i in 0..*count {
            seed += 1;
            let bytes = png(seed, 24);
            let path = dir.join(label).join(format!("{i:03}.png"));
            std::fs::write(&path, &bytes).unwrap();
            out.insert(path.display().to_string(), bytes);
        }
    }
    out
}

/// The backend the tests run against, from `LAKEMOUNT_TEST_BACKEND`:
/// `local` (the default: a directory with a SQLite catalog), `s3-postgres`
/// (SeaweedFS S3 + the SQL catalog on PostgreSQL), `s3-rest` (SeaweedFS
/// S3 + its Iceberg REST catalog) or `azure-postgres` (Azurite's Azure Blob
/// Storage + the SQL catalog on PostgreSQL). scripts/test.sh starts the
/// servers and exports what scripts/servers.py prints.
pub fn backend() -> String {
    std::env::var("LAKEMOUNT_TEST_BACKEND").unwrap_or_else(|_| "local".into())
}

/// Whether the backend keeps the warehouse in a local directory.
pub fn is_local() -> bool {
    backend() == "local"
}

/// For a test that only makes sense on a local warehouse (it needs the
/// warehouse's files on this disk): true, after saying why, on a remote
/// backend, where the test then returns.
pub fn local_only(why: &str) -> bool {
    if is_local() {
        return false;
    }
    skipped(why);
    true
}

/// Records that the calling test does not run on this backend, and why:
/// on stderr, and as a line of `$LAKEMOUNT_SKIP_LOG` (backend, test, why),
/// which `scripts/test.sh` counts and prints, so a skip never reads as a
/// pass.
pub fn skipped(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    eprintln!("not run on {}: {why}", backend());
    if let Ok(log) = std::env::var("LAKEMOUNT_SKIP_LOG") {
        use std::io::Write;
        let line = format!("{}\t{test}\t{why}\n", backend());
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log);
        let wrote = file.and_then(|mut f| f.write_all(line.as_bytes()));
        wrote.unwrap_or_else(|e| panic!("cannot append to LAKEMOUNT_SKIP_LOG {log}: {e}"));
    }
}

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: start the servers (scripts/test.sh does)"))
}

/// A short id for the test warehouse at `path` (its temp dir is unique).
fn wh_id(path: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    path.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The table the tests' specs read by default.
pub fn table_name(path: &Path) -> String {
    match backend().as_str() {
        // One REST catalog serves every test: a namespace each.
        "s3-rest" => format!("w{}.samples", wh_id(path)),
        _ => lakemount::warehouse::DEFAULT_TABLE.to_string(),
    }
}

/// The warehouse config of the test warehouse at `path`: the path itself
/// locally; on a shared backend a prefix of the test bucket and a catalog
/// (a database, or a namespace of the REST catalog) of its own.
pub fn wh_config(path: &Path) -> WarehouseConfig {
    let mut c = WarehouseConfig::new(path.display().to_string());
    let id = wh_id(path);
    match backend().as_str() {
        "local" => {}
        "s3-postgres" => {
            c.location = format!("{}/{id}", env("LAKEMOUNT_TEST_S3"));
            c.catalog = Some(format!("{}/{}", env("LAKEMOUNT_TEST_PG"), pg_database(&id)));
        }
        "azure-postgres" => {
            c.location = format!("{}/{id}", env("LAKEMOUNT_TEST_AZURE"));
            c.catalog = Some(format!("{}/{}", env("LAKEMOUNT_TEST_PG"), pg_database(&id)));
        }
        "s3-rest" => {
            c.location = format!("{}/{id}", env("LAKEMOUNT_TEST_S3"));
            c.catalog = Some(env("LAKEMOUNT_TEST_REST"));
            c.catalog_options = vec![(
                "credential".into(),
                format!(
                    "{}:{}",
                    env("AWS_ACCESS_KEY_ID"),
                    env("AWS_SECRET_ACCESS_KEY")
                ),
            )];
            c.table = table_name(path);
        }
        other => panic!(
            "LAKEMOUNT_TEST_BACKEND={other}: expected local, s3-postgres, s3-rest or azure-postgres"
        ),
    }
    c
}

/// The environment variable naming the backend's object-store endpoint,
/// and its value (for a proxy in front of it).
pub fn store_endpoint() -> (&'static str, String) {
    let var = if backend().starts_with("azure") {
        "AZURE_STORAGE_ENDPOINT"
    } else {
        "AWS_ENDPOINT_URL"
    };
    (var, env(var))
}

/// The same, as `lakemount` arguments.
pub fn wh_args(path: &Path) -> Vec<String> {
    let c = wh_config(path);
    let mut out = vec!["--warehouse".to_string(), c.location];
    if let Some(cat) = c.catalog {
        out.extend(["--catalog".to_string(), cat]);
    }
    for (k, v) in c.catalog_options {
        out.extend(["--catalog-option".to_string(), format!("{k}={v}")]);
    }
    if c.table != lakemount::warehouse::DEFAULT_TABLE {
        out.extend(["--table".to_string(), c.table]);
    }
    out
}

/// A PostgreSQL database for one test warehouse, created on first use.
fn pg_database(id: &str) -> String {
    let name = format!("lm_{id}");
    let url = url::Url::parse(&env("LAKEMOUNT_TEST_PG")).unwrap();
    let out = std::process::Command::new("psql")
        .args(["-h", url.host_str().unwrap(), "-p"])
        .arg(url.port().unwrap().to_string())
        .args(["-U", url.username(), "-d", "postgres", "-qc"])
        .arg(format!("CREATE DATABASE {name}"))
        .env("PGPASSWORD", url.password().unwrap_or(""))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("already exists"),
        "cannot create database {name}: {err}"
    );
    name
}

/// `n` distinct small PNGs `DIR/<label>/<seed>.png` for seeds `from..from+n`.
pub fn pngs(dir: &Path, label: &str, from: u32, n: u32) {
    std::fs::create_dir_all(dir.join(label)).unwrap();
    for seed in from..from + n {
        std::fs::write(dir.join(label).join(format!("{seed}.png")), png(seed, 12)).unwrap();
    }
}

pub async fn open(wh: &Path) -> Warehouse {
    Warehouse::open(&wh_config(wh), true).await.unwrap()
}

/// The object holding a blob of the test warehouse at `wh`.
pub async fn blob_object(
    wh: &Path,
    id: &str,
) -> (Arc<dyn object_store::ObjectStore>, object_store::path::Path) {
    open(wh).await.blobs.locate(id)
}

/// A blob's bytes.
pub async fn read_blob(wh: &Path, id: &str) -> Option<Vec<u8>> {
    use object_store::ObjectStoreExt;
    let (store, path) = blob_object(wh, id).await;
    Some(store.get(&path).await.ok()?.bytes().await.unwrap().to_vec())
}

/// Replaces a blob's bytes (to corrupt it), whatever the storage.
pub async fn write_blob(wh: &Path, id: &str, bytes: Vec<u8>) {
    use object_store::ObjectStoreExt;
    let (store, path) = blob_object(wh, id).await;
    store.put(&path, bytes.into()).await.unwrap();
}

/// Deletes a blob.
pub async fn delete_blob(wh: &Path, id: &str) {
    use object_store::ObjectStoreExt;
    let (store, path) = blob_object(wh, id).await;
    store.delete(&path).await.unwrap();
}

/// Flips the byte at `offset` of a blob.
pub async fn flip_blob(wh: &Path, id: &str, offset: usize) {
    let mut b = read_blob(wh, id).await.unwrap();
    b[offset] ^= 0xff;
    write_blob(wh, id, b).await;
}

/// [`flip_blob`] from synchronous tests.
pub fn flip_blob_sync(wh: &Path, id: &str, offset: usize) {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(flip_blob(wh, id, offset));
}

pub fn quiet(input: InputSource) -> IngestConfig {
    let mut c = IngestConfig::new(input);
    c.progress = ProgressMode::Quiet;
    c
}

/// One Iceberg row as strings (None for null), keyed by column name.
pub type Row = HashMap<String, Option<String>>;

/// All rows of the table's current snapshot, or an empty list when the
/// table or snapshot does not exist.
pub async fn iceberg_rows(wh: &Warehouse) -> Vec<Row> {
    if !wh.catalog.table_exists(&wh.table).await.unwrap() {
        return Vec::new();
    }
    let table = wh.catalog.load_table(&wh.table).await.unwrap();
    if table.metadata().current_snapshot().is_none() {
        return Vec::new();
    }
    let batches: Vec<RecordBatch> = table
        .scan()
        .build()
        .unwrap()
        .to_arrow()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut rows = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            let mut row = Row::new();
            for (f, col) in b.schema().fields().iter().zip(b.columns()) {
                row.insert(f.name().clone(), cell(col.as_ref(), i));
            }
            rows.push(row);
        }
    }
    rows
}

fn cell(col: &dyn Array, i: usize) -> Option<String> {
    if col.is_null(i) {
        return None;
    }
    let any = col.as_any();
    if let Some(a) = any.downcast_ref::<StringArray>() {
        Some(a.value(i).to_string())
    } else if let Some(a) = any.downcast_ref::<Int64Array>() {
        Some(a.value(i).to_string())
    } else if let Some(a) = any.downcast_ref::<Float64Array>() {
        Some(a.value(i).to_string())
    } else if let Some(a) = any.downcast_ref::<BooleanArray>() {
        Some(a.value(i).to_string())
    } else {
        Some(format!("<{:?}>", col.data_type()))
    }
}

pub async fn snapshot_count(wh: &Warehouse) -> usize {
    if !wh.catalog.table_exists(&wh.table).await.unwrap() {
        return 0;
    }
    let table = wh.catalog.load_table(&wh.table).await.unwrap();
    table.metadata().snapshots().count()
}

/// content id -> (embedding, inline bytes) from the Lance dataset.
pub async fn lance_rows(wh: &Warehouse) -> HashMap<String, (Vec<f32>, Option<Vec<u8>>)> {
    let Some(ds) = lakemount::vectors::open(&wh.lance_uri, &wh.storage)
        .await
        .unwrap()
    else {
        return HashMap::new();
    };
    let ds = Arc::new(ds);
    let ids = lakemount::vectors::row_ids_by_content(&ds).await.unwrap();
    let mut out = HashMap::new();
    for (id, row) in ids {
        let id = id.hex();
        let emb = lakemount::vectors::take_embeddings(&ds, &[row])
            .await
            .unwrap()
            .remove(0);
        let blob = lakemount::vectors::read_inline_blob(&ds, row)
            .await
            .unwrap()
            .map(|b| b.to_vec());
        out.insert(id, (emb, blob));
    }
    out
}

/// Number of rows physically in the Lance dataset (orphans included).
pub async fn lance_row_count(wh: &Warehouse) -> usize {
    match lakemount::vectors::open(&wh.lance_uri, &wh.storage)
        .await
        .unwrap()
    {
        Some(ds) => ds.count_rows(None).await.unwrap(),
        None => 0,
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    lakemount::blobs::content_id(bytes)
}

/// A `lakemount mount` daemon run as a user would; unmounted on drop, so a
/// failing test never leaves a stale mount behind.
pub struct MountGuard {
    pub child: Option<std::process::Child>,
    pub mountpoint: std::path::PathBuf,
}

pub fn bin() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_lakemount"));
    c.env_remove("LAKEMOUNT_WAREHOUSE")
        .env_remove("LAKEMOUNT_CATALOG");
    c
}

pub fn is_mounted(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), std::fs::metadata(path.join(".."))) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        (Err(_), _) => true, // ENOTCONN: a stale mount is still a mount
        _ => false,
    }
}

impl MountGuard {
    /// Mounts `specs` from warehouse `wh` at `mountpoint` (created), waits until ready.
    pub fn start(wh: &Path, specs: &[&Path], mountpoint: &Path) -> Self {
        Self::start_with(wh, specs, mountpoint, &[])
    }

    /// [`MountGuard::start`] with extra `lakemount mount` options.
    pub fn start_with(wh: &Path, specs: &[&Path], mountpoint: &Path, extra: &[&str]) -> Self {
        std::fs::create_dir_all(mountpoint).unwrap();
        let mut cmd = bin();
        cmd.arg("mount").args(wh_args(wh)).args(extra);
        for s in specs {
            cmd.arg(s);
        }
        cmd.arg(mountpoint)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !is_mounted(mountpoint) {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("lakemount mount exited with {status}: {err}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "mount not ready after 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self {
            child: Some(child),
            mountpoint: mountpoint.to_path_buf(),
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap()
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.mountpoint) {
            let _ = bin()
                .arg("umount")
                .arg("--lazy")
                .arg(&self.mountpoint)
                .output();
        }
    }
}

/// Runs `lakemount ls` and returns {path: size}.
pub fn ls(wh: &Path, specs: &[&Path]) -> std::collections::BTreeMap<String, u64> {
    let mut cmd = bin();
    cmd.arg("ls").args(wh_args(wh));
    for s in specs {
        cmd.arg(s);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (size, path) = l.split_once('\t').unwrap();
            (path.to_string(), size.parse().unwrap())
        })
        .collect()
}

/// Every regular file under `root` as {relative path: size}, by walking it.
pub fn walk(root: &Path) -> std::collections::BTreeMap<String, u64> {
    fn go(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, u64>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                go(root, &e.path(), out);
            } else {
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, e.metadata().unwrap().len());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    go(root, root, &mut out);
    out
}

/// Runs `lakemount CMD <warehouse args> ARGS`, asserts it succeeded and
/// returns its standard output.
pub fn cli_ok(cmd: &str, wh: &Path, args: &[&str]) -> String {
    let out = bin()
        .arg(cmd)
        .args(wh_args(wh))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lakemount {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `lakemount ingest` on a directory or manifest and asserts success.
pub fn ingest_cli(wh: &Path, args: &[&str]) -> String {
    let out = bin()
        .arg("ingest")
        .arg("--quiet")
        .args(wh_args(wh))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `lakemount pin SPEC -o OUT` against `wh`; panics with its stderr on failure.
pub fn pin_cli(wh: &Path, spec: &Path, out: &Path) {
    let res = bin()
        .arg("pin")
        .args(wh_args(wh))
        .arg(spec)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
}

/// Snapshot ids from `lakemount snapshots`, newest first.
pub fn snapshot_ids(wh: &Path) -> Vec<i64> {
    let out = bin().arg("snapshots").args(wh_args(wh)).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

/// Resolves `spec` against `wh` with the built-in encoder and the warehouse's trust rule.
pub async fn resolve(
    wh: &Warehouse,
    spec: &lakemount::spec::Spec,
) -> lakemount::Result<lakemount::view::View> {
    let resolver =
        lakemount::view::Resolver::new(wh, &lakemount::encode::builtin::BuiltinEncoder, None);
    lakemount::view::resolve(spec, &resolver).await
}

/// A catalog whose table commits fail, for crash tests: everything else is
/// the real catalog underneath. Stands for a writer that dies after its
/// Lance append, before the Iceberg commit.
#[derive(Debug)]
pub struct FailingCommits {
    pub inner: Arc<dyn iceberg::Catalog>,
}

#[async_trait::async_trait]
impl iceberg::Catalog for FailingCommits {
    async fn list_namespaces(
        &self,
        parent: Option<&iceberg::NamespaceIdent>,
    ) -> iceberg::Result<Vec<iceberg::NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }
    async fn create_namespace(
        &self,
        namespace: &iceberg::NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<iceberg::Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }
    async fn get_namespace(
        &self,
        namespace: &iceberg::NamespaceIdent,
    ) -> iceberg::Result<iceberg::Namespace> {
        self.inner.get_namespace(namespace).await
    }
    async fn namespace_exists(&self, namespace: &iceberg::NamespaceIdent) -> iceberg::Result<bool> {
        self.inner.namespace_exists(namespace).await
    }
    async fn update_namespace(
        &self,
        namespace: &iceberg::NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }
    async fn drop_namespace(&self, namespace: &iceberg::NamespaceIdent) -> iceberg::Result<()> {
        self.inner.drop_namespace(namespace).await
    }
    async fn list_tables(
        &self,
        namespace: &iceberg::NamespaceIdent,
    ) -> iceberg::Result<Vec<iceberg::TableIdent>> {
        self.inner.list_tables(namespace).await
    }
    async fn create_table(
        &self,
        namespace: &iceberg::NamespaceIdent,
        creation: iceberg::TableCreation,
    ) -> iceberg::Result<iceberg::table::Table> {
        self.inner.create_table(namespace, creation).await
    }
    async fn load_table(
        &self,
        table: &iceberg::TableIdent,
    ) -> iceberg::Result<iceberg::table::Table> {
        self.inner.load_table(table).await
    }
    async fn drop_table(&self, table: &iceberg::TableIdent) -> iceberg::Result<()> {
        self.inner.drop_table(table).await
    }
    async fn purge_table(&self, table: &iceberg::TableIdent) -> iceberg::Result<()> {
        self.inner.purge_table(table).await
    }
    async fn table_exists(&self, table: &iceberg::TableIdent) -> iceberg::Result<bool> {
        self.inner.table_exists(table).await
    }
    async fn rename_table(
        &self,
        src: &iceberg::TableIdent,
        dest: &iceberg::TableIdent,
    ) -> iceberg::Result<()> {
        self.inner.rename_table(src, dest).await
    }
    async fn register_table(
        &self,
        table: &iceberg::TableIdent,
        metadata_location: String,
    ) -> iceberg::Result<iceberg::table::Table> {
        self.inner.register_table(table, metadata_location).await
    }
    async fn update_table(
        &self,
        _commit: iceberg::TableCommit,
    ) -> iceberg::Result<iceberg::table::Table> {
        Err(iceberg::Error::new(
            iceberg::ErrorKind::Unexpected,
            "injected fault: the writer died before its Iceberg commit",
        ))
    }
}

/// Every file under `root`: path -> SHA-256 of its bytes.
pub fn digests(root: &Path) -> std::collections::BTreeMap<String, String> {
    walk(root)
        .into_keys()
        .map(|p| {
            let bytes = std::fs::read(root.join(&p)).unwrap();
            (p, sha256(&bytes))
        })
        .collect()
}

/// Flips one byte (xor `mask`) of the object at `uri` in `wh`'s storage:
/// the byte `at(len)` picks for an object of `len` bytes.
pub async fn flip_object_byte(
    wh: &Warehouse,
    uri: &str,
    at: impl FnOnce(usize) -> usize,
    mask: u8,
) {
    use object_store::ObjectStoreExt;
    let url = url::Url::parse(uri).unwrap();
    let (_, path) = object_store::ObjectStoreScheme::parse(&url).unwrap();
    let store = wh.storage.object_store(&url).unwrap();
    let mut bytes = store
        .get(&path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let k = at(bytes.len());
    bytes[k] ^= mask;
    store.put(&path, bytes.into()).await.unwrap();
}

/// Images in `labels` folders and one generated sample of `big_len` bytes
/// (several chunks, under `blob/`), ingested into `wh` one object per
/// sample, so that a memory source can serve them by content id. Returns
/// every sample's bytes by content id.
pub async fn ingest_images_and_big(
    dir: &Path,
    wh: &Warehouse,
    labels: &[(&str, u32)],
    big_len: usize,
) -> HashMap<lakemount::content_id::ContentId, Vec<u8>> {
    use lakemount::content_id::ContentId;
    let files = image_folder(dir, labels);
    let big: Vec<u8> = (0..big_len).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::create_dir_all(dir.join("blob")).unwrap();
    std::fs::write(dir.join("blob/big.bin"), &big).unwrap();
    let mut config = quiet(InputSource::Dir(dir.to_path_buf()));
    config.pack = lakemount::ingest::PackMode::Off;
    lakemount::ingest::run(&config, wh, &lakemount::encode::builtin::BuiltinEncoder)
        .await
        .unwrap();
    let mut bytes: HashMap<ContentId, Vec<u8>> = files
        .into_values()
        .map(|b| (ContentId::of(&b), b))
        .collect();
    bytes.insert(ContentId::of(&big), big);
    bytes
}
