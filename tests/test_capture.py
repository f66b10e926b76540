"""HeadProjector and rescore against a reference computed directly from ``output_hidden_states=True``."""

from __future__ import annotations

import pytest
import torch
from helpers import make_heads, reference_rewards
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GemmaConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
)

from lm_eval_swift.swift import capture
from lm_eval_swift.swift.capture import CaptureLayoutError, HeadProjector
from lm_eval_swift.swift.heads import SwiftHead
from lm_eval_swift.swift.rescoring import rescore


torch.set_num_threads(1)
ARCHS = ["llama", "mistral", "qwen2"]


@pytest.fixture(scope="module", params=ARCHS)
def model_and_heads(request, tiny_model_factory):
    path = tiny_model_factory(request.param, num_hidden_layers=4)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return model, make_heads(model.config, str(path))


def n_hooks(model) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()
    )


def random_pairs(n, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 12, (n, 2), generator=g).tolist()
    prompts = [torch.randint(0, vocab, (a,), generator=g).tolist() for a, _ in lens]
    responses = [torch.randint(0, vocab, (b,), generator=g).tolist() for _, b in lens]
    responses[-1] = []  # an empty response scores 0
    return prompts, responses


def test_rescore_matches_reference(model_and_heads):
    model, heads = model_and_heads
    prompts, responses = random_pairs(7, model.config.vocab_size)
    got = rescore(model, heads, prompts, responses, batch_size=3, disable_tqdm=True)
    want = reference_rewards(model, heads, prompts, responses)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)
    assert (got[-1] == 0).all() and got[:-1].abs().min() > 1e-3


def test_rescore_runs_each_prompt_once_per_batch(model_and_heads):
    """Best-of-N: 3 prompts x 3 responses of different lengths, interleaved; a batch holds one prompt's responses
    and feeds that prompt once."""
    model, heads = model_and_heads
    prompts, responses = random_pairs(9, model.config.vocab_size, seed=1)
    prompts = [prompts[i % 3] for i in range(9)]
    fed = []  # [B, S] of every forward
    handle = model.get_input_embeddings().register_forward_hook(
        lambda m, args, out: fed.append(tuple(args[0].shape))
    )
    try:
        got = rescore(model, heads, prompts, responses, batch_size=2, disable_tqdm=True)
    finally:
        handle.remove()
    want = reference_rewards(model, heads, prompts, responses)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)
    fed = fed[
        -12:
    ]  # 6 batches, each a prompt then its responses (after the projector's self-check)
    assert sorted(fed[::2]) == sorted((1, len(prompts[i])) for i in (0, 0, 1, 1, 2, 2))
    assert sorted(b for b, _ in fed[1::2]) == [1, 1, 1, 2, 2, 2]


def test_projector_hooks_only_used_entries(model_and_heads):
    model, heads = model_and_heads
    proj, before = HeadProjector(model, heads[1:2]), n_hooks(model)  # entries 1..4
    assert sorted(proj.weights) == [1, 2, 3, 4] and not proj.uses_logits
    with proj:
        model(torch.tensor([[5, 6, 7]]))
        with proj.paused():
            model(torch.tensor([[5, 6, 7, 8]]))
        assert proj.take().shape == (1, 3, 1, 2)
        with pytest.raises(RuntimeError, match="no forward pass"):
            proj.take()
    assert n_hooks(model) == before


def test_wide_inputs_projected_at_once_equal_deferred_ones(
    model_and_heads, monkeypatch
):
    """Inputs of at most DEFER_MAX_POSITIONS positions are queued and projected together at take(); wider ones
    in each hook. Both give the same numbers; entries of different positions are a clear error."""
    model, heads = model_and_heads
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad(), HeadProjector(model, heads) as proj:
        model(ids)
        deferred = proj.take()
        monkeypatch.setattr(capture, "DEFER_MAX_POSITIONS", 1)
        model(ids)
        at_once = proj.take()
        monkeypatch.undo()
        torch.testing.assert_close(at_once, deferred, rtol=1e-5, atol=1e-6)
        model(
            ids, logits_to_keep=1
        )  # logits of the last position only: the logits head cannot be captured
        with pytest.raises(RuntimeError, match="logits_to_keep=0"):
            proj.take()


def test_projection_stays_fp32_under_autocast(model_and_heads):
    model, heads = model_and_heads
    ids = torch.tensor([[5, 6, 7, 8]])
    with (
        torch.no_grad(),
        torch.autocast("cpu", dtype=torch.bfloat16),
        HeadProjector(model, heads[:1]) as proj,
    ):
        out = model(ids, output_hidden_states=True)
        got = proj.take()[0, :, 0]
    want = heads[0](torch.cat([h[0].float() for h in out.hidden_states], dim=-1))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _tiny(config_cls, logit_scale=1.0, **kw):
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        **kw,
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    model.lm_head.weight.data *= logit_scale
    return model


def test_gemma_scaled_embeddings_are_captured_as_hf_defines_them():
    model = _tiny(GemmaConfig)
    heads = make_heads(model.config, "tiny-gemma")
    prompts, responses = random_pairs(3, 50)
    torch.testing.assert_close(
        rescore(model, heads, prompts, responses, disable_tqdm=True),
        reference_rewards(model, heads, prompts, responses),
        rtol=1e-3,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "model, head",
    [
        (
            lambda: _tiny(LlamaConfig, tie_last_hidden_states=False),
            0,
        ),  # hidden_states[-1] before the final norm
        (lambda: _tiny(Gemma2Config, logit_scale=1e3), 2),
    ],  # logits (large enough to matter) soft-capped after lm_head
)
def test_self_check_refuses_other_layouts(model, head):
    model = model()
    proj = HeadProjector(model, make_heads(model.config, "m")[head : head + 1])
    with pytest.raises(CaptureLayoutError, match="self-check failed"):
        proj.check()
    before = n_hooks(
        model
    )  # HF's own output-capturing hooks are installed by the check's forward
    with pytest.raises(CaptureLayoutError):
        proj.check()
    assert n_hooks(model) == before


def test_unsupported_architecture():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2))
    config = LlamaConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2
    )
    with pytest.raises(CaptureLayoutError, match="Llama/Mistral/Qwen2-like"):
        HeadProjector(model, [SwiftHead.for_model(config, "gpt2")])
