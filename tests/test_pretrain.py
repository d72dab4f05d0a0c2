"""The tiny base's pre-training (onereward.policy.pretrain): the encoded pool and two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from onereward.policy.adapter import FillPolicy
from onereward.policy.pretrain import EncodedPool, ExamplePool, PretrainConfig
from onereward.policy.tiny import build_tiny_pipeline

CFG = PretrainConfig(vae_steps=3, steps=3, pool_size=16, vae_batch_size=4, batch_size=4, encode_batch_size=8)


class _OneProcess:
    num_processes, process_index, is_main_process = 1, 0, True

    @staticmethod
    def gather(t):
        return t


def test_encoded_pool_holds_each_example_and_its_mirror_as_the_pipeline_encodes_them():
    policy = FillPolicy(build_tiny_pipeline(seed=0))
    pool = ExamplePool(64, CFG)
    encoded = EncodedPool(policy, pool, CFG, _OneProcess())
    n = CFG.pool_size
    assert len(encoded.cond) == len(encoded.latents) == 2 * n
    # rows n .. n+7 are examples 0..7 mirrored, encoded as one batch with that batch's own seed
    t, m = pool.targets[:8].flip(-1), pool.masks[:8].flip(-1)
    gen = torch.Generator().manual_seed(CFG.seed * 1_000_003 + n)
    cond = policy.encode_condition(t, m, pool.prompts[:8], gen)
    latents = policy.encode_latents(t, gen)
    rows = torch.arange(n, n + 8)
    got = encoded.cond.take(rows)
    assert torch.equal(got.masked, cond.masked) and torch.equal(got.prompt_embeds, cond.prompt_embeds)
    assert torch.equal(encoded.latents[rows], latents)
    # a batch draws the same examples and mirrors as the pixel pool does
    x0, c = encoded.batch(np.random.default_rng(1), 6)
    _, _, prompts = pool.batch(np.random.default_rng(1), 6)
    assert x0.shape[0] == len(c) == 6
    assert torch.equal(c.prompt_embeds, policy.encode_prompts(prompts)[0])


def pretrain_and_record(out: str) -> None:
    """Entry of the processes below (module level: spawned processes import it by name)."""
    from accelerate import PartialState
    from safetensors.torch import save_file

    from onereward.policy.pretrain import train_transformer, train_vae

    torch.manual_seed(0)
    policy = FillPolicy(build_tiny_pipeline(seed=0))
    pool = ExamplePool(64, CFG)
    metrics = {**train_vae(policy, pool, CFG), **train_transformer(policy, pool, CFG)}
    if PartialState().is_main_process:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "metrics.json").write_text(json.dumps(metrics))
        weights = {**{f"vae.{n}": p for n, p in policy.vae.named_parameters()},
                   **{f"tr.{n}": p for n, p in policy.transformer.named_parameters()}}
        save_file({n: p.detach().contiguous() for n, p in weights.items()}, str(Path(out) / "w.safetensors"))


def test_two_processes_pretrain_the_base_as_one_does(tmp_path):
    """Both phases on two DDP processes (each half of every batch, the same draws) follow one
    process up to float summation order: losses to 1e-4 relative, weights to 1e-5 but for elements
    whose Adam step summation order flips."""
    from safetensors.torch import load_file

    code = ("import sys; sys.path.insert(0, {tests!r}); from onereward.launch import data_parallel; "
            "from test_pretrain import pretrain_and_record; data_parallel(pretrain_and_record, {n}, {out!r})")
    for n in (1, 2):
        run = subprocess.run([sys.executable, "-c", code.format(tests=str(Path(__file__).parent), n=n,
                                                               out=str(tmp_path / f"p{n}"))],
                             capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert run.returncode == 0, run.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"p{n}" / "metrics.json").read_text()) for n in (1, 2))
    for k in ("vae_loss", "flow_loss"):
        assert abs(one[k] - two[k]) < 1e-4 * max(1.0, abs(one[k])), (k, one[k], two[k])
    w1, w2 = (load_file(str(tmp_path / f"p{n}" / "w.safetensors")) for n in (1, 2))
    # Adam turns a gradient element near zero into a whole lr step whose sign summation order can
    # flip, so some elements may differ by up to two steps. How many depends on the init: 1 in
    # 10,000 with one seed's weights, 41 with another's; with SGD in place of AdamW none differs
    # by 1e-5. A wrong share of the batch would move most elements, not a few.
    diff = torch.cat([(w1[k] - w2[k]).abs().flatten() for k in w1])
    close = (diff < 1e-5).float().mean().item()
    assert close > 0.99 and diff.max().item() <= 2 * max(CFG.lr, CFG.vae_lr), (close, diff.max().item())
    # and the processes did train: the weights moved from the seed's
    fresh = build_tiny_pipeline(seed=0)
    assert (w1["tr.proj_out.weight"] - fresh.transformer.proj_out.weight).abs().max() > 1e-4


def test_batch_must_split_over_the_processes():
    import pytest

    from onereward.policy.pretrain import _share

    class Two(_OneProcess):
        num_processes = 2

    assert _share(4, Two()) == slice(0, 2)
    with pytest.raises(ValueError, match="does not split over 2 processes"):
        _share(5, Two())
