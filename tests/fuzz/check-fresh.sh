#!/usr/bin/env bash
# Checks that the committed seed corpus (tests/fuzz/corpus) and the hex example in
# docs/wire-format.md are exactly what the current encoders produce.
#   check-fresh.sh <wire_gen_corpus> <source dir> <scratch dir>
# To refresh them after a format change: wire_gen_corpus corpus tests/fuzz/corpus, and paste
# `wire_gen_corpus hex` between the markers in docs/wire-format.md.
set -euo pipefail
gen=$1 src=$2 out=$3
rm -rf "$out" && mkdir -p "$out"
"$gen" corpus "$out/corpus" >/dev/null
if ! diff -r "$out/corpus" "$src/tests/fuzz/corpus"; then
  echo "FAIL: tests/fuzz/corpus differs from the encoders' output (regenerate it)" >&2
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
