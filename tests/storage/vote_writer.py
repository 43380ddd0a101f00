"""A process that streams pairs and votes into a data dir, printing each acknowledged pair id (for the crash test).

    PYTHONPATH=<repo root> python tests/storage/vote_writer.py DATA_DIR START

Each iteration creates a pair with fresh images and a trajectory blob, records a vote as annotator "writer", and
only then prints the pair id and flushes: a printed id is a vote the studio would have acknowledged.
"""

from __future__ import annotations

import io
import os
import sys

from PIL import Image

from storage import NewGeneration, Repository


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, format="PNG")
    return buffer.getvalue()


def main(data_dir: str, start: int) -> None:
    repo = Repository(data_dir)
    i = start
    while True:
        gens = [
            NewGeneration(
                seed=2 * i + side,
                model_id="tiny-shapes",
                adapter_version=None,
                sampler_settings={"steps": 4},
                image_png=png_bytes((i % 256, (i // 256) % 256, side)),
                trajectory=os.urandom(32 * 1024),  # fresh bytes every time: every pair writes new blobs
            )
            for side in (0, 1)
        ]
        pair = repo.create_pair(f"crash prompt {i}", gens[0], gens[1])
        repo.record_vote(pair.id, "writer", ("left", "right", "tie")[i % 3])
        print(pair.id, flush=True)
        i += 1


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
