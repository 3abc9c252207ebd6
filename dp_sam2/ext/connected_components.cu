// 8-connected component labelling of binary masks on the GPU, for dp_sam2.
//
// Block-based union-find on 2x2 pixel blocks (Allegretti, Bolelli & Grana, "Optimized Block-Based
// Algorithms to Label Connected Components on GPUs", IEEE TPDS 2019; SAM 2's kernel uses the same
// scheme). The four pixels of a 2x2 block are pairwise 8-adjacent, so a block is a single node.
//   init      every block is its own root;
//   merge     a block joins its up-left, up, up-right and left neighbours where a foreground pixel
//             of each touches (the other four directions are the mirror images, done by the
//             neighbour); unions link the larger root under the smaller with atomicMin;
//   compress  every block points straight at its root;
//   reduce    each root gathers its component's area and its first pixel in raster order;
//   write     labels = 1 + that first pixel's index (0 on background), counts = the area.
// Any height and width work: pixels outside the image read as background. All images of the batch
// go in one launch (grid z). Indices are per image and fit int32 (the binding checks H*W).
//
// Compiled with -DDP_SAM2_CC_HOST_EMULATION this file becomes plain C++: the same per-block
// functions run sequentially on the host (dp_sam2_cc_emulate), which lets machines without a GPU
// test the kernel's logic.
#include <cstdint>

#ifdef DP_SAM2_CC_HOST_EMULATION
#define CC_DEVICE inline
namespace {
inline int32_t atomicMin(int32_t* address, int32_t value) {
  const int32_t old = *address;
  if (value < old) *address = value;
  return old;
}
inline int32_t atomicAdd(int32_t* address, int32_t value) {
  const int32_t old = *address;
  *address = old + value;
  return old;
}
}  // namespace
#else
#include <cuda_runtime.h>
#define CC_DEVICE __device__ __forceinline__
#endif

namespace dp_sam2_cc {

struct Geometry {
  int32_t H, W;    // image
  int32_t BH, BW;  // 2x2 blocks: ceil(H / 2), ceil(W / 2)
};

// Foreground test that reads outside the image as background.
CC_DEVICE bool fg(const uint8_t* img, const Geometry& g, int32_t r, int32_t c) {
  return r >= 0 && r < g.H && c >= 0 && c < g.W && img[r * g.W + c] != 0;
}

CC_DEVICE int32_t find_root(const int32_t* parent, int32_t x) {
  while (parent[x] != x) x = parent[x];
  return x;
}

// Lock-free union: hook the larger root under the smaller. If another thread re-hooked that root
// first, atomicMin returns its new parent and the loop goes on from there.
CC_DEVICE void unite(int32_t* parent, int32_t a, int32_t b) {
  while (true) {
    a = find_root(parent, a);
    b = find_root(parent, b);
    if (a == b) return;
    if (a > b) {
      const int32_t t = a;
      a = b;
      b = t;
    }
    const int32_t old = atomicMin(parent + b, a);
    if (old == b) return;
    b = old;
  }
}

CC_DEVICE void init_block(int32_t* parent, const Geometry& g, int32_t br, int32_t bc) {
  const int32_t id = br * g.BW + bc;
  parent[id] = id;
}

CC_DEVICE void merge_block(const uint8_t* img, int32_t* parent, const Geometry& g, int32_t br,
                           int32_t bc) {
  const int32_t r = 2 * br, c = 2 * bc;
  const bool a = fg(img, g, r, c), b = fg(img, g, r, c + 1);      // top row of the block
  const bool d = fg(img, g, r + 1, c), e = fg(img, g, r + 1, c + 1);  // bottom row
  if (!(a || b || d || e)) return;
  const int32_t id = br * g.BW + bc;
  if (a && fg(img, g, r - 1, c - 1)) unite(parent, id, id - g.BW - 1);  // up-left block
  if ((a || b) && (fg(img, g, r - 1, c) || fg(img, g, r - 1, c + 1)))
    unite(parent, id, id - g.BW);                                       // up block
  if (b && fg(img, g, r - 1, c + 2)) unite(parent, id, id - g.BW + 1);  // up-right block
  if ((a || d) && (fg(img, g, r, c - 1) || fg(img, g, r + 1, c - 1)))
    unite(parent, id, id - 1);                                          // left block
}

CC_DEVICE void compress_block(int32_t* parent, const Geometry& g, int32_t br, int32_t bc) {
  const int32_t id = br * g.BW + bc;
  parent[id] = find_root(parent, id);
}

// area[root] += foreground pixels of the block; first[root] = min(first[root], first fg pixel).
CC_DEVICE void reduce_block(const uint8_t* img, const int32_t* parent, int32_t* area,
                            int32_t* first, const Geometry& g, int32_t br, int32_t bc) {
  const int32_t r = 2 * br, c = 2 * bc;
  const bool a = fg(img, g, r, c), b = fg(img, g, r, c + 1);
  const bool d = fg(img, g, r + 1, c), e = fg(img, g, r + 1, c + 1);
  const int32_t n = int32_t(a) + int32_t(b) + int32_t(d) + int32_t(e);
  if (n == 0) return;
  const int32_t top = r * g.W + c, bottom = top + g.W;
  const int32_t first_px = a ? top : (b ? top + 1 : (d ? bottom : bottom + 1));
  const int32_t root = parent[br * g.BW + bc];
  atomicAdd(area + root, n);
  atomicMin(first + root, first_px);
}

CC_DEVICE void write_block(const uint8_t* img, const int32_t* parent, const int32_t* area,
                           const int32_t* first, int32_t* labels, int32_t* counts,
                           const Geometry& g, int32_t br, int32_t bc) {
  const int32_t root = parent[br * g.BW + bc];
  for (int32_t dr = 0; dr < 2; ++dr) {
    const int32_t r = 2 * br + dr;
    if (r >= g.H) break;
    for (int32_t dc = 0; dc < 2; ++dc) {
      const int32_t c = 2 * bc + dc;
      if (c >= g.W) break;
      const int32_t p = r * g.W + c;
      const bool on = img[p] != 0;
      labels[p] = on ? first[root] + 1 : 0;
      counts[p] = on ? area[root] : 0;
    }
  }
}

// Scratch layout per image: parent, area, first; each BH * BW int32.
struct Buffers {
  const uint8_t* img;
  int32_t* labels;
  int32_t* counts;
  int32_t* scratch;
};

CC_DEVICE void image_buffers(const Buffers& all, const Geometry& g, int64_t n, const uint8_t*& img,
                             int32_t*& labels, int32_t*& counts, int32_t*& parent,
                             int32_t*& area, int32_t*& first) {
  const int64_t plane = int64_t(g.H) * g.W, blocks = int64_t(g.BH) * g.BW;
  img = all.img + n * plane;
  labels = all.labels + n * plane;
  counts = all.counts + n * plane;
  parent = all.scratch + 3 * n * blocks;
  area = parent + blocks;
  first = area + blocks;
}

enum Phase { kInit = 0, kMerge, kCompress, kReduce, kWrite, kPhases };

// One 2x2 block of image n: the body shared by the CUDA kernel and the host emulation.
CC_DEVICE void run_block(const Buffers& all, const Geometry& g, int phase, int64_t n, int32_t br,
                         int32_t bc) {
  const uint8_t* img;
  int32_t *labels, *counts, *parent, *area, *first;
  image_buffers(all, g, n, img, labels, counts, parent, area, first);
  const int32_t id = br * g.BW + bc;
  switch (phase) {
    case kInit:
      init_block(parent, g, br, bc);
      area[id] = 0;
      first[id] = INT32_MAX;
      break;
    case kMerge: merge_block(img, parent, g, br, bc); break;
    case kCompress: compress_block(parent, g, br, bc); break;
    case kReduce: reduce_block(img, parent, area, first, g, br, bc); break;
    case kWrite: write_block(img, parent, area, first, labels, counts, g, br, bc); break;
  }
}

}  // namespace dp_sam2_cc

#ifdef DP_SAM2_CC_HOST_EMULATION

// Runs the phases in order over every block of every image, sequentially; reverse != 0 visits
// the blocks of each phase in reverse order (a different interleaving of the unions).
extern "C" int dp_sam2_cc_emulate(const uint8_t* img, int32_t* labels, int32_t* counts,
                                  int32_t* scratch, int64_t n_images, int32_t h, int32_t w,
                                  int reverse) {
  using namespace dp_sam2_cc;
  const Geometry g{h, w, (h + 1) / 2, (w + 1) / 2};
  const Buffers all{img, labels, counts, scratch};
  const int64_t blocks = int64_t(g.BH) * g.BW;
  for (int phase = kInit; phase < kPhases; ++phase)
    for (int64_t n = 0; n < n_images; ++n)
      for (int64_t k = 0; k < blocks; ++k) {
        const int64_t id = reverse ? blocks - 1 - k : k;
        run_block(all, g, phase, n, int32_t(id / g.BW), int32_t(id % g.BW));
      }
  return 0;
}

#else

namespace dp_sam2_cc {

__global__ void phase_kernel(Buffers all, Geometry g, int phase, int64_t image_offset) {
  const int32_t bc = int32_t(blockIdx.x * blockDim.x + threadIdx.x);
  const int32_t br = int32_t(blockIdx.y * blockDim.y + threadIdx.y);
  if (br >= g.BH || bc >= g.BW) return;
  run_block(all, g, phase, image_offset + blockIdx.z, br, bc);
}

}  // namespace dp_sam2_cc

// Labels a contiguous uint8 batch [n, h, w] into int32 labels and counts. `scratch` holds
// 3 * n * ceil(h/2) * ceil(w/2) int32. Returns the first CUDA error (cudaSuccess if none).
cudaError_t dp_sam2_cc_launch(const uint8_t* img, int32_t* labels, int32_t* counts,
                              int32_t* scratch, int64_t n_images, int32_t h, int32_t w,
                              cudaStream_t stream) {
  using namespace dp_sam2_cc;
  const Geometry g{h, w, (h + 1) / 2, (w + 1) / 2};
  const Buffers all{img, labels, counts, scratch};
  const dim3 threads(32, 8);
  const int64_t max_z = 65535;
  for (int phase = kInit; phase < kPhases; ++phase)
    for (int64_t start = 0; start < n_images; start += max_z) {
      const int64_t count = n_images - start < max_z ? n_images - start : max_z;
      const dim3 grid((g.BW + threads.x - 1) / threads.x, (g.BH + threads.y - 1) / threads.y,
                      unsigned(count));
      phase_kernel<<<grid, threads, 0, stream>>>(all, g, phase, start);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
  return cudaSuccess;
}

#endif
