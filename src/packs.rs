//! Packed blobs: small samples stored back to back in large immutable
//! objects, so reading many of them over an object store takes few
//! requests.
//!
//! The contract (README, *Table contract*): a sample's `uri` may name a
//! byte range of an object, `<object URI>#offset=<O>&length=<N>`: its bytes
//! are bytes `O..O+N` of that object, and `N` equals `size_bytes`. A `uri`
//! without that fragment names a whole object, as before, so rows other
//! engines write with plain object URIs keep working in the same table.
//!
//! `lakemount ingest` packs samples of at most [`THRESHOLD`] bytes (one
//! cache chunk, so a packed sample is always verified whole against its
//! content id) into objects of about `--pack-size` bytes, named by the
//! SHA-256 of their bytes: `<warehouse>/packs/<xx>/<sha256>.pack`. A pack is
//! written whole in one PUT (the object store's put is atomic: a crash
//! leaves no partial object under the name) before the Iceberg commit that
//! makes its samples visible, and never changed afterwards; two writers
//! that build the same pack write the same bytes to the same name.

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::content_id::{CHUNK, ContentId};

/// Largest sample that is packed.
pub const THRESHOLD: u64 = CHUNK;
/// Default size of a pack.
pub const DEFAULT_PACK_SIZE: u64 = 64 << 20;

/// `uri` split into the object it names and the byte range, if it names
/// one: `(object, Some((offset, length)))`. A fragment that is not
/// exactly `offset=<u64>&length=<u64>` is not a range: the whole `uri`
/// is then the object (and will not be found).
pub fn split(uri: &str) -> (&str, Option<(u64, u64)>) {
    let Some((object, fragment)) = uri.rsplit_once('#') else {
        return (uri, None);
    };
    let range = (|| {
        let (o, l) = fragment.split_once('&')?;
        let offset: u64 = o.strip_prefix("offset=")?.parse().ok()?;
        let length: u64 = l.strip_prefix("length=")?.parse().ok()?;
        offset.checked_add(length)?;
        Some((offset, length))
    })();
    match range {
        Some(r) => (object, Some(r)),
        None => (uri, None),
    }
}

/// The `uri` of bytes `offset..offset+length` of the object at `object`.
pub fn range_uri(object: &str, offset: u64, length: u64) -> String {
    format!("{object}#offset={offset}&length={length}")
}

/// Samples gathered into one pack.
#[derive(Default)]
pub struct PackBuilder {
    bytes: BytesMut,
    members: Vec<(ContentId, u64, u64)>,
}

/// A pack ready to store: its bytes, its name (SHA-256), and where each
/// member lies in it.
pub struct Pack {
    /// The pack's bytes.
    pub bytes: Bytes,
    /// Hex SHA-256 of the bytes: the pack's name.
    pub name: String,
    /// (content id, offset, length) of each member.
    pub members: Vec<(ContentId, u64, u64)>,
}

impl PackBuilder {
    /// Bytes gathered so far.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Appends a sample.
    pub fn add(&mut self, id: ContentId, bytes: &[u8]) {
        let offset = self.bytes.len() as u64;
        self.bytes.extend_from_slice(bytes);
        self.members.push((id, offset, bytes.len() as u64));
    }

    /// The finished pack.
    pub fn finish(self) -> Pack {
        let bytes = self.bytes.freeze();
        Pack {
            name: hex::encode(Sha256::digest(&bytes)),
            bytes,
            members: self.members,
        }
    }
}

/// Groups `samples` (content id, bytes) into packs of about `pack_size`
/// bytes, in the order given.
pub fn build(samples: &[(ContentId, &[u8])], pack_size: u64) -> Vec<Pack> {
    let mut packs = Vec::new();
    let mut current = PackBuilder::default();
    for (id, bytes) in samples {
        if !current.is_empty() && current.len() + bytes.len() as u64 > pack_size {
            packs.push(std::mem::take(&mut current).finish());
        }
        current.add(*id, bytes);
    }
    if !current.is_empty() {
        packs.push(current.finish());
    }
    packs
}

/// Snapshot summary key: the pack indexes ([`write_index`]) whose
/// locations a view of this snapshot (and of its descendants, which do not
/// say otherwise) reads samples from, comma-separated. Written by
/// `lakemount repack`.
pub const PROP_PACK_INDEX: &str = "lakemount.pack-index";

/// One entry of a pack index: where `lakemount repack` put a sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The sample.
    pub id: ContentId,
    /// The pack object's URI.
    pub object: String,
    /// Offset in the pack.
    pub offset: u64,
    /// Length (the sample's size).
    pub length: u64,
}

/// A pack index as Parquet (columns `content_id`, `pack`, `offset`,
/// `length`): readable by any engine.
pub fn write_index(entries: &[IndexEntry]) -> crate::error::Result<Bytes> {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("content_id", DataType::Utf8, false),
        Field::new("pack", DataType::Utf8, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("length", DataType::Int64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            entries.iter().map(|e| e.id.hex()),
        )),
        Arc::new(StringArray::from_iter_values(
            entries.iter().map(|e| e.object.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            entries.iter().map(|e| e.offset as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            entries.iter().map(|e| e.length as i64),
        )),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let mut out = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut out, schema, None)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(Bytes::from(out))
}

/// The entries of a pack index that `wanted` keeps.
pub fn read_index(
    bytes: Bytes,
    wanted: impl Fn(&ContentId) -> bool,
) -> crate::error::Result<Vec<IndexEntry>> {
    use crate::error::Context;
    use arrow_array::{Array, Int64Array, StringArray};
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch?;
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .with_context(|| format!("a pack index has no `{name}` column"))
        };
        let ids = col("content_id")?
            .as_any()
            .downcast_ref::<StringArray>()
            .context("a pack index's content_id is not text")?;
        let packs = col("pack")?
            .as_any()
            .downcast_ref::<StringArray>()
            .context("a pack index's pack is not text")?;
        let offsets = col("offset")?
            .as_any()
            .downcast_ref::<Int64Array>()
            .context("a pack index's offset is not a long")?;
        let lengths = col("length")?
            .as_any()
            .downcast_ref::<Int64Array>()
            .context("a pack index's length is not a long")?;
        for k in 0..batch.num_rows() {
            if ids.is_null(k) || packs.is_null(k) {
                continue;
            }
            let Ok(id) = ContentId::parse(ids.value(k)) else {
                continue;
            };
            if !wanted(&id) || offsets.value(k) < 0 || lengths.value(k) < 0 {
                continue;
            }
            out.push(IndexEntry {
                id,
                object: packs.value(k).to_string(),
                offset: offsets.value(k) as u64,
                length: lengths.value(k) as u64,
            });
        }
    }
    Ok(out)
}

/// The pack indexes a view of snapshot `snapshot_id` reads through: the
/// nearest snapshot at or before it (following parents) that records
/// [`PROP_PACK_INDEX`].
pub fn index_uris(table: &iceberg::table::Table, snapshot_id: i64) -> Vec<String> {
    let meta = table.metadata();
    let mut cursor = meta.snapshot_by_id(snapshot_id);
    while let Some(s) = cursor {
        if let Some(list) = s.summary().additional_properties.get(PROP_PACK_INDEX) {
            return list
                .split(',')
                .filter(|u| !u.is_empty())
                .map(str::to_string)
                .collect();
        }
        cursor = s.parent_snapshot_id().and_then(|p| meta.snapshot_by_id(p));
    }
    Vec::new()
}

/// Where the samples `ids` of snapshot `snapshot_id` were repacked, from
/// its pack indexes (which must lie inside the trusted locations).
pub async fn repacked(
    table: &iceberg::table::Table,
    snapshot_id: i64,
    ids: &std::collections::HashSet<ContentId>,
    trust: &crate::trust::UriTrust,
    storage: &crate::storage::Storage,
) -> crate::error::Result<std::collections::HashMap<ContentId, IndexEntry>> {
    let mut out = std::collections::HashMap::new();
    for uri in index_uris(table, snapshot_id) {
        if !trust.allows(&uri) {
            crate::error::bail!(
                "snapshot {snapshot_id} of table {} names a pack index at {}, outside the warehouse and the allowed prefixes",
                table.identifier(),
                crate::trust::redact(&uri)
            );
        }
        let bytes = fetch(storage, &uri).await?;
        for e in read_index(bytes, |id| ids.contains(id))
            .map_err(|e| e.context(format!("pack index {}", crate::trust::redact(&uri))))?
        {
            out.entry(e.id).or_insert(e);
        }
    }
    Ok(out)
}

/// The whole object at `uri`.
pub async fn fetch(storage: &crate::storage::Storage, uri: &str) -> crate::error::Result<Bytes> {
    use crate::error::Context;
    use object_store::ObjectStoreExt;
    let url = url::Url::parse(uri).with_context(|| format!("bad URI {uri}"))?;
    let (_, path) = object_store::ObjectStoreScheme::parse(&url)
        .map_err(object_store::Error::from)
        .with_context(|| format!("bad URI {}", crate::trust::redact(uri)))?;
    let store = storage.object_store(&url)?;
    let got = store
        .get(&path)
        .await
        .with_context(|| format!("cannot read {}", crate::trust::redact(uri)))?;
    Ok(got.bytes().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip_and_anything_else_is_a_whole_object() {
        let u = range_uri("s3://b/wh/packs/ab/abcd.pack", 10, 20);
        assert_eq!(split(&u), ("s3://b/wh/packs/ab/abcd.pack", Some((10, 20))));
        assert_eq!(split("file:///x/y"), ("file:///x/y", None));
        for odd in [
            "s3://b/x#offset=1",
            "s3://b/x#length=2&offset=1",
            "s3://b/x#offset=-1&length=2",
            "s3://b/x#offset=18446744073709551615&length=2",
        ] {
            assert_eq!(split(odd), (odd, None), "{odd}");
        }
    }

    #[test]
    fn packs_hold_their_members_in_order_and_are_named_by_content() {
        let a = b"aaaa".as_slice();
        let b = b"bbbbbb".as_slice();
        let ids = [ContentId::of(a), ContentId::of(b), ContentId::of(b"c")];
        let packs = build(&[(ids[0], a), (ids[1], b), (ids[2], b"c")], 10);
        assert_eq!(packs.len(), 2);
        assert_eq!(&packs[0].bytes[..], b"aaaabbbbbb");
        assert_eq!(packs[0].members, vec![(ids[0], 0, 4), (ids[1], 4, 6)]);
        assert_eq!(packs[0].name, hex::encode(Sha256::digest(b"aaaabbbbbb")));
        assert_eq!(packs[1].members, vec![(ids[2], 0, 1)]);
    }

    #[test]
    fn pack_indexes_round_trip_through_parquet() {
        let entries: Vec<IndexEntry> = (0..5u8)
            .map(|k| IndexEntry {
                id: ContentId::of(&[k]),
                object: format!("s3://b/packs/{k}.pack"),
                offset: u64::from(k) * 10,
                length: 10,
            })
            .collect();
        let bytes = write_index(&entries).unwrap();
        assert_eq!(read_index(bytes.clone(), |_| true).unwrap(), entries);
        let two = read_index(bytes, |id| *id == entries[2].id).unwrap();
        assert_eq!(two, vec![entries[2].clone()]);
    }
}
