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
  local name=$1 spec=$2 dir="$INTELLIHEALTH_CACHE/$1"
  if [ ! -f "$dir/.installed-$spec" ]; then
    ensure_npm
    say "installing npm $spec into $dir"
    mkdir -p "$dir"
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error "$spec" >/dev/null)
    touch "$dir/.installed-$spec"
  fi
  printf '%s\n' "$dir/node_modules"
}
