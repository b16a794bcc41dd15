"""Piper's synthesis with onnxruntime's pool threads spin-waiting (its default) and without (the engine's setting):
wall time per phrase and the process's CPU time over the phrase and the 300 ms after it (spinning threads go on
burning CPU once a run is over, on the cores the LM decodes on). Interleaved; prints numbers, asserts nothing.

    .venv/bin/python -m benchmarks.piper_spin [--repeats 12] [--phrase "I am afraid I do not know."]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from omni.model.embedded.piper import PiperSynthesizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--phrase", default="I am afraid I do not know.")
    args = p.parse_args()
    voices = {"spin": PiperSynthesizer(spin=True), "no spin": PiperSynthesizer(spin=False)}
    wall: dict[str, list[float]] = {k: [] for k in voices}
    cpu: dict[str, list[float]] = {k: [] for k in voices}
    for v in voices.values():
        v.synth_int16("ok")  # first run sets up the graph
    for _ in range(args.repeats):
        for name, v in voices.items():
            c0, t0 = time.process_time(), time.perf_counter()
            v.synth_int16(args.phrase)
            wall[name].append(time.perf_counter() - t0)
            time.sleep(0.3)
            cpu[name].append(time.process_time() - c0)
    for name in voices:
        print(f"{name:8s} synth wall median {1000 * statistics.median(wall[name]):.0f} ms, CPU (with the 300 ms "
              f"after) median {1000 * statistics.median(cpu[name]):.0f} ms over {args.repeats}")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
