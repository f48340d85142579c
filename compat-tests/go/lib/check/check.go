// Package check is the tiny harness shared by the programs of compat-tests/go.
//
// compat-tests/go/run copies this directory into a GOPATH in the cache as
// import path "cairncompat/check" before building the programs (GOPATH mode,
// GO111MODULE=off, against Debian's go.etcd.io/etcd 3.4 client sources).
//
// A program is a list of named checks run one after the other, each with its
// own client (own gRPC connection and watch stream, so one check's watchers or
// progress requests cannot leak into another's) and its own timeout. Output is
// one line per check, `ok <suite>/<name>` or `FAIL <suite>/<name>: detail`;
// the exit status is 1 if any check failed, 2 on a usage error.
package check

import (
	"context"
	"flag"
	"fmt"
	"os"
	"regexp"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.uber.org/zap"
)

// Env is what a check gets: a fresh client, a key prefix nobody else uses,
// and a context bounded by the check's timeout.
type Env struct {
	Ctx    context.Context
	Cli    *clientv3.Client
	Prefix string // "/cairn-go/<suite>/<run id>/<check>/"
	Name   string
	Eps    []string

	mu   sync.Mutex
	note string
}

// Notef records a short note (timings, sizes) appended to the check's `ok`
// line in brackets; it does not affect the verdict.
func (e *Env) Notef(format string, a ...interface{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.note != "" {
		e.note += "; "
	}
	e.note += fmt.Sprintf(format, a...)
}

// Check is one named assertion group; Run returns nil on success or an error
// whose message says what was expected and what was seen.
type Check struct {
	Name    string
	Timeout time.Duration
	Run     func(e *Env) error
}

var (
	endpoints = flag.String("endpoints", "127.0.0.1:2379", "comma-separated client endpoints of the server under test")
	runRe     = flag.String("run", "", "only run checks whose name matches this regexp")
	list      = flag.Bool("list", false, "list the check names and exit")
	scale     = flag.Float64("timeout-scale", 1, "multiply every check timeout by this factor")
)

// Endpoints returns the parsed --endpoints (after Main parsed the flags).
func Endpoints() []string {
	var eps []string
	for _, e := range strings.Split(*endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	return eps
}

// NewClient dials the endpoints with a quiet client-side logger.
func NewClient(eps []string) (*clientv3.Client, error) {
	lc := zap.NewProductionConfig()
	lc.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	lc.OutputPaths = []string{"stderr"}
	lc.ErrorOutputPaths = []string{"stderr"}
	return clientv3.New(clientv3.Config{
		Endpoints:   eps,
		DialTimeout: 5 * time.Second,
		LogConfig:   &lc,
	})
}

// Main runs the checks of one suite and exits.
func Main(suite string, checks []Check) {
	flag.Parse()
	var re *regexp.Regexp
	if *runRe != "" {
		var err error
		if re, err = regexp.Compile(*runRe); err != nil {
			fmt.Fprintf(os.Stderr, "bad --run: %v\n", err)
			os.Exit(2)
		}
	}
	selected := func(c Check) bool {
		return re == nil || re.MatchString(suite+"/"+c.Name) || re.MatchString(c.Name)
	}
	if *list {
		// the checks a run with the same --run would run (compat-tests/go/run
		// counts these lines: its minimum count)
		for _, c := range checks {
			if selected(c) {
				fmt.Printf("%s/%s\n", suite, c.Name)
			}
		}
		os.Exit(0)
	}
	eps := Endpoints()
	if len(eps) == 0 {
		fmt.Fprintln(os.Stderr, "no --endpoints")
		os.Exit(2)
	}
	runID := fmt.Sprintf("%x", time.Now().UnixNano())
	failed := 0
	for _, c := range checks {
		full := suite + "/" + c.Name
		if !selected(c) {
			continue
		}
		t0 := time.Now()
		note, err := runOne(suite, runID, c, eps)
		dt := time.Since(t0).Round(time.Millisecond)
		if note != "" {
			note = " [" + oneLine(note) + "]"
		}
		if err != nil {
			failed++
			fmt.Printf("FAIL %s: %s (%v)%s\n", full, oneLine(err.Error()), dt, note)
		} else {
			fmt.Printf("ok %s (%v)%s\n", full, dt, note)
		}
	}
	if failed > 0 {
		os.Exit(1)
	}
	os.Exit(0)
}

func runOne(suite, runID string, c Check, eps []string) (note string, err error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	timeout = time.Duration(float64(timeout) * *scale)
	cli, err := NewClient(eps)
	if err != nil {
		return "", fmt.Errorf("client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	e := &Env{Ctx: ctx, Cli: cli, Prefix: fmt.Sprintf("/cairn-go/%s/%s/%s/", suite, runID, c.Name), Name: c.Name, Eps: eps}
	done := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("panic: %v\n%s", r, debug.Stack())
			}
		}()
		done <- c.Run(e)
	}()
	select {
	case err = <-done:
		if err == nil && ctx.Err() != nil {
			err = fmt.Errorf("check finished but its %v timeout expired", timeout)
		}
	case <-time.After(timeout + 5*time.Second):
		err = fmt.Errorf("check did not return %v after its %v timeout expired (hung)", 5*time.Second, timeout)
	}
	cancel()
	closed := make(chan struct{})
	go func() { cli.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(3 * time.Second):
	}
	e.mu.Lock()
	note = e.note
	e.mu.Unlock()
	return note, err
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	s = strings.ReplaceAll(s, "\r", "")
	return strings.ReplaceAll(s, "\n", " | ")
}

// Errorf is fmt.Errorf; it exists so checks read uniformly.
func Errorf(format string, a ...interface{}) error { return fmt.Errorf(format, a...) }
