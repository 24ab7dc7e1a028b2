#!/usr/bin/env bash
# Checks that the committed seed corpus (tests/fuzz/corpus) and the hex example in
# docs/wire-format.md are exactly what the current encoders produce. Besides the named seeds,
# the corpus may hold inputs found by fuzzing (libFuzzer -merge=1 names them by their SHA-1:
# 40 hex digits); any other file there is stale.
#   check-fresh.sh <wire_gen_corpus> <source dir> <scratch dir>
# To refresh them after a format change: wire_gen_corpus corpus tests/fuzz/corpus, and paste
# `wire_gen_corpus hex` between the markers in docs/wire-format.md.
set -euo pipefail
gen=$1 src=$2 out=$3
rm -rf "$out" && mkdir -p "$out"
"$gen" corpus "$out/corpus" >/dev/null
stale=0
while IFS= read -r f; do
  if ! cmp -s "$out/corpus/$f" "$src/tests/fuzz/corpus/$f"; then
    echo "FAIL: seed $f is missing from tests/fuzz/corpus or differs from the encoder's output" >&2
    stale=1
  fi
done < <(cd "$out/corpus" && find . -type f | sort)
while IFS= read -r f; do
  if [ ! -e "$out/corpus/$f" ] && ! [[ $(basename "$f") =~ ^[0-9a-f]{40}$ ]]; then
    echo "FAIL: tests/fuzz/corpus/$f is neither a generated seed nor a fuzzing find (stale?)" >&2
    stale=1
  fi
done < <(cd "$src/tests/fuzz/corpus" && find . -type f | sort)
if [ "$stale" != 0 ]; then
  echo "FAIL: regenerate the seeds: wire_gen_corpus corpus tests/fuzz/corpus" >&2
  exit 1
fi
"$gen" hex >"$out/hex.txt"
sed -n '/<!-- begin generated: wire_gen_corpus hex -->/,/<!-- end generated -->/p' \
  "$src/docs/wire-format.md" | grep -v -e '^<!--' -e '^```' >"$out/doc-hex.txt" || true
if ! diff "$out/hex.txt" "$out/doc-hex.txt"; then
  echo "FAIL: the hex example in docs/wire-format.md differs from the encoder's output" >&2
  exit 1
fi
echo "corpus ($(find "$out/corpus" -type f | wc -l) seeds) and docs hex example are fresh"
