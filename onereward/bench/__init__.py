"""Benchmarks, separate from the tests: ``python -m onereward.bench <name> [options]``.

Each benchmark prints one JSON line per figure (median over ``--repeats`` runs where it is
timed) so that results can be pasted into BENCHMARKS.md or collected by a script.
"""
