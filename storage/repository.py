"""The narrow API that ``alignment`` and ``app`` use to store and read everything (no SQL outside ``storage``).

``Repository(data_dir)`` opens (and migrates to head) the database at ``<data_dir>/studio.db`` or any SQLAlchemy
URL, and the blob store at ``<data_dir>/blobs``. Every method is one short transaction and returns frozen records
from ``storage.records``, never ORM objects. Writes that reference blobs store the blobs first (content-addressed,
idempotent), then the rows in one transaction, so no committed row can point at a missing file. A vote is
committed before ``record_vote`` returns and is unique per (pair, annotator), enforced by the schema.

Adapter, training-run and blind A/B bookkeeping live in ``storage.adapters``, worker leases in ``storage.leases``
(both mixed in here); this module knows prompts, pairs, votes and counts. It knows nothing of tensors, images or
the UI.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from sqlalchemy import and_, case, func, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from .adapters import AdapterMixin
from .blobs import BlobStore
from .db import make_engine, make_sessionmakers, upgrade_to_head
from .errors import BlobNotFoundError, PairNotServedError, UnknownAdapterError, UnknownPairError
from .leases import LeaseMixin
from .models import (
    AB_CHOICES,
    ADAPTER_STATUSES,
    MAX_PROMPT_CHARS,
    PREFERENCE_CHOICES,
    VOTE_CHOICES,
    Adapter,
    Generation,
    Pair,
    Prompt,
    Vote,
)
from .prompts import prompt_row_id
from .records import (
    SEED_MAX,
    AdapterRecord,
    GenerationRecord,
    ImportedPair,
    LabeledPair,
    NewGeneration,
    PairRecord,
    TrainingRunRecord,
    VoteRecord,
    check_annotator,
    check_choice,
    check_new_generation,
    check_prompt,
    json_copy,
)
from .sqltypes import as_utc

__all__ = [
    "AB_CHOICES",
    "ADAPTER_STATUSES",
    "MAX_PROMPT_CHARS",
    "PREFERENCE_CHOICES",
    "VOTE_CHOICES",
    "AdapterRecord",
    "GenerationRecord",
    "LabeledPair",
    "NewGeneration",
    "PairRecord",
    "Repository",
    "TrainingRunRecord",
    "VoteRecord",
]


def _generation_record(row: Generation, prompt: str) -> GenerationRecord:
    return GenerationRecord(
        id=row.id,
        prompt=prompt,
        seed=row.seed,
        model_id=row.model_id,
        adapter_version=row.adapter_version,
        sampler_settings=json_copy(row.sampler_settings),
        image_hash=row.image_hash,
        trajectory_hash=row.trajectory_hash,
    )


def _vote_record(row: Vote) -> VoteRecord:
    return VoteRecord(row.id, row.pair_id, row.annotator, row.choice, as_utc(row.created_at))


def _check_pair_id(pair_id: object) -> int:
    if isinstance(pair_id, bool) or not isinstance(pair_id, int):
        raise UnknownPairError(f"pair id must be an integer, got {pair_id!r:.80}")
    if not 0 < pair_id <= SEED_MAX:  # no row has such an id, and the driver would overflow looking for it
        raise UnknownPairError(f"no pair with id {pair_id}")
    return pair_id


class Repository(AdapterMixin, LeaseMixin):
    """Everything the studio stores: prompts, pairs, votes, adapters, training runs, A/B trials, worker leases,
    blobs."""

    def __init__(self, data_dir: str | Path, database_url: str | URL | None = None):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if database_url is None:
            database_url = URL.create("sqlite", database=str((self.data_dir / "studio.db").resolve()))
        self.engine = make_engine(database_url)
        try:
            upgrade_to_head(self.engine)
        except BaseException:
            self.engine.dispose()
            raise
        self._read, self._write = make_sessionmakers(self.engine)
        self.blobs = BlobStore(self.data_dir / "blobs")
        self.blobs.remove_stale_temp_files()  # left by writers that died mid-write; young ones may be live

    @classmethod
    def in_memory(cls, data_dir: str | Path) -> Repository:
        """Same API on a private in-memory SQLite database (single-threaded use: tests); blobs still on disk."""
        return cls(data_dir, "sqlite://")

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ----- pairs -----------------------------------------------------------------------------------------

    def create_pair(
        self, prompt: str, left: NewGeneration, right: NewGeneration, served_to: str | None = None
    ) -> PairRecord:
        """Store two generations of ``prompt`` (blobs first, then all rows in one transaction) as a new pair."""
        check_prompt(prompt)
        gens = (check_new_generation(left, "left"), check_new_generation(right, "right"))
        if served_to is not None:
            check_annotator(served_to, "served_to")
        versions = {g.adapter_version for g in gens} - {None}
        with self._read.begin() as s:  # before any blob is written; adapters are never deleted
            for version in sorted(versions):
                if s.get(Adapter, version) is None:
                    raise UnknownAdapterError(f"no adapter version {version}")
        blob_hashes = [
            (self.blobs.put(g.image_png), None if g.trajectory is None else self.blobs.put(g.trajectory)) for g in gens
        ]
        with self._write.begin() as s:
            pid = prompt_row_id(s, prompt)
            rows = [
                Generation(
                    prompt_id=pid,
                    seed=g.seed,
                    model_id=g.model_id,
                    adapter_version=g.adapter_version,
                    sampler_settings=dict(g.sampler_settings),
                    image_hash=image_hash,
                    trajectory_hash=trajectory_hash,
                )
                for g, (image_hash, trajectory_hash) in zip(gens, blob_hashes)
            ]
            s.add_all(rows)
            s.flush()
            pair = Pair(
                prompt_id=pid, left_generation_id=rows[0].id, right_generation_id=rows[1].id, served_to=served_to
            )
            s.add(pair)
            s.flush()
            return self._pair_record(pair, prompt, rows[0], rows[1])

    def get_pair(self, pair_id: int) -> PairRecord:
        _check_pair_id(pair_id)
        left, right = aliased(Generation), aliased(Generation)
        stmt = (
            select(Pair, Prompt.text, left, right)
            .join(Prompt, Pair.prompt_id == Prompt.id)
            .join(left, Pair.left_generation_id == left.id)
            .join(right, Pair.right_generation_id == right.id)
            .where(Pair.id == pair_id)
        )
        with self._read.begin() as s:
            row = s.execute(stmt).one_or_none()
            if row is None:
                raise UnknownPairError(f"no pair with id {pair_id}")
            return self._pair_record(*row)

    @staticmethod
    def _pair_record(pair: Pair, prompt: str, left: Generation, right: Generation) -> PairRecord:
        return PairRecord(
            id=pair.id,
            prompt=prompt,
            left=_generation_record(left, prompt),
            right=_generation_record(right, prompt),
            created_at=as_utc(pair.created_at),
            served_to=pair.served_to,
        )

    # ----- votes -----------------------------------------------------------------------------------------

    def record_vote(self, pair_id: int, annotator: str, choice: str, *, served_only: bool = False
                    ) -> tuple[VoteRecord, bool]:
        """Store and commit a vote; returns ``(vote, True)``, or ``(first vote, False)`` if this annotator had
        already voted on this pair (whatever the new choice). With ``served_only`` the pair must have been served
        to ``annotator`` (``PairNotServedError`` otherwise), checked in the same transaction. Safe across threads
        and processes."""
        _check_pair_id(pair_id)
        check_annotator(annotator)
        check_choice(choice, VOTE_CHOICES)
        try:
            with self._write.begin() as s:
                if served_only:
                    row = s.execute(select(Pair.served_to).where(Pair.id == pair_id)).first()
                    if row is None:
                        raise UnknownPairError(f"no pair with id {pair_id}")
                    if row.served_to != annotator:  # None too: a pair made by a script or imported
                        raise PairNotServedError(f"pair {pair_id} was not shown to you: vote on the pairs you "
                                                 "are shown")
                existing = self._find_vote(s, pair_id, annotator)
                if existing is not None:
                    return existing, False
                vote = Vote(pair_id=pair_id, annotator=annotator, choice=choice)
                s.add(vote)
                s.flush()
                return _vote_record(vote), True
        except IntegrityError:
            # Lost a race to a concurrent identical vote (UNIQUE), or the pair does not exist (FOREIGN KEY).
            with self._read.begin() as s:
                existing = self._find_vote(s, pair_id, annotator)
            if existing is not None:
                return existing, False
            raise

    @staticmethod
    def _find_vote(s: Session, pair_id: int, annotator: str) -> VoteRecord | None:
        if s.scalar(select(Pair.id).where(Pair.id == pair_id)) is None:
            raise UnknownPairError(f"no pair with id {pair_id}")
        vote = s.scalar(select(Vote).where(Vote.pair_id == pair_id, Vote.annotator == annotator))
        return None if vote is None else _vote_record(vote)

    def labeled_pairs(
        self,
        since: dt.datetime | None = None,
        annotators: list[str] | None = None,
        choices: Sequence[str] = PREFERENCE_CHOICES,
        *,
        after_vote_id: int | None = None,
    ) -> list[LabeledPair]:
        """Voted pairs with both generations, ordered by vote time (then vote id).

        ``since`` keeps votes made at or after that time (naive = UTC); ``after_vote_id`` keeps votes with a larger
        id (see ``last_vote_id``); ``annotators`` keeps those annotators' votes; ``choices`` defaults to the votes
        that express a preference.
        """
        for choice in choices:
            check_choice(choice, VOTE_CHOICES)
        left, right = aliased(Generation), aliased(Generation)
        stmt = (
            select(Vote, Prompt.text, left, right)
            .join(Pair, Vote.pair_id == Pair.id)
            .join(Prompt, Pair.prompt_id == Prompt.id)
            .join(left, Pair.left_generation_id == left.id)
            .join(right, Pair.right_generation_id == right.id)
            .where(Vote.choice.in_(list(choices)))
            .order_by(Vote.created_at, Vote.id)
        )
        if since is not None:
            if not isinstance(since, dt.datetime):
                raise TypeError(f"since must be a datetime, got {type(since).__name__}")
            stmt = stmt.where(Vote.created_at >= as_utc(since))
        if after_vote_id is not None:
            stmt = stmt.where(Vote.id > after_vote_id)
        if annotators is not None:
            stmt = stmt.where(Vote.annotator.in_(list(annotators)))
        with self._read.begin() as s:
            return [
                LabeledPair(
                    pair_id=vote.pair_id,
                    prompt=text,
                    choice=vote.choice,
                    annotator=vote.annotator,
                    voted_at=as_utc(vote.created_at),
                    left=_generation_record(lg, text),
                    right=_generation_record(rg, text),
                    vote_id=vote.id,
                )
                for vote, text, lg, rg in s.execute(stmt)
            ]

    def votes_since(self, since_vote_id: int, choices: Sequence[str] = PREFERENCE_CHOICES) -> int:
        """How many votes (by default only preferences) have an id above ``since_vote_id``."""
        stmt = select(func.count()).select_from(Vote).where(Vote.id > since_vote_id, Vote.choice.in_(list(choices)))
        with self._read.begin() as s:
            return s.scalar(stmt) or 0

    def last_vote_id(self) -> int:
        """The largest vote id so far (0 if none); ids only grow, so it serves as a training watermark."""
        return self.watermark()[0]

    def watermark(self, choices: Sequence[str] = PREFERENCE_CHOICES) -> tuple[int, int]:
        """``(largest vote id, votes (by default preferences) with an id up to it)``, read in one snapshot.

        Ids are handed out when a transaction inserts, not when it commits: on a server database a vote with a
        smaller id can commit after a larger one was read. Such a vote raises ``votes_through(id)`` above the count
        taken here, which is how a caller notices it (``votes_since`` alone would never count it)."""
        with self._read.begin() as s:
            last = s.scalar(select(func.max(Vote.id))) or 0
            through = s.scalar(select(func.count()).select_from(Vote).where(
                Vote.id <= last, Vote.choice.in_(list(choices)))) or 0
        return last, through

    def votes_through(self, vote_id: int, choices: Sequence[str] = PREFERENCE_CHOICES) -> int:
        """How many votes (by default only preferences) have an id up to ``vote_id``."""
        stmt = select(func.count()).select_from(Vote).where(Vote.id <= vote_id, Vote.choice.in_(list(choices)))
        with self._read.begin() as s:
            return s.scalar(stmt) or 0

    def counts(self) -> dict:
        """``{"votes", "pairs", "annotators", "per_annotator", "per_day", "per_choice"}``.

        Every vote counts here, ``skip`` and ``both_bad`` included (``per_choice`` splits them); days are UTC dates.
        """
        with self._read.begin() as s:
            pairs = s.scalar(select(func.count()).select_from(Pair)) or 0
            per_annotator = dict(s.execute(select(Vote.annotator, func.count()).group_by(Vote.annotator)).all())
            per_choice = dict(s.execute(select(Vote.choice, func.count()).group_by(Vote.choice)).all())
            # Bucketed in Python: "the UTC date of a timestamp" is spelled differently by every dialect.
            per_day = Counter(as_utc(t).date().isoformat() for t in s.scalars(select(Vote.created_at)))
        return {
            "votes": sum(per_annotator.values()),
            "pairs": pairs,
            "annotators": len(per_annotator),
            "per_annotator": dict(sorted(per_annotator.items())),
            "per_day": dict(sorted(per_day.items())),
            "per_choice": {c: per_choice.get(c, 0) for c in VOTE_CHOICES},
        }

    def votes_per_prompt(self, prompts: Iterable[str] | None = None) -> dict[str, int]:
        """Votes (every choice) per prompt text; with `prompts`, exactly those texts, 0 for one never voted on or
        not stored, in their order."""
        with self._read.begin() as s:
            counted = dict(s.execute(select(Prompt.text, func.count(Vote.id))
                                     .join(Pair, Pair.prompt_id == Prompt.id)
                                     .join(Vote, Vote.pair_id == Pair.id).group_by(Prompt.text)).all())
        if prompts is None:
            return dict(sorted(counted.items()))
        return {text: counted.get(text, 0) for text in prompts}

    def annotator_stats(self, top_couples: int = 20) -> dict:
        """Votes per annotator and choice, and how often annotators agree where they judged the same pair.

        ``{"annotators": [{"annotator", "votes", "per_choice", "shared_pairs", "comparisons", "agreements"}],
        "pairs": [{"annotator_a", "annotator_b", "shared_pairs", "agreements"}]}``, both sorted by name. Two votes
        on one pair agree when their choices are equal; ``skip`` says nothing, so skipped votes are not compared.
        ``shared_pairs`` counts pairs that someone else judged too, ``comparisons`` the (vote, other vote) couples
        on them. Computed with GROUP BY in the database, without loading the votes, and without joining the votes
        of a pair with each other: each vote is joined to its pair's counts per choice, so k votes on one pair cost
        k rows, not k^2. ``pairs`` (agreement per couple of annotators) covers the ``top_couples`` annotators with
        the most votes, so that it stays a table a person can read, and its cost bounded.
        """
        judged = Vote.choice != "skip"
        per_choice_n = (select(Vote.pair_id, Vote.choice, func.count().label("n")).where(judged)
                        .group_by(Vote.pair_id, Vote.choice).subquery())
        per_pair_n = select(Vote.pair_id, func.count().label("n")).where(judged).group_by(Vote.pair_id).subquery()
        shared_pair = per_pair_n.c.n > 1
        per_annotator = (
            select(Vote.annotator, func.sum(case((shared_pair, 1), else_=0)), func.sum(per_pair_n.c.n - 1),
                   func.sum(per_choice_n.c.n - 1))
            .join(per_pair_n, per_pair_n.c.pair_id == Vote.pair_id)
            .join(per_choice_n, and_(per_choice_n.c.pair_id == Vote.pair_id, per_choice_n.c.choice == Vote.choice))
            .where(judged)
            .group_by(Vote.annotator)
        )
        busiest = (select(Vote.annotator).group_by(Vote.annotator)
                   .order_by(func.count().desc(), Vote.annotator).limit(top_couples))
        mine, other = aliased(Vote), aliased(Vote)
        per_couple = (
            select(mine.annotator, other.annotator, func.count(), func.sum(case((mine.choice == other.choice, 1),
                                                                                 else_=0)))
            .join(other, and_(other.pair_id == mine.pair_id, other.annotator > mine.annotator))
            .where(mine.choice != "skip", other.choice != "skip", mine.annotator.in_(busiest),
                   other.annotator.in_(busiest))
            .group_by(mine.annotator, other.annotator)
            .order_by(mine.annotator, other.annotator)
        )
        with self._read.begin() as s:
            choices = s.execute(select(Vote.annotator, Vote.choice, func.count()).group_by(Vote.annotator, Vote.choice))
            shared = {a: (int(n_pairs or 0), int(n or 0), int(agree or 0))
                      for a, n_pairs, n, agree in s.execute(per_annotator)}
            couples = [
                {"annotator_a": a, "annotator_b": b, "shared_pairs": int(n), "agreements": int(agree or 0)}
                for a, b, n, agree in s.execute(per_couple)
            ]
            per_choice: dict[str, dict[str, int]] = {}
            for annotator, choice, n in choices:
                per_choice.setdefault(annotator, {c: 0 for c in VOTE_CHOICES})[choice] = int(n)
        rows = []
        for annotator in sorted(per_choice):
            n_pairs, n, agree = shared.get(annotator, (0, 0, 0))
            rows.append({"annotator": annotator, "votes": sum(per_choice[annotator].values()),
                         "per_choice": per_choice[annotator], "shared_pairs": n_pairs, "comparisons": n,
                         "agreements": agree})
        return {"annotators": rows, "pairs": couples}

    # ----- blobs -----------------------------------------------------------------------------------------

    def read_blob(self, hash: str) -> bytes:  # noqa: A002 - the name callers use
        """A stored image, trajectory or adapter file, verified against its hash."""
        return self.blobs.get(hash)

    def missing_blobs(self) -> list[str]:
        """Hashes that some row references but the blob store lacks (empty when the store is consistent)."""
        with self._read.begin() as s:
            referenced = set(s.scalars(select(Generation.image_hash)))
            trajectories = select(Generation.trajectory_hash).where(Generation.trajectory_hash.is_not(None))
            referenced.update(s.scalars(trajectories))
            referenced.update(s.scalars(select(Adapter.file_hash)))
        return sorted(h for h in referenced if not self.blobs.exists(h))

    # ----- import ----------------------------------------------------------------------------------------

    def import_pairs(self, items: Iterable[ImportedPair]) -> int:
        """Store already-judged pairs (one pair + one vote each) in ONE transaction; all or nothing.

        The images must already be in the blob store (``self.blobs.put``); ``storage.export`` validates files
        before calling this. Prompts, annotators, choices and blob presence are checked again here.
        """
        items = list(items)
        for item in items:
            check_prompt(item.prompt)
            check_annotator(item.annotator)
            check_choice(item.choice, PREFERENCE_CHOICES)
            for blob_hash in (item.image_0_hash, item.image_1_hash):
                if not self.blobs.exists(blob_hash):
                    raise BlobNotFoundError(f"imported image {blob_hash} is not in the blob store")
        with self._write.begin() as s:
            for item in items:
                pid = prompt_row_id(s, item.prompt)
                gens = [
                    Generation(
                        prompt_id=pid,
                        seed=seed,
                        model_id=model,
                        adapter_version=None,
                        sampler_settings=dict(settings),
                        image_hash=image_hash,
                        trajectory_hash=None,
                    )
                    for seed, model, settings, image_hash in (
                        (item.seed_0, item.model_0, item.settings_0, item.image_0_hash),
                        (item.seed_1, item.model_1, item.settings_1, item.image_1_hash),
                    )
                ]
                s.add_all(gens)
                s.flush()
                pair = Pair(prompt_id=pid, left_generation_id=gens[0].id, right_generation_id=gens[1].id)
                s.add(pair)
                s.flush()
                vote = Vote(pair_id=pair.id, annotator=item.annotator, choice=item.choice)
                if item.voted_at is not None:
                    vote.created_at = as_utc(item.voted_at)
                s.add(vote)
            s.flush()
        return len(items)
