"""What the benchmarks drive and measure with: load generators, clients, scenes, sinks and
profiles."""
