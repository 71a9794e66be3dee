// Tile compositing built for the baseline instruction set (any x86-64 / other CPU).
#include <cmath>
#include <cstdint>

#include "splat_common.h"

#define SPLAT_ISA generic
#include "raster_tiles.h"
