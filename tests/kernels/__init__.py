"""Tests of the CUDA kernels: nvcc compile checks and lane-level models on CPU, property tests on a GPU."""
