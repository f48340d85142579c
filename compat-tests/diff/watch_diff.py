#!/usr/bin/env python3
"""Differential Watch test: one seeded sequence of writes and watch requests, two servers.

The same seeded sequence runs against a *subject* (Cairn) and a *reference* (etcd
3.5), both fresh and started with the same flags:

  * KV writes (puts, deletes, multi-key and nested txns, so that one revision
    often holds several events; physical compactions) on kv_diff.py's small key
    space with shared prefixes, applied to both stores in lockstep: every write's
    answer is compared as in kv_diff.py, and both stores must stay at the same
    revision (else the seed stops: "stores diverged");
  * Watch streams opened at many points, each with several watchers: single keys,
    prefixes, from-key ("\\0" range end), ranges, the empty key, empty ranges
    (range_end <= key); start_revision 0, past (history replay), exactly the
    compacted revision, below it (compacted), future; prev_kv; NOPUT/NODELETE
    (also duplicated, and an unknown filter value); fragment; client-chosen
    (including negative) and automatic watch ids, duplicate ids; cancel requests
    (known and unknown ids); progress requests; half-closed and client-cancelled
    streams;
  * fixed phases: compaction edge (replays that start exactly at the compacted
    revision), bulk (more than 1000 revisions of history, then full replays: etcd
    replays at most 1000 revisions per response; seeds = 1 mod 3 by default),
    fragment (responses over etcd's fragment limit, replayed and live),
    progress_notify (with the servers' --experimental-watch-progress-notify-interval,
    --progress-interval here; 0 leaves the phase out).

What is compared: for every stream, the whole sequence of WatchResponses the
subject sent against the reference's, message by message, every field (watch_id,
created, canceled, compact_revision, cancel_reason, fragment, events in order with
kv and prev_kv, header.revision; in headers only cluster_id, member_id and
raft_term are ignored) and the encodings (unknown fields).  Every stream is
compared to its end; a mismatch report shows the first differing response of each
stream, its neighbours and the requests sent on that stream.

Determinism.  etcd's watch output depends on timing in known ways; the driver
removes the timing instead of normalising the output:
  * a create, cancel or progress request on a stream is only sent once the stream
    has received everything the model predicts (etcd's sendLoop picks between
    control responses and queued events at random), and the answer is awaited
    before the next write;
  * a watcher that starts in the past is synced by etcd's 100 ms sync loop, which
    batches everything up to the current revision into one response: nothing is
    written until that replay arrived, or, when the replay is empty, until a
    barrier watcher created afterwards on a separate stream (compared too) got its
    own replay, which proves that a sync pass ran;
  * before a compaction every stream must have received everything (etcd reads
    prev_kv when it sends, at mod_revision - 1, which a compaction can remove);
    compactions are physical (etcd answers after the backend compaction);
  * progress requests are only sent at such quiet points; etcd answers one
    (watch_id -1, header = current revision) only when every watcher of the
    stream is synced, so never on a stream without watchers nor on one holding a
    watcher that got compact_revision and was not cancelled (etcd keeps it in
    the stream, unsynced); the model knows this.  DELIBERATE DIFFERENCE, never
    exercised here: a progress request while a watcher is still catching up is
    dropped by etcd but queued by Cairn until every watcher of the stream is
    synced (tests/watch.rs progress_request_reports_a_delivered_revision tests
    Cairn's side).  What both must guarantee is checked on every stream of both
    servers, independently of the comparison (progress_violations): a progress
    response at revision R (watch_id -1: every watcher of the stream; a
    watcher's id: progress_notify, that watcher) is followed by no event at or
    below R for a watcher that existed when it was sent;
  * progress_notify: the phase cancels each watcher right after its first
    notification (etcd ticks every interval + up to 10 % jitter; an event sent
    since the last tick elides the next notification), margins of ~1 interval.
The driver predicts, from etcd's semantics (v3.5.16 server/mvcc/watchable_store.go,
watcher_group.go, watcher.go, key_index.go, etcdserver/api/v3rpc/watch.go), how
many responses every stream gets, using the events the reference reports on a
recorder stream (a from-key watcher on "\\0" with prev_kv, opened first and
compared too).  The reference must match the prediction exactly (count, assigned
watch ids), otherwise the run is a harness failure (exit 2), not a mismatch.

Facts about etcd 3.5.16 the model encodes (each confirmed by etcd-vs-etcd runs):
  * a replay response holds at most 1000 distinct revisions (watchBatchMaxRevs,
    counted before filters); the rest follows in further responses, all with
    header.revision = the current revision;
  * a compaction at C keeps every event of revision C, tombstones included, so a
    replay from exactly C sends them; prev_kv of events at C is absent (read at
    C - 1, compacted);
  * the compact_revision response has header.revision 0;
  * fragments: sendFragments' limit is --max-request-bytes + 512 KiB (gRPC
    overhead) = 2 MiB by default, not 1.5 MiB;
  * automatic ids skip every id in the stream, compacted watchers included.

The one normalisation: when one write matches several watchers of one stream,
etcd queues their responses in Go map order (watchableStore.notify iterates a
map), so within a run of consecutive event responses with the same header
revision the order of *different* watchers is random (etcd-vs-etcd fails on it:
--strict-order shows it).  Such runs are compared after a stable sort by watch_id
(responses of one watcher keep their order).  Everything else is compared in
order.

--avoid compacted-watcher changes the sequence to keep clear of the one
known-different area (see --help); --repro NAME runs one minimal reproducer
instead of a seed (the REPROS table).

Usage (normally through ./watch-run):
  watch_diff.py [--proto-dir DIR] [--cache DIR] ports N
  watch_diff.py [--proto-dir DIR] [--cache DIR] stubs
  watch_diff.py [--proto-dir DIR] [--cache DIR] run --subject HOST:PORT --reference HOST:PORT
                --seed N [--ops N] [--subject-pid PID --reference-pid PID]
                [--bulk auto|on|off] [--no-fragment] [--progress-interval S]
                [--avoid LIST] [--strict-order] [--dump DIR] [--repro NAME]
"""

import collections
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ next to kv_diff.py in the work tree
import kv_diff as kd  # noqa: E402  (stubs, key space, message comparison)

pb = grpc = rpc_grpc = mvccpb = None

# etcd constants
WATCH_BATCH_MAX_REVS = 1000        # mvcc.watchBatchMaxRevs
# sendFragments' limit: --max-request-bytes (default 1.5 MiB) + grpcOverheadBytes (512 KiB)
FRAGMENT_LIMIT = 1572864 + 512 * 1024
INVALID_WATCH_ID = -1

# Keys for the main sequence (kv_diff's key space) and the extra phases.
KEYS = kd.KEYS
PROBES = kd.PROBES
FRAG_PREFIX = b"f/"
EDGE_PREFIX = b"e/"
PROGRESS_KEYS = (b"p/a", b"p/b")
# Client-chosen watch ids: small ones collide with automatic ids (0, 1, 2, ...).
CHOSEN_IDS = [1, 2, 3, 7, 100, 1 << 40, -7, -1]

PUT, DELETE = 0, 1


class HarnessError(Exception):
    """The reference did not do what the model predicts: a harness bug or a
    nondeterminism of etcd, never a subject mismatch."""


class Diverged(Exception):
    """The stores are no longer in lockstep; the seed cannot continue."""


# --------------------------------------------------------------------------
# servers and streams


class Server(kd.Server):
    def __init__(self, name, endpoint, pid):
        self.name, self.endpoint, self.pid = name, endpoint, pid
        self.channel = grpc.insecure_channel(endpoint, options=[
            ("grpc.max_receive_message_length", 256 << 20),
            ("grpc.max_send_message_length", 256 << 20),
        ])
        self.kv = rpc_grpc.KVStub(self.channel)
        self.watch = rpc_grpc.WatchStub(self.channel)


class Watcher:
    """etcd's view of one watcher of a stream (in the stream's map until cancelled)."""

    def __init__(self, wid, creq, key, end):
        self.id = wid
        self.key, self.end = key, end  # end: None single key, b"" from-key, else bound
        self.noput = pb.WatchCreateRequest.NOPUT in creq.filters
        self.nodelete = pb.WatchCreateRequest.NODELETE in creq.filters
        self.prev_kv = creq.prev_kv
        self.fragment = creq.fragment
        self.start = creq.start_revision
        self.state = "synced"     # or "compacted" (still in the stream's map)
        self.min_rev = 0

    def matches(self, key):
        if self.end is None:
            return key == self.key
        if self.end == b"":
            return key >= self.key
        return self.key <= key < self.end

    def passes(self, ev):
        return not (ev.type == PUT and self.noput or ev.type == DELETE and self.nodelete)


def normalise_range(key, range_end):
    """etcd's recvLoop + watchStream.Watch: (key, end, error)."""
    if key == b"":
        key = b"\x00"
    end = None if range_end == b"" else range_end
    if end == b"\x00":
        end = b""
    if end and key >= end:
        return key, end, "mvcc: watcher range is empty"
    return key, end, None


class Stream:
    """A logical stream: the same requests on the subject and the reference."""

    def __init__(self, idx, label, servers, opidx):
        self.idx, self.label = idx, label
        self.sides = [kd.StreamSide(s.watch.Watch) for s in servers]  # [subject, reference]
        self.watchers = collections.OrderedDict()
        self.next_auto = 0
        self.expected = 0
        self.sendable = True
        self.closed = False
        self.protected = False  # recorder / barrier: no random actions
        self.stalled = None     # first time the subject fell short of the prediction
        self.log = ["op %d: open stream" % opidx]

    def name(self):
        return "stream %d (%s)" % (self.idx, self.label)

    def send(self, req):
        for s in self.sides:
            s.send(req)

    def compacted_ids(self):
        return {i for i, w in self.watchers.items() if w.state == "compacted"}

    def alloc_auto(self):
        while self.next_auto in self.watchers:
            self.next_auto += 1
        wid = self.next_auto
        self.next_auto += 1
        return wid


def fmt_req(req):
    return kd.text_format.MessageToString(req, as_one_line=True)


def fmt_resp(r):
    s = kd.text_format.MessageToString(kd.blank_headers(r), as_one_line=True)
    if len(s) > 700:
        s = s[:700] + " ...(%d chars)" % len(s)
    return s


# --------------------------------------------------------------------------
# comparison


def is_event_resp(r):
    return (len(r.events) > 0 and not r.created and not r.canceled
            and r.compact_revision == 0)


def canonical(resps, stats=None):
    """Runs of event responses with one header revision, sorted by watch_id (stable)."""
    out, i, n = [], 0, len(resps)
    while i < n:
        r = resps[i]
        if not is_event_resp(r):
            out.append(r)
            i += 1
            continue
        j = i
        while j < n and is_event_resp(resps[j]) and resps[j].header.revision == r.header.revision:
            j += 1
        run = sorted(resps[i:j], key=lambda x: x.watch_id)
        if stats is not None and len({x.watch_id for x in run}) > 1:
            stats["runs with several watchers"] += 1
            if run != resps[i:j]:
                stats["runs etcd sent out of watch_id order"] += 1
        out.extend(run)
        i = j
    return out


def is_progress_resp(r):
    return (len(r.events) == 0 and not r.created and not r.canceled
            and r.compact_revision == 0 and r.header.revision > 0)


def progress_violations(resps):
    """etcd's guarantee for a progress response at revision R: every watcher it covers
    (watch_id -1, a requested progress: all watchers of the stream; a watcher's id: that
    watcher's progress_notify) has been sent all its events up to R, so no event at or
    below R arrives after it for such a watcher.  A watcher created after the progress
    response (its created response comes later) may replay older revisions: exempt.
    -> list of descriptions."""
    out = []
    guards = []  # [response index, R, covered watch_id or -1, exempt watch ids]
    for i, r in enumerate(resps):
        if r.created:
            for g in guards:
                g[3].add(r.watch_id)
            continue
        if is_progress_resp(r):
            guards.append([i, r.header.revision, r.watch_id, set()])
            continue
        for ev in r.events:
            for j, rev, wid, exempt in guards:
                if r.watch_id in exempt or (wid != -1 and wid != r.watch_id):
                    continue
                if ev.kv.mod_revision <= rev:
                    out.append("response %d (watch_id %d): event at revision %d after the "
                               "progress response %d at revision %d (watch_id %d)" % (
                                   i, r.watch_id, ev.kv.mod_revision, j, rev, wid))
                    break
    return out


def diff_streams(a, b, stats, strict=False):
    """-> (index, description, a', b') of the first difference, or None."""
    if strict:
        ca, cb = a, b
    else:
        ca, cb = canonical(a), canonical(b, stats)
    st = collections.Counter()
    for i, (x, y) in enumerate(zip(ca, cb)):
        d = kd.compare(None, x, y, st)
        if d:
            return i, d, ca, cb
    if len(ca) != len(cb):
        i = min(len(ca), len(cb))
        return i, "number of responses: %d != %d" % (len(ca), len(cb)), ca, cb
    if not strict and any(x.watch_id != y.watch_id for x, y in zip(a, b)):
        stats["streams in another order than the reference's (same revision, other watchers)"] += 1
    return None


# --------------------------------------------------------------------------
# the test


class Tester(kd.Draws):
    def __init__(self, args, subject, reference):
        self.args = args
        self.servers = [subject, reference]
        self.r = random.Random(args.seed)
        self.rev = 1
        self.compacted = 0
        self.events = {}        # revision -> [Event] as the reference's recorder saw them
        self.streams = []
        self.recorder = None
        self.rec_cursor = 0
        self.barrier_stream = None
        self.opidx = 0
        self.uniq = 0
        self.notes = []         # subject-side problems seen while running
        self.kv_mismatches = []
        self.stats = collections.Counter()
        self.t0 = time.monotonic()
        # seconds to spend waiting for a subject that fell short of the reference (which
        # has already delivered); once spent, such waits are cut to 0.3 s
        self.stall_budget = 5.0

    # ---- helpers
    def value(self):
        return self.value_or_unique(0.3)

    def note(self, msg):
        if len(self.notes) < 200:
            self.notes.append("op %d: %s" % (self.opidx, msg))

    def check_alive(self):
        for s in self.servers:
            if not s.alive():
                raise Diverged("%s (pid %d) died" % (s.name, s.pid))

    # ---- waiting
    def quiesce(self, st, ref_timeout=10.0, sub_timeout=1.5, capped=True):
        """Both sides of st have received what the model predicts.  capped: the
        subject's wait shrinks once the stall budget is spent (not for waits whose
        length is part of the test, as in the progress_notify phase)."""
        sub, ref = st.sides
        if not ref.wait_count(st.expected, ref_timeout):
            self.check_alive()
            raise HarnessError("%s: the reference sent %d responses, the model predicts %d "
                               "(waited %.0fs)%s" % (st.name(), ref.count(), st.expected,
                                                     ref_timeout, self.ref_err(ref)))
        if ref.count() > st.expected:
            raise HarnessError("%s: the reference sent %d responses, the model predicts %d; "
                               "last: %s" % (st.name(), ref.count(), st.expected,
                                             fmt_resp(ref.snapshot()[-1])))
        if capped and self.stall_budget <= 0:
            sub_timeout = min(sub_timeout, 0.3)
        t = time.monotonic()
        if st.stalled is None and not sub.wait_count(st.expected, sub_timeout):
            self.stall_budget -= time.monotonic() - t
            st.stalled = "op %d: subject had %d responses, reference %d (waited %.1fs)%s" % (
                self.opidx, sub.count(), st.expected, sub_timeout, self.ref_err(sub))
            self.note("%s: subject stalled: %s" % (st.name(), st.stalled))

    @staticmethod
    def ref_err(side):
        if side.err is not None and not side.cancelled:
            return "; stream ended: %s %s" % (kd.code_name(side.err), side.err.details())
        return ""

    def quiesce_all(self):
        for st in self.streams:
            if not st.closed:
                self.quiesce(st)

    # ---- streams
    def open_stream(self, label):
        st = Stream(len(self.streams), label, self.servers, self.opidx)
        self.streams.append(st)
        self.stats["streams"] += 1
        return st

    # ---- writes
    def write(self, kind, req):
        """Send one KV write to both servers; keep the model in step."""
        a, b = kd.call_both(self.servers, kind, req, self.args.rpc_timeout)
        self.stats["kv:" + kind] += 1
        d = None
        if a[0] and b[0]:
            d = kd.compare(req, a[1], b[1], collections.Counter())
        elif a[0] != b[0]:
            d = "one side failed, the other succeeded"
        elif (a[1].code(), a[1].details()) != (b[1].code(), b[1].details()):
            d = "errors differ"
        if d:
            self.kv_mismatches.append((self.opidx, kind, req, a, b, d))
        if not b[0]:
            if b[1].code() in kd.TRANSPORT_CODES:
                self.check_alive()
                raise HarnessError("reference: %s %s on %s" % (kd.code_name(b[1]), b[1].details(), kind))
            self.stats["kv errors (reference)"] += 1
            return b
        new = b[1].header.revision
        if not a[0] or a[1].header.revision != new:
            raise Diverged("op %d: %s: the stores are at different revisions now (%s vs %d)" % (
                self.opidx, kind, a[1].header.revision if a[0] else kd.fmt_answer(a), new))
        if new > self.rev:
            if new != self.rev + 1:
                raise HarnessError("revision jumped from %d to %d" % (self.rev, new))
            evs = self.recorded(new)
            self.events[new] = evs
            self.rev = new
            self.stats["revisions"] += 1
            self.stats["events"] += len(evs)
            if len(evs) > 1:
                self.stats["revisions with several events"] += 1
            self.notify(new, evs)
        if kind == "Compact":
            self.compacted = req.revision
        return b

    def recorded(self, rev):
        """The events of rev, from the reference's recorder stream."""
        side = self.recorder.sides[1]
        idx = self.rec_cursor
        if not side.wait_count(idx + 1, 10):
            self.check_alive()
            raise HarnessError("recorder: no response for revision %d" % rev)
        resp = side.snapshot()[idx]
        if resp.header.revision != rev or not resp.events or any(
                e.kv.mod_revision != rev for e in resp.events):
            raise HarnessError("recorder: expected the events of revision %d, got %s" % (
                rev, fmt_resp(resp)))
        self.rec_cursor += 1
        return list(resp.events)

    def notify(self, rev, evs):
        """watchableStore.notify: one response per synced watcher with events left."""
        for st in self.streams:
            if st.closed:
                continue
            for w in st.watchers.values():
                if w.state != "synced" or rev < w.min_rev:
                    continue
                sel = [e for e in evs if w.matches(e.kv.key) and w.passes(e)]
                if sel:
                    st.expected += self.fragments(w, sel, rev)
                    self.stats["expected event responses"] += 1

    def fragments(self, w, evs, rev):
        """How many responses etcd's sendFragments makes of these events."""
        if not w.fragment or len(evs) < 2:
            return 1
        # Sizes as etcd computes them; a 10-byte cluster_id/member_id stands in for the
        # reference's (the fragment phase keeps far away from the limit).
        hdr = pb.ResponseHeader(cluster_id=(1 << 64) - 1, member_id=(1 << 64) - 1,
                                revision=rev, raft_term=2)
        evs2 = []
        for e in evs:
            e2 = mvccpb.Event()
            e2.CopyFrom(e)
            create = e.type == PUT and e.kv.create_revision == e.kv.mod_revision
            if not w.prev_kv or create:
                e2.ClearField("prev_kv")
            evs2.append(e2)
        whole = pb.WatchResponse(header=hdr, watch_id=w.id, events=evs2)
        if whole.ByteSize() < FRAGMENT_LIMIT:
            return 1
        n, idx = 0, 0
        while True:
            cur = pb.WatchResponse(header=hdr, watch_id=w.id, fragment=True)
            for ev in evs2[idx:]:
                cur.events.append(ev)
                if len(cur.events) > 1 and cur.ByteSize() >= FRAGMENT_LIMIT:
                    del cur.events[-1]
                    break
                idx += 1
            n += 1
            if idx == len(evs2):
                return n

    def replay_count(self, w, start, cur, compacted):
        """syncWatchers for an unsynced watcher at start..cur: responses it makes."""
        revs = []
        for rev in range(start, cur + 1):
            # a compaction at C keeps every revision at C (puts and tombstones:
            # keyIndex.doCompact stops at a generation whose tombstone is >= C)
            evs = [e for e in self.events.get(rev, ()) if w.matches(e.kv.key)]
            if evs:
                revs.append(evs)
        n = 0
        for i in range(0, len(revs), WATCH_BATCH_MAX_REVS):
            sel = [e for evs in revs[i:i + WATCH_BATCH_MAX_REVS] for e in evs if w.passes(e)]
            if sel:
                n += self.fragments(w, sel, cur)
        if len(revs) > WATCH_BATCH_MAX_REVS:
            self.stats["replays over %d revisions" % WATCH_BATCH_MAX_REVS] += 1
        return n

    # ---- watch requests
    def create(self, st, creq):
        """-> the watch id etcd assigns (None for a rejected create)."""
        self.quiesce(st)
        cur, comp = self.rev, self.compacted
        key, end, err = normalise_range(creq.key, creq.range_end)
        before = st.expected
        wid, barrier, kind = None, False, None
        if err:
            kind = "empty-range"
            st.expected += 1
        elif creq.watch_id != 0 and creq.watch_id in st.watchers:
            kind = "duplicate-id"
            st.expected += 1
        else:
            wid = creq.watch_id if creq.watch_id != 0 else st.alloc_auto()
            w = Watcher(wid, creq, key, end)
            st.watchers[wid] = w
            st.expected += 1
            start = creq.start_revision
            # etcd's compactMainRev is -1 until the first compaction
            comp_main = comp if comp > 0 else -1
            if start == 0 or start > cur:
                kind = "now" if start in (0, cur + 1) else "future"
                w.min_rev = max(cur + 1, start)
            elif start < comp_main:
                kind = "compacted" if start > 0 else "negative-start"
                w.state = "compacted"
                st.expected += 1
            elif start < 0:
                # -1 before any compaction: etcd would replay from revision bytes
                # 0xff.. (nothing) -- and hide every other unsynced watcher's events
                raise HarnessError("start_revision %d with compactMainRev %d is not generated"
                                   % (start, comp_main))
            else:
                kind = "replay-at-compacted" if start == comp else "replay"
                n = self.replay_count(w, start, cur, comp)
                st.expected += n
                w.min_rev = cur + 1
                barrier = n == 0
                if n == 0:
                    self.stats["replays with nothing to send"] += 1
        self.stats["create:" + kind] += 1
        self.stats["watchers"] += wid is not None
        st.log.append("op %d: create (rev %d, compacted %d) -> %s %s: %s" % (
            self.opidx, cur, comp, kind, "" if wid is None else "id %d" % wid, fmt_req(creq)))
        st.send(pb.WatchRequest(create_request=creq))
        self.quiesce(st)
        got = st.sides[1].snapshot()[before]
        want = INVALID_WATCH_ID if wid is None else wid
        if not got.created or got.watch_id != want or got.canceled != (wid is None):
            raise HarnessError("%s: create %s: expected created watch_id %d, got %s" % (
                st.name(), fmt_req(creq), want, fmt_resp(got)))
        if barrier:
            self.barrier()
        return wid

    def barrier(self):
        """Create and cancel a replaying watcher on the barrier stream: its replay
        proves that etcd's sync loop has run a pass since the previous create."""
        if self.rev < 2 or not self.events.get(self.rev):
            raise HarnessError("barrier impossible at revision %d" % self.rev)
        if self.barrier_stream is None:
            self.barrier_stream = self.open_stream("barrier")
            self.barrier_stream.protected = True
        st = self.barrier_stream
        self.stats["barriers"] += 1
        wid = self.create(st, pb.WatchCreateRequest(key=b"\x00", range_end=b"\x00",
                                                    start_revision=self.rev))
        self.cancel(st, wid)

    def cancel(self, st, wid):
        self.quiesce(st)
        known = wid in st.watchers
        if known:
            del st.watchers[wid]
            st.expected += 1
        self.stats["cancel:" + ("known" if known else "unknown")] += 1
        st.log.append("op %d: cancel %d (%s)" % (self.opidx, wid, "known" if known else "unknown"))
        st.send(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=wid)))
        self.quiesce(st)

    def progress(self, st):
        self.quiesce(st)
        answered = bool(st.watchers) and all(w.state == "synced" for w in st.watchers.values())
        if answered:
            st.expected += 1
        self.stats["progress:" + ("answered" if answered else "not answered")] += 1
        st.log.append("op %d: progress request (rev %d; %s)" % (
            self.opidx, self.rev, "answered" if answered else
            "no watchers" if not st.watchers else "a compacted watcher: not answered"))
        st.send(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
        self.quiesce(st)

    def half_close(self, st):
        self.quiesce(st)
        st.log.append("op %d: half-close (client ends its sending side)" % self.opidx)
        for s in st.sides:
            s.half_close()
        st.sendable = False
        self.stats["half-closed streams"] += 1

    def close(self, st):
        self.quiesce(st)
        # give a wrong extra response a moment to show before the stream goes
        time.sleep(0.05)
        st.log.append("op %d: client cancels the stream" % self.opidx)
        for s in st.sides:
            s.cancel()
        st.closed = True
        st.sendable = False
        self.stats["client-cancelled streams"] += 1

    # ---- generators
    def key_range(self):
        r = self.r
        m = self.pick([(30, "single"), (5, "probe"), (24, "prefix"), (10, "fromkey"),
                       (5, "all"), (18, "range"), (3, "emptykey"), (5, "empty")])
        k = r.choice(KEYS)
        if m == "single":
            return m, k, b""
        if m == "probe":
            return m, r.choice(PROBES), b""
        if m == "prefix":
            k = r.choice([k, k[:1] or k, k[:2] or k])
            return m, k, kd.prefix_end(k)
        if m == "fromkey":
            return m, k, b"\x00"
        if m == "all":
            return m, r.choice([b"", b"\x00"]), b"\x00"
        if m == "range":
            a, b = sorted(r.sample(KEYS + PROBES, 2))
            return m, a, b
        if m == "emptykey":
            return m, b"", r.choice([b"", b"", b"b"])
        # empty range: range_end < key or == key
        a, b = sorted(r.sample(KEYS, 2))
        return m, b, r.choice([a, b])

    def start_rev(self):
        r = self.r
        cur, comp = self.rev, self.compacted
        choices = [(30, "zero"), (4, "next"), (10, "future")]
        if "negative-start" not in self.args.avoid:
            choices.append((2, "negative"))
        if cur >= 2:
            choices += [(30, "past"), (4, "current"), (4, "one")]
            if comp > 0:
                choices.append((9, "compacted"))
            if comp > 1:
                choices.append((7, "below"))
        m = self.pick(choices)
        if m == "zero":
            return 0
        if m == "next":
            return cur + 1
        if m == "future":
            return cur + r.randint(1, 15)
        if m == "past":
            lo = max(comp, 1)
            # mostly recent history, sometimes far back
            if self.chance(0.6):
                lo = max(lo, cur - 40)
            return r.randint(lo, cur)
        if m == "current":
            return cur
        if m == "one":
            return 1
        if m == "compacted":
            return comp
        if m == "negative":
            # < -1 always lies below etcd's compactMainRev (-1 before any compaction)
            return r.choice([-2, -7, -1000] + ([-1] if comp > 0 else []))
        return r.randint(1, comp - 1)

    def gen_create(self, st):
        r = self.r
        q = pb.WatchCreateRequest()
        _, q.key, q.range_end = self.key_range()
        q.start_revision = self.start_rev()
        q.prev_kv = self.chance(0.45)
        q.filters.extend(self.pick([(60, []), (14, [pb.WatchCreateRequest.NOPUT]),
                                    (14, [pb.WatchCreateRequest.NODELETE]),
                                    (4, [pb.WatchCreateRequest.NOPUT, pb.WatchCreateRequest.NODELETE]),
                                    (4, [pb.WatchCreateRequest.NOPUT, pb.WatchCreateRequest.NOPUT]),
                                    (4, [pb.WatchCreateRequest.NODELETE, 7])]))
        q.fragment = self.chance(0.15)
        m = self.pick([(60, "auto"), (30, "chosen"), (10, "dup")])
        if m == "chosen":
            q.watch_id = r.choice(CHOSEN_IDS)
        elif m == "dup" and st.watchers:
            q.watch_id = r.choice(list(st.watchers))
            if q.watch_id == 0:
                q.watch_id = r.choice(CHOSEN_IDS)  # 0 means "assign one"
        if "compacted-watcher" in self.args.avoid:
            # neither reuse the id of a compacted watcher nor give one a chosen id
            # (a later automatic id could run into it)
            if q.watch_id in st.compacted_ids() or 0 < q.start_revision < self.compacted:
                q.watch_id = 0
        return q

    def gen_put(self, ctx=None):
        q = pb.PutRequest()
        if ctx is not None:
            cands = [k for k in KEYS if ctx.put_ok(k)]
            if not cands:
                return None
            q.key = self.r.choice(cands)
            ctx.puts.add(q.key)
        else:
            q.key = self.r.choice(KEYS)
        q.value = self.value()
        q.prev_kv = self.chance(0.3)
        return q

    def del_range(self):
        r = self.r
        m = self.pick([(45, "single"), (25, "prefix"), (22, "range"), (8, "fromkey")])
        k = r.choice(KEYS)
        if m == "single":
            return k, b""
        if m == "prefix":
            k = r.choice([k, k[:1] or k])
            return k, kd.prefix_end(k)
        if m == "fromkey":
            return r.choice(KEYS + [b"z"] * 3), b"\x00"
        a, b = sorted(r.sample(KEYS + PROBES, 2))
        return a, b

    def gen_delete(self, ctx=None):
        q = pb.DeleteRangeRequest()
        for _ in range(10):
            k, e = self.del_range()
            if ctx is None or ctx.del_ok(k, e):
                break
        else:
            return None
        if ctx is not None:
            ctx.dels.append((k, e))
        q.key, q.range_end = k, e
        q.prev_kv = self.chance(0.3)
        return q

    def gen_branch(self, ctx, n, depth):
        ops = []
        for _ in range(n):
            m = self.pick([(60, "put"), (25, "delete"), (8, "range"),
                           (7 if depth == 0 else 0, "txn")])
            op = pb.RequestOp()
            if m == "put":
                p = self.gen_put(ctx)
                if p is not None:
                    op.request_put.CopyFrom(p)
            elif m == "delete":
                d = self.gen_delete(ctx)
                if d is not None:
                    op.request_delete_range.CopyFrom(d)
            elif m == "txn":
                op.request_txn.CopyFrom(self.gen_txn(ctx, depth + 1))
            if op.WhichOneof("request") is None:
                op.request_range.CopyFrom(pb.RangeRequest(key=self.r.choice(KEYS)))
            ops.append(op)
        return ops

    def gen_txn(self, ctx=None, depth=0):
        r = self.r
        ctx = ctx or kd.TxnCtx()
        t = pb.TxnRequest()
        for _ in range(self.pick([(30, 0), (50, 1), (20, 2)])):
            c = pb.Compare(key=r.choice(KEYS))
            m = self.pick([(40, "version"), (30, "value"), (30, "mod")])
            if m == "version":
                c.target, c.result, c.version = pb.Compare.VERSION, r.choice(
                    [pb.Compare.GREATER, pb.Compare.EQUAL]), r.choice([0, 0, 1, 2])
            elif m == "value":
                c.target, c.result, c.value = pb.Compare.VALUE, r.choice(
                    [pb.Compare.EQUAL, pb.Compare.NOT_EQUAL]), self.value()
            else:
                c.target, c.result = pb.Compare.MOD, r.choice([pb.Compare.LESS, pb.Compare.GREATER])
                c.mod_revision = r.randint(1, self.rev + 1)
            t.compare.append(c)
        big = depth == 0
        t.success.extend(self.gen_branch(ctx, r.randint(1, 5 if big else 3), depth))
        t.failure.extend(self.gen_branch(ctx, r.randint(0, 4 if big else 2), depth))
        return t

    def gen_compact(self):
        """A physical compaction above the current one, up to the current revision."""
        lo, hi = self.compacted + 1, self.rev
        if lo > hi:
            return None
        if self.chance(0.7):
            lo = max(lo, hi - 30)  # keep some history; sometimes compact far
        return pb.CompactionRequest(revision=self.r.randint(lo, hi), physical=True)

    # ---- the sequence
    def live_streams(self):
        return [s for s in self.streams if s.sendable and not s.protected]

    def step(self):
        r = self.r
        m = self.pick([(25, "put"), (8, "delete"), (22, "txn"), (3, "compact"),
                       (21, "create"), (7, "cancel"), (5, "progress"), (1, "half-close"),
                       (1, "close"), (0.5, "empty-request")])
        live = self.live_streams()
        if m in ("cancel", "progress", "half-close", "close", "empty-request") and not live:
            m = "create"
        if m in ("half-close", "close") and len(live) < 4:
            m = "progress"
        if m == "put":
            self.write("Put", self.gen_put())
        elif m == "delete":
            self.write("DeleteRange", self.gen_delete())
        elif m == "txn":
            self.write("Txn", self.gen_txn())
        elif m == "compact":
            q = self.gen_compact()
            if q is None:
                self.write("Put", self.gen_put())
            else:
                self.quiesce_all()
                self.write("Compact", q)
        elif m == "create":
            if not live or (len(live) < self.args.max_streams and self.chance(0.25)):
                st = self.open_stream("random")
                if self.chance(0.05):
                    self.progress(st)  # no watchers yet: etcd answers nothing
                live = [st]
            st = r.choice(live)
            self.create(st, self.gen_create(st))
        elif m == "cancel":
            st = r.choice(live)
            x = self.pick([(75, "known"), (15, "unknown"), (10, "chosen")])
            avoid = st.compacted_ids() if "compacted-watcher" in self.args.avoid else set()
            known = [i for i in st.watchers if i not in avoid]
            if x == "known" and known:
                wid = r.choice(known)
            elif x == "chosen":
                wid = r.choice(CHOSEN_IDS)
            else:
                wid = r.choice([999, 12345, -5, 0])
            if wid in avoid:
                wid = 999
            self.cancel(st, wid)
        elif m == "progress":
            if "compacted-watcher" in self.args.avoid:
                live = [s for s in live if not s.compacted_ids()]
            if live:
                self.progress(r.choice(live))
        elif m == "half-close":
            self.half_close(r.choice(live))
        elif m == "empty-request":
            st = r.choice(live)
            self.quiesce(st)
            st.log.append("op %d: a WatchRequest with no request in it" % self.opidx)
            self.stats["empty requests"] += 1
            st.send(pb.WatchRequest())
        else:
            self.close(r.choice(live))

    def bulk_phase(self, n):
        """n revisions quickly (txns of 1-3 puts), then watchers replaying all of it."""
        r = self.r
        for _ in range(n):
            self.opidx += 1
            t = pb.TxnRequest()
            for k in r.sample(KEYS, r.randint(1, 3)):
                t.success.append(pb.RequestOp(request_put=pb.PutRequest(key=k, value=self.value())))
            self.write("Txn", t)
        st = self.open_stream("bulk-replay")
        self.opidx += 1
        self.create(st, pb.WatchCreateRequest(key=b"\x00", range_end=b"\x00", start_revision=1,
                                              prev_kv=True))
        self.create(st, pb.WatchCreateRequest(key=b"a", range_end=kd.prefix_end(b"a"),
                                              start_revision=2, watch_id=50))
        self.create(st, pb.WatchCreateRequest(key=b"c", range_end=b"\x00", start_revision=3,
                                              filters=[pb.WatchCreateRequest.NOPUT]))

    def compaction_edge_phase(self):
        """Replays that start exactly at the compacted revision C, whose revision holds a
        put over an existing key and a delete: etcd keeps both at C, and reads prev_kv at
        C - 1, which is compacted (so prev_kv is absent there, present above C)."""
        self.quiesce_all()
        self.opidx += 1
        k1, k2 = EDGE_PREFIX + b"1", EDGE_PREFIX + b"2"
        for k, v in ((k1, b"v1"), (k2, b"v1"), (k1, b"v2")):
            self.write("Put", pb.PutRequest(key=k, value=v))
        t = pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=k1, value=b"v3")),
                                   pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=k2))])
        self.write("Txn", t)
        comp = self.rev
        self.quiesce_all()
        self.write("Compact", pb.CompactionRequest(revision=comp, physical=True))
        st = self.open_stream("compaction-edge")
        pe = kd.prefix_end(EDGE_PREFIX)
        self.create(st, pb.WatchCreateRequest(key=EDGE_PREFIX, range_end=pe, start_revision=comp,
                                              prev_kv=True))
        self.create(st, pb.WatchCreateRequest(key=EDGE_PREFIX, range_end=pe, start_revision=comp))
        self.create(st, pb.WatchCreateRequest(key=k2, start_revision=comp, prev_kv=True,
                                              filters=[pb.WatchCreateRequest.NOPUT]))
        self.create(st, pb.WatchCreateRequest(key=EDGE_PREFIX, range_end=pe,
                                              start_revision=comp - 1, prev_kv=True))
        self.write("Put", pb.PutRequest(key=k2, value=b"v2"))
        self.write("DeleteRange", pb.DeleteRangeRequest(key=k1))
        self.quiesce(st)
        self.stats["compaction-edge phase"] += 1

    def fragment_phase(self):
        """Responses over etcd's fragment limit (--max-request-bytes + 512 KiB = 2 MiB):
        replays of six and of five 400 kB puts (2.4 MB: two fragments; 2.0 MB: between
        1.5 MiB and 2 MiB, not fragmented) and a live txn overwriting three of them
        with prev_kv (2.55 MB in one revision).  Sizes stay >= 90 kB away from both
        1.5 MiB and 2 MiB."""
        self.quiesce_all()
        self.opidx += 1
        big = lambda n, c: (c * n)[:n]  # noqa: E731
        keys = [FRAG_PREFIX + b"%d" % i for i in range(1, 7)]
        first = self.rev + 1
        for i, k in enumerate(keys):
            self.write("Put", pb.PutRequest(key=k, value=big(400000, b"%d" % i)))
        st = self.open_stream("fragment")
        pe = kd.prefix_end(FRAG_PREFIX)
        self.create(st, pb.WatchCreateRequest(key=FRAG_PREFIX, range_end=pe, start_revision=first,
                                              fragment=True))
        self.create(st, pb.WatchCreateRequest(key=FRAG_PREFIX, range_end=pe,
                                              start_revision=first + 1, fragment=True))
        self.create(st, pb.WatchCreateRequest(key=FRAG_PREFIX, range_end=pe, start_revision=first,
                                              fragment=False))
        self.create(st, pb.WatchCreateRequest(key=FRAG_PREFIX, range_end=pe, prev_kv=True,
                                              fragment=True))
        self.create(st, pb.WatchCreateRequest(key=FRAG_PREFIX, range_end=pe, prev_kv=True))
        t = pb.TxnRequest()
        for i, k in enumerate(keys[:3]):
            t.success.append(pb.RequestOp(request_put=pb.PutRequest(key=k, value=big(450000, b"x%d" % i))))
        self.write("Txn", t)
        self.quiesce(st)
        self.stats["fragment phase"] += 1

    def progress_notify_phase(self):
        """progress_notify with --experimental-watch-progress-notify-interval=1s.
        Stream A: an event right after create elides the first tick, the second tick
        sends a progress notification.  Stream B: no events, the first tick notifies.
        Each watcher is cancelled as soon as its notification arrived (the next tick is
        a whole interval away).  etcd's ticker: interval + up to 10% jitter, from the
        stream's start."""
        self.quiesce_all()
        self.opidx += 1
        a = self.open_stream("progress-notify A")
        b = self.open_stream("progress-notify B")
        for st in (a, b):
            st.protected = True
        wa = self.create(a, pb.WatchCreateRequest(key=PROGRESS_KEYS[0], progress_notify=True))
        wb = self.create(b, pb.WatchCreateRequest(key=PROGRESS_KEYS[1], progress_notify=True))
        self.write("Put", pb.PutRequest(key=PROGRESS_KEYS[0], value=b"tick"))
        a.expected += 1
        b.expected += 1
        a.log.append("op %d: expect a progress notification at the second tick" % self.opidx)
        b.log.append("op %d: expect a progress notification at the first tick" % self.opidx)
        limit = 3 * self.args.progress_interval + 1
        for st, wid in ((b, wb), (a, wa)):
            self.quiesce(st, ref_timeout=limit, sub_timeout=limit, capped=False)
            self.cancel(st, wid)
        self.stats["progress_notify phase"] += 1

    # ---- minimal reproducers (--repro NAME): a few requests each, same model checks
    def _compacted_watcher(self, wid=0):
        """Revisions 2-3 on key r, compaction at 3, then a stream with a watcher from
        revision 1: created, then compact_revision 3 + canceled."""
        for v in (b"1", b"2"):
            self.write("Put", pb.PutRequest(key=b"r", value=v))
        self.quiesce_all()
        self.write("Compact", pb.CompactionRequest(revision=self.rev, physical=True))
        st = self.open_stream("repro")
        got = self.create(st, pb.WatchCreateRequest(key=b"r", start_revision=1, watch_id=wid))
        return st, got

    def repro_compacted_progress(self):
        """A progress request on a stream with a synced watcher and a watcher that got
        compact_revision (not cancelled by the client): etcd keeps the compacted watcher
        in the stream, never synced, so it answers no progress request on that stream."""
        st, _ = self._compacted_watcher()
        self.create(st, pb.WatchCreateRequest(key=b"other"))
        self.progress(st)
        self.write("Put", pb.PutRequest(key=b"r", value=b"3"))

    def repro_compacted_cancel(self):
        """Cancelling a watcher that got compact_revision: etcd still has it and answers
        canceled (header = current revision)."""
        st, wid = self._compacted_watcher()
        self.cancel(st, wid)

    def repro_compacted_reuse_id(self):
        """Creating a watcher with the id of a compacted (not cancelled) watcher: etcd
        answers created+canceled, watch_id -1, "duplicate watch ID"."""
        st, wid = self._compacted_watcher(wid=5)
        self.create(st, pb.WatchCreateRequest(key=b"r", watch_id=5))

    def repro_replay_batch(self):
        """600 revisions of two events each (1200 events), then a watcher replaying
        all of them: etcd sends at most 1000 *revisions* per replay response, so one
        response with 1200 events."""
        for i in range(600):
            self.opidx += 1
            self.write("Txn", pb.TxnRequest(success=[
                pb.RequestOp(request_put=pb.PutRequest(key=b"r1", value=b"%d" % i)),
                pb.RequestOp(request_put=pb.PutRequest(key=b"r2", value=b"%d" % i))]))
        st = self.open_stream("repro")
        self.create(st, pb.WatchCreateRequest(key=b"r", range_end=b"s", start_revision=2))

    def repro_fragment_limit(self):
        """Five 400 kB puts (a 2.0 MB replay), watched with fragment=true: etcd's
        sendFragments limit is --max-request-bytes + 512 KiB (grpcOverheadBytes) =
        2 MiB, so etcd sends one unfragmented response."""
        first = self.rev + 1
        for i in range(5):
            self.write("Put", pb.PutRequest(key=b"r%d" % i, value=b"%d" % i * 400000))
        st = self.open_stream("repro")
        self.create(st, pb.WatchCreateRequest(key=b"r", range_end=b"s", start_revision=first,
                                              fragment=True))

    def repro_negative_start(self):
        """start_revision -5, before and after a compaction: etcd takes it as a
        revision below compactMainRev (-1 until the first compaction), so it answers
        created, then compact_revision -1 (then 2) + canceled."""
        for v in (b"1", b"2"):
            self.write("Put", pb.PutRequest(key=b"r", value=v))
        st = self.open_stream("repro")
        self.create(st, pb.WatchCreateRequest(key=b"r", start_revision=-5))
        self.quiesce_all()
        self.write("Compact", pb.CompactionRequest(revision=2, physical=True))
        self.create(st, pb.WatchCreateRequest(key=b"r", start_revision=-5))

    REPROS = {
        "negative-start": repro_negative_start,
        "compacted-progress": repro_compacted_progress,
        "compacted-cancel": repro_compacted_cancel,
        "compacted-reuse-id": repro_compacted_reuse_id,
        "replay-batch": repro_replay_batch,
        "fragment-limit": repro_fragment_limit,
    }

    def run(self):
        if self.args.repro:
            self.recorder = self.open_stream("recorder")
            self.recorder.protected = True
            self.create(self.recorder, pb.WatchCreateRequest(key=b"\x00", range_end=b"\x00"))
            self.rec_cursor = self.recorder.expected
            self.REPROS[self.args.repro](self)
            self.drain()
            return
        # the recorder: every event, in revision order, with prev_kv
        self.recorder = self.open_stream("recorder")
        self.recorder.protected = True
        self.create(self.recorder, pb.WatchCreateRequest(key=b"\x00", range_end=b"\x00",
                                                         prev_kv=True))
        self.rec_cursor = self.recorder.expected
        bulk = {"on": True, "off": False}.get(self.args.bulk, self.args.seed % 3 == 1)
        if bulk:
            self.bulk_phase(WATCH_BATCH_MAX_REVS + 20 + self.r.randint(0, 30))
        self.compaction_edge_phase()
        for i in range(self.args.ops):
            self.opidx += 1
            self.step()
        if self.args.fragment:
            self.fragment_phase()
        if self.args.progress_interval > 0:
            self.progress_notify_phase()
        self.drain()

    def drain(self):
        """Everything the model predicts, then a moment for anything extra."""
        deadline = time.monotonic() + self.args.drain_timeout
        for st in self.streams:
            if st.closed:
                continue
            left = max(0.5, deadline - time.monotonic())
            self.quiesce(st, ref_timeout=left, sub_timeout=2.0)
        time.sleep(0.3)
        for st in self.streams:
            if not st.closed and st.sides[1].count() != st.expected:
                raise HarnessError("%s: the reference sent %d responses at the end, the model "
                                   "predicts %d" % (st.name(), st.sides[1].count(), st.expected))
        self.check_alive()

    def shutdown(self):
        for st in self.streams:
            for s in st.sides:
                if not s.cancelled:
                    s.cancel()

    # ---- report
    def dump(self, d):
        """Every stream's requests and both sides' responses, as text, into directory d."""
        os.makedirs(d, exist_ok=True)
        for st in self.streams:
            with open(os.path.join(d, "stream%02d.txt" % st.idx), "w") as f:
                f.write("%s\n" % st.name())
                for line in st.log:
                    f.write("  %s\n" % line)
                for side, name in zip(st.sides, ("subject", "reference")):
                    f.write("--- %s\n" % name)
                    for i, r in enumerate(side.snapshot()):
                        f.write("[%d] %s\n" % (i, kd.text_format.MessageToString(
                            kd.blank_headers(r), as_one_line=True)))

    def report(self):
        failed = 0
        stats = collections.Counter()
        shown = 0
        for st in self.streams:
            a, b = st.sides[0].snapshot(), st.sides[1].snapshot()
            # the progress guarantee, on each server's own stream (see the docstring)
            for side, resps in (("subject", a), ("reference", b)):
                v = progress_violations(resps)
                stats["progress responses checked"] += sum(1 for r in resps if is_progress_resp(r))
                if v:
                    failed += 1
                    print("seed %d: PROGRESS GUARANTEE broken by the %s in %s: %s%s" % (
                        self.args.seed, side, st.name(), "; ".join(v[:3]),
                        " (%d more)" % (len(v) - 3) if len(v) > 3 else ""))
                    if side == "reference":
                        print("  (the reference is etcd: a harness assumption is wrong)")
            d = diff_streams(a, b, stats, self.args.strict_order)
            stats["responses compared"] += len(b)
            stats["events compared"] += sum(len(x.events) for x in b)
            if d is None:
                continue
            failed += 1
            if shown >= self.args.max_reports:
                continue
            shown += 1
            i, desc, ca, cb = d
            print("seed %d: MISMATCH in %s at response %d: %s" % (self.args.seed, st.name(), i, desc))
            if st.stalled:
                print("  note: the subject fell short at %s" % st.stalled)
            for j in range(max(0, i - 3), min(max(len(ca), len(cb)), i + 3)):
                mark = ">>" if j == i else "  "
                print("  %s [%d] %-9s %s" % (mark, j, "subject", fmt_resp(ca[j]) if j < len(ca) else "-"))
                print("  %s [%d] %-9s %s" % (mark, j, "reference", fmt_resp(cb[j]) if j < len(cb) else "-"))
            print("  requests on this stream:")
            lines = st.log
            if len(lines) > 40:
                lines = lines[:5] + ["... (%d more)" % (len(lines) - 35)] + lines[-30:]
            for line in lines:
                print("    " + line)
        for (i, kind, req, a, b, d) in self.kv_mismatches[:5]:
            print("seed %d: KV MISMATCH at op %d (%s): %s" % (self.args.seed, i, kind, d))
            print("  request: " + fmt_req(req))
            print("  subject:   " + kd.fmt_answer(a).replace("\n", " "))
            print("  reference: " + kd.fmt_answer(b).replace("\n", " "))
        if failed:
            print("seed %d: %d of %d streams differ%s" % (
                self.args.seed, failed, len(self.streams),
                " (first %d shown)" % shown if failed > shown else ""))
        failed += len(self.kv_mismatches)
        for n in self.notes[:10]:
            print("  note: " + n)
        return failed, stats

    def summary(self, stats):
        s = self.stats
        print("seed %d: %d ops in %.1fs; final revision %d, compacted at %d" % (
            self.args.seed, self.opidx, time.monotonic() - self.t0, self.rev, self.compacted))
        print("  streams=%d watchers=%d revisions=%d (with several events: %d) events=%d" % (
            s["streams"], s["watchers"], s["revisions"], s["revisions with several events"],
            s["events"]))
        print("  progress responses checked for the progress guarantee: %d (both sides)" % (
            stats["progress responses checked"]))
        print("  compared: %d responses, %d events (reference side); runs with several "
              "watchers: %d (reference out of watch_id order: %d; streams whose order differs "
              "only there: %d)" % (
                  stats["responses compared"], stats["events compared"],
                  stats["runs with several watchers"], stats["runs etcd sent out of watch_id order"],
                  stats["streams in another order than the reference's (same revision, other watchers)"]))
        keys = sorted(k for k in s if ":" in k or k.startswith(("barriers", "replays", "half",
                                                                 "empty requests",
                                                                 "client", "fragment",
                                                                 "compaction-edge",
                                                                 "progress_notify", "kv errors")))
        print("  " + ", ".join("%s=%d" % (k, s[k]) for k in keys))


def run_seed(args):
    servers = kd.open_servers(args, Server)
    if servers is None:
        return 2
    t = Tester(args, *servers)
    rc = 0
    try:
        t.run()
    except HarnessError as e:
        print("seed %d: HARNESS FAILURE at op %d: %s" % (args.seed, t.opidx, e))
        rc = 2
    except Diverged as e:
        print("seed %d: MISMATCH (stores diverged) at op %d: %s" % (args.seed, t.opidx, e))
        rc = 1
    finally:
        t.shutdown()
    if args.dump:
        t.dump(args.dump)
    if args.repro:
        print("repro %s: %s" % (args.repro, " ".join(
            Tester.REPROS[args.repro].__doc__.split())))
        for st in t.streams:
            if st.label != "repro":
                continue
            for line in st.log:
                print("  request  " + line)
            for side, name in zip(st.sides, ("subject", "reference")):
                for i, r in enumerate(side.snapshot()):
                    print("  %-9s [%d] %s" % (name, i, fmt_resp(r)))
    failed, stats = t.report()
    t.summary(stats)
    if rc == 0 and failed:
        rc = 1
    if rc == 1 and not args.repro:
        print("  rerun: --seed %d --ops %d" % (args.seed, args.ops))
    return rc


def main():
    ap, rp = kd.make_parser(__doc__, 800)
    rp.add_argument("--bulk", choices=["auto", "on", "off"], default="auto",
                    help="more than 1000 revisions first (auto: seeds = 1 mod 3)")
    rp.add_argument("--no-fragment", dest="fragment", action="store_false")
    rp.add_argument("--avoid", default="",
                    help="comma-separated: compacted-watcher (no progress request on a "
                         "stream holding a compacted watcher, no cancel or reuse of its id), "
                         "negative-start (no negative start_revision)")
    rp.add_argument("--progress-interval", type=float, default=0,
                    help="the servers' --experimental-watch-progress-notify-interval in "
                         "seconds; 0: no progress_notify phase")
    rp.add_argument("--max-streams", type=int, default=8)
    rp.add_argument("--strict-order", action="store_true",
                    help="compare without sorting same-revision runs by watch_id (shows "
                         "that etcd itself is not deterministic there)")
    rp.add_argument("--dump", default="", help="write every stream's responses into this directory")
    rp.add_argument("--repro", default="", choices=[""] + sorted(Tester.REPROS),
                    help="run one minimal reproducer instead of the seeded sequence")
    rp.add_argument("--max-reports", type=int, default=6)
    rp.add_argument("--drain-timeout", type=float, default=10.0)
    args = ap.parse_args()
    if args.cmd == "run":
        args.avoid = set(a for a in args.avoid.split(",") if a)
        unknown = args.avoid - {"compacted-watcher", "negative-start"}
        if unknown:
            ap.error("--avoid: unknown: %s" % ", ".join(sorted(unknown)))

    def loaded():
        global pb, grpc, rpc_grpc, mvccpb
        pb, grpc, rpc_grpc = kd.pb, kd.grpc, kd.rpc_grpc
        from etcd.api.mvccpb import kv_pb2
        mvccpb = kv_pb2
    return kd.dispatch(args, run_seed, loaded)


if __name__ == "__main__":
    sys.exit(main())
