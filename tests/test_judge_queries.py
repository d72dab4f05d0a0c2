"""Judge query templates: full coverage of the registry, the prompt only where it belongs."""

import copy

import pytest
import yaml

from onereward.judge.queries import TEMPLATES_FILE, load_templates, parse_templates, render_query
from onereward.tasks import DIMENSIONS, TASKS


def raw_templates():
    return yaml.safe_load(TEMPLATES_FILE.read_text())


def test_file_is_versioned_and_covers_every_task_dimension():
    t = load_templates()
    assert t.version is not None
    assert set(t.templates) == set(TASKS)
    for name, task in TASKS.items():
        assert set(t.templates[name]) == set(task.dimensions)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_prompt_only_in_text_alignment(task):
    prompt = "a red bicycle leaning on a {wall}"
    for dim in TASKS[task].dimensions:
        if DIMENSIONS[dim].uses_prompt:
            q = render_query(task, dim, prompt)
            assert prompt in q and "{prompt}" not in q
        else:
            q = render_query(task, dim, prompt)
            assert "bicycle" not in q
            assert q == render_query(task, dim, None)


def test_queries_differ_between_tasks_and_dimensions():
    rendered = {(t, d): render_query(t, d, "x") for t, task in TASKS.items() for d in task.dimensions}
    assert len(set(rendered.values())) == len(rendered)


@pytest.mark.parametrize(
    "args, error",
    [
        (("inpaint", "consistency", None), KeyError),
        (("fill", "sharpness", None), KeyError),
        (("removal", "consistency", None), KeyError),
        (("fill", "text_alignment", None), ValueError),
        (("extend", "text_alignment", "   "), ValueError),
        (("removal", "removal_quality", None), None),
    ],
)
def test_errors(args, error):
    if error is None:
        assert render_query(*args)
    else:
        with pytest.raises(error):
            render_query(*args)


def test_validation_rejects_bad_files():
    good = raw_templates()
    parse_templates(good)
    missing = copy.deepcopy(good)
    del missing["templates"]["fill"]["structure"]
    with pytest.raises(ValueError, match="fill/structure: missing"):
        parse_templates(missing)
    leaked = copy.deepcopy(good)
    leaked["templates"]["fill"]["aesthetics"] += " {prompt}"
    with pytest.raises(ValueError, match="must not contain"):
        parse_templates(leaked)
    no_prompt = copy.deepcopy(good)
    no_prompt["templates"]["extend"]["text_alignment"] = "no placeholder"
    with pytest.raises(ValueError, match="must contain"):
        parse_templates(no_prompt)
    extra = copy.deepcopy(good)
    extra["templates"]["removal"]["aesthetics"] = "x"
    with pytest.raises(ValueError, match="not in the registry"):
        parse_templates(extra)
    unversioned = copy.deepcopy(good)
    del unversioned["version"]
    with pytest.raises(ValueError, match="version"):
        parse_templates(unversioned)


def test_custom_template_file(tmp_path):
    data = raw_templates()
    data["version"] = 99
    data["templates"]["removal"]["removal_quality"] = "Is the first one cleaner? Answer Yes or No."
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    assert render_query("removal", "removal_quality", templates=path) == "Is the first one cleaner? Answer Yes or No."
    assert load_templates(path).version == 99
