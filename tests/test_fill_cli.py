"""`onereward fill`: input checks (one line, exit 2), padding, presets, official defaults, tiny model."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onereward import cli
from onereward.fill import FillInputError, fill, load_policy, prepare_inputs, resolve_prompt
from onereward.policy.adapter import FillPolicy
from onereward.policy.inference import InferenceConfig, generate
from onereward.policy.tiny import T5_MAX_LENGTH, build_tiny_pipeline, save_pipeline

H, W = 40, 56  # not multiples of 16: the padding path is the one exercised


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("fill") / "tiny"
    save_pipeline(build_tiny_pipeline(seed=0), path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(d / "image.png")
    mask = np.zeros((H, W), np.uint8)
    mask[8:30, 10:40] = 255
    Image.fromarray(mask).save(d / "mask.png")
    soft = mask.copy()
    soft[8, 10:20] = 128
    Image.fromarray(soft).save(d / "soft.png")
    Image.fromarray(mask[:32]).save(d / "small.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(d / "empty.png")
    (d / "broken.png").write_bytes(b"not an image")
    return d


def _run(capsys, *args) -> tuple[int, str]:
    rc = cli.main(["fill", *map(str, args)])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing_image", "image file not found"),
        ("missing_mask", "mask file not found"),
        ("broken_image", "cannot read image"),
        ("size_mismatch", "differs from image size"),
        ("non_binary", "mask is not binary"),
        ("empty_mask", "selects nothing"),
        ("fill_without_prompt", "needs a prompt"),
        ("bad_extension", "unknown image extension"),
        ("missing_model", "model folder not found"),
        ("true_cfg_below_1", "--true-cfg must be >= 1"),
        ("sequence_too_long", "--max-sequence-length must be in 1..512"),
    ],
)
def test_bad_inputs_get_one_line_and_exit_2(capsys, files, tmp_path, case, expect):
    args = {"--image": files / "image.png", "--mask": files / "mask.png", "--prompt": "a kite",
            "--output": tmp_path / "out.png", "--model": tmp_path / "no-model"}
    if case == "missing_image":
        args["--image"] = files / "nope.png"
    elif case == "missing_mask":
        args["--mask"] = files / "nope.png"
    elif case == "broken_image":
        args["--image"] = files / "broken.png"
    elif case == "size_mismatch":
        args["--mask"] = files / "small.png"
    elif case == "non_binary":
        args["--mask"] = files / "soft.png"
    elif case == "empty_mask":
        args["--mask"] = files / "empty.png"
    elif case == "fill_without_prompt":
        del args["--prompt"]
    elif case == "bad_extension":
        args["--output"] = tmp_path / "out.xyz"
    elif case == "true_cfg_below_1":
        args["--true-cfg"] = 0.5
    elif case == "sequence_too_long":
        args["--max-sequence-length"] = 513
    rc, err = _run(capsys, *[x for kv in args.items() for x in kv])
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onereward fill: error: ") and expect in lines[0], err
    assert not (tmp_path / "out.png").exists()


def test_unexpected_failure_is_one_line_not_a_traceback(capsys, files, model_dir, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied\n  deep inside the model")

    monkeypatch.setattr("onereward.fill.fill", boom)
    rc, err = _run(capsys, "--image", files / "image.png", "--mask", files / "mask.png", "--prompt", "x",
                   "--output", tmp_path / "o.png", "--model", model_dir, "--steps", 1)
    assert rc == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("onereward fill: error: RuntimeError: mat1 and mat2")


def test_padding_is_edge_replication_and_reversible(files):
    image, mask = Image.open(files / "image.png"), Image.open(files / "mask.png")
    inp = prepare_inputs(image, mask)
    assert inp.image.shape == (48, 64, 3) and inp.mask.shape == (48, 64) and inp.size == (H, W) and inp.padded
    assert np.array_equal(inp.image[:H, :W], np.asarray(image.convert("RGB")))
    assert np.array_equal(inp.image[H:, :W], np.repeat(inp.image[H - 1 : H, :W], 48 - H, axis=0))
    assert set(np.unique(inp.mask)) <= {0, 1}
    soft = Image.open(files / "soft.png")
    with pytest.raises(FillInputError):
        prepare_inputs(image, soft)
    assert prepare_inputs(image, soft, binarize=True).mask[8, 10] == 1  # 128 > 127


def test_task_presets_use_the_registry_prompts():
    assert resolve_prompt("removal", "a dog") == "remove"
    assert resolve_prompt("removal", None) == "remove"
    assert resolve_prompt("extend", None) == "high-definition, perfect composition"
    assert resolve_prompt("extend", "a beach") == "a beach"
    assert resolve_prompt("fill", " a kite ") == "a kite"
    with pytest.raises(FillInputError):
        resolve_prompt("fill", "  ")


def test_cli_defaults_are_the_official_ones():
    args = cli.build_parser().parse_args(["fill", "--image", "i", "--mask", "m", "--output", "o.png"])
    official = InferenceConfig()
    assert (args.steps, args.true_cfg, args.guidance, args.negative_prompt, args.seed) == (
        official.num_inference_steps, official.true_cfg, official.guidance_scale, official.negative_prompt, official.seed)
    assert (official.true_cfg, official.negative_prompt, official.guidance_scale, official.num_inference_steps) == (4.0, "nsfw", 1.0, 50)


def test_cli_output_equals_true_cfg_library_call(capsys, files, model_dir, tmp_path):
    out = tmp_path / "sub" / "out.png"
    rc, err = _run(capsys, "--image", files / "image.png", "--mask", files / "mask.png", "--prompt", "a kite",
                   "--output", out, "--model", model_dir, "--steps", 2, "--seed", 3)
    assert rc == 0, err
    assert "padded to 64x48" in err
    result = np.asarray(Image.open(out))
    assert result.shape == (H, W, 3)
    # The same through the library: pad, true-CFG generate (cond + "nsfw" in one batch), crop.
    policy = load_policy(str(model_dir), max_sequence_length=512)  # the command's default
    inp = prepare_inputs(Image.open(files / "image.png"), Image.open(files / "mask.png"))
    cfg = InferenceConfig(num_inference_steps=2, seed=3)
    direct = generate(policy, torch.from_numpy(inp.image.copy()).permute(2, 0, 1)[None].float() / 255,
                      torch.from_numpy(inp.mask.copy())[None, None].float(), ["a kite"], None, cfg)[0, :, :H, :W]
    expected = (direct.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    # within 1/255: the command hands the VAE PIL-like (channels-last) tensors, this call contiguous ones
    assert np.abs(result.astype(int) - expected).max() <= 1
    # true CFG is on: without it the result differs
    off = fill(policy, inp, "a kite", InferenceConfig(num_inference_steps=2, seed=3, true_cfg=1.0))
    assert not np.array_equal(np.asarray(off), result)


def test_removal_ignores_the_prompt(capsys, files, model_dir, tmp_path):
    common = ["--image", files / "image.png", "--mask", files / "mask.png", "--model", model_dir,
              "--steps", 1, "--task", "removal"]
    assert _run(capsys, *common, "--output", tmp_path / "a.png")[0] == 0
    rc, err = _run(capsys, *common, "--prompt", "a dog", "--output", tmp_path / "b.png")
    assert rc == 0 and "ignores --prompt" in err
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_console_script_runs_the_tiny_model(files, model_dir, tmp_path):
    # the script pip installed beside this interpreter (another one on PATH may belong to another Python)
    exe = shutil.which("onereward", path=str(Path(sys.executable).parent))
    assert exe, "pip install -e . puts the onereward console script beside the interpreter"
    cmd = [exe]
    out = tmp_path / "out.png"
    proc = subprocess.run([*cmd, "fill", "--image", str(files / "image.png"), "--mask", str(files / "mask.png"),
                           "--task", "extend", "--output", str(out), "--model", str(model_dir), "--steps", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (W, H)
    assert "Traceback" not in proc.stderr


def test_judge_subcommand_hands_its_arguments_to_the_judge_cli(monkeypatch):
    import onereward.judge.cli as judge_cli

    seen = []
    monkeypatch.setattr(judge_cli, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["judge", "--task", "fill", "a.png", "b.png", "--symmetric"]) == 0
    assert seen == [["--task", "fill", "a.png", "b.png", "--symmetric"]]


# ---- against stock diffusers and the official OneReward pipeline ----------------------------

SH, SW = 48, 64  # multiples of 16: the stock pipeline would resize other sizes, the command pads
STEPS, PROMPT = 8, "a red kite"


@pytest.fixture(scope="module")
def square_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("stock")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (SH, SW, 3), dtype=np.uint8)).save(d / "image.png")
    mask = np.zeros((SH, SW), np.uint8)
    mask[10:40, 16:56] = 255
    Image.fromarray(mask).save(d / "mask.png")
    return d


def _stock_pipe(model_dir):
    from diffusers import FluxFillPipeline

    pipe = FluxFillPipeline.from_pretrained(str(model_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pixels(path_or_image) -> np.ndarray:
    im = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    return np.asarray(im.convert("RGB")).astype(int)


def _fill_cmd(capsys, files, model_dir, out, *extra) -> np.ndarray:
    rc, err = _run(capsys, "--image", files / "image.png", "--mask", files / "mask.png", "--prompt", PROMPT,
                   "--output", out, "--model", model_dir, "--steps", STEPS, "--guidance", 1, "--seed", 0, *extra)
    assert rc == 0, err
    return _pixels(out)


@torch.no_grad()
def _official_true_cfg(pipe, prompt, negative_prompt, image, mask, height, width, steps, guidance, true_cfg, generator):
    """The official FluxFillCFGPipeline.__call__ (bytedance/OneReward), reduced to the path the demo uses:
    strength 1, one image, max_sequence_length 512, both passes in one [negative, positive] batch."""
    from diffusers.pipelines.flux.pipeline_flux_fill import calculate_shift, retrieve_timesteps

    device = pipe._execution_device
    init = pipe.image_processor.preprocess(image, height=height, width=width).to(dtype=torch.float32)
    pos, pos_pooled, text_ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=device, max_sequence_length=512)
    neg, neg_pooled, _ = pipe.encode_prompt(prompt=negative_prompt, prompt_2=None, device=device, max_sequence_length=512)
    sigmas = np.linspace(1.0, 1 / steps, steps)
    sc = pipe.scheduler.config
    mu = calculate_shift((height // 16) * (width // 16), sc.get("base_image_seq_len", 256),
                         sc.get("max_image_seq_len", 4096), sc.get("base_shift", 0.5), sc.get("max_shift", 1.15))
    timesteps, n = retrieve_timesteps(pipe.scheduler, steps, device, sigmas=sigmas, mu=mu)
    timesteps, n = pipe.get_timesteps(n, 1.0, device)
    ch = pipe.vae.config.latent_channels
    latents, image_ids = pipe.prepare_latents(init, timesteps[:1].repeat(1), 1, ch, height, width, pos.dtype,
                                              device, generator, None)
    mask_t = pipe.mask_processor.preprocess(mask, height=height, width=width)
    masked = (init * (1 - mask_t)).to(device=device, dtype=pos.dtype)
    m, masked_latents = pipe.prepare_mask_latents(mask_t, masked, 1, ch, 1, height, width, pos.dtype, device, generator)
    masked_latents = torch.cat((masked_latents, m), dim=-1)
    g = torch.full([1], guidance, device=device, dtype=torch.float32).expand(latents.shape[0])
    for t in timesteps:
        both = torch.cat([latents, latents])
        v = pipe.transformer(hidden_states=torch.cat((both, torch.cat([masked_latents, masked_latents])), dim=2),
                             timestep=t.expand(2).to(latents.dtype) / 1000, guidance=g.repeat(2),
                             pooled_projections=torch.cat([neg_pooled, pos_pooled]),
                             encoder_hidden_states=torch.cat([neg, pos]), txt_ids=text_ids, img_ids=image_ids,
                             return_dict=False)[0]
        v_neg, v_pos = v.chunk(2)
        latents = pipe.scheduler.step(v_neg + true_cfg * (v_pos - v_neg), t, latents, return_dict=False)[0]
    lat = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    lat = lat / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    return pipe.image_processor.postprocess(pipe.vae.decode(lat, return_dict=False)[0], output_type="pil")[0]


def test_fill_command_gives_the_stock_image_at_true_cfg_1(capsys, square_files, model_dir, tmp_path):
    image, mask = Image.open(square_files / "image.png"), Image.open(square_files / "mask.png")
    stock = _pixels(_stock_pipe(model_dir)(
        prompt=PROMPT, image=image, mask_image=mask, height=SH, width=SW, num_inference_steps=STEPS,
        guidance_scale=1.0, generator=torch.Generator("cpu").manual_seed(0)).images[0])
    ours = _fill_cmd(capsys, square_files, model_dir, tmp_path / "cfg1.png", "--true-cfg", 1)
    assert np.array_equal(ours, stock), f"max {np.abs(ours - stock).max()}/255"
    # The cause of the old discrepancy: prompts encoded to the tiny tokenizer's T5 length
    # instead of the pipeline's 512 (FLUX attends to the padding tokens too).
    short = _fill_cmd(capsys, square_files, model_dir, tmp_path / "short.png", "--true-cfg", 1,
                      "--max-sequence-length", T5_MAX_LENGTH)
    assert np.abs(short - stock).max() > 1


def test_fill_command_gives_the_official_true_cfg_image(capsys, square_files, model_dir, tmp_path):
    image, mask = Image.open(square_files / "image.png"), Image.open(square_files / "mask.png")
    official = _pixels(_official_true_cfg(_stock_pipe(model_dir), PROMPT, "nsfw", image, mask, SH, SW, STEPS, 1.0, 4.0,
                                          torch.Generator("cpu").manual_seed(0)))
    ours = _fill_cmd(capsys, square_files, model_dir, tmp_path / "cfg4.png")  # defaults: true CFG 4, "nsfw"
    assert np.array_equal(ours, official), f"max {np.abs(ours - official).max()}/255"
    plain = _fill_cmd(capsys, square_files, model_dir, tmp_path / "plain.png", "--true-cfg", 1)
    assert np.abs(plain - official).max() > 1  # the negative pass is really on


def test_noise_comes_from_a_cpu_generator_on_any_device(model_dir, monkeypatch):
    """As the official demo (torch.Generator("cpu")): the same seed gives the same noise on a GPU."""
    policy = FillPolicy(_stock_pipe(model_dir))
    seen = []

    class Drawn(Exception):
        pass

    def capture(self, images, masks, prompts, generator=None, noise=None):
        seen.append(generator)
        raise Drawn

    monkeypatch.setattr(FillPolicy, "device", property(lambda self: torch.device("meta")))  # not the CPU
    monkeypatch.setattr(FillPolicy, "prepare", capture)
    images, masks = torch.rand(2, 3, 16, 16), torch.ones(2, 1, 16, 16)
    for seeds in (None, [4, 5]):
        with pytest.raises(Drawn):
            generate(policy, images, masks, ["a", "b"], cfg=InferenceConfig(seed=3), seeds=seeds)
    single, per_image = seen
    assert single.device.type == "cpu" and single.initial_seed() == 3
    assert [g.device.type for g in per_image] == ["cpu", "cpu"] and [g.initial_seed() for g in per_image] == [4, 5]


def test_a_pipeline_that_already_ran_still_starts_from_noise(square_files, model_dir):
    """A stock call leaves the pipeline's scheduler at its last step; the adapter must not mix
    the initial latents with that step's sigma (0: the image itself instead of noise)."""
    image = torch.from_numpy(np.asarray(Image.open(square_files / "image.png")).copy()).permute(2, 0, 1)[None] / 255.0
    mask = (torch.from_numpy(np.asarray(Image.open(square_files / "mask.png")).copy()) > 127)[None, None].float()
    cfg = InferenceConfig(true_cfg=1.0, num_inference_steps=2, seed=0)
    fresh = generate(FillPolicy(_stock_pipe(model_dir)), image, mask, [PROMPT], cfg=cfg, decode=False)
    used = _stock_pipe(model_dir)
    used(prompt=PROMPT, image=image, mask_image=mask, height=SH, width=SW, num_inference_steps=2,
         generator=torch.Generator().manual_seed(0), output_type="latent")
    again = generate(FillPolicy(used), image, mask, [PROMPT], cfg=cfg, decode=False)
    torch.testing.assert_close(again, fresh, rtol=0, atol=0)
