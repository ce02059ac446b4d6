"""Load generators and benchmarks (see BENCHMARKS.md for the commands and figures)."""
