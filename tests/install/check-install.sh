#!/usr/bin/env bash
# Installs the build tree into a scratch prefix, then builds and runs a consumer with
# find_package(rdag) (shared and static) and with pkg-config.
set -euo pipefail
build=$1 consumer=$2 scratch=$3 cc=$4
rm -rf "$scratch"
prefix=$scratch/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null

for lib in shared static; do
  cmake -S "$consumer" -B "$scratch/consumer-$lib" -DCMAKE_PREFIX_PATH="$prefix" \
        -DCMAKE_C_COMPILER="$cc" -DCONSUMER_LINK="$lib" >/dev/null
  cmake --build "$scratch/consumer-$lib" >/dev/null
  out=$(LD_LIBRARY_PATH="$prefix/lib:$prefix/lib64:${LD_LIBRARY_PATH:-}" "$scratch/consumer-$lib/consumer")
  echo "find_package ($lib): $out"
  case "$out" in "rdag "*" ok") ;; *) echo "unexpected output from the $lib consumer" >&2; exit 1 ;; esac
done

pcdir=$(dirname "$(find "$prefix" -name rdag.pc | head -n 1)")
flags=$(PKG_CONFIG_PATH="$pcdir" pkg-config --cflags --libs rdag)
"$cc" -o "$scratch/pc-consumer" "$consumer/consumer.c" $flags
out=$(LD_LIBRARY_PATH="$prefix/lib:$prefix/lib64" "$scratch/pc-consumer")
echo "pkg-config: $out"
case "$out" in "rdag "*" ok") ;; *) echo "unexpected output from the pkg-config consumer" >&2; exit 1 ;; esac

# The shared library exports the public API only.
so=$(find "$prefix" -name 'librdag.so.*' | head -n 1)
bad=$(nm -D --defined-only "$so" | awk '$2 ~ /[TDB]/ {print $3}' | grep -v '^rdag_' | grep -v '^RDAG_' || true)
if [ -n "$bad" ]; then
  echo "librdag.so exports non-API symbols:" >&2; echo "$bad" >&2; exit 1
fi
echo "install: ok"
