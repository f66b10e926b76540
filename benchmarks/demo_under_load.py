"""How much a CPU-bound process beside ``lm-eval-swift demo`` slows it, per choice of torch threads.

For each ``--threads`` value the demo runs alone and then beside ``--hogs`` busy loops (``python -c 'while 1:
pass'``, started before the demo, killed after it), in alternating order over ``--repeats``; printed per run: wall
seconds, the demo's CPU seconds (its process tree's), the 1-minute load average when it started, and per setting the
median ratio of wall time with the hogs to wall time alone. On a machine other people use, "alone" means beside
whatever else runs: read the load column. With one hog on 2 cores the demo's fair share is half the machine, so a
slowdown of about 2x (or less) is what a well-behaved job shows.

    python benchmarks/demo_under_load.py --questions 40 --threads auto 2 --hogs 1
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def run_demo(
    questions: int, threads: str, hogs: int
) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds of the demo's processes, 1-minute load average at its start, the torch threads
    it used) of one demo run beside ``hogs`` busy loops."""
    loops = [
        subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(hogs)
    ]
    try:
        time.sleep(
            1.0 if hogs else 0.0
        )  # the hogs are running when the demo looks at the idle cores
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            cmd = [
                sys.executable,
                "-m",
                "lm_eval_swift",
                "demo",
                "--questions",
                str(questions),
            ]
            cmd += ["--threads", threads, "--output", out]
            done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    if done.returncode != 0:
        raise SystemExit(f"the demo failed:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    used = next(
        (
            line.split()[2]
            for line in done.stdout.splitlines()
            if line.startswith("torch threads:")
        ),
        "?",
    )
    return wall, cpu, load, used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--questions", type=int, default=40, help="demo questions per run (default 40)"
    )
    parser.add_argument(
        "--threads",
        nargs="+",
        default=["auto", "2"],
        help="--threads values of the demo",
    )
    parser.add_argument(
        "--hogs", type=int, default=1, help="busy loops beside the demo (default 1)"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="pairs of runs per setting (default 1)"
    )
    args = parser.parse_args()
    print(
        f"demo --questions {args.questions}; {os.cpu_count()} cores; hogs: {args.hogs}"
    )
    print("| --threads | used | hogs | wall s | CPU s | load at start |")
    print("|---|---:|---:|---:|---:|---:|")
    ratios: dict[str, list[float]] = {}
    for threads in args.threads:
        for repeat in range(args.repeats):
            order = (0, args.hogs) if repeat % 2 == 0 else (args.hogs, 0)
            walls = {}
            for hogs in order:
                wall, cpu, load, used = run_demo(args.questions, threads, hogs)
                walls[hogs] = wall
                print(
                    f"| {threads} | {used} | {hogs} | {wall:.1f} | {cpu:.1f} | {load:.2f} |",
                    flush=True,
                )
            ratios.setdefault(threads, []).append(walls[args.hogs] / walls[0])
    for threads, values in ratios.items():
        print(f"--threads {threads}: wall with {args.hogs} hog(s) / alone = {statistics.median(values):.2f}x "
              f"(median of {len(values)})")  # fmt: skip


if __name__ == "__main__":
    main()
