"""Stage `train_policy`: OneReward RL of the FLUX.1-Fill policy against the trained judge.

Runs alone (``python -m stages.train_policy``) or on several processes
(``accelerate launch --config_file configs/accelerate/ddp.yaml -m stages.train_policy``).
A rerun after a crash resumes from the last checkpoint of the same settings by itself.
"""

from onereward.config import load_params, section
from onereward.judge.params import judge_section  # any section with per_profile overrides
from onereward.policy.known import GenerationConfig
from onereward.rl.config import TrainPolicyConfig
from onereward.rl.trainer import Paths, train


def main() -> None:
    params = load_params()
    cfg, profile = judge_section(TrainPolicyConfig, "train_policy", params)  # the active profile's settings
    metrics = train(cfg, profile, Paths(), generation=section(GenerationConfig, "generation", params))
    if metrics:
        print(f"train_policy: {metrics}")


if __name__ == "__main__":
    main()
