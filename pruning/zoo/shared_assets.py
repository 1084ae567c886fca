"""Where the development assets live: `../shared` next to the repository (real text, a real model).

Demos, load tests and test factories take their default data from here; users pass their own files.
"""

from __future__ import annotations

from pathlib import Path

from pruning.core.task_registry import TaskEntry

SHARED = Path(__file__).resolve().parents[3] / "shared"
SHARED_DATA = SHARED / "data"


def sample_data(entry: TaskEntry) -> Path:
    """The task's real sample text in ../shared/data (SQuAD dev for QA, CNN/DM for summarization)."""
    return SHARED_DATA / entry.sample_data


SHARED_QA_MODEL = SHARED / "models" / "minilm-l6-squad"  # a real SQuAD-fine-tuned BERT (MiniLM-L6-H384)
SQUAD_TRAIN = SHARED_DATA / "squad" / "train.json"


def shared_qa_model() -> Path | None:
    """The real QA model in ../shared/models when it is there (with its calibration data), else None."""
    present = (SHARED_QA_MODEL / "model.safetensors").is_file() and SQUAD_TRAIN.is_file()
    return SHARED_QA_MODEL if present else None
