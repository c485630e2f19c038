"""PyTorch ports of restorejax networks, for side-by-side speed benchmarks only (`bench step
--against=pytorch`, `bench_gpu`). Importing this package imports torch (the `convert` extra); nothing in
training or evaluation imports it."""
