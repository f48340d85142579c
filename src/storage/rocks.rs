//! The RocksDB engine: the only file that uses `rocksdb`.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    ColumnFamilyDescriptor, DBRawIteratorWithThreadMode, Options, ReadOptions, SnapshotWithThreadMode, WriteOptions, DB,
};

use super::{Cf, Cursor, Error, ReadView, Result};

/// All memtables together (RocksDB's default is 64 MiB per column family, five of them).
const MEMTABLE_BUDGET: usize = 32 << 20;
const MEMTABLE_PER_CF: usize = 8 << 20;
/// Uncompressed blocks cached for reads, shared by all column families.
const BLOCK_CACHE: usize = 32 << 20;
/// Bloom filter bits per `kv` prefix (about 1% false positives).
const BLOOM_BITS_PER_KEY: f64 = 10.0;
/// The share of each `kv` memtable given to its prefix bloom filter.
const MEMTABLE_BLOOM_RATIO: f64 = 0.1;

/// `kv` keys end with an 8-byte revision (`mvcc::key`); the rest, the encoded user key, is
/// the prefix `kv`'s bloom filters are built on. Every put first looks up the key's newest
/// version: with the filters, that lookup skips each memtable and file without the key
/// (for a new key, all of them) instead of searching their indexes.
fn kv_user_key(key: &[u8]) -> &[u8] {
    &key[..key.len().saturating_sub(8)]
}

fn kv_has_user_key(key: &[u8]) -> bool {
    key.len() > 8
}

fn engine_err(e: rocksdb::Error) -> Error {
    Error::Engine(e.into_string())
}

/// The database: one RocksDB instance with every column family of [`Cf::ALL`].
#[derive(Clone)]
pub struct Engine {
    db: Arc<DB>,
}

impl Engine {
    /// Opens (or creates) the database at `path`; `wal_dir` puts RocksDB's write-ahead log
    /// elsewhere (etcd's `--wal-dir`).
    pub fn open(path: &Path, wal_dir: Option<&Path>) -> Result<Self> {
        let mut opts = Options::default();
        if let Some(wal) = wal_dir {
            opts.set_wal_dir(wal);
        }
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Memtables are the one part of RocksDB's memory that grows with the write rate: cap
        // them all together, so memory stays flat however much is written.
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
        // One block cache for every column family (RocksDB's default is one per family).
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        let mut kv_table = rocksdb::BlockBasedOptions::default();
        kv_table.set_block_cache(&cache);
        kv_table.set_bloom_filter(BLOOM_BITS_PER_KEY, false);
        kv_table.set_whole_key_filtering(false);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut cf_opts = Options::default();
            cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
            cf_opts.set_write_buffer_size(MEMTABLE_PER_CF);
            if *cf == Cf::Kv {
                cf_opts.set_block_based_table_factory(&kv_table);
                cf_opts.set_prefix_extractor(rocksdb::SliceTransform::create(
                    "cairn.kv.user_key",
                    kv_user_key,
                    Some(kv_has_user_key),
                ));
                cf_opts.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
            } else {
                cf_opts.set_block_based_table_factory(&table);
            }
            ColumnFamilyDescriptor::new(cf.name(), cf_opts)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(engine_err)?;
        let engine = Engine { db: Arc::new(db) };
        for cf in Cf::ALL {
            if engine.db.cf_handle(cf.name()).is_none() {
                return Err(Error::Engine(format!("column family {} missing", cf.name())));
            }
        }
        Ok(engine)
    }

    fn handle(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        // Every family is created (and checked) in `open`, so the lookup cannot fail.
        self.db
            .cf_handle(cf.name())
            .unwrap_or_else(|| unreachable!("column family {} checked at open", cf.name()))
    }

    /// Writes a batch atomically. `sync` makes it durable (fsync of the WAL) before returning.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(batch.inner, &opts).map_err(engine_err)
    }

    /// Makes every write so far durable: one fsync of the write-ahead log.
    pub fn sync_wal(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(engine_err)
    }

    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            engine: self,
            snap: self.db.snapshot(),
        }
    }

    /// Approximate on-disk size of all data, for `Status.dbSize`.
    pub fn approximate_size(&self) -> u64 {
        Cf::ALL
            .iter()
            .map(|cf| {
                let h = self.handle(*cf);
                let sst = self
                    .db
                    .property_int_value_cf(h, "rocksdb.total-sst-files-size")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                let mem = self
                    .db
                    .property_int_value_cf(h, "rocksdb.cur-size-all-mem-tables")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                sst + mem
            })
            .sum()
    }

    /// Removes every key of `cf` (used when a snapshot replaces the state machine).
    pub fn clear_into(&self, cf: Cf, batch: &mut WriteBatch) {
        let mut iter = self.db.raw_iterator_cf(self.handle(cf));
        iter.seek_to_last();
        if let Some(last) = iter.key() {
            batch.inner.delete_range_cf(self.handle(cf), [0u8; 0].as_slice(), last);
            batch.inner.delete_cf(self.handle(cf), last);
        }
    }
}

impl ReadView for Engine {
    type Cursor<'a> = RocksCursor<'a>;

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.handle(cf), key).map_err(engine_err)
    }

    fn cursor(&self, cf: Cf) -> RocksCursor<'_> {
        RocksCursor {
            iter: self
                .db
                .raw_iterator_cf_opt(self.handle(cf), read_options(Scope::Everything)),
        }
    }

    fn key_cursor(&self, cf: Cf) -> RocksCursor<'_> {
        RocksCursor {
            iter: self
                .db
                .raw_iterator_cf_opt(self.handle(cf), read_options(Scope::OneKey)),
        }
    }
}

/// What a cursor may range over.
#[derive(Clone, Copy)]
enum Scope {
    /// Every key, in order: the prefix filters must not be consulted.
    Everything,
    /// The entries sharing the first seek's prefix (in `kv`, one user key's versions).
    OneKey,
}

fn read_options(scope: Scope) -> ReadOptions {
    let mut opts = ReadOptions::default();
    match scope {
        Scope::Everything => opts.set_total_order_seek(true),
        Scope::OneKey => opts.set_prefix_same_as_start(true),
    }
    opts
}

/// A point-in-time view: every read through it sees the same committed batches.
pub struct Snapshot<'a> {
    engine: &'a Engine,
    snap: SnapshotWithThreadMode<'a, DB>,
}

impl ReadView for Snapshot<'_> {
    type Cursor<'b>
        = RocksCursor<'b>
    where
        Self: 'b;

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.snap.get_cf(self.engine.handle(cf), key).map_err(engine_err)
    }

    fn cursor(&self, cf: Cf) -> RocksCursor<'_> {
        self.cursor_in(cf, Scope::Everything)
    }

    fn key_cursor(&self, cf: Cf) -> RocksCursor<'_> {
        self.cursor_in(cf, Scope::OneKey)
    }
}

impl Snapshot<'_> {
    fn cursor_in(&self, cf: Cf, scope: Scope) -> RocksCursor<'_> {
        let mut opts = read_options(scope);
        opts.set_snapshot(&self.snap);
        RocksCursor {
            iter: self.engine.db.raw_iterator_cf_opt(self.engine.handle(cf), opts),
        }
    }
}

pub struct RocksCursor<'a> {
    iter: DBRawIteratorWithThreadMode<'a, DB>,
}

impl Cursor for RocksCursor<'_> {
    fn seek(&mut self, key: &[u8]) {
        self.iter.seek(key);
    }
    fn seek_to_last(&mut self) {
        self.iter.seek_to_last();
    }
    fn next(&mut self) {
        self.iter.next();
    }
    fn valid(&self) -> bool {
        self.iter.valid()
    }
    fn key(&self) -> &[u8] {
        self.iter.key().unwrap_or_default()
    }
    fn value(&self) -> &[u8] {
        self.iter.value().unwrap_or_default()
    }
    fn status(&self) -> Result<()> {
        self.iter.status().map_err(engine_err)
    }
}

/// An atomic group of writes across column families.
pub struct WriteBatch {
    inner: rocksdb::WriteBatch,
    engine: Engine,
}

impl WriteBatch {
    pub fn new(engine: &Engine) -> Self {
        WriteBatch {
            inner: rocksdb::WriteBatch::default(),
            engine: engine.clone(),
        }
    }
    pub fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.inner.put_cf(self.engine.handle(cf), key, value);
    }
    pub fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.inner.delete_cf(self.engine.handle(cf), key);
    }
    /// Deletes `[from, to)`.
    pub fn delete_range(&mut self, cf: Cf, from: &[u8], to: &[u8]) {
        self.inner.delete_range_cf(self.engine.handle(cf), from, to);
    }
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
    /// Writes in the batch.
    pub fn len(&self) -> usize {
        self.inner.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `kv` key as `mvcc::key` lays it out: the user key (encoding irrelevant here) and an
    /// 8-byte revision.
    fn kv(user: &[u8], rev: u64) -> Vec<u8> {
        [user, &(!rev).to_be_bytes()].concat()
    }

    fn keys(mut cur: RocksCursor<'_>, seek: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        cur.seek(seek);
        while cur.valid() {
            out.push(cur.key().to_vec());
            cur.next();
        }
        cur.status().unwrap();
        out
    }

    /// With prefix bloom filters on `kv`, in memtables and in flushed files alike: a key
    /// cursor sees exactly one user key's versions, and a plain cursor still sees every key
    /// in order across prefixes.
    #[test]
    fn key_cursors_stay_in_one_user_key_and_cursors_see_everything() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), None).unwrap();
        let mut batch = WriteBatch::new(&engine);
        for user in [&b"a"[..], b"b", b"d"] {
            for rev in [3, 2] {
                batch.put(Cf::Kv, &kv(user, rev), b"v");
            }
        }
        engine.write(batch, false).unwrap();
        for flushed in [false, true] {
            if flushed {
                let h = engine.handle(Cf::Kv);
                engine.db.flush_cf(h).unwrap();
                let mut batch = WriteBatch::new(&engine);
                batch.put(Cf::Kv, &kv(b"c", 4), b"v");
                engine.write(batch, false).unwrap();
            }
            let snap = engine.snapshot();
            assert_eq!(
                keys(snap.key_cursor(Cf::Kv), &kv(b"b", 9)),
                vec![kv(b"b", 3), kv(b"b", 2)]
            );
            assert_eq!(keys(snap.key_cursor(Cf::Kv), &kv(b"b", 2)), vec![kv(b"b", 2)]);
            assert!(
                keys(snap.key_cursor(Cf::Kv), &kv(b"bb", 9)).is_empty(),
                "flushed: {flushed}"
            );
            let all = keys(snap.cursor(Cf::Kv), b"");
            let expected = if flushed { 7 } else { 6 };
            assert_eq!(all.len(), expected, "flushed: {flushed}");
            assert!(all.windows(2).all(|w| w[0] < w[1]));
            assert_eq!(keys(engine.cursor(Cf::Kv), b"").len(), expected);
        }
    }
}
