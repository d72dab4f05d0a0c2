"""Torch threads idle and beside a busy process: the measurement behind ``numerics.threads``.

Each setting runs in a fresh interpreter (torch fixes its thread pool at the first op) under the
rest of ``params.yaml`` ``numerics`` (the ISA, MKL's branch, the portable kernels), the workload a
loop of the small ops that tiny-model training is made of: a 64x64 matmul, a relu and a
backward. "Busy" starts one process spinning on a core for the duration.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager

from onereward.numerics import config_from_params

LOOP = """
import time
from onereward.numerics import NumericsConfig, pin
pin(NumericsConfig(**{numerics!r}))  # the stages' own pinning, with this run's thread count
import torch
x = torch.randn(64, 64); w = torch.randn(64, 64, requires_grad=True)
n, end = 0, time.perf_counter() + {seconds}
while time.perf_counter() < end:
    for _ in range(100):
        torch.relu(x @ w).sum().backward()
    n += 100
print(n / {seconds})
"""


@contextmanager
def busy_neighbour():
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        proc.kill()
        proc.wait()


def loop_rate(threads: int, seconds: float) -> float:
    cfg = dataclasses.replace(config_from_params(), threads=threads)
    env = {**os.environ, **cfg.environment()}
    out = subprocess.run([sys.executable, "-c", LOOP.format(numerics=dataclasses.asdict(cfg), seconds=seconds)],
                         check=True, capture_output=True, text=True, env=env).stdout
    return float(out.strip().splitlines()[-1])


def thread_table(threads: list[int], seconds: float = 3.0) -> list[dict]:
    rows = []
    for t in threads:
        idle = loop_rate(t, seconds)
        with busy_neighbour():
            busy = loop_rate(t, seconds)
        rows.append({"threads": t, "idle_it_s": round(idle), "busy_it_s": round(busy), "slowdown": round(idle / busy, 2)})
    return rows


if __name__ == "__main__":
    print(json.dumps(thread_table([1, 2])))
