#!/usr/bin/env bash
# Runs one libFuzzer target for $RDAG_FUZZ_SECONDS (default 15) on a fresh copy of its seed
# corpus, so the committed seeds are never modified; fails on any crash or sanitizer report.
#   run-fuzz.sh <fuzz binary> <committed corpus dir> <work dir>
set -euo pipefail
bin=$1 seeds=$2 work=$3
secs=${RDAG_FUZZ_SECONDS:-15}
rm -rf "$work" && mkdir -p "$work/corpus" "$work/artifacts"
cp "$seeds"/* "$work/corpus/"
echo "$(basename "$bin"): $(ls "$work/corpus" | wc -l) seeds, ${secs}s"
# -max_len keeps inputs small enough for speed; longer seeds are cut, which exercises truncation.
exec "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
  -use_value_profile=1 -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$work/corpus"
