"""The task registry: every part it names exists where the layering allows, and every layer uses it."""

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from pruning.artifacts.checkpoint import Manifest
from pruning.artifacts.records import MovementMethod, PosttrainMethod
from pruning.core.errors import UnsupportedModelError
from pruning.core.structure import ARCHITECTURES
from pruning.core.task_registry import ROUTES, TASKS, route_entry, task_entry
from pruning.zoo.shared_assets import sample_data
from service.config import AppConfig

ROOT = Path(__file__).resolve().parents[2]
# Which package each import-path field of an entry must point into (the layer that owns that part).
OWNERS = {"trainer": "pruning.tasks.", "server": "service.", "request_schema": "service.", "payloads": "loadtests."}


@pytest.mark.parametrize("entry", TASKS.values(), ids=lambda entry: entry.name)
def test_every_part_of_an_entry_resolves_in_its_own_layer(entry):
    for part, package in OWNERS.items():
        assert getattr(entry, part).startswith(package), (entry.name, part)
        assert entry.resolve(part) is not None
    trainer = entry.resolve("trainer")()
    assert trainer.name == entry.name
    assert all(callable(getattr(trainer, method)) for method in ("load", "train_features", "predict", "score"))
    assert issubclass(entry.resolve("request_schema"), BaseModel)
    assert entry.resolve("server").func_or_class.task == entry.route  # the Ray Serve deployment's class


def test_names_and_routes_are_one_to_one_and_known_to_the_architectures():
    assert len(ROUTES) == len(TASKS)
    for entry in TASKS.values():
        assert route_entry(entry.route) is task_entry(entry.name) is entry
        assert any(entry.name in spec.tasks for spec in ARCHITECTURES.values())
    with pytest.raises(UnsupportedModelError, match="unknown task 'translation'"):
        task_entry("translation")
    with pytest.raises(UnsupportedModelError, match="unknown route 'translate'"):
        route_entry("translate")


def test_the_service_config_has_a_section_per_route():
    assert set(ROUTES) <= set(AppConfig.model_fields)


def test_sample_data_is_where_the_entry_says():
    for entry in TASKS.values():
        path = sample_data(entry)
        assert path.parts[-len(Path(entry.sample_data).parts) :] == Path(entry.sample_data).parts
        if not path.is_file():
            pytest.skip(f"{path} is not on this machine (../shared is laid next to the repository in CI)")


# ---- typed manifests ------------------------------------------------------------------------------
COMMITTED = sorted(ROOT.glob("benchmarks/**/*manifest.json"))


@pytest.mark.parametrize("path", COMMITTED, ids=lambda path: path.name)
def test_committed_manifests_load_as_typed_records(path):
    manifest = Manifest.model_validate_json(path.read_text())
    assert isinstance(manifest.method, MovementMethod | PosttrainMethod)
    assert manifest.evaluation.pruned is not None and manifest.evaluation.pruned.metrics()
    if isinstance(manifest.method, MovementMethod):
        # Written before the typed record: the recipe is folded under `settings`, facts stay typed.
        assert manifest.method.final_density is not None and manifest.method.prune_steps
        assert "movement" in manifest.method.settings or "masks" in manifest.method.settings
    else:
        assert manifest.method.measured.attempts and manifest.method.budget.seq > 0


def test_a_manifest_cannot_change_and_rejects_unknown_methods():
    data = json.loads(COMMITTED[0].read_text())
    manifest = Manifest.model_validate(data)
    with pytest.raises(ValueError, match="frozen"):
        manifest.source = "elsewhere"
    with pytest.raises(ValueError, match="does not match any of the expected tags"):
        Manifest.model_validate({**data, "method": {"name": "magic"}})
    assert Manifest.model_validate({**data, "method": {}}).method is None  # format v1's "not recorded"
