"""Host emulation of the CUDA kernels in kernels/, for tests that run without a GPU."""
