"""Shared fixtures: tiny random checkpoints saved to temp dirs and the shared data directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# standard library only: lm_eval is not imported yet
from lm_eval_swift.paths import models_dir


# real models built for the tests (lm_eval_swift.smollm2) are inputs, not results: they stay in the user's cache
MODEL_CACHE = models_dir()

# before lm_eval is imported anywhere: this session's caches (lm-eval's, and hf-swift's sample cache in
# $XDG_CACHE_HOME/lm-eval-swift) live in a fresh temp folder, so no test reads samples another session or another test
# run left behind. The Hugging Face cache stays where it was (it defaults to $XDG_CACHE_HOME/huggingface).
_cache_root = tempfile.mkdtemp(prefix="lm-eval-swift-tests-cache-")
os.environ.setdefault(
    "HF_HOME",
    os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "huggingface",
    ),
)
os.environ["LM_HARNESS_CACHE_PATH"] = _cache_root
os.environ["XDG_CACHE_HOME"] = _cache_root
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from lm_eval_swift.toy_models import random_causal_lm  # noqa: E402


REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """Where real models built by :mod:`lm_eval_swift.smollm2` are kept between test runs."""
    return MODEL_CACHE


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The tests' models are tiny: one torch thread is faster than two (and than two contended ones)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(
            f"../shared/data not found beside the checkout (looked in {SHARED_DATA})"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """``factory(arch="llama", **kw) -> Path`` of a saved random model; cached per argument set."""
    cache: dict[tuple, Path] = {}

    def factory(arch: str = "llama", **kwargs) -> Path:
        key = (arch, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = random_causal_lm(
                tmp_path_factory.mktemp(f"tiny-{arch}"), arch, **kwargs
            )
        return cache[key]

    return factory


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_factory) -> Path:
    return tiny_model_factory("llama")
