#!/usr/bin/env bash
# Soak (outside CI): a 4-worker backward chain for a while, sampling each worker's memory, fds and mappings; fails unless flat.
#   perf/soak/soak.sh <build dir> [seconds (600)] [provider (shm)] [sample every s (5)] [bytes (64K)]
# Runs rdag_perf_backward's chain (-C: every gradient element checked after every pass) with more
# passes than the time allows (2,000 per second), samples every worker's VmRSS, open fds and /proc/<pid>/maps lines
# (arenas, shm regions and registered buffers are mappings) every few seconds, and stops it at the
# end. Samples go to $SOAK_OUT (default ./soak-samples.tsv), the tool's output beside it (-tool.log).
# Criterion, per process (the launcher and the 4 workers), over the samples after a warm-up of a
# tenth of the run (at least 30 s): the mean RSS of the last quarter exceeds that of the first
# quarter by at most max(1 MiB, 2 %), and the largest fd and mapping counts of the last quarter
# are at most those of the first quarter (threads' malloc arenas make mappings come and go by one
# or two; a leak keeps adding). The chain must still be running (no failure) when the time is up.
#   perf/soak/soak.sh --eval <samples.tsv> <warm-up s>   re-reads samples with this criterion
set -uo pipefail

verdict() { # samples warm
  awk -v warm="$2" -F'\t' '
NR > 1 && $1 >= warm { n[$2]++; t[$2, n[$2]] = $3; f[$2, n[$2]] = $4; m[$2, n[$2]] = $5 }
END {
  bad = 0
  for (p in n) {
    k = n[p]; q = int(k / 4); if (q < 1) { print "soak: too few samples for " p; bad = 1; continue }
    a = 0; b = 0; fa = 0; fb = 0; ma = 0; mb = 0
    for (i = 1; i <= q; i++) {
      a += t[p, i]; b += t[p, k - q + i]
      if (f[p, i] > fa) fa = f[p, i]; if (f[p, k - q + i] > fb) fb = f[p, k - q + i]
      if (m[p, i] > ma) ma = m[p, i]; if (m[p, k - q + i] > mb) mb = m[p, k - q + i]
    }
    a /= q; b /= q
    lim = a * 0.02; if (lim < 1024) lim = 1024
    v = (b - a <= lim && fb <= fa && mb <= ma) ? "flat" : "GROWS"
    if (v != "flat") bad = 1
    printf "soak: pid %s: %d samples, mean RSS %.0f -> %.0f KiB (limit +%.0f), max fds %d -> %d, max maps %d -> %d: %s\n",
           p, k, a, b, lim, fa, fb, ma, mb, v
  }
  exit bad
}' "$1"
}
if [ "${1:-}" = --eval ]; then
  verdict "${2:?samples}" "${3:?warm-up seconds}"
  exit
fi

build=${1:?usage: soak.sh <build dir> [seconds] [provider] [every] [bytes]}
secs=${2:-600} prov=${3:-shm} every=${4:-5} size=${5:-64K}
tool=$build/perf/rdag/rdag_perf_backward
out=${SOAK_OUT:-soak-samples.tsv}
log=${out%.tsv}-tool.log
[ -x "$tool" ] || { echo "soak: $tool not built" >&2; exit 1; }
warm=$(( secs / 10 )); [ $warm -lt 30 ] && warm=30
[ $warm -ge $secs ] && warm=$(( secs / 2 ))

"$tool" -W 4 -P "$prov" -s "$size" -n $(( secs * 2000 )) -w 1 -o scale -C -T 120 > "$log" 2>&1 &
tpid=$!
sleep 1
printf 't\tpid\trss_kib\tfds\tmaps\n' > "$out"
start=$(date +%s)
while :; do
  now=$(( $(date +%s) - start ))
  [ $now -ge $secs ] && break
  kill -0 $tpid 2>/dev/null || { echo "soak: the chain stopped after $now s:" >&2; tail -5 "$log" >&2; exit 1; }
  for p in $tpid $(pgrep -P $tpid); do
    rss=$(awk '/^VmRSS/ {print $2}' /proc/$p/status 2>/dev/null) || continue
    fds=$(ls /proc/$p/fd 2>/dev/null | wc -l)
    maps=$(wc -l < /proc/$p/maps 2>/dev/null)
    printf '%s\t%s\t%s\t%s\t%s\n' "$now" "$p" "$rss" "$fds" "$maps" >> "$out"
  done
  sleep "$every"
done
kill -TERM -- $tpid $(pgrep -P $tpid) 2>/dev/null
wait $tpid 2>/dev/null

verdict "$out" "$warm"
