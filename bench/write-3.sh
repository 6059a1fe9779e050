#!/usr/bin/env bash
# `statusmesh bench write` against one node of a 3-node mesh of separate `statusmesh run`
# processes (one per region, on loopback), observing another region's node: acknowledged
# writes/s, write latency, and remote visibility of every acknowledged write.
#
#   bench/write-3.sh [BIN] [-- extra bench write flags]   (BIN: target/release/statusmesh)
# Environment: DURATION (default 20s), CONCURRENCY (default 64), NODE_FLAGS (more flags of
# `statusmesh run`, e.g. "--epoch-history-changes-max 20000").
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/statusmesh}
shift || true
[ "${1:-}" = "--" ] && shift
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# The repository's regions, one node each.
awk '/^\[\[node\]\]/{exit} {print}' regions.toml > "$work/regions.toml"
i=0
for region in eu-west us-east ap-southeast; do
  i=$((i + 1))
  cat >> "$work/regions.toml" <<NODE

[[node]]
id = "$region-1"
region = "$region"
gossip = "127.0.0.1:$((17100 + i))"
http = "127.0.0.1:$((18100 + i))"
NODE
done
"$bin" certs --config "$work/regions.toml" --out "$work/certs" >/dev/null
for region in eu-west us-east ap-southeast; do
  "$bin" run --config "$work/regions.toml" --node "$region-1" --certs "$work/certs" \
    --data-dir "$work/$region" --token secret ${NODE_FLAGS:-} >"$work/$region.log" 2>&1 &
  pids+=($!)
done
for port in 18101 18102 18103; do
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.1
  done
done
"$bin" bench write --target http://127.0.0.1:18102 --token secret \
  --concurrency "${CONCURRENCY:-64}" --duration "${DURATION:-20s}" \
  --observe http://127.0.0.1:18103 "$@"
# How often the written document rolled over meanwhile (each rollover is a new epoch).
curl -fs http://127.0.0.1:18103/metrics | grep -E '^statusmesh_(epoch_rollovers_total|document_epoch)' || true
