// Command watch checks the Watch API of an etcd v3 server through the official
// Go client (go.etcd.io/etcd/clientv3, v3.4 as packaged by Debian).
//
//	watch --endpoints 127.0.0.1:2379 [--run REGEXP] [--list]
//
// The server must run with --experimental-watch-progress-notify-interval=200ms
// (the progress-notify check waits for periodic notifications). Every check
// writes under its own key prefix and uses its own client; checks run one after
// the other and assume nobody else writes to the server meanwhile (revisions
// are compared exactly). Output: `ok watch/<check>` or `FAIL watch/<check>: ...`
// per check; exit 1 if any failed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"cairncompat/check"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/etcdserver/api/v3rpc/rpctypes"
	pb "go.etcd.io/etcd/etcdserver/etcdserverpb"
	"go.etcd.io/etcd/mvcc/mvccpb"
)

var (
	slowEvents  = flag.Int("slow-events", 20000, "events written while the slow-reader check's watcher does not read")
	slowWriters = flag.Int("slow-writers", 16, "concurrent writers in the slow-reader check")
)

func main() {
	check.Main("watch", []check.Check{
		{Name: "prefix", Timeout: 10 * time.Second, Run: checkPrefix},
		{Name: "rev-replay", Timeout: 10 * time.Second, Run: checkRevReplay},
		{Name: "prevkv", Timeout: 10 * time.Second, Run: checkPrevKV},
		{Name: "filter", Timeout: 10 * time.Second, Run: checkFilter},
		{Name: "txn-one-response", Timeout: 10 * time.Second, Run: checkTxn},
		{Name: "progress-notify", Timeout: 15 * time.Second, Run: checkProgressNotify},
		{Name: "request-progress", Timeout: 10 * time.Second, Run: checkRequestProgress},
		{Name: "compacted", Timeout: 10 * time.Second, Run: checkCompacted},
		{Name: "slow-reader", Timeout: 60 * time.Second, Run: checkSlowReader},
		{Name: "resume", Timeout: 15 * time.Second, Run: checkResume},
	})
}

// ---------------------------------------------------------------------------
// helpers

// fmtEv renders an event compactly, keys relative to the check's prefix:
//
//	PUT k=v@12            (mod revision 12)
//	PUT k=v@12 c=10 v=2   (full: create revision, version)
//	DELETE k@13
//	... prev=v@12 / prev=<none>   (withPrev)
func fmtEv(p string, e *clientv3.Event, full, withPrev bool) string {
	key := strings.TrimPrefix(string(e.Kv.Key), p)
	var s string
	switch e.Type {
	case mvccpb.PUT:
		s = fmt.Sprintf("PUT %s=%s@%d", key, e.Kv.Value, e.Kv.ModRevision)
		if full {
			s += fmt.Sprintf(" c=%d v=%d", e.Kv.CreateRevision, e.Kv.Version)
		}
	case mvccpb.DELETE:
		s = fmt.Sprintf("DELETE %s@%d", key, e.Kv.ModRevision)
	default:
		s = fmt.Sprintf("TYPE%d %s@%d", e.Type, key, e.Kv.ModRevision)
	}
	if withPrev {
		if e.PrevKv == nil {
			s += " prev=<none>"
		} else {
			pk := strings.TrimPrefix(string(e.PrevKv.Key), p)
			if pk != key {
				s += fmt.Sprintf(" prev[key=%s]", pk)
			}
			s += fmt.Sprintf(" prev=%s@%d", e.PrevKv.Value, e.PrevKv.ModRevision)
		}
	}
	return s
}

func fmtEvs(p string, evs []*clientv3.Event, full, withPrev bool) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = fmtEv(p, e, full, withPrev)
	}
	return out
}

func descResp(p string, r clientv3.WatchResponse) string {
	var flags []string
	if r.Created {
		flags = append(flags, "created")
	}
	if r.Canceled {
		flags = append(flags, "canceled")
	}
	if r.CompactRevision != 0 {
		flags = append(flags, fmt.Sprintf("compact_revision=%d", r.CompactRevision))
	}
	if r.IsProgressNotify() {
		flags = append(flags, "progress_notify")
	}
	evs := fmtEvs(p, r.Events, false, false)
	if len(evs) > 6 {
		evs = append(evs[:6], fmt.Sprintf("... (%d events)", len(r.Events)))
	}
	return fmt.Sprintf("{header_rev=%d %s events=%v err=%v}", r.Header.Revision, strings.Join(flags, ","), evs, r.Err())
}

func eqList(want, got []string) error {
	if len(want) == len(got) {
		same := true
		for i := range want {
			if want[i] != got[i] {
				same = false
				break
			}
		}
		if same {
			return nil
		}
	}
	return fmt.Errorf("want events [%s], got [%s]", strings.Join(want, "; "), strings.Join(got, "; "))
}

var errClosed = errors.New("watch channel closed")

// next returns the next response from wch (progress notifies included).
func next(ctx context.Context, wch clientv3.WatchChan) (clientv3.WatchResponse, error) {
	select {
	case r, ok := <-wch:
		if !ok {
			return r, errClosed
		}
		return r, nil
	case <-ctx.Done():
		return clientv3.WatchResponse{}, ctx.Err()
	}
}

// within returns a child context of ctx that ends after d.
func within(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d)
}

// open starts a watch and waits (at most 5 s) for its created response
// (WithCreatedNotify), so that writes issued afterwards are seen by it.
// The returned cancel function cancels the watch.
func open(e *check.Env, key string, opts ...clientv3.OpOption) (clientv3.WatchChan, context.CancelFunc, error) {
	wch, cancel, _, err := openC(e, key, opts...)
	return wch, cancel, err
}

// openC is open that also returns the created response.
func openC(e *check.Env, key string, opts ...clientv3.OpOption) (clientv3.WatchChan, context.CancelFunc, clientv3.WatchResponse, error) {
	ctx, cancel := context.WithCancel(e.Ctx)
	wch := e.Cli.Watch(ctx, key, append(opts, clientv3.WithCreatedNotify())...)
	wctx, wcancel := within(e.Ctx, 5*time.Second)
	defer wcancel()
	r, err := next(wctx, wch)
	if err != nil {
		cancel()
		return nil, nil, r, fmt.Errorf("watch %q: no created response: %v", key, err)
	}
	if !r.Created || r.Err() != nil || len(r.Events) > 0 {
		cancel()
		return nil, nil, r, fmt.Errorf("watch %q: first response is not a plain created response: %s", key, descResp(e.Prefix, r))
	}
	return wch, cancel, r, nil
}

// refHeader returns the header of a plain Get (cluster id, member id, raft
// term and current revision, to compare watch response headers with).
func refHeader(e *check.Env) (*pb.ResponseHeader, error) {
	r, err := e.Cli.Get(e.Ctx, e.Prefix+"\x00no-such-key")
	if err != nil {
		return nil, fmt.Errorf("get (reference header): %v", err)
	}
	return r.Header, nil
}

// sameMember checks that a watch response header names the same cluster,
// member and raft term as ref.
func sameMember(what string, ref *pb.ResponseHeader, r clientv3.WatchResponse) error {
	h := r.Header
	if h.ClusterId != ref.ClusterId || h.MemberId != ref.MemberId || h.RaftTerm != ref.RaftTerm {
		return fmt.Errorf("%s: watch response header cluster_id=%x member_id=%x raft_term=%d, KV responses say cluster_id=%x member_id=%x raft_term=%d",
			what, h.ClusterId, h.MemberId, h.RaftTerm, ref.ClusterId, ref.MemberId, ref.RaftTerm)
	}
	return nil
}

// collect reads responses until n events arrived (progress notifies are
// skipped); it fails on an error response, a closed channel or a timeout.
func collect(ctx context.Context, p string, wch clientv3.WatchChan, n int, d time.Duration) ([]*clientv3.Event, []clientv3.WatchResponse, error) {
	cctx, cancel := within(ctx, d)
	defer cancel()
	var evs []*clientv3.Event
	var resps []clientv3.WatchResponse
	for len(evs) < n {
		r, err := next(cctx, wch)
		if err != nil {
			return evs, resps, fmt.Errorf("after %d of %d expected events (%v): %v; got so far [%s]", len(evs), n, d, err, strings.Join(tail(fmtEvs(p, evs, false, false), 8), "; "))
		}
		if r.Err() != nil || r.Canceled || r.CompactRevision != 0 {
			return evs, resps, fmt.Errorf("after %d of %d expected events: unexpected response %s", len(evs), n, descResp(p, r))
		}
		if r.IsProgressNotify() {
			continue
		}
		resps = append(resps, r)
		evs = append(evs, r.Events...)
	}
	return evs, resps, nil
}

func tail(s []string, n int) []string {
	if len(s) <= n {
		return s
	}
	return append([]string{fmt.Sprintf("...%d earlier", len(s)-n)}, s[len(s)-n:]...)
}

func put(e *check.Env, key, val string) (int64, error) {
	r, err := e.Cli.Put(e.Ctx, e.Prefix+key, val)
	if err != nil {
		return 0, fmt.Errorf("put %s: %v", key, err)
	}
	return r.Header.Revision, nil
}

func del(e *check.Env, key string) (int64, error) {
	r, err := e.Cli.Delete(e.Ctx, e.Prefix+key)
	if err != nil {
		return 0, fmt.Errorf("delete %s: %v", key, err)
	}
	if r.Deleted != 1 {
		return 0, fmt.Errorf("delete %s: deleted=%d, want 1", key, r.Deleted)
	}
	return r.Header.Revision, nil
}

// op is one write of a scripted sequence: val == nil means delete.
type op struct {
	key string
	val *string
}

func P(k, v string) op { return op{k, &v} }
func D(k string) op    { return op{key: k} }

// apply runs the ops in order and returns the revision of each.
func apply(e *check.Env, ops ...op) ([]int64, error) {
	revs := make([]int64, len(ops))
	for i, o := range ops {
		var err error
		if o.val != nil {
			revs[i], err = put(e, o.key, *o.val)
		} else {
			revs[i], err = del(e, o.key)
		}
		if err != nil {
			return nil, err
		}
	}
	return revs, nil
}

func currentRev(e *check.Env) (int64, error) {
	r, err := e.Cli.Get(e.Ctx, e.Prefix+"\x00no-such-key")
	if err != nil {
		return 0, fmt.Errorf("get (current revision): %v", err)
	}
	return r.Header.Revision, nil
}

// ---------------------------------------------------------------------------
// checks

// prefix: WithPrefix delivers exactly the keys under the prefix (not a sibling
// with the prefix minus its slash, not "a0"), deletes included; a plain key
// watch sees only that key (not keys it is a prefix of); WithRange [a/, a/2)
// and WithFromKey a/2 see exactly their keys. The created response's header
// revision is the current revision; every header names the same cluster,
// member and raft term as KV responses do.
func checkPrefix(e *check.Env) error {
	p := e.Prefix
	ref, err := refHeader(e)
	if err != nil {
		return err
	}
	wp, _, created, err := openC(e, p+"a/", clientv3.WithPrefix())
	if err != nil {
		return err
	}
	if created.Header.Revision != ref.Revision {
		return fmt.Errorf("created response header revision %d, want the current revision %d", created.Header.Revision, ref.Revision)
	}
	if err := sameMember("created response", ref, created); err != nil {
		return err
	}
	wk, _, err := open(e, p+"a")
	if err != nil {
		return err
	}
	wr, _, err := open(e, p+"a/", clientv3.WithRange(p+"a/2"))
	if err != nil {
		return err
	}
	wf, _, err := open(e, p+"a/2", clientv3.WithFromKey())
	if err != nil {
		return err
	}
	revs, err := apply(e,
		P("a", "k0"), P("a/1", "x1"), P("b/1", "y1"), P("a/2", "x2"), P("a0", "z"),
		P("a/1/deep", "x3"), D("a/1"), P("a", "k1"), P("a/zz", "end"), P("a/1z", "end-range"))
	if err != nil {
		return err
	}
	for _, c := range []struct {
		what string
		w    clientv3.WatchChan
		want []string
	}{
		{"prefix watch a/", wp, []string{
			fmt.Sprintf("PUT a/1=x1@%d", revs[1]),
			fmt.Sprintf("PUT a/2=x2@%d", revs[3]),
			fmt.Sprintf("PUT a/1/deep=x3@%d", revs[5]),
			fmt.Sprintf("DELETE a/1@%d", revs[6]),
			fmt.Sprintf("PUT a/zz=end@%d", revs[8]),
			fmt.Sprintf("PUT a/1z=end-range@%d", revs[9]),
		}},
		{"key watch a", wk, []string{fmt.Sprintf("PUT a=k0@%d", revs[0]), fmt.Sprintf("PUT a=k1@%d", revs[7])}},
		{"range watch [a/, a/2)", wr, []string{
			fmt.Sprintf("PUT a/1=x1@%d", revs[1]),
			fmt.Sprintf("PUT a/1/deep=x3@%d", revs[5]),
			fmt.Sprintf("DELETE a/1@%d", revs[6]),
			fmt.Sprintf("PUT a/1z=end-range@%d", revs[9]),
		}},
		{"from-key watch a/2", wf, []string{
			fmt.Sprintf("PUT b/1=y1@%d", revs[2]),
			fmt.Sprintf("PUT a/2=x2@%d", revs[3]),
			fmt.Sprintf("PUT a0=z@%d", revs[4]),
			fmt.Sprintf("PUT a/zz=end@%d", revs[8]),
		}},
	} {
		evs, resps, err := collect(e.Ctx, p, c.w, len(c.want), 5*time.Second)
		if err != nil {
			return fmt.Errorf("%s: %v", c.what, err)
		}
		if err := eqList(c.want, fmtEvs(p, evs, false, false)); err != nil {
			return fmt.Errorf("%s: %v", c.what, err)
		}
		for _, r := range resps {
			if err := sameMember(c.what, ref, r); err != nil {
				return err
			}
		}
	}
	return nil
}

// rev-replay: WithRev(past) replays the history from that revision in order
// with exact mod/create revisions and versions, then continues live; a key
// watch from the past sees that key's history only; WithRev(future) skips
// the revisions before it.
func checkRevReplay(e *check.Env) error {
	p := e.Prefix
	revs, err := apply(e, P("k1", "v1"), P("k2", "v2"), P("k3", "v3"), D("k1"), P("k2", "v2b"))
	if err != nil {
		return err
	}
	w, _, err := open(e, p, clientv3.WithPrefix(), clientv3.WithRev(revs[1]))
	if err != nil {
		return err
	}
	want := []string{
		fmt.Sprintf("PUT k2=v2@%d c=%d v=1", revs[1], revs[1]),
		fmt.Sprintf("PUT k3=v3@%d c=%d v=1", revs[2], revs[2]),
		fmt.Sprintf("DELETE k1@%d", revs[3]),
		fmt.Sprintf("PUT k2=v2b@%d c=%d v=2", revs[4], revs[1]),
	}
	evs, resps, err := collect(e.Ctx, p, w, len(want), 5*time.Second)
	if err != nil {
		return fmt.Errorf("replay from %d: %v", revs[1], err)
	}
	if err := eqList(want, fmtEvs(p, evs, true, false)); err != nil {
		return fmt.Errorf("replay from %d: %v", revs[1], err)
	}
	for _, r := range resps {
		if last := r.Events[len(r.Events)-1].Kv.ModRevision; r.Header.Revision < last {
			return fmt.Errorf("replay from %d: response header revision %d < its last event revision %d", revs[1], r.Header.Revision, last)
		}
	}
	r6, err := put(e, "k4", "v4")
	if err != nil {
		return err
	}
	evs, _, err = collect(e.Ctx, p, w, 1, 5*time.Second)
	if err != nil {
		return fmt.Errorf("live event after replay: %v", err)
	}
	if err := eqList([]string{fmt.Sprintf("PUT k4=v4@%d c=%d v=1", r6, r6)}, fmtEvs(p, evs, true, false)); err != nil {
		return fmt.Errorf("live event after replay: %v", err)
	}

	// a key watch from the first revision: k1's history only
	wk, _, err := open(e, p+"k1", clientv3.WithRev(revs[0]))
	if err != nil {
		return err
	}
	want = []string{fmt.Sprintf("PUT k1=v1@%d", revs[0]), fmt.Sprintf("DELETE k1@%d", revs[3])}
	evs, _, err = collect(e.Ctx, p, wk, len(want), 5*time.Second)
	if err != nil {
		return fmt.Errorf("key replay from %d: %v", revs[0], err)
	}
	if err := eqList(want, fmtEvs(p, evs, false, false)); err != nil {
		return fmt.Errorf("key replay from %d: %v", revs[0], err)
	}

	// WithRev in the future: the revision just before it is not delivered
	cur, err := currentRev(e)
	if err != nil {
		return err
	}
	wf, _, err := open(e, p+"f/", clientv3.WithPrefix(), clientv3.WithRev(cur+2))
	if err != nil {
		return err
	}
	frevs, err := apply(e, P("f/1", "early"), P("f/2", "due"), P("f/3", "late"))
	if err != nil {
		return err
	}
	if frevs[0] != cur+1 {
		return fmt.Errorf("future watch: someone else wrote meanwhile (first put at %d, want %d)", frevs[0], cur+1)
	}
	want = []string{fmt.Sprintf("PUT f/2=due@%d", frevs[1]), fmt.Sprintf("PUT f/3=late@%d", frevs[2])}
	evs, _, err = collect(e.Ctx, p, wf, len(want), 5*time.Second)
	if err != nil {
		return fmt.Errorf("watch from future revision %d: %v", cur+2, err)
	}
	if err := eqList(want, fmtEvs(p, evs, false, false)); err != nil {
		return fmt.Errorf("watch from future revision %d: %v", cur+2, err)
	}
	return nil
}

// prevkv: WithPrevKV gives the previous value of an update and of a delete,
// none for a create (also a re-create after a delete); live and on replay.
func checkPrevKV(e *check.Env) error {
	p := e.Prefix
	w, _, err := open(e, p, clientv3.WithPrefix(), clientv3.WithPrevKV())
	if err != nil {
		return err
	}
	revs, err := apply(e, P("k", "v1"), P("k", "v2"), D("k"), P("k", "v3"))
	if err != nil {
		return err
	}
	want := []string{
		fmt.Sprintf("PUT k=v1@%d prev=<none>", revs[0]),
		fmt.Sprintf("PUT k=v2@%d prev=v1@%d", revs[1], revs[0]),
		fmt.Sprintf("DELETE k@%d prev=v2@%d", revs[2], revs[1]),
		fmt.Sprintf("PUT k=v3@%d prev=<none>", revs[3]),
	}
	evs, _, err := collect(e.Ctx, p, w, len(want), 5*time.Second)
	if err != nil {
		return fmt.Errorf("live: %v", err)
	}
	if err := eqList(want, fmtEvs(p, evs, false, true)); err != nil {
		return fmt.Errorf("live: %v", err)
	}
	wr, _, err := open(e, p, clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithRev(revs[0]))
	if err != nil {
		return err
	}
	evs, _, err = collect(e.Ctx, p, wr, len(want), 5*time.Second)
	if err != nil {
		return fmt.Errorf("replay from %d: %v", revs[0], err)
	}
	if err := eqList(want, fmtEvs(p, evs, false, true)); err != nil {
		return fmt.Errorf("replay from %d: %v", revs[0], err)
	}
	// without WithPrevKV there is no prev_kv
	wn, _, err := open(e, p, clientv3.WithPrefix(), clientv3.WithRev(revs[1]))
	if err != nil {
		return err
	}
	evs, _, err = collect(e.Ctx, p, wn, 1, 5*time.Second)
	if err != nil {
		return fmt.Errorf("without WithPrevKV: %v", err)
	}
	if evs[0].PrevKv != nil {
		return fmt.Errorf("without WithPrevKV: event %s carries a prev_kv", fmtEv(p, evs[0], false, true))
	}
	return nil
}

// filter: WithFilterPut drops puts (only deletes arrive), WithFilterDelete
// drops deletes (only puts arrive).
func checkFilter(e *check.Env) error {
	p := e.Prefix
	wNoPut, _, err := open(e, p, clientv3.WithPrefix(), clientv3.WithFilterPut())
	if err != nil {
		return err
	}
	wNoDel, _, err := open(e, p, clientv3.WithPrefix(), clientv3.WithFilterDelete())
	if err != nil {
		return err
	}
	revs, err := apply(e, P("a", "1"), P("b", "1"), D("a"), P("a", "2"), D("b"), P("z", "end"), D("z"), P("y", "end2"))
	if err != nil {
		return err
	}
	want := []string{
		fmt.Sprintf("DELETE a@%d", revs[2]), fmt.Sprintf("DELETE b@%d", revs[4]), fmt.Sprintf("DELETE z@%d", revs[6]),
	}
	evs, _, err := collect(e.Ctx, p, wNoPut, len(want), 5*time.Second)
	if err != nil {
		return fmt.Errorf("WithFilterPut: %v", err)
	}
	if err := eqList(want, fmtEvs(p, evs, false, false)); err != nil {
		return fmt.Errorf("WithFilterPut: %v", err)
	}
	want = []string{
		fmt.Sprintf("PUT a=1@%d", revs[0]), fmt.Sprintf("PUT b=1@%d", revs[1]), fmt.Sprintf("PUT a=2@%d", revs[3]),
		fmt.Sprintf("PUT z=end@%d", revs[5]), fmt.Sprintf("PUT y=end2@%d", revs[7]),
	}
	evs, _, err = collect(e.Ctx, p, wNoDel, len(want), 5*time.Second)
	if err != nil {
		return fmt.Errorf("WithFilterDelete: %v", err)
	}
	if err := eqList(want, fmtEvs(p, evs, false, false)); err != nil {
		return fmt.Errorf("WithFilterDelete: %v", err)
	}
	return nil
}

// txn-one-response: a txn writing several keys (3 puts + 1 delete) reaches a
// watcher as ONE response holding all its events at the txn's revision, in
// the txn's op order; same when replayed with WithRev. A DeleteRange of 3
// keys arrives as one response of 3 DELETEs in key order.
func checkTxn(e *check.Env) error {
	p := e.Prefix
	if _, err := put(e, "d", "0"); err != nil {
		return err
	}
	w, _, err := open(e, p, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	tr, err := e.Cli.Txn(e.Ctx).
		If(clientv3.Compare(clientv3.Version(p+"d"), ">", 0)).
		Then(clientv3.OpPut(p+"a", "1"), clientv3.OpPut(p+"b", "2"), clientv3.OpPut(p+"c", "3"), clientv3.OpDelete(p+"d")).
		Commit()
	if err != nil {
		return fmt.Errorf("txn: %v", err)
	}
	if !tr.Succeeded {
		return fmt.Errorf("txn: compare failed unexpectedly")
	}
	R := tr.Header.Revision
	end, err := put(e, "z", "end")
	if err != nil {
		return err
	}
	want := []string{
		fmt.Sprintf("PUT a=1@%d", R), fmt.Sprintf("PUT b=2@%d", R), fmt.Sprintf("PUT c=3@%d", R), fmt.Sprintf("DELETE d@%d", R),
	}
	verify := func(what string, w clientv3.WatchChan) error {
		evs, resps, err := collect(e.Ctx, p, w, len(want)+1, 5*time.Second)
		if err != nil {
			return fmt.Errorf("%s: %v", what, err)
		}
		all := fmtEvs(p, evs, false, false)
		if err := eqList(append(append([]string{}, want...), fmt.Sprintf("PUT z=end@%d", end)), all); err != nil {
			return fmt.Errorf("%s: %v", what, err)
		}
		var txnEvs []string
		for _, ev := range resps[0].Events {
			if ev.Kv.ModRevision == R {
				txnEvs = append(txnEvs, fmtEv(p, ev, false, false))
			}
		}
		if len(txnEvs) != len(want) {
			var shape []string
			for _, r := range resps {
				shape = append(shape, fmt.Sprintf("%d", len(r.Events)))
			}
			return fmt.Errorf("%s: the txn's %d events at revision %d are split over responses (events per response: %s; first response: %s)",
				what, len(want), R, strings.Join(shape, ","), descResp(p, resps[0]))
		}
		if resps[0].Header.Revision < R {
			return fmt.Errorf("%s: response header revision %d < txn revision %d", what, resps[0].Header.Revision, R)
		}
		return nil
	}
	if err := verify("live", w); err != nil {
		return err
	}
	wr, _, err := open(e, p, clientv3.WithPrefix(), clientv3.WithRev(R))
	if err != nil {
		return err
	}
	if err := verify(fmt.Sprintf("replay from %d", R), wr); err != nil {
		return err
	}
	// a DeleteRange removing 3 keys: one response, 3 DELETEs in key order
	dr, err := e.Cli.Delete(e.Ctx, p+"a", clientv3.WithRange(p+"d"))
	if err != nil {
		return fmt.Errorf("delete range [a, d): %v", err)
	}
	if dr.Deleted != 3 {
		return fmt.Errorf("delete range [a, d): deleted=%d, want 3", dr.Deleted)
	}
	R2 := dr.Header.Revision
	r, err := next(e.Ctx, w)
	if err != nil {
		return fmt.Errorf("delete range: %v", err)
	}
	want = []string{fmt.Sprintf("DELETE a@%d", R2), fmt.Sprintf("DELETE b@%d", R2), fmt.Sprintf("DELETE c@%d", R2)}
	if err := eqList(want, fmtEvs(p, r.Events, false, false)); err != nil {
		return fmt.Errorf("delete range [a, d) at %d, first response after it: %v", R2, err)
	}
	return nil
}

// progress-notify: an idle WithProgressNotify watcher receives periodic
// progress notifications (server interval 200ms) whose header revision is the
// current store revision, also after writes elsewhere move it; a watcher
// without the option on the same stream gets none.
func checkProgressNotify(e *check.Env) error {
	p := e.Prefix
	if _, err := put(e, "other", "x"); err != nil {
		return err
	}
	w, _, err := open(e, p+"w/", clientv3.WithPrefix(), clientv3.WithProgressNotify())
	if err != nil {
		return err
	}
	plain, _, err := open(e, p+"w/", clientv3.WithPrefix())
	if err != nil {
		return err
	}
	ref, err := refHeader(e)
	if err != nil {
		return err
	}
	cur := ref.Revision
	// waitNotify waits for progress notifies until one has revision want;
	// every one seen must have a revision in allowed.
	waitNotify := func(stage string, want int64, allowed map[int64]bool, n int, d time.Duration) error {
		ctx, cancel := within(e.Ctx, d)
		defer cancel()
		got := 0
		var seen []int64
		for got < n {
			r, err := next(ctx, w)
			if err != nil {
				return fmt.Errorf("%s: got %d of %d progress notifies with revision %d within %v (revisions seen: %v): %v", stage, got, n, want, d, seen, err)
			}
			if !r.IsProgressNotify() {
				return fmt.Errorf("%s: expected only progress notifies, got %s", stage, descResp(p, r))
			}
			seen = append(seen, r.Header.Revision)
			if err := sameMember(stage+": progress notify", ref, r); err != nil {
				return err
			}
			if !allowed[r.Header.Revision] {
				return fmt.Errorf("%s: progress notify with header revision %d, want %d (current store revision; revisions seen: %v)", stage, r.Header.Revision, want, seen)
			}
			if r.Header.Revision == want {
				got++
			}
		}
		return nil
	}
	t0 := time.Now()
	if err := waitNotify("idle", cur, map[int64]bool{cur: true}, 3, 3*time.Second); err != nil {
		return err
	}
	idle := time.Since(t0)
	cur2, err := put(e, "other", "y")
	if err != nil {
		return err
	}
	if err := waitNotify("after a write outside the watched prefix", cur2, map[int64]bool{cur: true, cur2: true}, 1, 2*time.Second); err != nil {
		return err
	}
	cur3, err := put(e, "w/k", "z")
	if err != nil {
		return err
	}
	// the event, then notifies at the new revision
	ctx, cancel := within(e.Ctx, 3*time.Second)
	defer cancel()
	sawEvent := false
	for {
		r, err := next(ctx, w)
		if err != nil {
			return fmt.Errorf("after a write inside the watched prefix (rev %d): event seen=%v: %v", cur3, sawEvent, err)
		}
		if !sawEvent {
			if r.IsProgressNotify() && (r.Header.Revision == cur2 || r.Header.Revision == cur) {
				continue // sent before the write
			}
			if len(r.Events) != 1 || fmtEv(p, r.Events[0], false, false) != fmt.Sprintf("PUT w/k=z@%d", cur3) {
				return fmt.Errorf("after a write inside the watched prefix: want the event PUT w/k=z@%d, got %s", cur3, descResp(p, r))
			}
			sawEvent = true
			continue
		}
		if !r.IsProgressNotify() || r.Header.Revision != cur3 {
			return fmt.Errorf("after the event at %d: want a progress notify with header revision %d, got %s", cur3, cur3, descResp(p, r))
		}
		break
	}
	// the watcher without WithProgressNotify saw the event and nothing else
	r, err := next(ctx, plain)
	if err != nil {
		return fmt.Errorf("watcher without WithProgressNotify: %v", err)
	}
	if len(r.Events) != 1 || r.Events[0].Kv.ModRevision != cur3 {
		return fmt.Errorf("watcher without WithProgressNotify (open %v, idle phase took %v): first response should be the event at %d, got %s",
			time.Since(t0).Round(time.Millisecond), idle.Round(time.Millisecond), cur3, descResp(p, r))
	}
	select {
	case r := <-plain:
		return fmt.Errorf("watcher without WithProgressNotify: unexpected extra response %s", descResp(p, r))
	default:
	}
	return nil
}

// request-progress: RequestProgress on the watch stream yields a progress
// notify whose header revision is >= the last event received and equal to
// the current store revision at a quiet point; it reaches every watcher of
// the stream; it moves on with writes the watcher does not see; and it is
// answered (once caught up) when a watcher from an old revision over an
// empty range was just added to the stream.
func checkRequestProgress(e *check.Env) error {
	p := e.Prefix
	w, _, err := open(e, p+"w/", clientv3.WithPrefix())
	if err != nil {
		return err
	}
	revs, err := apply(e, P("w/1", "a"), P("w/2", "b"), P("w/3", "c"))
	if err != nil {
		return err
	}
	evs, _, err := collect(e.Ctx, p, w, 3, 5*time.Second)
	if err != nil {
		return err
	}
	last := evs[len(evs)-1].Kv.ModRevision
	if last != revs[2] {
		return fmt.Errorf("last event revision %d, want %d", last, revs[2])
	}
	ref, err := refHeader(e) // quiet point: nothing is written until the next put
	if err != nil {
		return err
	}
	expectProgress := func(stage string, wch clientv3.WatchChan, want int64) error {
		ctx, cancel := within(e.Ctx, 3*time.Second)
		defer cancel()
		r, err := next(ctx, wch)
		if err != nil {
			return fmt.Errorf("%s: no progress notify within 3s after RequestProgress: %v", stage, err)
		}
		if !r.IsProgressNotify() {
			return fmt.Errorf("%s: want a progress notify, got %s", stage, descResp(p, r))
		}
		if r.Header.Revision < last {
			return fmt.Errorf("%s: progress notify header revision %d < last event revision %d", stage, r.Header.Revision, last)
		}
		if r.Header.Revision != want {
			return fmt.Errorf("%s: progress notify header revision %d, want %d (current store revision)", stage, r.Header.Revision, want)
		}
		return sameMember(stage+": progress notify", ref, r)
	}
	cur := ref.Revision
	if err := e.Cli.RequestProgress(e.Ctx); err != nil {
		return fmt.Errorf("RequestProgress: %v", err)
	}
	if err := expectProgress("after the events", w, cur); err != nil {
		return err
	}
	// a write the watcher does not see, a second watcher on the same stream
	cur2, err := put(e, "other", "x")
	if err != nil {
		return err
	}
	w2, _, err := open(e, p+"w2/", clientv3.WithPrefix())
	if err != nil {
		return err
	}
	if err := e.Cli.RequestProgress(e.Ctx); err != nil {
		return fmt.Errorf("RequestProgress: %v", err)
	}
	if err := expectProgress("after a write outside the prefix, first watcher", w, cur2); err != nil {
		return err
	}
	if err := expectProgress("after a write outside the prefix, second watcher of the stream", w2, cur2); err != nil {
		return err
	}
	// a new watcher from an old revision over a range with no event at all
	// (it starts unsynced and catches up without delivering anything): once
	// it has caught up, a progress request is answered at the current
	// revision, to every watcher of the stream. RequestProgress is repeated
	// every 150ms until the new watcher gets its notify (within 3s): etcd
	// 3.5.16 never answers a request made while such a watcher is still
	// unsynced (cf. etcd-io/etcd#17507), later ones are answered.
	w3, _, err := open(e, p+"empty/", clientv3.WithPrefix(), clientv3.WithRev(revs[0]))
	if err != nil {
		return err
	}
	stage := fmt.Sprintf("with a new watcher from old revision %d over an empty range", revs[0])
	deadline := time.Now().Add(3 * time.Second)
	requests := 0
	for got := false; !got; {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no progress notify on it within 3s (%d RequestProgress calls)", stage, requests)
		}
		if err := e.Cli.RequestProgress(e.Ctx); err != nil {
			return fmt.Errorf("RequestProgress: %v", err)
		}
		requests++
		ctx, cancel := within(e.Ctx, 150*time.Millisecond)
		r, err := next(ctx, w3)
		cancel()
		switch {
		case err == context.DeadlineExceeded && e.Ctx.Err() == nil:
			continue
		case err != nil:
			return fmt.Errorf("%s: %v", stage, err)
		case !r.IsProgressNotify() || r.Header.Revision != cur2:
			return fmt.Errorf("%s: want a progress notify at revision %d, got %s", stage, cur2, descResp(p, r))
		}
		if err := sameMember(stage, ref, r); err != nil {
			return err
		}
		got = true
	}
	for i, wch := range []clientv3.WatchChan{w, w2} {
		if err := expectProgress(fmt.Sprintf("%s, older watcher %d of 2", stage, i+1), wch, cur2); err != nil {
			return err
		}
	}
	e.Notef("%d RequestProgress call(s) until the new watcher got a notify", requests)
	return nil
}

// compacted: after Compact(r3), a watch WithRev(r2) gets a response with
// CompactRevision == r3, Err() == rpctypes.ErrCompacted, then its channel
// closes; a watch WithRev(r3) (the compaction revision itself) replays fine.
func checkCompacted(e *check.Env) error {
	p := e.Prefix
	revs, err := apply(e, P("k", "v1"), P("k", "v2"), P("k", "v3"), P("k", "v4"), P("k", "v5"))
	if err != nil {
		return err
	}
	if _, err := e.Cli.Compact(e.Ctx, revs[2]); err != nil {
		return fmt.Errorf("compact %d: %v", revs[2], err)
	}
	ctx, cancel := context.WithCancel(e.Ctx)
	defer cancel()
	wch := e.Cli.Watch(ctx, p+"k", clientv3.WithRev(revs[1]))
	rctx, rcancel := within(e.Ctx, 5*time.Second)
	defer rcancel()
	r, err := next(rctx, wch)
	if err != nil {
		return fmt.Errorf("watch from %d (compacted at %d): no response: %v", revs[1], revs[2], err)
	}
	if r.CompactRevision != revs[2] {
		return fmt.Errorf("watch from %d (compacted at %d): want compact_revision=%d, got %s", revs[1], revs[2], revs[2], descResp(p, r))
	}
	if r.Err() != rpctypes.ErrCompacted {
		return fmt.Errorf("watch from %d: Err() = %v, want %v", revs[1], r.Err(), rpctypes.ErrCompacted)
	}
	if len(r.Events) != 0 {
		return fmt.Errorf("watch from %d: compacted response carries events: %s", revs[1], descResp(p, r))
	}
	if !r.Canceled {
		return fmt.Errorf("watch from %d: compacted response not marked canceled: %s", revs[1], descResp(p, r))
	}
	r, err = next(rctx, wch)
	if err != errClosed {
		if err == nil {
			return fmt.Errorf("watch from %d: channel not closed after the compacted response, got %s", revs[1], descResp(p, r))
		}
		return fmt.Errorf("watch from %d: channel not closed after the compacted response: %v", revs[1], err)
	}
	w, _, err := open(e, p+"k", clientv3.WithRev(revs[2]))
	if err != nil {
		return fmt.Errorf("watch from the compaction revision: %v", err)
	}
	want := []string{fmt.Sprintf("PUT k=v3@%d", revs[2]), fmt.Sprintf("PUT k=v4@%d", revs[3]), fmt.Sprintf("PUT k=v5@%d", revs[4])}
	evs, _, err := collect(e.Ctx, p, w, len(want), 5*time.Second)
	if err != nil {
		return fmt.Errorf("watch from the compaction revision %d: %v", revs[2], err)
	}
	return eqList(want, fmtEvs(p, evs, false, false))
}

// slow-reader: a watcher that does not read while ~20,000 events are written
// (concurrently, by several writers) then receives every one of them, in
// revision order, without gap or duplicate, each with the key and value the
// put at that revision wrote; a new watcher WithRev(first put) then replays
// the same history from storage, and no progress notify (periodic or
// requested) may claim a revision before the events up to it were delivered.
func checkSlowReader(e *check.Env) error {
	p := e.Prefix
	n, nw := *slowEvents, *slowWriters
	if nw < 1 {
		nw = 1
	}
	w, _, err := open(e, p, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	type wrote struct{ key, val string }
	var mu sync.Mutex
	byRev := make(map[int64]wrote, n)
	var wg sync.WaitGroup
	errc := make(chan error, nw)
	t0 := time.Now()
	for wi := 0; wi < nw; wi++ {
		wg.Add(1)
		go func(wi int) {
			defer wg.Done()
			for i := wi; i < n; i += nw {
				key, val := fmt.Sprintf("%02d/%05d", wi, i), fmt.Sprintf("v%d", i)
				r, err := e.Cli.Put(e.Ctx, p+key, val)
				if err != nil {
					mu.Lock()
					done := len(byRev)
					mu.Unlock()
					errc <- fmt.Errorf("put %s (%d of %d puts done after %v): %v", key, done, n, time.Since(t0).Round(time.Millisecond), err)
					return
				}
				mu.Lock()
				if o, dup := byRev[r.Header.Revision]; dup {
					mu.Unlock()
					errc <- fmt.Errorf("puts %s and %s both answered revision %d", o.key, key, r.Header.Revision)
					return
				}
				byRev[r.Header.Revision] = wrote{key, val}
				mu.Unlock()
			}
		}(wi)
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return err
	}
	writeTime := time.Since(t0)
	revs := make([]int64, 0, n)
	for r := range byRev {
		revs = append(revs, r)
	}
	sort.Slice(revs, func(i, j int) bool { return revs[i] < revs[j] })
	// verify: the events are exactly the puts, in revision order
	verify := func(what string, evs []*clientv3.Event) error {
		for i, ev := range evs {
			if i >= len(revs) {
				return fmt.Errorf("%s: more events than puts: extra %s", what, fmtEv(p, ev, false, false))
			}
			wr := byRev[revs[i]]
			got := fmtEv(p, ev, false, false)
			want := fmt.Sprintf("PUT %s=%s@%d", wr.key, wr.val, revs[i])
			if got != want {
				prev := "none"
				if i > 0 {
					prev = fmtEv(p, evs[i-1], false, false)
				}
				return fmt.Errorf("%s: event #%d of %d: want %s, got %s (previous event %s)", what, i+1, n, want, got, prev)
			}
		}
		return nil
	}
	t1 := time.Now()
	evs, _, err := collect(e.Ctx, p, w, n, 20*time.Second)
	if err != nil {
		return fmt.Errorf("reading after %d puts written in %v: %v", n, writeTime.Round(time.Millisecond), err)
	}
	readTime := time.Since(t1)
	if err := verify("slow watcher", evs); err != nil {
		return err
	}
	// nothing more should be pending: a sentinel write is the very next event
	end, err := put(e, "zz-end", "end")
	if err != nil {
		return err
	}
	evs, _, err = collect(e.Ctx, p, w, 1, 5*time.Second)
	if err != nil {
		return fmt.Errorf("sentinel after the %d events: %v", n, err)
	}
	if err := eqList([]string{fmt.Sprintf("PUT zz-end=end@%d", end)}, fmtEvs(p, evs, false, false)); err != nil {
		return fmt.Errorf("after the %d events (written in %v, read in %v): %v", n, writeTime.Round(time.Millisecond), readTime.Round(time.Millisecond), err)
	}
	// the same history replayed from storage by a new watcher (WithRev of the
	// first put, own client): the server has to catch the watcher up over all
	// n revisions. The watcher asks for periodic progress notifies and
	// RequestProgress is called at once and every 20ms meanwhile: a progress notify at
	// revision R promises every event <= R was delivered (the Go client resumes
	// from R+1 after it), so no event <= R may follow it.
	cli2, err := check.NewClient(e.Eps)
	if err != nil {
		return fmt.Errorf("second client: %v", err)
	}
	defer cli2.Close()
	e2 := &check.Env{Ctx: e.Ctx, Cli: cli2, Prefix: e.Prefix, Name: e.Name, Eps: e.Eps}
	t2 := time.Now()
	wr, cancelR, err := open(e2, p, clientv3.WithPrefix(), clientv3.WithRev(revs[0]), clientv3.WithProgressNotify())
	if err != nil {
		return err
	}
	defer cancelR()
	stopReq := make(chan struct{})
	reqDone := make(chan error, 1)
	go func() {
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			if err := cli2.RequestProgress(e.Ctx); err != nil {
				reqDone <- fmt.Errorf("RequestProgress during the replay: %v", err)
				return
			}
			select {
			case <-stopReq:
				reqDone <- nil
				return
			case <-tk.C:
			}
		}
	}()
	evs, notifies, err := collectProgress(e.Ctx, p, wr, n+1, 20*time.Second)
	close(stopReq)
	if rerr := <-reqDone; err == nil && rerr != nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("replay from %d (with progress notifies): %v", revs[0], err)
	}
	if err := verify(fmt.Sprintf("replay from %d", revs[0]), evs[:n]); err != nil {
		return err
	}
	if err := eqList([]string{fmt.Sprintf("PUT zz-end=end@%d", end)}, fmtEvs(p, evs[n:], false, false)); err != nil {
		return fmt.Errorf("replay from %d, after the %d puts: %v", revs[0], n, err)
	}
	// caught up: a progress request is now answered at the current revision
	if err := cli2.RequestProgress(e.Ctx); err != nil {
		return fmt.Errorf("RequestProgress after the replay: %v", err)
	}
	pctx, pcancel := within(e.Ctx, 3*time.Second)
	defer pcancel()
	for {
		r, err := next(pctx, wr)
		if err != nil {
			return fmt.Errorf("after the replay caught up: no progress notify at revision %d within 3s of RequestProgress: %v", end, err)
		}
		if !r.IsProgressNotify() || r.Header.Revision > end {
			return fmt.Errorf("after the replay caught up: want a progress notify at revision %d, got %s", end, descResp(p, r))
		}
		if r.Header.Revision == end {
			break
		}
	}
	e.Notef("%d puts by %d writers in %v, slow watcher read them in %v, replay of %d events in %v with %d progress notifies during it",
		n, nw, writeTime.Round(time.Millisecond), readTime.Round(time.Millisecond), n+1, time.Since(t2).Round(time.Millisecond), notifies)
	return nil
}

// collectProgress is collect for a watcher that also gets progress notifies:
// it fails if an event arrives whose revision is <= that of a progress notify
// received before it. Returns the events and the number of notifies seen.
func collectProgress(ctx context.Context, p string, wch clientv3.WatchChan, n int, d time.Duration) ([]*clientv3.Event, int, error) {
	cctx, cancel := within(ctx, d)
	defer cancel()
	var evs []*clientv3.Event
	var progress int64
	notifies := 0
	for len(evs) < n {
		r, err := next(cctx, wch)
		if err != nil {
			return evs, notifies, fmt.Errorf("after %d of %d expected events (%v): %v", len(evs), n, d, err)
		}
		if r.Err() != nil || r.Canceled || r.CompactRevision != 0 {
			return evs, notifies, fmt.Errorf("after %d of %d expected events: unexpected response %s", len(evs), n, descResp(p, r))
		}
		if r.IsProgressNotify() {
			notifies++
			if r.Header.Revision > progress {
				progress = r.Header.Revision
			}
			continue
		}
		for _, ev := range r.Events {
			if ev.Kv.ModRevision <= progress {
				return evs, notifies, fmt.Errorf("event %s (#%d) arrived after a progress notify at revision %d: the notify claimed the watcher had every event up to %d",
					fmtEv(p, ev, false, false), len(evs)+1, progress, progress)
			}
			evs = append(evs, ev)
		}
	}
	return evs, notifies, nil
}

// resume: cancel a watch after it got >= 100 of 300 events (written while it
// reads), start a new watch WithRev(lastRev+1): together they see every event
// exactly once, in order.
func checkResume(e *check.Env) error {
	p := e.Prefix
	const total, cut = 300, 100
	w1, cancel1, err := open(e, p, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	var want []string
	var mu sync.Mutex
	werr := make(chan error, 1)
	go func() {
		for i := 0; i < total; i++ {
			key := fmt.Sprintf("k%03d", i)
			r, err := put(e, key, fmt.Sprintf("%d", i))
			if err != nil {
				werr <- err
				return
			}
			mu.Lock()
			want = append(want, fmt.Sprintf("PUT %s=%d@%d", key, i, r))
			mu.Unlock()
		}
		r, err := put(e, "zz-end", "end")
		if err == nil {
			mu.Lock()
			want = append(want, fmt.Sprintf("PUT zz-end=end@%d", r))
			mu.Unlock()
		}
		werr <- err
	}()
	first, _, err := collect(e.Ctx, p, w1, cut, 10*time.Second)
	if err != nil {
		return fmt.Errorf("first watch: %v", err)
	}
	cancel1()
	lastRev := first[len(first)-1].Kv.ModRevision
	// the canceled watch's channel must close (buffered responses are dropped)
	cctx, ccancel := within(e.Ctx, 3*time.Second)
	defer ccancel()
	for {
		if _, err := next(cctx, w1); err == errClosed {
			break
		} else if err != nil {
			return fmt.Errorf("canceled watch: channel not closed within 3s")
		}
	}
	w2, _, err := open(e, p, clientv3.WithPrefix(), clientv3.WithRev(lastRev+1))
	if err != nil {
		return err
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("writer: %v", err)
	}
	mu.Lock()
	all := append([]string{}, want...)
	mu.Unlock()
	rest, _, err := collect(e.Ctx, p, w2, len(all)-len(first), 10*time.Second)
	if err != nil {
		return fmt.Errorf("resumed watch from %d (first watch got %d events): %v", lastRev+1, len(first), err)
	}
	got := append(fmtEvs(p, first, false, false), fmtEvs(p, rest, false, false)...)
	if err := eqList(all, got); err != nil {
		return fmt.Errorf("first watch (%d events, last rev %d) + resumed watch: %v", len(first), lastRev, err)
	}
	return nil
}
