// H2K_HD marks maths shared by the C++ and CUDA kernels: inline on the host,
// __host__ __device__ under nvcc.
#pragma once

#if defined(__CUDACC__)
#define H2K_HD __host__ __device__ __forceinline__
#else
#define H2K_HD inline __attribute__((always_inline))
#endif
