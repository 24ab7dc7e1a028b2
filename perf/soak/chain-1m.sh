#!/usr/bin/env bash
# 1,000,000 gradient requests through a 4-worker chain, every gradient element checked (outside CI).
#   perf/soak/chain-1m.sh <build dir> [provider (shm)] [requests (1000000)] [bytes per gradient (4K)]
# rdag_perf_backward's chain mode with -C: each pass sends 2 (W-1) = 6 gradient requests (the loss
# gradient down 0 -> 1 -> 2 -> 3, the tensor gradients back 3 -> 2 -> 1 -> 0, through a scale node
# on every worker), and worker 0 checks every element of its leaf's gradient after every pass; any
# error, wrong element or stall (-T) fails the run. Prints the tool's table and the wall time.
set -uo pipefail
build=${1:?usage: chain-1m.sh <build dir> [provider] [requests] [bytes]}
prov=${2:-shm} requests=${3:-1000000} size=${4:-4K}
tool=$build/perf/rdag/rdag_perf_backward
[ -x "$tool" ] || { echo "chain-1m: $tool not built" >&2; exit 1; }
w=4
per_pass=$(( 2 * (w - 1) ))
passes=$(( (requests + per_pass - 1) / per_pass ))
echo "chain-1m: $w workers on $prov, $passes passes x $per_pass gradient requests = $(( passes * per_pass )), $size per gradient"
start=$(date +%s)
rc=0
"$tool" -W $w -P "$prov" -s "$size" -n "$passes" -w 1 -o scale -C -T 120 || rc=$?
echo "chain-1m: exit $rc after $(( $(date +%s) - start )) s"
exit $rc
