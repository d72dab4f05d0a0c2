"""Judge query templates (``templates/judge_queries.yaml``) rendered per task and dimension.

Which dimensions take the user prompt comes from :mod:`onereward.tasks`; the template file
must cover exactly the registry's task x dimension grid, and only prompt dimensions may
contain ``{prompt}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from onereward.tasks import DIMENSIONS, TASKS, get_task, has_user_prompt

TEMPLATES_FILE = Path(__file__).resolve().parents[2] / "templates" / "judge_queries.yaml"
PROMPT_FIELD = "{prompt}"


@dataclass(frozen=True)
class QueryTemplates:
    """A validated template set."""

    version: int | str
    """The file's ``version`` key, recorded next to every rendered query."""
    templates: dict[str, dict[str, str]]
    """task -> dimension -> template text."""

    def render(self, task: str, dimension: str, prompt: str | None = None) -> str:
        t = get_task(task)
        if dimension not in DIMENSIONS:
            raise KeyError(f"unknown dimension {dimension!r}; known: {sorted(DIMENSIONS)}")
        if dimension not in t.dimensions:
            raise KeyError(f"task {task!r} has no dimension {dimension!r}; it has {list(t.dimensions)}")
        text = self.templates[task][dimension]
        if not DIMENSIONS[dimension].uses_prompt:
            return text
        if not has_user_prompt(task, prompt):
            raise ValueError(f"{task}/{dimension} needs a user prompt, got {prompt!r}")
        # plain replace, not str.format: prompts may contain braces
        return text.replace(PROMPT_FIELD, " ".join(prompt.split()))


def parse_templates(data: dict, where: str = "templates") -> QueryTemplates:
    """Validate a loaded template mapping against the task registry."""
    if not isinstance(data, dict) or "version" not in data or "templates" not in data:
        raise ValueError(f"{where}: needs top-level keys 'version' and 'templates'")
    templates = data["templates"]
    problems = []
    for task in sorted(set(templates) - set(TASKS)):
        problems.append(f"unknown task {task!r}")
    for name, task in TASKS.items():
        have = templates.get(name) or {}
        for dim in sorted(set(have) - set(task.dimensions)):
            problems.append(f"{name}: dimension {dim!r} is not in the registry")
        for dim in task.dimensions:
            text = have.get(dim)
            if not isinstance(text, str) or not text.strip():
                problems.append(f"{name}/{dim}: missing template")
                continue
            uses = DIMENSIONS[dim].uses_prompt
            if uses and PROMPT_FIELD not in text:
                problems.append(f"{name}/{dim}: must contain {PROMPT_FIELD}")
            if not uses and PROMPT_FIELD in text:
                problems.append(f"{name}/{dim}: must not contain {PROMPT_FIELD} (only prompt dimensions see it)")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))
    return QueryTemplates(version=data["version"], templates={k: dict(v) for k, v in templates.items()})


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int) -> QueryTemplates:
    with open(path) as f:
        return parse_templates(yaml.safe_load(f), where=path)


def load_templates(path: str | Path = TEMPLATES_FILE) -> QueryTemplates:
    path = Path(path)
    return _load_cached(str(path), path.stat().st_mtime_ns)


def render_query(task: str, dimension: str, prompt: str | None = None, templates: str | Path = TEMPLATES_FILE) -> str:
    """The judge query for ``task`` x ``dimension``; ``prompt`` only matters for text alignment."""
    return load_templates(templates).render(task, dimension, prompt)
