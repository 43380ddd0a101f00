"""A CLIP-format BPE tokenizer built locally for the tiny-shapes vocabulary (no download).

The files are the ones OpenAI's CLIP tokenizer uses (`vocab.json`, `merges.txt`), so the standard `CLIPTokenizer`
reads them in any transformers version. The vocabulary holds the 256 byte-level symbols (alone and with the
end-of-word marker `</w>`) as CLIP's does, then the merges learned here so that every word of the caption grammar is
exactly one token, then the two special tokens. A word outside the grammar falls back to one token per byte, so any
text tokenizes; text longer than `MODEL_MAX_LENGTH` tokens is truncated by the pipeline (docs/embedded-model.md).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from transformers import CLIPTokenizer

from alignment.embedded.data import VOCABULARY

MODEL_MAX_LENGTH = 24
EOW = "</w>"


def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character map of GPT-2/CLIP byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Greedy BPE on the given words until each is a single symbol; ties broken by the pair itself (deterministic)."""
    segs = {w: [*w[:-1], w[-1] + EOW] for w in words}
    merges: list[tuple[str, str]] = []
    while any(len(s) > 1 for s in segs.values()):
        pairs = Counter(p for s in segs.values() for p in zip(s, s[1:]))
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, s in segs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            segs[w] = out
    return merges


def write_tokenizer_files(directory: str | Path, words: tuple[str, ...] = VOCABULARY) -> Path:
    """Write vocab.json and merges.txt for `words` into `directory` and return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    base = list(bytes_to_unicode().values())
    symbols = base + [c + EOW for c in base]
    merges = learn_merges(sorted(set(words)))
    symbols += ["".join(m) for m in merges if "".join(m) not in symbols]
    symbols += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return directory


def build_tokenizer(directory: str | Path) -> CLIPTokenizer:
    """Write the files and load them as a CLIPTokenizer with `model_max_length` set."""
    # from_pretrained reads vocab.json + merges.txt in every transformers version (the constructor's
    # argument names changed in transformers 5).
    return CLIPTokenizer.from_pretrained(str(write_tokenizer_files(directory)), model_max_length=MODEL_MAX_LENGTH)
