"""The registry of tasks, judge dimensions and evaluation settings.

This module is the single source of truth for every stage: which tasks exist, which
dimensions the judge scores for each, which dimensions see the user prompt, the fixed
prompts, and the RL task-sampling weights (OneReward, arXiv 2508.21066, Sec. 3).
Adding a task or a dimension is one entry here plus one query template in
``templates/judge_queries.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dimension:
    """A quality dimension the judge answers Yes/No about."""

    name: str
    """Identifier used in annotation records, the manifest and the templates."""
    title: str
    """Column title in reports (the paper's wording)."""
    uses_prompt: bool = False
    """Whether the user prompt is written into the judge query for this dimension."""


@dataclass(frozen=True)
class Task:
    """A mask-guided generation task."""

    name: str
    """Identifier used in annotation records and params."""
    title: str
    """Row title in reports (the paper's wording)."""
    dimensions: tuple[str, ...]
    """Dimensions the judge scores for this task, in report order."""
    prompt: str
    """'required': every input has a user prompt; 'optional': with or without one;
    'fixed': the user prompt is ignored and ``fixed_prompt`` is used."""
    fixed_prompt: str | None
    """Generation prompt when the input has none (or always, for 'fixed')."""
    rl_weight: float
    """Probability of sampling this task in an RL iteration (paper: 0.5/0.25/0.25)."""


@dataclass(frozen=True)
class EvalSetting:
    """A slice of a task's inputs that the paper reports on its own."""

    name: str
    title: str
    task: str
    has_prompt: bool | None = None
    """Restrict to inputs with (True) or without (False) a user prompt; None: either."""
    tag: str | None = None
    """Restrict to inputs carrying this tag (e.g. text rendering inside fill)."""

    def matches(self, task: str, has_prompt: bool, tags: tuple[str, ...] | list[str]) -> bool:
        if task != self.task:
            return False
        if self.has_prompt is not None and has_prompt != self.has_prompt:
            return False
        return self.tag is None or self.tag in tags


TEXT_RENDERING = "text_rendering"
"""Tag of fill inputs whose prompt asks for rendered text."""

DIMENSIONS: dict[str, Dimension] = {
    d.name: d
    for d in (
        Dimension("text_alignment", "text alignment", uses_prompt=True),
        Dimension("consistency", "consistency"),
        Dimension("structure", "structure"),
        Dimension("aesthetics", "aesthetics"),
        Dimension("removal_quality", "removal quality"),
    )
}

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "fill",
            "image fill",
            ("text_alignment", "consistency", "structure", "aesthetics"),
            prompt="required",
            fixed_prompt=None,
            rl_weight=0.5,
        ),
        Task(
            "extend",
            "image extend",
            ("text_alignment", "consistency", "structure", "aesthetics"),
            prompt="optional",
            fixed_prompt="high-definition, perfect composition",
            rl_weight=0.25,
        ),
        Task(
            "removal",
            "object removal",
            ("removal_quality",),
            prompt="fixed",
            fixed_prompt="remove",
            rl_weight=0.25,
        ),
    )
}

EVAL_SETTINGS: dict[str, EvalSetting] = {
    s.name: s
    for s in (
        EvalSetting("fill", "image fill", "fill"),
        EvalSetting("fill_text", "image fill: text rendering", "fill", tag=TEXT_RENDERING),
        EvalSetting("extend_prompt", "image extend with prompt", "extend", has_prompt=True),
        EvalSetting("extend_no_prompt", "image extend without prompt", "extend", has_prompt=False),
        EvalSetting("removal", "object removal", "removal"),
    )
}

TAGS: frozenset[str] = frozenset({TEXT_RENDERING})
"""Tags an annotation record may carry."""


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None


def has_user_prompt(task: str, prompt: str | None) -> bool:
    """Whether an input carries a user prompt that the task honours."""
    return get_task(task).prompt != "fixed" and bool(prompt and prompt.strip())


def dimensions_for(task: str, prompt: str | None) -> tuple[str, ...]:
    """Dimensions the judge scores for one input: prompt dimensions need a user prompt."""
    with_prompt = has_user_prompt(task, prompt)
    return tuple(
        d for d in get_task(task).dimensions if with_prompt or not DIMENSIONS[d].uses_prompt
    )


def generation_prompt(task: str, prompt: str | None) -> str:
    """The prompt the generator sees: the user's, or the task's fixed one."""
    t = get_task(task)
    if has_user_prompt(task, prompt):
        return prompt.strip()
    return t.fixed_prompt or ""


def rl_task_weights() -> dict[str, float]:
    """RL sampling probabilities per task, normalised to sum to one."""
    total = sum(t.rl_weight for t in TASKS.values())
    return {name: t.rl_weight / total for name, t in TASKS.items()}


def eval_settings_of(task: str, prompt: str | None, tags) -> list[str]:
    """Names of the evaluation settings one input belongs to."""
    has_prompt = has_user_prompt(task, prompt)
    return [s.name for s in EVAL_SETTINGS.values() if s.matches(task, has_prompt, tuple(tags))]
