#!/usr/bin/env bash
# Every conformance run CI makes (scripts/conformance.py: each starts its own upstream, gateway
# and suite on free loopback ports), at most $CONFORMANCE_JOBS (3) at a time. Each run's output
# is printed whole, in the order below, once it has ended; the exit status is 1 if any run
# failed. Serially the ten runs take about five minutes here, three at a time about two and a
# half.
set -uo pipefail
cd "$(dirname "$0")/.."

NEXT=.cache/conformance-next
# "DIR|ARGS": DIR empty is the 0.1.16 suite under .cache/conformance.
RUNS=(
  "|"
  "|--stdio"
  "|--aggregate"
  "|--aggregate --stdio"
  "$NEXT|--requirements 2025-11-25"
  "$NEXT|--requirements 2026-07-28"
  "$NEXT|--stdio --requirements 2026-07-28"
  "$NEXT|--aggregate --requirements 2025-11-25"
  "$NEXT|--aggregate --requirements 2026-07-28"
  "$NEXT|--aggregate --stdio --requirements 2026-07-28"
)

LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT
pids=()
for i in "${!RUNS[@]}"; do
  dir=${RUNS[$i]%%|*}
  read -r -a args <<<"${RUNS[$i]#*|}"
  while (($(jobs -rp | wc -l) >= ${CONFORMANCE_JOBS:-3})); do wait -n || true; done
  (
    started=$SECONDS
    if [[ -n $dir ]]; then export CELGATE_CONFORMANCE_DIR=$dir; fi
    python scripts/conformance.py "${args[@]}" >"$LOGS/$i" 2>&1
    status=$?
    echo "($((SECONDS - started)) s, exit $status)" >>"$LOGS/$i"
    exit $status
  ) &
  pids+=($!)
done

failed=0
for i in "${!RUNS[@]}"; do
  wait "${pids[$i]}" || failed=1
  dir=${RUNS[$i]%%|*}
  echo "=== scripts/conformance.py ${RUNS[$i]#*|}${dir:+ (CELGATE_CONFORMANCE_DIR=$dir)}"
  cat "$LOGS/$i"
done
exit $failed
