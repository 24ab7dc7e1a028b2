#!/usr/bin/env python3
"""Pickle/unpickle the fields of PyTorch's PropagateGradientsReq, for comparison with rdag's codec.

What PyTorch sends for a BACKWARD_AUTOGRAD_REQ: PropagateGradientsReq::toMessageImpl() pickles
(JIT pickler, protocol 2) the tuple

    (grad_0, ..., grad_{N-1}, autograd context id, autograd message id, retain_graph)

where each gradient becomes a reference into a tensor table, and the RPC agent (TensorPipe)
then pickles the tensors' metadata so their bytes can travel out of band. This script pickles,
in one tuple, that same content as plain Python objects:

    ( (('storage', 'FloatStorage', '<i>', 'cpu', 4096),  # persistent id: storage key, dtype,
       0,                                                #   device, numel
       (64, 64), (64, 1),                                # storage offset, sizes, strides
       False),                                           # requires_grad
      ... one such tuple per gradient ...,
      context_id, message_id, retain_graph )

with gradients of a 64x64 float32 weight, like rdag_perf_codec's grad_req_N messages (their
bytes are not pickled: they are already in the receiver's landing slot, as in rdag). It times
pickle.dumps(obj, protocol=2) and pickle.loads(bytes) with CPython's C pickle, which skips the
tensor-table bookkeeping and tensor reconstruction PyTorch also does, so these figures are a
lower bound of PyTorch's own cost. No extra packages: only the standard library.

Output: one CSV line per N: name,bytes,dumps_ns,loads_ns,iterations (medians of the repeats).
"""
import argparse
import pickle
import statistics
import sys
import time

CONTEXT_ID = (1 << 48) | 7   # (worker_id << 48) | counter, as rdag and PyTorch build them
MESSAGE_ID = (1 << 48) | 49


def grad_metadata(i):
    return (("storage", "FloatStorage", str(i), "cpu", 64 * 64), 0, (64, 64), (64, 1), False)


def message(n):
    return tuple([grad_metadata(i) for i in range(n)] + [CONTEXT_ID, MESSAGE_ID, False])


def per_call_ns(fn, arg, n):
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn(arg)
    return (time.perf_counter_ns() - t0) / n


def bench(n_tensors, iters, repeats):
    obj = message(n_tensors)
    data = pickle.dumps(obj, protocol=2)
    back = pickle.loads(data)
    if back != obj:
        raise SystemExit("pickle round trip changed the message")
    dumps = lambda o: pickle.dumps(o, protocol=2)  # noqa: E731
    if iters <= 0:  # calibrate to ~5 ms per timed loop
        one = per_call_ns(dumps, obj, 200) + per_call_ns(pickle.loads, data, 200)
        iters = max(1, int(5e6 / max(one, 1.0)))
    d = [per_call_ns(dumps, obj, iters) for _ in range(repeats)]
    l = [per_call_ns(pickle.loads, data, iters) for _ in range(repeats)]
    return len(data), statistics.median(d), statistics.median(l), iters


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=0, help="calls per timed loop (default: calibrated)")
    ap.add_argument("-r", type=int, default=7, help="timed loops; the median is reported")
    ap.add_argument("--tensors", default="1,8,64", help="comma-separated gradient counts")
    args = ap.parse_args()
    for n in (int(x) for x in args.tensors.split(",")):
        size, dumps_ns, loads_ns, iters = bench(n, args.n, args.r)
        print(f"grad_req_{n},{size},{dumps_ns:.1f},{loads_ns:.1f},{iters}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
