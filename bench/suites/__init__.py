"""The benchmarks, one module each (`python -m bench NAME` runs its `main`)."""
