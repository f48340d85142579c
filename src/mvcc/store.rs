//! Read views and the write transaction of one applied request.

use std::collections::BTreeMap;
use std::ops::Bound;

use prost::bytes::Bytes;
use prost::Message;

use super::key::{after_all_versions, decode_kv_key, kv_key, rev_key, user_key_prefix};
use super::{
    Event, EventType, KeyRange, KeyValue, KvError, RangeOptions, RangeResult, Revision, INITIAL_REVISION,
    NEVER_COMPACTED,
};
use crate::lease::{store as lease_store, NO_LEASE};
use crate::storage::schema::meta;
use crate::storage::{self, Cf, Cursor, Engine, ReadView, WriteBatch};

const RECORD_PUT: u8 = 1;
const RECORD_TOMBSTONE: u8 = 2;

/// Encodes a `kv` value: the record kind, then the KeyValue without its key (the key is in
/// the RocksDB key already).
fn encode_put(kv: &KeyValue) -> Vec<u8> {
    let stored = KeyValue {
        key: Bytes::new(),
        ..kv.clone()
    };
    let mut out = Vec::with_capacity(1 + stored.encoded_len());
    out.push(RECORD_PUT);
    stored
        .encode(&mut out)
        .unwrap_or_else(|_| unreachable!("Vec grows as needed"));
    out
}

pub(super) fn is_tombstone(raw: &[u8]) -> storage::Result<bool> {
    match raw.first() {
        Some(&RECORD_PUT) => Ok(false),
        Some(&RECORD_TOMBSTONE) => Ok(true),
        _ => Err(storage::Error::corrupt(Cf::Kv, "unknown record kind")),
    }
}

/// The lease field of a stored `KeyValue` (tag 6 in `mvccpb.KeyValue`) alone: prost skips
/// the other fields, the value among them, without copying them.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredLease {
    #[prost(int64, tag = "6")]
    lease: i64,
}

fn decode_lease(raw: &[u8]) -> storage::Result<i64> {
    StoredLease::decode(&raw[1..])
        .map(|l| l.lease)
        .map_err(|e| storage::Error::corrupt(Cf::Kv, e.to_string()))
}

pub(super) fn decode_put(key: Vec<u8>, raw: &[u8]) -> storage::Result<KeyValue> {
    let mut kv = KeyValue::decode(&raw[1..]).map_err(|e| storage::Error::corrupt(Cf::Kv, e.to_string()))?;
    kv.key = key.into();
    Ok(kv)
}

/// The fields of a stored `KeyValue` but its value (tag 5), which prost skips uncopied.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredHeader {
    #[prost(int64, tag = "2")]
    create_revision: i64,
    #[prost(int64, tag = "3")]
    mod_revision: i64,
    #[prost(int64, tag = "4")]
    version: i64,
    #[prost(int64, tag = "6")]
    lease: i64,
}

/// A stored version without its value, for `keys_only` reads.
fn decode_put_keys_only(key: Vec<u8>, raw: &[u8]) -> storage::Result<KeyValue> {
    let h = StoredHeader::decode(&raw[1..]).map_err(|e| storage::Error::corrupt(Cf::Kv, e.to_string()))?;
    Ok(KeyValue {
        key: key.into(),
        create_revision: h.create_revision,
        mod_revision: h.mod_revision,
        version: h.version,
        value: Bytes::new(),
        lease: h.lease,
    })
}

/// A `kv` key's encoded user key and main revision.
fn split_kv_key(raw: &[u8]) -> storage::Result<(&[u8], Revision)> {
    if raw.len() < 10 {
        return Err(storage::Error::corrupt(Cf::Kv, "malformed key"));
    }
    let (enc, rev) = raw.split_at(raw.len() - 8);
    let rev: [u8; 8] = rev
        .try_into()
        .map_err(|_| storage::Error::corrupt(Cf::Kv, "malformed key"))?;
    Ok((enc, !u64::from_be_bytes(rev) as Revision))
}

fn user_key_of(kv_key: &[u8]) -> storage::Result<Vec<u8>> {
    decode_kv_key(kv_key)
        .map(|(key, _)| key)
        .ok_or_else(|| storage::Error::corrupt(Cf::Kv, "malformed key"))
}

/// `next`s past the versions of the user key encoded as `prefix` for which `skip` holds, a
/// few at most (a seek is cheaper past many). True when the cursor left them behind (on
/// another key, another version, or the end); false when the caller should seek.
fn skip_while(cur: &mut impl Cursor, prefix: &[u8], skip: impl Fn(Revision) -> bool) -> storage::Result<bool> {
    const MAX_NEXTS: usize = 8;
    for _ in 0..MAX_NEXTS {
        cur.next();
        if !cur.valid() {
            return Ok(true);
        }
        let (enc, main) = split_kv_key(cur.key())?;
        if enc != prefix || !skip(main) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `rev` values: the change kind, then the user key.
pub(crate) fn rev_value(tombstone: bool, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + key.len());
    out.push(if tombstone { RECORD_TOMBSTONE } else { RECORD_PUT });
    out.extend_from_slice(key);
    out
}

/// A revision kept in `meta` (i64, big-endian), or `default` when absent.
pub(super) fn read_i64(view: &impl ReadView, key: &[u8], default: i64) -> storage::Result<i64> {
    match view.get(Cf::Meta, key)? {
        None => Ok(default),
        Some(raw) => raw
            .as_slice()
            .try_into()
            .map(i64::from_be_bytes)
            .map_err(|_| storage::Error::corrupt(Cf::Meta, "revision is not 8 bytes")),
    }
}

/// The store's revisions as of a view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Revisions {
    pub current: Revision,
    pub compacted: Revision,
}

impl Revisions {
    pub fn read(view: &impl ReadView) -> storage::Result<Revisions> {
        Ok(Revisions {
            current: read_i64(view, meta::CURRENT_REV, INITIAL_REVISION)?,
            compacted: read_i64(view, meta::COMPACTED_REV, NEVER_COMPACTED)?,
        })
    }

    /// etcd's bounds on a revision named by a request: above the current revision is a
    /// future revision, below the compacted one was compacted away (the compacted revision
    /// itself stays readable).
    pub fn check(&self, rev: Revision) -> Result<(), KvError> {
        if rev > self.current {
            return Err(KvError::FutureRev);
        }
        if self.is_compacted(rev) {
            return Err(KvError::Compacted);
        }
        Ok(())
    }

    /// Whether the versions a read at `rev` needs may be gone: `rev` is below the compacted
    /// revision.
    pub fn is_compacted(&self, rev: Revision) -> bool {
        rev < self.compacted
    }

    /// The revision a read asking for `requested` is served at: the current one for 0 or
    /// less, as etcd's range does, and otherwise `requested` once `check` accepts it.
    pub fn read_at(&self, requested: Revision) -> Result<Revision, KvError> {
        let at = if requested <= 0 { self.current } else { requested };
        self.check(at)?;
        Ok(at)
    }

    /// etcd's own rule for a compaction to `to`: compacting to the compacted revision again
    /// is refused as compacted, unlike a read there.
    pub fn check_compaction(&self, to: Revision) -> Result<(), KvError> {
        if to <= self.compacted {
            return Err(KvError::Compacted);
        }
        if to > self.current {
            return Err(KvError::FutureRev);
        }
        Ok(())
    }
}

/// Reads of the key space: what the Range half of etcd's `ReadView` does.
pub trait KvRead {
    /// The revision reads see as current (inside a write txn: the txn's own once it wrote).
    fn rev(&self) -> Revision;
    fn compacted(&self) -> Revision;
    fn range(&self, range: &KeyRange, opts: &RangeOptions) -> Result<RangeResult, KvError>;
}

/// A write transaction's mutations.
pub trait KvWrite: KvRead {
    fn put(&mut self, key: &[u8], value: Bytes, lease: i64) -> Result<Revision, KvError>;
    /// Deletes the live keys in `range`; returns how many and the revision of the txn.
    fn delete_range(&mut self, range: &KeyRange) -> Result<(i64, Revision), KvError>;
}

/// A consistent read view of the store.
pub struct Reader<'v, V: ReadView> {
    view: &'v V,
    revs: Revisions,
}

impl<'v, V: ReadView> Reader<'v, V> {
    pub fn new(view: &'v V) -> storage::Result<Self> {
        Ok(Reader {
            revs: Revisions::read(view)?,
            view,
        })
    }

    pub fn revisions(&self) -> Revisions {
        self.revs
    }

    /// Live keys of `range` at revision `at` (`opts.rev` is the caller's to resolve), in key
    /// order: at most `opts.limit` kvs (0 = all), shaped as `opts` asks, and the count of all
    /// of them. Keys past the limit are counted without being decoded.
    pub fn scan(&self, range: &KeyRange, at: Revision, opts: &RangeOptions) -> storage::Result<(Vec<KeyValue>, i64)> {
        let mut kvs = Vec::new();
        let mut count = 0i64;
        self.visit_live(range, at, |kv_key, raw| {
            count += 1;
            if !opts.count_only && (opts.limit == 0 || kvs.len() < opts.limit) {
                let key = user_key_of(kv_key)?;
                kvs.push(if opts.keys_only {
                    decode_put_keys_only(key, raw)?
                } else {
                    decode_put(key, raw)?
                });
            }
            Ok(())
        })?;
        Ok((kvs, count))
    }

    /// The live keys of `range` at revision `at`, in key order, each with its lease: what a
    /// delete needs, without decoding (or copying) a single value.
    pub fn live_keys(&self, range: &KeyRange, at: Revision) -> storage::Result<Vec<(Vec<u8>, i64)>> {
        let mut keys = Vec::new();
        self.visit_live(range, at, |kv_key, raw| {
            keys.push((user_key_of(kv_key)?, decode_lease(raw)?));
            Ok(())
        })?;
        Ok(keys)
    }

    /// Calls `f` with the `kv` key and the raw record of the version live at revision `at`
    /// of each key of `range`, in key order.
    ///
    /// The scan steps with `next` and compares encoded keys (memcomparable keeps their
    /// order), so a key costs no allocation unless `f` decodes it. Past versions are
    /// skipped with a few `next`s, and with one seek only when a key has many of them.
    fn visit_live(
        &self,
        range: &KeyRange,
        at: Revision,
        mut f: impl FnMut(&[u8], &[u8]) -> storage::Result<()>,
    ) -> storage::Result<()> {
        let (single, end) = match range {
            KeyRange::Single(k) => (true, Some(user_key_prefix(k))),
            KeyRange::Span { end, .. } => (false, end.as_deref().map(user_key_prefix)),
        };
        // The encoded user key the cursor is on (reused: no allocation per key).
        let mut prefix = Vec::new();
        let mut cur = if single {
            // One key: its newest version at or below `at` is the first seek's target.
            let mut cur = self.view.key_cursor(Cf::Kv);
            cur.seek(&kv_key(range.start(), at));
            cur
        } else {
            let mut cur = self.view.cursor(Cf::Kv);
            cur.seek(&user_key_prefix(range.start()));
            cur
        };
        while cur.valid() {
            let (enc, main) = split_kv_key(cur.key())?;
            let past = match (&end, single) {
                (Some(key), true) => enc != key.as_slice(),
                (Some(end), false) => enc >= end.as_slice(),
                (None, _) => false,
            };
            if past {
                break;
            }
            prefix.clear();
            prefix.extend_from_slice(enc);
            if main > at {
                // Newer than the read: step to the newest version at or below `at`.
                if !skip_while(&mut cur, &prefix, |main| main > at)? {
                    let mut target = prefix.clone();
                    target.extend_from_slice(&(!(at as u64)).to_be_bytes());
                    cur.seek(&target);
                }
                continue;
            }
            if !is_tombstone(cur.value())? {
                f(cur.key(), cur.value())?;
            }
            if single {
                break;
            }
            if !skip_while(&mut cur, &prefix, |_| true)? {
                cur.seek(&after_all_versions(&prefix));
            }
        }
        cur.status()
    }

    /// The live version of `key` now, if any.
    pub fn latest(&self, key: &[u8]) -> storage::Result<Option<KeyValue>> {
        let opts = RangeOptions {
            limit: 1,
            ..Default::default()
        };
        let (mut kvs, _) = self.scan(&KeyRange::Single(key.to_vec()), self.revs.current, &opts)?;
        Ok(kvs.pop())
    }
}

impl<V: ReadView> KvRead for Reader<'_, V> {
    fn rev(&self) -> Revision {
        self.revs.current
    }
    fn compacted(&self) -> Revision {
        self.revs.compacted
    }
    fn range(&self, range: &KeyRange, opts: &RangeOptions) -> Result<RangeResult, KvError> {
        let at = self.revs.read_at(opts.rev)?;
        let (kvs, count) = self.scan(range, at, opts)?;
        Ok(RangeResult {
            kvs,
            count,
            rev: self.revs.current,
        })
    }
}

/// The mutations of one applied request, collected in a batch: one main revision, or a run
/// of them (`next_revision`) for a request etcd would have applied as several, such as the
/// revocation of a batch of expired leases.
///
/// Puts and deletes keep the lease attachment index (`lease::store`) in step with each
/// key's latest version, in the same batch.
///
/// Reads through it see the state before the request plus the request's own changes, as
/// etcd's `storeTxnWrite` does (at any of its own revisions: its latest state); the batch is
/// written by the caller, atomically with the last applied log id.
pub struct WriteTxn<'e> {
    reader: Reader<'e, Engine>,
    batch: WriteBatch,
    /// Revisions completed before the current one (see `next_revision`).
    earlier_revisions: i64,
    /// Changes so far in the current revision: the next change's sub-revision.
    changes: i64,
    /// The state after this txn of every key it changed (`None` = deleted).
    overlay: BTreeMap<Vec<u8>, Option<KeyValue>>,
    /// Watch events of the changes, in sub-revision order: a put with its previous version
    /// (read anyway, for its version count), a delete without.
    events: Vec<Event>,
}

impl<'e> WriteTxn<'e> {
    pub fn begin(engine: &'e Engine) -> storage::Result<Self> {
        Ok(WriteTxn {
            reader: Reader::new(engine)?,
            batch: WriteBatch::new(engine),
            earlier_revisions: 0,
            changes: 0,
            overlay: BTreeMap::new(),
            events: Vec::new(),
        })
    }

    pub fn begin_rev(&self) -> Revision {
        self.reader.revs.current
    }

    /// The revision the next change gets.
    fn txn_rev(&self) -> Revision {
        self.begin_rev() + self.earlier_revisions + 1
    }

    /// Writes so far: a request that leaves this unchanged changed nothing.
    pub fn writes(&self) -> usize {
        self.batch.len()
    }

    /// Whether the current revision has changes.
    pub fn has_changes(&self) -> bool {
        self.changes > 0
    }

    /// Closes the current revision if it has changes: later changes get the next one.
    pub fn next_revision(&mut self) {
        if self.has_changes() {
            self.earlier_revisions += 1;
            self.changes = 0;
        }
    }

    /// The last revision this txn wrote, or the one it began at.
    fn last_rev(&self) -> Revision {
        self.begin_rev() + self.earlier_revisions + i64::from(self.has_changes())
    }

    pub fn reader(&self) -> &Reader<'e, Engine> {
        &self.reader
    }

    /// The txn's changes to keys of `range`, in key order: the overlay from the range's
    /// start, not all of it (a run's overlay holds a whole group-commit entry's keys).
    fn changes_in<'a>(&'a self, range: &'a KeyRange) -> impl Iterator<Item = (&'a Vec<u8>, &'a Option<KeyValue>)> + 'a {
        self.overlay
            .range::<[u8], _>((Bound::Included(range.start()), Bound::Unbounded))
            .take_while(move |(k, _)| range.contains(k))
    }

    fn latest(&self, key: &[u8]) -> storage::Result<Option<KeyValue>> {
        match self.overlay.get(key) {
            Some(state) => Ok(state.clone()),
            None => self.reader.latest(key),
        }
    }

    /// Hands back the batch, with the new current revision recorded if anything changed,
    /// and the watch events of the changes.
    pub fn finish(mut self) -> (WriteBatch, Vec<Event>) {
        let rev = self.last_rev();
        if rev > self.begin_rev() {
            self.batch.put(Cf::Meta, meta::CURRENT_REV, &rev.to_be_bytes());
        }
        (self.batch, self.events)
    }

    /// Gives the batch to a compaction, which needs no overlay.
    pub fn batch_mut(&mut self) -> &mut WriteBatch {
        &mut self.batch
    }
}

impl KvRead for WriteTxn<'_> {
    fn rev(&self) -> Revision {
        self.last_rev()
    }
    fn compacted(&self) -> Revision {
        self.reader.revs.compacted
    }
    fn range(&self, range: &KeyRange, opts: &RangeOptions) -> Result<RangeResult, KvError> {
        let current = self.rev();
        // Bounded by the txn's own latest revision, which the stored one does not know yet.
        let revs = Revisions {
            current,
            compacted: self.compacted(),
        };
        let at = revs.read_at(opts.rev)?;
        // Where this txn changed no key of the range, the stored state is the state at `at`:
        // a read after a write elsewhere in the run stays a bounded scan.
        if at <= self.begin_rev() || self.changes_in(range).next().is_none() {
            let (kvs, count) = self.reader.scan(range, at.min(self.begin_rev()), opts)?;
            return Ok(RangeResult {
                kvs,
                count,
                rev: current,
            });
        }
        // Reading the txn's own revision: the state before it, with its changes laid over.
        let (base, _) = self.reader.scan(range, self.begin_rev(), &RangeOptions::default())?;
        let mut merged: BTreeMap<Vec<u8>, KeyValue> = base.into_iter().map(|kv| (kv.key.to_vec(), kv)).collect();
        for (key, state) in self.changes_in(range) {
            match state {
                Some(kv) => merged.insert(key.clone(), kv.clone()),
                None => merged.remove(key),
            };
        }
        let count = merged.len() as i64;
        let take = if opts.count_only {
            0
        } else if opts.limit == 0 {
            merged.len()
        } else {
            opts.limit
        };
        Ok(RangeResult {
            kvs: merged.into_values().take(take).collect(),
            count,
            rev: current,
        })
    }
}

impl KvWrite for WriteTxn<'_> {
    fn put(&mut self, key: &[u8], value: Bytes, lease: i64) -> Result<Revision, KvError> {
        let rev = self.txn_rev();
        let prev = self.latest(key)?;
        let kv = KeyValue {
            key: Bytes::copy_from_slice(key),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        let prev_lease = prev.as_ref().map_or(NO_LEASE, |p| p.lease);
        if prev_lease != lease {
            if prev_lease != NO_LEASE {
                lease_store::detach(&mut self.batch, prev_lease, key);
            }
            if lease != NO_LEASE {
                lease_store::attach(&mut self.batch, lease, key);
            }
        }
        self.batch.put(Cf::Kv, &kv_key(key, rev), &encode_put(&kv));
        self.batch
            .put(Cf::Rev, &rev_key(rev, self.changes), &rev_value(false, key));
        self.changes += 1;
        self.overlay.insert(key.to_vec(), Some(kv.clone()));
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: prev,
        });
        Ok(rev)
    }

    /// Reads the keys it deletes and their leases, never their values: watch events carry
    /// no previous version (a watcher that wants it reads it, as etcd's watch stream does),
    /// and a request asking for `prev_kv` reads the values itself (`ops::delete_range`).
    fn delete_range(&mut self, range: &KeyRange) -> Result<(i64, Revision), KvError> {
        let rev = self.txn_rev();
        let mut live: BTreeMap<Vec<u8>, i64> = self.reader.live_keys(range, self.begin_rev())?.into_iter().collect();
        for (key, state) in self.changes_in(range) {
            match state {
                Some(kv) => live.insert(key.clone(), kv.lease),
                None => live.remove(key),
            };
        }
        let n = live.len() as i64;
        for (key, lease) in live {
            if lease != NO_LEASE {
                lease_store::detach(&mut self.batch, lease, &key);
            }
            self.batch.put(Cf::Kv, &kv_key(&key, rev), &[RECORD_TOMBSTONE]);
            self.batch
                .put(Cf::Rev, &rev_key(rev, self.changes), &rev_value(true, &key));
            self.changes += 1;
            self.overlay.insert(key.clone(), None);
            self.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: key.into(),
                    mod_revision: rev,
                    ..Default::default()
                }),
                prev_kv: None,
            });
        }
        Ok((n, self.last_rev()))
    }
}
