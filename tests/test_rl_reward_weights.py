"""Per-dimension reward weights: the capped loss and the reward are weighted means over a sample's
dimensions, the default is the paper's plain mean bit for bit, and a zero weight removes a
dimension's gradient."""

from __future__ import annotations

import pytest
import torch

from onereward.config import ParamsError, from_dict
from onereward.rl.config import TrainPolicyConfig
from onereward.rl.rollout import Rewards, capped_loss

# two fill samples: one with a text prompt (four dimensions), one without (three)
SAMPLE = [0, 0, 0, 0, 1, 1, 1]
DIMS = ["text_alignment", "consistency", "structure", "aesthetics", "consistency", "structure", "aesthetics"]


def _rewards(weights=None) -> Rewards:
    p = torch.tensor([0.2, 0.5, 0.95, 0.4, 0.3, 0.6, 0.1], requires_grad=True)
    return Rewards(p, SAMPLE, DIMS, "fill", weights)


def test_unit_weights_give_the_plain_mean_bit_for_bit():
    r = _rewards()
    per_pair = torch.relu(0.9 - r.p_yes)
    count = torch.tensor([4.0, 4, 4, 4, 3, 3, 3])
    plain = (per_pair / count).sum() / 2
    weighted = capped_loss(_rewards(TrainPolicyConfig().reward_weights("fill")), 2, 0.9)
    assert torch.equal(capped_loss(r, 2, 0.9), plain) and torch.equal(weighted, plain)
    means = torch.stack([r.p_yes[:4].sum() / 4, r.p_yes[4:].sum() / 3])
    assert torch.allclose(r.per_sample(2), means)


def test_weights_shift_the_loss_and_zero_removes_a_dimensions_gradient():
    cfg = TrainPolicyConfig(dimension_weights={"fill": {"aesthetics": 0.0, "consistency": 3.0}})
    assert cfg.reward_weights("fill") == {"text_alignment": 1.0, "consistency": 3.0, "structure": 1.0, "aesthetics": 0.0}
    assert cfg.reward_weights("extend")["aesthetics"] == 1.0  # another task keeps its plain mean
    r = _rewards(cfg.reward_weights("fill"))
    loss = capped_loss(r, 2, 0.9)
    # sample 0: (1*0.7 + 3*0.4 + 1*0 + 0*0.5) / 5; sample 1: (3*0.6 + 1*0.3 + 0*0.8) / 4
    assert loss.item() == pytest.approx(((0.7 + 1.2) / 5 + (1.8 + 0.3) / 4) / 2, abs=1e-6)
    (grad,) = torch.autograd.grad(loss, r.p_yes)
    assert grad[3] == 0 and grad[6] == 0  # aesthetics: no gradient
    assert grad[1] == pytest.approx(3 * grad[0].item()) and grad[2] == 0  # consistency 3x; structure above the cap
    assert r.per_sample(2)[1].item() == pytest.approx((3 * 0.3 + 0.6) / 4)


@pytest.mark.parametrize("weights, reason", [
    ({"inpaint": {"aesthetics": 1.0}}, "unknown task"),
    ({"fill": {"removal_quality": 1.0}}, "fill's dimensions"),
    ({"fill": {"aesthetics": -1.0}}, "non-negative"),
    ({"removal": {"removal_quality": 0.0}}, "above 0"),
    # text alignment alone would leave an input without a prompt with no dimension to learn from
    ({"extend": {"consistency": 0, "structure": 0, "aesthetics": 0}}, "scored without a prompt"),
])
def test_bad_dimension_weights_are_rejected_naming_the_task(weights, reason):
    with pytest.raises(ValueError, match=reason):
        TrainPolicyConfig(dimension_weights=weights)


def test_dimension_weights_read_from_params_as_numbers():
    cfg = from_dict(TrainPolicyConfig, {"dimension_weights": {"extend": {"aesthetics": 2}}}, ".train_policy")
    assert cfg.reward_weights("extend")["aesthetics"] == 2.0
    with pytest.raises(ParamsError, match=r"train_policy.dimension_weights.extend"):
        from_dict(TrainPolicyConfig, {"dimension_weights": {"extend": {"aesthetics": "high"}}}, ".train_policy")
