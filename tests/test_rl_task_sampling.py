"""RL task sampling: the configured weights decide which task an iteration trains."""

from __future__ import annotations

import pytest
import torch

from onereward.rl.conditions import ConditionSet, draw
from onereward.rl.config import TrainPolicyConfig


def _conditions() -> ConditionSet:
    tasks = ["fill", "fill", "extend", "extend", "removal", "removal"]
    keys = [f"{t}-{i:06d}" for i, t in enumerate(tasks)]
    return ConditionSet.in_memory(keys, tasks, [None] * len(tasks), torch.zeros(len(tasks), 3, 8, 8, dtype=torch.uint8),
                                  torch.zeros(len(tasks), 1, 8, 8, dtype=torch.uint8))


def _tasks_drawn(cfg: TrainPolicyConfig, steps: int = 400) -> dict[str, int]:
    conds, counts = _conditions(), {}
    for step in range(steps):
        d = draw(conds, cfg.seed, step, 0, 2, 1, (0, 1), cfg.sampling_weights())
        assert all(conds.tasks[i] == d.task for i in d.index)  # one task per iteration
        counts[d.task] = counts.get(d.task, 0) + 1
    return counts


def test_default_weights_are_the_papers_mix():
    counts = _tasks_drawn(TrainPolicyConfig())
    assert TrainPolicyConfig().sampling_weights() == {"fill": 0.5, "extend": 0.25, "removal": 0.25}
    assert 160 < counts["fill"] < 240 and 70 < counts["extend"] < 130 and 70 < counts["removal"] < 130


def test_configured_weights_change_the_mix_and_zero_drops_a_task():
    counts = _tasks_drawn(TrainPolicyConfig(task_weights={"fill": 1.0, "removal": 3.0}))
    assert set(counts) == {"fill", "removal"}
    assert 260 < counts["removal"] < 340


@pytest.mark.parametrize("weights", [{"inpaint": 1.0}, {"fill": -1.0}, {"fill": 0.0}])
def test_bad_task_weights_are_rejected_with_the_value(weights):
    with pytest.raises(ValueError, match="task_weights"):
        TrainPolicyConfig(task_weights=weights)
