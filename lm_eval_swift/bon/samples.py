"""What a "response" is: its kept tokens, its text, how it ended, and the scores it carries.

The one rule for *response tokens*, used by capture, rescoring and training alike: the generated tokens that
survive stop-sequence truncation, plus the end-of-sequence token when the model emitted it (and no stop
sequence cut the text first); never padding, never prompt tokens.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Literal


Finish = Literal["eos", "stop", "length"]


class Sample(str):
    """A generated response: behaves as its text (what lm-eval sees) and carries the tokens it was made of.

    ``token_ids`` are the response tokens (see module docstring), ``prompt_token_ids`` the prompt exactly as the
    model saw it, ``finish`` says how generation ended and ``scores`` maps a scorer's name (e.g. ``"swift"``) to
    that scorer's reward for this response.
    """

    token_ids: tuple[int, ...]
    prompt_token_ids: tuple[int, ...]
    finish: Finish | None
    scores: dict[str, float]

    def __new__(
        cls,
        text: str,
        token_ids: Sequence[int] = (),
        finish: Finish | None = None,
        scores: Mapping[str, float] | None = None,
        prompt_token_ids: Sequence[int] = (),
    ) -> Sample:
        obj = super().__new__(cls, text)
        obj.token_ids = tuple(int(t) for t in token_ids)
        obj.prompt_token_ids = tuple(int(t) for t in prompt_token_ids)
        obj.finish = finish
        obj.scores = dict(scores or {})
        return obj

    def __reduce__(self):
        return (
            Sample,
            (
                str(self),
                self.token_ids,
                self.finish,
                self.scores,
                self.prompt_token_ids,
            ),
        )


def _decoded_len(tokenizer, ids: Sequence[int]) -> int:
    return len(tokenizer.decode(list(ids), skip_special_tokens=True))


def response_tokens(
    generated: Sequence[int],
    tokenizer,
    stop: Sequence[str] = (),
    eos_token_ids: Collection[int] = (),
) -> tuple[list[int], str, Finish]:
    """Apply the response-token rule to the raw generated ids of one sample.

    ``generated``: token ids produced after the prompt (may run past EOS with padding).
    Returns ``(kept_ids, text, finish)`` where ``text`` is exactly what lm-eval's HF backend would return:
    the decoded ids (special tokens skipped) cut at the earliest stop sequence.
    """
    ids = list(generated)
    eos_at = next((i for i, t in enumerate(ids) if t in eos_token_ids), None)
    body = ids if eos_at is None else ids[:eos_at]
    text = tokenizer.decode(body, skip_special_tokens=True)
    cuts = [text.find(s) for s in stop if s]
    cuts = [c for c in cuts if c >= 0]
    if cuts:
        cut = min(cuts)
        # keep the tokens that start before the cut: the smallest prefix whose text reaches it
        lo, hi = 0, len(body)
        while lo < hi:
            mid = (lo + hi) // 2
            if _decoded_len(tokenizer, body[:mid]) >= cut:
                hi = mid
            else:
                lo = mid + 1
        return body[:lo], text[:cut], "stop"
    if eos_at is not None:
        return body + [ids[eos_at]], text, "eos"
    return body, text, "length"


def response_tokens_from_text(text: str, tokenizer, max_gen_toks: int) -> list[int]:
    """Response tokens of a response known only by its text (e.g. from lm-eval's plain ``hf`` model).

    The text is re-encoded without special tokens; it is taken to have ended on the tokenizer's EOS when it is
    shorter than ``max_gen_toks`` tokens (the tasks here stop on EOS only). Prefer responses from ``hf-swift``,
    which carry their exact token ids.
    """
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) < max_gen_toks and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def prompt_tokens(
    tokenizer, prompt: str, add_bos_token: bool | None = None
) -> list[int]:
    """The prompt's token ids as lm-eval's HF backend encodes a generation context: no special tokens when the
    text already starts with the BOS string (a chat template put it there), else the tokenizer's default
    (or ``add_bos_token`` when the model was given that argument)."""
    bos = getattr(tokenizer, "bos_token", None)
    if bos and prompt.startswith(bos):
        return tokenizer.encode(prompt, add_special_tokens=False)
    if add_bos_token is not None:
        return tokenizer.encode(prompt, add_special_tokens=add_bos_token)
    return tokenizer.encode(prompt)
