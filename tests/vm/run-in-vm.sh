#!/bin/sh
# Boots the Soft-RoCE VM (rdma-vm) once and runs a list of test commands inside it, one result each.
#
# usage: run-in-vm.sh [--rdma-vm PATH] [--timeout S] [--test-timeout S] [--list FILE] [--] [CMD...]
#
#   Each CMD (or each non-empty, non-# line of FILE) is one shell command, run with sh -c in the
#   guest, in the current directory (shared read-write with the guest), one after the other.
#   --timeout       the whole VM run (rdma-vm --timeout), default 1500 s
#   --test-timeout  each command, default 600 s
#   --rdma-vm       the rdma-vm script; default $RDMA_VM_BIN, then rdma-vm on PATH, then
#                   ../shared/rdma-vm/rdma-vm next to the source tree
#
# Exit status: 0 all passed (commands exiting 77 count as skipped), 1 some failed, 77 when
# rdma-vm cannot run here (no rdma-vm, or it exits 77), 124 when the VM run timed out, or
# rdma-vm's own code (125: the guest did not boot).
set -u

here=$(cd "$(dirname "$0")" && pwd)
self="$here/$(basename "$0")"
vm_timeout=1500
test_timeout=600
rdma_vm=${RDMA_VM_BIN:-}
list=
inside=0
result=

while [ $# -gt 0 ]; do
	case "$1" in
	--inside) inside=1 ;;
	--result) result=$2; shift ;;
	--rdma-vm) rdma_vm=$2; shift ;;
	--timeout) vm_timeout=$2; shift ;;
	--test-timeout) test_timeout=$2; shift ;;
	--list) list=$2; shift ;;
	--) shift; break ;;
	-h|--help) sed -n '2,17p' "$self" | sed 's/^# \{0,1\}//'; exit 0 ;;
	-*) echo "run-in-vm: unknown option $1" >&2; exit 2 ;;
	*) break ;;
	esac
	shift
done

if [ -n "$list" ]; then
	# Commands from the file, appended after those on the command line.
	[ -r "$list" ] || { echo "run-in-vm: cannot read $list" >&2; exit 2; }
	tmp_args=$(mktemp)
	grep -v '^[[:space:]]*\(#\|$\)' "$list" >"$tmp_args"
	while IFS= read -r line; do
		set -- "$@" "$line"
	done <"$tmp_args"
	rm -f "$tmp_args"
fi

if [ "$inside" = 1 ]; then
	# ---- in the guest: run each command, report, summarise ----
	n=$#
	i=0
	pass=0
	fail=0
	skip=0
	failed=
	echo "run-in-vm: guest ${RDMA_VM_IBDEV:-?} ${RDMA_VM_IP:-?} accel ${RDMA_VM_ACCEL:-?}, $n command(s)"
	for cmd in "$@"; do
		i=$((i + 1))
		echo "=== [$i/$n] $cmd"
		t0=$(date +%s%N)
		timeout --kill-after=10 "$test_timeout" sh -c "$cmd"
		rc=$?
		t1=$(date +%s%N)
		secs=$(awk "BEGIN { printf \"%.1f\", ($t1 - $t0) / 1e9 }")
		case $rc in
		0) verdict=PASS; pass=$((pass + 1)) ;;
		77) verdict=SKIP; skip=$((skip + 1)) ;;
		124|137) verdict="FAIL (timed out after $test_timeout s)"; fail=$((fail + 1)); failed="$failed [$i]" ;;
		*) verdict="FAIL (exit $rc)"; fail=$((fail + 1)); failed="$failed [$i]" ;;
		esac
		echo "=== [$i/$n] $verdict in $secs s: $cmd"
	done
	echo "run-in-vm: $pass passed, $fail failed, $skip skipped${failed:+ (failed:$failed)}"
	[ "$fail" = 0 ] && st=0 || st=1
	# The verdict also goes to a file in the shared folder: rdma-vm's own exit code can be
	# wrong when its output reader stops at guest power-off (it then says 141).
	[ -n "$result" ] && echo "$st" >"$result"
	exit $st
fi

# ---- on the host: find rdma-vm and boot it once ----
if [ $# -eq 0 ]; then
	echo "run-in-vm: no commands given" >&2
	exit 2
fi
if [ -z "$rdma_vm" ]; then
	if command -v rdma-vm >/dev/null 2>&1; then
		rdma_vm=$(command -v rdma-vm)
	else
		rdma_vm="$here/../../../shared/rdma-vm/rdma-vm"
	fi
fi
if [ ! -x "$rdma_vm" ]; then
	echo "run-in-vm: rdma-vm not found (tried '$rdma_vm'; set RDMA_VM_BIN): skipped"
	exit 77
fi

result=$(mktemp "$PWD/.run-in-vm.XXXXXX") || { echo "run-in-vm: the current directory must be writable" >&2; exit 2; }
rm -f "$result"
trap 'rm -f "$result"' EXIT
"$rdma_vm" --timeout "$vm_timeout" -- "$self" --inside --test-timeout "$test_timeout" --result "$result" -- "$@"
rc=$?
if [ -s "$result" ] && [ "$rc" != 77 ] && [ "$rc" != 124 ]; then
	inner=$(cat "$result")
	[ "$inner" != "$rc" ] && echo "run-in-vm: rdma-vm exited $rc, but the guest finished every command (verdict $inner)"
	rc=$inner
fi
case $rc in
0) ;;
77) echo "run-in-vm: rdma-vm cannot run here (exit 77): skipped" ;;
124) echo "run-in-vm: the VM run timed out after $vm_timeout s" ;;
125) echo "run-in-vm: rdma-vm failed (exit 125: the guest did not boot?)" ;;
1) ;;
*) echo "run-in-vm: exit $rc" ;;
esac
exit $rc
