#!/usr/bin/env bash
# A sweep: one `finc train` per grid point, JOBS of them side by side with cores ÷ JOBS threads
# each, one run directory per point, and every point's `finc bpd --json` gathered into
# OUT/results.jsonl (one line per finished point). Rerun the same command to continue: finished
# points are skipped, interrupted ones resume from their last.pt.
#
#   examples/sweep.sh                                         # the GRID below, in runs/sweep/
#   GRID="train.lr=1e-3 train.lr=2e-3,train.seed=1" JOBS=2 examples/sweep.sh --steps 500
#
# GRID: points separated by spaces; a point is one or more section.key=value joined by commas.
# Arguments after the script go to every `finc train`. FINC: the finc executable to run.
set -euo pipefail

FINC=${FINC:-finc}
OUT=${OUT:-runs/sweep}
JOBS=${JOBS:-2}
GRID=${GRID:-"train.lr=1e-3 train.lr=2e-3 train.lr=4e-3"}
CORES=$(nproc)
THREADS=${THREADS:-$(( CORES / JOBS > 0 ? CORES / JOBS : 1 ))}
export FINC OUT THREADS

run_point() {  # $1: a grid point; the rest: extra `finc train` arguments
    local point=$1 dir sets=() kv
    shift
    dir="$OUT/$(tr ',=/' '_-_' <<< "$point")"
    if [[ -f "$dir/bpd.json" ]]; then
        echo "skip $point: finished ($dir/bpd.json)" >&2
        return 0
    fi
    IFS=',' read -ra kv <<< "$point"
    for s in "${kv[@]}"; do sets+=(--set "$s"); done
    echo "train $point in $dir ($THREADS threads)" >&2
    # --resume auto: continue from last.pt when an earlier sweep was interrupted, else start afresh.
    "$FINC" train --out "$dir" --resume auto "${sets[@]}" --threads "$THREADS" --quiet --json "$@" > /dev/null
    "$FINC" bpd "$dir/best.pt" --threads "$THREADS" --json > "$dir/bpd.json.tmp"
    printf '{"point": "%s", "out": "%s", "bpd": %s}\n' "$point" "$dir" "$(cat "$dir/bpd.json.tmp")" \
        > "$dir/bpd.json.tmp2"
    mv "$dir/bpd.json.tmp2" "$dir/bpd.json"  # whole or absent: a point counts as finished only now
    rm -f "$dir/bpd.json.tmp"
}
export -f run_point

mkdir -p "$OUT"
status=0
printf '%s\n' $GRID | xargs -P "$JOBS" -I{} bash -c 'run_point "$@"' _ {} "$@" || status=$?
# The results file is rebuilt from the finished points: one line each, whatever ran before.
cat "$OUT"/*/bpd.json > "$OUT/results.jsonl.tmp" 2>/dev/null || true
mv "$OUT/results.jsonl.tmp" "$OUT/results.jsonl"
echo "$(wc -l < "$OUT/results.jsonl") finished point(s) in $OUT/results.jsonl" >&2
exit "$status"
