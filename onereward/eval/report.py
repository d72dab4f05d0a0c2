"""Reports of the evaluation: paper_tables.md, the GSB plot data and bars, and image grids.

Everything is a pure function of the scores and images, written with stable bytes (sorted JSON
keys, fixed row order, PNG without timestamps).
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from onereward.eval.scoring import MODELS, OUTCOMES
from onereward.markdown import dimension_table_header
from onereward.tasks import DIMENSIONS, EVAL_SETTINGS, TASKS

# OneReward (arXiv 2508.21066). Figure 7: Good/Same/Bad (%) of the RL model against its base,
# human-rated, in the order the paper lists its four settings.
PAPER_GSB = {
    "fill": (68.0, 23.6, 8.4),
    "extend_prompt": (54.2, 38.4, 7.4),
    "extend_no_prompt": (66.1, 27.9, 6.1),
    "removal": (32.3, 48.3, 19.3),
}
# Table 2: usability (%) of Seedream 3.0 Fill and of the best competitor per setting.
PAPER_USABILITY = {
    "fill": (69.04, 52.11),
    "extend_prompt": (64.72, 63.13),
    "extend_no_prompt": (87.54, 73.71),
    "removal": (82.22, 73.98),
}
COLUMNS = tuple(DIMENSIONS)
GSB_COLORS = {"good": (46, 160, 67), "same": (170, 170, 170), "bad": (214, 39, 40)}


def _f(x, nd: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def headline_gsb(m: dict) -> tuple[dict, str]:
    """The GSB a plot shows for one setting: the rater's where it ran, else the judge's; and which."""
    return (m["rater"]["gsb"], "rater") if m.get("rater") else (m.get("gsb", {}), "judge")


def gsb_csv(metrics: dict) -> str:
    """Long form for DVC's bar_horizontal template: one bar per (setting, outcome), and its scorer."""
    lines = ["bar,percent,scorer"]
    for name, s in EVAL_SETTINGS.items():
        gsb, scorer = headline_gsb(metrics[name])
        for o in OUTCOMES:
            if gsb.get(o) is not None:
                lines.append(f"{s.title}: {o},{gsb[o]:.2f},{scorer}")
    return "\n".join(lines) + "\n"


def _font(size: int = 11):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def gsb_bars(metrics: dict, width: int = 560) -> Image.Image:
    """Stacked Good/Same/Bad bars per setting (ours), like the paper's Figure 7."""
    names = [n for n in EVAL_SETTINGS if metrics[n].get("n")]
    label_w, bar_h, pad = 200, 22, 8
    img = Image.new("RGB", (width, pad * 3 + 16 + len(names) * (bar_h + pad)), "white")
    draw, font = ImageDraw.Draw(img), _font()
    scorer = headline_gsb(metrics[names[0]])[1] if names else "judge"
    draw.text((pad, pad), f"{scorer.capitalize()}-scored GSB, tuned vs base (%):", fill="black", font=font)
    x = 230
    for o in OUTCOMES:  # legend
        draw.rectangle([x, pad + 2, x + 10, pad + 12], fill=GSB_COLORS[o])
        draw.text((x + 14, pad), o, fill="black", font=font)
        x += 60
    span = width - label_w - 2 * pad
    y = pad * 2 + 16
    for n in names:
        draw.text((pad, y + 5), f"{EVAL_SETTINGS[n].title} (n={metrics[n]['n']})", fill="black", font=font)
        x = label_w
        gsb = headline_gsb(metrics[n])[0]
        for o in OUTCOMES:
            w = round(span * gsb[o] / 100.0)
            if w:
                draw.rectangle([x, y, x + w - 1, y + bar_h - 1], fill=GSB_COLORS[o])
                if w > 30:
                    draw.text((x + 3, y + 5), f"{gsb[o]:.0f}", fill="white", font=font)
            x += w
        y += bar_h + pad
    return img


def image_grid(rows: list[tuple[str, list[Image.Image]]], scale: int,
               headers: tuple[str, ...] = ("input", "mask", "base", "tuned")) -> Image.Image:
    """One row per input: key, then input, mask, base output, tuned output (nearest upscaling)."""
    cw = max(im.width for _, ims in rows for im in ims) * scale
    ch = max(im.height for _, ims in rows for im in ims) * scale
    label_w, head_h, pad = 110, 18, 4
    grid = Image.new("RGB", (label_w + len(headers) * (cw + pad), head_h + len(rows) * (ch + pad)), "white")
    draw, font = ImageDraw.Draw(grid), _font()
    for j, h in enumerate(headers):
        draw.text((label_w + j * (cw + pad) + 2, 3), h, fill="black", font=font)
    for i, (key, ims) in enumerate(rows):
        y = head_h + i * (ch + pad)
        draw.text((2, y + 2), key, fill="black", font=font)
        for j, im in enumerate(ims):
            big = im.convert("RGB").resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
            grid.paste(big, (label_w + j * (cw + pad), y))
    return grid


def _gsb_cell(values) -> str:
    return " / ".join(f"{v:.1f}" for v in values) if values else "-"


def _ci(v, nd: int = 1) -> str:
    """``[mean, low, high]`` as "m [lo, hi]"."""
    if not v or v[0] is None:
        return "n/a"
    if v[1] is None:
        return f"{v[0]:.{nd}f}"
    return f"{v[0]:.{nd}f} [{v[1]:.{nd}f}, {v[2]:.{nd}f}]"


TINY_LIMITS = (
    "What the tiny profile cannot show: at 64 px the tiny generator cannot render legible words, so the "
    "text-rendering row's text alignment measures whether a light patch with dark strokes appears where the "
    "word belongs, not whether the word reads right; the rater stands in for 40 human raters with measures "
    "computed from ground truth (docs/scoring.md), which see colour, edges and sharpness, not taste."
)


def verdict(rated: dict) -> str:
    """One sentence from the intervals: where the tuned model is better or worse than its base by the
    rater beyond the 95% interval, and where the interval cannot tell."""
    groups: dict[str, list[str]] = {"better": [], "worse": [], "undecided": []}
    for name, s in EVAL_SETTINGS.items():
        if name in rated:
            _, low, high = rated[name]["good_minus_bad"]
            known = low is not None and high is not None  # too few inputs for an interval: undecided
            groups["better" if known and low > 0 else "worse" if known and high < 0 else "undecided"].append(s.title)
    parts = [f"{k} in {', '.join(v)}" for k, v in groups.items() if v]
    return ("**By the rater, beyond the 95% interval of good - bad, the tuned model is " + "; ".join(parts)
            + "** (\"undecided\": the interval contains 0). The paper's human raters put Good above Bad in every setting (Figure 7).")


def rated_tables(metrics: dict, run: dict) -> list[str]:
    """The rater-scored Figure 7 and Table 2, the checks on the rater and the judge-rater agreement."""
    rated = {n: metrics[n]["rater"] for n in EVAL_SETTINGS if metrics[n].get("rater")}
    if not rated:
        return ["No input of this benchmark has a ground truth: the rater did not run, and only the "
                "judge's scores (the training objective) are reported below.", ""]
    margin, share = run["rater_margin"], run["usable_share"]
    out = [
        "## Figure 7 analogue, rater-scored: Good / Same / Bad of the tuned model against its base (%)",
        "",
        "| setting | n | rater: good / same / bad | 95% interval good; bad | good - bad [95% interval] "
        "| paper (human): good / same / bad | judge (training objective): good / same / bad |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in EVAL_SETTINGS.items():
        r = rated.get(name)
        if not r:
            continue
        g, ci = r["gsb"], r["gsb_ci"]
        judge = _gsb_cell([metrics[name]["gsb"][o] for o in OUTCOMES])
        out.append(f"| {s.title} | {r['n']} | {_gsb_cell([g[o] for o in OUTCOMES])} | "
                   f"{ci['good'][0]:.1f}-{ci['good'][1]:.1f}; {ci['bad'][0]:.1f}-{ci['bad'][1]:.1f} | "
                   f"{_ci(r['good_minus_bad'])} | {_gsb_cell(PAPER_GSB.get(name))} | {judge} |")
    out += ["", verdict(rated)]
    out += [
        "",
        f"How: the rater scores each output against the input's ground truth on every dimension of its task "
        f"(`onereward.scoring.rater`, docs/scoring.md; it never enters training). **Good** if the tuned output's "
        f"mean rater score beats the base's by more than {margin}, **Bad** if it falls short by more, **Same** "
        f"otherwise (`evaluate.rater_margin`). Intervals: Wilson 95% for each share; normal 95% for the mean of "
        f"+1 (good) / 0 / -1 (bad), in points.",
        "",
        "## Table 2 analogue, rater-scored: mean rater score per dimension (0-1) [95% interval], and usability (%)",
        "",
        *dimension_table_header(["setting", "model", "usability [95% interval]"], COLUMNS),
    ]
    for name, s in EVAL_SETTINGS.items():
        r = rated.get(name)
        if not r:
            continue
        for model in MODELS:
            u, uci = r["usability"][model], r["usability_ci"][model]
            out.append(f"| {s.title} | {model} | {u:.1f} [{uci[0]:.1f}, {uci[1]:.1f}] | "
                       + " | ".join(_ci(r["score"][c][model], 3) if c in r["score"] else "-" for c in COLUMNS) + " |")
        out.append(f"| {s.title} | tuned - base | | "
                   + " | ".join(_ci(r["score"][c]["diff"], 3) if c in r["score"] else "-" for c in COLUMNS) + " |")
    out += [
        "",
        f"**Usable**: rated at least as well as {share:.0%} of the input's annotated candidates on every "
        f"dimension of its task (`evaluate.usable_share`). A tuned - base interval that lies below 0 means the "
        f"tuned model got worse on that dimension.",
        "",
        "## Checks on the rater: masked PSNR and SSIM of the region against the ground truth",
        "",
        "Measures neither the annotator nor the rater uses (`onereward.scoring.checks`).",
        "",
        "| setting | PSNR base (dB) | PSNR tuned | tuned - base [95% interval] | SSIM base | SSIM tuned | tuned - base [95% interval] |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in EVAL_SETTINGS.items():
        r = rated.get(name)
        if not r:
            continue
        p, q = r["checks"]["masked_psnr"], r["checks"]["masked_ssim"]
        out.append(f"| {s.title} | {_ci(p['base'], 2)} | {_ci(p['tuned'], 2)} | {_ci(p['diff'], 2)} | "
                   f"{_ci(q['base'], 3)} | {_ci(q['tuned'], 3)} | {_ci(q['diff'], 3)} |")
    out += [
        "",
        "## How often the judge agrees with the rater on (tuned, base)",
        "",
        "| setting | (input, dimension) pairs | judge agrees with the rater (%) [95% interval] |",
        "|---|---|---|",
    ]
    for name, s in EVAL_SETTINGS.items():
        r = rated.get(name)
        if not r:
            continue
        a = r["agreement"]
        cell = f"{a['agree']:.1f} [{a['agree_ci'][0]:.1f}, {a['agree_ci'][1]:.1f}]" if a["pairs"] else "no pairs"
        out.append(f"| {s.title} | {a['pairs']} | {cell} |")
    out += [
        "",
        f"Counted: pairs where the rater's scores of tuned and base differ by more than {margin}; the judge agrees "
        f"when its order-symmetric preference for tuned is above 0.5 exactly when the rater prefers tuned.",
        "",
    ]
    return out


def paper_tables(metrics: dict, run: dict, table1: str | None = None) -> str:
    """reports/paper_tables.md: the paper's numbers beside ours, with the definitions."""
    margin, share = run["gsb_margin"], run["usable_share"]
    out = [
        "# OneReward paper tables beside this run",
        "",
        "**Our quality numbers are rated by a ground-truth rater that the training never saw, not by humans; "
        "the judge's scores, which RL optimises, are printed beside them as the training objective.** The "
        "paper's numbers are ratings by 40 human raters on ByteDance's internal benchmark (130 fill, 200 extend, "
        "100 removal inputs) of FLUX.1-Fill / Seedream 3.0 models. Ours come from this run's held-out test split. "
        "The levels are not comparable; the tables show the same measurements made the same way, and the "
        "direction of the effect.",
        "",
        TINY_LIMITS if run["profile"] == "tiny" else "",
        "",
        f"Run: profile `{run['profile']}`; base `{run['base']}`; tuned `{run['tuned']}`; judge `{run['judge']}`; "
        f"split `{run['split']}`; {run['num_inference_steps']} steps, true CFG {run['true_cfg']} with negative "
        f"prompt \"{run['negative_prompt']}\", guidance {run['guidance_scale']}; base and tuned use the same "
        f"noise seed per input (derived from seed {run['seed']} and the input key).",
        "",
        *rated_tables(metrics, run),
        "## Judge-scored (the training objective, not a measure of quality): Good / Same / Bad of tuned against base (%)",
        "",
        "| setting | n | ours: good / same / bad | paper: good / same / bad | ours: mean preference for tuned |",
        "|---|---|---|---|---|",
    ]
    for name, s in EVAL_SETTINGS.items():
        m = metrics[name]
        ours = _gsb_cell([m["gsb"][o] for o in OUTCOMES]) if m.get("n") else "no inputs"
        out.append(f"| {s.title} | {m['n']} | {ours} | {_gsb_cell(PAPER_GSB.get(name))} | "
                   f"{_f(m.get('mean_preference'), 3)} |")
    out += [
        "",
        f"How ours are made: for each input and each dimension d its task is judged on, the judge's "
        f"order-symmetric preference s_d = 1/2 [P(Yes | tuned, base, q_d) + P(No | base, tuned, q_d)]; "
        f"s = mean of s_d. **Good** if s > 0.5 + {margin}, **Bad** if s < 0.5 - {margin}, **Same** otherwise "
        f"(margin: `evaluate.gsb_margin`). Paper: human Good/Same/Bad of the RL model against its base "
        f"(Figure 7), listed in the order the paper gives its four settings; it reports no separate "
        f"text-rendering GSB.",
        "",
        "Per-dimension mean preference for tuned over base (0.5: none):",
        "",
        *dimension_table_header(["setting"], COLUMNS),
    ]
    for name, s in EVAL_SETTINGS.items():
        pref = metrics[name].get("preference", {})
        out.append(f"| {s.title} | " + " | ".join(_f(pref.get(c), 3) if c in pref else "-" for c in COLUMNS) + " |")
    out += [
        "",
        "## Judge-scored (the training objective): per model and setting, judge win rate per dimension and usability (%)",
        "",
        *dimension_table_header(["setting", "model", "usability"], COLUMNS),
    ]
    for name, s in EVAL_SETTINGS.items():
        m = metrics[name]
        for model in MODELS:
            if not m.get("n"):
                out.append(f"| {s.title} | {model} | no inputs |" + " |" * len(COLUMNS))
                continue
            wr = m[model]["win_rate"]
            out.append(f"| {s.title} | {model} | {_f(m[model]['usability'])} | "
                       + " | ".join(_f(wr.get(c)) if c in wr else "-" for c in COLUMNS) + " |")
        if name in PAPER_USABILITY:
            ours_best, competitor = PAPER_USABILITY[name]
            blank = " | ".join("1-5 (human)" if c in TASKS[s.task].dimensions else "-" for c in COLUMNS)
            out.append(f"| {s.title} | paper: Seedream 3.0 Fill | {ours_best:.2f} | {blank} |")
            out.append(f"| {s.title} | paper: best competitor | {competitor:.2f} | {blank} |")
    out += [
        "",
        f"How ours are made: each model's output is compared with every annotated candidate of the input "
        f"(the test split's candidates) on each dimension of the task, order-symmetric as above. **Win rate**: "
        f"share of those comparisons the output wins (s > 0.5). **Usable**: the output wins against at least "
        f"{share:.0%} of the candidates on every dimension of its task (`evaluate.usable_share`); the usability "
        f"rate is the share of usable outputs. Text rendering is the text-alignment column of the "
        f"text-rendering row; removal quality the removal row. Paper: usability is the share of results human "
        f"raters marked usable; its dimension columns are 1-5 human scores, a different scale, not reproduced "
        f"here.",
        "",
    ]
    if table1:
        out += [table1.rstrip(), ""]
    out += ["## Image grids (input, mask, ground truth, base, tuned)", ""]
    for name, s in EVAL_SETTINGS.items():
        if metrics[name].get("n"):
            out.append(f"- {s.title}: ![{name}](eval/grid_{name}.png)")
    out += ["", "GSB bars: ![gsb](eval/gsb.png)", ""]
    return "\n".join(out)
