"""Hand-made defect candidates: each spoils only the region, the rater sees it, synthesize mixes them in."""

import numpy as np
import pytest
import torch

from onereward.data.defects import DEFECTS, spoil
from onereward.data.synthetic import (
    DefectCandidates, SynthesizeConfig, _batches, generate_candidates, make_input, task_plan,
)
from onereward.scoring import build_scorer

HURTS = {"flat": "aesthetics", "hazy": "consistency", "blur": "aesthetics", "color_cast": "consistency"}
"""The rater dimension each defect must cost (at least)."""

CFG = SynthesizeConfig(num_inputs=24, batch_size=8, defects=DefectCandidates(share=1.0))


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float()[None] / 255.0


@pytest.mark.parametrize("kind", sorted(DEFECTS))
def test_each_defect_changes_only_the_region_and_costs_its_dimension(kind):
    rater = build_scorer("rater")
    for i, task in [(0, "fill"), (1, "fill"), (2, "extend"), (3, "extend")]:
        x = make_input(i, task, CFG)
        perfect = (x.ground_truth * 255 + 0.5).astype(np.uint8)
        region = x.mask > 0.5
        spoiled = spoil(kind, perfect, region, np.random.default_rng(i))
        assert (spoiled[~region] == perfect[~region]).all()
        assert np.abs(spoiled[region].astype(float) - perfect[region]).mean() > 2
        fields = dict(ground_truth=_t(perfect), mask=torch.from_numpy(region[None, None].astype(np.float32)),
                      source=_t((x.source * 255 + 0.5).astype(np.uint8)), task=[task], content=[None])
        good = rater(_t(perfect), **fields).scores[HURTS[kind]]
        bad = rater(_t(spoiled), **fields).scores[HURTS[kind]]
        assert bad < good - 0.05, (kind, task, float(good), float(bad))


def test_unknown_defects_and_shares_are_refused():
    with pytest.raises(ValueError, match="synthesize.defects"):
        SynthesizeConfig(defects=DefectCandidates(kinds=("smudge",)))
    with pytest.raises(ValueError, match="synthesize.defects"):
        SynthesizeConfig(defects=DefectCandidates(share=1.5))


def test_share_zero_leaves_every_candidate_to_the_generator():
    plain = SynthesizeConfig(num_inputs=24)
    for i, task in enumerate(task_plan(plain)):
        a, b = make_input(i, task, plain), make_input(i, task, CFG)
        assert a.defect is None and a.settings == b.settings and a.tags == b.tags


def test_defect_candidates_spoil_another_candidate_and_are_not_sampled(tiny_generator):
    inputs = [make_input(i, task, CFG) for i, task in enumerate(task_plan(CFG))]
    assert all(x.defect is not None for x in inputs)
    assert {x.defect[0] for x in inputs} == set(DEFECTS)
    sampled = [c for batch in _batches(inputs, CFG.batch_size) for _, c in batch]
    assert len(sampled) == len(inputs) * (CFG.num_candidates - 1)
    cands = generate_candidates(inputs, CFG, tiny_generator, paste_known=True)
    for i, x in enumerate(inputs):
        kind, of = x.defect
        expected = spoil(kind, cands[i, of], x.mask > 0.5, np.random.default_rng([CFG.seed, i, 2]))
        assert (cands[i, -1] == expected).all()


def test_a_synthesized_set_with_defects_passes_the_record_checks(tmp_path, tiny_generator):
    from onereward.data.records import parse_line, record_lines, validate
    from onereward.data.synthetic import synthesize

    cfg = SynthesizeConfig(num_inputs=4, batch_size=8, defects=DefectCandidates(share=1.0))
    assert synthesize(tmp_path, cfg, tiny_generator) == 4
    seen: set[str] = set()
    for line, text in record_lines(tmp_path / "records.jsonl"):
        record = validate(parse_line(text, line), line, tmp_path, seen)
        assert len(record.candidates) == cfg.num_candidates
