"""Choose how many units each layer keeps: the most importance under a latency budget.

Every (layer, block) group chooses a count k; keeping its k most important units is then optimal
inside the group (importance is additive), worth `Importance.kept_value(k)` and costing the latency
table's curve at k. Choosing one count per group under a total cost is a multiple-choice knapsack;
it is solved exactly by dynamic programming over the budget cut into `resolution` steps. Costs are
rounded *up* to whole steps, so the chosen plan's predicted latency never exceeds the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pruning.core.errors import PlanError
from pruning.core.plan import PruningPlan, allowed_counts
from pruning.core.structure import Geometry
from pruning.core.units import FFN, group_key
from pruning.methods.posttrain.importance import Importance
from pruning.methods.posttrain.latency_model import LatencyTable


@dataclass(frozen=True)
class SearchResult:
    plan: PruningPlan
    budget_ms: float
    predicted_ms: float
    dense_ms: float  # the table's dense latency
    floor_ms: float  # predicted latency with every head and FFN unit removed
    kept_importance: float  # fraction of the total importance kept

    @property
    def predicted_speedup(self) -> float:
        return self.dense_ms / self.predicted_ms


def _groups(geometry: Geometry) -> list[tuple[str, str, str, int]]:
    """(key, stack, block, dense count) of every group."""
    groups = []
    for stack in geometry.stacks:
        for index in range(stack.num_layers):
            for block in (*stack.attention_names, FFN):
                size = stack.ffn_units if block == FFN else stack.num_heads
                groups.append((group_key(stack.name, index, block), stack.name, block, size))
    return groups


def search_plan(
    geometry: Geometry,
    importance: Importance,
    table: LatencyTable,
    budget_ms: float,
    resolution: int = 2000,
    align: int = 1,
) -> SearchResult:
    """The plan keeping the most importance with predicted latency ≤ `budget_ms`; FFN counts in multiples of `align`."""
    groups = _groups(geometry)
    costs, values = [], []
    floor = table.dense_ms
    for key, stack, block, size in groups:
        curve = table.curve(stack, block)
        latency = np.asarray(curve.at(np.arange(size + 1)), dtype=np.float64)
        floor += latency[0]
        costs.append(latency - latency[0])  # ≥ 0: the curves are non-decreasing
        values.append(importance.kept_value(key).numpy())
    if floor <= 0:
        raise PlanError(
            f"the latency model predicts {floor:.3f} ms with every head and FFN unit removed (dense "
            f"{table.dense_ms:.3f} ms): its probes are noise, not signal (a very small model, or too few "
            f"repeats); re-measure with more --repeats (--refresh-latency)"
        )
    if budget_ms < floor:
        raise PlanError(
            f"a latency budget of {budget_ms:.2f} ms is out of reach: removing every head and FFN unit "
            f"is predicted at {floor:.2f} ms (dense {table.dense_ms:.2f} ms)"
        )
    if budget_ms >= table.dense_ms:  # the dense model fits: keep everything (rounding must not say otherwise)
        counts = {key: size for key, _, _, size in groups}
        return _result(geometry, importance, table, budget_ms, floor, groups, values, counts)
    capacity = budget_ms - floor
    step = max(capacity / resolution, 1e-12)
    bins = resolution
    best = np.zeros(bins + 1)  # best[b]: most value with cost ≤ b steps, over the groups so far
    choices = np.zeros((len(groups), bins + 1), dtype=np.int64)
    for index, (cost, value) in enumerate(zip(costs, values, strict=True)):
        steps = np.ceil(cost / step - 1e-9).astype(np.int64)
        _, _, block, size = groups[index]
        allowed = np.asarray(allowed_counts(size, align) if block == FFN else range(size + 1))[::-1]
        # Per distinct cost only the largest allowed count matters (more units never lose value).
        candidate_steps, first = np.unique(steps[allowed], return_index=True)
        candidate_counts = allowed[first]
        new = np.full(bins + 1, -np.inf)
        chosen = np.zeros(bins + 1, dtype=np.int64)
        for cost_steps, count in zip(candidate_steps, candidate_counts, strict=True):
            if cost_steps > bins:
                continue
            shifted = best[: bins + 1 - cost_steps] + value[count]
            better = shifted > new[cost_steps:]
            new[cost_steps:][better] = shifted[better]
            chosen[cost_steps:][better] = count
        best, choices[index] = new, chosen
    counts: dict[str, int] = {}
    remaining = bins
    for index in range(len(groups) - 1, -1, -1):
        count = int(choices[index][remaining])
        key = groups[index][0]
        counts[key] = count
        steps = int(math.ceil(costs[index][count] / step - 1e-9))
        remaining -= steps
    return _result(geometry, importance, table, budget_ms, floor, groups, values, counts)


def _result(geometry, importance, table, budget_ms, floor, groups, values, counts) -> SearchResult:
    plan = importance.plan_for_counts(geometry, counts)
    predicted = table.predict_ms(plan)
    total = sum(float(v[-1]) for v in values)
    kept = sum(float(values[i][counts[g[0]]]) for i, g in enumerate(groups))
    return SearchResult(
        plan=plan,
        budget_ms=budget_ms,
        predicted_ms=predicted,
        dense_ms=table.dense_ms,
        floor_ms=floor,
        kept_importance=kept / total if total > 0 else 1.0,
    )
