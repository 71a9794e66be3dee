// Tile compositing built for AVX2+FMA; chosen at run time only on CPUs that report both.
// Library headers come before the target pragma so only our own (internal) code gets AVX2.
#include <cmath>
#include <cstdint>

#include "splat_common.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#pragma GCC target("avx2,fma")
#define SPLAT_ISA avx2
#define SPLAT_X86_INTRINSICS 1
#include "raster_tiles.h"
#endif
