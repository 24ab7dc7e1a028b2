#!/usr/bin/env python3
"""Runs rdag_perf_codec and pickle_grad.py in the same run and prints the codec table of docs/perf.md.

    perf/codec/codec_vs_pickle.py --bin build/perf/codec/rdag_perf_codec

Rows: PropagateGradientsReq (BACKWARD_AUTOGRAD_REQ) with 1, 8 and 64 gradients; rdag's encode,
decode (full validation) and decode+read (every descriptor read through the iterator) against
Python pickle's dumps and loads of the same fields; the ratio is pickle (dumps + loads) over
rdag (encode + decode + read). Then every other message kind, rdag only. The two benchmarks
run alternately (--rounds, default 3) and each figure is the median over the rounds of medians;
compare ratios within one run (the machine is shared). --smoke runs tiny loops only to check that
everything works: its figures mean nothing.
"""
import argparse
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run_csv(cmd, timeout):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout).stdout
    rows = {}
    for line in out.splitlines():
        f = line.split(",")
        rows[f[0]] = f[1:]
    return rows


def merge(runs):
    """Per row and column, the median over the rounds (the byte counts are the same in all)."""
    rows = {}
    for name in runs[0]:
        cols = list(zip(*(r[name] for r in runs)))
        rows[name] = [cols[0][0]] + [str(statistics.median(float(x) for x in c)) for c in cols[1:]]
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True, help="path of rdag_perf_codec")
    ap.add_argument("--smoke", action="store_true", help="tiny loops: check it runs, no figures")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternate rdag and pickle runs this many times; medians over rounds")
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()

    c_args = ["-n", "20", "-r", "3"] if args.smoke else ["-r", "21"]
    p_args = ["-n", "20", "-r", "3"] if args.smoke else ["-r", "15"]
    rounds = 1 if args.smoke else max(1, args.rounds)
    rdag_runs, pick_runs = [], []
    for _ in range(rounds):  # alternated, so both see the same machine conditions
        rdag_runs.append(run_csv([args.bin, "--csv"] + c_args, args.timeout))
        pick_runs.append(run_csv([sys.executable, os.path.join(HERE, "pickle_grad.py")] + p_args,
                                 args.timeout))
    rdag, pick = merge(rdag_runs), merge(pick_runs)

    print(f"# wire codec vs pickle{' (SMOKE: tiny loops, figures meaningless)' if args.smoke else ''}")
    print(f"# ns per call, medians over {rounds} alternated round(s) of: "
          + " ".join(os.path.basename(x) for x in [args.bin] + c_args)
          + "; pickle_grad.py " + " ".join(p_args))
    print()
    print("| message | rdag bytes | encode | decode | decode+read | rdag total | pickle bytes"
          " | dumps | loads | pickle total | pickle / rdag |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary = []
    for n in (1, 8, 64):
        name = f"grad_req_{n}"
        if name not in rdag or name not in pick:
            raise SystemExit(f"missing row {name}")
        size, enc, dec, rd = rdag[name][0], float(rdag[name][1]), float(rdag[name][2]), float(rdag[name][3])
        psize, dumps, loads = pick[name][0], float(pick[name][1]), float(pick[name][2])
        total, ptotal = enc + rd, dumps + loads
        ratio = ptotal / total if total > 0 else float("inf")
        print(f"| PropagateGradientsReq, {n} grad{'s' if n > 1 else ''} | {size} | {enc:.1f} | {dec:.1f}"
              f" | {rd:.1f} | {total:.1f} | {psize} | {dumps:.0f} | {loads:.0f} | {ptotal:.0f}"
              f" | {ratio:.0f}x |")
        if n == 8:
            summary.append(f"8 gradients: encode+decode {enc + dec:.1f} ns (target < 100 ns), with reading"
                           f" every descriptor {total:.1f} ns; pickle/rdag {ratio:.0f}x (target >= 20x)")
    print()
    print("| message | bytes | encode | decode | decode+read | encode+decode+read |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, f in rdag.items():
        if name.startswith("grad_req_") and name[9:].isdigit():
            continue
        enc, dec, rd = float(f[1]), float(f[2]), float(f[3])
        print(f"| {name} | {f[0]} | {enc:.1f} | {dec:.1f} | {rd:.1f} | {enc + rd:.1f} |")
    print()
    for line in summary:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
