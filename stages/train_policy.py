"""Stage `train_policy`: OneReward RL of the FLUX.1-Fill policy against the trained judge.

Runs in ``train_policy.processes`` local processes (``python -m stages.train_policy``) or on
as many as a launcher starts (``accelerate launch --config_file configs/accelerate/ddp.yaml -m
stages.train_policy``).
A rerun after a crash resumes from the last checkpoint of the same settings by itself.
"""

from onereward.config import load_params, section
from onereward.judge.params import judge_section  # any section with per_profile overrides
from onereward.launch import data_parallel
from onereward.policy.known import GenerationConfig
from onereward.rl.config import TrainPolicyConfig
from onereward.rl.trainer import Paths, train


def main() -> None:
    cfg, _ = judge_section(TrainPolicyConfig, "train_policy", load_params())
    data_parallel(run, cfg.processes)


def run() -> None:
    """The stage in one process (of ``train_policy.processes``); the main process writes the outputs."""
    params = load_params()
    cfg, profile = judge_section(TrainPolicyConfig, "train_policy", params)  # the active profile's settings
    metrics = train(cfg, profile, Paths(), generation=section(GenerationConfig, "generation", params))
    if metrics:
        print(f"train_policy: {metrics}")


if __name__ == "__main__":
    main()
