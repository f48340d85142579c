#!/usr/bin/env python3
"""Differential Lease test: one seeded sequence of lease and KV operations, two servers.

The same seeded sequence runs against a *subject* (Cairn) and a *reference* (etcd
3.5), both fresh, over raw gRPC (etcdserverpb.Lease: LeaseGrant, LeaseRevoke,
LeaseTimeToLive, LeaseLeases, LeaseKeepAlive on one bidi stream per server;
etcdserverpb.KV: Put, Range, DeleteRange, Txn; etcdserverpb.Watch: one watcher).
Every answer is compared field by field with kv_diff.py's comparison (headers:
revision only; errors: gRPC code and message), after this normalisation:

  * lease ids the servers pick (LeaseGrant with ID 0) are random: each server's
    picked ids are mapped to L1, L2, ... in order of first appearance, per server,
    wherever a lease id appears in a response (LeaseGrant/KeepAlive/TimeToLive ID,
    LeaseStatus.ID, KeyValue.lease in ranges, prev_kv, txn responses and watch
    events), and every later request to a server carries that server's own id for
    the lease.  Client-chosen ids (explicit LeaseGrant IDs, unknown ids) are the
    same on both servers and are compared as they are;
  * LeaseTimeToLive keys and LeaseLeases leases are compared as sorted sets (etcd
    returns them in Go map order);
  * LeaseTimeToLive TTL (the remaining TTL, whole seconds) may differ by 1 when
    both are >= 0 (the servers are asked at almost, not exactly, the same moment);
    grantedTTL, the TTL of LeaseGrant and LeaseKeepAlive answers and TTL -1 ("not
    found") are exact;
  * expiry: leases that expire at the same moment are revoked by etcd in random
    order (one goroutine per lease), so within such a batch the per-lease
    revisions are compared as a set (each revision deletes exactly one lease's
    keys); batches that expire a second apart are compared in order.  Keepalives
    sent while expiries may be happening are compared without header.revision.

Phases per seed (each one reported as `ok lease/seed<N>/<phase>` or `FAIL ...`):
  grant      ID 0 (server picks), explicit ids (also negative), the same explicit id
             again (FAILED_PRECONDITION), TTL 0/1/negative (raised to 2), TTL
             9000000000 (ok) and above (OUT_OF_RANGE), LeaseLeases
  revoke     with keys (one revision deletes them all), without keys, unknown ids,
             twice, after the keys were deleted / moved to another lease /
             detached by a put without lease, re-grant of a revoked explicit id
  ttl        LeaseTimeToLive with and without keys, unknown ids (TTL -1), id 0
  keepalive  LeaseKeepAlive on live, revoked, unknown leases and id 0 (TTL 0)
  kv         Put with lease / ignore_lease / unknown lease / lease+ignore_lease,
             prev_kv, Range and DeleteRange of leased keys
  txn        LEASE compares (target LEASE, lease union; also a wrong union), puts
             with leases in the taken and the not-taken branch, unknown leases
  random     --ops seeded random operations of all the kinds above
  expiry     short leases (TTL 2 and 3, some asked for TTL 0/1/-1) with keys, one
             lease kept alive over the stream, then a wait past expiry (TTL + 1.5 s):
             remaining keys, revisions, leases, TimeToLive -1, re-grant
  watch      one watcher (whole key space, prev_kv) opened first: all events
             compared at the end (lease ids normalised)
  revoke-events  on each server, from its own watch events: every revoke and
             every expiry is one revision of DELETE events for exactly the keys
             attached to that lease; a revoke of a lease without keys adds none

Facts about etcd 3.5.16 (default flags) the driver asserts on the reference:
  * LeaseGrant: TTL below 2 (0, 1, any negative value) is raised to 2 (the minimum,
    ceil(1.5 * election timeout)); TTL 9000000000 is accepted, anything larger is
    OUT_OF_RANGE "etcdserver: too large lease TTL" (checked before the id: also for
    an existing id); an existing id is FAILED_PRECONDITION "etcdserver: lease
    already exists"; explicit ids may be negative; an id is free again once its
    lease is revoked or expired; header.revision = current revision;
  * LeaseRevoke: NOT_FOUND "etcdserver: requested lease not found" for unknown ids,
    id 0 and revoked leases; with keys attached: one new revision deleting all of
    them (DELETE events in key order; prev_kv carries the lease), header.revision =
    that revision; without keys: no new revision;
  * LeaseTimeToLive: unknown (or 0) -> TTL -1, grantedTTL 0, no keys, ID echoed;
    the remaining TTL is truncated (TTL 60 reads 59 right after the grant);
  * LeaseKeepAlive: unknown (or 0) -> TTL 0 with the ID echoed, stream stays open;
    known -> TTL = granted TTL; header.revision = current revision;
  * Put: lease unknown -> NOT_FOUND "etcdserver: requested lease not found";
    ignore_lease with a lease -> INVALID_ARGUMENT "etcdserver: lease is provided";
    ignore_lease on a missing key -> INVALID_ARGUMENT "etcdserver: key not found";
    a put with another lease moves the key, without lease (no ignore_lease) detaches
    it, a delete detaches it; Txn checks leases only in the branch it takes;
  * Compare target LEASE reads the `lease` union (0 when another union field is
    set); a missing key has lease 0;
  * expiry: an expired lease is revoked within ~0.5 s (checked every 500 ms), one
    revision per lease with keys, none for a lease without keys.

A phase keeps going after a mismatch (the first few are printed in full), so one
difference can make later phases fail too.  The generator's state is taken from
the reference's answers; the reference is also checked against the etcd
behaviour the driver relies on (a deviation is a HARNESS failure, exit 2).

Usage (normally through ./lease-run):
  lease_diff.py [--proto-dir DIR] [--cache DIR] ports N
  lease_diff.py [--proto-dir DIR] [--cache DIR] stubs
  lease_diff.py [--proto-dir DIR] [--cache DIR] run --subject HOST:PORT --reference HOST:PORT
                --seed N [--ops N] [--subject-pid PID --reference-pid PID] [--no-expiry]
The last line of `run` is `COUNTS <passed> <failed>` (phases).
"""

import collections
import os
import random
import re
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ next to kv_diff.py in the work tree
import kv_diff as kd  # noqa: E402  (stubs, servers, message comparison, printing)

pb = grpc = rpc_grpc = None

# etcd constants
MAX_LEASE_TTL = 9000000000   # lease.MaxLeaseTTL
MIN_TTL = 2                  # ceil(3/2 * election timeout 1 s) with the default flags

# Normalised server-picked ids: TOKEN_BASE + n stands for Ln (printed as "Ln").
TOKEN_BASE = 0x4C00000000000000
# Client-chosen ids: far from etcd's picks (top 16 bits = member id) and from small
# sequential ones a server might pick.
EXPLICIT_BASE = 1 << 40
BOGUS_IDS = [(1 << 41) + 17, 0x7FFFFFFFFFFFFFFF, -7]
MISSING_ID = (1 << 41) + 999  # stands for a lease a server failed to grant

KEYS = [b"a", b"a/1", b"a/2", b"b", b"b/1", b"c", b"c\x00", b"foo", b"foo/bar", b"\xff"]
VALUES = [b"", b"v", b"v1", b"\x00", b"x" * 40]

PUT, DELETE = 0, 1
PHASES = ["grant", "revoke", "ttl", "keepalive", "kv", "txn", "random", "expiry",
          "watch", "revoke-events"]


class HarnessError(Exception):
    """The reference did not behave as the driver expects etcd to (or a harness bug)."""


class Abort(Exception):
    """A server died or a stream broke on the reference: the seed cannot go on."""


class NoAnswer:
    """Stands for an answer that never came (on a stream)."""

    def __init__(self, why):
        self.why = why

    def code(self):
        return None

    def details(self):
        return self.why


# --------------------------------------------------------------------------
# servers and streams


class Server(kd.Server):
    def __init__(self, name, endpoint, pid):
        super().__init__(name, endpoint, pid)
        self.lease = rpc_grpc.LeaseStub(self.channel)
        self.watch = rpc_grpc.WatchStub(self.channel)


class Lease:
    """A logical lease: the same lease on both servers (ids may differ)."""

    def __init__(self, label, explicit=None):
        self.label = label
        self.explicit = explicit   # client-chosen id, or None: each server picks
        self.ids = [None, None]    # [subject, reference]
        self.live = False          # as the reference says
        self.ttl = 0

    def id(self, side):
        if self.explicit is not None:
            return self.explicit
        return self.ids[side] if self.ids[side] is not None else MISSING_ID


# --------------------------------------------------------------------------
# normalisation and printing

ID_FIELDS = {
    ("etcdserverpb.LeaseGrantResponse", "ID"),
    ("etcdserverpb.LeaseKeepAliveResponse", "ID"),
    ("etcdserverpb.LeaseTimeToLiveResponse", "ID"),
    ("etcdserverpb.LeaseStatus", "ID"),
    ("mvccpb.KeyValue", "lease"),
}
TOKEN_RE = re.compile(r"(?<![0-9])(-?[0-9]{15,20})(?![0-9])")


def untoken(s):
    def rep(m):
        v = int(m.group(1))
        if TOKEN_BASE < v < TOKEN_BASE + 10 ** 6:
            return "L%d" % (v - TOKEN_BASE)
        return m.group(1)
    return TOKEN_RE.sub(rep, s)


def fmt_one(m):
    return untoken(kd.text_format.MessageToString(kd.blank_headers(m), as_one_line=True))


def fmt_ans(ans):
    ok, v = ans
    if ok:
        s = fmt_one(v)
        return s if s else "<empty message>"
    return "ERROR %s %r" % (kd.code_name(v), v.details())


def sort_repeated(container, key):
    items = [type(x)() for x in container]
    for dst, src in zip(items, container):
        dst.CopyFrom(src)
    items.sort(key=lambda x: (key(x), x.SerializeToString(deterministic=True)))
    del container[:]
    container.extend(items)


# --------------------------------------------------------------------------
# the test


class Tester(kd.Draws):
    def __init__(self, args, subject, reference):
        self.args = args
        self.servers = [subject, reference]
        self.r = random.Random(args.seed)
        self.uniq = 0
        self.tokens = [{}, {}]          # per side: picked id -> TOKEN_BASE + n
        self.ntok = [0, 0]
        self.rev = [1, 1]               # per side: last header revision seen
        self.leases = []
        self.explicit_used = set()
        self.revokes = [[], []]         # per side: (canonical id, rev before, rev after, op)
        self.windows = [[], []]         # per side: (rev before, rev after, {canonical ids}, batch1 count)
        self.ka = None                  # keepalive streams [subject, reference]
        self.ka_stalled = None          # why the subject's keepalive stream is not waited for
        self.subject_timeouts = 0
        self.watch = None               # watch streams [subject, reference]
        self.opidx = 0
        self.stats = collections.Counter()
        self.results = []               # (phase, ok, note)
        self.cur = None                 # current phase name
        self.cur_fail = 0
        self.cur_shown = 0
        self.cur_ops = 0
        self.t0 = time.monotonic()

    # ---- helpers
    def value(self):
        return self.value_or_unique(0.4) if self.chance(0.5) else self.r.choice(VALUES)

    def check_alive(self):
        for s in self.servers:
            if not s.alive():
                raise Abort("%s (pid %d) died" % (s.name, s.pid))

    def lid(self, ref, side):
        return ref.id(side) if isinstance(ref, Lease) else ref

    def describe(self, ref):
        if isinstance(ref, Lease):
            return ref.label
        return str(ref)

    def register(self, side, lid):
        t = self.tokens[side]
        if lid not in t:
            self.ntok[side] += 1
            t[lid] = TOKEN_BASE + self.ntok[side]
        return t[lid]

    def canon(self, side, lid):
        return self.tokens[side].get(lid, lid)

    def new_lease(self, label=None, explicit=None):
        if label is None:
            label = "E%d" % (len(self.leases) + 1) if explicit is not None else "P%d" % (len(self.leases) + 1)
        L = Lease(label, explicit)
        self.leases.append(L)
        return L

    def new_explicit(self, negative=False):
        while True:
            v = EXPLICIT_BASE + self.r.randint(1, 10 ** 6)
            if negative:
                v = -v
            if v not in self.explicit_used:
                self.explicit_used.add(v)
                return v

    # ---- normalisation
    def norm(self, side, msg):
        m = type(msg)()
        m.CopyFrom(msg)

        def walk(x):
            name = x.DESCRIPTOR.full_name
            for f, v in x.ListFields():
                if f.message_type is not None:
                    if kd.is_repeated(f):
                        for e in v:
                            walk(e)
                    else:
                        walk(v)
                elif (name, f.name) in ID_FIELDS:
                    setattr(x, f.name, self.canon(side, v))
            if name == "etcdserverpb.LeaseTimeToLiveResponse":
                ks = sorted(x.keys)
                del x.keys[:]
                x.keys.extend(ks)
            elif name == "etcdserverpb.LeaseLeasesResponse":
                sort_repeated(x.leases, lambda s: s.ID)
        walk(m)
        return m

    def diff_answers(self, a, b):
        """-> (description or None, normalised a, normalised b)"""
        if a[0] and b[0]:
            na, nb = self.norm(0, a[1]), self.norm(1, b[1])
            if (nb.DESCRIPTOR.full_name == "etcdserverpb.LeaseTimeToLiveResponse"
                    and na.TTL >= 0 and nb.TTL >= 0 and na.TTL != nb.TTL
                    and abs(na.TTL - nb.TTL) <= 1):
                na.TTL = nb.TTL
                self.stats["remaining TTL off by one (tolerated)"] += 1
            d = kd.compare(None, na, nb, collections.Counter())
            return d, (True, na), (True, nb)
        if a[0] != b[0]:
            return "one side failed, the other succeeded", a, b
        if (a[1].code(), a[1].details()) != (b[1].code(), b[1].details()):
            return "errors differ", a, b
        return None, a, b

    # ---- phases and reporting
    def result(self, name, ok, note):
        """One test line, printed as soon as the phase is over."""
        self.results.append((name, ok, note))
        print("%s lease/seed%d/%s (%s)" % ("ok" if ok else "FAIL", self.args.seed, name, note))

    def mismatch(self, what, desc, reqs, a, b, extra=None):
        self.cur_fail += 1
        self.stats["mismatches"] += 1
        if self.cur_shown >= self.args.max_reports:
            return
        self.cur_shown += 1
        print("seed %d %s: MISMATCH at op %d (%s): %s" % (
            self.args.seed, self.cur, self.opidx, what, untoken(desc)))
        if reqs is not None:
            ra, rb = reqs
            if ra.SerializeToString(deterministic=True) == rb.SerializeToString(deterministic=True):
                print("  request:   " + fmt_ans((True, rb)))
            else:
                print("  request to %s: %s" % (self.servers[0].name, fmt_ans((True, ra))))
                print("  request to %s: %s" % (self.servers[1].name, fmt_ans((True, rb))))
        if a is not None:
            print("  %-9s  %s" % (self.servers[0].name, fmt_ans(a)))
            print("  %-9s  %s" % (self.servers[1].name, fmt_ans(b)))
        for line in extra or ():
            print("  " + line)
        if self.cur_shown == self.args.max_reports:
            print("  (further mismatches of this phase are counted, not shown)")

    def note_rev(self, side, ans):
        if ans[0] and ans[1].HasField("header") and ans[1].header.revision > 0:
            self.rev[side] = ans[1].header.revision

    # ---- unary calls
    def call(self, what, method, req, before_compare=None):
        """One unary call on both servers; req is a message or side -> message.
        Compared (after before_compare(a, b), if given); returns (reqs, subject
        answer, reference answer)."""
        self.opidx += 1
        self.cur_ops += 1
        self.stats["rpc:" + method] += 1
        reqs = [req(0), req(1)] if callable(req) else [req, req]
        svc = "lease" if method.startswith("Lease") else "kv"
        futs = [getattr(getattr(s, svc), method).future(reqs[i], timeout=self.args.rpc_timeout)
                for i, s in enumerate(self.servers)]
        out = []
        for f in futs:
            e = f.exception()
            out.append((False, e) if e is not None else (True, f.result()))
        a, b = out
        if not a[0] and a[1].code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            self.subject_timeouts += 1
        self.note_rev(0, a)
        self.note_rev(1, b)
        if before_compare is not None:
            before_compare(a, b)
        d, na, nb = self.diff_answers(a, b)
        if d is None:
            for s, ans in zip(self.servers, (a, b)):
                if not ans[0] and ans[1].code() in kd.TRANSPORT_CODES:
                    d = "%s answered %s: transport failure, not an answer" % (s.name, kd.code_name(ans[1]))
        if d:
            self.mismatch(what, d, reqs, na, nb)
        if not b[0] and b[1].code() in kd.TRANSPORT_CODES:
            self.check_alive()
            raise Abort("reference: %s %s on %s" % (kd.code_name(b[1]), b[1].details(), what))
        self.check_alive()
        if self.subject_timeouts >= 3:
            raise Abort("%s answered DEADLINE_EXCEEDED %d times (rpc timeout %.0fs): "
                        "giving up on this seed" % (self.servers[0].name, self.subject_timeouts,
                                                    self.args.rpc_timeout))
        if not b[0]:
            self.stats["errors %s %s %r" % (method, kd.code_name(b[1]), b[1].details())] += 1
        return reqs, a, b

    # reference expectations (what the driver relies on; see the module doc)
    def expect(self, cond, what, b, why):
        if not cond:
            raise HarnessError("%s: the reference answered %s; expected %s" % (what, fmt_ans(b), why))

    def expect_err(self, what, b, code, msg):
        self.expect(not b[0] and b[1].code() == getattr(grpc.StatusCode, code)
                    and b[1].details() == msg, what, b, "%s %r" % (code, msg))

    # ---- lease operations
    def grant(self, L, ttl, expect=None):
        """LeaseGrant for L (None: a lease that must not be created). expect: None (no
        check), "ok", or (code, message)."""
        explicit = L.explicit if L is not None else None
        what = "LeaseGrant %s TTL=%d" % (L.label if L else "-", ttl)
        def bind(a, b):  # map the picked ids before the answers are compared
            for side, ans in ((0, a), (1, b)):
                if ans[0] and L is not None and L.explicit is None:
                    L.ids[side] = ans[1].ID
                    self.register(side, ans[1].ID)
        _, a, b = self.call(what, "LeaseGrant",
                            pb.LeaseGrantRequest(TTL=ttl, ID=explicit or 0), bind)
        if expect == "ok":
            want = min(max(ttl, MIN_TTL), MAX_LEASE_TTL)
            self.expect(b[0] and b[1].TTL == want and (explicit is None or b[1].ID == explicit),
                        what, b, "success with TTL %d" % want)
        elif expect is not None:
            self.expect_err(what, b, *expect)
        if b[0] and L is not None:
            L.live = True
            L.ttl = b[1].TTL
        return a, b

    def revoke(self, ref, expect=None):
        what = "LeaseRevoke %s" % self.describe(ref)
        before = list(self.rev)
        reqs, a, b = self.call(what, "LeaseRevoke", lambda s: pb.LeaseRevokeRequest(ID=self.lid(ref, s)))
        for side, ans in ((0, a), (1, b)):
            if ans[0]:
                self.revokes[side].append((self.canon(side, reqs[side].ID), before[side],
                                           ans[1].header.revision, self.opidx))
        if expect == "nf":
            self.expect_err(what, b, "NOT_FOUND", "etcdserver: requested lease not found")
        elif expect is not None:   # number of revisions the revoke must add
            self.expect(b[0] and b[1].header.revision == before[1] + expect, what, b,
                        "success at revision %d" % (before[1] + expect))
        if b[0] and isinstance(ref, Lease):
            ref.live = False
        return a, b

    def ttl(self, ref, keys, expect=None):
        what = "LeaseTimeToLive %s keys=%s" % (self.describe(ref), keys)
        _, a, b = self.call(what, "LeaseTimeToLive",
                            lambda s: pb.LeaseTimeToLiveRequest(ID=self.lid(ref, s), keys=keys))
        if expect == "nf":
            self.expect(b[0] and b[1].TTL == -1 and b[1].grantedTTL == 0 and not b[1].keys,
                        what, b, "TTL -1")
        return a, b

    def leases_list(self):
        _, a, b = self.call("LeaseLeases", "LeaseLeases", pb.LeaseLeasesRequest())
        return a, b

    def keepalive(self, ref, expect=None, mask_rev=False):
        """mask_rev: compare without header.revision (sent while expiries may be
        deleting keys, at moments that differ between the servers)."""
        what = "LeaseKeepAlive %s" % self.describe(ref)
        self.opidx += 1
        self.cur_ops += 1
        self.stats["rpc:LeaseKeepAlive"] += 1
        reqs = [pb.LeaseKeepAliveRequest(ID=self.lid(ref, s)) for s in (0, 1)]
        n = [st.count() for st in self.ka]
        for st, q in zip(self.ka, reqs):
            st.send(q)
        out = []
        for side, (st, timeout) in enumerate(zip(self.ka, (3.0, 10.0))):
            if side == 0 and self.ka_stalled:
                out.append((False, NoAnswer(self.ka_stalled)))
            elif st.wait_count(n[side] + 1, timeout):
                out.append((True, st.snapshot()[n[side]]))
            elif st.err is not None:
                out.append((False, st.err))
            else:
                out.append((False, NoAnswer("no LeaseKeepAlive response within %.0fs" % timeout)))
                if side == 0:  # later answers could not be matched to their requests
                    self.ka_stalled = "the keepalive stream stalled at op %d" % self.opidx
        a, b = out
        if not b[0]:
            self.check_alive()
            raise Abort("reference keepalive stream: %s" % fmt_ans(b))
        if mask_rev:
            self.stats["keepalives compared without header.revision"] += 1
            masked = []
            for ok, v in (a, b):
                if ok:
                    v2 = type(v)()
                    v2.CopyFrom(v)
                    v2.header.revision = 0
                    v = v2
                masked.append((ok, v))
            a, b = masked
        d, na, nb = self.diff_answers(a, b)
        if d:
            self.mismatch(what, d, reqs, na, nb)
        if expect == "nf":
            self.expect(b[1].TTL == 0, what, b, "TTL 0")
        elif expect == "ok":
            self.expect(b[1].TTL == ref.ttl, what, b, "TTL %d" % ref.ttl)
        self.check_alive()
        return a, b

    # ---- KV operations
    def mk_put(self, spec, side):
        key, value, lease, ign_lease, ign_value, prev = spec
        return pb.PutRequest(key=key, value=value, lease=self.lid(lease, side),
                             ignore_lease=ign_lease, ignore_value=ign_value, prev_kv=prev)

    def put(self, key, lease=0, value=None, ignore_lease=False, ignore_value=False,
            prev_kv=None, expect=None):
        if value is None:
            value = b"" if ignore_value else self.value()
        if prev_kv is None:
            prev_kv = self.chance(0.5)
        spec = (key, value, lease, ignore_lease, ignore_value, prev_kv)
        what = "Put %r lease=%s%s" % (key, self.describe(lease), " ignore_lease" if ignore_lease else "")
        _, a, b = self.call(what, "Put", lambda s: self.mk_put(spec, s))
        if expect == "ok":
            self.expect(b[0], what, b, "success")
        elif expect is not None:
            self.expect_err(what, b, *expect)
        return a, b

    def range(self, key, end=b"", **kw):
        what = "Range %r..%r" % (key, end)
        _, a, b = self.call(what, "Range", pb.RangeRequest(key=key, range_end=end, **kw))
        return a, b

    def range_all(self):
        return self.range(b"\x00", b"\x00")

    def delete(self, key, end=b"", prev_kv=True):
        what = "DeleteRange %r..%r" % (key, end)
        _, a, b = self.call(what, "DeleteRange",
                            pb.DeleteRangeRequest(key=key, range_end=end, prev_kv=prev_kv))
        return a, b

    def txn(self, what, cmps, success, failure, expect=None):
        """cmps: [(key, result, lease ref or ("union", field, value))]; success/failure:
        lists of ("put", spec) / ("range", key, end) / ("delete", key, end)."""
        def mk_op(op, side):
            if op[0] == "put":
                return pb.RequestOp(request_put=self.mk_put(op[1], side))
            if op[0] == "range":
                return pb.RequestOp(request_range=pb.RangeRequest(key=op[1], range_end=op[2]))
            return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(
                key=op[1], range_end=op[2], prev_kv=True))

        def mk(side):
            t = pb.TxnRequest()
            for key, result, ref in cmps:
                c = t.compare.add(key=key, result=result, target=pb.Compare.LEASE)
                if isinstance(ref, tuple):
                    setattr(c, ref[1], ref[2])
                else:
                    c.lease = self.lid(ref, side)
            for op in success:
                t.success.append(mk_op(op, side))
            for op in failure:
                t.failure.append(mk_op(op, side))
            return t
        _, a, b = self.call("Txn " + what, "Txn", mk)
        if expect is not None:
            if expect in (True, False):
                self.expect(b[0] and b[1].succeeded == expect, "Txn " + what, b,
                            "succeeded=%s" % expect)
            else:
                self.expect_err("Txn " + what, b, *expect)
        return a, b

    # ---- fixed phases
    def phase_grant(self):
        r = self.r
        L = self.new_lease("A1")
        self.grant(L, r.randint(60, 600), expect="ok")
        self.leases_list()
        # TTL below the minimum is raised to 2; check, then revoke at once (before it
        # could expire and delete asynchronously)
        for ttl in (0, 1, 2, -1, -r.randint(2, 10 ** 12), -(MAX_LEASE_TTL + 1)):
            S = self.new_lease("short%d" % len(self.leases))
            self.grant(S, ttl, expect="ok")
            self.ttl(S, keys=self.chance(0.5))
            self.revoke(S, expect=0)
        big = self.new_lease("big")
        self.grant(big, MAX_LEASE_TTL, expect="ok")
        self.ttl(big, keys=False)
        for ttl in (MAX_LEASE_TTL + 1, MAX_LEASE_TTL + r.randint(2, 10 ** 12), 1 << 62,
                    0x7FFFFFFFFFFFFFFF):
            self.grant(None, ttl, expect=("OUT_OF_RANGE", "etcdserver: too large lease TTL"))
        # explicit ids
        E = self.new_lease("E1", self.new_explicit())
        self.grant(E, r.randint(60, 600), expect="ok")
        self.grant(E, r.randint(60, 600),
                   expect=("FAILED_PRECONDITION", "etcdserver: lease already exists"))
        self.grant(E, MAX_LEASE_TTL + 1, expect=("OUT_OF_RANGE", "etcdserver: too large lease TTL"))
        self.grant(E, 0, expect=("FAILED_PRECONDITION", "etcdserver: lease already exists"))
        N = self.new_lease("Eneg", self.new_explicit(negative=True))
        self.grant(N, r.randint(60, 600), expect="ok")
        self.grant(N, 100, expect=("FAILED_PRECONDITION", "etcdserver: lease already exists"))
        for _ in range(r.randint(2, 4)):
            P = self.new_lease()
            self.grant(P, r.randint(60, 3600), expect="ok")
        self.leases_list()
        self.ttl(E, keys=True)
        self.ttl(N, keys=False)

    def live(self, explicit=None):
        c = [L for L in self.leases if L.live and L.ttl >= 60
             and (explicit is None or (L.explicit is not None) == explicit)]
        return c

    def phase_revoke(self):
        r = self.r
        # a lease with keys: one revision deletes them all
        A = self.new_lease("R1")
        self.grant(A, r.randint(60, 600), expect="ok")
        ks = r.sample(KEYS, 4)
        for k in ks[:3]:
            self.put(k, A, expect="ok")
        self.txn("put with lease", [], [("put", (ks[3], b"t", A, False, False, True))], [],
                 expect=True)
        self.range_all()
        self.ttl(A, keys=True)
        self.revoke(A, expect=1)
        self.range_all()
        self.ttl(A, keys=True, expect="nf")
        self.revoke(A, expect="nf")
        for bogus in BOGUS_IDS + [0]:
            self.revoke(bogus, expect="nf")
        # without keys: no revision
        B = self.new_lease("R2")
        self.grant(B, 120, expect="ok")
        self.revoke(B, expect=0)
        # keys deleted first (one by key, the rest by range), then revoke: no revision
        C = self.new_lease("R3")
        self.grant(C, 120, expect="ok")
        for k in (b"d/1", b"d/2", b"d/3"):
            self.put(k, C, expect="ok")
        self.delete(b"d/1")
        self.ttl(C, keys=True)
        self.delete(b"d/", b"d0")
        self.ttl(C, keys=True)
        self.revoke(C, expect=0)
        # keys moved to another lease / detached by a put without lease
        D = self.new_lease("R4")
        F = self.new_lease("R5")
        self.grant(D, 300, expect="ok")
        self.grant(F, 300, expect="ok")
        self.put(b"m/1", D, expect="ok")
        self.put(b"m/2", D, expect="ok")
        self.put(b"m/3", D, expect="ok")
        self.put(b"m/1", F, prev_kv=True, expect="ok")      # moved
        self.put(b"m/2", 0, prev_kv=True, expect="ok")      # detached
        self.put(b"m/3", 0, ignore_lease=True, prev_kv=True, expect="ok")  # stays on D
        self.ttl(D, keys=True)
        self.ttl(F, keys=True)
        self.revoke(D, expect=1)                            # deletes m/3 only
        self.range(b"m/", b"m0")
        self.revoke(F, expect=1)                            # deletes m/1
        self.range(b"m/", b"m0")
        # an explicit id can be granted again once revoked
        X = self.new_lease("R6", self.new_explicit())
        self.grant(X, 60, expect="ok")
        self.put(b"x/1", X, expect="ok")
        self.revoke(X, expect=1)
        self.grant(X, 90, expect="ok")
        self.ttl(X, keys=True)
        self.leases_list()

    def phase_ttl(self):
        r = self.r
        for L in self.live():
            self.ttl(L, keys=self.chance(0.5))
        dead = [L for L in self.leases if not L.live]
        for L in r.sample(dead, min(3, len(dead))):
            self.ttl(L, keys=self.chance(0.5), expect="nf")
        for bogus in BOGUS_IDS + [0]:
            self.ttl(bogus, keys=self.chance(0.5), expect="nf")
        big = [L for L in self.leases if L.live and L.ttl == MAX_LEASE_TTL]
        for L in big:
            self.ttl(L, keys=True)

    def phase_keepalive(self):
        r = self.r
        for L in self.live():
            self.keepalive(L, expect="ok")
            if self.chance(0.5):
                self.ttl(L, keys=False)
        for L in self.leases:
            if L.live and L.ttl == MAX_LEASE_TTL:
                self.keepalive(L, expect="ok")
        dead = [L for L in self.leases if not L.live]
        for L in r.sample(dead, min(3, len(dead))):
            self.keepalive(L, expect="nf")
        for bogus in BOGUS_IDS + [0]:
            self.keepalive(bogus, expect="nf")
        # revoke a kept-alive lease, then keep it alive again
        L = self.new_lease("K1")
        self.grant(L, 100, expect="ok")
        self.keepalive(L, expect="ok")
        self.revoke(L, expect=0)
        self.keepalive(L, expect="nf")

    def phase_kv(self):
        r = self.r
        live = self.live()
        L = r.choice(live)
        M = self.new_lease("KV1")
        self.grant(M, 200, expect="ok")
        k1, k2, k3 = r.sample(KEYS, 3)
        self.put(k1, L, prev_kv=True, expect="ok")
        self.put(k1, M, prev_kv=True, expect="ok")          # moves k1 to M
        self.put(k1, 0, ignore_lease=True, prev_kv=True, expect="ok")
        self.put(k1, 0, ignore_lease=True, ignore_value=True, prev_kv=True, expect="ok")
        self.put(k2, M, expect="ok")
        self.put(b"nokey", 0, ignore_lease=True, expect=("INVALID_ARGUMENT", "etcdserver: key not found"))
        self.put(k2, M, ignore_lease=True, expect=("INVALID_ARGUMENT", "etcdserver: lease is provided"))
        for bogus in BOGUS_IDS:
            self.put(k3, bogus, expect=("NOT_FOUND", "etcdserver: requested lease not found"))
        dead = [x for x in self.leases if not x.live]
        self.put(k3, r.choice(dead), expect=("NOT_FOUND", "etcdserver: requested lease not found"))
        self.put(k3, r.choice(live), expect="ok")
        self.ttl(M, keys=True)
        self.range_all()
        self.range(k1)
        self.range(b"\x00", b"\x00", keys_only=True)
        self.range(b"\x00", b"\x00", sort_order=pb.RangeRequest.DESCEND,
                   sort_target=pb.RangeRequest.MOD)
        self.delete(k2, prev_kv=True)
        self.ttl(M, keys=True)
        self.revoke(M, expect=1)                            # k1 only
        self.range_all()

    def phase_txn(self):
        r = self.r
        # positive ids only: "lease > 0" below must hold
        live = [x for x in self.live() if x.explicit is None or x.explicit > 0]
        L, M = r.sample(live, 2)
        k1, k2, k3, k4 = r.sample(KEYS, 4)
        EQ, GT, LT, NE = pb.Compare.EQUAL, pb.Compare.GREATER, pb.Compare.LESS, pb.Compare.NOT_EQUAL
        v = self.value
        self.txn("attach", [], [("put", (k1, v(), L, False, False, True)),
                                ("put", (k2, v(), M, False, False, True))], [], expect=True)
        self.txn("lease == L (true)", [(k1, EQ, L)],
                 [("put", (k3, v(), M, False, False, True)), ("range", k1, b"")],
                 [("put", (k4, v(), L, False, False, False))], expect=True)
        self.txn("lease == M (false)", [(k1, EQ, M)],
                 [("put", (k3, v(), L, False, False, True))],
                 [("put", (k4, v(), L, False, False, True)), ("range", b"\x00", b"\x00")],
                 expect=False)
        self.txn("lease != M", [(k1, NE, M), (k2, EQ, M)], [("range", k2, b"")], [], expect=True)
        self.txn("lease > 0", [(k1, GT, 0)], [("delete", k2, b"")], [], expect=True)
        self.txn("lease < 0 on a missing key", [(b"nokey", LT, 0)], [], [("range", k1, b"")],
                 expect=False)
        self.txn("lease == 0 on a missing key", [(b"nokey", EQ, 0)], [("range", k1, b"")], [],
                 expect=True)
        self.txn("target LEASE, value union", [(k1, EQ, ("union", "value", b"x"))], [], [],
                 expect=False)
        self.txn("target LEASE, version union", [(k1, NE, ("union", "version", 3))], [], [],
                 expect=True)
        bad = r.choice(BOGUS_IDS)
        self.txn("unknown lease in the taken branch", [(k1, EQ, L)],
                 [("put", (k2, v(), bad, False, False, False))], [],
                 expect=("NOT_FOUND", "etcdserver: requested lease not found"))
        self.txn("unknown lease in the branch not taken", [(k1, EQ, L)], [("range", k1, b"")],
                 [("put", (k2, v(), bad, False, False, False))], expect=True)
        self.txn("ignore_lease in a txn", [],
                 [("put", (k1, v(), 0, True, False, True)), ("range", k1, b"")], [], expect=True)
        self.txn("delete leased keys", [], [("delete", b"\x00", b"\x00")], [], expect=True)
        self.ttl(L, keys=True)
        self.ttl(M, keys=True)
        self.txn("reattach", [], [("put", (k1, v(), L, False, False, True)),
                                  ("put", (k2, v(), L, False, False, True))], [], expect=True)
        self.revoke(L, expect=1)
        self.range_all()

    # ---- random phase
    def pick_ref(self, p_live=0.8):
        live = self.live()
        if live and self.chance(p_live):
            return self.r.choice(live)
        dead = [L for L in self.leases if not L.live]
        if dead and self.chance(0.5):
            return self.r.choice(dead)
        return self.r.choice(BOGUS_IDS + [0])

    def gen_put_spec(self, key):
        m = self.pick([(50, "lease"), (20, "none"), (15, "ign"), (10, "unknown"), (5, "ign+lease")])
        prev = self.chance(0.4)
        if m == "lease":
            live = self.live()
            ref = self.r.choice(live) if live else 0
            return (key, self.value(), ref, False, False, prev)
        if m == "none":
            return (key, self.value(), 0, False, False, prev)
        if m == "ign":
            return (key, self.value(), 0, True, self.chance(0.2), prev)
        if m == "unknown":
            return (key, self.value(), self.pick_ref(0.0), False, False, prev)
        live = self.live()
        return (key, self.value(), self.r.choice(live) if live else 1, True, False, prev)

    def random_op(self):
        r = self.r
        m = self.pick([(10, "grant"), (4, "grant-explicit"), (3, "grant-existing"),
                       (2, "grant-too-large"), (8, "revoke"), (8, "ttl"), (3, "leases"),
                       (6, "keepalive"), (20, "put"), (8, "range"), (6, "delete"), (12, "txn")])
        if m == "grant":
            if len(self.live()) > 25:
                m = "revoke"
            else:
                self.grant(self.new_lease(), r.choice([60, 120, 300, 3600, r.randint(60, 10 ** 6)]),
                           expect="ok")
                return m
        if m == "grant-explicit":
            self.grant(self.new_lease(explicit=self.new_explicit(negative=self.chance(0.2))),
                       r.choice([60, 600, r.randint(60, 10 ** 5)]), expect="ok")
        elif m == "grant-existing":
            ex = [L for L in self.leases if L.explicit is not None]
            if ex:
                L = r.choice(ex)
                was_live = L.live
                self.grant(L, r.randint(60, 600), expect=(
                    ("FAILED_PRECONDITION", "etcdserver: lease already exists") if was_live else "ok"))
        elif m == "grant-too-large":
            ex = [L for L in self.leases if L.explicit is not None and L.live]
            ref = r.choice(ex) if ex and self.chance(0.3) else None
            self.grant(None if ref is None else ref, MAX_LEASE_TTL + r.randint(1, 10 ** 12),
                       expect=("OUT_OF_RANGE", "etcdserver: too large lease TTL"))
        elif m == "revoke":
            ref = self.pick_ref(0.75)
            live = isinstance(ref, Lease) and ref.live
            self.revoke(ref, expect=None if live else "nf")
        elif m == "ttl":
            ref = self.pick_ref(0.75)
            live = isinstance(ref, Lease) and ref.live
            self.ttl(ref, keys=self.chance(0.6), expect=None if live else "nf")
        elif m == "leases":
            self.leases_list()
        elif m == "keepalive":
            ref = self.pick_ref(0.75)
            live = isinstance(ref, Lease) and ref.live
            self.keepalive(ref, expect="ok" if live else "nf")
        elif m == "put":
            spec = self.gen_put_spec(r.choice(KEYS))
            self.call("Put %r lease=%s" % (spec[0], self.describe(spec[2])), "Put",
                      lambda s: self.mk_put(spec, s))
        elif m == "range":
            k = r.choice(KEYS)
            k, e = r.choice([(b"\x00", b"\x00"), (k, b""), (k, kd.prefix_end(k)), (k, b"\x00")])
            self.range(k, e, keys_only=self.chance(0.1), limit=r.choice([0, 0, 0, 2]))
        elif m == "delete":
            k = r.choice(KEYS)
            k, e = r.choice([(k, b""), (k, b""), (k, kd.prefix_end(k))])
            self.delete(k, e, prev_kv=self.chance(0.5))
        else:
            self.random_txn()
        return m

    def random_txn(self):
        r = self.r
        keys = r.sample(KEYS, 6)
        cmps = []
        for _ in range(r.randint(0, 2)):
            k = r.choice(KEYS + [b"nokey"])
            if self.chance(0.05):
                cmps.append((k, r.choice([0, 3]), ("union", "version", r.randint(0, 3))))
                continue
            live = self.live()
            ref = self.pick_ref(0.8)
            if isinstance(ref, Lease) and ref.explicit is None:
                # picked ids are random: only equality means the same on both servers
                res = r.choice([pb.Compare.EQUAL, pb.Compare.NOT_EQUAL])
            elif ref == 0 or (live and self.chance(0.3)):
                ref = 0
                res = r.randint(0, 3)
            else:
                res = r.choice([pb.Compare.EQUAL, pb.Compare.NOT_EQUAL])
            cmps.append((k, res, ref))
        branches = [[], []]
        for br in branches:
            for _ in range(r.randint(0, 3)):
                if not keys:
                    break
                k = keys.pop()
                op = self.pick([(60, "put"), (25, "range"), (15, "delete")])
                if op == "put":
                    br.append(("put", self.gen_put_spec(k)))
                elif op == "range":
                    br.append(("range", k, r.choice([b"", kd.prefix_end(k)])))
                else:
                    br.append(("delete", k, b""))
        self.txn("random", cmps, branches[0], branches[1])

    def phase_random(self):
        kinds = collections.Counter()
        for _ in range(self.args.ops):
            kinds[self.random_op()] += 1
        self.stats["random ops: " + ", ".join("%s=%d" % kv for kv in sorted(kinds.items()))] += 1
        # nothing of the random leases survives into the expiry phase's windows
        self.leases_list()
        self.range_all()

    # ---- expiry
    def phase_expiry(self):
        r = self.r
        ops_before = self.opidx
        Z = self.new_lease("Zlong")
        self.grant(Z, 600, expect="ok")
        self.put(b"e/z", Z, expect="ok")
        # batch 1: TTL 2 (some asked for less: raised to 2), expiring together
        t_first = time.monotonic()
        b1 = []
        specs = [("X1", None, r.choice([0, 1, 2]), [b"e/1", b"e/2"]),
                 ("X2", None, 2, [b"e/3"]),
                 ("X3", self.new_explicit(), r.choice([2, -1]), [b"e/4", b"e/5", b"e/6"]),
                 ("X4", None, 2, [])]                       # no keys: expires without a revision
        for label, explicit, ttl, _ in specs:
            L = self.new_lease(label, explicit)
            self.grant(L, ttl, expect="ok")
            self.expect(L.ttl == 2, "expiry grant", (True, pb.LeaseGrantResponse(TTL=L.ttl)), "TTL 2")
            b1.append(L)
        K = self.new_lease("Kalive")
        self.grant(K, 2, expect="ok")
        t_k = time.monotonic()
        for L, (_, _, _, keys) in zip(b1, specs):
            for k in keys:
                self.put(k, L, expect="ok")
        self.put(b"e/k", K, expect="ok")
        self.put(b"e/7", b1[0], expect="ok")
        self.put(b"e/7", 0, prev_kv=True, expect="ok")      # detached: survives
        self.put(b"e/8", b1[1], expect="ok")
        self.delete(b"e/8")                                 # gone before the expiry
        # batch 2: TTL 3, a second later than batch 1
        Y = self.new_lease("Y1")
        t_y = time.monotonic()
        self.grant(Y, 3, expect="ok")
        self.put(b"e/9", Y, expect="ok")
        self.put(b"e/10", Y, expect="ok")
        self.ttl(Y, keys=True)
        r0 = list(self.rev)
        n_b1 = sum(1 for s in specs if s[3])
        # wait: keepalive K every 0.8 s, one check 1 s after the first grant
        t_end = max(t_first + 2, t_y + 3) + self.args.expiry_margin
        events = [(t_k + 0.8 * i, "ka") for i in range(1, 20) if t_k + 0.8 * i < t_end - 0.3]
        events.append((t_first + 1.0, "mid"))
        events.sort()
        for t, what in events:
            now = time.monotonic()
            if t > now:
                time.sleep(t - now)
            if what == "ka":
                self.keepalive(K, expect="ok", mask_rev=t > t_first + 1.9)
                continue
            # before anything can expire (t_first + 2): nothing is deleted yet; each
            # request only while an answer is sure to come well before that
            for L in [None] + b1:
                if time.monotonic() > t_first + 1.5:
                    self.stats["expiry: mid check cut short (machine too slow)"] += 1
                    break
                if L is None:
                    self.range(b"e/", b"e0")
                else:
                    self.ttl(L, keys=True)
        now = time.monotonic()
        if t_end > now:
            time.sleep(t_end - now)
        # a loaded machine may delay etcd's own expiry: give the reference (only) up to
        # 10 s more, polling it outside the comparison; the subject gets the same time
        want_rev = r0[1] + n_b1 + 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                rr = self.servers[1].kv.Range(pb.RangeRequest(key=b"e/", range_end=b"e0"),
                                              timeout=self.args.rpc_timeout)
                if rr.header.revision >= want_rev:
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        late = time.monotonic() - (deadline - 10)
        if late > 0.05:
            self.stats["expiry: reference late by %.1fs" % late] += 1
        _, b = self.range(b"e/", b"e0")
        want = sorted([b"e/z", b"e/k", b"e/7"])
        self.expect(b[0] and sorted(kv.key for kv in b[1].kvs) == want, "Range after expiry", b,
                    "keys %r" % want)
        self.expect(b[1].header.revision == r0[1] + n_b1 + 1, "Range after expiry", b,
                    "revision %d (one per expired lease with keys)" % (r0[1] + n_b1 + 1))
        for side in (0, 1):
            ids = {self.canon(side, L.id(side)) for L in b1 + [Y]}
            self.windows[side].append((r0[side], self.rev[side], ids, n_b1))
        for L in b1 + [Y]:
            L.live = False
        self.leases_list()
        for L in b1 + [Y, K, Z]:
            self.ttl(L, keys=True, expect="nf" if L in b1 + [Y] else None)
        self.keepalive(b1[0], expect="nf")
        self.revoke(Y, expect="nf")
        self.grant(b1[2], 60, expect="ok")                  # expired explicit id: free again
        self.revoke(b1[2], expect=0)
        self.revoke(K, expect=1)
        self.revoke(Z, expect=1)
        self.range_all()
        self.stats["expiry phase ops"] += self.opidx - ops_before

    # ---- watch
    def open_watch(self):
        self.watch = [kd.StreamSide(s.watch.Watch) for s in self.servers]
        creq = pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=b"\x00", range_end=b"\x00", prev_kv=True))
        for st in self.watch:
            st.send(creq)
        if not self.watch[1].wait_count(1, 10):
            raise HarnessError("reference: no watch created response")
        self.watch[0].wait_count(1, 3)

    def events(self, side):
        """Flattened, normalised events of one side's watcher (+ created flags)."""
        out = []
        created = 0
        for resp in self.watch[side].snapshot():
            if resp.created:
                created += 1
            for ev in resp.events:
                out.append(self.norm(side, ev))
        return created, out

    def canonical_events(self, side, evs, seen=None):
        """Within each expiry batch-1 window, order the per-lease revisions by their keys.
        seen: a list that gets, per window, the keys of each revision as the side sent them."""
        evs = list(evs)
        for before, _after, _, n in self.windows[side]:
            lo, hi = before + 1, before + n
            idx = [i for i, e in enumerate(evs) if lo <= e.kv.mod_revision <= hi]
            if not idx:
                continue
            groups = collections.OrderedDict()
            for i in idx:
                groups.setdefault(evs[i].kv.mod_revision, []).append(evs[i])
            if seen is not None:
                seen.append([[e.kv.key for e in g] for g in groups.values()])
            order = sorted(groups.values(), key=lambda g: [e.kv.key for e in g])
            flat = []
            for k, g in enumerate(order):
                for e in g:
                    c = type(e)()
                    c.CopyFrom(e)
                    c.kv.mod_revision = lo + k
                    flat.append(c)
            if len(flat) == len(idx) and idx == list(range(idx[0], idx[0] + len(idx))):
                evs[idx[0]:idx[0] + len(idx)] = flat
        return evs

    def phase_watch(self):
        final = self.rev[1]
        ok = self.watch[1].wait_for(
            lambda rs: any(ev.kv.mod_revision >= final for x in rs for ev in x.events), 10)
        if not ok and final > 1:
            raise HarnessError("reference watcher: no event at revision %d within 10s" % final)
        self.watch[0].wait_for(
            lambda rs: any(ev.kv.mod_revision >= self.rev[0] for x in rs for ev in x.events), 3)
        time.sleep(0.2)
        ca, ea = self.events(0)
        cb, eb = self.events(1)
        self.stats["watch events compared"] += len(eb)
        self.cur_ops += 1
        if ca != cb:
            self.mismatch("watch", "created responses: %d != %d" % (ca, cb), None, None, None)
        for side, st in enumerate(self.watch):
            if st.err is not None:
                self.mismatch("watch", "%s's watch stream ended: %s %s" % (
                    self.servers[side].name, kd.code_name(st.err), st.err.details()),
                    None, None, None)
        sa, sb = [], []
        xa, xb = self.canonical_events(0, ea, sa), self.canonical_events(1, eb, sb)
        self.stats["expiry batches"] += len(sb)
        self.stats["expiry batches revoked in another order (tolerated)"] += sum(
            1 for x, y in zip(sa, sb) if x != y and sorted(x) == sorted(y))
        for i in range(max(len(xa), len(xb))):
            if i >= len(xa) or i >= len(xb):
                d = "number of events: %d != %d" % (len(xa), len(xb))
            else:
                d = kd.compare(None, xa[i], xb[i], collections.Counter())
            if d:
                ctx = []
                for j in range(max(0, i - 3), min(max(len(xa), len(xb)), i + 3)):
                    mark = ">>" if j == i else "  "
                    ctx.append("%s [%d] %-9s %s" % (mark, j, self.servers[0].name,
                                                    fmt_one(xa[j]) if j < len(xa) else "-"))
                    ctx.append("%s [%d] %-9s %s" % (mark, j, self.servers[1].name,
                                                    fmt_one(xb[j]) if j < len(xb) else "-"))
                self.mismatch("watch event %d" % i, d, None,
                              (True, xa[i]) if i < len(xa) else (False, NoAnswer("no event")),
                              (True, xb[i]) if i < len(xb) else (False, NoAnswer("no event")),
                              extra=["events around it (expiry batches in canonical order):"] + ctx)
                break

    def revoke_event_problems(self, side):
        """Check, from one side's own events, that revokes and expiries delete exactly
        the keys attached to the lease, in one revision each."""
        _, evs = self.events(side)
        byrev = collections.OrderedDict()
        for e in evs:
            byrev.setdefault(e.kv.mod_revision, []).append(e)
        probs = []
        state = {}      # key -> lease (canonical), live keys only
        revoke_at = {}  # revision -> (lease, op)
        empty = collections.defaultdict(list)  # rev -> [(lease, op)] revokes that added nothing
        for lease, before, after, op in self.revokes[side]:
            if after == before:
                empty[before].append((lease, op))
            elif after == before + 1:
                revoke_at[after] = (lease, op)
            else:
                probs.append("op %d: revoke of %s went from revision %d to %d" % (
                    op, untoken(str(lease)), before, after))
        windows = {}
        for before, after, ids, _ in self.windows[side]:
            for rv in range(before + 1, after + 1):
                windows[rv] = (ids, before, after)
        expired = set()

        def check_empty(rv):
            for lease, op in empty.pop(rv, []):
                left = sorted(k for k, v in state.items() if v == lease)
                if left:
                    probs.append("op %d: revoke of %s added no revision, but keys %r were "
                                 "attached to it" % (op, untoken(str(lease)), left))
        check_empty(1)
        for rv, group in byrev.items():
            if rv in revoke_at or rv in windows:
                lease = revoke_at[rv][0] if rv in revoke_at else None
                where = ("op %d: revoke of %s" % (revoke_at[rv][1], untoken(str(lease)))
                         if rv in revoke_at else "expiry")
                if any(e.type != DELETE for e in group):
                    probs.append("%s, revision %d: not only DELETE events" % (where, rv))
                keys = {e.kv.key for e in group}
                owners = {state.get(k) for k in keys}
                if lease is None:
                    if len(owners) != 1 or None in owners:
                        probs.append("expiry, revision %d: deleted keys %r belong to leases %s" % (
                            rv, sorted(keys), untoken(str(sorted(map(str, owners))))))
                    lease = next(iter(owners))
                    ids = windows[rv][0]
                    if lease not in ids:
                        probs.append("expiry, revision %d: deletes keys of %s, which was not "
                                     "expiring" % (rv, untoken(str(lease))))
                    if lease in expired:
                        probs.append("expiry, revision %d: a second revision for %s" % (
                            rv, untoken(str(lease))))
                    expired.add(lease)
                attached = {k for k, v in state.items() if v == lease}
                if keys != attached:
                    probs.append("%s, revision %d: deleted %r, attached were %r" % (
                        where, rv, sorted(keys), sorted(attached)))
                for e in group:
                    if e.prev_kv.lease != lease:
                        probs.append("%s, revision %d: prev_kv of %r has lease %s" % (
                            where, rv, e.kv.key, untoken(str(e.prev_kv.lease))))
                        break
            for e in group:
                if e.type == DELETE:
                    state.pop(e.kv.key, None)
                elif e.kv.lease:
                    state[e.kv.key] = e.kv.lease
                else:
                    state.pop(e.kv.key, None)
            check_empty(rv)
        for before, after, ids, _ in self.windows[side]:
            left = sorted(k for k, v in state.items() if v in ids)
            if after == before:
                probs.append("expiry added no revision")
            if left:
                probs.append("expiry: keys %r of expired leases are still there" % left)
        for rv in sorted(empty):
            check_empty(rv)
        return probs

    def phase_revoke_events(self):
        self.cur_ops += 1
        pr = self.revoke_event_problems(1)
        if pr:
            raise HarnessError("reference: " + "; ".join(pr[:5]))
        ps = self.revoke_event_problems(0)
        self.stats["revokes checked"] += len(self.revokes[1])
        if ps:
            self.mismatch("revoke events", "%d problem(s) in %s's own watch events" % (
                len(ps), self.servers[0].name), None, None, None, extra=[untoken(p) for p in ps[:10]])

    # ---- driver
    def run(self):
        self.ka = [kd.StreamSide(s.lease.LeaseKeepAlive) for s in self.servers]
        self.open_watch()
        steps = {"grant": self.phase_grant, "revoke": self.phase_revoke, "ttl": self.phase_ttl,
                 "keepalive": self.phase_keepalive, "kv": self.phase_kv, "txn": self.phase_txn,
                 "random": self.phase_random, "expiry": self.phase_expiry,
                 "watch": self.phase_watch, "revoke-events": self.phase_revoke_events}
        rc = 0
        for i, name in enumerate(PHASES):
            if name == "expiry" and not self.args.expiry:
                continue
            self.cur, self.cur_fail, self.cur_shown, self.cur_ops = name, 0, 0, 0
            t = time.monotonic()
            try:
                steps[name]()
            except Exception as e:  # noqa: BLE001  (a driver bug counts as a harness failure)
                if not isinstance(e, (HarnessError, Abort)):
                    traceback.print_exc(file=sys.stdout)
                kind = "ABORTED" if isinstance(e, Abort) else "HARNESS FAILURE"
                print("seed %d %s: %s at op %d: %s" % (self.args.seed, name, kind, self.opidx, e))
                self.result(name, False, "%s: %s" % (kind.lower(), str(e)[:200]))
                for rest in PHASES[i + 1:]:
                    if rest != "expiry" or self.args.expiry:
                        self.result(rest, False, "not run")
                rc = 1 if isinstance(e, Abort) else 2
                break
            self.result(name, self.cur_fail == 0, "%d ops, %.1fs%s" % (
                self.cur_ops, time.monotonic() - t,
                "; %d mismatches" % self.cur_fail if self.cur_fail else ""))
        return rc

    def shutdown(self):
        for sts in (self.ka, self.watch):
            for st in sts or ():
                st.cancel()


def run_seed(args):
    servers = kd.open_servers(args, Server)
    if servers is None:
        print("FAIL lease/seed%d (setup)" % args.seed)
        print("COUNTS 0 1")
        return 2
    t = Tester(args, *servers)
    try:
        rc = t.run()
    except (HarnessError, Abort) as e:  # while opening the streams
        print("seed %d: %s: %s" % (args.seed, type(e).__name__, e))
        t.result("setup", False, str(e))
        rc = 2
    finally:
        t.shutdown()
    passed = sum(1 for _, ok, _ in t.results if ok)
    failed = len(t.results) - passed
    s = t.stats
    print("seed %d: %d ops in %.1fs; final revision %d; leases %d (server-picked ids: %d); "
          "watch events %d; revokes %d; remaining TTL off by one: %d; expiry batches "
          "in another order: %d of %d" % (
              args.seed, t.opidx, time.monotonic() - t.t0, t.rev[1], len(t.leases), t.ntok[1],
              s["watch events compared"], s["revokes checked"],
              s["remaining TTL off by one (tolerated)"],
              s["expiry batches revoked in another order (tolerated)"], s["expiry batches"]))
    print("  rpcs: " + ", ".join("%s=%d" % (k[4:], v) for k, v in sorted(s.items())
                                 if k.startswith("rpc:")))
    for k in sorted(s):
        if k.startswith("random ops: ") or k.startswith("expiry: "):
            print("  " + k)
    errs = sorted((k, v) for k, v in s.items() if k.startswith("errors "))
    print("  errors (reference side, identical unless reported): %d" % sum(v for _, v in errs))
    for k, v in errs:
        print("    %5d  %s" % (v, k[7:]))
    if failed and rc == 0:
        rc = 1
    if failed:
        print("  rerun: --seed %d --ops %d" % (args.seed, args.ops))
    print("COUNTS %d %d" % (passed, failed))
    return rc


def main():
    ap, rp = kd.make_parser(__doc__, 400)
    rp.add_argument("--no-expiry", dest="expiry", action="store_false",
                    help="leave out the expiry phase (its ~5 s wait)")
    rp.add_argument("--expiry-margin", type=float, default=1.5,
                    help="seconds to wait past the last expiry (default 1.5)")
    rp.add_argument("--max-reports", type=int, default=3,
                    help="mismatches printed in full per phase")
    args = ap.parse_args()

    def loaded():
        global pb, grpc, rpc_grpc
        pb, grpc, rpc_grpc = kd.pb, kd.grpc, kd.rpc_grpc
    return kd.dispatch(args, run_seed, loaded)


if __name__ == "__main__":
    sys.exit(main())
