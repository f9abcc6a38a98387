"""Is torch CPU work slower on a background thread than on the main thread? (See docs/quality.md.)

ptychodus runs every reconstruction on a background thread, and so do the plugin's streaming workflow
and its training runner; ``ptychodus-pinn`` runs on the main thread. This times the same 60
refinement epochs (N=64, 576 patterns) on the main thread and on fresh threads, three runs each, in
one process, so a fresh thread's first run (its thread pool starting) shows apart from the rest::

    python benchmarks/thread_penalty.py            # torch's default thread count
    OMP_NUM_THREADS=1 python benchmarks/thread_penalty.py
"""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

from ptychodus_pinn.engine.config import RefinementConfig
from ptychodus_pinn.engine.refinement import RefinementProblem, iterate_refinement
from ptychodus_pinn.engine.simulate import simulate_scan

RUNS = 3


def main() -> None:
    scan = simulate_scan("siemens", 1e5, 576, 64, 11, path="jittered")
    config = RefinementConfig(epochs=60)

    def run() -> float:
        tick = time.perf_counter()
        for _ in iterate_refinement(RefinementProblem(scan, np.ones(scan.object_shape, np.complex64)), config):
            pass
        return time.perf_counter() - tick

    def runs(where: str) -> None:
        seconds = [run() for _ in range(RUNS)]
        listed = ", ".join(f"{value:.2f}" for value in seconds)
        print(f"{where:>9}: {listed} s ({torch.get_num_threads()} torch threads)", flush=True)

    run()  # warm-up
    for round_ in range(2):
        runs("main")
        worker = threading.Thread(target=runs, args=(f"thread {round_ + 1}",))
        worker.start()
        worker.join()


if __name__ == "__main__":
    main()
