#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each (default 20), from the committed
# seeds plus a working corpus in fuzz/corpus/<target> (not committed). A crash, a panic, a
# timeout (10 s on one input) or more than 2 GiB of memory stops it with the input saved in
# fuzz/artifacts/<target>/; commit that input under <crate>/tests/fuzz-crashers/<target>/
# with the fix (see fuzz/README.md).
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Builds without a sanitizer (the workspace forbids unsafe code; what is sought is panics,
# overflows, hangs and unbounded memory) and with debug assertions, so the gossip invariants
# and overflow checks are on. The toolchain is stable: RUSTC_BOOTSTRAP=1 lets it take the
# nightly flags cargo-fuzz passes.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
shift || true
export RUSTC_BOOTSTRAP=1
flags=(--sanitizer none --debug-assertions)
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build "${flags[@]}"
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  echo "fuzz: $target for ${seconds}s"
  cargo fuzz run "${flags[@]}" "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
