"""What SWIFT capture costs while sampling: the same N samples with and without a HeadProjector.

A ~50M-parameter Llama-shaped random model samples N continuations of one prompt (no early stop, so every run does
the same work) with ``sample_continuations``: plain, and capturing one all-layers hidden-state head plus one logits
head. Runs alternate in pairs; reported are the median per-pair ratios of time and of peak memory, two less noisy
views of the time (single decode steps alternating with and without capture; the share of the capture runs' time
spent inside capture code), and what HF ``generate(output_hidden_states=True)`` costs over plain ``generate``.

Time: on CPU the process CPU time (wall time is reported too, but on a shared machine it mostly measures the
neighbours), on CUDA wall time. Peak memory: on CPU the peak RSS above the RSS before the run (VmHWM after resetting
it via /proc/self/clear_refs), on CUDA ``torch.cuda.max_memory_allocated`` above the allocation before the run.
Appends a line to RESULTS.md.

    python benchmarks/capture_overhead.py --quick      # < 1 minute on 2 cores
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from lm_eval_swift.capture import HeadProjector
from lm_eval_swift.heads import SwiftHead
from lm_eval_swift.models import Sampling, sample_continuations
from lm_eval_swift.toy_models import random_causal_lm

RESULTS = Path(__file__).with_name("RESULTS.md")
PROMPT = "Question: what is the sum of the first twenty odd numbers? Think step by step. Answer:"


class TimedProjector(HeadProjector):
    """A HeadProjector that adds up the time spent in its own code (hooks and take)."""

    seconds = 0.0

    def _add(self, entry, h):
        start = time.perf_counter()
        super()._add(entry, h)
        self.seconds += time.perf_counter() - start

    def take(self):
        start = time.perf_counter()
        out = super().take()
        self.seconds += time.perf_counter() - start
        return out


class Measure:
    """Wall time, CPU time and peak bytes above the level at entry (CPU: RSS high-water mark; CUDA: allocator)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_mem = torch.cuda.memory_allocated()
        else:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.start_mem = _status_kb("VmRSS") * 1024
        self.start_wall, self.start_cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start_mem
        else:
            self.peak = _status_kb("VmHWM") * 1024 - self.start_mem
        self.wall, self.cpu = time.perf_counter() - self.start_wall, time.process_time() - self.start_cpu
        self.time = self.wall if self.device.type == "cuda" else self.cpu


def _proc_field(path: str, field: str) -> str:
    """The value of ``field: value`` in a /proc file."""
    return next(line.split(":", 1)[1].strip() for line in Path(path).read_text().splitlines() if line.startswith(field))


def _status_kb(field: str) -> int:
    return int(_proc_field("/proc/self/status", field + ":").split()[0])


def paired(a, b, pairs: int, device) -> list[tuple[Measure, Measure]]:
    """Alternating runs (a b, b a, ...) -> [(a's measure, b's measure)] per pair."""
    runs = []
    for i in range(pairs):
        order = (a, b) if i % 2 == 0 else (b, a)
        measures = []
        for fn in order:
            with Measure(device) as m:
                fn()
            measures.append(m)
        runs.append(tuple(measures) if i % 2 == 0 else tuple(reversed(measures)))
    return runs


def ratios(runs) -> tuple[float, float, float]:
    """Median per-pair ratios b/a of time, wall time and peak memory."""
    med = lambda key: statistics.median(key(mb) / max(key(ma), 1e-9) for ma, mb in runs)  # noqa: E731
    return med(lambda m: m.time), med(lambda m: m.wall), med(lambda m: m.peak)


@torch.no_grad()
def step_ratio(model, projector: HeadProjector, prompt: list[int], rows: int, pairs: int, device) -> float:
    """Median per-pair ratio of one decode step's time (CPU time on CPU) with capture over without, the two
    alternating step by step; the KV cache is cropped back after each step so all steps see the same length."""
    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([prompt] * rows, device=device), cache=cache, use_cache=True, logits_to_keep=1)
    tokens = torch.zeros(rows, 1, dtype=torch.long, device=device)
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(pairs):
        for capture in (False, True) if i % 2 == 0 else (True, False):
            with projector if capture else nullcontext():
                start = clock()
                model(input_ids=tokens, cache=cache, use_cache=True, logits_to_keep=1)
                if capture:
                    projector.take()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[capture].append(clock() - start)
            cache.crop(-1)
    return statistics.median(b / a for a, b in zip(times[False], times[True]))


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_proc_field('/proc/cpuinfo', 'model name')}, {torch.get_num_threads()} thread(s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 new tokens, 2 run pairs, 60 step pairs")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=6, help="pairs of whole runs (half as many for HF generate)")
    parser.add_argument("--step-pairs", type=int, default=300, help="pairs of single decode steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.quick:
        args.new_tokens, args.pairs, args.step_pairs = 64, 2, 60
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        path = random_causal_lm(
            tmp, "llama", hidden_size=512, num_hidden_layers=16, num_attention_heads=8, intermediate_size=1376
        )
        model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
    n_params = sum(p.numel() for p in model.parameters())
    heads = [
        SwiftHead.for_model(model.config, str(path)),
        SwiftHead.for_model(model.config, str(path), kind="logits", name="logits"),
    ]
    projector = TimedProjector(model, heads)
    prompt = tokenizer.encode(PROMPT)
    ids = torch.tensor([prompt] * args.n, device=device)
    seeds, sampling, never = list(range(args.n)), Sampling(do_sample=True), (lambda ids: False)

    def ours(proj, tokens=args.new_tokens):
        return lambda: sample_continuations(model, prompt, seeds, sampling, tokens, never, proj, batch_size=args.n)

    def hf(hidden: bool, tokens=args.new_tokens):
        kw = dict(do_sample=True, max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=tokenizer.pad_token_id)
        return lambda: model.generate(ids, output_hidden_states=hidden, return_dict_in_generate=True, **kw)

    for warm_up in (ours(None, 4), ours(projector, 4), hf(False, 4), hf(True, 4)):  # also runs capture's self-check
        warm_up()
    projector.seconds = 0.0
    runs = paired(ours(None), ours(projector), args.pairs, device)
    share = projector.seconds / sum(mb.wall for _, mb in runs)
    time_x, wall_x, mem_x = ratios(runs)
    step_x = step_ratio(model, projector, prompt, args.n, args.step_pairs, device)
    hf_runs = paired(hf(False), hf(True), max(args.pairs // 2, 1), device)
    hs_time_x, hs_wall_x, hs_mem_x = ratios(hf_runs)

    where, clock = machine(device), "wall" if device.type == "cuda" else "CPU"
    layers = model.config.num_hidden_layers
    plain, hf_plain = (statistics.median(ma.time for ma, _ in r) for r in (runs, hf_runs))
    plain_mib = statistics.median(ma.peak for ma, _ in runs) / 2**20
    print(f"machine: {where}; torch {torch.__version__}; model {n_params / 1e6:.1f}M params, {layers} layers")
    print(f"N={args.n} samples x {args.new_tokens} new tokens, prompt {len(prompt)} tokens, {args.pairs} pairs")
    print(f"plain: {plain:.2f} s {clock} time (HF generate {hf_plain:.2f} s), peak extra memory {plain_mib:.1f} MiB")
    print(
        f"capture (1 all-layers head: {layers + 1} entries; + 1 logits head): {clock} time x{time_x:.3f} "
        f"(wall x{wall_x:.3f}), peak memory x{mem_x:.3f}; time inside capture code {100 * share:.2f}% of the run; "
        f"one decode step x{step_x:.3f} ({args.step_pairs} alternating step pairs)"
    )
    print(
        f"HF generate with output_hidden_states=True instead: {clock} time x{hs_time_x:.3f} "
        f"(wall x{hs_wall_x:.3f}), peak memory x{hs_mem_x:.3f}"
    )
    memory = "CUDA max_memory_allocated delta" if device.type == "cuda" else "peak RSS delta"
    setup = f"{'quick' if args.quick else 'full'}: N={args.n}, T={args.new_tokens}, {n_params / 1e6:.0f}M Llama"
    line = (
        f"| {datetime.date.today()} | {where} | {setup}, {args.pairs} pairs | {time_x:.3f} ({clock}) | {step_x:.3f} "
        f"| {100 * share:.1f}% | {mem_x:.3f} | {hs_time_x:.3f} | {hs_mem_x:.3f} | {memory} |\n"
    )
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Benchmark results\n\n## capture_overhead.py\n\n"
            "| date | machine | setup | capture time x | capture step time x | time in capture code "
            "| capture memory x | output_hidden_states time x | output_hidden_states memory x | memory measured as |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        )
    with RESULTS.open("a") as f:
        f.write(line)


if __name__ == "__main__":
    main()
