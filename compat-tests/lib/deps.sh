# shellcheck shell=bash
# compat-tests/lib/deps.sh -- sourceable helpers shared by the Cairn compat suites.
#
#   source compat-tests/lib/deps.sh
#   cairn_ensure_etcd      # exports ETCD34_DIR, ETCD35_DIR (each: etcd + etcdctl)
#   cairn_ensure_go_e2e    # exports CAIRN_E2E_* (upstream etcd v3.4.23 tests/e2e binaries)
#   cairn_ensure_go_src    # exports CAIRN_GO, CAIRN_GOPATH_SYS (Go + etcd 3.4 Go sources, no build)
#   cairn_free_port        # prints one free 127.0.0.1 TCP port
#   cairn_free_ports N     # prints N distinct free ports, one per line
#
# Everything downloaded or built lives in ${CAIRN_CACHE:-$HOME/.cache/cairn}.
# Nothing here upgrades an installed Debian package: etcd comes from
# `apt-get download` + `dpkg -x` into the cache; the apt-get installs done here
# (libclang-dev, golang-go, golang-etcd-server-dev) are simulated first and
# refused if the simulation would upgrade anything already installed.
# Safe under `set -euo pipefail`; every function is idempotent and fast when
# its result is already in the cache.

CAIRN_CACHE="${CAIRN_CACHE:-$HOME/.cache/cairn}"
export CAIRN_CACHE

# Pinned expectations. The Debian package versions are read back from the .deb,
# only the upstream major.minor is checked, so a Debian point release still works.
CAIRN_ETCD34_RELEASE="${CAIRN_ETCD34_RELEASE:-bookworm}"
CAIRN_ETCD35_RELEASE="${CAIRN_ETCD35_RELEASE:-trixie}"

cairn_log() { printf '[deps] %s\n' "$*" >&2; }
cairn_die() { printf '[deps] ERROR: %s\n' "$*" >&2; return 1; }

_cairn_sudo() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else cairn_die "need root (or sudo) to run: $*"; fi
}

_CAIRN_APT_UPDATED="${_CAIRN_APT_UPDATED:-0}"
_cairn_apt_update() {
  # Runs `apt-get update` at most once per shell (and only when a caller found
  # the package lists lacking something).
  if [ "$_CAIRN_APT_UPDATED" = 1 ]; then return 0; fi
  cairn_log "apt-get update"
  _cairn_sudo apt-get -o DPkg::Lock::Timeout=300 -qq update >&2
  _CAIRN_APT_UPDATED=1
}

_cairn_apt() { _cairn_sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@"; }

# cairn_ensure_trixie_source: add Debian trixie as a LOW-priority (100) apt
# source, so packages can be fetched from it explicitly (pkg/trixie) while
# nothing installed is ever upgraded from it. Pin first, then the source.
cairn_ensure_trixie_source() {
  local pin=/etc/apt/preferences.d/trixie-low list=/etc/apt/sources.list.d/trixie.list changed=0
  if [ ! -e "$pin" ] && ! grep -rqs 'n=trixie' /etc/apt/preferences /etc/apt/preferences.d/ 2>/dev/null; then
    cairn_log "creating $pin (Pin-Priority 100 for trixie)"
    printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' | _cairn_sudo tee "$pin" >/dev/null
    changed=1
  fi
  if [ ! -e "$list" ] && ! grep -rqsE '^[^#]*\btrixie\b|^Suites:.*\btrixie\b' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null; then
    cairn_log "creating $list"
    printf 'deb http://deb.debian.org/debian trixie main\n' | _cairn_sudo tee "$list" >/dev/null
    changed=1
  fi
  if [ "$changed" = 1 ]; then _CAIRN_APT_UPDATED=0; _cairn_apt_update; fi
}

# _cairn_apt_has PKG RELEASE: does the apt cache know PKG in RELEASE?
# (no `cmd | grep -q` anywhere: under pipefail an early grep exit = SIGPIPE = false)
_cairn_apt_has() { local m; m=$(apt-cache madison "$1" 2>/dev/null || true); grep -qE "[[:space:]]$2(-[a-z]+)?/" <<<"$m"; }

# cairn_apt_install_no_upgrade PKG...: apt-get install, but only if the
# simulation shows no upgrade of an installed package ("Inst name [oldver] ...").
cairn_apt_install_no_upgrade() {
  local sim upgrades
  if ! sim=$(apt-get -s -o Debug::NoLocking=1 install --no-install-recommends "$@" 2>&1); then
    _cairn_apt_update
    sim=$(apt-get -s -o Debug::NoLocking=1 install --no-install-recommends "$@" 2>&1) || { printf '%s\n' "$sim" >&2; cairn_die "cannot install $*"; return 1; }
  fi
  upgrades=$(printf '%s\n' "$sim" | grep -E '^Inst [^ ]+ \[' || true)
  if [ -n "$upgrades" ]; then
    printf '%s\n' "$upgrades" >&2
    cairn_die "installing '$*' would upgrade installed packages (listed above); refusing"
    return 1
  fi
  cairn_log "apt-get install $*"
  _cairn_apt install -y -qq --no-install-recommends "$@" >&2
}

_cairn_pkg_installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

# cairn_ensure_pkgs PKG...: install the missing ones (no upgrades, see above).
cairn_ensure_pkgs() {
  local p missing=()
  for p in "$@"; do _cairn_pkg_installed "$p" || missing+=("$p"); done
  [ "${#missing[@]}" -eq 0 ] && return 0
  local p2
  for p2 in "${missing[@]}"; do apt-cache show "$p2" >/dev/null 2>&1 || { _cairn_apt_update; break; }; done
  cairn_apt_install_no_upgrade "${missing[@]}"
}

# _cairn_extract_etcd MAJMIN RELEASE -> sets _CAIRN_RESULT to the directory
# holding etcd+etcdctl (a global, not stdout, so apt state survives: no subshell)
_cairn_extract_etcd() {
  local majmin="$1" rel="$2"
  local base="$CAIRN_CACHE/etcd/$majmin"
  local bin="$base/root/usr/bin"
  _CAIRN_RESULT=""
  if [ -x "$bin/etcd" ] && [ -x "$bin/etcdctl" ] && [ -f "$base/.complete" ]; then
    _CAIRN_RESULT="$bin"; return 0
  fi
  cairn_log "fetching etcd $majmin from Debian $rel into $base"
  if ! _cairn_apt_has etcd-server "$rel" || ! _cairn_apt_has etcd-client "$rel"; then
    [ "$rel" = trixie ] && cairn_ensure_trixie_source
    _cairn_apt_update
  fi
  local tmp; tmp=$(mktemp -d "${TMPDIR:-/tmp}/cairn-etcd-dl.XXXXXX")
  chmod 755 "$tmp"   # apt's _apt user must be able to write the download
  if ! (cd "$tmp" && apt-get -qq download "etcd-server/$rel" "etcd-client/$rel" >/dev/null 2>&1); then
    _CAIRN_APT_UPDATED=0; _cairn_apt_update
    (cd "$tmp" && apt-get -qq download "etcd-server/$rel" "etcd-client/$rel" >&2) || { rm -rf "$tmp"; cairn_die "apt-get download etcd-server/$rel etcd-client/$rel failed"; return 1; }
  fi
  rm -rf "$base"; mkdir -p "$base/root"
  local deb
  for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$base/root"; basename "$deb" >> "$base/debs.txt"; done
  rm -rf "$tmp"
  [ -x "$bin/etcd" ] && [ -x "$bin/etcdctl" ] || { cairn_die "etcd/etcdctl missing after extracting into $base"; return 1; }
  local v; v=$(ETCD_UNSUPPORTED_ARCH=$(uname -m) "$bin/etcd" --version 2>/dev/null | sed -n 's/^etcd Version: //p')
  case "$v" in "$majmin".*) ;; *) cairn_die "expected etcd $majmin.x from $rel, got '$v'"; return 1 ;; esac
  echo "$v" > "$base/version"
  touch "$base/.complete"
  _CAIRN_RESULT="$bin"
}

# cairn_ensure_etcd: exports ETCD34_DIR (etcd 3.4.x from bookworm) and
# ETCD35_DIR (etcd 3.5.x from trixie), each holding executable etcd + etcdctl.
cairn_ensure_etcd() {
  _cairn_extract_etcd 3.4 "$CAIRN_ETCD34_RELEASE" || return 1
  ETCD34_DIR="$_CAIRN_RESULT"
  _cairn_extract_etcd 3.5 "$CAIRN_ETCD35_RELEASE" || return 1
  ETCD35_DIR="$_CAIRN_RESULT"
  export ETCD34_DIR ETCD35_DIR
}

# ---------------------------------------------------------------------------
# Upstream etcd v3.4 e2e suite (Debian's golang-etcd-server-dev ships it under
# /usr/share/gocode/src/go.etcd.io/etcd/tests/e2e).

CAIRN_GOCODE_SYS=/usr/share/gocode
CAIRN_ETCD_GOPKG=go.etcd.io/etcd

_cairn_go_bin() {
  if command -v go >/dev/null 2>&1; then command -v go; return 0; fi
  local g; for g in /usr/lib/go/bin/go /usr/lib/go-*/bin/go; do [ -x "$g" ] && { echo "$g"; return 0; }; done
  return 1
}

# Installs golang-etcd-server-dev without upgrading anything. Its dependency
# golang-github-coreos-go-systemd-dev pulls libsystemd-dev, which requires
# libsystemd0 of the *same* version; when the archive has a newer systemd than
# the one installed, plain `apt-get install` would upgrade systemd. We pin
# libsystemd-dev to the installed libsystemd0 version when the archive still has
# it (bookworm-security usually does); otherwise we fall back to "extract mode":
# the Go source packages are apt-get download'ed and dpkg -x'ed into the cache
# (only sources are needed to build the test binary). CAIRN_GOCODE_MODE=extract
# forces extract mode.
_cairn_ensure_gocode() {
  # sets _CAIRN_RESULT to the GOPATH entries (colon separated) providing go.etcd.io/etcd 3.4
  local want="golang-etcd-server-dev"
  _CAIRN_RESULT=""
  if [ "${CAIRN_GOCODE_MODE:-apt}" != extract ]; then
    if _cairn_pkg_installed "$want"; then _CAIRN_RESULT="$CAIRN_GOCODE_SYS"; return 0; fi
    apt-cache show "$want/bookworm" >/dev/null 2>&1 || _cairn_apt_update
    local extra=() v
    if _cairn_pkg_installed libsystemd0 && ! _cairn_pkg_installed libsystemd-dev; then
      v=$(dpkg-query -W -f='${Version}' libsystemd0)
      local vs; vs=$(apt-cache madison libsystemd-dev 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}' || true)
      if grep -qxF "$v" <<<"$vs"; then
        extra=("libsystemd-dev=$v")
      fi
    fi
    if cairn_apt_install_no_upgrade "$want/bookworm" "${extra[@]}"; then
      _CAIRN_RESULT="$CAIRN_GOCODE_SYS"; return 0
    fi
    cairn_log "falling back to extracting the Go sources into the cache"
  fi
  local root="$CAIRN_CACHE/gocode-extract"
  if [ -f "$root/.complete" ]; then _CAIRN_RESULT="$root/root$CAIRN_GOCODE_SYS:$CAIRN_GOCODE_SYS"; return 0; fi
  local sim pkgs tmp deb
  sim=$(apt-get -s -o Debug::NoLocking=1 install --no-install-recommends "$want/bookworm" 2>&1) || { printf '%s\n' "$sim" >&2; cairn_die "apt-get -s install $want failed"; return 1; }
  # every new Go source package the install would bring (Architecture: all,
  # shipping /usr/share/gocode); installed ones are already on the system GOPATH
  pkgs=$(printf '%s\n' "$sim" | awk '/^Inst golang-/ && $3 !~ /^\[/ {print $2}' | grep -vE '^golang-(go|src|[0-9.]+-(go|src|doc))$' || true)
  [ -n "$pkgs" ] || { cairn_die "extract mode: no packages to fetch"; return 1; }
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/cairn-gocode.XXXXXX"); chmod 755 "$tmp"
  # shellcheck disable=SC2086
  (cd "$tmp" && apt-get -qq download $pkgs >&2) || { rm -rf "$tmp"; cairn_die "apt-get download of Go sources failed"; return 1; }
  rm -rf "$root"; mkdir -p "$root/root"
  for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$root/root"; done
  rm -rf "$tmp"
  [ -d "$root/root$CAIRN_GOCODE_SYS/src/$CAIRN_ETCD_GOPKG/tests/e2e" ] || { cairn_die "extract mode: tests/e2e missing"; return 1; }
  touch "$root/.complete"
  _CAIRN_RESULT="$root/root$CAIRN_GOCODE_SYS:$CAIRN_GOCODE_SYS"
}

# The one-member substitution (documented in compat-tests/e2e/README.md):
# inside the first `var (` ... `)` block of tests/e2e/cluster_test.go (the shared
# etcdProcessClusterConfig values configNoTLS, configAutoTLS, configTLS,
# configClientTLS, configPeerTLS, ...), every line `clusterSize: 3,` becomes
# `clusterSize: 1,`. Nothing else changes. Test-local configs that ask for 3
# members (e.g. in ctl_v3_member_test.go) are left alone.
CAIRN_E2E_ONE_MEMBER_SED='/^var \($/,/^\)$/ s/^([[:space:]]+clusterSize:[[:space:]]+)3,$/\11,/'

# _cairn_build_e2e VARIANT GOPATH_SYS SRC OUT
_cairn_build_e2e() {
  local variant="$1" gopath_sys="$2" src="$3" out="$4"
  local go; go=$(_cairn_go_bin) || { cairn_die "go not found"; return 1; }
  local gp="$gopath_sys"
  if [ "$variant" = one-member ]; then
    local ovl="$CAIRN_CACHE/e2e/gopath-one-member"
    local dst="$ovl/src/$CAIRN_ETCD_GOPKG/tests/e2e"
    rm -rf "$ovl"; mkdir -p "$dst"
    cp -a "$src/." "$dst/"
    sed -E -i "$CAIRN_E2E_ONE_MEMBER_SED" "$dst/cluster_test.go"
    local n; n=$(diff "$src/cluster_test.go" "$dst/cluster_test.go" | grep -c '^>' || true)
    [ "$n" -ge 1 ] || { cairn_die "one-member substitution changed nothing in cluster_test.go"; return 1; }
    diff -u "$src/cluster_test.go" "$dst/cluster_test.go" > "$CAIRN_CACHE/e2e/one-member.diff" || true
    cairn_log "one-member substitution: $n line(s) changed (see $CAIRN_CACHE/e2e/one-member.diff)"
    gp="$ovl:$gopath_sys"
  fi
  cairn_log "building e2e test binary ($variant) -> $out"
  mkdir -p "$CAIRN_CACHE/go-build" "$(dirname "$out")"
  local t0=$SECONDS
  (cd / && env GO111MODULE=off GOPATH="$gp" GOFLAGS= GOCACHE="$CAIRN_CACHE/go-build" GOTOOLCHAIN=local \
     "$go" test -c -o "$out.tmp" "$CAIRN_ETCD_GOPKG/tests/e2e" >&2) || { cairn_die "go test -c ($variant) failed"; return 1; }
  mv "$out.tmp" "$out"
  cairn_log "built $variant in $((SECONDS - t0))s"
}

# cairn_ensure_go_e2e: exports
#   CAIRN_E2E_TEST_UPSTREAM    e2e test binary of the unmodified suite
#   CAIRN_E2E_TEST_ONE_MEMBER  e2e test binary with the shared configs forced to 1 member
#   CAIRN_E2E_CERT_DIR         the suite's TLS fixtures (-cert-dir)
#   CAIRN_E2E_WORKDIR          cwd to run the binaries in (../../integration/fixtures resolves)
#   CAIRN_E2E_V2_TESTS         file listing the v2-API tests (skipped by compat-tests/e2e/run)
#   CAIRN_E2E_SRC              the suite sources used
cairn_ensure_go_e2e() {
  local go gopath_sys src
  if ! go=$(_cairn_go_bin); then
    cairn_ensure_pkgs golang-go || return 1
    go=$(_cairn_go_bin) || { cairn_die "go still not found after installing golang-go"; return 1; }
  fi
  _cairn_ensure_gocode || return 1
  gopath_sys="$_CAIRN_RESULT"
  local e; src=""
  local IFS_save="$IFS"; IFS=:
  for e in $gopath_sys; do
    if [ -d "$e/src/$CAIRN_ETCD_GOPKG/tests/e2e" ]; then src="$e/src/$CAIRN_ETCD_GOPKG"; break; fi
  done
  IFS="$IFS_save"
  [ -n "$src" ] || { cairn_die "tests/e2e not found in GOPATH $gopath_sys"; return 1; }

  local dir="$CAIRN_CACHE/e2e"
  mkdir -p "$dir"
  # cache key: Debian package version + go version + the substitution; rebuild
  # only when a binary is missing or the key changed
  local key; key=$( { dpkg-query -W -f='${Version}' golang-etcd-server-dev 2>/dev/null || echo extract; "$go" version; echo "$CAIRN_E2E_ONE_MEMBER_SED"; echo "$src"; } | sha256sum | cut -c1-16)
  if [ "$(cat "$dir/key" 2>/dev/null)" != "$key" ]; then rm -f "$dir"/e2e-*.test; fi
  local v
  for v in upstream one-member; do
    [ -x "$dir/e2e-$v.test" ] || _cairn_build_e2e "$v" "$gopath_sys" "$src/tests/e2e" "$dir/e2e-$v.test" || return 1
  done
  echo "$key" > "$dir/key"

  # working directory: configJWT refers to ../../integration/fixtures/...
  local work="$dir/work"
  mkdir -p "$work/tests/e2e" "$work/integration"
  ln -sfn "$src/integration/fixtures" "$work/integration/fixtures"

  # v2-API tests: every Test function defined in a *_test.go file of the suite
  # that enables the v2 API (`.enableV2 = true`) or talks v2 through etcdctl
  # (`"ETCDCTL_API", "2"`). In v3.4.23 that is ctl_v2_test.go, v2_curl_test.go
  # and ctl_v3_migrate_test.go.
  local f
  : > "$dir/v2-tests.txt.tmp"
  for f in "$src"/tests/e2e/*_test.go; do
    if grep -qE '\.enableV2 = true|"ETCDCTL_API", "2"' "$f"; then
      sed -nE 's/^func (Test[A-Za-z0-9_]+)\(t \*testing\.T\).*/\1/p' "$f" >> "$dir/v2-tests.txt.tmp"
    fi
  done
  mv "$dir/v2-tests.txt.tmp" "$dir/v2-tests.txt"

  CAIRN_E2E_TEST_UPSTREAM="$dir/e2e-upstream.test"
  CAIRN_E2E_TEST_ONE_MEMBER="$dir/e2e-one-member.test"
  CAIRN_E2E_CERT_DIR="$work/integration/fixtures"
  CAIRN_E2E_WORKDIR="$work/tests/e2e"
  CAIRN_E2E_V2_TESTS="$dir/v2-tests.txt"
  CAIRN_E2E_SRC="$src/tests/e2e"
  export CAIRN_E2E_TEST_UPSTREAM CAIRN_E2E_TEST_ONE_MEMBER CAIRN_E2E_CERT_DIR CAIRN_E2E_WORKDIR CAIRN_E2E_V2_TESTS CAIRN_E2E_SRC
}

# cairn_ensure_go_src: installs golang-go and Debian's Go sources of etcd 3.4
# (golang-etcd-server-dev, with the same no-upgrade / extract-mode logic as
# cairn_ensure_go_e2e) and builds nothing. Exports
#   CAIRN_GO           the go binary
#   CAIRN_GOPATH_SYS   GOPATH entries (colon separated) providing go.etcd.io/etcd
#                      (clientv3 in the v3.4 layout) and its dependencies
cairn_ensure_go_src() {
  local go
  if ! go=$(_cairn_go_bin); then
    cairn_ensure_pkgs golang-go || return 1
    go=$(_cairn_go_bin) || { cairn_die "go still not found after installing golang-go"; return 1; }
  fi
  _cairn_ensure_gocode || return 1
  CAIRN_GO="$go"
  CAIRN_GOPATH_SYS="$_CAIRN_RESULT"
  export CAIRN_GO CAIRN_GOPATH_SYS
}

# ---------------------------------------------------------------------------
# Ports and processes

# cairn_free_ports N: N distinct currently-free TCP ports on 127.0.0.1 (all are
# bound at the same time before being released, so they are distinct).
cairn_free_ports() {
  local n="${1:-1}"
  if command -v python3 >/dev/null 2>&1; then
    python3 - "$n" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
for s in socks:
    print(s.getsockname()[1]); s.close()
PY
    return 0
  fi
  # fallback without python: random ports in 40000-59999 nobody answers on
  local got=() p i=0
  while [ "${#got[@]}" -lt "$n" ] && [ "$i" -lt 200 ]; do
    i=$((i + 1)); p=$((40000 + RANDOM % 20000))
    case " ${got[*]} " in *" $p "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then got+=("$p"); fi
  done
  [ "${#got[@]}" -eq "$n" ] || { cairn_die "no free ports"; return 1; }
  printf '%s\n' "${got[@]}"
}
cairn_free_port() { cairn_free_ports 1; }

# cairn_marked_pids MARKER: pids of processes whose environment contains
# CAIRN_RUN_MARKER=MARKER (processes we started with that marker, and their
# descendants, which inherit it). One pass over /proc.
cairn_marked_pids() {
  local marker="$1" d pid envs
  [ -n "$marker" ] || return 0
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    [ "$pid" = "$$" ] && continue
    envs=$( { tr '\0' '\n' < "$d/environ"; } 2>/dev/null || true)
    if grep -qxF "CAIRN_RUN_MARKER=$marker" <<<"$envs"; then echo "$pid"; fi
  done
}

# cairn_kill_marked MARKER [GRACE_SECONDS]: wait up to GRACE_SECONDS (default 0)
# for the marked processes to exit by themselves, then SIGKILL the rest.
cairn_kill_marked() {
  local marker="$1" grace="${2:-0}" pids i
  [ -n "$marker" ] || return 0
  for ((i = 0; i < grace * 10; i++)); do
    pids=$(cairn_marked_pids "$marker")
    [ -z "$pids" ] && return 0
    sleep 0.1
  done
  pids=$(cairn_marked_pids "$marker")
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  return 0
}
