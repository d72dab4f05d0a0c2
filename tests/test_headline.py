"""reports/headline.json: a few named numbers per stage, so `dvc metrics show` fits a terminal."""

from onereward.headline import headline


def test_headline_picks_named_numbers_from_each_report() -> None:
    setting = {"n": 4, "gsb": {"good": 100.0, "bad": 0.0}, "tuned": {"usability": 0.0}}
    rated = {"n": 12, "gsb": {"good": 0.0, "bad": 100.0}, "tuned": {"usability": 100.0},
             "rater": {"gsb": {"good": 50.0, "bad": 25.0}, "usability": {"base": 0.0, "tuned": 25.0}}}
    numbers = headline({
        "data": {"records_in": 28, "quarantined": 4, "pairs": {"train": {"fill": {"structure": 3}}}},
        "judge": {"mean_accuracy": 77.9, "order_consistency": 94.9, "cells": {"fill": {}}},
        "rl": {"val_reward_end": 0.65, "val_reward_start": 0.46},
        "eval": {"fill": setting, "removal": rated},
    })
    assert numbers == {
        "records": 28, "quarantined": 4, "judge_acc": 77.9, "order_cons": 94.9, "val_reward": 0.65,
        "gsb_good": 62.5,  # (4 * 100 + 12 * 50) / 16: inputs-weighted, the rater's where there is one
        "gsb_bad": 18.75, "usable": 18.75,
    }
    assert headline({}) == {}  # reports that do not exist yet add nothing
