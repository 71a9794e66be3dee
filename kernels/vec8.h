// 8-lane vectors (GCC/Clang vector extensions) and the AVX2 function clones shared by the CPU kernels
// whose inner loops are written with them (ssim_cpu.cpp, sparse_conv_cpu.cpp). The rasterizer's tiles use
// intrinsics in their own AVX2 translation unit instead (raster_tiles.h).
#pragma once

#include <cstring>

// A function built twice, for AVX2+FMA (x86-64-v3) and the baseline, picked at load time by the CPU.
// GCC 12+ only: older GCC builds the portable code alone.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SIMD_CLONES
#endif

namespace splat {

template <typename T>
struct Lanes8 {
  typedef T type __attribute__((vector_size(8 * sizeof(T))));  // 8 lanes: one AVX2 register of floats
};
template <typename T>
using V8 = typename Lanes8<T>::type;

template <typename T>
__attribute__((always_inline)) inline V8<T> load8(const T* p) {
  V8<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
__attribute__((always_inline)) inline void store8(T* p, const V8<T>& v) {
  std::memcpy(p, &v, sizeof(v));
}

// All lanes = v: lane 0 shuffled to all, which becomes one vbroadcastss from memory. (0 + v costs an add,
// since 0 + v is not v for v = -0; a lane-by-lane initialiser or 1 * v GCC's vectoriser turns into
// chains of inserts, 5x slower in the sparse conv.)
template <typename T>
__attribute__((always_inline)) inline V8<T> bcast(T v) {
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
  const V8<T> t = {v};
  return __builtin_shufflevector(t, t, 0, 0, 0, 0, 0, 0, 0, 0);
#else
  return V8<T>{} + v;
#endif
}

}  // namespace splat
