"""The evaluation: generate with base and tuned (same seeds), judge them, write the reports."""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from onereward.config import Profile
from onereward.eval.benchmark import Item, sample_seed, select, to_tensor
from onereward.eval.rated import aggregate_rated, rate
from onereward.eval.config import EvaluateConfig
from onereward.eval.report import gsb_bars, gsb_csv, image_grid, paper_tables
from onereward.eval.scoring import InputScores, aggregate, score_input
from onereward.io import atomic_path, dumps_json, write_json
from onereward.policy.known import GenerationConfig, finish
from onereward.tasks import EVAL_SETTINGS, generation_prompt


@dataclass(frozen=True)
class EvalPaths:
    """What the stage reads and writes (mirrored in dvc.yaml)."""

    shards: Path = Path("data/shards")
    """Shard root (the benchmark comes from its test split)."""
    tuned: Path = Path("data/export")
    """The export stage's folder: what is evaluated is what ships."""
    judge: Path = Path("data/models/judge")
    """The trained judge (Judge.load)."""
    table1: Path = Path("reports/judge_accuracy.json")
    """eval_judge's summary; when present its Table 1 joins paper_tables.md."""
    metrics: Path = Path("reports/eval_metrics.json")
    tables: Path = Path("reports/paper_tables.md")
    gsb: Path = Path("reports/eval_gsb.csv")
    scores: Path = Path("reports/eval_scores.json")
    images: Path = Path("reports/eval")
    """Grids per setting and the GSB bars (PNG)."""


def generate_outputs(policy, items: list[Item], cfg: EvaluateConfig, desc: str,
                     generation: GenerationConfig = GenerationConfig()) -> dict[str, Image.Image]:
    """One output per input at the input's size, through the same path as ``onereward fill``,
    finished by the ``generation`` rule as the training data and RL rollouts are."""
    from onereward.fill import fill, prepare_inputs
    from onereward.policy.inference import InferenceConfig

    out = {}
    for it in tqdm(items, desc=desc, unit="input"):
        icfg = InferenceConfig(negative_prompt=cfg.negative_prompt, true_cfg=cfg.true_cfg,
                               guidance_scale=cfg.guidance_scale, num_inference_steps=cfg.num_inference_steps,
                               seed=sample_seed(cfg.seed, it.key))
        inputs = prepare_inputs(it.source, it.mask, binarize=True)
        image = to_tensor(fill(policy, inputs, generation_prompt(it.task, it.prompt), icfg))[None]
        image = finish(image, it.image_tensor(), it.mask_tensor(), generation)[0]
        out[it.key] = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
    return out


def generate_and_judge(items: list[Item], cfg: EvaluateConfig, profile: Profile, paths: EvalPaths,
                       generation: GenerationConfig) -> tuple[dict[str, dict[str, Image.Image]], list[InputScores]]:
    """(outputs[model][key], judge scores) of ``items``. Every input is generated and judged on its
    own (its noise seed comes from its key), so any split of the items gives the same bits.
    Models are loaded one at a time (memory)."""
    import torch

    from onereward.fill import load_policy
    from onereward.judge.model import Judge
    from onereward.policy.adapter import DTYPES

    outputs = {}
    for model, path in (("base", profile.policy_model), ("tuned", str(paths.tuned))):
        policy = load_policy(path, device=profile.device, dtype=profile.dtype)
        outputs[model] = generate_outputs(policy, items, cfg, f"evaluate: {model}", generation)
        del policy
        gc.collect()
    judge = Judge.load(str(paths.judge), device=profile.device, dtype=DTYPES[profile.dtype],
                       attn_implementation=profile.attn_implementation)
    scores = []
    with torch.no_grad():
        for it in tqdm(items, desc="evaluate: judge", unit="input"):
            outs = {m: outputs[m][it.key] for m in outputs}
            scores.append(score_input(judge, it.key, it.task, it.prompt, it.settings, outs, it.candidates,
                                      cfg.judge_batch_size))
    return outputs, scores


def _worker_job(job) -> tuple[dict[str, dict[str, Image.Image]], list[InputScores]]:
    return generate_and_judge(*job)


def generate_and_judge_in_workers(items: list[Item], cfg: EvaluateConfig, profile: Profile, paths: EvalPaths,
                                  generation: GenerationConfig):
    """``generate_and_judge`` with the items dealt over ``cfg.workers`` fresh processes; the
    results are put back in the items' order, the same bits as one process's."""
    from onereward.numerics import worker_pool

    parts = [items[k :: cfg.workers] for k in range(cfg.workers)]
    with worker_pool(cfg.workers) as pool:
        results = pool.map(_worker_job, [(part, cfg, profile, paths, generation) for part in parts])
    outputs = {m: {} for m in results[0][0]}
    scores = {}
    for part_outputs, part_scores in results:
        for m in outputs:
            outputs[m].update(part_outputs[m])
        scores.update((s.key, s) for s in part_scores)
    order = [it.key for it in items]
    return {m: {k: outputs[m][k] for k in order} for m in outputs}, [scores[k] for k in order]


def run(cfg: EvaluateConfig, profile: Profile, paths: EvalPaths = EvalPaths(),
        generation: GenerationConfig = GenerationConfig()):
    """(items, outputs[model][key], scores, metrics)."""
    items, _ = select(str(paths.shards), cfg.split, cfg.per_setting)
    if not items:
        raise ValueError(f"no inputs of any evaluation setting in split {cfg.split!r} under {paths.shards}")
    parallel = cfg.workers > 1 and profile.device == "cpu"
    outputs, scores = (generate_and_judge_in_workers if parallel else generate_and_judge)(items, cfg, profile, paths, generation)
    metrics = aggregate(scores, cfg.gsb_margin, cfg.usable_share)
    rated = aggregate_rated(rate(items, outputs), scores, cfg.rater_margin, cfg.usable_share)
    for name, entry in rated.items():
        if entry.get("n"):
            metrics[name]["rater"] = entry
    from onereward.data.reader import SKIPPED

    for entry in metrics.values():  # inputs the reader could not decode; one count for the split, in every setting
        entry["skipped_samples"] = len(SKIPPED)
    return items, outputs, scores, metrics


def _scores_json(scores: list[InputScores], margin: float) -> list[dict]:
    return [{"key": s.key, "task": s.task, "settings": s.settings, "outcome": s.outcome(margin),
             "preference": {d: round(v, 4) for d, v in s.preference.items()},
             "beaten": {m: {d: round(v, 4) for d, v in b.items()} for m, b in s.beaten.items()}} for s in scores]


def write_reports(cfg: EvaluateConfig, profile: Profile, paths: EvalPaths, items, outputs, scores, metrics) -> None:
    run_info = {**cfg.to_dict(), "profile": profile.name, "base": profile.policy_model,
                "tuned": str(paths.tuned), "judge": str(paths.judge)}
    table1 = None
    if paths.table1.is_file():
        from onereward.judge.metrics import table1_markdown

        summary = json.loads(paths.table1.read_text())
        table1 = table1_markdown(summary, "Table 1: judge accuracy on the test split (%), ours (paper)")
    by_key = {it.key: it for it in items}
    with atomic_path(paths.images) as tmp:
        tmp.mkdir()
        for name in EVAL_SETTINGS:
            keys = [it.key for it in items if name in it.settings][: cfg.grid_rows]
            if keys:
                truth = lambda k: [by_key[k].ground_truth] if by_key[k].ground_truth is not None else []  # noqa: E731
                rows = [(k, [by_key[k].source, by_key[k].mask, *truth(k), outputs["base"][k], outputs["tuned"][k]])
                        for k in keys]
                headers = ("input", "mask", "ground truth", "base", "tuned") if truth(keys[0]) else ("input", "mask", "base", "tuned")
                image_grid(rows, cfg.grid_scale, headers).save(tmp / f"grid_{name}.png")
        gsb_bars(metrics).save(tmp / "gsb.png")
    with atomic_path(paths.gsb) as tmp:
        tmp.write_text(gsb_csv(metrics))
    with atomic_path(paths.scores) as tmp:
        tmp.write_text(dumps_json(_scores_json(scores, cfg.gsb_margin)))
    with atomic_path(paths.tables) as tmp:
        tmp.write_text(paper_tables(metrics, run_info, table1))
    write_json(paths.metrics, metrics)  # last: DVC metrics appear only with everything else
