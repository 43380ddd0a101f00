"""A studio-like process for the multi-process PostgreSQL test: it creates pairs and votes, then prints a JSON
summary of what the database acknowledged.

    PYTHONPATH=<repo root> python tests/storage/voter.py DATA_DIR DATABASE_URL NAME GO_FILE PAIR_IDS NEW_PAIRS

It waits for GO_FILE to exist (so that all processes start at once), creates NEW_PAIRS pairs whose prompts every
voter shares (a race on the prompt row), then votes on each of PAIR_IDS (comma separated) twice: as annotator
"shared" (a race with the other voters on the same (pair, annotator)) and as annotator NAME.
"""

from __future__ import annotations

import json
import os
import sys
import time

from storage import NewGeneration, Repository

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8cfc0f0"
    "1f0005000201e2211bc50000000049454e44ae426082"
)  # a 1x1 PNG


def main(data_dir: str, url: str, name: str, go_file: str, pair_ids: str, new_pairs: int) -> None:
    repo = Repository(data_dir, url)
    while not os.path.exists(go_file):
        time.sleep(0.01)
    created_pairs = []
    for i in range(new_pairs):
        gens = [
            NewGeneration(seed=side, model_id="tiny-shapes", adapter_version=None, sampler_settings={},
                          image_png=PNG, trajectory=f"{name}-{i}-{side}".encode())
            for side in (0, 1)
        ]
        created_pairs.append(repo.create_pair(f"race prompt {i}", gens[0], gens[1], served_to=name).id)
    acknowledged = {"shared": [], name: []}
    for pid in (int(p) for p in pair_ids.split(",")):
        for annotator in ("shared", name):
            vote, created = repo.record_vote(pid, annotator, ("left", "right", "tie")[pid % 3])
            if created:
                acknowledged[annotator].append(vote.id)
    repo.close()
    print(json.dumps({"created_pairs": created_pairs, "acknowledged": acknowledged}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:6], int(sys.argv[6]))
