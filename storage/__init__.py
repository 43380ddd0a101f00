"""Storage layer of Alignment Studio: SQL (SQLAlchemy + Alembic) and files (a content-addressed blob store).

Other layers use ``Repository`` and the frozen records it returns, and never write SQL themselves. This package
imports no torch and no gradio. Parquet export/import lives in ``storage.export`` (imported on demand, as it
pulls in pyarrow and Pillow).

    from storage import Repository, NewGeneration
    repo = Repository("studio-data")          # <data-dir>/studio.db, migrated to head; <data-dir>/blobs/
    repo = Repository("/shared/studio", "postgresql+psycopg://user:pw@db-host/studio")  # scale-out
"""

from .db import make_engine, masked_url, upgrade_to_head
from .errors import (
    BlobIntegrityError,
    BlobNotFoundError,
    DatabaseUnavailableError,
    ImportFormatError,
    InvalidAnnotatorError,
    InvalidChoiceError,
    InvalidDatabaseUrlError,
    InvalidGenerationError,
    InvalidLeaseError,
    InvalidMetadataError,
    InvalidPromptError,
    InvalidStatusError,
    LeaseLostError,
    StorageError,
    UnknownAdapterError,
    PairNotServedError,
    UnknownPairError,
    UnknownTrainingRunError,
)
from .leases import Fence
from .models import AB_CHOICES, ADAPTER_STATUSES, MAX_PROMPT_CHARS, PREFERENCE_CHOICES, VOTE_CHOICES
from .records import (
    AdapterRecord,
    GenerationRecord,
    LabeledPair,
    NewGeneration,
    PairRecord,
    TrainingRunRecord,
    VoteRecord,
)
from .repository import Repository

__all__ = [
    "AB_CHOICES",
    "ADAPTER_STATUSES",
    "MAX_PROMPT_CHARS",
    "PREFERENCE_CHOICES",
    "VOTE_CHOICES",
    "AdapterRecord",
    "BlobIntegrityError",
    "BlobNotFoundError",
    "DatabaseUnavailableError",
    "GenerationRecord",
    "ImportFormatError",
    "InvalidAnnotatorError",
    "InvalidChoiceError",
    "InvalidDatabaseUrlError",
    "InvalidGenerationError",
    "InvalidLeaseError",
    "InvalidMetadataError",
    "InvalidPromptError",
    "InvalidStatusError",
    "Fence",
    "LabeledPair",
    "LeaseLostError",
    "NewGeneration",
    "PairRecord",
    "Repository",
    "StorageError",
    "TrainingRunRecord",
    "UnknownAdapterError",
    "PairNotServedError",
    "UnknownPairError",
    "UnknownTrainingRunError",
    "VoteRecord",
    "make_engine",
    "masked_url",
    "upgrade_to_head",
]
