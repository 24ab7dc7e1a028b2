#!/bin/bash
# Runs a command across two fresh network namespaces joined by a veth pair, and always removes them.
#
# Usage: netns-run.sh <command> [args...]
#
# Creates rdfa<id> and rdfb<id> (<id>: this script's pid, so parallel runs never collide), a veth
# pair rdfa<id>v (in rdfa<id>, 10.77.0.1/24) <-> rdfb<id>v (in rdfb<id>, 10.77.0.2/24), loopback
# up in both, and runs the command (in the caller's namespace) with
#   RDAG_TEST_NETNS="rdfa<id> rdfb<id> rdfa<id>v rdfb<id>v 10.77.0.1"
# which tests/faults/faults_mp reads (its workers enter the namespaces themselves). The pair is
# private to the two namespaces (the host's namespace gets no interface or route), so the same
# addresses serve every run. Exit: the command's status; 77 (skip) when network namespaces cannot
# be made here (not root, no ip, no permission); the namespaces are deleted on every exit path.
set -u
id=$$
a=rdfa$id
b=rdfb$id
cleanup() {
	ip netns del "$a" 2>/dev/null
	ip netns del "$b" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

if ! command -v ip >/dev/null 2>&1; then
	echo "netns-run: no 'ip' command: skipped" >&2
	exit 77
fi
if ! ip netns add "$a" 2>/dev/null; then
	echo "netns-run: 'ip netns add' is not permitted here: skipped" >&2
	exit 77
fi
set -e
ip netns add "$b"
ip link add "${a}v" type veth peer name "${b}v"
ip link set "${a}v" netns "$a"
ip link set "${b}v" netns "$b"
ip -n "$a" addr add 10.77.0.1/24 dev "${a}v"
ip -n "$b" addr add 10.77.0.2/24 dev "${b}v"
for ns in "$a" "$b"; do
	ip -n "$ns" link set lo up
done
ip -n "$a" link set "${a}v" up
ip -n "$b" link set "${b}v" up
set +e
RDAG_TEST_NETNS="$a $b ${a}v ${b}v 10.77.0.1" "$@"
exit $?
