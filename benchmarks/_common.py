"""Shared harness of the benchmarks: flags, machine description, random models, paired timing, RESULTS.md rows.

Timing. Runs of the things compared alternate (a b, b a, ... for two; a rotating order for more), and every figure
is a median over repeats of the ratio measured within one repeat, so slow drift of a shared machine's load cancels.
On CPU the clock is the process CPU time (wall time is kept too, but on a shared machine it mostly measures the
neighbours); on CUDA it is wall time after ``torch.cuda.synchronize()``. Peak memory: on CPU the peak RSS above the
RSS before the run (VmHWM after resetting it via /proc/self/clear_refs), on CUDA ``torch.cuda.max_memory_allocated``
above the allocation before the run.

Models. Random-weight Llama-shaped models saved with :func:`lm_eval_swift.toy_models.random_causal_lm` (a
character-level tokenizer: one token per character), by preset (``--size``) or explicit shape flags;
``--model-cache DIR`` keeps them between scripts (``gpu.sh`` builds the 1B model once). ``--pretrained DIR`` uses
a real checkpoint instead (e.g. SmolLM2-135M-Instruct from ``lm-eval-swift smollm2``).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path


os.environ.setdefault(
    "TOKENIZERS_PARALLELISM", "false"
)  # no tokenizer threads competing with the measured ones
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from lm_eval_swift.swift.capture import HeadProjector  # noqa: E402
from lm_eval_swift.toy_models import random_causal_lm  # noqa: E402


BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
DATA_ENV = "LM_EVAL_SWIFT_DATA"
CACHE_ENV = "LM_EVAL_SWIFT_BENCH_CACHE"

# Llama shapes. "50m" is the CPU default (~51M parameters with the character vocabulary); "1b" is TinyLlama's body
# (22 layers, 2048 wide, grouped-query attention), ~0.97B parameters; "tiny" is for --quick runs of costly scripts.
SIZES = {
    "tiny": dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=688,
    ),
    "50m": dict(
        hidden_size=512,
        num_hidden_layers=16,
        num_attention_heads=8,
        num_key_value_heads=8,
        intermediate_size=1376,
    ),
    "1b": dict(
        hidden_size=2048,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        intermediate_size=5632,
    ),
}
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
NEVER_EOS = "<|never|>"


# ---- flags and set-up ------------------------------------------------------------------------------------------


def base_parser(doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        help="model dtype (default: float32 on CPU, bfloat16 on CUDA)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument(
        "--no-results",
        action="store_true",
        help="print only; do not append to RESULTS.md",
    )
    return parser


def add_model_args(parser: argparse.ArgumentParser, size: str = "50m") -> None:
    parser.add_argument(
        "--size", choices=sorted(SIZES), default=size, help="model shape preset"
    )
    parser.add_argument("--hidden-size", type=int)
    parser.add_argument("--layers", type=int, help="number of decoder layers")
    parser.add_argument("--attention-heads", type=int)
    parser.add_argument("--kv-heads", type=int)
    parser.add_argument("--intermediate-size", type=int)
    parser.add_argument(
        "--max-positions", type=int, default=4096, help="max_position_embeddings"
    )
    parser.add_argument(
        "--model-cache",
        default=os.environ.get(CACHE_ENV),
        help=f"keep built models here (env {CACHE_ENV})",
    )
    parser.add_argument(
        "--pretrained",
        help="a Hugging Face checkpoint directory (e.g. `lm-eval-swift smollm2`'s) instead of a random Llama",
    )


def setup(args) -> tuple[torch.device, torch.dtype]:
    """Pin torch threads; the device and model dtype the flags ask for."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda, but torch sees no CUDA device")
    dtype = (
        DTYPES[args.dtype]
        if args.dtype
        else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    )
    return device, dtype


def model_shape(args) -> dict:
    shape = dict(SIZES[args.size])
    for flag, key in (
        ("hidden_size", "hidden_size"),
        ("layers", "num_hidden_layers"),
        ("attention_heads", "num_attention_heads"),
        ("kv_heads", "num_key_value_heads"),
        ("intermediate_size", "intermediate_size"),
    ):
        if getattr(args, flag, None):
            shape[key] = getattr(args, flag)
    shape["max_position_embeddings"] = args.max_positions
    return shape


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---- machine ---------------------------------------------------------------------------------------------------


def proc_field(path: str, field: str) -> str:
    """The value of ``field: value`` in a /proc file."""
    return next(
        line.split(":", 1)[1].strip()
        for line in Path(path).read_text().splitlines()
        if line.startswith(field)
    )


def status_kb(field: str) -> int:
    return int(proc_field("/proc/self/status", field + ":").split()[0])


def cpu_model() -> str:
    try:
        return proc_field("/proc/cpuinfo", "model name")
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine(device: torch.device) -> str:
    """The CUDA card's name, or the CPU model and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {torch.get_num_threads()} thread(s)"


def load_note() -> str:
    """The 1/5/15-minute load averages over the CPU count: how busy the (shared) machine was."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}/{fifteen:.2f} on {os.cpu_count()} CPUs"


def describe(device: torch.device, torch_threads: bool = True) -> str:
    """One line: machine, CPU, threads, torch and transformers versions, load."""
    import transformers

    parts = [f"machine: {machine(device) if torch_threads else cpu_model()}"]
    if device.type == "cuda":
        parts.append(f"host CPU {cpu_model()} x{os.cpu_count()}")
    parts += [
        f"torch {torch.__version__}",
        f"transformers {transformers.__version__}",
        load_note(),
    ]
    return "; ".join(parts)


# ---- measuring -------------------------------------------------------------------------------------------------


def synchronize(device: torch.device | None = None) -> None:
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        for i in range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)


class Measure:
    """Wall time, CPU time and peak bytes above the level at entry (CPU: RSS high-water mark; CUDA: allocator).

    ``time`` is the CPU time on CPU and the wall time on CUDA.
    """

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats()
            self.start_mem = torch.cuda.memory_allocated()
        else:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text(
                "5"
            )  # reset VmHWM to the current RSS
            self.start_mem = status_kb("VmRSS") * 1024
        self.start_wall, self.start_cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated() - self.start_mem
        else:
            self.peak = status_kb("VmHWM") * 1024 - self.start_mem
        self.wall, self.cpu = (
            time.perf_counter() - self.start_wall,
            time.process_time() - self.start_cpu,
        )
        self.time = self.wall if self.device.type == "cuda" else self.cpu


def clock_name(device: torch.device) -> str:
    return "wall" if device.type == "cuda" else "CPU"


def interleaved(
    fns: Sequence[Callable[[], object]], repeats: int, device
) -> list[list[Measure]]:
    """Run each of ``fns`` once per repeat, in an order that rotates (and reverses every other cycle) from repeat
    to repeat, so each takes every place equally often -> per repeat, [measure of fns[0], measure of fns[1], ...].
    With two functions the orders are a b, b a, a b, ..."""
    k, runs = len(fns), []
    for i in range(repeats):
        order = [(j + i) % k for j in range(k)]
        if (i // k) % 2 == 1:
            order.reverse()
        measures: list[Measure | None] = [None] * k
        for j in order:
            with Measure(device) as m:
                fns[j]()
            measures[j] = m
        runs.append(measures)
    return runs


def paired(a, b, pairs: int, device) -> list[tuple[Measure, Measure]]:
    """Alternating runs (a b, b a, ...) -> [(a's measure, b's measure)] per pair."""
    return [tuple(r) for r in interleaved([a, b], pairs, device)]


def ratios(runs) -> tuple[float, float, float]:
    """Median per-pair ratios b/a of time, wall time and peak memory."""
    med = lambda key: statistics.median(key(mb) / max(key(ma), 1e-9) for ma, mb in runs)  # noqa: E731
    return med(lambda m: m.time), med(lambda m: m.wall), med(lambda m: m.peak)


def median(xs) -> float:
    return statistics.median(list(xs))


def spread(xs) -> str:
    """``median [min-max]`` of a few ratios."""
    xs = sorted(xs)
    return f"{statistics.median(xs):.3f} [{xs[0]:.3f}-{xs[-1]:.3f}]"


class TimedProjector(HeadProjector):
    """A HeadProjector that adds up the time spent in its own code (hooks and take) in ``seconds``.

    ``clock``: time.perf_counter (wall) or time.process_time (CPU). ``sync``: synchronize CUDA before and after each
    timed call, so that the kernels the hooks launch are inside the time (it also stops the GPU running ahead of
    the CPU: time the whole run with an untimed projector).
    """

    def __init__(
        self,
        model,
        heads,
        clock: Callable[[], float] = time.perf_counter,
        sync: bool = False,
    ):
        super().__init__(model, heads)
        self.clock, self.sync, self.seconds, self._depth = clock, sync, 0.0, 0

    def _timed(self, fn, *args):
        if (
            self._depth
        ):  # HeadProjector._add re-enters itself once under autocast: count it once
            return fn(*args)
        self._depth += 1
        if self.sync:
            synchronize()
        start = self.clock()
        try:
            return fn(*args)
        finally:
            if self.sync:
                synchronize()
            self.seconds += self.clock() - start
            self._depth -= 1

    def _add(self, entry, h):
        return self._timed(super()._add, entry, h)

    def take(self):
        return self._timed(super().take)


# ---- models ----------------------------------------------------------------------------------------------------


def build_model(args, dtype: torch.dtype, workdir: str | Path) -> Path:
    """``--pretrained`` when given, else a random Llama of the flags' shape saved in ``dtype`` (from
    ``--model-cache`` when it is there already)."""
    if getattr(args, "pretrained", None):
        return Path(args.pretrained)
    shape = model_shape(args)
    key = hashlib.sha256(
        json.dumps([shape, dtype_name(dtype)], sort_keys=True).encode()
    ).hexdigest()[:12]
    if args.model_cache:
        cached = Path(args.model_cache) / f"llama-{key}"
        if (cached / "config.json").is_file():
            return cached
    target = Path(workdir) / f"llama-{key}"
    start = time.perf_counter()
    random_causal_lm(target, "llama", dtype=dtype, **shape)
    print(
        f"(built a random Llama {shape} in {dtype_name(dtype)} in {time.perf_counter() - start:.0f} s)",
        flush=True,
    )
    if args.model_cache:
        Path(args.model_cache).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=args.model_cache))
        shutil.copytree(target, tmp / "m")
        os.replace(tmp / "m", cached)
        shutil.rmtree(tmp, ignore_errors=True)
        return cached
    return target


def model_label(args, params: int) -> str:
    """How RESULTS.md names the model: ``SmolLM2-135M-Instruct (135M)`` for ``--pretrained``, else ``51M Llama``."""
    return (
        f"{Path(args.pretrained).name} ({params / 1e6:.0f}M)"
        if args.pretrained
        else f"{params / 1e6:.0f}M Llama"
    )


def never_eos_copy(path: Path, workdir: str | Path) -> Path:
    """A view of the checkpoint at ``path`` whose EOS token lies outside the model's vocabulary, so the model can
    never emit it: every sample runs to max_gen_toks, whoever samples (the weights are linked, not copied). Works
    for a real checkpoint too (its tokenizer, chat template included, gains the new EOS token)."""
    target = Path(workdir) / (path.name + "-never-eos")
    target.mkdir(parents=True, exist_ok=True)
    for f in path.iterdir():
        if f.name.endswith(".safetensors") or f.name.endswith(".index.json"):
            (target / f.name).unlink(missing_ok=True)
            (target / f.name).symlink_to(f.resolve())
    tokenizer = AutoTokenizer.from_pretrained(
        path
    )  # the random models' character tokenizer, or a real one
    tokenizer.add_special_tokens({"eos_token": NEVER_EOS})
    eos = tokenizer.convert_tokens_to_ids(NEVER_EOS)
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    if eos < vocab:
        raise RuntimeError(
            f"{NEVER_EOS} got id {eos}, inside the model's vocabulary of {vocab}"
        )
    tokenizer.save_pretrained(target)
    for name in ("config.json", "generation_config.json"):
        config = json.loads((path / name).read_text())
        config["eos_token_id"] = eos
        (target / name).write_text(json.dumps(config, indent=2))
    return target


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- data ------------------------------------------------------------------------------------------------------


def data_dir(explicit: str | None = None) -> Path | None:
    """The shared data directory: --data-dir, $LM_EVAL_SWIFT_DATA, ./shared/data in the repo, ../shared/data."""
    for candidate in (
        explicit,
        os.environ.get(DATA_ENV),
        REPO / "shared" / "data",
        REPO.parent / "shared" / "data",
    ):
        if candidate and (Path(candidate) / "math_test.jsonl").is_file():
            return Path(candidate)
    return None


def gsm8k_cot_prompt(shots: int, question: str) -> str:
    """lm-eval's ``gsm8k_cot`` prompt: its first ``shots`` hand-written worked examples (8 in all), then ``question``,
    as lm-eval renders it (``Q: ...\\nA: ...`` separated by blank lines)."""
    import lm_eval
    import yaml

    path = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k-cot.yaml"
    samples = yaml.safe_load(path.read_text())["fewshot_config"]["samples"][:shots]
    if len(samples) < shots:
        raise ValueError(
            f"gsm8k-cot has {len(samples)} worked examples, asked for {shots}"
        )
    blocks = [f"Q: {s['question']}\nA: {s['target']}" for s in samples]
    return "\n\n".join([*blocks, f"Q: {question}\nA:"])


ZERO_SHOT_QUESTION = (
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends "
    "every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. How much in "
    "dollars does she make every day at the farmers' market?"
)  # GSM8K test question 1


# ---- results ---------------------------------------------------------------------------------------------------


def append_result(
    script: str, columns: Sequence[str], cells: Sequence[object], path: Path = RESULTS
) -> None:
    """Add a dated row to the table of ``script``'s section of RESULTS.md (made if missing); other lines are kept."""
    row = "| " + " | ".join([str(datetime.date.today()), *map(str, cells)]) + " |"
    header = "| " + " | ".join(["date", *columns]) + " |"
    lines = path.read_text().splitlines() if path.exists() else ["# Benchmark results"]
    title = f"## {script}"
    if title in lines:
        end = lines.index(title) + 1
        while end < len(lines) and not lines[end].startswith("## "):
            end += 1
        while end > 0 and not lines[end - 1].startswith(
            "|"
        ):  # after the section's last table row
            end -= 1
        if not lines[end - 1].startswith("|"):
            raise RuntimeError(f"{path}: section {title!r} has no table")
        lines.insert(end, row)
    else:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += [
            "",
            title,
            "",
            header,
            "| " + " | ".join(["---"] * (len(columns) + 1)) + " |",
            row,
        ]
    path.write_text("\n".join(lines) + "\n")
    print(f"appended to {path}")


def _build_main() -> None:
    """``python benchmarks/_common.py --size 1b --dtype bfloat16 --model-cache DIR``: build a model into the cache
    (with all CPU threads) so the benchmarks that follow only load it."""
    parser = argparse.ArgumentParser(description=_build_main.__doc__)
    add_model_args(parser, "50m")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    args = parser.parse_args()
    if not args.model_cache:
        sys.exit(f"--model-cache (or ${CACHE_ENV}) is needed")
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        print(build_model(args, DTYPES[args.dtype], tmp))


if __name__ == "__main__":
    _build_main()
