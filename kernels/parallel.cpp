// Work-claiming thread pool (see parallel.h).
#include "parallel.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace splat {
namespace {

thread_local bool in_worker = false;

struct Job {
  const std::function<void(int64_t, int64_t, int)>* fn = nullptr;
  int64_t n = 0, grain = 1, chunks = 0;
  int helpers = 0;  // how many pool threads may join
};

class Pool {
 public:
  static Pool& instance() {
    static Pool* pool = new Pool();  // never destroyed: threads may outlive static destructors
    return *pool;
  }

  int run(const Job& job_in, int helpers) {
    std::unique_lock<std::mutex> submit(submit_mutex_);  // one job at a time
    ensure_threads(helpers);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = job_in;
      job_.helpers = helpers;
      ++generation_;
      // claim word: generation in the high 32 bits, next chunk in the low 32
      claim_.store(static_cast<uint64_t>(generation_) << 32, std::memory_order_release);
      done_.store(0, std::memory_order_release);
      next_slot_.store(1, std::memory_order_release);
    }
    wake_.notify_all();
    work(generation_, job_, 0);
    // wait only for chunks that helpers have already claimed
    int spins = 0;
    while (done_.load(std::memory_order_acquire) < job_.chunks) {
      if (++spins < 2000) {
        std::this_thread::yield();
      } else {
        std::unique_lock<std::mutex> lock(mutex_);
        finished_.wait_for(lock, std::chrono::microseconds(200),
                           [&] { return done_.load(std::memory_order_acquire) >= job_.chunks; });
      }
    }
    return helpers + 1;
  }

 private:
  Pool() = default;

  void ensure_threads(int count) {
    while (static_cast<int>(threads_.size()) < count) {
      threads_.emplace_back([this] { loop(); });
      threads_.back().detach();
    }
  }

  // Claims and runs chunks of job `gen` until none is left; returns when the job is drained.
  void work(uint32_t gen, const Job& job, int slot) {
    for (;;) {
      uint64_t word = claim_.load(std::memory_order_acquire);
      int64_t chunk;
      do {
        if ((word >> 32) != gen) return;
        chunk = static_cast<int64_t>(word & 0xffffffffu);
        if (chunk >= job.chunks) return;
      } while (!claim_.compare_exchange_weak(word, word + 1, std::memory_order_acq_rel));
      const int64_t begin = chunk * job.grain;
      const int64_t end = std::min(job.n, begin + job.grain);
      (*job.fn)(begin, end, slot);
      if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == job.chunks) {
        std::lock_guard<std::mutex> lock(mutex_);
        finished_.notify_all();
      }
    }
  }

  void loop() {
    in_worker = true;  // a nested parallel_run from inside a chunk runs inline
    uint32_t seen = 0;
    for (;;) {
      Job job;
      uint32_t gen;
      int slot;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = gen = generation_;
        job = job_;
        slot = next_slot_.fetch_add(1);
        if (slot > job.helpers) continue;  // this job asked for fewer helpers
      }
      work(gen, job, slot);
    }
  }

  std::mutex submit_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_, finished_;
  std::vector<std::thread> threads_;
  Job job_;
  uint32_t generation_ = 0;
  std::atomic<uint64_t> claim_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<int> next_slot_{1};
};


int resolve_threads(int threads) {
  if (threads <= 0) threads = at::get_num_threads();
  return std::max(1, threads);
}

}  // namespace

int parallel_slots(int threads) { return resolve_threads(threads); }

int parallel_run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t, int)>& fn, int threads) {
  if (n <= 0) return 1;
  grain = std::max<int64_t>(grain, 1);
  const int64_t chunks = (n + grain - 1) / grain;
  const int wanted = resolve_threads(threads);
  const int helpers = static_cast<int>(std::min<int64_t>(wanted, chunks)) - 1;
  if (helpers <= 0 || in_worker || chunks >= (int64_t(1) << 32)) {
    fn(0, n, 0);
    return 1;
  }
  Job job;
  job.fn = &fn;
  job.n = n;
  job.grain = grain;
  job.chunks = chunks;
  in_worker = true;
  const int used = Pool::instance().run(job, helpers);
  in_worker = false;
  return used;
}

}  // namespace splat
