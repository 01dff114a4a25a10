"""Benchmarks: fedsim against a plain PyTorch loop and Flower's tutorial pattern."""
