"""Stage `base_model`: the policy's starting point.

Tiny profile: build the tiny FLUX.1-Fill in code, pre-train it briefly on the bundled photos
(onereward.policy.pretrain) in ``base_model.processes`` data-parallel processes and save it in
diffusers layout at ``profile.policy_model``. Real profile: FLUX.1-Fill-dev is used as
published, so only a pointer file is written.
"""

from pathlib import Path

import torch

from onereward.config import active_profile, load_params, section
from onereward.io import atomic_path, dumps_json, write_json
from onereward.launch import data_parallel
from onereward.policy.adapter import FillPolicy
from onereward.policy.pretrain import ExamplePool, PretrainConfig, train_transformer, train_vae
from onereward.policy.quality import base_quality
from onereward.policy.tiny import build_tiny_pipeline, save_pipeline

OUT = Path("data/models/policy_base")
METRICS = Path("reports/policy_base.json")


def main() -> None:
    params = load_params()
    profile = active_profile(params)
    if not profile.is_tiny:
        with atomic_path(OUT) as tmp:
            tmp.mkdir()
            (tmp / "pointer.json").write_text(dumps_json({"policy_model": profile.policy_model}))
        print(f"base_model: profile {profile.name!r} uses {profile.policy_model} as published")
        return
    if Path(profile.policy_model) != OUT:
        raise ValueError(f"tiny profile.policy_model must be {OUT} (this stage's DVC output)")
    data_parallel(pretrain, section(PretrainConfig, "base_model", params).processes)


def pretrain() -> None:
    """The tiny profile's pre-training in one process (of ``base_model.processes``); the main process writes the outputs."""
    from accelerate import PartialState

    params = load_params()
    cfg = section(PretrainConfig, "base_model", params)
    torch.manual_seed(cfg.seed)
    size = int(params["synthesize"]["resolution"])  # pre-train at the resolution RL sees
    policy = FillPolicy(build_tiny_pipeline(seed=cfg.seed))
    pool = ExamplePool(size, cfg)
    metrics = {**train_vae(policy, pool, cfg), **train_transformer(policy, pool, cfg)}
    if not PartialState(cpu=True).is_main_process:
        return
    metrics = {k: round(v, 5) for k, v in metrics.items()}
    quality = base_quality(policy, cfg.bar, size)
    if not quality["bar_met"]:  # recorded in the metrics; the run goes on so that its outputs can be inspected
        print(f"base_model: WARNING the tiny base misses its bar ({cfg.bar}): {quality}; "
              "train it longer (base_model.steps, vae_steps) before trusting what it makes")
    with atomic_path(OUT) as tmp:
        save_pipeline(policy.pipe, tmp)
    write_json(METRICS, {**metrics, "held_out": quality})
    print(f"base_model: tiny FLUX.1-Fill saved to {OUT}: {metrics}; held out: {quality}")


if __name__ == "__main__":
    main()
