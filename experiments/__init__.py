"""Experiment scripts: training CLI, configs and benchmarks."""
