// A small work-claiming thread pool for the splatting kernels.
//
// OpenMP regions end in a barrier, so on an oversubscribed machine (other processes holding the
// cores) every region waits for its slowest, possibly descheduled, thread, and spinning threads
// burn the time slices of the rest. Here the calling thread claims chunks too and only waits for
// chunks another thread has already started: helpers that wake up late find no work left.
#pragma once

#include <cstdint>
#include <functional>

namespace splat {

// Runs fn(begin, end, slot) over [0, n) in chunks of `grain`, on up to `threads` threads
// (0 = torch's intra-op thread count). `slot` is unique among concurrently running calls of one
// parallel_run and below the returned number of slots; use it to index per-thread scratch.
int parallel_run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t, int)>& fn,
                 int threads = 0);

// Slots parallel_run(…, threads) may hand out, for sizing per-slot scratch before the call.
int parallel_slots(int threads = 0);

}  // namespace splat
