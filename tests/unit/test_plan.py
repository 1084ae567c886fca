import pytest
from pydantic import ValidationError

from pruning.core.errors import PlanError
from pruning.core.plan import LayerPlan, PruningPlan, StackSummary
from pruning.core.structure import geometry_of
from tests.factories import edited_plan, tiny_bart, tiny_bert


@pytest.fixture
def bert_geometry():
    return geometry_of(tiny_bert().config)


@pytest.fixture
def bart_geometry():
    return geometry_of(tiny_bart().config)


def test_geometry_reads_sizes_from_config(bert_geometry, bart_geometry):
    (encoder,) = bert_geometry.stacks
    assert (encoder.num_layers, encoder.num_heads, encoder.head_dim, encoder.ffn_units) == (3, 4, 8, 64)
    assert encoder.attention_names == ("self_attn",)
    assert [s.name for s in bart_geometry.stacks] == ["encoder", "decoder"]
    assert bart_geometry.stack("decoder").attention_names == ("self_attn", "cross_attn")
    assert bart_geometry.stack("decoder").cross_attention_names == ("cross_attn",)


def test_uniform_plan_keeps_requested_fraction(bart_geometry):
    plan = PruningPlan.uniform(bart_geometry, keep_heads=0.5, keep_ffn=0.25)
    summary = plan.summary()
    assert summary["encoder"] == StackSummary(
        layers=2,
        heads_kept=4,
        heads_total=8,
        ffn_units_kept=32,
        ffn_units_total=128,
    )
    assert summary["decoder"].heads_kept == 8  # self and cross attention, 2 of 4 heads each, 2 layers
    assert plan.kept_heads("decoder", 1, "cross_attn") == (0, 1)


def test_json_round_trip(bart_geometry, tmp_path):

    def unsorted_heads(data: dict) -> None:
        data["stacks"]["decoder"]["layers"][0]["heads"]["cross_attn"] = [3, 1]

    plan = edited_plan(PruningPlan.uniform(bart_geometry, 0.75, 0.5), unsorted_heads)  # validation sorts
    path = tmp_path / "plan.json"
    plan.save(path)
    loaded = PruningPlan.load(path)
    assert loaded == plan
    assert loaded.kept_heads("decoder", 0, "cross_attn") == (1, 3)


def test_a_validated_plan_cannot_change(bert_geometry):
    layer = LayerPlan(heads={"self_attn": [3, 1]}, ffn_units=[2, 0])
    assert layer.heads == {"self_attn": (1, 3)}  # tuples, sorted
    assert layer.ffn_units == (0, 2)
    with pytest.raises(ValidationError, match="frozen"):
        layer.ffn_units = (0,)

    plan = PruningPlan.uniform(bert_geometry, 0.5, 0.5)
    with pytest.raises(ValidationError, match="frozen"):
        plan.architecture = "bart"
    with pytest.raises(ValidationError, match="frozen"):
        plan.stacks["encoder"].layers[0].ffn_units = ()
    assert isinstance(plan.stacks["encoder"].layers, tuple)
    assert isinstance(plan.kept_heads("encoder", 0, "self_attn"), tuple)
    assert isinstance(plan.kept_ffn_units("encoder", 0), tuple)

    same = PruningPlan.from_json(plan.to_json())
    assert same is not plan and same.digest() == plan.digest()
    assert PruningPlan.uniform(bert_geometry, 0.5, 0.5).digest() == plan.digest()

    def one_unit_differs(data: dict) -> None:
        data["stacks"]["encoder"]["layers"][2]["ffn_units"][-1] += 1

    changed = edited_plan(plan, one_unit_differs)
    assert changed.kept_ffn_units("encoder", 2) != plan.kept_ffn_units("encoder", 2)
    assert changed.digest() != plan.digest()


def _bert_plan_data(bert_geometry):
    return PruningPlan.uniform(bert_geometry, 1.0, 1.0).model_dump()


def test_out_of_range_head_names_the_layer(bert_geometry):
    data = _bert_plan_data(bert_geometry)
    data["stacks"]["encoder"]["layers"][2]["heads"]["self_attn"] = [0, 4]
    with pytest.raises(PlanError, match=r"encoder layer 2: self_attn head index 4 is out of range .*0\.\.3"):
        PruningPlan.from_dict(data)


def test_duplicate_ffn_unit_names_the_layer(bert_geometry):
    data = _bert_plan_data(bert_geometry)
    data["stacks"]["encoder"]["layers"][1]["ffn_units"] = [5, 5]
    with pytest.raises(PlanError, match="encoder layer 1: FFN unit index 5 is listed twice"):
        PruningPlan.from_dict(data)


def test_negative_index_is_rejected(bert_geometry):
    data = _bert_plan_data(bert_geometry)
    data["stacks"]["encoder"]["layers"][0]["ffn_units"] = [-1]
    with pytest.raises(PlanError, match="encoder layer 0: FFN unit index -1 is out of range"):
        PruningPlan.from_dict(data)


def test_inconsistent_attention_blocks_are_rejected(bart_geometry):
    data = PruningPlan.uniform(bart_geometry, 1.0, 1.0).model_dump()
    del data["stacks"]["decoder"]["layers"][1]["heads"]["cross_attn"]
    with pytest.raises(PlanError, match="decoder layer 1: attention blocks"):
        PruningPlan.from_dict(data)


def test_unknown_fields_and_bad_json_are_rejected(bert_geometry):
    data = _bert_plan_data(bert_geometry)
    data["stacks"]["encoder"]["layers"][0]["extra"] = 1
    with pytest.raises(PlanError, match="extra"):
        PruningPlan.from_dict(data)
    with pytest.raises(PlanError, match="not valid JSON"):
        PruningPlan.from_json("{not json")


def test_missing_plan_file_is_reported(tmp_path):
    with pytest.raises(PlanError, match="does not exist"):
        PruningPlan.load(tmp_path / "nope.json")


def test_check_fits_rejects_plans_for_other_models(bert_geometry, bart_geometry):
    bert_plan = PruningPlan.uniform(bert_geometry, 0.5, 0.5)
    with pytest.raises(PlanError, match="plan is for 'bert', the model is 'bart'"):
        bert_plan.check_fits(bart_geometry)
    deeper = geometry_of(tiny_bert(layers=4).config)
    with pytest.raises(PlanError, match="encoder stack: plan has 3 layers, the model has 4"):
        bert_plan.check_fits(deeper)


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_uniform_rejects_fractions_outside_unit_interval(bert_geometry, fraction):
    with pytest.raises(PlanError, match="fraction"):
        PruningPlan.uniform(bert_geometry, fraction, 0.5)
