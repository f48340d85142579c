#!/usr/bin/env python3
"""Differential KV test: one seeded random operation sequence, two servers.

Every operation is sent over raw gRPC (etcdserverpb.KV: Range, Put, DeleteRange,
Txn, Compact) to a *subject* (Cairn) and a *reference* (etcd 3.5), and the two
answers are compared field by field:

  * success on both: every field of the response message, recursively, including
    presence of sub-messages and unknown fields; in every ResponseHeader (the
    top-level one and the ones nested inside txn responses) only cluster_id,
    member_id and raft_term are ignored, revision is compared.
  * error on both: the gRPC status code and the status message must be equal.
  * anything else is a mismatch.

The only normalisation is for one documented piece of nondeterminism in etcd:
when a Range sorts by a target other than KEY, etcd uses Go's sort.Sort, which is
an insertion sort (stable) for at most 12 elements but pdqsort (not stable) above
that.  So when more than 12 kvs can enter the sort, kvs that tie on the sort
target may come back in any relative order (and, when `limit` cuts a group of
ties, a different subset of that group may be returned).  For such responses we
compare: every non-kvs field exactly, the number of kvs, the sequence of sort
target values, and, per group of ties, the kvs as a multiset; for the last group
when `more` is true (truncated by limit) only its target values.  With
keys_only + sort by VALUE the values are blanked after sorting, so the whole list
is one group.  Nothing else is normalised.

The generator's own state (current revision, compacted revision) is taken from
the reference's answers, so a seed always produces the same operations as long
as the reference is deterministic.  The first mismatch stops the seed and prints
the seed, the operation index, the request and both answers.

Usage (normally through ./run):
  kv_diff.py [--proto-dir DIR] [--cache DIR] ports N
  kv_diff.py [--proto-dir DIR] [--cache DIR] stubs
  kv_diff.py [--proto-dir DIR] [--cache DIR] run --subject HOST:PORT --reference HOST:PORT
             --seed N --ops N [--subject-pid PID --reference-pid PID --wait-timeout S]
"""

import argparse
import collections
import hashlib
import importlib.metadata
import os
import queue
import random
import shutil
import socket
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# The etcd protos and everything they import (descriptor.proto comes from
# grpcio-tools' bundled includes).
PROTO_FILES = [
    "etcd/api/etcdserverpb/rpc.proto",
    "etcd/api/mvccpb/kv.proto",
    "etcd/api/authpb/auth.proto",
    "gogoproto/gogo.proto",
    "google/api/annotations.proto",
    "google/api/http.proto",
    "protoc-gen-openapiv2/options/annotations.proto",
    "protoc-gen-openapiv2/options/openapiv2.proto",
]


# --------------------------------------------------------------------------
# stubs


def ensure_stubs(proto_dir, cache):
    """Generate the Python stubs into the cache (once per proto/tool version)."""
    import grpc_tools
    from grpc_tools import protoc

    h = hashlib.sha256()
    h.update(("grpcio-tools=%s protobuf=%s\n" % (
        importlib.metadata.version("grpcio-tools"),
        importlib.metadata.version("protobuf"))).encode())
    for rel in PROTO_FILES:
        path = os.path.join(proto_dir, rel)
        with open(path, "rb") as f:
            data = f.read()
        h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    root = os.path.join(cache, "diff-stubs")
    out = os.path.join(root, h.hexdigest()[:20])
    if not os.path.exists(os.path.join(out, ".complete")):
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=root, prefix=".gen-")
        inc = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
        # protoc writes warnings (an unused import in rpc.proto) straight to
        # fd 2: capture them and show them only when generation fails.
        log = tempfile.TemporaryFile()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            rc = protoc.main(["protoc", "-I" + proto_dir, "-I" + inc,
                              "--python_out=" + tmp, "--grpc_python_out=" + tmp]
                             + PROTO_FILES)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        if rc != 0:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
            shutil.rmtree(tmp, ignore_errors=True)
            raise SystemExit("kv_diff: protoc failed (rc=%d) on %s" % (rc, proto_dir))
        open(os.path.join(tmp, ".complete"), "w").close()
        try:
            os.rename(tmp, out)
        except OSError:  # a concurrent run got there first
            shutil.rmtree(tmp, ignore_errors=True)
    if out not in sys.path:
        sys.path.insert(0, out)
    return out


def load_pb():
    global pb, grpc, rpc_grpc, text_format
    import grpc as _grpc
    from google.protobuf import text_format as _tf
    from etcd.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
    pb, grpc, rpc_grpc, text_format = rpc_pb2, _grpc, rpc_pb2_grpc, _tf


pb = grpc = rpc_grpc = text_format = None
TRANSPORT_CODES = frozenset()  # set once grpc is loaded: errors that are not KV answers


# --------------------------------------------------------------------------
# key space

# Shared prefixes, bytes 0x00/0xff at the start, middle and end of keys, so that
# prefix ranges, from-key ranges and overlaps are frequent.
KEYS = [
    b"a", b"a/", b"a/1", b"a/2", b"a/2/x", b"a/3", b"ab", b"abc", b"a\xff",
    b"b", b"b/1", b"b/2", b"ba",
    b"c", b"c\x00", b"c\x00\x00", b"c\x01", b"c\xff", b"c\xff\xff",
    b"foo", b"foo/bar", b"foo/baz", b"foo0",
    b"\x00", b"\x00a", b"\x01",
    b"\xff", b"\xff\xff", b"z", b"zz",
]
# Never written: range/delete bounds that fall between keys.
PROBES = [b"a/0", b"aa", b"b0", b"c\x00\x01", b"d", b"m", b"\xfe", b"foo/", b"\x00\x00"]
VALUES = [b"", b"v", b"v1", b"v2", b"\x00", b"\xff", b"a\x00b", b"\xff\xfe\x00",
          b"x" * 64, b"long" * 60]


def prefix_end(key):
    """clientv3.GetPrefixRangeEnd: increment the last byte below 0xff."""
    k = bytearray(key)
    for i in range(len(k) - 1, -1, -1):
        if k[i] < 0xff:
            k[i] += 1
            return bytes(k[: i + 1])
    return b"\x00"  # all 0xff: from-key


def in_interval(p, begin, end):
    """Conservative containment: end==b"" is a point, end==b"\\x00" is infinity."""
    if end == b"":
        return p == begin
    if end == b"\x00":
        return p >= begin
    return begin <= p < end


# --------------------------------------------------------------------------
# generator


class TxnCtx:
    """Put keys and delete intervals of one txn tree (valid-mode bookkeeping)."""

    def __init__(self):
        self.puts = set()
        self.dels = []

    def put_ok(self, k):
        return k not in self.puts and not any(in_interval(k, b, e) for b, e in self.dels)

    def del_ok(self, b, e):
        if e != b"" and e != b"\x00" and e <= b:
            return False  # keep inverted intervals out of valid txns
        return not any(in_interval(p, b, e) for p in self.puts)


class Draws:
    """Seeded random draws shared by the diff drivers. Subclasses set `self.r` (a
    random.Random) and `self.uniq` (a counter for fresh values)."""

    def chance(self, p):
        return self.r.random() < p

    def pick(self, weighted):
        """weighted: list of (weight, value)."""
        total = sum(w for w, _ in weighted)
        x = self.r.random() * total
        for w, v in weighted:
            x -= w
            if x < 0:
                return v
        return weighted[-1][1]

    def value_or_unique(self, p_unique):
        """A never-seen value with probability p_unique, else one of VALUES."""
        if self.chance(p_unique):
            self.uniq += 1
            return b"u%d" % self.uniq
        return self.r.choice(VALUES)


class Gen(Draws):
    def __init__(self, seed):
        self.r = random.Random(seed)
        self.rev = 1          # current revision, from the reference's headers
        self.compacted = 0    # last successful compaction revision
        self.uniq = 0

    def key(self):
        return self.r.choice(KEYS)

    def value(self):
        return self.value_or_unique(0.25)

    def key_range(self, kind):
        """(key, range_end) for ranges and deletes."""
        r = self.r
        m = self.pick([(35, "single"), (20, "prefix"), (8, "fromkey"), (17, "tokey"),
                       (5, "probe"), (4, "inverted"), (3, "equal"), (3, "all"),
                       (5, "probe-range")])
        k = self.key()
        if m == "single":
            return k, b""
        if m == "prefix":
            return k, prefix_end(k)
        if m == "fromkey":
            return k, b"\x00"
        if m == "tokey":
            e = self.key()
            if e <= k:
                k, e = e, k
            if e == k:
                return k, prefix_end(k)
            return k, e
        if m == "probe":
            return r.choice(PROBES), b""
        if m == "inverted":  # range_end < key: empty result
            a, b = sorted(r.sample(KEYS, 2))
            return b, a
        if m == "equal":  # range_end == key: empty result
            return k, k
        if m == "all":
            return b"\x00", b"\x00"
        a = r.choice(PROBES)
        return a, r.choice([prefix_end(a), b"\x00", r.choice(KEYS + PROBES)])

    def past_rev(self):
        return self.r.randint(max(self.compacted, 1), max(self.rev, 1))

    def range_rev(self, allow_error):
        choices = [(60, "zero"), (8, "current"), (17, "past")]
        if self.compacted > 0:
            choices.append((5, "compacted"))
        if allow_error:
            choices.append((4, "future"))
            if self.compacted > 1:
                choices.append((5, "below"))
        m = self.pick(choices)
        if m == "zero":
            return 0
        if m == "current":
            return self.rev
        if m == "past":
            return self.past_rev()
        if m == "compacted":
            return self.compacted
        if m == "future":
            return self.rev + self.r.randint(1, 3)
        return self.r.randint(1, self.compacted - 1)

    # -- requests
    def gen_range(self, allow_error=True, bias=None):
        r = self.r
        q = pb.RangeRequest()
        if bias and self.chance(0.6):
            k = r.choice(sorted(bias))
            q.key, q.range_end = r.choice([(k, b""), (k, b""), (k, prefix_end(k)),
                                           (k[:1] or k, prefix_end(k[:1] or k)),
                                           (k, b"\x00")])
        else:
            q.key, q.range_end = self.key_range("range")
        if allow_error and self.chance(0.02):
            q.key = b""  # etcdserver: key is not provided
        q.revision = self.range_rev(allow_error)
        q.limit = self.pick([(68, 0), (22, r.randint(1, 5)), (5, r.randint(10, 40)),
                             (5, r.randint(-3, -1))])
        q.count_only = self.chance(0.1)
        q.keys_only = self.chance(0.15)
        q.serializable = self.chance(0.25)
        if self.chance(0.45):
            q.sort_order = r.randint(0, 2)   # NONE, ASCEND, DESCEND
            q.sort_target = r.randint(0, 4)  # KEY, VERSION, CREATE, MOD, VALUE
        for f in ("min_mod_revision", "max_mod_revision",
                  "min_create_revision", "max_create_revision"):
            if self.chance(0.08):
                setattr(q, f, r.randint(1, self.rev + 1))
        return q

    def gen_put(self, top=True, ctx=None, bias=None):
        r = self.r
        q = pb.PutRequest()
        if ctx is not None:
            cands = [k for k in KEYS if ctx.put_ok(k)]
            if not cands:
                return None
            q.key = r.choice(cands)
            ctx.puts.add(q.key)
        else:
            q.key = self.key()
        m = self.pick([(72, "plain"), (8, "ign_val"), (6, "ign_lease"), (3, "ign_both"),
                       (4, "ign_val+value"), (3, "ign_lease+lease"), (3, "lease"),
                       (1, "empty")] if (top or ctx is None) else
                      [(88, "plain"), (5, "ign_val"), (4, "ign_lease"), (3, "ign_both")])
        q.prev_kv = self.chance(0.4)
        if m == "plain":
            q.value = self.value()
        elif m == "ign_val":
            q.ignore_value = True            # "key not found" when missing
        elif m == "ign_lease":
            q.ignore_lease = True
            q.value = self.value()
        elif m == "ign_both":
            q.ignore_value = q.ignore_lease = True
        elif m == "ign_val+value":
            q.ignore_value = True
            q.value = self.value() or b"v"   # etcdserver: value is provided
        elif m == "ign_lease+lease":
            q.ignore_lease = True
            q.lease = r.randint(1, 1 << 40)  # etcdserver: lease is provided
        elif m == "lease":
            q.value = self.value()
            q.lease = r.choice([1, 7, 0x694d9b8d9b8d9b8d])  # requested lease not found
        elif m == "empty":
            q.key = b""                      # etcdserver: key is not provided
            q.value = self.value()
        return q

    def gen_delete(self, top=True, ctx=None):
        q = pb.DeleteRangeRequest()
        if ctx is not None:
            for _ in range(10):
                k, e = self.key_range("delete")
                if ctx.del_ok(k, e):
                    break
            else:
                return None
            ctx.dels.append((k, e))
        else:
            k, e = self.key_range("delete")
        q.key, q.range_end = k, e
        if top and self.chance(0.02):
            q.key = b""
        q.prev_kv = self.chance(0.5)
        return q

    def gen_compare(self):
        r = self.r
        c = pb.Compare()
        c.result = r.randint(0, 3)
        c.target = r.randint(0, 4)
        c.key = r.choice(KEYS + PROBES[:3])
        if self.chance(0.2):
            c.range_end = r.choice([prefix_end(c.key), b"\x00", self.key()])
        if self.chance(0.01):
            c.key = b""
        t = c.target
        if self.chance(0.03):
            t = r.randint(0, 5)  # union that does not match the target (5: unset)
        if t == 0:
            c.version = r.choice([0, 0, 1, 1, 2, 3, r.randint(4, 8)])
        elif t == 1:
            c.create_revision = r.choice([0, r.randint(0, self.rev + 1)])
        elif t == 2:
            c.mod_revision = r.choice([0, r.randint(max(1, self.rev - 10), self.rev + 1),
                                       r.randint(0, self.rev + 1)])
        elif t == 3:
            c.value = self.value()
        elif t == 4:
            c.lease = r.choice([0, 0, 0, 1])
        return c

    def gen_branch(self, depth, ctx, nops, free):
        ops, written = [], set()
        for _ in range(nops):
            kind = self.pick([(35, "put"), (30, "range"), (15, "delete"),
                              (15 if depth < 2 else 0, "txn")])
            op = pb.RequestOp()
            if kind == "put":
                p = self.gen_put(top=False, ctx=None if free else ctx)
                if p is not None:
                    op.request_put.CopyFrom(p)
                    written.add(p.key)
            elif kind == "delete":
                d = self.gen_delete(top=False, ctx=None if free else ctx)
                if d is not None:
                    op.request_delete_range.CopyFrom(d)
            elif kind == "txn":
                op.request_txn.CopyFrom(self.gen_txn(depth + 1, ctx, free))
            if op.WhichOneof("request") is None:
                # range op: often reads what this branch already wrote
                op.request_range.CopyFrom(self.gen_range(allow_error=free, bias=written))
            ops.append(op)
        return ops

    def gen_txn(self, depth=0, ctx=None, free=False):
        r = self.r
        t = pb.TxnRequest()
        for _ in range(self.pick([(25, 0), (35, 1), (25, 2), (15, 3)])):
            t.compare.append(self.gen_compare())
        big = depth == 0
        t.success.extend(self.gen_branch(depth, ctx, r.randint(0, 4 if big else 3), free))
        t.failure.extend(self.gen_branch(depth, ctx, r.randint(0, 3 if big else 2), free))
        return t

    def gen_top_txn(self):
        """A top-level txn: mostly valid, some free-form, some with an injected fault."""
        r = self.r
        m = self.pick([(62, "valid"), (18, "free"), (4, "dup_put"), (3, "put_del"),
                       (2, "too_many"), (1, "max_ops"), (3, "bad_rev_taken"),
                       (2, "bad_rev_not_taken"), (2, "lease"), (1, "empty_key"),
                       (2, "ign_val+value")])
        if m == "free":
            return m, self.gen_txn(0, None, True)
        ctx = TxnCtx()
        t = self.gen_txn(0, ctx, False)
        if m == "valid":
            return m, t
        if m in ("dup_put", "put_del"):
            branch = t.success if self.chance(0.6) else t.failure
            k = self.key()
            p = pb.RequestOp(request_put=pb.PutRequest(key=k, value=self.value()))
            if m == "dup_put":
                second = pb.RequestOp(request_put=pb.PutRequest(key=k, value=self.value()))
            else:
                e = r.choice([b"", prefix_end(k), b"\x00"]) if self.chance(0.7) else b""
                second = pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(
                    key=k[:1] if e == b"\x00" else k, range_end=e))
            pair = [p, second] if self.chance(0.5) else [second, p]
            if self.chance(0.3):
                # one of the two inside a nested txn
                inner = pb.RequestOp()
                inner.request_txn.success.append(pair[1])
                pair[1] = inner
            pos = r.randint(0, len(branch))
            ops = list(branch)
            ops[pos:pos] = pair
            del branch[:]
            branch.extend(ops)
            return m, t
        if m in ("too_many", "max_ops"):
            n = 129 if m == "too_many" else 128
            where = r.choice(["success", "failure", "compare"])
            t = pb.TxnRequest()
            if where == "compare":
                for _ in range(n):
                    t.compare.append(pb.Compare(key=self.key(), target=pb.Compare.VERSION,
                                                result=pb.Compare.GREATER, version=-1))
            else:
                for _ in range(n):
                    getattr(t, where).append(pb.RequestOp(
                        request_range=pb.RangeRequest(key=self.key(), keys_only=True)))
            return m, t
        if m in ("bad_rev_taken", "bad_rev_not_taken"):
            choices = [self.rev + r.randint(1, 3)]
            if self.compacted > 1:
                choices.append(r.randint(1, self.compacted - 1))
            bad = pb.RequestOp(request_range=pb.RangeRequest(
                key=self.key(), range_end=r.choice([b"", b"\x00"]), revision=r.choice(choices)))
            del t.compare[:]  # no compares: success is taken
            branch = t.success if m == "bad_rev_taken" else t.failure
            branch.insert(r.randint(0, len(branch)), bad)
            return m, t
        if m == "lease":
            del t.compare[:]
            cands = [k for k in KEYS if ctx.put_ok(k)] or [b"lease-key"]
            t.success.append(pb.RequestOp(request_put=pb.PutRequest(
                key=r.choice(cands), value=b"l", lease=r.randint(1, 99))))
            return m, t
        if m == "empty_key":
            branch = t.success if self.chance(0.5) else t.failure
            op = r.choice([pb.RequestOp(request_put=pb.PutRequest(key=b"", value=b"e")),
                           pb.RequestOp(request_range=pb.RangeRequest(key=b"")),
                           pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b""))])
            branch.append(op)
            return m, t
        # ign_val+value: rejected by request validation, in either branch
        branch = t.success if self.chance(0.5) else t.failure
        branch.append(pb.RequestOp(request_put=pb.PutRequest(
            key=self.key(), value=b"x", ignore_value=True)))
        return m, t

    def avoid_etcd_panic(self, t):
        """Drop ignore_value/ignore_lease from puts a from-key delete may cover.

        etcd (3.4.23 and 3.5.16 alike) checks put/delete overlap in a txn with an
        interval tree in which a delete with range_end "\\x00" (from-key) is an
        empty interval, so Txn{DeleteRange{key: K, range_end: "\\x00"},
        Put{key >= K, ignore_value or ignore_lease}} passes validation; the put's
        "key must exist" check runs against the pre-txn view and succeeds, then
        the put fails inside the already-started write txn and the server panics
        ("unexpected error during txn") -- again on every restart, as the entry
        is in the log.  That is a crash, not a behaviour to compare, so the
        generator never sends it.  Puts that the request validation rejects
        anyway (ignore_value with a value, ignore_lease with a lease) are kept.
        """
        starts, puts = [], []

        def walk(tx):
            for op in list(tx.success) + list(tx.failure):
                w = op.WhichOneof("request")
                if w == "request_delete_range" and op.request_delete_range.range_end == b"\x00":
                    starts.append(op.request_delete_range.key)
                elif w == "request_put":
                    puts.append(op.request_put)
                elif w == "request_txn":
                    walk(op.request_txn)
        walk(t)
        if not starts:
            return t
        lo = min(starts)
        for p in puts:
            if p.key >= lo and not (p.ignore_value and p.value) and not (p.ignore_lease and p.lease):
                if p.ignore_value or p.ignore_lease:
                    p.ignore_value = p.ignore_lease = False
                    if not p.value:
                        p.value = b"defused"
        return t

    def gen_compact(self):
        r = self.r
        q = pb.CompactionRequest()
        m = self.pick([(80, "ok"), (10, "old"), (7, "future"), (3, "zero")])
        if m == "old" and self.compacted > 0:
            q.revision = r.randint(max(1, self.compacted - 3), self.compacted)
        elif m == "future":
            q.revision = self.rev + r.randint(1, 5)
        elif m == "zero":
            q.revision = 0
        elif self.compacted < self.rev:
            # keep some history above the compaction point for past-revision reads
            q.revision = self.compacted + r.randint(1, max(1, (self.rev - self.compacted) // 2))
        else:
            q.revision = self.rev
        q.physical = self.chance(0.25)
        return m, q

    def next_op(self):
        """-> (kind, variant, request)"""
        m = self.pick([(28, "Put"), (30, "Range"), (11, "DeleteRange"), (28, "Txn"),
                       (3, "Compact")])
        if m == "Put":
            return m, "", self.gen_put()
        if m == "Range":
            return m, "", self.gen_range()
        if m == "DeleteRange":
            return m, "", self.gen_delete()
        if m == "Txn":
            v, t = self.gen_top_txn()
            return m, v, self.avoid_etcd_panic(t)
        v, q = self.gen_compact()
        return m, v, q


# --------------------------------------------------------------------------
# comparison

HEADER = "etcdserverpb.ResponseHeader"


def is_repeated(f):
    if hasattr(f, "is_repeated"):
        return f.is_repeated
    return f.label == f.LABEL_REPEATED


def sort_ambiguous(req, resp):
    """True when etcd's unstable sort may order ties differently (see module doc)."""
    if req is None or req.sort_target == pb.RangeRequest.KEY or req.count_only:
        return False
    n = resp.count
    filtered = (req.min_mod_revision or req.max_mod_revision or
                req.min_create_revision or req.max_create_revision)
    if req.sort_order == pb.RangeRequest.NONE and not filtered and req.limit > 0:
        n = min(n, req.limit + 1)  # etcd fetches limit+1 keys, then sorts them
    return n > 12


def sort_value(req, kv):
    t = req.sort_target
    if t == pb.RangeRequest.VERSION:
        return kv.version
    if t == pb.RangeRequest.CREATE:
        return kv.create_revision
    if t == pb.RangeRequest.MOD:
        return kv.mod_revision
    if req.keys_only:  # VALUE target, values blanked after sorting: one group
        return None
    return kv.value


class Relaxed(Exception):
    pass


def diff_range_relaxed(req, a, b, path, stats):
    stats["tie-relaxed range comparisons"] += 1
    for f in b.DESCRIPTOR.fields:
        if f.name == "kvs":
            continue
        d = diff_field(None, a, b, f, path, stats)
        if d:
            return d
    p = path + ".kvs"
    if len(a.kvs) != len(b.kvs):
        return "%s: %d kvs != %d kvs" % (p, len(a.kvs), len(b.kvs))
    va = [sort_value(req, kv) for kv in a.kvs]
    vb = [sort_value(req, kv) for kv in b.kvs]
    for i, (x, y) in enumerate(zip(va, vb)):
        if x != y:
            return "%s[%d]: sort-target value %r != %r (kvs tie-relaxed)" % (p, i, x, y)
    i = 0
    while i < len(vb):
        j = i
        while j < len(vb) and vb[j] == vb[i]:
            j += 1
        if not (j == len(vb) and b.more):
            sa = sorted(kv.SerializeToString(deterministic=True) for kv in a.kvs[i:j])
            sb = sorted(kv.SerializeToString(deterministic=True) for kv in b.kvs[i:j])
            if sa != sb:
                return "%s[%d:%d]: tie group differs as a set (kvs tie-relaxed)" % (p, i, j)
        i = j
    return None


def child_req(req, resp, fname, idx):
    """The request part that produced resp.fname[idx] (for nested ranges in txns)."""
    if req is None:
        return None
    name = resp.DESCRIPTOR.full_name
    if name == "etcdserverpb.TxnResponse" and fname == "responses":
        branch = req.success if resp.succeeded else req.failure
        return branch[idx] if idx < len(branch) else None
    if name == "etcdserverpb.ResponseOp":
        rf = "request_" + fname[len("response_"):]
        return getattr(req, rf) if req.WhichOneof("request") == rf else None
    return None


def diff_field(req, a, b, f, path, stats):
    p = "%s.%s" % (path, f.name)
    va, vb = getattr(a, f.name), getattr(b, f.name)
    if is_repeated(f):
        if len(va) != len(vb):
            return "%s: length %d != %d" % (p, len(va), len(vb))
        for i, (x, y) in enumerate(zip(va, vb)):
            if f.message_type is not None:
                d = diff_msg(child_req(req, b, f.name, i), x, y, "%s[%d]" % (p, i), stats)
                if d:
                    return d
            elif x != y:
                return "%s[%d]: %r != %r" % (p, i, x, y)
        return None
    if f.message_type is not None:
        ha, hb = a.HasField(f.name), b.HasField(f.name)
        if ha != hb:
            return "%s: %s != %s" % (p, "present" if ha else "absent",
                                      "present" if hb else "absent")
        if hb:
            return diff_msg(child_req(req, b, f.name, 0), va, vb, p, stats)
        return None
    if va != vb:
        return "%s: %r != %r" % (p, va, vb)
    return None


def diff_msg(req, a, b, path, stats):
    """First difference between subject a and reference b, or None."""
    name = b.DESCRIPTOR.full_name
    if name == HEADER:
        # cluster_id, member_id, raft_term differ between clusters by design
        if a.revision != b.revision:
            return "%s.revision: %d != %d" % (path, a.revision, b.revision)
        return None
    if name == "etcdserverpb.RangeResponse" and sort_ambiguous(req, b):
        stats["_relaxed"] = True
        return diff_range_relaxed(req, a, b, path, stats)
    for f in b.DESCRIPTOR.fields:
        d = diff_field(req, a, b, f, path, stats)
        if d:
            return d
    return None


def blank_headers(msg):
    """Copy of msg with cluster_id/member_id/raft_term zeroed in every header."""
    m = type(msg)()
    m.CopyFrom(msg)

    def walk(x):
        if x.DESCRIPTOR.full_name == HEADER:
            x.cluster_id = x.member_id = x.raft_term = 0
            return
        for f, v in x.ListFields():
            if f.message_type is None:
                continue
            if is_repeated(f):
                for e in v:
                    walk(e)
            else:
                walk(v)
    walk(m)
    return m


def compare(req, a, b, stats):
    stats["_relaxed"] = False
    d = diff_msg(req, a, b, "resp", stats)
    if d is None and not stats["_relaxed"]:
        # Catches unknown fields, which the field walk does not see.
        if (blank_headers(a).SerializeToString(deterministic=True) !=
                blank_headers(b).SerializeToString(deterministic=True)):
            d = "resp: encodings differ (unknown fields?)"
    return d


# --------------------------------------------------------------------------
# driver


def code_name(err):
    c = err.code()
    return c.name if c is not None else "?"


def fmt_msg(m, max_lines=300):
    """Text format; a message longer than max_lines goes on one (long) line, so
    that what is printed is always complete and parses back with text_format."""
    s = text_format.MessageToString(m).rstrip()
    if s.count("\n") >= max_lines:
        s = "(one line) " + text_format.MessageToString(m, as_one_line=True)
    return s or "<empty message>"


def fmt_answer(ans):
    ok, v = ans
    if ok:
        return fmt_msg(v)
    return "ERROR %s %r" % (code_name(v), v.details())


def indent(s, pre="    "):
    return "\n".join(pre + line for line in s.splitlines())


class Server:
    def __init__(self, name, endpoint, pid):
        self.name, self.endpoint, self.pid = name, endpoint, pid
        self.channel = grpc.insecure_channel(endpoint)
        self.kv = rpc_grpc.KVStub(self.channel)

    def alive(self):
        if not self.pid:
            return True
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        # a zombie is dead too
        try:
            with open("/proc/%d/stat" % self.pid) as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if not self.alive():
                return "%s (pid %d) exited before answering" % (self.name, self.pid)
            try:
                self.kv.Range(pb.RangeRequest(key=b"a"), timeout=2)
                return None
            except grpc.RpcError as e:
                last = "%s %s" % (code_name(e), e.details())
            time.sleep(0.1)
        return "%s at %s did not answer a Range within %ds (last: %s)" % (
            self.name, self.endpoint, timeout, last)


def transport_codes():
    return {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED}


def call_both(servers, kind, req, timeout):
    futs = [getattr(s.kv, kind).future(req, timeout=timeout) for s in servers]
    out = []
    for f in futs:
        e = f.exception()
        out.append((False, e) if e is not None else (True, f.result()))
    return out


class StreamSide:
    """One bidi stream on one server (method: a stub's stream method, e.g.
    WatchStub.Watch or LeaseStub.LeaseKeepAlive); a thread collects the responses.
    Used by watch_diff.py and lease_diff.py."""

    def __init__(self, method):
        self.q = queue.Queue()
        self.resps = []
        self.cond = threading.Condition()
        self.done = False
        self.err = None
        self.cancelled = False
        self.call = method(iter(self.q.get, None))
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for r in self.call:
                with self.cond:
                    self.resps.append(r)
                    self.cond.notify_all()
        except grpc.RpcError as e:
            with self.cond:
                self.err = e
        finally:
            with self.cond:
                self.done = True
                self.cond.notify_all()

    def send(self, req):
        self.q.put(req)

    def half_close(self):
        """The client side is done sending; the server may still answer."""
        self.q.put(None)

    def cancel(self):
        """Client-side cancel of the whole stream."""
        self.cancelled = True
        self.call.cancel()
        self.q.put(None)

    def count(self):
        with self.cond:
            return len(self.resps)

    def wait_for(self, pred, timeout):
        """Wait until pred(responses so far) holds, the stream ends or timeout (s) passes;
        returns pred's last value."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self.resps) and not self.done:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return pred(self.resps)

    def wait_count(self, n, timeout):
        return self.wait_for(lambda rs: len(rs) >= n, timeout)

    def snapshot(self):
        with self.cond:
            return list(self.resps)


def txn_shape(t, depth=0, acc=None):
    acc = acc if acc is not None else {"nested": 0, "ops": 0}
    for op in list(t.success) + list(t.failure):
        acc["ops"] += 1
        if op.WhichOneof("request") == "request_txn":
            acc["nested"] += 1
            txn_shape(op.request_txn, depth + 1, acc)
    return acc


def open_servers(args, cls=Server):
    """The subject and the reference of a `run` (cls: a Server class), once both answer a
    Range; sets TRANSPORT_CODES. None, after printing `seed N: SETUP FAILURE: ...`, when
    one does not answer within --wait-timeout."""
    servers = (cls(args.subject_name, args.subject, args.subject_pid),
               cls(args.reference_name, args.reference, args.reference_pid))
    for s in servers:
        err = s.wait_ready(args.wait_timeout)
        if err:
            print("seed %d: SETUP FAILURE: %s" % (args.seed, err))
            return None
    global TRANSPORT_CODES
    TRANSPORT_CODES = transport_codes()
    return servers


def run_seed(args):
    servers = open_servers(args)
    if servers is None:
        return 2
    subject, reference = servers
    gen = Gen(args.seed)
    ops = collections.Counter()
    variants = collections.Counter()
    errors = collections.Counter()
    txn_stats = collections.Counter()
    stats = collections.Counter()
    t0 = time.monotonic()
    for i in range(args.ops):
        kind, variant, req = gen.next_op()
        ops[kind] += 1
        if variant:
            variants["%s:%s" % (kind, variant)] += 1
        a, b = call_both((subject, reference), kind, req, args.rpc_timeout)
        d = None
        if a[0] and b[0]:
            d = compare(req, a[1], b[1], stats)
        elif a[0] != b[0]:
            d = "one side failed, the other succeeded"
        else:
            ea, eb = a[1], b[1]
            if (ea.code(), ea.details()) != (eb.code(), eb.details()):
                d = "errors differ"
        if d is None:
            for s, ans in ((subject, a), (reference, b)):
                if not ans[0] and ans[1].code() in TRANSPORT_CODES:
                    d = "%s answered %s: transport failure, not a KV answer" % (
                        s.name, code_name(ans[1]))
                    break
                if not s.alive():
                    d = "%s (pid %d) died" % (s.name, s.pid)
                    break
        if d:
            print("seed %d: MISMATCH at op %d (%s%s): %s" % (
                args.seed, i, kind, "/" + variant if variant else "", d))
            print("  request (%s):" % req.DESCRIPTOR.full_name)
            print(indent(fmt_msg(req)))
            print("  %s (%s):" % (subject.name, subject.endpoint))
            print(indent(fmt_answer(a)))
            print("  %s (%s):" % (reference.name, reference.endpoint))
            print(indent(fmt_answer(b)))
            for s in (subject, reference):
                if not s.alive():
                    print("  note: %s (pid %d) is no longer running" % (s.name, s.pid))
            print("  rerun: --seed %d --ops %d" % (args.seed, i + 1))
            print_summary(args, gen, ops, variants, errors, txn_stats, stats, i,
                          time.monotonic() - t0)
            return 1
        ok, resp = b
        if ok:
            if resp.header.revision:
                gen.rev = resp.header.revision
            if kind == "Compact":
                gen.compacted = max(gen.compacted, req.revision)
            if kind == "Txn":
                txn_stats["succeeded" if resp.succeeded else "took failure branch"] += 1
                sh = txn_shape(req)
                if sh["nested"]:
                    txn_stats["with nested txns"] += 1
        else:
            errors["%s %s %r" % (kind, code_name(resp), resp.details())] += 1
    print_summary(args, gen, ops, variants, errors, txn_stats, stats, args.ops,
                  time.monotonic() - t0)
    return 0


def print_summary(args, gen, ops, variants, errors, txn_stats, stats, done, secs):
    print("seed %d: %d ops in %.1fs; final revision %d, compacted at %d" % (
        args.seed, done, secs, gen.rev, gen.compacted))
    print("  ops: " + ", ".join("%s=%d" % kv for kv in sorted(ops.items())))
    print("  variants: " + ", ".join("%s=%d" % kv for kv in sorted(variants.items())))
    print("  txns: " + ", ".join("%s=%d" % kv for kv in sorted(txn_stats.items())))
    print("  %s=%d" % ("tie-relaxed range comparisons",
                       stats["tie-relaxed range comparisons"]))
    print("  errors (identical on both sides): %d" % sum(errors.values()))
    for k, n in sorted(errors.items()):
        print("    %5d  %s" % (n, k))


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def make_parser(doc, default_ops):
    """The command line shared by the diff drivers: `ports N`, `stubs`, and `run` with the
    two servers, a seed and an op count. Returns the parser and the `run` subparser."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--proto-dir", default=os.path.normpath(os.path.join(HERE, "..", "..", "proto")))
    ap.add_argument("--cache", default=os.environ.get(
        "CAIRN_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "cairn")))
    sub = ap.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("ports")
    pp.add_argument("n", type=int)
    sub.add_parser("stubs")
    rp = sub.add_parser("run")
    rp.add_argument("--subject", required=True)
    rp.add_argument("--reference", required=True)
    rp.add_argument("--subject-name", default="cairn")
    rp.add_argument("--reference-name", default="etcd")
    rp.add_argument("--subject-pid", type=int, default=0)
    rp.add_argument("--reference-pid", type=int, default=0)
    rp.add_argument("--seed", type=int, required=True)
    rp.add_argument("--ops", type=int, default=default_ops)
    rp.add_argument("--wait-timeout", type=int, default=30)
    rp.add_argument("--rpc-timeout", type=float, default=10.0)
    return ap, rp


def dispatch(args, run, loaded=None):
    """The rest of a diff driver's main() once the command line (make_parser's) is parsed:
    `ports` prints free ports; `stubs` and `run` generate and load the stubs, then call
    loaded() (which binds the driver's own module globals to pb, grpc, ...); `run` then
    returns run(args), `stubs` 0."""
    if args.cmd == "ports":
        print(" ".join(map(str, free_ports(args.n))))
        return 0
    ensure_stubs(args.proto_dir, args.cache)
    load_pb()
    if loaded is not None:
        loaded()
    if args.cmd == "stubs":
        return 0
    sys.stdout.reconfigure(line_buffering=True)
    return run(args)


def main():
    ap, _ = make_parser(__doc__, 2000)
    args = ap.parse_args()
    return dispatch(args, run_seed)


if __name__ == "__main__":
    sys.exit(main())
