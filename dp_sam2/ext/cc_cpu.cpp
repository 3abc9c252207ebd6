// Exact 8-connected component labelling on the CPU for dp_sam2.
//
// Plain C++ (no torch headers, so it compiles in about a second) called through ctypes on the
// buffers of contiguous torch tensors. Two raster passes of union-find per image:
//   1. every foreground pixel joins the foreground neighbours already visited (W, NW, N, NE);
//      a union always links the larger root under the smaller one, so every pointer goes to a
//      smaller index and the root of a component is its first pixel in raster order;
//   2. resolve roots (the parent of a pixel was resolved before it), count each component's
//      pixels at its root, then write label = root index + 1 and the component's area.
// The labels therefore equal the CUDA kernel's: 1 + raster index of the component's first pixel.
#include <cstdint>
#include <thread>
#include <vector>

#if defined(_WIN32)
#define DP_SAM2_EXPORT extern "C" __declspec(dllexport)
#else
#define DP_SAM2_EXPORT extern "C" __attribute__((visibility("default")))
#endif

namespace {

inline int32_t find_root(int32_t* parent, int32_t x) {
  int32_t root = x;
  while (parent[root] != root) root = parent[root];
  while (parent[x] != root) {  // path compression
    const int32_t next = parent[x];
    parent[x] = root;
    x = next;
  }
  return root;
}

inline void unite(int32_t* parent, int32_t a, int32_t b) {
  a = find_root(parent, a);
  b = find_root(parent, b);
  if (a < b) parent[b] = a;
  else if (b < a) parent[a] = b;
}

void label_image(const uint8_t* img, int32_t* labels, int32_t* counts, int32_t H, int32_t W) {
  int32_t* parent = labels;  // the label buffer doubles as the union-find forest
  for (int32_t r = 0; r < H; ++r) {
    const uint8_t* row = img + static_cast<int64_t>(r) * W;
    const uint8_t* up = r > 0 ? row - W : row;  // read only when r > 0
    for (int32_t c = 0; c < W; ++c) {
      const int32_t p = r * W + c;
      counts[p] = 0;
      if (!row[c]) continue;
      parent[p] = p;
      const bool has_left = c > 0, has_right = c + 1 < W;
      if (r > 0 && up[c]) {  // N touches W, NW and NE: they already share its root
        unite(parent, p, p - W);
        continue;
      }
      if (has_left && row[c - 1]) unite(parent, p, p - 1);
      else if (r > 0 && has_left && up[c - 1]) unite(parent, p, p - W - 1);
      if (r > 0 && has_right && up[c + 1]) unite(parent, p, p - W + 1);
    }
  }
  const int32_t total = H * W;
  for (int32_t p = 0; p < total; ++p) {
    if (!img[p]) continue;
    const int32_t root = parent[parent[p]];  // parent[p] <= p is already resolved
    labels[p] = root;
    counts[root] += 1;
  }
  for (int32_t p = 0; p < total; ++p) {
    if (!img[p]) {
      labels[p] = 0;
      continue;
    }
    const int32_t root = labels[p];
    counts[p] = counts[root];  // the root is the first pixel: its count is final when read
    labels[p] = root + 1;
  }
}

}  // namespace

DP_SAM2_EXPORT int dp_sam2_cc_cpu(const uint8_t* img, int32_t* labels, int32_t* counts, int64_t n,
                              int64_t h, int64_t w, int64_t num_threads) {
  if (n < 0 || h < 0 || w < 0 || h * w > INT32_MAX) return 1;
  const int64_t plane = h * w;
  auto run = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      label_image(img + i * plane, labels + i * plane, counts + i * plane,
                  static_cast<int32_t>(h), static_cast<int32_t>(w));
  };
  int64_t workers = num_threads < 1 ? 1 : num_threads;
  if (workers > n) workers = n;
  if (workers <= 1 || plane * n < (1 << 16)) {
    run(0, n);
    return 0;
  }
  std::vector<std::thread> pool;
  const int64_t chunk = (n + workers - 1) / workers;
  for (int64_t begin = 0; begin < n; begin += chunk)
    pool.emplace_back(run, begin, begin + chunk < n ? begin + chunk : n);
  for (auto& t : pool) t.join();
  return 0;
}
