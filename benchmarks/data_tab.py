"""The Data tab's refresh with many votes on one pair: per-annotator agreement must not cost k^2 for k votes.

    python -m benchmarks.data_tab [--votes 400] [--repeats 5] [--json FILE]

Builds two SQLite repositories with the same number of votes from as many annotators: one pair each ("spread"),
and all on one pair ("one pair", where every vote has `votes - 1` others to agree with). Times
`Repository.annotator_stats()` (what the Data tab's refresh runs) on each, and beside it a k^2 self-join of the
votes of each pair (how agreement is computed naively), and prints the medians and their ratios, measured side by
side in one run. With 1 vote on one pair against 400 the per-vote cost is compared too.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image
from sqlalchemy import and_, func, select
from sqlalchemy.orm import aliased

from storage import NewGeneration, Repository
from storage.models import Vote

CHOICES = ("left", "right", "tie", "skip")


def generation(seed: int) -> NewGeneration:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (seed % 256, seed // 256 % 256, 0)).save(buf, format="PNG")
    return NewGeneration(seed=seed, model_id="bench", adapter_version=None, sampler_settings={},
                         image_png=buf.getvalue(), trajectory=None)


def build(root: Path, votes: int, one_pair: bool) -> Repository:
    repo = Repository(root)
    pair = None
    for i in range(votes):
        if pair is None or not one_pair:
            pair = repo.create_pair("a red circle", generation(2 * i), generation(2 * i + 1))
        repo.record_vote(pair.id, f"annotator-{i:04d}", CHOICES[(7 * i) % 4])
    return repo


def self_join(repo: Repository) -> int:
    """The naive agreement query: each vote joined to every other vote on its pair."""
    mine, other = aliased(Vote), aliased(Vote)
    stmt = (select(mine.annotator, func.count())
            .join(other, and_(other.pair_id == mine.pair_id, other.annotator != mine.annotator))
            .where(mine.choice != "skip", other.choice != "skip").group_by(mine.annotator))
    with repo.engine.connect() as conn:
        return len(conn.execute(stmt).all())


def median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(votes: int = 400, repeats: int = 5) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        repos = {"spread": build(Path(tmp) / "spread", votes, one_pair=False),
                 "one pair": build(Path(tmp) / "one", votes, one_pair=True),
                 "one vote": build(Path(tmp) / "single", 1, one_pair=True)}
        stats = {name: median_s(repo.annotator_stats, repeats) for name, repo in repos.items()}
        joins = {name: median_s(lambda r=repo: self_join(r), repeats) for name, repo in repos.items()}
        for repo in repos.values():
            repo.close()
    return {
        "votes": votes,
        "annotator_stats_s": stats,
        "self_join_s": joins,
        "one_pair_over_spread": stats["one pair"] / stats["spread"],
        "self_join_one_pair_over_spread": joins["one pair"] / joins["spread"],
        "per_vote_one_pair_over_one_vote": (stats["one pair"] / votes) / stats["one vote"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data_tab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--votes", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = run(args.votes, args.repeats)
    for name in ("spread", "one pair", "one vote"):
        print(f"{name:>9}: annotator_stats {result['annotator_stats_s'][name] * 1e3:8.1f} ms, "
              f"self-join {result['self_join_s'][name] * 1e3:8.1f} ms")
    print(f"one pair / spread: annotator_stats {result['one_pair_over_spread']:.2f}x, "
          f"self-join {result['self_join_one_pair_over_spread']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
