"""Compact checkpoint format v1: a Hugging Face model directory plus `blockserve.json`.

- `config.json`: the stock config of the original architecture (dense sizes, unchanged);
- `model.safetensors`: the compact weights (smaller than the config says);
- tokenizer files;
- `blockserve.json`: format version, architecture, task, source, plan, method, stats, evaluation.

Loading a compact checkpoint builds the stock model from `config.json` with parameters on the meta
device, shrinks its linear layers to the plan, and loads the safetensors strictly: every key, every
shape. A directory without a manifest is a dense model and loads through `from_pretrained`.
Weights are read from safetensors only; pickle files are refused, never unpickled.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from accelerate import init_empty_weights
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedModel

from pruning.artifacts.compact import compact_model
from pruning.artifacts.records import Evaluation, MethodRecord
from pruning.core.accounting import count_parameters, flops_ratio, removed_parameters
from pruning.core.errors import BlockserveError, CheckpointError, PlanError
from pruning.core.plan import PruningPlan, describe_validation_error
from pruning.core.structure import Workload, geometry_of, spec_for_config, task_of
from pruning.core.task_registry import task_entry

log = logging.getLogger(__name__)

MANIFEST_NAME = "blockserve.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Files fetched from a hub repository: never pickle weights.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "merges.txt", "vocab.*"]


class CheckpointStats(BaseModel):
    params: int
    params_dense: int
    flops_ratio: float = Field(description="dense FLOPs / compact FLOPs at `workload`")
    workload: dict[str, int]


class Manifest(BaseModel):
    """Contents of `blockserve.json`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[1]
    architecture: str
    task: str
    source: str
    plan: PruningPlan
    method: MethodRecord | None = Field(None, description="how the plan was found (None: not recorded)")
    stats: CheckpointStats
    evaluation: Evaluation = Evaluation()

    @field_validator("method", mode="before")
    @classmethod
    def _empty_is_unknown(cls, method: Any) -> Any:
        if method == {}:
            return None  # format v1 files wrote {} for "not recorded"
        if isinstance(method, dict) and method.get("name") == "uniform-demo":
            return {**method, "name": "uniform"}  # what `blockserve demo` wrote before the typed records
        return method


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model, its manifest (None for a dense model) and where it lives."""

    model: PreTrainedModel
    manifest: Manifest | None
    directory: Path

    @property
    def is_compact(self) -> bool:
        return self.manifest is not None

    def tokenizer(self):
        return AutoTokenizer.from_pretrained(self.directory)


# ---- saving ---------------------------------------------------------------------------------------
def checkpoint_stats(model: PreTrainedModel, plan: PruningPlan, workload: Workload | None = None) -> CheckpointStats:
    """Parameters and FLOPs ratio of a compact model (the dense count is recovered from the plan)."""
    task = task_of(model)
    workload = workload or task_entry(task).default_workload
    params = count_parameters(model)
    return CheckpointStats(
        params=params,
        params_dense=params + removed_parameters(geometry_of(model.config), plan),
        flops_ratio=flops_ratio(model.config, plan, workload, task),
        workload={key: value for key, value in vars(workload).items() if value},
    )


def save_compact(
    model: PreTrainedModel,
    plan: PruningPlan,
    out_dir: str | Path,
    *,
    source: str,
    tokenizer=None,
    method: MethodRecord | None = None,
    evaluation: Evaluation | None = None,
) -> Manifest:
    """Write a compacted model as format v1 and return its manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = spec_for_config(model.config)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        architecture=spec.name,
        task=task_of(model),
        source=source,
        plan=plan,
        method=method,
        stats=checkpoint_stats(model, plan),
        evaluation=evaluation or Evaluation(),
    )
    # save_pretrained writes the unchanged config and the compact tensors (tied weights once).
    model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    (out_dir / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=1, exclude_none=True))
    log.info(
        "wrote compact checkpoint %s (%d params, %d dense)", out_dir, manifest.stats.params, manifest.stats.params_dense
    )
    return manifest


# ---- loading --------------------------------------------------------------------------------------
def resolve_directory(path_or_id: str | Path) -> Path:
    """A local checkpoint directory, downloading safetensors-only files when given a hub id."""
    path = Path(path_or_id)
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; a checkpoint is a directory with config.json and {WEIGHTS_NAME}")
        return path
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", str(path_or_id)):
        raise CheckpointError(f"{path_or_id} is neither an existing directory nor a hub model id")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_id), allow_patterns=HUB_PATTERNS))
    except Exception as error:  # the hub client raises many types (offline, 404, auth)
        raise CheckpointError(
            f"{path_or_id} is not a local directory and could not be fetched from the hub: {error}"
        ) from None


def _weight_files(directory: Path) -> list[Path]:
    index = directory / f"{WEIGHTS_NAME}.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    single = directory / WEIGHTS_NAME
    if single.is_file():
        return [single]
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{directory} holds only pickle weights ({', '.join(pickles)}); blockserve loads safetensors only, "
            "because unpickling can run arbitrary code. Convert it with a trusted copy of transformers: "
            "model.save_pretrained(dir, safe_serialization=True)"
        )
    raise CheckpointError(f"{directory} has no {WEIGHTS_NAME}")


def read_manifest(directory: Path) -> Manifest | None:
    """The manifest of a compact checkpoint, or None for a dense one."""
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    if isinstance(data, dict) and data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {data.get('format_version')!r} is not supported (this blockserve reads {FORMAT_VERSION})"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as error:
        raise CheckpointError(f"{path}: {describe_validation_error(error)}") from None


def read_config(directory: Path) -> PretrainedConfig:
    """The stock config of a checkpoint directory; a `CheckpointError` if it is missing or broken."""
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory} has no config.json")
    try:
        return AutoConfig.from_pretrained(directory)
    except (ValueError, OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{directory / 'config.json'}: {error}") from None


def _model_class(config: PretrainedConfig, task: str | None) -> type[PreTrainedModel]:
    spec = spec_for_config(config)
    if task is None:
        named = (config.architectures or [None])[0]
        task = spec.task_for_class(named) if named else None
        if task is None:
            known = ", ".join(t.model_class for t in spec.tasks.values())
            raise CheckpointError(f"config.json names architectures {config.architectures}; supported: {known}")
    if task not in spec.tasks:
        raise CheckpointError(f"task {task!r} is not supported for {spec.name} (supported: {', '.join(spec.tasks)})")
    return getattr(transformers, spec.tasks[task].model_class)


def _read_tensors(files: list[Path], expected: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Read every tensor, checking names and shapes against `expected` before anything is loaded."""
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                    if name not in expected:
                        raise CheckpointError(f"{file.name}: unexpected tensor {name!r} (not in the model)")
                    found = tuple(handle.get_slice(name).get_shape())
                    if found != tuple(expected[name]):
                        raise CheckpointError(
                            f"{file.name}: tensor {name!r} has shape {found}; the model under this plan "
                            f"expects {tuple(expected[name])}"
                        )
                    tensors[name] = handle.get_tensor(name)
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{file} is not a readable safetensors file: {error}") from None
    missing = sorted(set(expected) - set(tensors))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointError(f"{files[0].parent}: tensors missing from the checkpoint: {shown}")
    return tensors


def _load_compact(directory: Path, config: PretrainedConfig, manifest: Manifest) -> PreTrainedModel:
    try:
        manifest.plan.check_fits(geometry_of(config))
    except PlanError as error:
        raise CheckpointError(f"{directory / MANIFEST_NAME}: plan does not fit config.json: {error}") from None
    model_class = _model_class(config, manifest.task)
    # Parameters start on the meta device: no dense allocation, no random init. Buffers stay real
    # because non-persistent ones (position ids) are not in the file.
    with init_empty_weights(include_buffers=False):
        model = model_class(config)
    compact_model(model, manifest.plan)
    tied = set(model.all_tied_weights_keys)
    expected = {name: tensor.shape for name, tensor in model.state_dict().items() if name not in tied}
    tensors = _read_tensors(_weight_files(directory), expected)
    model.load_state_dict(tensors, strict=False, assign=True)
    model.tie_weights()
    still_meta = [name for name, parameter in model.named_parameters() if parameter.is_meta]
    if still_meta:
        raise CheckpointError(f"{directory}: parameters left without weights: {', '.join(still_meta[:5])}")
    return model


def _load_dense(
    directory: Path, config: PretrainedConfig, task: str | None = None, allow_new_head: bool = False
) -> PreTrainedModel:
    model_class = _model_class(config, task)
    files = _weight_files(directory)
    try:
        # Mismatches are collected rather than raised so the error can name tensor and shapes.
        model, info = model_class.from_pretrained(
            directory, use_safetensors=True, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{files[0]}: {error}") from None
    problems = []
    if info["mismatched_keys"]:
        shown = ", ".join(
            f"tensor {name!r} has shape {tuple(found)}; the model expects {tuple(expected)}"
            for name, found, expected in sorted(info["mismatched_keys"])[:5]
        )
        problems.append(shown)
    missing = sorted(info["missing_keys"])
    new_head = [name for name in missing if not name.startswith(f"{model.base_model_prefix}.")]
    if allow_new_head and new_head:
        log.warning(
            "%s has no %s task head; initialised fresh: %s", directory, model_class.__name__, ", ".join(new_head)
        )
        missing = [name for name in missing if name not in new_head]
    if missing:
        problems.append(f"tensors missing from the checkpoint: {', '.join(missing[:5])}")
    if problems:
        raise CheckpointError(f"{files[0].name} in {directory}: " + "; ".join(problems))
    return model


def check_device(device: str) -> None:
    """A clear error instead of torch's traceback when CUDA is asked for and absent."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BlockserveError(f"--device {device} asked for, but torch sees no CUDA device on this machine")


def load_checkpoint(
    path_or_id: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
    task: str | None = None,
    allow_new_head: bool = False,
) -> Checkpoint:
    """Load a dense or compact checkpoint from a directory or hub id, in eval mode.

    `task` picks the head for a dense checkpoint whose config names another class (e.g. a
    pretrained `BertForMaskedLM` to fine-tune for question answering); `allow_new_head` lets that
    head start from fresh weights. Every other missing or mis-shaped tensor is an error.
    """
    check_device(device)
    directory = resolve_directory(path_or_id)
    config = read_config(directory)
    manifest = read_manifest(directory)
    if manifest and task and task != manifest.task:
        raise CheckpointError(f"{directory} is a compact {manifest.task} checkpoint, not {task}")
    if manifest:
        model = _load_compact(directory, config, manifest)
    else:
        model = _load_dense(directory, config, task, allow_new_head)
    if dtype is not None:
        model = model.to(dtype)
    model = model.to(device).eval()
    return Checkpoint(model=model, manifest=manifest, directory=directory)


def load_pretrained(path_or_id: str | Path, **kwargs) -> PreTrainedModel:
    """`load_checkpoint(...).model`: the stock transformers model, compact or dense."""
    return load_checkpoint(path_or_id, **kwargs).model


def compact_checkpoint(
    source: str | Path,
    plan: PruningPlan,
    out_dir: str | Path,
    *,
    method: MethodRecord | None = None,
    evaluation: Evaluation | None = None,
) -> Manifest:
    """Load a dense checkpoint, compact it to `plan` and write format v1 with its tokenizer."""
    checkpoint = load_checkpoint(source)
    if checkpoint.is_compact:
        raise CheckpointError(f"{source} is already compact; compact its dense source instead")
    model = compact_model(checkpoint.model, plan)
    try:
        tokenizer = checkpoint.tokenizer()
    except (OSError, ValueError):
        log.warning("%s has no tokenizer files; the compact checkpoint will have none either", source)
        tokenizer = None
    return save_compact(
        model, plan, out_dir, source=str(source), tokenizer=tokenizer, method=method, evaluation=evaluation
    )
