# Shared by the project's scripts: the tool cache and installers that check it first.
# shellcheck shell=bash

# Everything installed for tests lives here, so a second run installs nothing.
INTELLIHEALTH_CACHE="${INTELLIHEALTH_CACHE:-$HOME/.cache/intellihealth}"
export INTELLIHEALTH_CACHE

say() { printf '[intellihealth] %s\n' "$*" >&2; }

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Makes sure node and npm exist (Debian's packages when they do not).
ensure_npm() {
  if command -v npm >/dev/null 2>&1; then return; fi
  say "installing nodejs and npm from Debian"
  as_root apt-get update -qq
  as_root apt-get install -y -qq nodejs npm >/dev/null
}

# Makes sure python3 (with venv) exists (Debian's packages when it does not).
ensure_python() {
  if command -v python3 >/dev/null 2>&1 && python3 -c 'import venv' >/dev/null 2>&1; then return; fi
  say "installing python3 and python3-venv from Debian"
  as_root apt-get update -qq
  as_root apt-get install -y -qq python3 python3-venv >/dev/null
}

# Installs an npm package at an exact version into $INTELLIHEALTH_CACHE/NAME, once.
# Usage: npm_cached NAME PACKAGE@VERSION; prints the node_modules directory.
npm_cached() {
  local name=$1 spec=$2 dir="$INTELLIHEALTH_CACHE/$1" marker
  # A scoped package's spec has a slash; its marker file must not.
  marker="$dir/.installed-${spec//\//_}"
  if [ ! -f "$marker" ]; then
    ensure_npm
    say "installing npm $spec into $dir"
    mkdir -p "$dir"
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error "$spec" >/dev/null)
    touch "$marker"
  fi
  printf '%s\n' "$dir/node_modules"
}

# Starts the release server for a benchmark, as production runs it: a fresh data dir under
# WORK, a backend client `bench` with system scopes (its secret in WORK/bench.secret), the
# sweeper off. Sets server_pid, base (the FHIR base URL) and token (a client_credentials access
# token). The caller stops server_pid. INTELLIHEALTH_BIN picks another build of the server
# (an older one, to compare); BENCH_SERVER_ARGS adds serve flags. Usage: bench_server_start WORK
bench_server_start() {
  local work=$1 secret bin=${INTELLIHEALTH_BIN:-./target/release/intellihealth}
  secret=$(head -c 24 /dev/urandom | base64)
  printf '%s\n' "$secret" >"$work/bench.secret"
  # The bench client is the EHR of record (a custodian), so reads need no grant; a build from
  # before consent has no such flag.
  local custodian=()
  "$bin" clients add --help | grep -q -- --custodian && custodian=(--custodian)
  "$bin" clients add --id bench --secret-file "$work/bench.secret" "${custodian[@]}" \
    --scope 'system/*.cruds' --data-dir "$work/data" >/dev/null
  # shellcheck disable=SC2086 # BENCH_SERVER_ARGS: more serve flags, split on spaces
  "$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" \
    --sweep-interval-secs 0 ${BENCH_SERVER_ARGS:-} >"$work/server.out" 2>"$work/server.err" &
  server_pid=$!
  for _ in $(seq 1 100); do grep -q "listening on" "$work/server.out" && break; sleep 0.1; done
  base=$(sed -n 's/.*listening on //p' "$work/server.out")
  # The client's credentials reach curl on stdin (a config), never on its command line.
  token=$(printf 'user = "bench:%s"\n' "$secret" | curl -s -K - -d grant_type=client_credentials \
    -d 'scope=system/*.cruds' "${base%/fhir}/auth/token" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
}

# Generates, once, carebundle's synthetic records (PyPI carebundle==0.5.0: 1,000 patients,
# ~45k resources, deterministic) into the cache; prints the directory.
carebundle_data() {
  local data="$INTELLIHEALTH_CACHE/carebundle/mixed-1000" venv="$INTELLIHEALTH_CACHE/carebundle-venv"
  if [ ! -d "$data" ]; then
    ensure_python
    [ -x "$venv/bin/carebundle" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q carebundle==0.5.0 >&2; }
    "$venv/bin/carebundle" generate --profile mixed --count 1000 --seed 1 --out "$data" --format ndjson >&2
  fi
  printf '%s\n' "$data"
}
