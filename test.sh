#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh machine, then runs
# `cargo test --workspace`. Extra arguments go to cargo test.
#
# What each test needs is declared in tests/setup/*.sh, one file per concern (the browser,
# the chaos tools, ...). Each file calls `need_deb PATH PACKAGE...` (install the Debian
# packages when PATH is missing) and may add a function name to `after_install`, run once
# the packages are in (for example an npm or pip install into target/).
set -euo pipefail
cd "$(dirname "$0")"
missing=()
after_install=()
need_deb() {
  local path=$1
  shift
  compgen -G "$path" >/dev/null || missing+=("$@")
}
for setup in tests/setup/*.sh; do
  # shellcheck source=/dev/null
  . "$setup"
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing ${missing[*]} for the tests" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  else
    echo "test.sh: ${missing[*]} missing and cannot be installed here (need root and apt-get)" >&2
    exit 1
  fi
fi
for step in ${after_install[@]+"${after_install[@]}"}; do
  "$step"
done
export STATUSMESH_REQUIRE_BROWSER=1
# The tests that drive a real Alertmanager or Prometheus fail, rather than skip, without them.
export STATUSMESH_REQUIRE_TOOLS=1
exec cargo test --workspace "$@"
