// Vector clones of a hot loop (AVX-512, AVX2 and a plain version), picked
// once at load time for the CPU at hand: the wheel stays portable and still
// uses the wide registers. GCC on x86-64 Linux (ifunc); one plain version
// elsewhere.
#pragma once

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define HER2KIT_VECTOR_CLONES \
  __attribute__((target_clones("arch=skylake-avx512", "avx2", "default")))
#else
#define HER2KIT_VECTOR_CLONES
#endif
