"""The worker on mixed and damaged data: imported pairs (images only, any size) train with Diffusion-DPO beside
the studio's trajectory pairs in one run of a dense objective, and a pair whose blob is missing or damaged is
quarantined and reported instead of failing every run."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignment.eval.labelers import larger
from alignment.eval.simulate import collect_round
from alignment.families.loader import load_pipeline
from alignment.serving.sampler import Sampler
from alignment.training.trainer import Trainer
from alignment.training.worker import Worker
from settings import TrainerConfig, WorkerConfig
from storage import Repository
from storage.export import import_parquet
from tests.support.storage import png_bytes

PROMPTS = ["a red circle on a blue background", "a large green square", "a small yellow triangle",
           "a purple circle on a white background"]


@pytest.fixture
def repo(tmp_path, embedded):
    repo = Repository(tmp_path / "data")
    collect_round(Sampler(embedded), repo, larger, PROMPTS, 0, "tester")
    yield repo
    repo.close()


def worker_for(repo, objective: str = "discounted") -> Worker:
    cfg = TrainerConfig(objective=objective, train_steps=4, batch_pairs=6, steps_per_pair=2)
    return Worker(repo, "embedded", cfg, WorkerConfig(train_every=1, min_votes=2, fidelity_seeds=(1000,),
                                                      fidelity_prompts=4), trainer=Trainer(load_pipeline(), cfg))


def test_imported_pairs_of_another_size_train_beside_trajectory_pairs(repo, tmp_path):
    path = tmp_path / "import.parquet"
    n = 3  # 64 px images: twice the embedded model's size
    pq.write_table(pa.table({"caption": ["a large blue circle"] * n,
                             "jpg_0": [png_bytes((200, 0, i), size=(64, 64)) for i in range(n)],
                             "jpg_1": [png_bytes((0, 0, 200 + i), size=(64, 48)) for i in range(n)],
                             "label_0": [1.0] * n, "label_1": [0.0] * n}), path)
    assert import_parquet(repo, path) == n
    run = worker_for(repo).run_once()
    assert run["status"] in ("live", "rejected", "candidate"), run  # trained, whatever the guard says
    assert run["metrics"]["pairs"] == len(PROMPTS) + n and "quarantined_pairs" not in run["metrics"]
    assert repo.get_adapter(run["version"]).votes_used == len(PROMPTS) + n


def test_a_missing_or_damaged_blob_quarantines_its_pair_and_the_run_goes_on(repo):
    pairs = repo.labeled_pairs()
    damaged, missing = pairs[0], pairs[1]
    repo.blobs.path(damaged.left.trajectory_hash).write_bytes(b"not a trajectory")
    repo.blobs.path(missing.right.trajectory_hash).unlink()
    run = worker_for(repo).run_once()
    assert run["status"] in ("live", "rejected", "candidate"), run
    quarantined = {q["pair_id"]: q["reason"] for q in run["metrics"]["quarantined_pairs"]}
    assert set(quarantined) == {damaged.pair_id, missing.pair_id}
    assert "BlobIntegrityError" in quarantined[damaged.pair_id]
    assert "BlobNotFoundError" in quarantined[missing.pair_id]
    assert run["metrics"]["pairs"] == len(PROMPTS) - 2
