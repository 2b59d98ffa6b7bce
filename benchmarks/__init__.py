"""Benchmarks: each bench_*.py has main() and writes its figures to benchmarks/results/."""
