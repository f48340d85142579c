# shellcheck shell=bash
# compat-tests/lib/bench.sh -- etcd's own load generator, `tools/benchmark` of
# etcd v3.5.16, built for the Cairn benchmark scripts.
#
#   source compat-tests/lib/deps.sh    # (sourced here if not yet)
#   source compat-tests/lib/bench.sh
#   cairn_ensure_etcd_benchmark        # exports CAIRN_ETCD_BENCHMARK (the binary)
#
# Why: `benchmark` (put, txn-put, range, watch-latency, ...) is the tool etcd's
# performance docs use; running the very same generator against real etcd and
# against Cairn makes the numbers comparable. Debian ships no binary of it (its
# etcd packaging excludes tools/), so it is built from source.
#
# What is fetched (everything from Debian trixie, through apt's ordinary
# client, with a PRIVATE apt configuration under
# $CAIRN_CACHE/etcd-benchmark/apt -- its own sources.list with
# `deb`/`deb-src http://deb.debian.org/debian trixie main`, its own package
# lists, an empty dpkg status; the system's apt sources, lists and installed
# packages are neither read nor changed, and nothing is installed):
#   - the `etcd` SOURCE package (3.5.16-4): `apt-get source --download-only`,
#     unpacked with `dpkg-source -x` (or, without dpkg-dev, the orig tarball
#     alone: no Debian patch touches tools/benchmark). Only tools/benchmark and
#     the top-level go.mod are used from it.
#   - Go 1.24 (`golang-1.24-go`, `golang-1.24-src`) and the Go source packages
#     the tool imports, all `apt-get download`ed and `dpkg -x`ed into
#     $CAIRN_CACHE/etcd-benchmark/root (a private GOPATH under
#     root/usr/share/gocode): golang-etcd-server-dev (clientv3, pkg/report, the
#     server packages the mvcc subcommand imports) and its imported
#     dependencies. The list below is exactly the set of packages owning a
#     directory in `go list -deps` of tools/benchmark (31 packages + Go); if a
#     Debian update ever makes it insufficient, the build falls back to the
#     full apt dependency closure of those packages (about 160 debs, 140 MB)
#     and retries once.
# The tool is built in GOPATH mode (GO111MODULE=off; /v3 import paths resolve by
# Go's "minimal module compatibility"), CGO_ENABLED=0, under `nice -n 10`, into
# $CAIRN_CACHE/etcd-benchmark/bin/benchmark (about 1-2 minutes on 2 cores,
# downloads about 70 MB). Later calls only check that the binary and its cache
# key are there (milliseconds). Concurrent callers serialise on a flock.
#
# Safe under `set -euo pipefail`; needs no root (as root, apt's download
# sandbox user is set to root, because the cache lives under a 0700 $HOME).

if ! declare -F cairn_log >/dev/null 2>&1; then
  # shellcheck source=deps.sh
  source "$(dirname "${BASH_SOURCE[0]}")/deps.sh"
fi

CAIRN_BENCH_RELEASE="${CAIRN_BENCH_RELEASE:-trixie}"
CAIRN_BENCH_MIRROR="${CAIRN_BENCH_MIRROR:-http://deb.debian.org/debian}"
CAIRN_BENCH_GO_PKGS=(golang-1.24-go golang-1.24-src)
# the Debian packages owning the non-standard packages of
# `go list -deps go.etcd.io/etcd/tools/benchmark` (etcd 3.5.16-4, trixie)
CAIRN_BENCH_GODEV_PKGS=(
  golang-etcd-server-dev
  golang-github-beorn7-perks-dev golang-github-bgentry-speakeasy-dev
  golang-github-cespare-xxhash-dev golang-github-coreos-bbolt-dev
  golang-github-coreos-go-semver-dev golang-github-coreos-go-systemd-dev
  golang-github-dustin-go-humanize-dev golang-github-gogo-protobuf-dev
  golang-github-golang-protobuf-1-5-dev golang-github-google-btree-dev
  golang-github-mattn-go-runewidth-dev golang-github-munnerz-goautoneg-dev
  golang-github-prometheus-client-golang-dev golang-github-prometheus-client-model-dev
  golang-github-prometheus-common-dev golang-github-prometheus-procfs-dev
  golang-github-rivo-uniseg-dev golang-github-spf13-cobra-dev
  golang-github-spf13-pflag-dev golang-go.uber-atomic-dev
  golang-go.uber-multierr-dev golang-go.uber-zap-dev
  golang-golang-x-net-dev golang-golang-x-sys-dev golang-golang-x-text-dev
  golang-golang-x-time-dev golang-google-genproto-dev golang-google-grpc-dev
  golang-google-protobuf-dev golang-gopkg-cheggaaa-pb.v1-dev
)

_cairn_bench_dir() { echo "$CAIRN_CACHE/etcd-benchmark"; }

# the cache key: what the binary was built from (by name; versions are logged)
_cairn_bench_key() {
  printf '%s\n' "v1" "$CAIRN_BENCH_RELEASE" "$CAIRN_BENCH_MIRROR" "${CAIRN_BENCH_GO_PKGS[@]}" "${CAIRN_BENCH_GODEV_PKGS[@]}" \
    | sha256sum | cut -c1-16
}

# _cairn_bench_apt ARGS...: apt-get with the private configuration
_cairn_bench_apt() {
  local a; a="$(_cairn_bench_dir)/apt"
  local opts=(
    -o "Dir::Etc::SourceList=$a/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$a/lists" -o "Dir::State::status=$a/status"
    -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
    -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
    -o APT::Architecture="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
  )
  [ "$(id -u)" -eq 0 ] && opts+=(-o APT::Sandbox::User=root)
  apt-get "${opts[@]}" "$@"
}

_cairn_bench_apt_update() {
  local a; a="$(_cairn_bench_dir)/apt"
  mkdir -p "$a/lists/partial"
  printf 'deb %s %s main\ndeb-src %s %s main\n' "$CAIRN_BENCH_MIRROR" "$CAIRN_BENCH_RELEASE" \
    "$CAIRN_BENCH_MIRROR" "$CAIRN_BENCH_RELEASE" > "$a/sources.list"
  : > "$a/status"
  cairn_log "apt-get update (private lists for $CAIRN_BENCH_RELEASE in $a)"
  _cairn_bench_apt -qq update >&2 || { cairn_die "apt-get update of the private $CAIRN_BENCH_RELEASE lists failed"; return 1; }
  touch "$a/.updated"
}

# _cairn_bench_apt_retry CMD...: run an apt step; on failure refresh the
# private lists once (stale lists name files the mirror no longer has) and retry
_cairn_bench_apt_retry() {
  if "$@"; then return 0; fi
  cairn_log "retrying after refreshing the private package lists"
  _cairn_bench_apt_update || return 1
  "$@"
}

_cairn_bench_download() {  # DIR PKG...: apt-get download PKG... into DIR
  local d="$1"; shift
  (cd "$d" && _cairn_bench_apt -qq download "$@" >&2)
}

_cairn_bench_source() {  # DIR: apt-get source --download-only etcd into DIR
  (cd "$1" && _cairn_bench_apt -qq source --download-only etcd >&2)
}

# _cairn_bench_build: the slow path (lock held by the caller)
_cairn_bench_build() {
  local dir; dir="$(_cairn_bench_dir)"
  local t0=$SECONDS
  [ -f "$dir/apt/.updated" ] || _cairn_bench_apt_update || return 1

  # 1. the etcd source package -> tools/benchmark + go.mod
  rm -rf "$dir/dl" "$dir/src"; mkdir -p "$dir/dl" "$dir/src"
  cairn_log "apt-get source --download-only etcd ($CAIRN_BENCH_RELEASE)"
  _cairn_bench_apt_retry _cairn_bench_source "$dir/dl" || { cairn_die "apt-get source etcd failed"; return 1; }
  local dsc orig ver up
  dsc=$(ls "$dir"/dl/etcd_*.dsc 2>/dev/null | head -1 || true)
  orig=$(ls "$dir"/dl/etcd_*.orig.tar.* 2>/dev/null | head -1 || true)
  [ -n "$dsc" ] && [ -n "$orig" ] || { cairn_die "etcd source package incomplete in $dir/dl"; return 1; }
  ver=$(sed -n 's/^Version: //p' "$dsc" | head -1)
  up=${ver#*:}; up=${up%-*}
  case "$up" in 3.5.*) ;; *) cairn_die "expected etcd 3.5.x source from $CAIRN_BENCH_RELEASE, got '$ver'"; return 1 ;; esac
  local src="$dir/src/etcd"
  if command -v dpkg-source >/dev/null 2>&1; then
    dpkg-source -x "$dsc" "$src" > "$dir/src/dpkg-source.log" 2>&1 \
      || { cat "$dir/src/dpkg-source.log" >&2; cairn_die "dpkg-source -x $dsc failed"; return 1; }
  else
    cairn_log "dpkg-source not found (dpkg-dev): using the orig tarball (no Debian patch touches tools/benchmark)"
    mkdir -p "$src"
    tar -xf "$orig" -C "$src" --strip-components=1 || { cairn_die "cannot unpack $orig"; return 1; }
  fi
  [ -f "$src/tools/benchmark/main.go" ] && [ -f "$src/go.mod" ] || { cairn_die "tools/benchmark missing in $src"; return 1; }
  echo "$ver" > "$dir/src/version"

  # 2. Go 1.24 and the Go source packages, extracted into a private root
  local debs="$dir/debs" root="$dir/root"
  rm -rf "$debs" "$root"; mkdir -p "$debs" "$root"
  cairn_log "apt-get download ${#CAIRN_BENCH_GO_PKGS[@]} + ${#CAIRN_BENCH_GODEV_PKGS[@]} packages ($CAIRN_BENCH_RELEASE) into $debs"
  _cairn_bench_apt_retry _cairn_bench_download "$debs" "${CAIRN_BENCH_GO_PKGS[@]}" "${CAIRN_BENCH_GODEV_PKGS[@]}" \
    || { cairn_die "apt-get download of Go / Go sources failed"; return 1; }
  local deb
  for deb in "$debs"/*.deb; do dpkg -x "$deb" "$root"; done
  local go="$root/usr/lib/go-1.24/bin/go"
  [ -x "$go" ] || { cairn_die "go missing after extracting golang-1.24-go into $root"; return 1; }
  local devver; devver=$(ls "$debs" | sed -n 's/^golang-etcd-server-dev_\([^_]*\)_.*/\1/p' | sed 's/%3a/:/' || true)
  [ "${devver%-*}" = "${ver%-*}" ] || cairn_log "warning: golang-etcd-server-dev $devver differs from the etcd source $ver"

  # 3. GOPATH overlay: go.etcd.io/etcd/{go.mod,tools/benchmark} from the source
  # package; everything else from the extracted gocode (GOPATH order)
  local ovl="$dir/gopath"
  rm -rf "$ovl"; mkdir -p "$ovl/src/go.etcd.io/etcd/tools"
  cp "$src/go.mod" "$ovl/src/go.etcd.io/etcd/go.mod"
  cp -a "$src/tools/benchmark" "$ovl/src/go.etcd.io/etcd/tools/benchmark"

  # 4. build (retry once with the full dependency closure if a package is missing)
  mkdir -p "$dir/bin" "$CAIRN_CACHE/go-build"
  local attempt
  for attempt in 1 2; do
    cairn_log "building tools/benchmark (etcd $ver, $("$go" version | awk '{print $3}'), GOPATH mode) under nice -n 10"
    if (cd "$ovl/src/go.etcd.io/etcd/tools/benchmark" && nice -n 10 env -u GOROOT GO111MODULE=off \
          GOPATH="$ovl:$root/usr/share/gocode" GOFLAGS= GOCACHE="$CAIRN_CACHE/go-build" GOTOOLCHAIN=local \
          CGO_ENABLED=0 "$go" build -o "$dir/bin/benchmark.tmp" . ) > "$dir/build.log" 2>&1; then
      break
    fi
    if [ "$attempt" = 2 ] || ! grep -q 'cannot find package' "$dir/build.log"; then
      sed 's/^/    /' "$dir/build.log" | tail -40 >&2
      cairn_die "go build of tools/benchmark failed (log: $dir/build.log)"; return 1
    fi
    cairn_log "a Go package is missing; fetching the full apt dependency closure and retrying"
    local sim extra
    sim=$(_cairn_bench_apt -s -o Debug::NoLocking=1 install --no-install-recommends "${CAIRN_BENCH_GODEV_PKGS[@]}" 2>&1) \
      || { printf '%s\n' "$sim" >&2; cairn_die "apt-get -s install (closure) failed"; return 1; }
    extra=$(printf '%s\n' "$sim" | awk '/^Inst golang-/ {print $2}' | grep -vE '^golang-(go|src|doc|[0-9.]+-(go|src|doc))$' || true)
    # shellcheck disable=SC2086
    _cairn_bench_download "$debs" $extra || { cairn_die "apt-get download of the closure failed"; return 1; }
    for deb in "$debs"/*.deb; do dpkg -x "$deb" "$root"; done
  done
  "$dir/bin/benchmark.tmp" --help >/dev/null 2>&1 || { cairn_die "the built benchmark does not run"; return 1; }
  mv -f "$dir/bin/benchmark.tmp" "$dir/bin/benchmark"
  { echo "etcd source $ver"; echo "golang-etcd-server-dev $devver"; "$go" version; ls "$debs"; } > "$dir/bin/benchmark.info"
  rm -rf "$dir/dl"   # the unpacked source stays in $dir/src
  cairn_log "built $dir/bin/benchmark in $((SECONDS - t0))s"
}

# cairn_ensure_etcd_benchmark: exports CAIRN_ETCD_BENCHMARK, the path of etcd
# 3.5's tools/benchmark binary (built on first use, then cached).
cairn_ensure_etcd_benchmark() {
  local dir bin key
  dir="$(_cairn_bench_dir)"; bin="$dir/bin/benchmark"; key="$(_cairn_bench_key)"
  if [ -x "$bin" ] && [ "$(cat "$bin.key" 2>/dev/null)" = "$key" ]; then
    CAIRN_ETCD_BENCHMARK="$bin"; export CAIRN_ETCD_BENCHMARK; return 0
  fi
  mkdir -p "$dir/bin"
  local rc=0
  (
    flock -w 1800 9 || { cairn_die "timed out waiting for $dir/.lock"; exit 1; }
    if [ -x "$bin" ] && [ "$(cat "$bin.key" 2>/dev/null)" = "$key" ]; then exit 0; fi
    rm -f "$bin.key"
    _cairn_bench_build || exit 1
    echo "$key" > "$bin.key"
  ) 9>"$dir/.lock" || rc=$?
  [ "$rc" -eq 0 ] || { cairn_die "could not build etcd's tools/benchmark"; return 1; }
  CAIRN_ETCD_BENCHMARK="$bin"; export CAIRN_ETCD_BENCHMARK
}
