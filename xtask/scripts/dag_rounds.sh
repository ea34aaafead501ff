#!/usr/bin/env bash
# Alternated rounds of the 1,000-step process DAG (issue 4): make -j8, then hive, 10 runs
# each per round (hyperfine -N), and the ratio of the means, one line a round.
#
#   xtask/scripts/dag_rounds.sh DIR SHAPE [ROUNDS]
#
# DIR holds dag_SHAPE.json and dag_SHAPE.mk, made by
#   cargo run --release -p hive-kernel --example plan_probe -- dag-plans DIR
#   python3 ../shared/peers/gen_make.py DIR
# `hive` is target/release/hive; its state goes to DIR/st. SHAPE is w8x125 or l8x125.
set -eu
dir=$1 shape=$2 rounds=${3:-8}
hive=$(cd "$(dirname "$0")/../.." && pwd)/target/release/hive
cd "$dir"
for r in $(seq 1 "$rounds"); do
  hyperfine -N --warmup 1 --runs 10 --export-json "round_$r.json" \
    "make -s -j8 -f dag_$shape.mk" \
    "$hive run dag_$shape.json --max-concurrency 8 --state-dir st -q" >/dev/null
  python3 - "round_$r.json" "$shape" "$r" <<'PY'
import json, sys
path, shape, r = sys.argv[1:]
make, hive = (x["mean"] for x in json.load(open(path))["results"])
print(f"{shape} round {r}: make {make:.4f} s  hive {hive:.4f} s  hive/make {hive / make:.4f}", flush=True)
PY
done
