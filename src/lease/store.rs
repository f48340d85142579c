//! The replicated lease state in the `lease` column family:
//!
//! - `b'L' ‖ id` → `cairnpb.Lease` (granted TTL, last checkpointed remaining TTL);
//! - `b'K' ‖ id ‖ user key` → empty: the key's latest version carries this lease.
//!
//! `id` is the lease ID as big-endian bytes. The attachment index is what makes revocation
//! and `LeaseTimeToLive(keys)` a prefix scan instead of a scan of every key, and it is
//! written in the same batch as the key versions it describes.

use prost::Message;

use super::LeaseId;
use crate::proto::cairnpb::Lease;
use crate::storage::{self, Cf, Cursor, ReadView, WriteBatch};

const RECORD: u8 = b'L';
const ATTACHED: u8 = b'K';

fn record_key(id: LeaseId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = RECORD;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn attached_prefix(id: LeaseId) -> [u8; 9] {
    let mut k = record_key(id);
    k[0] = ATTACHED;
    k
}

fn attached_key(id: LeaseId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.extend_from_slice(&attached_prefix(id));
    k.extend_from_slice(key);
    k
}

/// The first key after every key starting with `prefix`. Never the end of the family: the
/// prefix starts with `ATTACHED`, which is not 0xff.
fn prefix_end(mut prefix: [u8; 9]) -> [u8; 9] {
    for byte in prefix.iter_mut().rev() {
        let (next, carry) = byte.overflowing_add(1);
        *byte = next;
        if !carry {
            break;
        }
    }
    prefix
}

pub fn get(view: &impl ReadView, id: LeaseId) -> storage::Result<Option<Lease>> {
    view.get(Cf::Lease, &record_key(id))?
        .map(|raw| Lease::decode(raw.as_slice()).map_err(|e| storage::Error::corrupt(Cf::Lease, e.to_string())))
        .transpose()
}

pub fn exists(view: &impl ReadView, id: LeaseId) -> storage::Result<bool> {
    Ok(view.get(Cf::Lease, &record_key(id))?.is_some())
}

pub fn put(batch: &mut WriteBatch, lease: &Lease) {
    batch.put(Cf::Lease, &record_key(lease.id), &lease.encode_to_vec());
}

/// Removes the record and every attachment of `id`.
pub fn remove(batch: &mut WriteBatch, id: LeaseId) {
    batch.delete(Cf::Lease, &record_key(id));
    let from = attached_prefix(id);
    batch.delete_range(Cf::Lease, &from, &prefix_end(from));
}

pub fn attach(batch: &mut WriteBatch, id: LeaseId, key: &[u8]) {
    batch.put(Cf::Lease, &attached_key(id, key), &[]);
}

pub fn detach(batch: &mut WriteBatch, id: LeaseId, key: &[u8]) {
    batch.delete(Cf::Lease, &attached_key(id, key));
}

/// The keys attached to `id`, in key order.
pub fn keys(view: &impl ReadView, id: LeaseId) -> storage::Result<Vec<Vec<u8>>> {
    let prefix = attached_prefix(id);
    let mut out = Vec::new();
    let mut cur = view.cursor(Cf::Lease);
    cur.seek(&prefix);
    while cur.valid() && cur.key().starts_with(&prefix) {
        out.push(cur.key()[prefix.len()..].to_vec());
        cur.next();
    }
    cur.status()?;
    Ok(out)
}

/// Every lease record.
pub fn all(view: &impl ReadView) -> storage::Result<Vec<Lease>> {
    let mut out = Vec::new();
    let mut cur = view.cursor(Cf::Lease);
    cur.seek(&[RECORD]);
    while cur.valid() && cur.key().first() == Some(&RECORD) {
        out.push(Lease::decode(cur.value()).map_err(|e| storage::Error::corrupt(Cf::Lease, e.to_string()))?);
        cur.next();
    }
    cur.status()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Engine;

    #[test]
    fn removing_a_lease_leaves_other_leases_keys_alone() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), None).unwrap();
        let ids: [LeaseId; 5] = [-1, 1, 2, 0xff, 0x100];
        let mut batch = WriteBatch::new(&engine);
        for id in ids {
            put(
                &mut batch,
                &Lease {
                    id,
                    ttl: 10,
                    remaining_ttl: 0,
                },
            );
            attach(&mut batch, id, b"k");
            attach(&mut batch, id, &[0xff, 0xff]);
        }
        engine.write(batch, false).unwrap();
        for gone in [1, 0xff] {
            let mut batch = WriteBatch::new(&engine);
            remove(&mut batch, gone);
            engine.write(batch, false).unwrap();
        }
        for id in ids {
            let expect = if id == 1 || id == 0xff {
                vec![]
            } else {
                vec![b"k".to_vec(), vec![0xff, 0xff]]
            };
            assert_eq!(keys(&engine, id).unwrap(), expect, "lease {id}");
            assert_eq!(exists(&engine, id).unwrap(), !expect.is_empty());
        }
        assert_eq!(all(&engine).unwrap().len(), 3);
    }
}
