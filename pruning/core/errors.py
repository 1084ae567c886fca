"""Error types whose messages say what is wrong and where, so a user can act on them."""


class BlockserveError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero instead of a traceback."""


class PlanError(BlockserveError, ValueError):
    """A pruning plan is malformed or does not fit the model it is applied to."""


class CheckpointError(BlockserveError):
    """A checkpoint directory is missing files, holds unsafe files, or its tensors do not match."""


class UnsupportedModelError(BlockserveError):
    """The architecture or task head has no structure description."""


class DataError(BlockserveError, ValueError):
    """A training or evaluation data file is missing, unparsable, or lacks the fields a task needs."""


class TrainingError(BlockserveError):
    """A training run cannot start or resume (bad settings, mismatched resume state)."""
