// cuda_cpu.h: just enough CUDA for g++ to compile and run minimask's .cu kernels on the CPU.
//
// Used by minimask/kernels.py (CpuKernel): g++ -std=c++20 -include cuda_cpu.h compiles a kernel
// file unchanged, and cuda_cpu::launch runs it with the grid and block sizes the GPU would get:
//   * one std::thread per CUDA thread of a block, with its own threadIdx (thread_local);
//   * the blocks of the grid one after another; all threads run block b, meet at a barrier,
//     then run block b+1 (so blockIdx is per thread too, but all threads agree on it);
//   * __syncthreads() is that barrier (std::barrier, C++20);
//   * __shared__ is `static`: one array per kernel function, seen by every thread of the block,
//     which is exactly shared memory as long as one block runs at a time;
//   * atomicAdd is std::atomic_ref<T>::fetch_add (C++20; a compare-exchange loop for floats).
// Only what the kernels use is defined; a kernel that needs more should fail to compile here.
// Threads of one block really run concurrently, so a missing __syncthreads or a plain `+=` where
// atomicAdd is needed shows up as a wrong result or, under -fsanitize=thread, as a reported race.
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <thread>
#include <vector>

struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx;  // this CUDA thread's index in its block
inline thread_local dim3 blockIdx;   // the block being run
inline dim3 blockDim;                // set by launch, read-only while the kernel runs
inline dim3 gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

using std::ceil;
using std::floor;
using std::max;
using std::min;

namespace cuda_cpu {
inline std::barrier<>* block_barrier = nullptr;
}

inline void __syncthreads() { cuda_cpu::block_barrier->arrive_and_wait(); }

template <class T>
inline T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}

namespace cuda_cpu {

// Run `kernel()` (a lambda calling the __global__ function) on grid x block CUDA threads.
template <class Kernel>
void launch(dim3 grid, dim3 block, Kernel kernel) {
  gridDim = grid;
  blockDim = block;
  const unsigned int n_threads = block.x * block.y * block.z;
  std::barrier<> barrier(n_threads);
  block_barrier = &barrier;
  std::vector<std::thread> threads;
  threads.reserve(n_threads);
  for (unsigned int t = 0; t < n_threads; ++t) {
    threads.emplace_back([&, t] {
      threadIdx = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
      for (unsigned int bz = 0; bz < grid.z; ++bz)
        for (unsigned int by = 0; by < grid.y; ++by)
          for (unsigned int bx = 0; bx < grid.x; ++bx) {
            blockIdx = dim3{bx, by, bz};
            kernel();
            barrier.arrive_and_wait();  // the block is done before the next one reuses __shared__
          }
    });
  }
  for (auto& th : threads) th.join();
  block_barrier = nullptr;
}

}  // namespace cuda_cpu
