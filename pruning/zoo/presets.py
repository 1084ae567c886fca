"""Real architectures' shapes with random weights, for offline benchmarks and demos.

Speed depends on shapes, not on weight values, so these give honest timings without a model hub.
The `-tiny` presets are for smoke tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import transformers
from transformers import PretrainedConfig, PreTrainedModel

from pruning.core.errors import UnsupportedModelError
from pruning.core.structure import ARCHITECTURES


@dataclass(frozen=True)
class Preset:
    model_type: str
    task: str
    config: dict[str, Any] = field(default_factory=dict)


_BART_COMMON = {"max_position_embeddings": 1024, "vocab_size": 50265}

PRESETS: dict[str, Preset] = {
    "bert-base-uncased": Preset(
        "bert",
        "question-answering",
        {
            "vocab_size": 30522,
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
        },
    ),
    "bert-large-uncased": Preset(
        "bert",
        "question-answering",
        {
            "vocab_size": 30522,
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
        },
    ),
    "bart-base": Preset(
        "bart",
        "summarization",
        {
            **_BART_COMMON,
            "d_model": 768,
            "encoder_layers": 6,
            "decoder_layers": 6,
            "encoder_attention_heads": 12,
            "decoder_attention_heads": 12,
            "encoder_ffn_dim": 3072,
            "decoder_ffn_dim": 3072,
        },
    ),
    "bart-large": Preset(
        "bart",
        "summarization",
        {
            **_BART_COMMON,
            "d_model": 1024,
            "encoder_layers": 12,
            "decoder_layers": 12,
            "encoder_attention_heads": 16,
            "decoder_attention_heads": 16,
            "encoder_ffn_dim": 4096,
            "decoder_ffn_dim": 4096,
        },
    ),
    "bert-tiny": Preset(
        "bert",
        "question-answering",
        {
            "vocab_size": 512,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 128,
        },
    ),
    # Small enough to fine-tune and prune on CPU in minutes; heads of 32 like the real models' 64.
    "bart-small": Preset(
        "bart",
        "summarization",
        {
            "vocab_size": 8000,
            "max_position_embeddings": 1024,
            "d_model": 256,
            "encoder_layers": 3,
            "decoder_layers": 3,
            "encoder_attention_heads": 8,
            "decoder_attention_heads": 8,
            "encoder_ffn_dim": 1024,
            "decoder_ffn_dim": 1024,
        },
    ),
    "bart-tiny": Preset(
        "bart",
        "summarization",
        {
            "vocab_size": 512,
            "max_position_embeddings": 256,
            "d_model": 64,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "decoder_ffn_dim": 128,
        },
    ),
}
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


def preset_config(name: str) -> tuple[type[PreTrainedModel], PretrainedConfig]:
    """The transformers model class and config of a preset."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise UnsupportedModelError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None
    model_class = getattr(transformers, ARCHITECTURES[preset.model_type].tasks[preset.task].model_class)
    return model_class, model_class.config_class(**preset.config)


def build_preset(name: str, seed: int = 0, **overrides: Any) -> PreTrainedModel:
    """A randomly initialised model of the preset's architecture, in eval mode (`overrides` go to its config)."""
    model_class, config = preset_config(name)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    return model_class(config).eval()
