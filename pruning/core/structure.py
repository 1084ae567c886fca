"""Where the prunable units of each supported architecture live, described as data.

The compactor, the accounting and the exporters walk these descriptions; none of them branches on
the model type. Adding an architecture (RoBERTa, DistilBERT, ...) means adding one `ArchitectureSpec`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from pruning.core.errors import UnsupportedModelError


@dataclass(frozen=True)
class Workload:
    """Token counts per sequence. Encoder-only models use `source_len` alone.

    `target_len` is a teacher-forced decoder pass; `new_tokens` an incremental `generate()` with a
    key/value cache (the encoder runs once, then one decoder step per new token).
    """

    source_len: int
    target_len: int = 0
    new_tokens: int = 0


@dataclass(frozen=True)
class AttentionBlock:
    """One multi-head attention block inside a layer.

    Q/K/V rows and output-projection columns are grouped by head, `head_dim` of each per head.
    Paths are relative to the layer module.
    """

    name: str  # key in the plan: "self_attn" or "cross_attn"
    query: str
    key: str
    value: str
    output: str
    # The module whose input is residual + this block's output (post-LN models: the LayerNorm).
    residual_sum: str
    # Cross-attention projects keys/values from the encoder's tokens, not the layer's own.
    attends_to_encoder: bool = False


@dataclass(frozen=True)
class FeedForwardBlock:
    """The FFN: `up` rows and `down` columns are the FFN units (one unit = one row + one column)."""

    up: str
    down: str
    residual_sum: str  # as for `AttentionBlock`


@dataclass(frozen=True)
class StackSpec:
    """A stack of identical layers (BERT's encoder; BART's encoder or decoder)."""

    name: str  # key in the plan: "encoder" or "decoder"
    layers: str  # path of the nn.ModuleList, relative to `model.base_model`
    num_layers: str  # config attribute names, so sizes come from the config, never hard-coded
    num_heads: str
    ffn_units: str
    attention: tuple[AttentionBlock, ...]
    ffn: FeedForwardBlock


@dataclass(frozen=True)
class TaskSpec:
    """A task head: which transformers class, and the size of its output projection (for FLOPs)."""

    model_class: str
    head_outputs: str | int  # config attribute name, or a fixed number of outputs
    head_stack: str  # the stack whose tokens the head projects


@dataclass(frozen=True)
class ArchitectureSpec:
    name: str
    model_type: str  # `config.model_type`
    hidden_size: str  # config attribute
    stacks: tuple[StackSpec, ...]
    tasks: dict[str, TaskSpec]

    def stack(self, name: str) -> StackSpec:
        for stack in self.stacks:
            if stack.name == name:
                return stack
        raise KeyError(f"{self.name} has no stack {name!r}")

    def task_for_class(self, class_name: str) -> str | None:
        for task, task_spec in self.tasks.items():
            if task_spec.model_class == class_name:
                return task
        return None


@dataclass(frozen=True)
class StackGeometry:
    """Dense sizes of one stack, read from a config."""

    name: str
    num_layers: int
    num_heads: int
    head_dim: int
    ffn_units: int
    attention_names: tuple[str, ...]
    cross_attention_names: tuple[str, ...]  # blocks whose keys/values come from the encoder


@dataclass(frozen=True)
class Geometry:
    """Dense sizes of a whole model, read from its config through its spec."""

    architecture: str
    hidden_size: int
    vocab_size: int
    stacks: tuple[StackGeometry, ...]

    def stack(self, name: str) -> StackGeometry:
        return next(stack for stack in self.stacks if stack.name == name)


BERT = ArchitectureSpec(
    name="bert",
    model_type="bert",
    hidden_size="hidden_size",
    stacks=(
        StackSpec(
            name="encoder",
            layers="encoder.layer",
            num_layers="num_hidden_layers",
            num_heads="num_attention_heads",
            ffn_units="intermediate_size",
            attention=(
                AttentionBlock(
                    name="self_attn",
                    query="attention.self.query",
                    key="attention.self.key",
                    value="attention.self.value",
                    output="attention.output.dense",
                    residual_sum="attention.output.LayerNorm",
                ),
            ),
            ffn=FeedForwardBlock(up="intermediate.dense", down="output.dense", residual_sum="output.LayerNorm"),
        ),
    ),
    tasks={
        "question-answering": TaskSpec("BertForQuestionAnswering", head_outputs=2, head_stack="encoder"),
        # A bare encoder loads (e.g. to fine-tune a fresh QA head on it); it is no served task.
        "feature-extraction": TaskSpec("BertModel", head_outputs=0, head_stack="encoder"),
    },
)


def _bart_attention(name: str, module: str, attends_to_encoder: bool = False) -> AttentionBlock:
    return AttentionBlock(
        name=name,
        query=f"{module}.q_proj",
        key=f"{module}.k_proj",
        value=f"{module}.v_proj",
        output=f"{module}.out_proj",
        residual_sum=f"{module}_layer_norm",
        attends_to_encoder=attends_to_encoder,
    )


_BART_FFN = FeedForwardBlock(up="fc1", down="fc2", residual_sum="final_layer_norm")

BART = ArchitectureSpec(
    name="bart",
    model_type="bart",
    hidden_size="d_model",
    stacks=(
        StackSpec(
            name="encoder",
            layers="encoder.layers",
            num_layers="encoder_layers",
            num_heads="encoder_attention_heads",
            ffn_units="encoder_ffn_dim",
            attention=(_bart_attention("self_attn", "self_attn"),),
            ffn=_BART_FFN,
        ),
        StackSpec(
            name="decoder",
            layers="decoder.layers",
            num_layers="decoder_layers",
            num_heads="decoder_attention_heads",
            ffn_units="decoder_ffn_dim",
            attention=(
                _bart_attention("self_attn", "self_attn"),
                _bart_attention("cross_attn", "encoder_attn", attends_to_encoder=True),
            ),
            ffn=_BART_FFN,
        ),
    ),
    tasks={
        "summarization": TaskSpec(
            "BartForConditionalGeneration",
            head_outputs="vocab_size",
            head_stack="decoder",
        ),
    },
)

ARCHITECTURES: dict[str, ArchitectureSpec] = {spec.model_type: spec for spec in (BERT, BART)}


def spec_for_config(config: PretrainedConfig) -> ArchitectureSpec:
    """The spec for a config's `model_type`; a clear error for architectures we cannot prune."""
    try:
        return ARCHITECTURES[config.model_type]
    except KeyError:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UnsupportedModelError(
            f"model_type {config.model_type!r} is not supported (supported: {supported})"
        ) from None


def geometry_of(config: PretrainedConfig) -> Geometry:
    """Dense sizes of every prunable stack, read from the config through the architecture's spec."""
    spec = spec_for_config(config)
    hidden = getattr(config, spec.hidden_size)
    stacks = []
    for stack in spec.stacks:
        num_heads = getattr(config, stack.num_heads)
        stacks.append(
            StackGeometry(
                name=stack.name,
                num_layers=getattr(config, stack.num_layers),
                num_heads=num_heads,
                head_dim=hidden // num_heads,
                ffn_units=getattr(config, stack.ffn_units),
                attention_names=tuple(block.name for block in stack.attention),
                cross_attention_names=tuple(block.name for block in stack.attention if block.attends_to_encoder),
            )
        )
    return Geometry(
        architecture=spec.name,
        hidden_size=hidden,
        vocab_size=config.vocab_size,
        stacks=tuple(stacks),
    )


def layers_of(model: PreTrainedModel, stack: StackSpec) -> nn.ModuleList:
    """The layer list of one stack; `base_model` makes the path independent of the task head."""
    return model.base_model.get_submodule(stack.layers)


def iter_layers(model: PreTrainedModel) -> Iterator[tuple[StackSpec, int, nn.Module]]:
    """Every prunable layer of a model as (stack spec, layer index, layer module)."""
    spec = spec_for_config(model.config)
    for stack in spec.stacks:
        for index, layer in enumerate(layers_of(model, stack)):
            yield stack, index, layer


def task_of(model: PreTrainedModel) -> str:
    """The task name of a model instance, from its class (e.g. BertForQuestionAnswering → question-answering)."""
    spec = spec_for_config(model.config)
    task = spec.task_for_class(type(model).__name__)
    if task is None:
        known = ", ".join(t.model_class for t in spec.tasks.values())
        raise UnsupportedModelError(f"{type(model).__name__} is not supported for {spec.name} (supported: {known})")
    return task
