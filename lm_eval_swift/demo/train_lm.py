"""Train the demo's tiny character-level Llama on synthetic GSM8K-format problems (CPU, one thread).

    python -m lm_eval_swift.demo.train_lm --out DIR [options]   # the shipped model: build.LM_TRAINING's options

Training format (one chat turn, :func:`chat_prompt`): the prompt is ``char_tokenizer()``'s chat template applied to
one user turn, ``INSTRUCTION + question``, with ``add_generation_prompt=True``; the target is the GSM8K answer
verbatim (``label: a op b = c`` lines, then ``#### N``) followed by the EOS token. The final answer is therefore
presented as ``#### N`` only (no ``\\boxed{}``); graders that read either form accept it. Loss is on target
tokens only.

Speed-up: the prompt starts with the same ~140-token prefix (BOS, ``<|user|>``, the instruction) for every
example. Each step runs that prefix once, without gradient, and feeds its key/value cache (repeated over the
batch) to the forward/backward of the rest (question + target). The forward pass is exactly that of the full
sequence; only the gradient through the constant prefix's keys/values is dropped (it carries no information
about the problem). ``--full-backprop`` turns this off.

Everything is seeded (data, init, batch order, sampling) and runs with deterministic CPU ops, so a rerun with
the same arguments on the same software reproduces the checkpoint. After training the script samples from the
model (temperature 1.0, top-p 0.9) on ``test`` questions and prints per-sample accuracy, pass@k and maj@k, plus
the sampling speed with a batch of 16 (``--eval-questions 0`` skips this).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections import Counter
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from lm_eval_swift.demo.synthetic import final_answer, make_problems
from lm_eval_swift.grading import extract_answer, is_equivalent
from lm_eval_swift.harness.tasks import PROMPT as INSTRUCTION
from lm_eval_swift.toy_models import char_tokenizer, random_model


DEFAULTS = dict(
    layers=4,
    hidden=128,
    intermediate=512,
    heads=4,
    max_positions=1024,
    steps=1000,
    batch_size=16,
    lr=3e-3,
    min_lr_ratio=0.05,
    warmup=50,
    weight_decay=0.05,
    clip=1.0,
)


def chat_prompt(tokenizer: PreTrainedTokenizerFast, question: str) -> str:
    """The prompt text the model is trained and evaluated on (chat template, generation prompt added)."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": INSTRUCTION + question}],
        add_generation_prompt=True,
        tokenize=False,
    )


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def build_model(
    tokenizer, *, layers, hidden, intermediate, heads, max_positions, seed
) -> torch.nn.Module:
    return random_model(
        "llama",
        tokenizer=tokenizer,
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        max_position_embeddings=max_positions,
        seed=seed,
    )


def encode_examples(
    tokenizer, problems: list[dict]
) -> tuple[list[int], list[tuple[list[int], int]]]:
    """(shared prefix ids, [(ids after the prefix, number of prompt ids among them)]) for each problem."""
    prompts = [_ids(tokenizer, chat_prompt(tokenizer, p["question"])) for p in problems]
    prefix = _ids(tokenizer, chat_prompt(tokenizer, "")[: -len("</s><|assistant|>")])
    # char tokenizer: the prompt's ids start with the prefix's ids (checked, not assumed)
    assert all(ids[: len(prefix)] == prefix for ids in prompts)
    out = []
    for ids, p in zip(prompts, problems, strict=True):
        target = _ids(tokenizer, p["answer"]) + [tokenizer.eos_token_id]
        rest = ids[len(prefix) :]
        out.append((rest + target, len(rest)))
    return prefix, out


def batches(examples, batch_size: int, steps: int, rng: random.Random, pad_id: int):
    """``steps`` batches (input_ids, labels), walking shuffled epochs; within chunks of 50 batches, examples of
    similar length are grouped to cut padding."""
    order: list[int] = []
    out = 0
    while out < steps:
        if len(order) < batch_size * 50:
            perm = list(range(len(examples)))
            rng.shuffle(perm)
            order += perm
        chunk, order = order[: batch_size * 50], order[batch_size * 50 :]
        chunk.sort(key=lambda i: len(examples[i][0]))
        group = [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(group)
        for idx in group:
            if out == steps:
                return
            width = max(len(examples[i][0]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            labels = torch.full((len(idx), width), -100, dtype=torch.long)
            for r, i in enumerate(idx):
                seq, n_prompt = examples[i]
                ids[r, : len(seq)] = torch.tensor(seq)
                labels[r, n_prompt : len(seq)] = torch.tensor(seq[n_prompt:])
            out += 1
            yield ids, labels


def step_loss(
    model,
    prefix: torch.Tensor,
    ids: torch.Tensor,
    labels: torch.Tensor,
    full_backprop: bool,
    bf16: bool = False,
):
    """Mean next-token loss on the target tokens of ``prefix + ids`` (right-padded; pads only follow tokens)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return _step_loss(model, prefix, ids, labels, full_backprop)


def _step_loss(model, prefix, ids, labels, full_backprop):
    b = ids.shape[0]
    if full_backprop:
        full = torch.cat([prefix.expand(b, -1), ids], dim=1)
        lab = torch.cat([torch.full_like(prefix.expand(b, -1), -100), labels], dim=1)
        return model(input_ids=full, labels=lab).loss
    with torch.no_grad():
        cache = model(input_ids=prefix[None], use_cache=True).cache
    cache.batch_repeat_interleave(b)
    return model(input_ids=ids, cache=cache, labels=labels, use_cache=True).loss


def optimizer(model: torch.nn.Module, args):
    """AdamW (weight decay on matrices other than embeddings) and its schedule: linear warm-up, then cosine
    down to ``args.min_lr_ratio`` of the learning rate."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [
        p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)
    ]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-8,
    )

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (
            1 + math.cos(math.pi * t)
        )

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    return opt, sched


def train(args, callback=None) -> tuple[torch.nn.Module, PreTrainedTokenizerFast, dict]:
    """Train from ``args`` (see :func:`main`); ``callback(step, model)`` runs every ``args.save_every`` steps."""
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    random.seed(args.seed)
    tokenizer = char_tokenizer()
    problems = make_problems(
        "train_lm", args.n_train or args.steps * args.batch_size, seed=args.seed
    )
    prefix, examples = encode_examples(tokenizer, problems)
    model = build_model(
        tokenizer,
        layers=args.layers,
        hidden=args.hidden,
        intermediate=args.intermediate,
        heads=args.heads,
        max_positions=args.max_positions,
        seed=args.seed,
    )
    longest = len(prefix) + max(len(s) for s, _ in examples)
    assert longest + 160 <= args.max_positions, (longest, args.max_positions)
    n_params = sum(p.numel() for p in model.parameters())
    opt, sched = optimizer(model, args)
    prefix_t = torch.tensor(prefix)
    rng = random.Random(args.seed)
    model.train()
    t0, c0 = time.time(), time.process_time()
    ema, n_tok = None, 0
    bar = tqdm(
        batches(examples, args.batch_size, args.steps, rng, tokenizer.pad_token_id),
        total=args.steps,
        desc=f"train {n_params / 1e6:.2f}M",
        mininterval=2.0,
    )
    for step, (ids, labels) in enumerate(bar):
        loss = step_loss(model, prefix_t, ids, labels, args.full_backprop, args.bf16)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        n_tok += int((labels != -100).sum())
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        if (
            callback is not None
            and args.save_every
            and (step + 1) % args.save_every == 0
        ):
            model.eval()
            callback(step + 1, model)
            model.train()
    train_s, train_cpu = time.time() - t0, time.process_time() - c0
    model.eval()
    info = {
        "params": n_params,
        "train_seconds": round(train_s, 1),
        "train_cpu_seconds": round(train_cpu, 1),
        "final_loss_ema": round(ema, 4),
        "target_tokens": n_tok,
        "train_problems": len(problems),
    }
    return model, tokenizer, info


@torch.no_grad()
def sample(
    model, tokenizer, question: str, n: int, max_new_tokens: int = 160
) -> tuple[list[str], int, list[bool]]:
    """``n`` samples (temperature 1.0, top-p 0.9) for one question; returns (texts, generated tokens incl. EOS,
    whether each text was cut off at ``max_new_tokens``)."""
    ids = torch.tensor([_ids(tokenizer, chat_prompt(tokenizer, question))])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=True,
        temperature=1.0,
        top_p=0.9,
        top_k=0,
        max_new_tokens=max_new_tokens,
        num_return_sequences=n,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )[:, ids.shape[1] :]
    texts, n_tok, truncated = [], 0, []
    for row in out.tolist():
        ended = tokenizer.eos_token_id in row
        if ended:
            row = row[: row.index(tokenizer.eos_token_id) + 1]
        n_tok += len(row)
        texts.append(tokenizer.decode(row, skip_special_tokens=True))
        truncated.append(not ended)
    return texts, n_tok, truncated


def evaluate(
    model, tokenizer, problems: list[dict], k: int = 8, seed: int = 0, show: int = 0
) -> dict:
    """Per-sample accuracy, pass@k and maj@k (majority vote over extracted answers), graded by
    :mod:`lm_eval_swift.grading`."""
    torch.manual_seed(seed)
    per_sample, passk, majk, lengths = [], [], [], []
    t0 = time.time()
    for i, p in enumerate(tqdm(problems, desc=f"sample x{k}", mininterval=2.0)):
        texts, _, truncated = sample(model, tokenizer, p["question"], k)
        gold = final_answer(p["answer"])
        preds = [
            extract_answer(t, "gsm8k", truncated=c)
            for t, c in zip(texts, truncated, strict=True)
        ]
        ok = [x is not None and is_equivalent(x, gold, "gsm8k") for x in preds]
        per_sample += ok
        passk.append(any(ok))
        votes = Counter(x for x in preds if x is not None)
        majk.append(
            bool(votes) and is_equivalent(votes.most_common(1)[0][0], gold, "gsm8k")
        )
        lengths += [len(t) for t in texts]
        if i < show:
            print(f"--- Q: {p['question']}\n--- gold: {p['answer']!r}")
            for t, o in zip(texts[:3], ok[:3], strict=True):
                print(f"[{'ok' if o else 'XX'}] {t!r}")
    return {
        "questions": len(problems),
        "k": k,
        "mean_acc": round(sum(per_sample) / len(per_sample), 4),
        f"pass@{k}": round(sum(passk) / len(passk), 4),
        f"maj@{k}": round(sum(majk) / len(majk), 4),
        "mean_response_chars": round(sum(lengths) / len(lengths), 1),
        "eval_seconds": round(time.time() - t0, 1),
    }


def sampling_speed(
    model, tokenizer, problems: list[dict], batch: int = 16, seed: int = 0
) -> dict:
    """Generated tokens per second (incl. EOS, excl. padding after EOS) sampling ``batch`` at once."""
    torch.manual_seed(seed)
    sample(model, tokenizer, problems[0]["question"], batch)  # warm-up
    t0, n_tok = time.time(), 0
    for p in problems:
        n_tok += sample(model, tokenizer, p["question"], batch)[1]
    dt = time.time() - t0
    return {
        "batch": batch,
        "calls": len(problems),
        "tokens": n_tok,
        "tokens_per_s": round(n_tok / dt, 1),
        "seconds_per_call": round(dt / len(problems), 3),
    }


RUN_RECORD = "training_run.json"  # written beside the checkpoint: hparams, loss, test accuracy, speed


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", required=True, help="checkpoint directory (model + tokenizer)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    for k, v in DEFAULTS.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    ap.add_argument(
        "--n-train",
        type=int,
        default=0,
        help="distinct training problems (0: steps * batch_size)",
    )
    ap.add_argument(
        "--full-backprop",
        action="store_true",
        help="backprop through the shared prompt prefix too",
    )
    ap.add_argument(
        "--bf16",
        action="store_true",
        help="bfloat16 autocast for the forward pass (AMX CPUs)",
    )
    ap.add_argument(
        "--save-every",
        type=int,
        default=0,
        help="also save the model every this many steps, to OUT/step-S (0: only at the end). With "
        "--n-train and --min-lr-ratio 1 (constant learning rate), OUT/step-S is the model that --steps S "
        "trains",
    )
    ap.add_argument(
        "--eval-questions",
        type=int,
        default=100,
        help="test questions to sample (0: skip)",
    )
    ap.add_argument("--eval-k", type=int, default=8)
    ap.add_argument(
        "--speed-calls",
        type=int,
        default=5,
        help="batch-16 generate calls timed (0: skip)",
    )
    return ap.parse_args(argv)


def hparams(args: argparse.Namespace) -> dict:
    """The arguments that determine the trained weights."""
    return {
        k: getattr(args, k)
        for k in list(DEFAULTS) + ["seed", "n_train", "full_backprop", "bf16"]
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)

    def save_step(step: int, model) -> None:
        model.save_pretrained(out / f"step-{step}")

    model, tokenizer, info = train(args, save_step)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info["hparams"] = hparams(args)
    print(json.dumps(info))
    if args.eval_questions:
        test = make_problems("test", args.eval_questions, seed=0)
        res = evaluate(model, tokenizer, test, k=args.eval_k, seed=args.seed, show=3)
        print(json.dumps(res))
        info["eval"] = res
    if args.speed_calls:
        res = sampling_speed(
            model,
            tokenizer,
            make_problems("test", args.speed_calls, seed=1),
            seed=args.seed,
        )
        print(json.dumps(res))
        info["speed"] = res
    (out / RUN_RECORD).write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
