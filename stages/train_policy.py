"""Stage `train_policy`: OneReward RL of the FLUX.1-Fill policy against the trained judge.

Runs alone (``python -m stages.train_policy``) or on several processes
(``accelerate launch --config_file configs/accelerate/ddp.yaml -m stages.train_policy``).
A rerun after a crash resumes from the last checkpoint of the same settings by itself.
"""

from onereward.config import active_profile, load_params, section
from onereward.policy.known import GenerationConfig
from onereward.rl.config import TrainPolicyConfig
from onereward.rl.trainer import Paths, train


def main() -> None:
    params = load_params()
    metrics = train(section(TrainPolicyConfig, "train_policy", params), active_profile(params), Paths(),
                    generation=section(GenerationConfig, "generation", params))
    if metrics:
        print(f"train_policy: {metrics}")


if __name__ == "__main__":
    main()
