"""N samples of one prompt: ``hf-swift`` (one prefill, KV cache expanded to N rows, SWIFT capture) vs stock lm-eval
``hf`` with ``repeats: N`` (HFLM.generate_until on N identical requests, sampled).

Both lm-eval model classes are built directly (no CLI, so start-up is not timed) on the same random Llama, and
answer the same N requests with the same generation kwargs (do_sample, temperature 1, HF's default top-k 50,
max_gen_toks, a stop string) and batch size N. The checkpoint's EOS token lies outside the model's vocabulary, so
no sample stops early and both do the same decoding work. Two prompts: zero-shot (one GSM8K question) and lm-eval's
8-shot ``gsm8k_cot`` prompt (its hand-written worked examples); the tokenizer has one token per character, so the
prompt's token count is about 3x what a BPE tokenizer gives (it is printed).

Reported per prompt: the median over repeats of hf time / hf-swift time (runs alternate, the order flipping each
repeat), and samples per second. hf-swift runs with one all-layers SWIFT head (``--heads none``: without).
``--profile`` prints where hf-swift's time goes (cProfile, by own time). ``--parallelize`` loads both models with
lm-eval's ``parallelize=True`` (device_map over the visible GPUs). Appends a line to RESULTS.md.

    python benchmarks/sampling_throughput.py --quick      # < 1 minute on 2 cores
"""

from __future__ import annotations

import cProfile
import inspect
import io
import logging
import pstats
import tempfile
from pathlib import Path

import _common as c
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from transformers import AutoConfig

from lm_eval_swift.heads import SwiftHead
from lm_eval_swift.models import HFSwiftLM

STOP = "\n\nQ:"  # where a real model would stop (the next question); random text never writes it


def requests(context: str, n: int, max_gen_toks: int) -> list[Instance]:
    """What lm-eval sends for a task with ``repeats: n``: n identical generate_until requests."""
    gen_kwargs = {"until": [STOP], "max_gen_toks": max_gen_toks, "do_sample": True, "temperature": 1.0}
    return [Instance("generate_until", {}, (context, dict(gen_kwargs)), i) for i in range(n)]


def profile(lm: HFSwiftLM, reqs, top: int = 18) -> str:
    prof = cProfile.Profile()
    prof.enable()
    lm.generate_until(reqs, disable_tqdm=True)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = c.base_parser(__doc__)
    c.add_model_args(parser, "50m")
    parser.add_argument("--quick", action="store_true", help="tiny model, 32 new tokens, 3 pairs")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt (= repeats = batch size)")
    parser.add_argument("--batch-size", type=int, help="batch size of both (default: N)")
    parser.add_argument("--max-gen-toks", type=int, default=128)
    parser.add_argument("--shots", type=int, default=8, help="worked examples in the few-shot prompt (at most 8)")
    parser.add_argument("--pairs", type=int, default=3, help="repeats (pairs of runs) per prompt")
    parser.add_argument("--heads", default="swift", choices=["swift", "none"], help="hf-swift with a head or without")
    parser.add_argument("--parallelize", action="store_true", help="parallelize=True (device_map) for both")
    parser.add_argument("--profile", action="store_true", help="profile one hf-swift run per prompt")
    parser.add_argument("--prompts", default="zero-shot,few-shot")
    args = parser.parse_args()
    if args.quick:
        args.size, args.max_gen_toks, args.pairs = "tiny", 32, 3
    device, dtype = c.setup(args)
    if args.parallelize and not torch.cuda.is_available():
        parser.error("--parallelize needs CUDA (without GPUs lm-eval's device_map offloads weights to disk)")
    batch_size = args.batch_size or args.n
    logging.getLogger("lm_eval").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory() as tmp:
        path = c.never_eos_copy(c.build_model(args, dtype, tmp), tmp)
        config = AutoConfig.from_pretrained(path)
        spec = "none"
        if args.heads == "swift":
            spec = str(SwiftHead.for_model(config, str(path)).save_pretrained(Path(tmp) / "head"))
        common = dict(pretrained=str(path), dtype=dtype, batch_size=batch_size)
        if args.parallelize:
            common["parallelize"] = True
        else:
            common["device"] = str(device)
        hf = HFLM(**common)
        if "sample_cache" in inspect.signature(HFSwiftLM.__init__).parameters:
            common_swift = dict(common, sample_cache=None)  # every run samples: no stored samples reused
        else:
            common_swift = common
        swift = HFSwiftLM(heads=spec, **common_swift)
        params = c.n_params(hf.model)

        prompts = {
            "zero-shot": f"Q: {c.ZERO_SHOT_QUESTION}\nA:",
            "few-shot": c.gsm8k_cot_prompt(args.shots, c.ZERO_SHOT_QUESTION),
        }
        results = {}
        for name in args.prompts.split(","):
            context = prompts[name]
            reqs = requests(context, args.n, args.max_gen_toks)
            n_prompt = len(hf.tok_encode(context))
            warm = requests(context, min(2, args.n), 4)
            hf.generate_until(warm, disable_tqdm=True)
            swift.generate_until(warm, disable_tqdm=True)
            outs: dict[str, list] = {}

            def run(lm, key, reqs=reqs, outs=outs):
                return lambda: outs.__setitem__(key, lm.generate_until(reqs, disable_tqdm=True))

            runs = c.interleaved([run(hf, "hf"), run(swift, "swift")], args.pairs, device)
            finishes = sorted({o.finish for o in outs["swift"]})
            lengths = sorted({len(o.token_ids) for o in outs["swift"]})
            if finishes != ["length"] or lengths != [args.max_gen_toks]:
                print(f"warning: hf-swift samples stopped early ({finishes}, lengths {lengths})")
            speedup = [m_hf.time / m_sw.time for m_hf, m_sw in runs]
            wall = [m_hf.wall / m_sw.wall for m_hf, m_sw in runs]
            t_hf, t_sw = c.median(m.time for m, _ in runs), c.median(m.time for _, m in runs)
            results[name] = {
                "n_prompt": n_prompt,
                "speedup": c.median(speedup),
                "spread": c.spread(speedup),
                "wall": c.median(wall),
                "t_hf": t_hf,
                "t_sw": t_sw,
            }
            if args.profile:
                print(f"--- hf-swift, {name} prompt: cProfile by own time ---")
                print(profile(swift, reqs))

    clock, where = c.clock_name(device), c.machine(device)
    print(c.describe(device))
    print(
        f"model: random Llama {params / 1e6:.0f}M params ({c.dtype_name(dtype)}), N={args.n} samples x "
        f"{args.max_gen_toks} new tokens, batch size {batch_size}, hf-swift heads: {args.heads}"
        + (", parallelize=True" if args.parallelize else "")
    )
    for name, r in results.items():
        goal = 1.5 if name == "few-shot" else 1.0
        print(
            f"{name} prompt ({r['n_prompt']} tokens): hf {r['t_hf']:.2f} s, hf-swift {r['t_sw']:.2f} s {clock} time "
            f"-> hf / hf-swift x{r['speedup']:.3f} (per pair {r['spread']}; wall x{r['wall']:.3f}); "
            f"samples/s: hf-swift {args.n / r['t_sw']:.3g}, hf {args.n / r['t_hf']:.3g}; goal >= {goal} "
            f"{'met' if r['speedup'] >= goal else 'MISSED'}"
        )
    cells = [
        f"{results[k]['speedup']:.3f} ({results[k]['n_prompt']} tok)" if k in results else "-"
        for k in ("zero-shot", "few-shot")
    ]
    setup = (
        f"{'quick' if args.quick else 'full'}: {params / 1e6:.0f}M Llama {c.dtype_name(dtype)}, N={args.n}, "
        f"T={args.max_gen_toks}, batch {batch_size}, heads {args.heads}, {args.pairs} pairs"
        + (", parallelize" if args.parallelize else "")
    )
    if not args.no_results:
        c.append_result(
            "sampling_throughput.py",
            ["machine", "setup", "zero-shot hf / hf-swift time x", "few-shot hf / hf-swift time x", "clock", "load"],
            [where, setup, *cells, clock, c.load_note()],
        )


if __name__ == "__main__":
    main()
