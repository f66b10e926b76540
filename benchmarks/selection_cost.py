"""What it costs to pick the best of N: a same-size sequence-classification reward model vs a SWIFT head.

The generator is a random Llama; the reward model (RM) has the generator's shape: a ``LlamaForSequenceClassification``
(one label) made of the generator's decoder plus a random score row, scored exactly as the ``seq-cls`` scorer scores
(that scorer class, loading it from disk: question + response through the chat template, one unpadded read per
sequence, batch size N). The SWIFT side is one all-layers hidden-state head (``SwiftHead.for_model``) captured
while sampling (:class:`~lm_eval_swift.swift.capture.HeadProjector`).

Each repeat runs, in a rotating order: plain sampling of N continuations of one prompt (no early stop); the same
sampling with SWIFT capture, followed by pooling each sample's reward (``swift_reward``); and the RM scoring the N
sampled responses. Reported (medians over repeats of per-repeat ratios):

* per sample: RM forward time / SWIFT head time, the head's time being all the time spent inside the capture hooks
  during sampling (the per-token projections, timed inside the hooks) plus the pooling. Goal >= 100x.
* end to end: (plain sampling + RM) / (sampling with capture + pooling). Goal >= 1.15x on CPU.
* the capture run's extra time over plain sampling per sample (a noisier upper view of the head's cost).

Clocks as in _common: CPU time on CPU; on CUDA wall time, the hooks then timed with a synchronize around each
(in a separate capture run, so the end-to-end runs keep their overlap). Appends a line to RESULTS.md.

    python benchmarks/selection_cost.py --quick      # < 1 minute on 2 cores
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import _common as c
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from lm_eval_swift.decoding import Sampling, sample_continuations
from lm_eval_swift.scorers import get_scorer
from lm_eval_swift.swift.capture import HeadProjector
from lm_eval_swift.swift.heads import SwiftHead, swift_reward


def same_size_rm(model, tokenizer, directory: Path) -> Path:
    """Save a one-label LlamaForSequenceClassification checkpoint: ``model``'s decoder plus a random score row."""
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config.update(
        architectures=["LlamaForSequenceClassification"],
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.pop("id2label", None), config.pop("label2id", None)
    (directory / "config.json").write_text(json.dumps(config, indent=2, default=str))
    state = {
        k: v.detach().to("cpu").contiguous()
        for k, v in model.state_dict().items()
        if k.startswith("model.")
    }
    dtype = next(iter(state.values())).dtype
    generator = torch.Generator().manual_seed(0)
    state["score.weight"] = (
        torch.randn(1, model.config.hidden_size, generator=generator) * 0.02
    ).to(dtype)
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    tokenizer.save_pretrained(directory)
    return directory


@torch.no_grad()
def head_arithmetic(
    head: SwiftHead, rows: int, device, dtype, clock, repeats: int = 5
) -> float:
    """Seconds for the head's linear over ``rows`` tokens' stacked features ([rows, (L+1)*d] in ``dtype``, cast to
    fp32 as the head computes), in chunks of 1024 rows: its arithmetic alone, without capture's per-hook dispatch
    (median of ``repeats``)."""
    w, b = (t.to(device) for t in head.fused())
    chunk = min(rows, 1024)
    feats = torch.randn(chunk, w.shape[1], device=device, dtype=dtype)
    times = []
    for _ in range(repeats + 1):
        c.synchronize(device)
        start = clock()
        for done in range(0, rows, chunk):
            torch.nn.functional.linear(feats[: rows - done].float(), w, b)
        c.synchronize(device)
        times.append(clock() - start)
    return c.median(times[1:])


def main() -> None:
    parser = c.base_parser(__doc__)
    c.add_model_args(parser, "50m")
    parser.add_argument("--quick", action="store_true", help="48 new tokens, 2 repeats")
    parser.add_argument(
        "--n", type=int, default=8, help="samples per prompt (and RM batch size)"
    )
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--rm-batch-size", type=int, help="RM batch size (default: N)")
    args = parser.parse_args()
    if args.quick:
        args.new_tokens, args.repeats = 48, 2
    device, dtype = c.setup(args)
    cuda = device.type == "cuda"

    with tempfile.TemporaryDirectory() as tmp:
        path = c.build_model(args, dtype, tmp)
        model = (
            AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        )
        tokenizer = AutoTokenizer.from_pretrained(path)
        rm_dir = same_size_rm(model, tokenizer, Path(tmp) / "rm")
        scorer = get_scorer("seq-cls").load(
            str(rm_dir),
            device=device,
            dtype=dtype,
            batch_size=args.rm_batch_size or args.n,
            progress=False,
        )
    params, rm_params = c.n_params(model), scorer.num_parameters
    head = SwiftHead.for_model(model.config, str(path))
    clock = time.perf_counter if cuda else time.process_time
    timed = c.TimedProjector(model, [head], clock=clock, sync=cuda)
    projector = (
        HeadProjector(model, [head]) if cuda else timed
    )  # on CPU timing the hooks costs ~nothing
    question = c.ZERO_SHOT_QUESTION
    prompt = tokenizer.encode(f"Q: {question}\nA:")
    seeds, sampling, never = (
        list(range(args.n)),
        Sampling(do_sample=True),
        (lambda ids: False),
    )
    state: dict = {}

    def sample(proj, tokens=args.new_tokens):
        return sample_continuations(
            model, prompt, seeds, sampling, tokens, never, proj, batch_size=args.n
        )

    def pool(samples) -> float:
        """SWIFT rewards of the samples as hf-swift pools them; returns the seconds it took."""
        c.synchronize(device)
        start = clock()
        rewards = [
            float(
                swift_reward(
                    parts[:, 0], torch.ones(len(ids), dtype=torch.bool), head.gate
                )
            )
            for ids, parts in samples
        ]
        assert len(rewards) == len(samples)
        return clock() - start

    def plain(tokens=args.new_tokens):
        state["texts"] = [
            tokenizer.decode(ids, skip_special_tokens=True)
            for ids, _ in sample(None, tokens)
        ]

    hooks: list[float] = []  # per repeat: seconds inside the hooks of one capture run
    pools: list[float] = []  # per repeat: seconds pooling the N rewards

    def capture():
        before = timed.seconds
        pools.append(pool(sample(projector)))
        if not cuda:
            hooks.append(timed.seconds - before)

    def capture_timed():  # CUDA: the hooks' time with their kernels, in a run of its own
        before = timed.seconds
        sample(timed)
        hooks.append(timed.seconds - before)

    def rm():
        scorer.score([question] * args.n, state["texts"])

    # warm-up (also runs capture's self-check); each repeat's RM scores the latest plain run's responses (the first
    # repeat runs plain first)
    sample(projector, 4), sample(timed, 4)
    plain(4)
    rm()
    runs = c.interleaved(
        [plain, capture, rm] + ([capture_timed] if cuda else []), args.repeats, device
    )
    assert len(hooks) == len(pools) == len(runs)

    n = args.n
    arithmetic = head_arithmetic(head, n * args.new_tokens, device, dtype, clock) / n
    rm_tokens = (
        sum(len(scorer._encode(question, t).input_ids) for t in state["texts"]) / n
    )
    per_sample = [
        r[2].time / (h + p) for r, h, p in zip(runs, hooks, pools, strict=True)
    ]
    end_to_end = [(r[0].time + r[2].time) / r[1].time for r in runs]
    marginal = [(r[1].time - r[0].time) / n for r in runs]
    t_plain, t_capture, t_rm = (c.median(r[j].time for r in runs) for j in range(3))
    head_ms = 1e3 * c.median((h + p) / n for h, p in zip(hooks, pools, strict=True))
    pool_ms = 1e3 * c.median(p / n for p in pools)
    x_sample, x_e2e = c.median(per_sample), c.median(end_to_end)
    clock_name, where = c.clock_name(device), c.machine(device)

    print(c.describe(device))
    print(
        f"generator: {c.model_label(args, params)} ({c.dtype_name(dtype)}); RM: seq-cls scorer on a "
        f"LlamaForSequenceClassification of the same shape ({rm_params / 1e6:.0f}M params); SWIFT: one all-layers head "
        f"({model.config.num_hidden_layers + 1} entries)"
    )
    print(
        f"N={n} samples x {args.new_tokens} new tokens, prompt {len(prompt)} tokens, RM input {rm_tokens:.0f} tokens "
        f"per sample, {args.repeats} repeats; {clock_name} time"
    )
    print(
        f"per sample: RM {1e3 * t_rm / n:.1f} ms vs SWIFT head {head_ms:.3f} ms (hooks during sampling "
        f"{head_ms - pool_ms:.3f} ms + pooling {pool_ms:.3f} ms) -> RM / SWIFT x{x_sample:.0f} "
        f"(per repeat {c.spread(per_sample)}); goal >= 100 {'met' if x_sample >= 100 else 'MISSED'}"
    )
    print(
        f"  the head's arithmetic alone (one batched linear over stacked features, no per-hook dispatch): "
        f"{1e3 * arithmetic:.3f} ms per sample + pooling -> RM / that x{(t_rm / n) / (arithmetic + pool_ms / 1e3):.0f}"
    )
    print(
        f"end to end: sampling {t_plain:.2f} s + RM {t_rm:.2f} s vs sampling with capture + pooling "
        f"{t_capture:.2f} s -> x{x_e2e:.3f} (per repeat {c.spread(end_to_end)}); goal >= 1.15 "
        f"{'met' if x_e2e >= 1.15 else 'MISSED'}"
    )
    extra = c.median(marginal)
    print(
        f"capture run minus plain run, per sample: {1e3 * extra:.2f} ms"
        + (f" (RM / that: x{(t_rm / n) / extra:.0f})" if extra > 0 else "")
        + " (a difference of two whole runs: noisy, can be <= 0)"
    )
    setup = (
        f"{'quick' if args.quick else 'full'}: {c.model_label(args, params)} {c.dtype_name(dtype)}, N={n}, "
        f"T={args.new_tokens}, RM input {rm_tokens:.0f} tok, {args.repeats} repeats"
    )
    if not args.no_results:
        c.append_result(
            "selection_cost.py",
            [
                "machine",
                "setup",
                "RM / SWIFT per sample x",
                "RM ms / SWIFT ms per sample",
                "(sampling + RM) / (sampling + SWIFT) x",
                "clock",
                "load",
            ],
            [
                where,
                setup,
                f"{x_sample:.0f}",
                f"{1e3 * t_rm / n:.1f} / {head_ms:.3f}",
                f"{x_e2e:.3f}",
                clock_name,
                c.load_note(),
            ],
        )


if __name__ == "__main__":
    main()
