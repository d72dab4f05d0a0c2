"""Markdown tables as the reports write them."""

from __future__ import annotations

from onereward.tasks import DIMENSIONS


def dimension_table_header(leading: list[str], dims) -> list[str]:
    """Header and rule lines of a table with ``leading`` columns, then one column per dimension."""
    names = leading + [DIMENSIONS[d].title for d in dims]
    return ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
