"""Is torch CPU work slower on a background thread than on the main thread? (It is, here: see docs/quality.md.)

ptychodus runs every reconstruction on a background thread, and so do the plugin's streaming workflow
and its training runner; ``ptychodus-pinn`` runs on the main thread. This times the same 15
refinement epochs (N=64, 576 patterns) on the main thread and on fresh threads, in one process::

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


def main() -> None:
    scan = simulate_scan("siemens", 1e5, 576, 64, 11, path="jittered")
    config = RefinementConfig(epochs=15)

    def run(where: str) -> None:
        tick = time.perf_counter()
        for _ in iterate_refinement(RefinementProblem(scan, np.ones(scan.object_shape, np.complex64)), config):
            pass
        print(f"{where:>16}: {time.perf_counter() - tick:5.2f} s ({torch.get_num_threads()} torch threads)", flush=True)

    run("main (warm-up)")
    for round_ in range(2):
        run("main")
        worker = threading.Thread(target=run, args=(f"thread {round_ + 1}",))
        worker.start()
        worker.join()


if __name__ == "__main__":
    main()
