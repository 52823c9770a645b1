#!/usr/bin/env bash
# `make test` N times in a row (default 3) on clean clones of this checkout's HEAD, each
# through .ci/run (which installs everything), while a 30-DER switch benchmark loops from
# this checkout beside them: both cores busy for the whole series (issue 20, "Timing without
# flakes").  About 20 minutes a run.  Run from the repository root after `make .venv/.installed-stamp`:
#
#     bench/loaded_make_test.sh [RUNS] [OUT_DIR]
#
# OUT_DIR (default /tmp/loaded-make-test) gets series.log (one line per run: commit, exit
# status, pytest's summary, then its FAILED lines), run-N.log (each run's whole output) and
# bench.log (the benchmark's runs).  The series stops at the first failing run.
set -u
RUNS=${1:-3}
OUT=${2:-/tmp/loaded-make-test}
REPO=$(pwd)
mkdir -p "$OUT"
: > "$OUT/series.log"
: > "$OUT/bench.log"
STOP="$OUT/stop"
rm -f "$STOP"
(
  i=0
  while [ ! -e "$STOP" ]; do
    i=$((i + 1))
    echo "bench run $i start $(date +%T)" >> "$OUT/bench.log"
    timeout 900 .venv/bin/python bench/switch_bench.py --ders 30 --entries 20 --isolation der \
      --json "$OUT/bench-$i.json" >> "$OUT/bench.log" 2>&1
    echo "bench run $i exit $? $(date +%T)" >> "$OUT/bench.log"
  done
) &
BENCH=$!
status=0
for n in $(seq 1 "$RUNS"); do
  work="$OUT/clone-$n"
  rm -rf "$work"
  git clone -q "$REPO" "$work"
  echo "run $n start $(date +%T) $(git -C "$work" rev-parse --short HEAD)" >> "$OUT/series.log"
  (cd "$work" && CI=true bash .ci/run > "$OUT/run-$n.log" 2>&1)
  status=$?
  echo "run $n exit $status $(date +%T) $(tail -1 "$OUT/run-$n.log")" >> "$OUT/series.log"
  grep -E "^(FAILED|ERROR)" "$OUT/run-$n.log" >> "$OUT/series.log"
  rm -rf "$work"
  [ "$status" = 0 ] || break
done
touch "$STOP"
wait "$BENCH"
echo "series done $(date +%T): exit $status" >> "$OUT/series.log"
exit "$status"
