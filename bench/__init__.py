"""Benchmarks of the herd (docs/benchmarks.md): each measured against a baseline in the same run.

Run them with `python -m bench NAME` (see `bench/__main__.py`); they are not tests, and pytest
does not collect them (its testpaths is `tests/`).
"""
