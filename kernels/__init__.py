"""CUDA C sources of minimask's GPU kernels (installed as the package data `minimask._kernels`).

Nothing to import here: `minimask.kernels` reads the .cu files in this folder and compiles them
with `cupy.RawKernel` (on a GPU) or with g++ against `cuda_cpu.h` (the CPU emulation in tests).
"""
