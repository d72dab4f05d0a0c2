"""``FillPolicy``: the FLUX.1-Fill pieces RL and inference need, on top of a stock FluxFillPipeline.

Condition encoding, noise, timesteps, packing and the Euler update all go through the
pipeline's own methods (``encode_prompt``, ``prepare_latents``, ``prepare_mask_latents``,
``_unpack_latents``, the scheduler), so the adapter cannot drift from what
``FluxFillPipeline.__call__`` does. Images are float ``[B, 3, H, W]`` in ``[0, 1]``; masks
``[B, 1, H, W]`` with 1 = region to generate (docs/CONTRACTS.md).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np
import torch
from diffusers import FluxFillPipeline
from diffusers.pipelines.flux.pipeline_flux_fill import calculate_shift, retrieve_timesteps
from diffusers.utils.torch_utils import randn_tensor

from onereward.config import Profile

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SIZE_MULTIPLE = 16  # VAE factor 8 x 2x2 packing


def check_size(height: int, width: int) -> None:
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or height <= 0 or width <= 0:
        raise ValueError(
            f"image size {height}x{width} is not a positive multiple of {SIZE_MULTIPLE} "
            "(FLUX: VAE factor 8 and 2x2 latent packing); pad or resize the input first"
        )


@dataclass
class Condition:
    """One batch of encoded conditions, exactly the tensors FluxFillPipeline feeds its transformer."""

    prompt_embeds: torch.Tensor
    """T5 sequence embeddings ``[B, S, D]``."""
    pooled: torch.Tensor
    """CLIP pooled embeddings ``[B, D']``."""
    text_ids: torch.Tensor
    """Text position ids ``[S, 3]`` (all zero in FLUX)."""
    masked: torch.Tensor
    """Packed masked-image latents and packed mask, concatenated: ``[B, L, 64 + 256]``."""
    img_ids: torch.Tensor
    """Latent position ids ``[L, 3]``."""
    height: int
    width: int

    def __len__(self) -> int:
        return self.masked.shape[0]

    def take(self, rows: torch.Tensor | slice) -> "Condition":
        """The conditions of batch rows ``rows`` (an index tensor or a slice)."""
        return replace(self, prompt_embeds=self.prompt_embeds[rows], pooled=self.pooled[rows], masked=self.masked[rows])

    @classmethod
    def cat(cls, parts: list["Condition"]) -> "Condition":
        """Batches of one image size stacked into one."""
        if len({(c.height, c.width) for c in parts}) != 1:
            raise ValueError("Condition.cat: the batches have different image sizes")
        return replace(
            parts[0],
            prompt_embeds=torch.cat([c.prompt_embeds for c in parts]),
            pooled=torch.cat([c.pooled for c in parts]),
            masked=torch.cat([c.masked for c in parts]),
        )

    def repeat2(self, other: "Condition") -> "Condition":
        """Self stacked on ``other`` along the batch (cond + uncond in one pass for true CFG)."""
        return Condition.cat([self, other])


class FillPolicy:
    """FLUX.1-Fill components behind one small interface (RL rollouts, one-step x0, decode, CFG)."""

    def __init__(self, pipe: FluxFillPipeline, max_sequence_length: int | None = None, prompt_cache_size: int = 1024):
        self.pipe = pipe
        # The tiny model stores a short T5 length in its tokenizer (512 text tokens would
        # dwarf its 16 image tokens); FLUX.1-Fill-dev's tokenizer says 512, the pipeline default.
        self.max_sequence_length = max_sequence_length or min(512, pipe.tokenizer_2.model_max_length)
        if prompt_cache_size < 1:
            raise ValueError(f"prompt_cache_size must be at least 1, got {prompt_cache_size}")
        # On the CPU and least-recently-used first out: 4 MB a prompt for FLUX.1-Fill-dev's T5 (512 x 4096 bf16)
        self.prompt_cache_size = prompt_cache_size
        self._prompt_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.text_encoders_offloaded = False
        # Own scheduler instance: its step index is state, and reference/policy rollouts interleave.
        self.scheduler = copy.deepcopy(pipe.scheduler)
        # prepare_latents mixes image and noise at t = 1000 with ``pipe.scheduler``; one left
        # mid-schedule by an earlier stock call would use its stale step's sigma instead of 1.
        self._unstepped = type(pipe.scheduler).from_config(pipe.scheduler.config)

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str, device: str = "cpu", dtype: torch.dtype = torch.float32, **kw) -> "FillPolicy":
        """A local diffusers folder or a hub id (black-forest-labs/FLUX.1-Fill-dev)."""
        pipe = FluxFillPipeline.from_pretrained(path, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
        for m in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            m.requires_grad_(False).eval()
        return cls(pipe, **kw)

    @classmethod
    def from_profile(cls, profile: Profile, path: str | None = None, **kw) -> "FillPolicy":
        return cls.load(path or profile.policy_model, profile.device, DTYPES[profile.dtype], **kw)

    @property
    def transformer(self):
        return self.pipe.transformer

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def device(self) -> torch.device:
        return self.pipe.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.transformer.dtype

    def _text_encoders(self):
        return [m for m in (self.pipe.text_encoder, self.pipe.text_encoder_2) if m is not None]

    def offload_text_encoders(self) -> None:
        """Keep the text encoders on the CPU; they visit the policy's device only to encode prompts
        that are not cached (RL encodes each prompt once: the encoders idle otherwise)."""
        for m in self._text_encoders():
            m.to("cpu")
        self.text_encoders_offloaded = True

    # ---- conditions ------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]):
        """(T5 embeds, CLIP pooled, text ids) via the pipeline's ``encode_prompt``.

        Each distinct prompt is encoded alone and cached on the CPU (at most
        ``prompt_cache_size`` prompts): the text encoders are frozen, and encoding one at a time
        makes the bytes independent of batch composition and history (a resumed run must
        reproduce an uninterrupted one exactly; an evicted prompt encodes to the same bytes).
        """
        distinct = list(dict.fromkeys(prompts))
        if len(distinct) > self.prompt_cache_size:
            raise ValueError(f"{len(distinct)} distinct prompts in one batch exceed prompt_cache_size {self.prompt_cache_size}")
        todo = [p for p in distinct if p not in self._prompt_cache]
        if todo and self.text_encoders_offloaded:
            for m in self._text_encoders():
                m.to(self.device)
        try:
            for p in todo:
                e, pooled, _ = self.pipe.encode_prompt(
                    prompt=[p], prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
                )
                self._prompt_cache[p] = (e[0].to("cpu", self.dtype), pooled[0].to("cpu", self.dtype))
        finally:
            if todo and self.text_encoders_offloaded:
                for m in self._text_encoders():
                    m.to("cpu")
        for p in distinct:
            self._prompt_cache.move_to_end(p)
        while len(self._prompt_cache) > self.prompt_cache_size:
            self._prompt_cache.popitem(last=False)
        embeds = torch.stack([self._prompt_cache[p][0] for p in prompts]).to(self.device)
        pooled = torch.stack([self._prompt_cache[p][1] for p in prompts]).to(self.device)
        text_ids = torch.zeros(embeds.shape[1], 3, device=self.device, dtype=self.pipe.text_encoder.dtype)
        return embeds, pooled, text_ids

    @torch.no_grad()
    def encode_condition(self, images, masks, prompts, generator=None) -> Condition:
        """Prompt embeddings plus packed masked-image latents and mask, as FluxFillPipeline makes them."""
        embeds, pooled, text_ids = self.encode_prompts(list(prompts))
        init = self._preprocess(images)
        return self._mask_condition(init, masks, embeds, pooled, text_ids, generator)

    def _preprocess(self, images):
        height, width = images.shape[-2:]
        check_size(height, width)
        return self.pipe.image_processor.preprocess(images, height=height, width=width).to(torch.float32)

    def _mask_condition(self, init, masks, embeds, pooled, text_ids, generator) -> Condition:
        pipe, (height, width) = self.pipe, init.shape[-2:]
        mask = pipe.mask_processor.preprocess(masks, height=height, width=width)
        masked_image = (init * (1 - mask)).to(device=self.device, dtype=embeds.dtype)
        ch = pipe.vae.config.latent_channels
        mask, masked_latents = pipe.prepare_mask_latents(
            mask, masked_image, init.shape[0], ch, 1, height, width, embeds.dtype, self.device, generator
        )
        img_ids = pipe._prepare_latent_image_ids(None, height // 16, width // 16, self.device, embeds.dtype)
        return Condition(embeds, pooled, text_ids, torch.cat([masked_latents, mask], -1), img_ids, height, width)

    @torch.no_grad()
    def encode_latents(self, images, generator=None) -> torch.Tensor:
        """Packed, normalised VAE latents of images in [0, 1] (flow-matching targets)."""
        init = self._preprocess(images).to(self.device, self.vae.dtype)
        lat = self.pipe._encode_vae_image(init, generator)
        b, c, h, w = lat.shape
        return self.pipe._pack_latents(lat, b, c, h, w).to(self.dtype)

    @torch.no_grad()
    def prepare(self, images, masks, prompts, generator=None, noise: torch.Tensor | None = None):
        """Encode a batch as ``FluxFillPipeline.__call__`` steps 1-6 do; returns (Condition, noise).

        ``generator`` (one, or one per sample) is consumed in the pipeline's order: VAE sample of
        the image, initial noise, VAE sample of the masked image. So the same seed gives the
        same tensors as a stock call. ``noise`` (packed) overrides the sampled initial latents.
        """
        embeds, pooled, text_ids = self.encode_prompts(list(prompts))
        init = self._preprocess(images)
        batch, (height, width) = init.shape[0], init.shape[-2:]
        sigma_one = torch.full((batch,), 1000.0, device=self.device)  # strength 1: start from pure noise
        start = init
        if noise is None and float(self._unstepped.sigmas[0]) == 1.0:
            # At sigma 1 prepare_latents takes noise + 0 * the image's latents: the VAE encoding is
            # wasted work (a third of a 64 px candidate's VAE time). Its posterior sample's draws are
            # taken from ``generator`` all the same and zero latents passed: the same bits, the same stream.
            self._draw_posterior_sample(batch, height, width, generator)
            latent_side = lambda side: 2 * (int(side) // (self.pipe.vae_scale_factor * 2))  # noqa: E731
            start = torch.zeros(batch, self.vae.config.latent_channels, latent_side(height), latent_side(width))
        stepped, self.pipe.scheduler = self.pipe.scheduler, self._unstepped
        try:
            latents, _ = self.pipe.prepare_latents(
                start, sigma_one, batch, self.vae.config.latent_channels, height, width,
                embeds.dtype, self.device, generator, noise,
            )
        finally:
            self.pipe.scheduler = stepped
        return self._mask_condition(init, masks, embeds, pooled, text_ids, generator), latents

    def _draw_posterior_sample(self, batch: int, height: int, width: int, generator) -> None:
        """Consume ``generator`` as ``pipe._encode_vae_image`` would (its posterior sample: one
        draw for the batch, or one per image with a list of generators), without encoding."""
        shape = (self.vae.config.latent_channels, height // self.pipe.vae_scale_factor, width // self.pipe.vae_scale_factor)
        for g, rows in ([(g, 1) for g in generator] if isinstance(generator, list) else [(generator, batch)]):
            randn_tensor((rows, *shape), generator=g, device=self.vae.device, dtype=self.vae.dtype)

    def timesteps(self, num_steps: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps [N], sigmas [N+1]) exactly as FluxFillPipeline schedules them for this size."""
        seq_len = (height // self.pipe.vae_scale_factor // 2) * (width // self.pipe.vae_scale_factor // 2)
        cfg = self.scheduler.config
        mu = calculate_shift(
            seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15),
        )
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        ts, _ = retrieve_timesteps(self.scheduler, num_steps, self.device, sigmas=sigmas, mu=mu)
        return ts, self.scheduler.sigmas.clone()

    # ---- model calls -----------------------------------------------------------------------
    def velocity(self, latents, t, cond: Condition, guidance_scale: float = 1.0,
                 neg: Condition | None = None, true_cfg: float = 1.0, transformer=None) -> torch.Tensor:
        """Flow velocity at timestep ``t`` (scheduler units); true CFG batches cond and uncond passes."""
        transformer = transformer or self.transformer
        use_cfg = neg is not None and true_cfg != 1.0
        both = cond.repeat2(neg) if use_cfg else cond
        x = torch.cat([latents, latents]) if use_cfg else latents
        n = x.shape[0]
        guidance = None
        if self.pipe.transformer.config.guidance_embeds:
            guidance = torch.full((n,), guidance_scale, device=x.device, dtype=torch.float32)
        v = transformer(
            hidden_states=torch.cat((x, both.masked), dim=2),
            timestep=(t.expand(n) if torch.is_tensor(t) else torch.full((n,), float(t), device=x.device)).to(x.dtype) / 1000,
            guidance=guidance,
            pooled_projections=both.pooled,
            encoder_hidden_states=both.prompt_embeds,
            txt_ids=cond.text_ids,
            img_ids=cond.img_ids,
            return_dict=False,
        )[0]
        if use_cfg:
            pos, negv = v.chunk(2)
            v = negv + true_cfg * (pos - negv)
        return v

    @torch.no_grad()
    def denoise(self, latents, cond: Condition, num_steps: int, stop: int | None = None, **vel_kw) -> torch.Tensor:
        """Euler-integrate steps ``0 .. stop-1`` of an ``num_steps`` schedule (all when ``stop`` is None)."""
        ts, _ = self.timesteps(num_steps, cond.height, cond.width)
        self.scheduler.set_begin_index(0)
        for t in ts[: num_steps if stop is None else stop]:
            v = self.velocity(latents, t, cond, **vel_kw)
            latents = self.scheduler.step(v, t, latents, return_dict=False)[0]
        return latents

    def predict_x0(self, latents, step: int, cond: Condition, num_steps: int, **vel_kw) -> torch.Tensor:
        """One model call at schedule index ``step``: x0 = x_t - sigma_t * v (rectified flow), with grad."""
        ts, sigmas = self.timesteps(num_steps, cond.height, cond.width)
        v = self.velocity(latents, ts[step], cond, **vel_kw)
        return latents - sigmas[step].to(latents.dtype) * v

    def decode_raw(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed latents -> the VAE's output in [-1, 1], in the VAE's dtype (the pipeline's unpack + decode)."""
        vae = self.pipe.vae
        lat = self.pipe._unpack_latents(latents, height, width, self.pipe.vae_scale_factor)
        lat = lat / vae.config.scaling_factor + vae.config.shift_factor
        return vae.decode(lat.to(vae.dtype), return_dict=False)[0]

    def decode(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed latents -> images in [0, 1] (differentiable)."""
        return (self.decode_raw(latents, height, width).float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def sample(self, cond: Condition, noise: torch.Tensor, num_steps: int, **vel_kw) -> torch.Tensor:
        """Full denoise from ``noise`` and decode: images in [0, 1]."""
        return self.decode(self.denoise(noise, cond, num_steps, **vel_kw), cond.height, cond.width)
