// Command lease checks the Lease API of an etcd v3 server, and the client-side
// recipes built on it (go.etcd.io/etcd/clientv3/concurrency: Session, Mutex,
// Election), through the official Go client (v3.4 as packaged by Debian).
//
//	lease --endpoints 127.0.0.1:2379 [--run REGEXP] [--list]
//
// The server must run with etcd's default --election-timeout and
// --heartbeat-interval (the minimum lease TTL, 2 s, derives from them). Every
// check writes under its own key prefix, uses its own client and revokes the
// leases it granted; checks run one after the other and assume nobody else
// writes to the server meanwhile (revisions are compared exactly). Several
// checks wait on purpose (TTLs, expiry, keep-alive): about 25 s in all.
// Output: `ok lease/<check>` or `FAIL lease/<check>: ...` per check; exit 1 if
// any failed.
package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"cairncompat/check"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
	"go.etcd.io/etcd/etcdserver/api/v3rpc/rpctypes"
	pb "go.etcd.io/etcd/etcdserver/etcdserverpb"
	"go.etcd.io/etcd/mvcc/mvccpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// minTTL is the smallest TTL etcd grants with its default timing flags:
// ceil(1.5 * election timeout (1 s)).
const minTTL = 2

func main() {
	check.Main("lease", []check.Check{
		{Name: "grant-list-ttl", Timeout: 10 * time.Second, Run: checkGrant},
		{Name: "grant-id", Timeout: 10 * time.Second, Run: checkGrantID},
		{Name: "keepalive", Timeout: 15 * time.Second, Run: checkKeepAlive},
		{Name: "revoke", Timeout: 10 * time.Second, Run: checkRevoke},
		{Name: "expiry", Timeout: 15 * time.Second, Run: checkExpiry},
		{Name: "not-found", Timeout: 10 * time.Second, Run: checkNotFound},
		{Name: "txn-lease-compare", Timeout: 10 * time.Second, Run: checkTxn},
		{Name: "session", Timeout: 20 * time.Second, Run: checkSession},
		{Name: "mutex", Timeout: 20 * time.Second, Run: checkMutex},
		{Name: "election", Timeout: 20 * time.Second, Run: checkElection},
		{Name: "session-revoked", Timeout: 15 * time.Second, Run: checkSessionRevoked},
	})
}

// ---------------------------------------------------------------------------
// helpers

func grant(e *check.Env, ttl int64) (clientv3.LeaseID, error) {
	r, err := e.Cli.Grant(e.Ctx, ttl)
	if err != nil {
		return 0, fmt.Errorf("grant(%d): %v", ttl, err)
	}
	return r.ID, nil
}

// revokeQuietly revokes leases a check granted (cleanup; errors ignored).
func revokeQuietly(cli *clientv3.Client, ids ...clientv3.LeaseID) {
	for _, id := range ids {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		cli.Revoke(ctx, id)
		cancel()
	}
}

// sessions opens n sessions (TTL 10 s) on two clients: the check's own and a
// second one, in turn (e.Cli, second, e.Cli, ...). cleanup closes the sessions
// (revoking their leases), then the second client; on error nothing is left open.
func sessions(e *check.Env, n int) (ss []*concurrency.Session, cleanup func(), err error) {
	cli2, err := check.NewClient(e.Eps)
	if err != nil {
		return nil, nil, fmt.Errorf("second client: %v", err)
	}
	cleanup = func() {
		for _, s := range ss {
			s.Close()
		}
		cli2.Close()
	}
	clients := []*clientv3.Client{e.Cli, cli2}
	for i := 0; i < n; i++ {
		s, err := concurrency.NewSession(clients[i%2], concurrency.WithTTL(10))
		if err != nil {
			cleanup()
			return nil, nil, fmt.Errorf("session %d: %v", i+1, err)
		}
		ss = append(ss, s)
	}
	return ss, cleanup, nil
}

func put(e *check.Env, key, val string, opts ...clientv3.OpOption) (int64, error) {
	r, err := e.Cli.Put(e.Ctx, e.Prefix+key, val, opts...)
	if err != nil {
		return 0, fmt.Errorf("put %s: %v", key, err)
	}
	return r.Header.Revision, nil
}

func currentRev(e *check.Env) (int64, error) {
	r, err := e.Cli.Get(e.Ctx, e.Prefix+"\x00no-such-key")
	if err != nil {
		return 0, fmt.Errorf("get (current revision): %v", err)
	}
	return r.Header.Revision, nil
}

// keysUnder returns "key(lease=<hex>)" for each key under the check's prefix
// + sub, relative to the check's prefix, in key order.
func keysUnder(e *check.Env, sub string) ([]string, error) {
	r, err := e.Cli.Get(e.Ctx, e.Prefix+sub, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("get %s*: %v", sub, err)
	}
	var out []string
	for _, kv := range r.Kvs {
		k := strings.TrimPrefix(string(kv.Key), e.Prefix)
		if kv.Lease != 0 {
			k += fmt.Sprintf("(lease=%x)", kv.Lease)
		}
		out = append(out, k)
	}
	return out, nil
}

func eq(what string, want, got []string) error {
	if strings.Join(want, "\x00") != strings.Join(got, "\x00") {
		return fmt.Errorf("%s: want [%s], got [%s]", what, strings.Join(want, " "), strings.Join(got, " "))
	}
	return nil
}

// ttlIs checks a TimeToLive answer: ID, granted TTL exact, remaining TTL in
// [lo, hi] and (keys != nil) the attached keys as a set, relative to prefix.
func ttlIs(e *check.Env, what string, id clientv3.LeaseID, granted, lo, hi int64, keys []string) error {
	var opts []clientv3.LeaseOption
	if keys != nil {
		opts = append(opts, clientv3.WithAttachedKeys())
	}
	r, err := e.Cli.TimeToLive(e.Ctx, id, opts...)
	if err != nil {
		return fmt.Errorf("%s: TimeToLive(%x): %v", what, id, err)
	}
	if r.ID != id || r.GrantedTTL != granted || r.TTL < lo || r.TTL > hi {
		return fmt.Errorf("%s: TimeToLive(%x) = {ID %x, GrantedTTL %d, TTL %d}, want {ID %x, GrantedTTL %d, TTL in [%d, %d]}",
			what, id, r.ID, r.GrantedTTL, r.TTL, id, granted, lo, hi)
	}
	if keys != nil {
		var got []string
		for _, k := range r.Keys {
			got = append(got, strings.TrimPrefix(string(k), e.Prefix))
		}
		sort.Strings(got)
		want := append([]string(nil), keys...)
		sort.Strings(want)
		if err := eq(fmt.Sprintf("%s: TimeToLive(%x, WithAttachedKeys) keys", what, id), want, got); err != nil {
			return err
		}
	}
	return nil
}

// gone checks that TimeToLive reports the lease as unknown: TTL -1,
// GrantedTTL 0, the ID echoed, no keys, no error.
func gone(e *check.Env, what string, id clientv3.LeaseID) error {
	r, err := e.Cli.TimeToLive(e.Ctx, id, clientv3.WithAttachedKeys())
	if err != nil {
		return fmt.Errorf("%s: TimeToLive(%x) of an unknown lease: %v, want TTL -1 and no error", what, id, err)
	}
	if r.ID != id || r.TTL != -1 || r.GrantedTTL != 0 || len(r.Keys) != 0 {
		return fmt.Errorf("%s: TimeToLive(%x) of an unknown lease = {ID %x, TTL %d, GrantedTTL %d, %d keys}, want {ID %x, TTL -1, GrantedTTL 0, no keys}",
			what, id, r.ID, r.TTL, r.GrantedTTL, len(r.Keys), id)
	}
	return nil
}

func listed(e *check.Env) (map[clientv3.LeaseID]bool, error) {
	r, err := e.Cli.Leases(e.Ctx)
	if err != nil {
		return nil, fmt.Errorf("Leases(): %v", err)
	}
	m := map[clientv3.LeaseID]bool{}
	for _, l := range r.Leases {
		m[l.ID] = true
	}
	return m, nil
}

func isErr(err, want error) bool {
	return err == want || (err != nil && err.Error() == want.Error())
}

// open starts a watch and waits for its created response.
func open(e *check.Env, key string, opts ...clientv3.OpOption) (clientv3.WatchChan, context.CancelFunc, error) {
	ctx, cancel := context.WithCancel(e.Ctx)
	wch := e.Cli.Watch(ctx, key, append(opts, clientv3.WithCreatedNotify())...)
	select {
	case r, ok := <-wch:
		if !ok || !r.Created || r.Err() != nil {
			cancel()
			return nil, nil, fmt.Errorf("watch %q: no plain created response (closed=%v, err=%v)", key, !ok, r.Err())
		}
	case <-time.After(5 * time.Second):
		cancel()
		return nil, nil, fmt.Errorf("watch %q: no created response within 5 s", key)
	}
	return wch, cancel, nil
}

// nextEvents returns the next response carrying events (progress notifies
// skipped) within d.
func nextEvents(e *check.Env, wch clientv3.WatchChan, d time.Duration) (clientv3.WatchResponse, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case r, ok := <-wch:
			if !ok {
				return r, errors.New("watch channel closed")
			}
			if r.Err() != nil || r.Canceled {
				return r, fmt.Errorf("watch response error: %v (canceled=%v)", r.Err(), r.Canceled)
			}
			if len(r.Events) == 0 {
				continue
			}
			return r, nil
		case <-t.C:
			return clientv3.WatchResponse{}, fmt.Errorf("no watch event within %v", d)
		case <-e.Ctx.Done():
			return clientv3.WatchResponse{}, e.Ctx.Err()
		}
	}
}

func fmtEvs(p string, evs []*clientv3.Event) []string {
	var out []string
	for _, ev := range evs {
		k := strings.TrimPrefix(string(ev.Kv.Key), p)
		switch ev.Type {
		case mvccpb.PUT:
			out = append(out, fmt.Sprintf("PUT %s@%d", k, ev.Kv.ModRevision))
		case mvccpb.DELETE:
			s := fmt.Sprintf("DELETE %s@%d", k, ev.Kv.ModRevision)
			if ev.PrevKv != nil {
				s += fmt.Sprintf(" prev.lease=%x", ev.PrevKv.Lease)
			}
			out = append(out, s)
		}
	}
	return out
}

// sleepCtx sleeps d unless the check's context ends first.
func sleepCtx(e *check.Env, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-e.Ctx.Done():
		return e.Ctx.Err()
	}
}

// ---------------------------------------------------------------------------
// checks

// grant-list-ttl: Grant returns a non-zero ID and the TTL asked for (TTL 1, 0
// and -5 are raised to the 2 s minimum; above 9,000,000,000 s is
// ErrLeaseTTLTooLarge); grants, keep-alives and TimeToLive do not create a
// revision; TimeToLive(WithAttachedKeys) reports granted/remaining TTL and the
// keys put with the lease; Leases lists them; KeepAliveOnce answers the granted
// TTL; after Revoke the lease is unknown and no longer listed.
func checkGrant(e *check.Env) error {
	rev0, err := currentRev(e)
	if err != nil {
		return err
	}
	g, err := e.Cli.Grant(e.Ctx, 10)
	if err != nil {
		return fmt.Errorf("grant(10): %v", err)
	}
	defer revokeQuietly(e.Cli, g.ID)
	if g.ID == 0 || g.TTL != 10 || g.Error != "" {
		return fmt.Errorf("grant(10) = {ID %x, TTL %d, Error %q}, want a non-zero ID, TTL 10, no error", g.ID, g.TTL, g.Error)
	}
	if g.ResponseHeader == nil || g.ResponseHeader.Revision != rev0 {
		return fmt.Errorf("grant(10): response header %v, want revision %d (a grant creates no revision)", g.ResponseHeader, rev0)
	}
	var small []clientv3.LeaseID
	defer func() { revokeQuietly(e.Cli, small...) }()
	for _, ttl := range []int64{1, 0, -5} {
		r, err := e.Cli.Grant(e.Ctx, ttl)
		if err != nil {
			return fmt.Errorf("grant(%d): %v", ttl, err)
		}
		small = append(small, r.ID)
		if r.TTL != minTTL {
			return fmt.Errorf("grant(%d) granted TTL %d, want the minimum %d", ttl, r.TTL, minTTL)
		}
		if err := ttlIs(e, fmt.Sprintf("grant(%d)", ttl), r.ID, minTTL, 0, minTTL, nil); err != nil {
			return err
		}
	}
	if r, err := e.Cli.Grant(e.Ctx, 9000000001); !isErr(err, rpctypes.ErrLeaseTTLTooLarge) {
		return fmt.Errorf("grant(9000000001) = %v, %v; want %v", r, err, rpctypes.ErrLeaseTTLTooLarge)
	}
	big, err := e.Cli.Grant(e.Ctx, 9000000000)
	if err != nil {
		return fmt.Errorf("grant(9000000000) (the maximum): %v", err)
	}
	small = append(small, big.ID)
	seen := map[clientv3.LeaseID]bool{g.ID: true}
	for _, id := range small {
		if seen[id] {
			return fmt.Errorf("grant returned the ID %x twice", id)
		}
		seen[id] = true
	}

	if _, err := put(e, "a", "1", clientv3.WithLease(g.ID)); err != nil {
		return err
	}
	if _, err := put(e, "b", "2", clientv3.WithLease(g.ID)); err != nil {
		return err
	}
	if _, err := put(e, "c", "3"); err != nil {
		return err
	}
	ks, err := keysUnder(e, "")
	if err != nil {
		return err
	}
	if err := eq("keys", []string{fmt.Sprintf("a(lease=%x)", g.ID), fmt.Sprintf("b(lease=%x)", g.ID), "c"}, ks); err != nil {
		return err
	}
	if err := ttlIs(e, "after grant", g.ID, 10, 8, 10, []string{"a", "b"}); err != nil {
		return err
	}
	if r, err := e.Cli.TimeToLive(e.Ctx, g.ID); err != nil || len(r.Keys) != 0 {
		return fmt.Errorf("TimeToLive without WithAttachedKeys: %v keys, err %v; want no keys", len(r.Keys), err)
	}
	ls, err := listed(e)
	if err != nil {
		return err
	}
	for id := range seen {
		if !ls[id] {
			return fmt.Errorf("Leases() does not list the granted lease %x", id)
		}
	}
	ka, err := e.Cli.KeepAliveOnce(e.Ctx, g.ID)
	if err != nil {
		return fmt.Errorf("KeepAliveOnce: %v", err)
	}
	if ka.ID != g.ID || ka.TTL != 10 {
		return fmt.Errorf("KeepAliveOnce = {ID %x, TTL %d}, want {ID %x, TTL 10}", ka.ID, ka.TTL, g.ID)
	}
	if rev, err := currentRev(e); err != nil {
		return err
	} else if rev != rev0+3 {
		return fmt.Errorf("revision %d after 3 puts from %d, want %d (grants and keep-alives create no revision)", rev, rev0, rev0+3)
	}
	if _, err := e.Cli.Revoke(e.Ctx, g.ID); err != nil {
		return fmt.Errorf("revoke: %v", err)
	}
	if err := gone(e, "after revoke", g.ID); err != nil {
		return err
	}
	if ks, err = keysUnder(e, ""); err != nil {
		return err
	} else if err := eq("keys after revoke", []string{"c"}, ks); err != nil {
		return err
	}
	if ls, err = listed(e); err != nil {
		return err
	} else if ls[g.ID] {
		return fmt.Errorf("Leases() still lists the revoked lease %x", g.ID)
	}
	return nil
}

// grant-id: a LeaseGrant with an explicit ID grants that ID; granting it again
// is FailedPrecondition "etcdserver: lease already exists"; on the raw
// LeaseKeepAlive stream an unknown ID is answered (not an error) with TTL 0
// and the ID echoed; the raw LeaseTimeToLive of an unknown ID is TTL -1 with
// a filled header.
func checkGrantID(e *check.Env) error {
	lc := pb.NewLeaseClient(e.Cli.ActiveConnection())
	id := int64(0x0cab0000000000) + time.Now().UnixNano()%0x1000000
	r, err := lc.LeaseGrant(e.Ctx, &pb.LeaseGrantRequest{ID: id, TTL: 30})
	if err != nil {
		return fmt.Errorf("LeaseGrant{ID %x, TTL 30}: %v", id, err)
	}
	defer revokeQuietly(e.Cli, clientv3.LeaseID(id))
	if r.ID != id || r.TTL != 30 {
		return fmt.Errorf("LeaseGrant{ID %x, TTL 30} = {ID %x, TTL %d}", id, r.ID, r.TTL)
	}
	_, err = lc.LeaseGrant(e.Ctx, &pb.LeaseGrantRequest{ID: id, TTL: 30})
	if s, _ := status.FromError(err); err == nil || s.Code() != codes.FailedPrecondition || s.Message() != "etcdserver: lease already exists" {
		return fmt.Errorf("second LeaseGrant of ID %x: %v, want FailedPrecondition \"etcdserver: lease already exists\"", id, err)
	}
	rev, err := currentRev(e)
	if err != nil {
		return err
	}

	sctx, cancel := context.WithCancel(e.Ctx)
	defer cancel()
	st, err := lc.LeaseKeepAlive(sctx)
	if err != nil {
		return fmt.Errorf("LeaseKeepAlive stream: %v", err)
	}
	unknown := id + 1
	for _, c := range []struct{ id, ttl int64 }{{id, 30}, {unknown, 0}, {id, 30}} {
		if err := st.Send(&pb.LeaseKeepAliveRequest{ID: c.id}); err != nil {
			return fmt.Errorf("LeaseKeepAlive send %x: %v", c.id, err)
		}
		kr, err := st.Recv()
		if err != nil {
			return fmt.Errorf("LeaseKeepAlive recv for %x: %v (an unknown lease is answered with TTL 0, not an error)", c.id, err)
		}
		if kr.ID != c.id || kr.TTL != c.ttl || kr.Header == nil || kr.Header.Revision != rev {
			return fmt.Errorf("LeaseKeepAlive %x = {ID %x, TTL %d, header %v}, want {ID %x, TTL %d, header revision %d}", c.id, kr.ID, kr.TTL, kr.Header, c.id, c.ttl, rev)
		}
	}
	tr, err := lc.LeaseTimeToLive(e.Ctx, &pb.LeaseTimeToLiveRequest{ID: unknown, Keys: true})
	if err != nil {
		return fmt.Errorf("LeaseTimeToLive of unknown %x: %v, want TTL -1 and no error", unknown, err)
	}
	if tr.ID != unknown || tr.TTL != -1 || tr.GrantedTTL != 0 || len(tr.Keys) != 0 || tr.Header == nil || tr.Header.Revision != rev || tr.Header.MemberId == 0 {
		return fmt.Errorf("LeaseTimeToLive of unknown %x = %v, want ID echoed, TTL -1, GrantedTTL 0, no keys, a header at revision %d", unknown, tr, rev)
	}
	return nil
}

// keepalive: KeepAliveOnce resets the remaining TTL to the granted TTL; a
// KeepAlive channel on a TTL-3 lease delivers a response about every second
// (ID, TTL 3) for 5 s, well past the TTL, and the lease and its key stay;
// canceling the context closes the channel.
func checkKeepAlive(e *check.Env) error {
	g, err := grant(e, 3)
	if err != nil {
		return err
	}
	h, err := grant(e, 4)
	if err != nil {
		return err
	}
	defer revokeQuietly(e.Cli, g, h)
	if _, err := put(e, "k", "v", clientv3.WithLease(g)); err != nil {
		return err
	}
	kctx, cancel := context.WithCancel(e.Ctx)
	defer cancel()
	ch, err := e.Cli.KeepAlive(kctx, g)
	if err != nil {
		return fmt.Errorf("KeepAlive: %v", err)
	}
	type res struct {
		n   int
		err error
	}
	done := make(chan res, 1)
	stop := make(chan struct{})
	go func() {
		n := 0
		for {
			select {
			case r, ok := <-ch:
				if !ok {
					done <- res{n, fmt.Errorf("keep-alive channel closed after %d responses", n)}
					return
				}
				if r.ID != g || r.TTL != 3 {
					done <- res{n, fmt.Errorf("keep-alive response {ID %x, TTL %d}, want {ID %x, TTL 3}", r.ID, r.TTL, g)}
					return
				}
				n++
			case <-stop:
				done <- res{n, nil}
				return
			}
		}
	}()
	t0 := time.Now()
	// meanwhile: KeepAliveOnce on another lease
	if err := sleepCtx(e, 1500*time.Millisecond); err != nil {
		return err
	}
	if err := ttlIs(e, "TTL-4 lease after 1.5 s", h, 4, 1, 3, nil); err != nil {
		return err
	}
	ka, err := e.Cli.KeepAliveOnce(e.Ctx, h)
	if err != nil || ka.TTL != 4 || ka.ID != h {
		return fmt.Errorf("KeepAliveOnce(%x) = %v, %v; want TTL 4", h, ka, err)
	}
	if err := ttlIs(e, "TTL-4 lease after KeepAliveOnce", h, 4, 3, 4, nil); err != nil {
		return err
	}
	if err := sleepCtx(e, 5*time.Second-time.Since(t0)); err != nil {
		return err
	}
	close(stop)
	r := <-done
	if r.err != nil {
		return r.err
	}
	if r.n < 3 {
		return fmt.Errorf("%d keep-alive responses in 5 s for a TTL-3 lease, want >= 3 (the client renews every TTL/3)", r.n)
	}
	if err := ttlIs(e, "kept-alive lease after 5 s", g, 3, 0, 3, []string{"k"}); err != nil {
		return err
	}
	cancel()
	select {
	case _, ok := <-ch:
		for ok {
			_, ok = <-ch
		}
	case <-time.After(3 * time.Second):
		return fmt.Errorf("keep-alive channel not closed 3 s after its context was canceled")
	}
	e.Notef("%d keep-alive responses in 5 s", r.n)
	return nil
}

// revoke: Revoke deletes every key attached to the lease in ONE revision (the
// revoke response's header revision), seen by a watcher as one response with
// the DELETE events in key order, each with the lease in its prev kv; keys of
// other leases and without lease stay; revoking a lease without keys creates
// no revision and no event; revoking again is ErrLeaseNotFound.
func checkRevoke(e *check.Env) error {
	p := e.Prefix
	g, err := grant(e, 60)
	if err != nil {
		return err
	}
	o, err := grant(e, 60)
	if err != nil {
		return err
	}
	empty, err := grant(e, 60)
	if err != nil {
		return err
	}
	defer revokeQuietly(e.Cli, g, o, empty)
	for _, k := range []string{"x/3", "x/1", "y", "x/2"} {
		l := g
		if k == "y" {
			l = o
		}
		if _, err := put(e, k, "v", clientv3.WithLease(l)); err != nil {
			return err
		}
	}
	rev, err := put(e, "z", "v")
	if err != nil {
		return err
	}
	wch, wcancel, err := open(e, p, clientv3.WithPrefix(), clientv3.WithPrevKV())
	if err != nil {
		return err
	}
	defer wcancel()
	rr, err := e.Cli.Revoke(e.Ctx, g)
	if err != nil {
		return fmt.Errorf("revoke: %v", err)
	}
	if rr.Header.Revision != rev+1 {
		return fmt.Errorf("revoke of a lease with 3 keys: header revision %d, want %d (one revision for all deletes)", rr.Header.Revision, rev+1)
	}
	wr, err := nextEvents(e, wch, 5*time.Second)
	if err != nil {
		return fmt.Errorf("watch after revoke: %v", err)
	}
	want := []string{
		fmt.Sprintf("DELETE x/1@%d prev.lease=%x", rev+1, g),
		fmt.Sprintf("DELETE x/2@%d prev.lease=%x", rev+1, g),
		fmt.Sprintf("DELETE x/3@%d prev.lease=%x", rev+1, g),
	}
	if err := eq("the first watch response after the revoke", want, fmtEvs(p, wr.Events)); err != nil {
		return err
	}
	ks, err := keysUnder(e, "")
	if err != nil {
		return err
	}
	if err := eq("keys after revoke", []string{fmt.Sprintf("y(lease=%x)", o), "z"}, ks); err != nil {
		return err
	}
	if err := gone(e, "revoked lease", g); err != nil {
		return err
	}
	er, err := e.Cli.Revoke(e.Ctx, empty)
	if err != nil {
		return fmt.Errorf("revoke of a lease without keys: %v", err)
	}
	if er.Header.Revision != rev+1 {
		return fmt.Errorf("revoke of a lease without keys: header revision %d, want %d (unchanged)", er.Header.Revision, rev+1)
	}
	end, err := put(e, "end", "v")
	if err != nil {
		return err
	}
	if wr, err = nextEvents(e, wch, 5*time.Second); err != nil {
		return fmt.Errorf("watch after the put of end: %v", err)
	}
	if err := eq("the watch response after revoking a lease without keys", []string{fmt.Sprintf("PUT end@%d", end)}, fmtEvs(p, wr.Events)); err != nil {
		return err
	}
	if end != rev+2 {
		return fmt.Errorf("put after the revokes at revision %d, want %d", end, rev+2)
	}
	if _, err := e.Cli.Revoke(e.Ctx, g); !isErr(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("second revoke: %v, want %v", err, rpctypes.ErrLeaseNotFound)
	}
	return nil
}

// expiry: a TTL-3 lease that nobody keeps alive keeps its keys until its TTL
// (checked at 2.5 s) and loses them (both DELETEs in one watch response at one
// revision) by 4.2 s after the grant; then it is unknown.
func checkExpiry(e *check.Env) error {
	p := e.Prefix
	wch, wcancel, err := open(e, p, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	defer wcancel()
	t0 := time.Now()
	g, err := grant(e, 3)
	if err != nil {
		return err
	}
	defer revokeQuietly(e.Cli, g)
	var rev int64
	for _, k := range []string{"b", "a"} {
		if rev, err = put(e, k, "v", clientv3.WithLease(g)); err != nil {
			return err
		}
	}
	if _, err := nextEvents(e, wch, 2*time.Second); err != nil { // put b
		return err
	}
	if _, err := nextEvents(e, wch, 2*time.Second); err != nil { // put a
		return err
	}
	if err := sleepCtx(e, 2500*time.Millisecond-time.Since(t0)); err != nil {
		return err
	}
	ks, err := keysUnder(e, "")
	if err != nil {
		return err
	}
	at := time.Since(t0)
	if err := eq(fmt.Sprintf("keys %v after the grant of a TTL-3 lease", at.Round(time.Millisecond)), []string{fmt.Sprintf("a(lease=%x)", g), fmt.Sprintf("b(lease=%x)", g)}, ks); err != nil {
		return err
	}
	if err := ttlIs(e, "at 2.5 s", g, 3, 0, 1, []string{"a", "b"}); err != nil {
		return err
	}
	wr, err := nextEvents(e, wch, 4200*time.Millisecond-time.Since(t0))
	if err != nil {
		return fmt.Errorf("keys of a TTL-3 lease not deleted 4.2 s after the grant: %v", err)
	}
	dt := time.Since(t0)
	want := []string{fmt.Sprintf("DELETE a@%d", rev+1), fmt.Sprintf("DELETE b@%d", rev+1)}
	if err := eq("expiry events", want, fmtEvs(p, wr.Events)); err != nil {
		return err
	}
	if dt < 2950*time.Millisecond {
		return fmt.Errorf("keys of a TTL-3 lease deleted %v after the grant, before its TTL", dt)
	}
	if err := gone(e, "expired lease", g); err != nil {
		return err
	}
	if _, err := e.Cli.KeepAliveOnce(e.Ctx, g); !isErr(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("KeepAliveOnce of the expired lease: %v, want %v", err, rpctypes.ErrLeaseNotFound)
	}
	ls, err := listed(e)
	if err != nil {
		return err
	}
	if ls[g] {
		return fmt.Errorf("Leases() still lists the expired lease %x", g)
	}
	e.Notef("keys deleted %v after the grant", dt.Round(10*time.Millisecond))
	return nil
}

// not-found: an unknown lease ID is ErrLeaseNotFound for Revoke,
// KeepAliveOnce, Put and a Txn put on the branch taken (not on the other
// branch); TimeToLive answers TTL -1; a KeepAlive channel closes at once;
// IgnoreLease on a missing key is ErrKeyNotFound, with a lease ErrLeaseProvided.
func checkNotFound(e *check.Env) error {
	p := e.Prefix
	unknown := clientv3.LeaseID(0x0dead0000000beef)
	if _, err := e.Cli.Revoke(e.Ctx, unknown); !isErr(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("Revoke(unknown): %v, want %v", err, rpctypes.ErrLeaseNotFound)
	}
	if _, err := e.Cli.KeepAliveOnce(e.Ctx, unknown); !isErr(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("KeepAliveOnce(unknown): %v, want %v", err, rpctypes.ErrLeaseNotFound)
	}
	if err := gone(e, "unknown lease", unknown); err != nil {
		return err
	}
	if _, err := e.Cli.Put(e.Ctx, p+"k", "v", clientv3.WithLease(unknown)); !isErr(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("Put with an unknown lease: %v, want %v", err, rpctypes.ErrLeaseNotFound)
	}
	if _, err := e.Cli.Txn(e.Ctx).Then(clientv3.OpPut(p+"t", "v", clientv3.WithLease(unknown))).Commit(); !isErr(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("Txn put with an unknown lease: %v, want %v", err, rpctypes.ErrLeaseNotFound)
	}
	tr, err := e.Cli.Txn(e.Ctx).If(clientv3.Compare(clientv3.Version(p+"t"), ">", 0)).
		Then(clientv3.OpPut(p+"t", "v", clientv3.WithLease(unknown))).Else(clientv3.OpPut(p+"u", "v")).Commit()
	if err != nil || tr.Succeeded {
		return fmt.Errorf("Txn with an unknown lease on the branch not taken: succeeded=%v err=%v, want the else branch and no error", tr != nil && tr.Succeeded, err)
	}
	if _, err := e.Cli.Put(e.Ctx, p+"missing", "v", clientv3.WithIgnoreLease()); !isErr(err, rpctypes.ErrKeyNotFound) {
		return fmt.Errorf("Put IgnoreLease on a missing key: %v, want %v", err, rpctypes.ErrKeyNotFound)
	}
	g, err := grant(e, 30)
	if err != nil {
		return err
	}
	defer revokeQuietly(e.Cli, g)
	if _, err := e.Cli.Put(e.Ctx, p+"u", "v", clientv3.WithLease(g), clientv3.WithIgnoreLease()); !isErr(err, rpctypes.ErrLeaseProvided) {
		return fmt.Errorf("Put with a lease and IgnoreLease: %v, want %v", err, rpctypes.ErrLeaseProvided)
	}
	ctx, cancel := context.WithCancel(e.Ctx)
	defer cancel()
	ch, err := e.Cli.KeepAlive(ctx, unknown)
	if err != nil {
		return fmt.Errorf("KeepAlive(unknown): %v", err)
	}
	select {
	case r, ok := <-ch:
		if ok {
			return fmt.Errorf("KeepAlive(unknown) delivered %v, want its channel closed", r)
		}
	case <-time.After(3 * time.Second):
		return fmt.Errorf("KeepAlive(unknown): channel not closed within 3 s")
	}
	ks, err := keysUnder(e, "")
	if err != nil {
		return err
	}
	return eq("keys", []string{"u"}, ks)
}

// txn-lease-compare: Compare(LeaseValue(k), op, id) with =, !=, >, <; a key
// without lease and a missing key compare as lease 0; WithRange / WithPrefix
// require every key in the range to match; a Txn put WithLease attaches.
func checkTxn(e *check.Env) error {
	p := e.Prefix
	g, err := grant(e, 30)
	if err != nil {
		return err
	}
	h, err := grant(e, 30)
	if err != nil {
		return err
	}
	defer revokeQuietly(e.Cli, g, h)
	for _, k := range []string{"k/a", "k/b"} {
		if _, err := put(e, k, "v", clientv3.WithLease(g)); err != nil {
			return err
		}
	}
	if _, err := put(e, "k/z", "v"); err != nil {
		return err
	}
	hi := g
	if h > hi {
		hi = h
	}
	cases := []struct {
		what string
		cmp  clientv3.Cmp
		want bool
	}{
		{"lease(k/a) = g", clientv3.Compare(clientv3.LeaseValue(p+"k/a"), "=", g), true},
		{"lease(k/a) = h", clientv3.Compare(clientv3.LeaseValue(p+"k/a"), "=", h), false},
		{"lease(k/a) != h", clientv3.Compare(clientv3.LeaseValue(p+"k/a"), "!=", h), true},
		{"lease(k/a) != g", clientv3.Compare(clientv3.LeaseValue(p+"k/a"), "!=", g), false},
		{"lease(k/a) > 0", clientv3.Compare(clientv3.LeaseValue(p+"k/a"), ">", 0), true},
		{"lease(k/a) < g", clientv3.Compare(clientv3.LeaseValue(p+"k/a"), "<", g), false},
		{"lease(k/z) = 0 (no lease)", clientv3.Compare(clientv3.LeaseValue(p+"k/z"), "=", clientv3.NoLease), true},
		{"lease(k/z) = g", clientv3.Compare(clientv3.LeaseValue(p+"k/z"), "=", g), false},
		{"lease(missing) = 0", clientv3.Compare(clientv3.LeaseValue(p+"missing"), "=", 0), true},
		{"lease(missing) = g", clientv3.Compare(clientv3.LeaseValue(p+"missing"), "=", g), false},
		{"lease([k/a, k/z)) = g", clientv3.Compare(clientv3.LeaseValue(p+"k/a"), "=", g).WithRange(p + "k/z"), true},
		{"lease(k/ prefix) = g", clientv3.Compare(clientv3.LeaseValue(p+"k/"), "=", g).WithPrefix(), false},
		{"lease(k/ prefix) != h", clientv3.Compare(clientv3.LeaseValue(p+"k/"), "!=", h).WithPrefix(), true},
		{"lease(smaller id) < larger id", clientv3.Compare(clientv3.LeaseValue(p+"k/a"), "<", hi+1), true},
	}
	for _, c := range cases {
		r, err := e.Cli.Txn(e.Ctx).If(c.cmp).Commit()
		if err != nil {
			return fmt.Errorf("txn if %s: %v", c.what, err)
		}
		if r.Succeeded != c.want {
			return fmt.Errorf("txn if %s (g=%x h=%x): succeeded=%v, want %v", c.what, g, h, r.Succeeded, c.want)
		}
	}
	r, err := e.Cli.Txn(e.Ctx).If(clientv3.Compare(clientv3.LeaseValue(p+"k/a"), "=", g)).
		Then(clientv3.OpPut(p+"k/a", "moved", clientv3.WithLease(h)), clientv3.OpPut(p+"n", "new", clientv3.WithLease(h))).Commit()
	if err != nil || !r.Succeeded {
		return fmt.Errorf("txn moving k/a to lease h: succeeded=%v err=%v", r != nil && r.Succeeded, err)
	}
	if err := ttlIs(e, "lease g", g, 30, 27, 30, []string{"k/b"}); err != nil {
		return err
	}
	return ttlIs(e, "lease h", h, 30, 27, 30, []string{"k/a", "n"})
}

// session: concurrency.NewSession(WithTTL(5)) keeps its lease alive well past
// the TTL (8 s: Done() stays open, the key it owns stays, remaining TTL in
// [2, 5]: the client renews every TTL/3 s, checking every 500 ms);
// Close revokes the lease (key gone, lease unknown, Done closed).
func checkSession(e *check.Env) error {
	s, err := concurrency.NewSession(e.Cli, concurrency.WithTTL(5))
	if err != nil {
		return fmt.Errorf("NewSession: %v", err)
	}
	defer s.Orphan()
	id := s.Lease()
	if _, err := put(e, "owned", "v", clientv3.WithLease(id)); err != nil {
		return err
	}
	if err := ttlIs(e, "new session", id, 5, 3, 5, []string{"owned"}); err != nil {
		return err
	}
	select {
	case <-s.Done():
		return fmt.Errorf("session Done() closed within 8 s, its lease should be kept alive")
	case <-time.After(8 * time.Second):
	case <-e.Ctx.Done():
		return e.Ctx.Err()
	}
	if err := ttlIs(e, "session after 8 s", id, 5, 2, 5, []string{"owned"}); err != nil {
		return err
	}
	if err := s.Close(); err != nil {
		return fmt.Errorf("session Close: %v", err)
	}
	select {
	case <-s.Done():
	default:
		return fmt.Errorf("session Done() not closed after Close")
	}
	if err := gone(e, "closed session", id); err != nil {
		return err
	}
	ks, err := keysUnder(e, "")
	if err != nil {
		return err
	}
	return eq("keys after session Close", nil, ks)
}

// mutex: three sessions (two clients) contend for one concurrency.Mutex: the
// first Lock returns at once with key <pfx>/<lease hex>; the others block in
// order of arrival; the holder's IsOwner compare succeeds in a Txn; Unlock
// hands the lock to the second; closing the second's session (revoking its
// lease) hands it to the third. (etcd 3.4's concurrency has no TryLock.)
func checkMutex(e *check.Env) error {
	p := e.Prefix
	ss, closeSessions, err := sessions(e, 3)
	if err != nil {
		return err
	}
	defer closeSessions()
	pfx := p + "lock"
	m1, m2, m3 := concurrency.NewMutex(ss[0], pfx), concurrency.NewMutex(ss[1], pfx), concurrency.NewMutex(ss[2], pfx)
	lctx, lcancel := context.WithTimeout(e.Ctx, 3*time.Second)
	err = m1.Lock(lctx)
	lcancel()
	if err != nil {
		return fmt.Errorf("first Lock (uncontended): %v", err)
	}
	if want := fmt.Sprintf("%s/%x", pfx, ss[0].Lease()); m1.Key() != want {
		return fmt.Errorf("lock key %q, want %q", m1.Key(), want)
	}
	waiters := func() (int, error) {
		r, err := e.Cli.Get(e.Ctx, pfx+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return 0, fmt.Errorf("get lock keys: %v", err)
		}
		return int(r.Count), nil
	}
	waitCount := func(n int) error {
		deadline := time.Now().Add(3 * time.Second)
		for {
			c, err := waiters()
			if err != nil {
				return err
			}
			if c == n {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%d lock keys after 3 s, want %d", c, n)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	got2, got3 := make(chan error, 1), make(chan error, 1)
	go func() { got2 <- m2.Lock(e.Ctx) }()
	if err := waitCount(2); err != nil {
		return err
	}
	go func() { got3 <- m3.Lock(e.Ctx) }()
	if err := waitCount(3); err != nil {
		return err
	}
	select {
	case err := <-got2:
		return fmt.Errorf("second Lock returned (%v) while the first holds the lock", err)
	case err := <-got3:
		return fmt.Errorf("third Lock returned (%v) while the first holds the lock", err)
	case <-time.After(1 * time.Second):
	}
	tr, err := e.Cli.Txn(e.Ctx).If(m1.IsOwner()).Then(clientv3.OpPut(p+"guarded", "1")).Commit()
	if err != nil || !tr.Succeeded {
		return fmt.Errorf("txn if holder IsOwner: succeeded=%v err=%v", tr != nil && tr.Succeeded, err)
	}
	t0 := time.Now()
	if err := m1.Unlock(e.Ctx); err != nil {
		return fmt.Errorf("Unlock: %v", err)
	}
	select {
	case err := <-got2:
		if err != nil {
			return fmt.Errorf("second Lock: %v", err)
		}
	case <-time.After(3 * time.Second):
		return fmt.Errorf("second Lock still blocked 3 s after the first Unlock")
	}
	handover := time.Since(t0)
	tr, err = e.Cli.Txn(e.Ctx).If(m1.IsOwner()).Then(clientv3.OpPut(p+"guarded", "2")).Commit()
	if err != nil || tr.Succeeded {
		return fmt.Errorf("txn if the former holder IsOwner: succeeded=%v err=%v, want not succeeded", tr != nil && tr.Succeeded, err)
	}
	select {
	case err := <-got3:
		return fmt.Errorf("third Lock returned (%v) while the second holds the lock", err)
	case <-time.After(500 * time.Millisecond):
	}
	if err := ss[1].Close(); err != nil {
		return fmt.Errorf("closing the holder's session: %v", err)
	}
	select {
	case err := <-got3:
		if err != nil {
			return fmt.Errorf("third Lock: %v", err)
		}
	case <-time.After(3 * time.Second):
		return fmt.Errorf("third Lock still blocked 3 s after the holder's session was closed")
	}
	if err := m3.Unlock(e.Ctx); err != nil {
		return fmt.Errorf("third Unlock: %v", err)
	}
	if err := waitCount(0); err != nil {
		return err
	}
	e.Notef("handover after Unlock %v", handover.Round(time.Millisecond))
	return nil
}

// election: two candidates on two clients: the first Campaign wins at once;
// Leader and an observer see its value, then a Proclaim; the second Campaign
// blocks until the first Resigns, then Leader/observer show the second's
// value; after its Resign there is no leader.
func checkElection(e *check.Env) error {
	p := e.Prefix
	ss, closeSessions, err := sessions(e, 3)
	if err != nil {
		return err
	}
	defer closeSessions()
	pfx := p + "elect"
	e1, e2, eo := concurrency.NewElection(ss[0], pfx), concurrency.NewElection(ss[1], pfx), concurrency.NewElection(ss[2], pfx)
	if _, err := eo.Leader(e.Ctx); err != concurrency.ErrElectionNoLeader {
		return fmt.Errorf("Leader before any campaign: %v, want %v", err, concurrency.ErrElectionNoLeader)
	}
	octx, ocancel := context.WithCancel(e.Ctx)
	defer ocancel()
	obs := eo.Observe(octx)
	observe := func(want string) error {
		for {
			select {
			case r, ok := <-obs:
				if !ok {
					return fmt.Errorf("observe channel closed while waiting for %q", want)
				}
				if len(r.Kvs) != 1 {
					return fmt.Errorf("observe: %d kvs", len(r.Kvs))
				}
				if v := string(r.Kvs[0].Value); v == want {
					return nil
				} else if v != "a" && v != "a2" && v != "b" {
					return fmt.Errorf("observe: unexpected value %q while waiting for %q", v, want)
				}
			case <-time.After(3 * time.Second):
				return fmt.Errorf("observe: no %q within 3 s", want)
			}
		}
	}
	leader := func(want string) error {
		r, err := eo.Leader(e.Ctx)
		if err != nil {
			return fmt.Errorf("Leader (want %q): %v", want, err)
		}
		if len(r.Kvs) != 1 || string(r.Kvs[0].Value) != want {
			return fmt.Errorf("Leader = %v, want value %q", r.Kvs, want)
		}
		return nil
	}
	cctx, ccancel := context.WithTimeout(e.Ctx, 3*time.Second)
	err = e1.Campaign(cctx, "a")
	ccancel()
	if err != nil {
		return fmt.Errorf("first Campaign (uncontended): %v", err)
	}
	if want := fmt.Sprintf("%s/%x", pfx, ss[0].Lease()); e1.Key() != want {
		return fmt.Errorf("leader key %q, want %q", e1.Key(), want)
	}
	if err := leader("a"); err != nil {
		return err
	}
	if err := observe("a"); err != nil {
		return err
	}
	won2 := make(chan error, 1)
	go func() { won2 <- e2.Campaign(e.Ctx, "b") }()
	select {
	case err := <-won2:
		return fmt.Errorf("second Campaign returned (%v) while the first leads", err)
	case <-time.After(1 * time.Second):
	}
	if err := e1.Proclaim(e.Ctx, "a2"); err != nil {
		return fmt.Errorf("Proclaim: %v", err)
	}
	if err := leader("a2"); err != nil {
		return err
	}
	if err := observe("a2"); err != nil {
		return err
	}
	if err := e1.Resign(e.Ctx); err != nil {
		return fmt.Errorf("Resign: %v", err)
	}
	select {
	case err := <-won2:
		if err != nil {
			return fmt.Errorf("second Campaign: %v", err)
		}
	case <-time.After(3 * time.Second):
		return fmt.Errorf("second Campaign still blocked 3 s after the leader resigned")
	}
	if err := leader("b"); err != nil {
		return err
	}
	if err := observe("b"); err != nil {
		return err
	}
	if err := e1.Proclaim(e.Ctx, "x"); err != concurrency.ErrElectionNotLeader {
		return fmt.Errorf("Proclaim by the resigned candidate: %v, want %v", err, concurrency.ErrElectionNotLeader)
	}
	if err := e2.Resign(e.Ctx); err != nil {
		return fmt.Errorf("second Resign: %v", err)
	}
	if _, err := eo.Leader(e.Ctx); err != concurrency.ErrElectionNoLeader {
		return fmt.Errorf("Leader after both resigned: %v, want %v", err, concurrency.ErrElectionNoLeader)
	}
	return nil
}

// session-revoked: when a session's lease is revoked behind its back, the key
// it owned disappears and its Done() channel closes (at the next keep-alive,
// TTL/3 = 1 s later).
func checkSessionRevoked(e *check.Env) error {
	s, err := concurrency.NewSession(e.Cli, concurrency.WithTTL(3))
	if err != nil {
		return fmt.Errorf("NewSession: %v", err)
	}
	defer s.Orphan()
	if _, err := put(e, "owned", "v", clientv3.WithLease(s.Lease())); err != nil {
		return err
	}
	select {
	case <-s.Done():
		return fmt.Errorf("session Done() closed before its lease was revoked")
	case <-time.After(500 * time.Millisecond):
	}
	cli2, err := check.NewClient(e.Eps)
	if err != nil {
		return fmt.Errorf("second client: %v", err)
	}
	defer cli2.Close()
	t0 := time.Now()
	if _, err := cli2.Revoke(e.Ctx, s.Lease()); err != nil {
		return fmt.Errorf("revoke the session's lease: %v", err)
	}
	ks, err := keysUnder(e, "")
	if err != nil {
		return err
	}
	if err := eq("keys after revoking the session's lease", nil, ks); err != nil {
		return err
	}
	select {
	case <-s.Done():
	case <-time.After(4 * time.Second):
		return fmt.Errorf("session Done() not closed 4 s after its lease was revoked")
	}
	e.Notef("Done() closed %v after the revoke", time.Since(t0).Round(time.Millisecond))
	return nil
}
