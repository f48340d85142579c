// Command leasekeepalive is the load generator of the lease keep-alive
// benchmark (compat-tests/bench/lease-keepalive runs it against a fresh server).
//
//	leasekeepalive --endpoint 127.0.0.1:2379 --server-pid PID [--leases 10000]
//	    [--ttl 10] [--interval 1s] [--streams 8] [--conns 1] [--warmup 5s]
//	    [--duration 30s] [--key-every 10] [--clk-tck 100]
//
// It grants --leases leases (TTL --ttl seconds, server-assigned IDs,
// --grant-concurrency at a time) and attaches one key to every --key-every-th
// of them. Keep-alives go over --streams LeaseKeepAlive bidirectional streams
// (spread round-robin over --conns gRPC connections), written explicitly with
// the generated etcdserverpb client: lease j belongs to stream j % streams and
// is renewed once per --interval, the renewals of all leases spread evenly over
// the interval (each stream's sender wakes every 5 ms and sends what is due;
// one receiver per stream reads the answers). Keep-alives start as soon as a
// lease is granted, so no lease waits for the whole grant phase.
//
// After the last grant: --warmup, then the measured window of --duration. For
// the window it reports the server's CPU use (utime+stime from
// /proc/PID/stat, as percent of one core), the generator's own CPU use
// (getrusage), the rest of the machine's busy time (/proc/stat, i.e. what
// else ran meanwhile), the keep-alive requests sent and answered per second,
// and the answer latency. Server RSS (VmRSS of /proc/PID/status) is reported
// at start, after granting, its peak over warm-up + window (sampled every
// second) and at the end, plus the kernel's VmHWM.
//
// Failures: answers with TTL <= 0 (lease not found: lost), answers for an ID
// that was not asked on that stream, stream errors, requests never answered
// (after a drain of up to 3 s), and, checked after the window with
// LeaseTimeToLive for every lease and a count of the attached keys, leases or
// keys that no longer exist.
//
// The last line is machine-readable: `RESULT key=value ...` (fields at the end
// of main).
// Exit status: 0 done (failures are reported in RESULT, not in the status),
// 1 error, 3 the server answered LeaseGrant or LeaseKeepAlive (probed once
// before the run) with Unimplemented.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	pb "go.etcd.io/etcd/etcdserver/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var (
	endpoint    = flag.String("endpoint", "127.0.0.1:2379", "server address host:port (plain gRPC)")
	serverPid   = flag.Int("server-pid", 0, "pid of the server process to sample in /proc (0: no server numbers)")
	nLeases     = flag.Int("leases", 10000, "leases to grant and keep alive")
	ttl         = flag.Int64("ttl", 10, "lease TTL in seconds")
	interval    = flag.Duration("interval", time.Second, "keep-alive period of each lease")
	nStreams    = flag.Int("streams", 8, "LeaseKeepAlive streams")
	nConns      = flag.Int("conns", 1, "gRPC connections the streams are spread over")
	warmup      = flag.Duration("warmup", 5*time.Second, "warm-up after the last grant, not measured")
	duration    = flag.Duration("duration", 30*time.Second, "measured window")
	keyEvery    = flag.Int("key-every", 10, "attach one key to every N-th lease (0: no keys)")
	grantConc   = flag.Int("grant-concurrency", 32, "concurrent LeaseGrant / Put / LeaseTimeToLive calls")
	clkTck      = flag.Int64("clk-tck", 100, "clock ticks per second of /proc/PID/stat (getconf CLK_TCK)")
	progress    = flag.Duration("progress", 5*time.Second, "print a progress line this often (0: never)")
	tickPeriod  = flag.Duration("tick", 5*time.Millisecond, "sender wake-up period")
	keyPrefix   = "bench/lease/"
	unimplExit  = 3
	drainPeriod = 3 * time.Second
)

func logf(format string, args ...interface{}) {
	fmt.Printf("leasekeepalive: "+format+"\n", args...)
}

func die(format string, args ...interface{}) {
	logf("ERROR: "+format, args...)
	os.Exit(1)
}

// ---------------------------------------------------------------------------
// /proc sampling

type cpuSample struct {
	at       time.Time
	server   float64 // seconds of CPU (utime+stime) of the server
	self     float64 // seconds of CPU of this process
	machBusy float64 // seconds of busy CPU of the whole machine (all cores)
}

func serverCPU() float64 {
	if *serverPid == 0 {
		return 0
	}
	b, err := ioutil.ReadFile(fmt.Sprintf("/proc/%d/stat", *serverPid))
	if err != nil {
		return math.NaN()
	}
	s := string(b)
	// fields after "(comm)": state is field 3; utime, stime are fields 14, 15
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return math.NaN()
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return float64(u+st) / float64(*clkTck)
}

func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return math.NaN()
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

func machineBusy() float64 {
	b, err := ioutil.ReadFile("/proc/stat")
	if err != nil {
		return math.NaN()
	}
	line := strings.SplitN(string(b), "\n", 2)[0]
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return math.NaN()
	}
	var busy int64
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		// user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
		if i == 3 || i == 4 || i >= 8 {
			continue
		}
		busy += n
	}
	return float64(busy) / float64(*clkTck)
}

func sampleCPU() cpuSample {
	return cpuSample{at: time.Now(), server: serverCPU(), self: selfCPU(), machBusy: machineBusy()}
}

// serverMem returns VmRSS and VmHWM of the server in KiB (-1 if unknown).
func serverMem() (rss, hwm int64) {
	rss, hwm = -1, -1
	if *serverPid == 0 {
		return
	}
	b, err := ioutil.ReadFile(fmt.Sprintf("/proc/%d/status", *serverPid))
	if err != nil {
		return
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = n
		case "VmHWM:":
			hwm = n
		}
	}
	return
}

func serverAlive() bool {
	if *serverPid == 0 {
		return true
	}
	b, err := ioutil.ReadFile(fmt.Sprintf("/proc/%d/stat", *serverPid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

func mib(kib int64) string {
	if kib < 0 {
		return "nan"
	}
	return fmt.Sprintf("%.1f", float64(kib)/1024)
}

// ---------------------------------------------------------------------------
// keep-alive streams

type lease struct {
	id       int64 // 0 until granted
	lastSend int64 // unix nanos of the last keep-alive request sent
	lost     int32 // 1 once answered TTL <= 0
}

type stream struct {
	idx    int
	leases []int // indexes into all
	cli    pb.Lease_LeaseKeepAliveClient
	cancel context.CancelFunc
	done   chan struct{} // receiver ended

	sent     int64 // atomics
	recv     int64
	ttlBad   int64
	idBad    int64
	errMsg   atomic.Value // string
	measMu   sync.Mutex
	measLat  []int64 // latencies (ns) of answers received while measuring
	measured int32   // 1 while the window is open
}

var (
	all   []lease
	byID  sync.Map // lease ID -> index in all
	stopC = make(chan struct{})
)

// sender: renews the stream's leases once per interval each, spread evenly.
// Lease k of the stream (k = position in s.leases) is due at
// round*interval + (k + phase)/m*interval, phase = s.idx/streams, so over all
// streams the renewals are spread over the interval.
func (s *stream) sender(t0 time.Time, wg *sync.WaitGroup) {
	defer wg.Done()
	m := len(s.leases)
	if m == 0 {
		return
	}
	phase := float64(s.idx) / float64(*nStreams)
	per := float64(*interval)
	var next int64 // renewals scheduled so far (sent or skipped)
	tk := time.NewTicker(*tickPeriod)
	defer tk.Stop()
	for {
		select {
		case <-stopC:
			return
		case <-tk.C:
		}
		el := float64(time.Since(t0))
		due := int64(math.Floor(el/per*float64(m)-phase)) + 1
		for ; next < due; next++ {
			li := s.leases[int(next%int64(m))]
			l := &all[li]
			id := atomic.LoadInt64(&l.id)
			if id == 0 {
				continue // not granted yet
			}
			atomic.StoreInt64(&l.lastSend, time.Now().UnixNano())
			if err := s.cli.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
				s.errMsg.Store(fmt.Sprintf("send: %v", err))
				return
			}
			atomic.AddInt64(&s.sent, 1)
		}
	}
}

func (s *stream) receiver() {
	defer close(s.done)
	for {
		r, err := s.cli.Recv()
		if err != nil {
			if err != io.EOF && status.Code(err) != codes.Canceled {
				s.errMsg.Store(fmt.Sprintf("recv: %v", err))
			}
			return
		}
		now := time.Now().UnixNano()
		v, ok := byID.Load(r.ID)
		if !ok {
			atomic.AddInt64(&s.idBad, 1)
			atomic.AddInt64(&s.recv, 1)
			continue
		}
		l := &all[v.(int)]
		if r.TTL <= 0 {
			atomic.AddInt64(&s.ttlBad, 1)
			atomic.StoreInt32(&l.lost, 1)
		}
		if atomic.LoadInt32(&s.measured) == 1 {
			lat := now - atomic.LoadInt64(&l.lastSend)
			s.measMu.Lock()
			s.measLat = append(s.measLat, lat)
			s.measMu.Unlock()
		}
		atomic.AddInt64(&s.recv, 1)
	}
}

func sumStreams(ss []*stream, f func(*stream) *int64) int64 {
	var n int64
	for _, s := range ss {
		n += atomic.LoadInt64(f(s))
	}
	return n
}

func sentOf(s *stream) *int64 { return &s.sent }
func recvOf(s *stream) *int64 { return &s.recv }

// ---------------------------------------------------------------------------

// parallel runs f(i) for i in [0,n) on conc goroutines; stops at the first
// error and returns it.
func parallel(n, conc int, f func(i int) error) error {
	var next int64 = -1
	var first atomic.Value
	var wg sync.WaitGroup
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if first.Load() != nil {
					return
				}
				i := int(atomic.AddInt64(&next, 1))
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					first.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if e := first.Load(); e != nil {
		return e.(error)
	}
	return nil
}

func percentile(sorted []int64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	if i < 0 {
		i = 0
	}
	return float64(sorted[i]) / 1e6
}

func main() {
	flag.Parse()
	if *nLeases <= 0 || *nStreams <= 0 || *nConns <= 0 || *ttl <= 0 {
		die("--leases, --streams, --conns and --ttl must be positive")
	}
	ctx := context.Background()

	conns := make([]*grpc.ClientConn, *nConns)
	for i := range conns {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := grpc.DialContext(dctx, *endpoint, grpc.WithInsecure(), grpc.WithBlock())
		cancel()
		if err != nil {
			die("dial %s: %v", *endpoint, err)
		}
		conns[i] = c
	}
	lc := pb.NewLeaseClient(conns[0])
	kv := pb.NewKVClient(conns[0])

	rssStart, _ := serverMem()
	logf("server pid %d, RSS at start %s MiB", *serverPid, mib(rssStart))

	// probe: one grant, to tell Unimplemented apart before starting anything
	{
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		r, err := lc.LeaseGrant(cctx, &pb.LeaseGrantRequest{TTL: *ttl})
		cancel()
		if status.Code(err) == codes.Unimplemented {
			logf("UNIMPLEMENTED LeaseGrant: %v", err)
			fmt.Printf("RESULT status=unimplemented\n")
			os.Exit(unimplExit)
		}
		if err != nil {
			die("probe LeaseGrant: %v", err)
		}
		// one keep-alive of the probe lease on its own stream
		cctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		ka, err := lc.LeaseKeepAlive(cctx)
		if err == nil {
			err = ka.Send(&pb.LeaseKeepAliveRequest{ID: r.ID})
		}
		var kr *pb.LeaseKeepAliveResponse
		if err == nil {
			kr, err = ka.Recv()
		}
		cancel()
		if status.Code(err) == codes.Unimplemented {
			logf("UNIMPLEMENTED LeaseKeepAlive: %v", err)
			fmt.Printf("RESULT status=unimplemented\n")
			os.Exit(unimplExit)
		}
		if err != nil {
			die("probe LeaseKeepAlive: %v", err)
		}
		if kr.ID != r.ID || kr.TTL <= 0 {
			logf("WARNING: probe keep-alive of lease %d answered ID %d TTL %d", r.ID, kr.ID, kr.TTL)
		}
		cctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		_, _ = lc.LeaseRevoke(cctx, &pb.LeaseRevokeRequest{ID: r.ID}) // if that fails, it expires
		cancel()
	}

	all = make([]lease, *nLeases)
	ss := make([]*stream, *nStreams)
	for i := range ss {
		sctx, cancel := context.WithCancel(ctx)
		cli, err := pb.NewLeaseClient(conns[i%len(conns)]).LeaseKeepAlive(sctx)
		if err != nil {
			die("open LeaseKeepAlive stream %d: %v", i, err)
		}
		ss[i] = &stream{idx: i, cli: cli, cancel: cancel, done: make(chan struct{})}
	}
	for j := 0; j < *nLeases; j++ {
		s := ss[j%len(ss)]
		s.leases = append(s.leases, j)
	}

	t0 := time.Now()
	var sendWG sync.WaitGroup
	for _, s := range ss {
		sendWG.Add(1)
		go s.sender(t0, &sendWG)
		go s.receiver()
	}

	// grant (keep-alives of granted leases start right away)
	cpuG0 := sampleCPU()
	err := parallel(*nLeases, *grantConc, func(i int) error {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		r, err := lc.LeaseGrant(cctx, &pb.LeaseGrantRequest{TTL: *ttl})
		if err != nil {
			return fmt.Errorf("LeaseGrant #%d: %v", i, err)
		}
		if r.Error != "" || r.ID == 0 {
			return fmt.Errorf("LeaseGrant #%d: ID %d error %q", i, r.ID, r.Error)
		}
		byID.Store(r.ID, i)
		atomic.StoreInt64(&all[i].id, r.ID)
		return nil
	})
	if err != nil {
		die("%v", err)
	}
	grantDur := time.Since(cpuG0.at)
	nKeys := 0
	if *keyEvery > 0 {
		nKeys = (*nLeases + *keyEvery - 1) / *keyEvery
		err = parallel(nKeys, *grantConc, func(k int) error {
			i := k * *keyEvery
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			_, err := kv.Put(cctx, &pb.PutRequest{Key: []byte(fmt.Sprintf("%s%06d", keyPrefix, i)),
				Value: []byte("v"), Lease: all[i].id})
			if err != nil {
				return fmt.Errorf("Put key of lease #%d: %v", i, err)
			}
			return nil
		})
		if err != nil {
			die("%v", err)
		}
	}
	cpuG1 := sampleCPU()
	rssGranted, _ := serverMem()
	logf("granted %d leases (TTL %ds) in %.2fs (%.0f/s), %d keys attached; setup %.2fs, server CPU %.2fs; RSS %s MiB",
		*nLeases, *ttl, grantDur.Seconds(), float64(*nLeases)/grantDur.Seconds(), nKeys,
		cpuG1.at.Sub(cpuG0.at).Seconds(), cpuG1.server-cpuG0.server, mib(rssGranted))
	logf("%d streams over %d connection(s), %d keep-alives per %v (target %.0f/s); warm-up %v, window %v",
		*nStreams, *nConns, *nLeases, *interval, float64(*nLeases)/interval.Seconds(), *warmup, *duration)

	// warm-up + window, sampling RSS every second
	var rssPeak int64 = rssGranted
	died := false
	sampleUntil := func(end time.Time, report bool) {
		last := sampleCPU()
		lastSent, lastRecv := sumStreams(ss, sentOf), sumStreams(ss, recvOf)
		nextProgress := time.Now().Add(*progress)
		for time.Now().Before(end) && !died {
			d := time.Until(end)
			if d > time.Second {
				d = time.Second
			}
			time.Sleep(d)
			if r, _ := serverMem(); r > rssPeak {
				rssPeak = r
			}
			if !serverAlive() {
				died = true
				logf("ERROR: server process %d is gone", *serverPid)
			}
			if report && *progress > 0 && !time.Now().Before(nextProgress) {
				c := sampleCPU()
				se, re := sumStreams(ss, sentOf), sumStreams(ss, recvOf)
				el := c.at.Sub(last.at).Seconds()
				r, _ := serverMem()
				logf("  +%4.0fs server %5.1f%% gen %5.1f%% machine %5.1f%%  sent %6.0f/s answered %6.0f/s  RSS %s MiB",
					time.Since(t0).Seconds(), 100*(c.server-last.server)/el, 100*(c.self-last.self)/el,
					100*(c.machBusy-last.machBusy)/el, float64(se-lastSent)/el, float64(re-lastRecv)/el, mib(r))
				last, lastSent, lastRecv = c, se, re
				nextProgress = nextProgress.Add(*progress)
			}
		}
	}
	sampleUntil(time.Now().Add(*warmup), true)

	for _, s := range ss {
		atomic.StoreInt32(&s.measured, 1)
	}
	w0 := sampleCPU()
	sent0, recv0 := sumStreams(ss, sentOf), sumStreams(ss, recvOf)
	sampleUntil(w0.at.Add(*duration), true)
	w1 := sampleCPU()
	sent1, recv1 := sumStreams(ss, sentOf), sumStreams(ss, recvOf)
	for _, s := range ss {
		atomic.StoreInt32(&s.measured, 0)
	}
	rssEnd, hwm := serverMem()
	if rssEnd > rssPeak {
		rssPeak = rssEnd
	}

	// stop sending, drain answers
	close(stopC)
	sendersDone := make(chan struct{})
	go func() { sendWG.Wait(); close(sendersDone) }()
	select {
	case <-sendersDone:
	case <-time.After(5 * time.Second): // a sender stuck in Send (flow control)
		for _, s := range ss {
			s.errMsg.Store("send blocked for 5 s at the end of the run")
			s.cancel()
		}
		<-sendersDone
	}
	drainEnd := time.Now().Add(drainPeriod)
	for time.Now().Before(drainEnd) && sumStreams(ss, recvOf) < sumStreams(ss, sentOf) {
		time.Sleep(20 * time.Millisecond)
	}
	totalSent, totalRecv := sumStreams(ss, sentOf), sumStreams(ss, recvOf)
	var ttlBad, idBad int64
	var streamErrs []string
	var lats []int64
	for _, s := range ss {
		ttlBad += atomic.LoadInt64(&s.ttlBad)
		idBad += atomic.LoadInt64(&s.idBad)
		if m, ok := s.errMsg.Load().(string); ok && m != "" {
			streamErrs = append(streamErrs, fmt.Sprintf("stream %d: %s", s.idx, m))
		}
		s.measMu.Lock()
		lats = append(lats, s.measLat...)
		s.measMu.Unlock()
		_ = s.cli.CloseSend()
	}
	for _, s := range ss {
		select {
		case <-s.done:
		case <-time.After(2 * time.Second):
		}
		s.cancel()
	}
	sort.Slice(lats, func(a, b int) bool { return lats[a] < lats[b] })
	lostAnswered := 0
	for i := range all {
		if atomic.LoadInt32(&all[i].lost) == 1 {
			lostAnswered++
		}
	}

	// after the window: does every lease still exist, every key too?
	lostTTL := 0
	var lostMu sync.Mutex
	var minRemaining int64 = math.MaxInt64
	checkErr := ""
	if !died {
		err = parallel(*nLeases, *grantConc, func(i int) error {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			r, err := lc.LeaseTimeToLive(cctx, &pb.LeaseTimeToLiveRequest{ID: all[i].id})
			if err != nil {
				return fmt.Errorf("LeaseTimeToLive #%d: %v", i, err)
			}
			lostMu.Lock()
			if r.TTL <= 0 {
				lostTTL++
			} else if r.TTL < minRemaining {
				minRemaining = r.TTL
			}
			lostMu.Unlock()
			return nil
		})
		if err != nil {
			checkErr = err.Error()
		}
	}
	keysLeft := int64(-1)
	if !died && nKeys > 0 {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		r, err := kv.Range(cctx, &pb.RangeRequest{Key: []byte(keyPrefix), RangeEnd: []byte(prefixEnd(keyPrefix)), CountOnly: true})
		cancel()
		if err != nil {
			if checkErr == "" {
				checkErr = fmt.Sprintf("Range count of keys: %v", err)
			}
		} else {
			keysLeft = r.Count
		}
	}
	if minRemaining == math.MaxInt64 {
		minRemaining = -1
	}

	win := w1.at.Sub(w0.at).Seconds()
	unanswered := totalSent - totalRecv
	keysMissing := int64(0)
	if keysLeft >= 0 {
		keysMissing = int64(nKeys) - keysLeft
	}
	failures := ttlBad + idBad + unanswered + int64(len(streamErrs)) + int64(lostTTL) + keysMissing
	if died {
		failures++
	}
	if checkErr != "" {
		failures++
	}

	logf("window %.1fs: server CPU %.1f%%, generator CPU %.1f%%, machine busy %.1f%% (of one core)",
		win, 100*(w1.server-w0.server)/win, 100*(w1.self-w0.self)/win, 100*(w1.machBusy-w0.machBusy)/win)
	logf("window: sent %.0f/s, answered %.0f/s (target %.0f/s); latency p50 %.2f ms p99 %.2f ms max %.2f ms (%d answers)",
		float64(sent1-sent0)/win, float64(recv1-recv0)/win, float64(*nLeases)/interval.Seconds(),
		percentile(lats, 50), percentile(lats, 99), percentile(lats, 100), len(lats))
	logf("server RSS MiB: start %s, after grant %s, peak %s, end %s (VmHWM %s)",
		mib(rssStart), mib(rssGranted), mib(rssPeak), mib(rssEnd), mib(hwm))
	logf("failures %d: TTL<=0 answers %d (%d leases), unknown-ID answers %d, unanswered %d of %d, stream errors %d, leases gone after the run %d of %d (min TTL left %d s), keys missing %d of %d, server died %v",
		failures, ttlBad, lostAnswered, idBad, unanswered, totalSent, len(streamErrs), lostTTL, *nLeases, minRemaining, keysMissing, nKeys, died)
	for _, e := range streamErrs {
		logf("  %s", e)
	}
	if checkErr != "" {
		logf("  check after the run: %s", checkErr)
	}

	kv2 := func(k string, v interface{}) string { return fmt.Sprintf("%s=%v", k, v) }
	f1 := func(x float64) string { return strconv.FormatFloat(x, 'f', 2, 64) }
	fields := []string{
		kv2("status", "ok"),
		kv2("leases", *nLeases), kv2("ttl", *ttl), kv2("streams", *nStreams), kv2("conns", *nConns),
		kv2("keys", nKeys), kv2("warmup_s", warmup.Seconds()), kv2("window_s", f1(win)),
		kv2("grant_s", f1(grantDur.Seconds())),
		kv2("server_cpu_pct", f1(100*(w1.server-w0.server)/win)),
		kv2("gen_cpu_pct", f1(100*(w1.self-w0.self)/win)),
		kv2("machine_cpu_pct", f1(100*(w1.machBusy-w0.machBusy)/win)),
		kv2("other_cpu_pct", f1(100*((w1.machBusy-w0.machBusy)-(w1.server-w0.server)-(w1.self-w0.self))/win)),
		kv2("target_rate", f1(float64(*nLeases)/interval.Seconds())),
		kv2("sent_rate", f1(float64(sent1-sent0)/win)),
		kv2("answered_rate", f1(float64(recv1-recv0)/win)),
		kv2("lat_p50_ms", f1(percentile(lats, 50))), kv2("lat_p99_ms", f1(percentile(lats, 99))),
		kv2("lat_max_ms", f1(percentile(lats, 100))),
		kv2("rss_start_mib", mib(rssStart)), kv2("rss_granted_mib", mib(rssGranted)),
		kv2("rss_peak_mib", mib(rssPeak)), kv2("rss_end_mib", mib(rssEnd)), kv2("rss_hwm_mib", mib(hwm)),
		kv2("ttl_le0", ttlBad), kv2("leases_lost_answered", lostAnswered), kv2("unknown_id", idBad),
		kv2("unanswered", unanswered), kv2("stream_errors", len(streamErrs)),
		kv2("leases_gone", lostTTL), kv2("keys_missing", keysMissing), kv2("server_died", died),
		kv2("failures", failures),
	}
	fmt.Printf("RESULT %s\n", strings.Join(fields, " "))
}

func prefixEnd(p string) string {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return "\x00"
}
