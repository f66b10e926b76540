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
``--questions Q``: the multi-question mode instead. Q different GSM8K questions (zero-shot prompts of different
lengths) x N samples, all sent in one ``generate_until`` call, as lm-eval sends a task with ``repeats: N``, through
hf-swift packed (``packing=True``: the samples of B // N questions share each decode batch of B rows), hf-swift
one question at a time (``packing=False``) and stock ``hf``, all with batch size B (``--batch-size``, default 64
in this mode). The three run in a rotating order each repeat; the two time ratios printed are medians over the
repeats of the ratios within a repeat: ``packed / per-question`` (per-question time / packed time: packing's
speedup) and ``hf / hf-swift packed`` (hf time / packed time). ``--pretrained DIR`` runs either mode on a real
checkpoint (its EOS can end samples early: the script prints the finish reasons).

``--profile`` prints where hf-swift's time goes (cProfile, by own time). ``--parallelize`` loads both models with
lm-eval's ``parallelize=True`` (device_map over the visible GPUs). Appends a line to RESULTS.md.

    python benchmarks/sampling_throughput.py --quick      # < 1 minute on 2 cores
    python benchmarks/sampling_throughput.py --questions 8 --n 8 --batch-size 64
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

from lm_eval_swift.harness.models import HFSwiftLM
from lm_eval_swift.swift.heads import SwiftHead


STOP = "\n\nQ:"  # where a real model would stop (the next question); random text never writes it


def requests(context: str, n: int, max_gen_toks: int) -> list[Instance]:
    """What lm-eval sends for a task with ``repeats: n``: n identical generate_until requests."""
    gen_kwargs = {
        "until": [STOP],
        "max_gen_toks": max_gen_toks,
        "do_sample": True,
        "temperature": 1.0,
    }
    return [
        Instance("generate_until", {}, (context, dict(gen_kwargs)), i) for i in range(n)
    ]


def questions(q: int) -> list[str]:
    """q different zero-shot GSM8K prompts: GSM8K test question 1, then gsm8k_cot's 8 worked-example questions
    (different lengths), then the same again numbered."""
    import lm_eval
    import yaml

    path = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k-cot.yaml"
    texts = [
        c.ZERO_SHOT_QUESTION,
        *(
            s["question"]
            for s in yaml.safe_load(path.read_text())["fewshot_config"]["samples"]
        ),
    ]
    return [
        f"Q: {texts[i % len(texts)]}{f' ({i // len(texts)})' if i >= len(texts) else ''}\nA:"
        for i in range(q)
    ]


def multi_question(args, hf: HFLM, swift: HFSwiftLM, device, batch_size: int) -> dict:
    """Q questions x N samples through hf-swift packed, hf-swift per question and hf, rotating -> figures."""
    contexts = questions(args.questions)
    reqs = [r for ctx in contexts for r in requests(ctx, args.n, args.max_gen_toks)]
    warm = [r for ctx in contexts[:2] for r in requests(ctx, 2, 4)]
    hf.generate_until(warm, disable_tqdm=True)
    swift.generate_until(warm, disable_tqdm=True)
    outs: dict[str, list] = {}

    def run(key):
        lm = hf if key == "hf" else swift

        def go():
            swift.packing = key == "packed"
            outs[key] = lm.generate_until(reqs, disable_tqdm=True)

        return go

    keys = ["packed", "per-question", "hf"]
    runs = c.interleaved([run(k) for k in keys], args.pairs, device)
    early = ""
    for key in ("packed", "per-question"):
        finishes = sorted({o.finish for o in outs[key]})
        lengths = sorted({len(o.token_ids) for o in outs[key]})
        if finishes != ["length"] or lengths != [args.max_gen_toks]:
            early = f"samples stopped early ({', '.join(finishes)}): {lengths[0]}-{lengths[-1]} tokens"
            print(f"note: hf-swift {key} {early}")
    if [o.token_ids for o in outs["packed"]] != [
        o.token_ids for o in outs["per-question"]
    ]:
        print("warning: packed and per-question samples differ")
    times = {k: [r[i].time for r in runs] for i, k in enumerate(keys)}
    walls = {k: [r[i].wall for r in runs] for i, k in enumerate(keys)}
    per_q = [q / p for p, q in zip(times["packed"], times["per-question"], strict=True)]
    hf_x = [h / p for p, h in zip(times["packed"], times["hf"], strict=True)]
    return {
        "n_prompt": sorted(len(hf.tok_encode(ctx)) for ctx in contexts),
        "times": {k: c.median(v) for k, v in times.items()},
        "walls": {k: c.median(v) for k, v in walls.items()},
        "per_q": c.median(per_q),
        "per_q_spread": c.spread(per_q),
        "hf": c.median(hf_x),
        "hf_spread": c.spread(hf_x),
        "early": early,
    }


def profile(lm: HFSwiftLM, reqs, top: int = 18) -> str:
    prof = cProfile.Profile()
    prof.enable()
    lm.generate_until(reqs, disable_tqdm=True)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def build_models(args, device, dtype, batch_size: int, tmp: str):
    """(lm-eval's hf, hf-swift) on the same never-EOS copy of the benchmark model, built under ``tmp``."""
    path = c.never_eos_copy(c.build_model(args, dtype, tmp), tmp)
    config = AutoConfig.from_pretrained(path)
    spec = "none"
    if args.heads == "swift":
        spec = str(
            SwiftHead.for_model(config, str(path)).save_pretrained(Path(tmp) / "head")
        )
    common = dict(pretrained=str(path), dtype=dtype, batch_size=batch_size)
    if args.parallelize:
        common["parallelize"] = True
    else:
        common["device"] = str(device)
    hf = HFLM(**common)
    if "sample_cache" in inspect.signature(HFSwiftLM.__init__).parameters:
        common_swift = dict(
            common, sample_cache=None
        )  # every run samples: no stored samples reused
    else:
        common_swift = common
    return hf, HFSwiftLM(heads=spec, **common_swift)


def main() -> None:
    parser = c.base_parser(__doc__)
    c.add_model_args(parser, "50m")
    parser.add_argument(
        "--quick", action="store_true", help="tiny model, 32 new tokens, 3 pairs"
    )
    parser.add_argument(
        "--n", type=int, default=8, help="samples per prompt (= repeats)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="batch size of all (default: N; 64 with --questions)",
    )
    parser.add_argument(
        "--questions",
        type=int,
        default=0,
        help="multi-question mode: Q questions x N samples",
    )
    parser.add_argument(
        "--chat",
        action="store_true",
        help="prompts in one user turn of the model's chat template",
    )
    parser.add_argument("--max-gen-toks", type=int, default=128)
    parser.add_argument(
        "--shots",
        type=int,
        default=8,
        help="worked examples in the few-shot prompt (at most 8)",
    )
    parser.add_argument(
        "--pairs", type=int, default=3, help="repeats (pairs of runs) per prompt"
    )
    parser.add_argument(
        "--heads",
        default="swift",
        choices=["swift", "none"],
        help="hf-swift with a head or without",
    )
    parser.add_argument(
        "--parallelize",
        action="store_true",
        help="parallelize=True (device_map) for both",
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile one hf-swift run per prompt"
    )
    parser.add_argument("--prompts", default="zero-shot,few-shot")
    args = parser.parse_args()
    if args.quick:
        args.size, args.max_gen_toks, args.pairs = "tiny", 32, 3
    device, dtype = c.setup(args)
    if args.parallelize and not torch.cuda.is_available():
        parser.error(
            "--parallelize needs CUDA (without GPUs lm-eval's device_map offloads weights to disk)"
        )
    batch_size = args.batch_size or (64 if args.questions else args.n)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory() as tmp:
        hf, swift = build_models(args, device, dtype, batch_size, tmp)
        params = c.n_params(hf.model)
        model_name = c.model_label(args, params) + (
            ", chat template" if args.chat else ""
        )
        if args.questions:
            r = multi_question(args, hf, swift, device, batch_size)
            report_multi(args, r, device, model_name, dtype, batch_size)
            return

        prompts = {
            "zero-shot": f"Q: {c.ZERO_SHOT_QUESTION}\nA:",
            "few-shot": c.gsm8k_cot_prompt(args.shots, c.ZERO_SHOT_QUESTION),
        }
        if args.chat:  # one user turn through the model's chat template, as --apply_chat_template builds it
            prompts = {
                k: hf.apply_chat_template([{"role": "user", "content": v}])
                for k, v in prompts.items()
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
                return lambda: outs.__setitem__(
                    key, lm.generate_until(reqs, disable_tqdm=True)
                )

            runs = c.interleaved(
                [run(hf, "hf"), run(swift, "swift")], args.pairs, device
            )
            finishes = sorted({o.finish for o in outs["swift"]})
            lengths = sorted({len(o.token_ids) for o in outs["swift"]})
            if finishes != ["length"] or lengths != [args.max_gen_toks]:
                print(
                    f"warning: hf-swift samples stopped early ({finishes}, lengths {lengths})"
                )
            speedup = [m_hf.time / m_sw.time for m_hf, m_sw in runs]
            wall = [m_hf.wall / m_sw.wall for m_hf, m_sw in runs]
            t_hf, t_sw = (
                c.median(m.time for m, _ in runs),
                c.median(m.time for _, m in runs),
            )
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
        f"model: {model_name} ({c.dtype_name(dtype)}), N={args.n} samples x "
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
        f"{results[k]['speedup']:.3f} ({results[k]['n_prompt']} tok)"
        if k in results
        else "-"
        for k in ("zero-shot", "few-shot")
    ]
    setup = (
        f"{'quick' if args.quick else 'full'}: {model_name} {c.dtype_name(dtype)}, N={args.n}, "
        f"T={args.max_gen_toks}, batch {batch_size}, heads {args.heads}, {args.pairs} pairs"
        + (", parallelize" if args.parallelize else "")
    )
    if not args.no_results:
        c.append_result(
            "sampling_throughput.py",
            [
                "machine",
                "setup",
                "zero-shot hf / hf-swift time x",
                "few-shot hf / hf-swift time x",
                "clock",
                "load",
            ],
            [where, setup, *cells, clock, c.load_note()],
        )


def report_multi(
    args, r: dict, device, model_name: str, dtype, batch_size: int
) -> None:
    clock = c.clock_name(device)
    print(c.describe(device))
    print(
        f"model: {model_name} ({c.dtype_name(dtype)}), Q={args.questions} questions "
        f"(prompts {r['n_prompt'][0]}-{r['n_prompt'][-1]} tokens) x N={args.n} samples x {args.max_gen_toks} new "
        f"tokens, batch size {batch_size}, hf-swift heads: {args.heads}, {args.pairs} repeats"
    )
    t, w = r["times"], r["walls"]
    print(
        f"median {clock} time: hf-swift packed {t['packed']:.2f} s, per question {t['per-question']:.2f} s, "
        f"hf {t['hf']:.2f} s (wall {w['packed']:.2f} / {w['per-question']:.2f} / {w['hf']:.2f} s); samples/s: "
        f"packed {args.questions * args.n / t['packed']:.3g}, per question {args.questions * args.n / t['per-question']:.3g}, "
        f"hf {args.questions * args.n / t['hf']:.3g}"
    )
    print(f"per-question time / packed time, per repeat {r['per_q_spread']}; goal >= 1.5 "
          f"{'met' if r['per_q'] >= 1.5 else 'MISSED'}")  # fmt: skip
    print(f"packed / per-question x{r['per_q']:.3f}")
    print(
        f"hf time / packed time, per repeat {r['hf_spread']}; goal >= 1.5 {'met' if r['hf'] >= 1.5 else 'MISSED'}"
    )
    print(f"hf / hf-swift packed x{r['hf']:.3f}")
    if not args.no_results:
        setup = (
            f"{model_name} {c.dtype_name(dtype)}, Q={args.questions} (prompts {r['n_prompt'][0]}-{r['n_prompt'][-1]} "
            f"tok), N={args.n}, T={args.max_gen_toks}, batch {batch_size}, heads {args.heads}, {args.pairs} repeats"
            + (f"; {r['early']}" if r["early"] else "")
        )
        c.append_result(
            "sampling_throughput.py --questions",
            [
                "machine",
                "setup",
                "packed / per-question x",
                "hf / hf-swift packed x",
                "clock",
                "load",
            ],
            [
                c.machine(device),
                setup,
                r["per_q_spread"],
                r["hf_spread"],
                clock,
                c.load_note(),
            ],
        )


if __name__ == "__main__":
    main()
