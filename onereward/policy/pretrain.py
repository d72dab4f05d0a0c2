"""Brief pre-training of the tiny FLUX.1-Fill so that its fills are plausible before RL.

Two phases on random crops of the bundled photos: the VAE as an autoencoder (its latent
scale and shift are then measured and written into its config, as FLUX's VAE has them), then
the transformer with the ordinary rectified-flow inpainting objective, conditioned exactly as
FluxFillPipeline conditions it (``FillPolicy.encode_condition``). Examples mirror the three
tasks: fills with a prompted object or text drawn in, extends with the fixed prompt, removals.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from onereward import tasks
from onereward.data import scenes as syn
from onereward.launch import mean_over_processes
from onereward.numerics import adamw
from onereward.policy.adapter import Condition, FillPolicy
from onereward.policy.conv_grads import input_grads_as_convolutions
from onereward.policy.quality import BaseBar


@dataclass(frozen=True)
class PretrainConfig:
    """params.yaml `base_model` (tiny profile only)."""

    seed: int = 0
    """Seed of the architecture's init, the example stream, noise and timesteps."""
    vae_steps: int = 400
    """Autoencoder steps (reconstruction + small KL)."""
    vae_lr: float = 2e-3
    """AdamW learning rate of the VAE phase."""
    vae_kl_weight: float = 1e-6
    """Weight of the KL term (keeps latents near a Gaussian, as in SD/FLUX VAEs)."""
    vae_crop: int = 32
    """The VAE trains on random crops of this side (a multiple of 8): it is convolutional, and
    small crops give four times the images per second of full 64-pixel ones."""
    vae_batch_size: int = 32
    """Crops per VAE step."""
    steps: int = 1200
    """Transformer flow-matching steps."""
    lr: float = 1e-3
    """AdamW learning rate of the transformer phase (cosine decay to 10%)."""
    batch_size: int = 16
    """Examples per step, both phases."""
    prompt_dropout: float = 0.1
    """Share of examples trained with an empty prompt, so true CFG has an unconditional branch."""
    object_probability: float = 0.7
    """Share of fill examples whose region gets the prompted object or text drawn in."""
    pool_size: int = 2048
    """Examples drawn once and sampled (with flips) by both phases."""
    encode_batch_size: int = 64
    """Examples per VAE call when the flow phase encodes the pool."""
    processes: int = 1
    """Data-parallel processes on this machine (``onereward.launch``): each takes an equal share of
    every batch and DDP averages the gradients. All processes draw the same batches and noise, so a
    step is the one-process step up to float summation order."""
    bar: BaseBar = field(default_factory=BaseBar)
    """What the trained base must reach before it makes preference data (onereward.policy.quality)."""


def example(rng, size: int, cfg: PretrainConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """(target HxWx3 in [0,1], mask HxW bool, prompt) for one random task."""
    weights = tasks.rl_task_weights()
    task = str(rng.choice(list(weights), p=list(weights.values())))
    target = syn.crop_photo(rng, size)
    prompt = tasks.generation_prompt(task, None)
    if task == "removal":  # the object sits under the mask, so the target is just the background
        mask = np.zeros((size, size), bool)
        h, w = (int(v) for v in rng.integers(size // 4, size // 2, size=2))
        top, left = int(rng.integers(2, size - h - 2)), int(rng.integers(2, size - w - 2))
        mask[top : top + h, left : left + w] = True
    else:
        mask = syn.fill_mask(size, rng) if task == "fill" else syn.border_mask(size, rng)
        if task == "fill" and rng.random() < cfg.object_probability:
            if rng.random() < 0.25:
                content = syn.Content("text", word=str(rng.choice(syn.WORDS)))
            else:
                content = syn.Content("object", color=str(rng.choice(list(syn.COLORS))), shape=str(rng.choice(syn.SHAPES)))
            frac = 0.75 if content.kind == "text" else 0.6
            target = content.draw(target, syn.box_in(mask, frac, rng))
            prompt = content.prompt()
    if rng.random() < cfg.prompt_dropout:
        prompt = ""
    return target, mask, prompt


class ExamplePool:
    """A fixed pool of examples drawn once (drawing is slower than a tiny model's step)."""

    def __init__(self, size: int, cfg: PretrainConfig):
        rng = np.random.default_rng([cfg.seed, 0])
        items = [example(rng, size, cfg) for _ in tqdm(range(cfg.pool_size), desc="base_model examples", unit="ex")]
        self.targets = torch.from_numpy(np.stack([t for t, _, _ in items])).permute(0, 3, 1, 2).float()
        self.masks = torch.from_numpy(np.stack([m for _, m, _ in items])[:, None]).float()
        self.prompts = [p for _, _, p in items]

    def batch(self, rng, batch_size: int):
        """(targets [B,3,H,W] in [0,1], masks [B,1,H,W], prompts), with random horizontal flips."""
        idx = rng.integers(0, len(self.prompts), size=batch_size)
        flip = torch.from_numpy(rng.random(batch_size) < 0.5)[:, None, None, None]
        t, m = self.targets[idx], self.masks[idx]
        t, m = torch.where(flip, t.flip(-1), t), torch.where(flip, m.flip(-1), m)
        return t, m, [self.prompts[i] for i in idx]


class EncodedPool:
    """The pool as the flow phase's transformer sees it, encoded once: every example's FLUX-Fill
    condition (``FillPolicy.encode_condition``) and target latents, as drawn and mirrored.

    Encoding a batch twice with the VAE took two thirds of a flow step. The price: the VAE
    posterior's noise in an encoding is drawn once per example and mirror, not once per step
    (its spread is small: the posterior starts nearly deterministic and the KL weight is tiny).
    Rows are example i at row i and its mirror at row n + i; each process encodes an equal range
    of rows and all of them gather the whole. Each batch of rows draws its posterior noise from
    its own seed, so the encodings do not depend on the process count (when a process's range is
    whole batches, as with the default 2 x 2,048 rows).
    """

    def __init__(self, policy: FillPolicy, pool: ExamplePool, cfg: PretrainConfig, acc):
        n, world, rank = len(pool.prompts), acc.num_processes, acc.process_index
        if 2 * n % world:
            raise ValueError(f"base_model: {2 * n} pool rows (mirrors included) do not split over {world} processes")
        per = 2 * n // world
        conds, latents = [], []
        bar = tqdm(total=per, desc="base_model encode", unit="ex", disable=not acc.is_main_process)
        for start in range(rank * per, (rank + 1) * per, cfg.encode_batch_size):
            row = torch.arange(start, min(start + cfg.encode_batch_size, (rank + 1) * per))
            i, mirrored = row % n, (row >= n)[:, None, None, None]
            t = torch.where(mirrored, pool.targets[i].flip(-1), pool.targets[i])
            m = torch.where(mirrored, pool.masks[i].flip(-1), pool.masks[i])
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + start)
            conds.append(policy.encode_condition(t, m, [pool.prompts[k] for k in i.tolist()], gen))
            latents.append(policy.encode_latents(t, gen))
            bar.update(len(row))
        bar.close()
        mine = Condition.cat(conds)
        self.size = n
        self.cond = replace(mine, prompt_embeds=acc.gather(mine.prompt_embeds), pooled=acc.gather(mine.pooled),
                            masked=acc.gather(mine.masked))
        self.latents = acc.gather(torch.cat(latents))

    def batch(self, rng, batch_size: int) -> tuple[torch.Tensor, Condition]:
        """(target latents, conditions) of random examples, each mirrored with probability 1/2
        (the same draws as ``ExamplePool.batch``)."""
        idx = rng.integers(0, self.size, size=batch_size)
        rows = torch.from_numpy(idx + self.size * (rng.random(batch_size) < 0.5))
        return self.latents[rows], self.cond.take(rows)


def _share(batch_size: int, acc) -> slice:
    """This process's part of a batch that every process drew in full."""
    world, rank = acc.num_processes, acc.process_index
    if batch_size % world:
        raise ValueError(f"base_model: a batch of {batch_size} does not split over {world} processes")
    per = batch_size // world
    return slice(rank * per, (rank + 1) * per)


class AutoencoderLoss(torch.nn.Module):
    """The VAE phase's loss as one ``forward`` (DDP synchronises gradients of ``forward`` calls):
    reconstruction (L1 + MSE) of a posterior sample plus a small KL term."""

    def __init__(self, vae, kl_weight: float):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        post = self.vae.encode(x).latent_dist
        rec = self.vae.decode(post.mean + post.std * noise).sample  # = post.sample() with this noise
        return F.l1_loss(rec, x) + F.mse_loss(rec, x) + self.kl_weight * post.kl().mean()


def _cosine(opt, steps: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * s / max(1, steps))))


def _crop(x: torch.Tensor, side: int, rng) -> torch.Tensor:
    """One random crop for the whole batch, aligned to the 8-pixel latent grid."""
    if side >= x.shape[-1]:
        return x
    top, left = (int(v) // 8 * 8 for v in rng.integers(0, x.shape[-1] - side + 1, size=2))
    return x[..., top : top + side, left : left + side]


def _accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)  # the tiny profile pre-trains on the CPU; gloo over processes


def train_vae(policy: FillPolicy, pool: ExamplePool, cfg: PretrainConfig) -> dict:
    acc = _accelerator()
    vae = policy.vae
    # Start the posterior nearly deterministic (log-variance -10): with the default init its
    # std is ~1 and the decoder first has to learn to see through that noise.
    out = vae.encoder.conv_out
    with torch.no_grad():
        out.weight[vae.config.latent_channels :] = 0
        out.bias[vae.config.latent_channels :] = -10.0
    vae.train().requires_grad_(True)
    runner = acc.prepare_model(AutoencoderLoss(vae, cfg.vae_kl_weight))  # DDP over several processes
    mine = _share(cfg.vae_batch_size, acc)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    rng = np.random.default_rng([cfg.seed, 1])
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = adamw(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = _cosine(opt, cfg.vae_steps)
    bar = tqdm(range(cfg.vae_steps), desc="base_model vae", unit="step", disable=not acc.is_main_process)
    with input_grads_as_convolutions(vae):  # the backward on NNPACK as the forward is (conv_grads.py)
        for _ in bar:
            x, _, _ = pool.batch(rng, cfg.vae_batch_size)
            x = _crop(x * 2 - 1, cfg.vae_crop, rng)
            b, _, h, w = x.shape
            noise = torch.randn((b, vae.config.latent_channels, h // factor, w // factor), generator=gen)
            loss = runner(x[mine], noise[mine])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over the processes here
            opt.step()
            sched.step()
            loss_value = mean_over_processes(loss, acc)
            bar.set_postfix(loss=f"{loss_value:.4f}")
    vae.eval().requires_grad_(False)
    # FLUX normalises latents as (z - shift) * scale; measure both on fresh crops.
    with torch.no_grad():
        z = torch.cat([vae.encode(pool.batch(rng, 64)[0] * 2 - 1).latent_dist.mode() for _ in range(4)])
    shift, scale = float(z.mean()), float(1.0 / z.std())
    vae.register_to_config(shift_factor=round(shift, 4), scaling_factor=round(scale, 4))
    return {"vae_loss": loss_value, "vae_shift": shift, "vae_scale": scale}


def flow_loss(policy: FillPolicy, x0: torch.Tensor, cond: Condition, gen, mine: slice = slice(None),
              transformer=None) -> torch.Tensor:
    """Rectified-flow loss of FLUX-Fill: predict v = noise - x0 from x_t = (1-s) x0 + s noise.

    Noise and timesteps are drawn for the whole batch (every process draws the same); the loss
    is over the rows ``mine``.
    """
    noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    # Timesteps shifted as the scheduler shifts them for this resolution (FLUX's dynamic shift).
    _, sigmas = policy.timesteps(1000, cond.height, cond.width)
    idx = torch.randint(0, 1000, (x0.shape[0],), generator=gen)
    s = sigmas[idx].to(x0.dtype)[:, None, None]
    xt = (1 - s) * x0 + s * noise
    x0, noise, s, xt = x0[mine], noise[mine], s[mine], xt[mine]
    v = policy.velocity(xt, s.flatten() * 1000, cond.take(mine), transformer=transformer)
    return F.mse_loss(v.float(), (noise - x0).float())


def train_transformer(policy: FillPolicy, pool: ExamplePool, cfg: PretrainConfig) -> dict:
    acc = _accelerator()
    encoded = EncodedPool(policy, pool, cfg, acc)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    tr = policy.transformer
    tr.train().requires_grad_(True)
    runner = acc.prepare_model(tr)
    mine = _share(cfg.batch_size, acc)
    rng = np.random.default_rng([cfg.seed, 2])
    opt = adamw(tr.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = _cosine(opt, cfg.steps)
    bar = tqdm(range(cfg.steps), desc="base_model flow", unit="step", disable=not acc.is_main_process)
    ema = None
    for _ in bar:
        x0, cond = encoded.batch(rng, cfg.batch_size)
        loss = flow_loss(policy, x0, cond, gen, mine, transformer=runner)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tr.parameters(), 1.0)
        opt.step()
        sched.step()
        value = mean_over_processes(loss, acc)
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        bar.set_postfix(loss=f"{ema:.4f}")
    tr.eval().requires_grad_(False)
    return {"flow_loss": ema}
