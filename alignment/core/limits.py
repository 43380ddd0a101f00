"""Limits and validation of what a person or a client sends: prompts and seeds.

Shared by the sampler and the UI's input checks; imports no torch, so the app can check input without loading
the model stack.
"""

from __future__ import annotations

from settings import MAX_PROMPT_CHARS

MAX_SEED = 2**63 - 1


class PromptError(ValueError):
    """The prompt is empty or too long."""


def validate_prompt(prompt: str) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("the prompt is empty: type what the image should show")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PromptError(f"the prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    return " ".join(prompt.split())


def validate_seeds(seeds) -> list[int]:
    out = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) and not (isinstance(s, float) and s.is_integer()):
            raise ValueError(f"seed {s!r} is not an integer")
        if not 0 <= int(s) <= MAX_SEED:
            raise ValueError(f"seed {s} is out of range: use 0 .. {MAX_SEED}")
        out.append(int(s))
    if not out:
        raise ValueError("at least one seed is needed")
    return out
