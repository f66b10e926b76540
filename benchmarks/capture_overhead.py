"""What SWIFT capture costs while sampling: the same N samples with and without a HeadProjector.

A ~50M-parameter Llama-shaped random model samples N continuations of one prompt (no early stop, so every run does
the same work) with ``sample_continuations``: plain, and capturing one all-layers hidden-state head plus one logits
head. Runs alternate in pairs; reported are the median per-pair ratios of time and of peak memory, two less noisy
views of the time (single decode steps alternating with and without capture; the share of the capture runs' time
spent inside capture code), and what HF ``generate(output_hidden_states=True)`` costs over plain ``generate``.

Time: on CPU the process CPU time (wall time is reported too, but on a shared machine it mostly measures the
neighbours), on CUDA wall time. Peak memory: on CPU the peak RSS above the RSS before the run (VmHWM after resetting
it via /proc/self/clear_refs), on CUDA ``torch.cuda.max_memory_allocated`` above the allocation before the run.
With ``--confidence`` it measures instead what capturing all the confidence scorers costs (hf-swift's decode loop
with and without :class:`~lm_eval_swift.confidence.compute.ConfidenceCapture`, no heads; goal: time and peak memory
x <= 1.02), e.g. on SmolLM2 with ``--pretrained`` (its 49,152-token vocabulary is what the scorers read).
Appends a line to RESULTS.md. The harness (clocks, alternation, models, RESULTS.md rows) is in _common.py; the
model's shape and dtype are flags (``--size 1b --dtype bfloat16`` on a GPU, see gpu.sh).

    python benchmarks/capture_overhead.py --quick      # < 1 minute on 2 cores
"""

from __future__ import annotations

import statistics
import tempfile
import time
from contextlib import nullcontext

import _common as c
import torch
from _common import TimedProjector, paired, ratios
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from lm_eval_swift.confidence import ConfidenceParams
from lm_eval_swift.confidence.compute import ConfidenceCapture
from lm_eval_swift.decoding import Job, Sampling, decode, sample_continuations
from lm_eval_swift.decoding.decoder import Decoder
from lm_eval_swift.swift.capture import HeadProjector
from lm_eval_swift.swift.heads import SwiftHead


PROMPT = "Question: what is the sum of the first twenty odd numbers? Think step by step. Answer:"
COLUMNS = [
    "machine",
    "setup",
    "capture time x",
    "capture step time x",
    "time in capture code",
    "capture memory x",
    "output_hidden_states time x",
    "output_hidden_states memory x",
    "memory measured as",
]


@torch.no_grad()
def step_ratio(
    model, projector: HeadProjector, prompt: list[int], rows: int, pairs: int, device
) -> float:
    """Median per-pair ratio of one decode step's time (CPU time on CPU) with capture over without, the two
    alternating step by step; the KV cache is cropped back after each step so all steps see the same length."""
    cache = DynamicCache(config=model.config)
    model(
        input_ids=torch.tensor([prompt] * rows, device=device),
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
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
    return statistics.median(
        b / a for a, b in zip(times[False], times[True], strict=True)
    )


CONFIDENCE_COLUMNS = ["machine", "setup", "confidence time x [range]", "time in confidence code",
                      "confidence memory x [range]", "plain s (CPU)", "memory measured as"]  # fmt: skip


class TimedCapture(ConfidenceCapture):
    """A ConfidenceCapture adding the process CPU time spent in :meth:`update` (all its per-step work) to
    ``seconds``."""

    seconds = 0.0

    def update(self, logits, tokens) -> None:
        start = time.process_time()
        super().update(logits, tokens)
        TimedCapture.seconds += time.process_time() - start


@torch.inference_mode()
def timed_decode(model, job: Job, rows: int) -> float:
    """One decode with every confidence scorer captured -> the share of its CPU time spent in confidence code."""
    decoder = Decoder(model, [job], rows, confidence=ConfidenceParams())
    decoder.confidence = TimedCapture(decoder.rows, ConfidenceParams())
    TimedCapture.seconds, start = 0.0, time.process_time()
    for _ in decoder.steps():
        pass
    return TimedCapture.seconds / (time.process_time() - start)


def confidence_overhead(args, model, prompt: list[int], device) -> None:
    """Paired decode runs without and with every confidence scorer captured: print and record the ratios, and the
    share of a capturing run's CPU time spent in confidence code (the less noisy view of the time cost)."""
    job = Job(
        prompt,
        list(range(args.n)),
        Sampling(do_sample=True),
        args.new_tokens,
        lambda ids: False,
    )

    def run(params):
        return lambda: list(decode(model, [job], args.n, confidence=params))

    for warm_up in (run(None), run(ConfidenceParams())):
        warm_up()
    runs = paired(run(None), run(ConfidenceParams()), args.pairs, device)
    time_x = [b.time / a.time for a, b in runs]
    mem_x = [b.peak / max(a.peak, 1) for a, b in runs]
    shares = [timed_decode(model, job, args.n) for _ in range(3)]
    plain = statistics.median(a.time for a, _ in runs)
    where, clock = c.machine(device), c.clock_name(device)
    print(f"machine: {where}; {c.load_note()}; vocabulary {model.config.vocab_size}")
    print(
        f"N={args.n} x {args.new_tokens} new tokens, {args.pairs} pairs; plain {plain:.2f} s {clock} time"
    )
    print(f"all confidence scorers captured: {clock} time x{c.spread(time_x)}, peak memory x{c.spread(mem_x)} "
          f"(median [min-max] over pairs); time inside confidence code {100 * statistics.median(shares):.2f}% "
          f"[{100 * min(shares):.2f}-{100 * max(shares):.2f}] of a capturing run (3 runs)")  # fmt: skip
    cells = [
        f"{where} ({c.load_note()})" if device.type == "cpu" else where,
        f"N={args.n}, T={args.new_tokens}, {c.model_label(args, c.n_params(model))}, V={model.config.vocab_size}, "
        f"{args.pairs} pairs",
        c.spread(time_x),
        f"{100 * statistics.median(shares):.2f}% [{100 * min(shares):.2f}-{100 * max(shares):.2f}]",
        c.spread(mem_x),
        f"{plain:.2f}",
        "CUDA max_memory_allocated delta"
        if device.type == "cuda"
        else "peak RSS delta",
    ]
    if not args.no_results:
        c.append_result("capture_overhead.py --confidence", CONFIDENCE_COLUMNS, cells)


def main() -> None:
    parser = c.base_parser(__doc__)
    c.add_model_args(parser, "50m")
    parser.add_argument(
        "--quick", action="store_true", help="64 new tokens, 2 run pairs, 60 step pairs"
    )
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument(
        "--pairs",
        type=int,
        default=6,
        help="pairs of whole runs (half as many for HF generate)",
    )
    parser.add_argument(
        "--step-pairs", type=int, default=300, help="pairs of single decode steps"
    )
    parser.add_argument(
        "--confidence",
        action="store_true",
        help="measure the confidence scorers' capture instead (no heads)",
    )
    args = parser.parse_args()
    if args.quick:
        args.new_tokens, args.pairs, args.step_pairs = 64, 2, 60
    device, dtype = c.setup(args)

    with tempfile.TemporaryDirectory() as tmp:
        path = c.build_model(args, dtype, tmp)
        model = (
            AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        )
        tokenizer = AutoTokenizer.from_pretrained(path)
    if args.confidence:
        return confidence_overhead(args, model, tokenizer.encode(PROMPT), device)
    n_params = c.n_params(model)
    heads = [
        SwiftHead.for_model(model.config, str(path)),
        SwiftHead.for_model(model.config, str(path), kind="logits", name="logits"),
    ]
    projector = TimedProjector(model, heads)
    prompt = tokenizer.encode(PROMPT)
    ids = torch.tensor([prompt] * args.n, device=device)
    seeds, sampling, never = (
        list(range(args.n)),
        Sampling(do_sample=True),
        (lambda ids: False),
    )

    def ours(proj, tokens=args.new_tokens):
        return lambda: sample_continuations(
            model, prompt, seeds, sampling, tokens, never, proj, batch_size=args.n
        )

    def hf(hidden: bool, tokens=args.new_tokens):
        kw = dict(
            do_sample=True,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
        return lambda: model.generate(
            ids, output_hidden_states=hidden, return_dict_in_generate=True, **kw
        )

    for warm_up in (
        ours(None, 4),
        ours(projector, 4),
        hf(False, 4),
        hf(True, 4),
    ):  # also runs capture's self-check
        warm_up()
    projector.seconds = 0.0
    runs = paired(ours(None), ours(projector), args.pairs, device)
    share = projector.seconds / sum(mb.wall for _, mb in runs)
    time_x, wall_x, mem_x = ratios(runs)
    step_x = step_ratio(model, projector, prompt, args.n, args.step_pairs, device)
    hf_runs = paired(hf(False), hf(True), max(args.pairs // 2, 1), device)
    hs_time_x, hs_wall_x, hs_mem_x = ratios(hf_runs)

    where, clock = c.machine(device), c.clock_name(device)
    layers = model.config.num_hidden_layers
    plain, hf_plain = (
        statistics.median(ma.time for ma, _ in r) for r in (runs, hf_runs)
    )
    plain_mib = statistics.median(ma.peak for ma, _ in runs) / 2**20
    print(
        f"machine: {where}; torch {torch.__version__}; model {n_params / 1e6:.1f}M params, {layers} layers"
    )
    print(f"{c.load_note()}; {c.dtype_name(dtype)} weights")
    print(
        f"N={args.n} samples x {args.new_tokens} new tokens, prompt {len(prompt)} tokens, {args.pairs} pairs"
    )
    print(
        f"plain: {plain:.2f} s {clock} time (HF generate {hf_plain:.2f} s), peak extra memory {plain_mib:.1f} MiB"
    )
    print(
        f"capture (1 all-layers head: {layers + 1} entries; + 1 logits head): {clock} time x{time_x:.3f} "
        f"(wall x{wall_x:.3f}), peak memory x{mem_x:.3f}; time inside capture code {100 * share:.2f}% of the run; "
        f"one decode step x{step_x:.3f} ({args.step_pairs} alternating step pairs)"
    )
    print(
        f"HF generate with output_hidden_states=True instead: {clock} time x{hs_time_x:.3f} "
        f"(wall x{hs_wall_x:.3f}), peak memory x{hs_mem_x:.3f}"
    )
    memory = (
        "CUDA max_memory_allocated delta" if device.type == "cuda" else "peak RSS delta"
    )
    setup = f"{'quick' if args.quick else 'full'}: N={args.n}, T={args.new_tokens}, {c.model_label(args, n_params)}"
    if dtype != torch.float32:
        setup += f" {c.dtype_name(dtype)}"
    cells = [
        f"{where} ({c.load_note()})" if device.type == "cpu" else where,
        f"{setup}, {args.pairs} pairs",
        f"{time_x:.3f} ({clock})",
        f"{step_x:.3f}",
        f"{100 * share:.1f}%",
        f"{mem_x:.3f}",
        f"{hs_time_x:.3f}",
        f"{hs_mem_x:.3f}",
        memory,
    ]
    if not args.no_results:
        c.append_result("capture_overhead.py", COLUMNS, cells)


if __name__ == "__main__":
    main()
