//! etcd's KV operations, written once: the apply path (through a `WriteTxn`) and local reads
//! (through a `Reader`) both call these. Mirrors etcd v3.5 `server/etcdserver/apply.go` and
//! `api/v3rpc/key.go`, including its quirks, because clients observe them.

use std::collections::HashSet;

use super::store::{KvRead, KvWrite};
use super::{KeyRange, KeyValue, KvError, RangeOptions, Revision};
use crate::proto::etcdserverpb::{
    compare, range_request::SortOrder, range_request::SortTarget, request_op, response_op, Compare, DeleteRangeRequest,
    DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp,
    TxnRequest, TxnResponse,
};

/// Whether a lease exists: the only thing KV operations ask of the lease store.
pub trait LeaseLookup {
    fn lease_exists(&self, id: i64) -> Result<bool, KvError>;
}

/// A response header carrying only the revision; the API layer fills in the rest.
pub(crate) fn header(revision: Revision) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

// ---- request validation, before proposing (etcd `api/v3rpc/key.go`) ----

pub fn check_range_request(r: &RangeRequest) -> Result<(), KvError> {
    if r.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(KvError::InvalidSortOption);
    }
    Ok(())
}

pub fn check_put_request(r: &PutRequest) -> Result<(), KvError> {
    if r.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(KvError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(KvError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete_request(r: &DeleteRangeRequest) -> Result<(), KvError> {
    if r.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    Ok(())
}

/// etcd's Txn validation: the whole request tree first, then (top level only, recursing
/// inside) the put/delete overlap check, so a malformed op is reported before a duplicate.
pub fn check_txn_request(r: &TxnRequest, max_txn_ops: usize) -> Result<(), KvError> {
    check_txn_ops(r, max_txn_ops)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &TxnRequest, max_txn_ops: usize) -> Result<(), KvError> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    if opc > max_txn_ops {
        return Err(KvError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(KvError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        check_request_op(op, max_txn_ops - opc)?;
    }
    Ok(())
}

fn check_request_op(op: &RequestOp, max_txn_ops: usize) -> Result<(), KvError> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) => check_range_request(r),
        Some(request_op::Request::RequestPut(r)) => check_put_request(r),
        Some(request_op::Request::RequestDeleteRange(r)) => check_delete_request(r),
        Some(request_op::Request::RequestTxn(r)) => check_txn_ops(r, max_txn_ops),
        // etcd answers an empty op this way.
        None => Err(KvError::KeyNotFound),
    }
}

/// A delete's key interval as etcd's interval tree sees it: a point, or `[start, end)`
/// compared as plain strings (so a from-key delete, end `"\0"`, covers nothing here).
enum Interval {
    Point(Vec<u8>),
    Span(Vec<u8>, Vec<u8>),
}

impl Interval {
    fn covers(&self, key: &[u8]) -> bool {
        match self {
            Interval::Point(p) => p == key,
            Interval::Span(start, end) => key >= start.as_slice() && key < end.as_slice(),
        }
    }
}

/// etcd's `checkIntervals`: no key may be put twice, or put and deleted, in one branch,
/// counting the puts and deletes of nested txns (their then/else may share keys).
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Interval>), KvError> {
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) if d.range_end.is_empty() => {
                Some(Interval::Point(d.key.clone()))
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                Some(Interval::Span(d.key.clone(), d.range_end.clone()))
            }
            _ => None,
        })
        .collect();
    let deleted = |dels: &[Interval], k: &[u8]| dels.iter().any(|iv| iv.covers(k));

    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            if (puts.contains(&k) && !puts_then.contains(&k)) || deleted(&dels, &k) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return Err(KvError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

// ---- operations ----

fn sort_key_cmp(target: SortTarget, a: &KeyValue, b: &KeyValue) -> std::cmp::Ordering {
    match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    }
}

/// Range as etcd's applier runs it: filters and sorting after the read, `more` from one
/// extra kv, `count` over the whole range whatever the limit and filters.
pub fn range(t: &impl KvRead, r: &RangeRequest) -> Result<RangeResponse, KvError> {
    let order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    let filtered =
        r.min_mod_revision != 0 || r.max_mod_revision != 0 || r.min_create_revision != 0 || r.max_create_revision != 0;
    let mut limit = if order != SortOrder::None || filtered {
        0
    } else {
        r.limit.max(0)
    };
    if limit > 0 {
        limit += 1;
    }
    let opts = RangeOptions {
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
        rev: r.revision,
        count_only: r.count_only,
        // Sorting by value needs the values, even when they are not returned.
        keys_only: r.keys_only && target != SortTarget::Value,
    };
    let rr = t.range(&KeyRange::from_request(&r.key, &r.range_end), &opts)?;
    let mut kvs = rr.kvs;
    kvs.retain(|kv| {
        (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
            && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
            && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
            && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
    });
    let order = if target != SortTarget::Key && order == SortOrder::None {
        SortOrder::Ascend
    } else {
        order
    };
    // Stable sorts: ties keep key order, as etcd's sort does for the small result sets where
    // Go's sort is stable.
    match order {
        SortOrder::None => {}
        SortOrder::Ascend => kvs.sort_by(|a, b| sort_key_cmp(target, a, b)),
        SortOrder::Descend => kvs.sort_by(|a, b| sort_key_cmp(target, b, a)),
    }
    let mut more = false;
    if r.limit > 0 && kvs.len() > r.limit as usize {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        // Already without values when read from storage; a txn's own writes still have them.
        kvs.iter_mut().for_each(|kv| kv.value.clear());
    }
    Ok(RangeResponse {
        header: header(rr.rev),
        kvs,
        more,
        count: rr.count,
    })
}

fn get_latest(t: &impl KvRead, key: &[u8]) -> Result<Option<KeyValue>, KvError> {
    Ok(t.range(&KeyRange::Single(key.to_vec()), &RangeOptions::default())?
        .kvs
        .pop())
}

/// Put. Outside a txn the lease is checked here; inside one, `txn` checked it up front.
pub fn put(
    t: &mut impl KvWrite,
    p: &PutRequest,
    leases: &dyn LeaseLookup,
    in_txn: bool,
) -> Result<PutResponse, KvError> {
    if !in_txn && p.lease != 0 && !leases.lease_exists(p.lease)? {
        return Err(KvError::LeaseNotFound);
    }
    let prev = if p.ignore_value || p.ignore_lease || p.prev_kv {
        get_latest(t, &p.key)?
    } else {
        None
    };
    if (p.ignore_value || p.ignore_lease) && prev.is_none() {
        return Err(KvError::KeyNotFound);
    }
    let value = match (&prev, p.ignore_value) {
        (Some(prev), true) => prev.value.clone(),
        _ => p.value.clone().into(),
    };
    let lease = match (&prev, p.ignore_lease) {
        (Some(prev), true) => prev.lease,
        _ => p.lease,
    };
    let rev = t.put(&p.key, value, lease)?;
    Ok(PutResponse {
        header: header(rev),
        prev_kv: if p.prev_kv { prev } else { None },
    })
}

pub fn delete_range(t: &mut impl KvWrite, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse, KvError> {
    let range = KeyRange::from_request(&d.key, &d.range_end);
    let prev_kvs = if d.prev_kv {
        t.range(&range, &RangeOptions::default())?.kvs
    } else {
        Vec::new()
    };
    let (deleted, rev) = t.delete_range(&range)?;
    Ok(DeleteRangeResponse {
        header: header(rev),
        deleted,
        prev_kvs,
    })
}

/// Whether a txn holds only Range ops (etcd's `isTxnReadonly`: a nested txn counts as a
/// write). Such a txn is served locally, like a Range.
pub fn is_txn_readonly(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| matches!(op.request, Some(request_op::Request::RequestRange(_))))
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
    let ord = match target {
        CompareTarget::Value => {
            let v: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_ref().cmp(v)
        }
        _ => {
            let (have, want) = match (target, &c.target_union) {
                (CompareTarget::Create, Some(TargetUnion::CreateRevision(r))) => (kv.create_revision, *r),
                (CompareTarget::Create, _) => (kv.create_revision, 0),
                (CompareTarget::Mod, Some(TargetUnion::ModRevision(r))) => (kv.mod_revision, *r),
                (CompareTarget::Mod, _) => (kv.mod_revision, 0),
                (CompareTarget::Version, Some(TargetUnion::Version(v))) => (kv.version, *v),
                (CompareTarget::Version, _) => (kv.version, 0),
                (CompareTarget::Lease, Some(TargetUnion::Lease(l))) => (kv.lease, *l),
                (_, _) => (kv.lease, 0),
            };
            have.cmp(&want)
        }
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord.is_eq(),
        Ok(CompareResult::NotEqual) => ord.is_ne(),
        Ok(CompareResult::Greater) => ord.is_gt(),
        Ok(CompareResult::Less) => ord.is_lt(),
        Err(_) => true,
    }
}

/// Whether a compare holds. A read error is an error, never "false": taking the other
/// branch on a storage fault would let replicas diverge.
fn apply_compare(t: &impl KvRead, c: &Compare) -> Result<bool, KvError> {
    let rr = t.range(&KeyRange::from_request(&c.key, &c.range_end), &RangeOptions::default())?;
    if rr.kvs.is_empty() {
        // A missing key has no value to compare; every other target compares against zero.
        return Ok(c.target != compare::CompareTarget::Value as i32 && compare_kv(c, &KeyValue::default()));
    }
    Ok(rr.kvs.iter().all(|kv| compare_kv(c, kv)))
}

/// Every compare of the txn and of the nested txns on the taken branches, evaluated before
/// anything is written, in pre-order.
fn compare_to_path(t: &impl KvRead, r: &TxnRequest, path: &mut Vec<bool>) -> Result<(), KvError> {
    let mut ok = true;
    for c in &r.compare {
        if !apply_compare(t, c)? {
            ok = false;
            break;
        }
    }
    path.push(ok);
    for op in if ok { &r.success } else { &r.failure } {
        if let Some(request_op::Request::RequestTxn(inner)) = &op.request {
            compare_to_path(t, inner, path)?;
        }
    }
    Ok(())
}

/// Visits every non-txn op on the taken path, in order.
fn for_each_taken_op(
    r: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
    f: &mut dyn FnMut(&RequestOp) -> Result<(), KvError>,
) -> Result<(), KvError> {
    let ok = path.get(*pos).copied().unwrap_or(false);
    *pos += 1;
    for op in if ok { &r.success } else { &r.failure } {
        match &op.request {
            Some(request_op::Request::RequestTxn(inner)) => for_each_taken_op(inner, path, pos, f)?,
            _ => f(op)?,
        }
    }
    Ok(())
}

fn check_taken_put(t: &impl KvRead, op: &RequestOp, leases: &dyn LeaseLookup) -> Result<(), KvError> {
    let Some(request_op::Request::RequestPut(p)) = &op.request else {
        return Ok(());
    };
    if (p.ignore_value || p.ignore_lease) && get_latest(t, &p.key)?.is_none() {
        return Err(KvError::KeyNotFound);
    }
    if p.lease != 0 && !leases.lease_exists(p.lease)? {
        return Err(KvError::LeaseNotFound);
    }
    Ok(())
}

fn check_taken_range(t: &impl KvRead, op: &RequestOp) -> Result<(), KvError> {
    let Some(request_op::Request::RequestRange(r)) = &op.request else {
        return Ok(());
    };
    // etcd's `checkRequestRange` checks the revision as given, before the range resolves 0
    // or less to the current one: a negative revision below the compacted one (-1 when never
    // compacted) is refused as compacted.
    if r.revision == 0 {
        return Ok(());
    }
    super::store::Revisions {
        current: t.rev(),
        compacted: t.compacted(),
    }
    .check(r.revision)
}

/// Txn as etcd's applier runs it: compares and checks on the state before the txn, then the
/// taken branches in order, each op seeing the earlier ones' writes.
pub fn txn<T: KvWrite>(t: &mut T, r: &TxnRequest, leases: &dyn LeaseLookup) -> Result<TxnResponse, KvError> {
    let mut path = Vec::new();
    compare_to_path(t, r, &mut path)?;
    if !is_txn_readonly(r) {
        for_each_taken_op(r, &path, &mut 0, &mut |op| check_taken_put(t, op, leases))?;
    }
    for_each_taken_op(r, &path, &mut 0, &mut |op| check_taken_range(t, op))?;
    let mut resp = apply_txn(t, r, &path, &mut 0, leases)?;
    resp.header = header(t.rev());
    Ok(resp)
}

/// A read-only txn, served from a read view.
pub fn read_txn(t: &impl KvRead, r: &TxnRequest) -> Result<TxnResponse, KvError> {
    let mut path = Vec::new();
    compare_to_path(t, r, &mut path)?;
    for_each_taken_op(r, &path, &mut 0, &mut |op| check_taken_range(t, op))?;
    let mut resp = read_txn_branch(t, r, &path, &mut 0)?;
    resp.header = header(t.rev());
    Ok(resp)
}

fn read_txn_branch(t: &impl KvRead, r: &TxnRequest, path: &[bool], pos: &mut usize) -> Result<TxnResponse, KvError> {
    let succeeded = path.get(*pos).copied().unwrap_or(false);
    *pos += 1;
    let mut responses = Vec::new();
    for op in if succeeded { &r.success } else { &r.failure } {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(q)) => response_op::Response::ResponseRange(range(t, q)?),
            Some(request_op::Request::RequestTxn(inner)) => {
                response_op::Response::ResponseTxn(read_txn_branch(t, inner, path, pos)?)
            }
            _ => continue,
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    Ok(TxnResponse {
        header: Some(ResponseHeader::default()),
        succeeded,
        responses,
    })
}

fn apply_txn<T: KvWrite>(
    t: &mut T,
    r: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
    leases: &dyn LeaseLookup,
) -> Result<TxnResponse, KvError> {
    let succeeded = path.get(*pos).copied().unwrap_or(false);
    *pos += 1;
    let mut responses = Vec::new();
    for op in if succeeded { &r.success } else { &r.failure } {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(q)) => response_op::Response::ResponseRange(range(t, q)?),
            Some(request_op::Request::RequestPut(p)) => response_op::Response::ResponsePut(put(t, p, leases, true)?),
            Some(request_op::Request::RequestDeleteRange(d)) => {
                response_op::Response::ResponseDeleteRange(delete_range(t, d)?)
            }
            Some(request_op::Request::RequestTxn(inner)) => {
                response_op::Response::ResponseTxn(apply_txn(t, inner, path, pos, leases)?)
            }
            None => continue,
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    // Nested txn responses carry an empty header, as etcd's do.
    Ok(TxnResponse {
        header: Some(ResponseHeader::default()),
        succeeded,
        responses,
    })
}
