"""Preference data in and out as Parquet, in the Pick-a-Pic layout.

Export writes one row per preference vote (``left``, ``right`` or ``tie``; ``both_bad`` and ``skip`` say nothing
about which image is better). A pair judged by two annotators gives two rows. Columns:

    caption                 prompt text
    jpg_0, jpg_1            image bytes of the left / right image, exactly as stored (our images are PNG; the
                            names are Pick-a-Pic's)
    label_0, label_1        1.0 / 0.0 for the preferred side, 0.5 / 0.5 for a tie
    seed_0, seed_1          sampler seeds (null for imported images)
    adapter_version_0/_1    adapter version that made each image (null = base model)
    model_0, model_1        model id that made each image (Pick-a-Pic's names for this column)
    annotator               who voted
    created_at              when the vote was made (UTC)

Import reads the same layout (required: caption, jpg_0, jpg_1, label_0, label_1; optional: seed_0/1, model_0/1 or
model_id, adapter_version_0/1, annotator or Pick-a-Pic's user_id, created_at). Each row becomes two generations
without trajectories (usable by the Diffusion-DPO objective), one pair and one vote, all in one transaction.
Adapter versions in a file name another studio's adapters, so they are kept only as ``source_adapter_version``
in the sampler settings. The whole file is checked first (types, nulls, labels, prompt and annotator limits,
every image decodes with Pillow); any problem raises ``ImportFormatError`` naming the row, and nothing is written.
Images are then stored (content-addressed) and the rows inserted. The file is read in batches of rows twice, so
memory holds one batch of images at a time. ``ImportLimits`` caps the file's size, its rows and the size of any one
value (an image, a caption): the file size, the row count and each column chunk's declared size are checked from
the footer before anything is decoded, and every decoded value again.

    python -m storage.export --data-dir DIR --out FILE.parquet      # export
    python -m storage.export --data-dir DIR --import FILE.parquet   # import into DIR

This module knows Parquet, the Pick-a-Pic columns and image decoding; it reaches the database only through
``Repository``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from .errors import ImportFormatError, StorageError
from .models import MAX_MODEL_ID_CHARS
from .records import SEED_MAX, SEED_MIN, ImportedPair, check_annotator, check_prompt
from .repository import Repository

EXPORT_SCHEMA = pa.schema(
    [
        ("caption", pa.string()),
        ("jpg_0", pa.binary()),
        ("jpg_1", pa.binary()),
        ("label_0", pa.float64()),
        ("label_1", pa.float64()),
        ("seed_0", pa.int64()),
        ("seed_1", pa.int64()),
        ("adapter_version_0", pa.int64()),
        ("adapter_version_1", pa.int64()),
        ("model_0", pa.string()),
        ("model_1", pa.string()),
        ("annotator", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)
LABELS = {"left": (1.0, 0.0), "right": (0.0, 1.0), "tie": (0.5, 0.5)}
CHOICE_OF_LABELS = {labels: choice for choice, labels in LABELS.items()}
REQUIRED_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
IMPORTED = "imported"  # model id and annotator when the file has none
BATCH_ROWS = 256


# ----- export --------------------------------------------------------------------------------------------


def export_parquet(repo: Repository, path: str | Path, *, batch_rows: int = BATCH_ROWS) -> int:
    """Write every preference vote to ``path`` (atomically: a failed export leaves no file); returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labeled = repo.labeled_pairs()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with pq.ParquetWriter(tmp, EXPORT_SCHEMA) as writer:
            for start in range(0, len(labeled), batch_rows):
                writer.write_table(_export_batch(repo, labeled[start : start + batch_rows]))
            if not labeled:
                writer.write_table(EXPORT_SCHEMA.empty_table())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(labeled)


def _export_batch(repo: Repository, labeled) -> pa.Table:
    columns: dict[str, list] = {name: [] for name in EXPORT_SCHEMA.names}
    for item in labeled:
        label_0, label_1 = LABELS[item.choice]
        row = {
            "caption": item.prompt,
            "jpg_0": repo.read_blob(item.left.image_hash),
            "jpg_1": repo.read_blob(item.right.image_hash),
            "label_0": label_0,
            "label_1": label_1,
            "seed_0": item.left.seed,
            "seed_1": item.right.seed,
            "adapter_version_0": item.left.adapter_version,
            "adapter_version_1": item.right.adapter_version,
            "model_0": item.left.model_id,
            "model_1": item.right.model_id,
            "annotator": item.annotator,
            "created_at": item.voted_at,
        }
        for name, value in row.items():
            columns[name].append(value)
    return pa.Table.from_pydict(columns, schema=EXPORT_SCHEMA)


# ----- import --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportLimits:
    """What one import may hold: bytes of the file, rows, and bytes of any one value."""

    max_file_bytes: int = 1 << 40
    max_rows: int = 10_000_000
    max_value_bytes: int = 64 << 20

    def __post_init__(self):
        if min(self.max_file_bytes, self.max_rows, self.max_value_bytes) < 1:
            raise ValueError("import limits must be positive")


def import_parquet(repo: Repository, path: str | Path, *, batch_rows: int = BATCH_ROWS,
                   limits: ImportLimits = ImportLimits()) -> int:
    """Import a Pick-a-Pic-layout file into ``repo``; returns the number of pairs (= votes) added.

    Raises ImportFormatError, having written no rows, if anything in the file is malformed or over ``limits``.
    """
    items: list[ImportedPair] = []
    size = os.stat(path).st_size
    if size > limits.max_file_bytes:
        raise ImportFormatError(f"the file is {size / 1e6:.1f} MB, more than the {limits.max_file_bytes / 1e6:.1f} MB "
                                "an import may be; split it")
    with _open_parquet(path) as parquet:
        _check_schema(parquet.schema_arrow)
        _check_declared_sizes(parquet, limits)
        for start, batch in _batches(parquet, batch_rows):  # pass 1: validate everything, write nothing
            _check_values(batch, start, limits)
            for _ in _rows(batch, start, decode_images=True):
                pass
        for start, batch in _batches(parquet, batch_rows):  # pass 2: store images, collect the rows
            for row in _rows(batch, start, decode_images=False):
                items.append(
                    ImportedPair(
                        prompt=row["caption"],
                        image_0_hash=repo.blobs.put(row["jpg_0"]),
                        image_1_hash=repo.blobs.put(row["jpg_1"]),
                        choice=row["choice"],
                        annotator=row["annotator"],
                        model_0=row["model_0"],
                        model_1=row["model_1"],
                        seed_0=row["seed_0"],
                        seed_1=row["seed_1"],
                        voted_at=row["created_at"],
                        settings_0=row["settings_0"],
                        settings_1=row["settings_1"],
                    )
                )
    return repo.import_pairs(items)


def _check_declared_sizes(parquet: pq.ParquetFile, limits: ImportLimits) -> None:
    """Refuse a file whose footer declares too many rows, or a column chunk larger than its rows' values may be,
    before any page is decoded (a value that compresses well is small in the file but not in memory)."""
    meta = parquet.metadata
    if meta.num_rows > limits.max_rows:
        raise ImportFormatError(f"the file has {meta.num_rows} rows, more than the {limits.max_rows} an import may "
                                "have; split it")
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        allowed = limits.max_value_bytes * max(1, group.num_rows) + (1 << 20)  # plus page headers and levels
        for c in range(group.num_columns):
            chunk = group.column(c)
            if chunk.total_uncompressed_size > allowed:
                raise ImportFormatError(
                    f"column {chunk.path_in_schema!r} of row group {g} decodes to {chunk.total_uncompressed_size / 1e6:.1f}"
                    f" MB for {group.num_rows} rows: a value may be at most {limits.max_value_bytes / 1e6:.1f} MB")


def _check_values(batch: pa.RecordBatch, start: int, limits: ImportLimits) -> None:
    """Refuse a batch with a text or binary value larger than the limit, naming its row."""
    for name, column in zip(batch.schema.names, batch.columns):
        if not (_is_text(column.type) or _is_bytes(column.type)):
            continue
        if pa.types.is_struct(column.type):  # an image as {bytes, path}
            column = pc.struct_field(column, "bytes")
        lengths = pc.binary_length(column)
        longest = pc.max(lengths).as_py()
        if longest is not None and longest > limits.max_value_bytes:
            row = start + pc.index(lengths, longest).as_py()
            raise ImportFormatError(f"row {row}: {name} is {longest / 1e6:.1f} MB, more than the "
                                    f"{limits.max_value_bytes / 1e6:.1f} MB a value may be")


def _open_parquet(path: str | Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:  # a damaged footer can hold bad UTF-8
        raise ImportFormatError(f"{path} is not a readable Parquet file: {exc}") from None


def _batches(parquet: pq.ParquetFile, batch_rows: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    start = 0
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows):
            yield start, batch
            start += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise ImportFormatError(f"cannot read the Parquet data after row {start}: {exc}") from None
    expected = parquet.metadata.num_rows
    if start != expected:  # a damaged page can read as fewer rows without any error from the reader
        raise ImportFormatError(f"the file declares {expected} rows but only {start} could be read: it is damaged")


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_bytes(t: pa.DataType) -> bool:
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return True
    # Hugging Face's Image feature: struct<bytes: binary, path: string>
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and _is_bytes(t.field("bytes").type)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


_COLUMN_KINDS = {
    "caption": (_is_text, "a string"),
    "jpg_0": (_is_bytes, "binary image bytes"),
    "jpg_1": (_is_bytes, "binary image bytes"),
    "label_0": (_is_number, "a number"),
    "label_1": (_is_number, "a number"),
    "seed_0": (pa.types.is_integer, "an integer"),
    "seed_1": (pa.types.is_integer, "an integer"),
    "adapter_version_0": (pa.types.is_integer, "an integer"),
    "adapter_version_1": (pa.types.is_integer, "an integer"),
    "model_0": (_is_text, "a string"),
    "model_1": (_is_text, "a string"),
    "model_id": (_is_text, "a string"),
    "annotator": (_is_text, "a string"),
    "user_id": (lambda t: _is_text(t) or pa.types.is_integer(t), "a string or an integer"),
    "created_at": (pa.types.is_timestamp, "a timestamp"),
}


def _check_schema(schema: pa.Schema) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise ImportFormatError(
            f"missing column(s) {', '.join(missing)}; a Pick-a-Pic file needs {', '.join(REQUIRED_COLUMNS)}"
        )
    for name, (is_kind, kind) in _COLUMN_KINDS.items():
        if name in schema.names and not is_kind(schema.field(name).type):
            raise ImportFormatError(f"column {name} must be {kind}, but it is {schema.field(name).type}")


def _rows(batch: pa.RecordBatch, start: int, *, decode_images: bool) -> Iterator[dict]:
    """Checked, normalised rows of one batch; ImportFormatError names the first bad row (0-based)."""
    try:
        data = batch.to_pydict()
    except (UnicodeDecodeError, pa.ArrowException) as exc:  # damaged text pages decode lazily, here
        raise ImportFormatError(f"cannot read rows {start}..{start + batch.num_rows - 1}: {exc}") from None
    names = set(data)
    for offset in range(batch.num_rows):
        index = start + offset

        def get(name: str, default=None):
            return data[name][offset] if name in names else default

        try:
            yield _row(get, decode_images)
        except (StorageError, ValueError) as exc:
            raise ImportFormatError(f"row {index}: {exc}") from None


def _row(get, decode_images: bool) -> dict:
    caption = get("caption")
    if caption is None:
        raise ValueError("caption is null")
    check_prompt(caption)
    images = []
    for side in ("jpg_0", "jpg_1"):
        value = get(side)
        if isinstance(value, dict):  # Hugging Face Image feature
            value = value.get("bytes")
        if not value:
            raise ValueError(f"{side} is null or empty")
        if decode_images:
            _check_image(value, side)
        images.append(bytes(value))
    labels = (get("label_0"), get("label_1"))
    if None in labels:
        raise ValueError("label_0 / label_1 is null")
    choice = CHOICE_OF_LABELS.get((float(labels[0]), float(labels[1])))
    if choice is None:
        raise ValueError(f"labels {labels[0]}, {labels[1]} are not 1/0, 0/1 or 0.5/0.5")
    user_id = get("user_id")
    annotator = _first_not_null(get("annotator"), None if user_id is None else str(user_id), IMPORTED)
    check_annotator(annotator)
    models = [_first_not_null(get(f"model_{i}"), get("model_id"), IMPORTED) for i in (0, 1)]
    for model in models:
        if not model.strip() or len(model) > MAX_MODEL_ID_CHARS:
            raise ValueError(f"model id {model!r:.40} is empty or longer than {MAX_MODEL_ID_CHARS} characters")
    seeds = [get(f"seed_{i}") for i in (0, 1)]
    for seed in seeds:
        if seed is not None and not SEED_MIN <= seed <= SEED_MAX:
            raise ValueError(f"seed {seed} is outside the signed 64-bit range")
    settings = []
    for i in (0, 1):
        version = get(f"adapter_version_{i}")
        settings.append({"imported": True} | ({} if version is None else {"source_adapter_version": version}))
    created_at = get("created_at")
    if created_at is not None and created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=dt.timezone.utc)
    return {
        "caption": caption,
        "jpg_0": images[0],
        "jpg_1": images[1],
        "choice": choice,
        "annotator": annotator,
        "model_0": models[0],
        "model_1": models[1],
        "seed_0": seeds[0],
        "seed_1": seeds[1],
        "settings_0": settings[0],
        "settings_1": settings[1],
        "created_at": created_at,
    }


def _first_not_null(*values):
    return next(v for v in values if v is not None)


def _check_image(data: bytes, side: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()  # a full decode: catches truncated files that Image.verify() lets through
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"{side} is not a decodable image ({exc})") from None


# ----- command line ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m storage.export",
        description="Export votes to, or import them from, Parquet in the Pick-a-Pic layout.",
    )
    parser.add_argument("--data-dir", default="studio-data", help="studio data directory (default: %(default)s)")
    parser.add_argument("--database-url", default=None, help="SQLAlchemy URL (default: sqlite:///DATA_DIR/studio.db)")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", type=Path, help="write the export to this .parquet file")
    action.add_argument("--import", dest="import_path", type=Path, help="import this .parquet file into the data dir")
    args = parser.parse_args(argv)

    try:
        with Repository(args.data_dir, args.database_url) as repo:
            if args.out is not None:
                n = export_parquet(repo, args.out)
                print(f"exported {n} labeled pairs to {args.out}")
            else:
                n = import_parquet(repo, args.import_path)
                print(f"imported {n} labeled pairs from {args.import_path} into {args.data_dir}")
    except (StorageError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
