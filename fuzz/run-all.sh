#!/bin/sh
# Runs every target for SECS seconds (default 90) on one job, one after the other, and
# prints a line per target: executions, seconds, corpus entries, crash artifacts.
# Logs go to $LOGS (default /tmp/herd-fuzz-logs). Run from fuzz/.
set -u
SECS=${1:-90}
LOGS=${LOGS:-/tmp/herd-fuzz-logs}
mkdir -p "$LOGS"
for t in ${TARGETS:-frame token enroll change_set fs_question elf sandbox_spec sandbox_wire membership}; do
    mkdir -p "corpus/$t"
    cargo +nightly fuzz run "$t" -- -max_total_time="$SECS" -rss_limit_mb=2048 \
        -malloc_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$LOGS/$t.log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$LOGS/$t.log" | grep -o '[0-9]*$')
    crashes=$(ls "artifacts/$t" 2>/dev/null | wc -l)
    echo "$t rc=$rc execs=${execs:-?} secs=$SECS corpus=$(ls "corpus/$t" | wc -l) artifacts=$crashes"
done
