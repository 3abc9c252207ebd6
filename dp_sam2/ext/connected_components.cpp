// Torch binding of the connected-components CUDA kernel (connected_components.cu):
// registers torch.ops.dp_sam2_ext.connected_components(Tensor mask) -> (Tensor, Tensor).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

cudaError_t dp_sam2_cc_launch(const uint8_t* img, int32_t* labels, int32_t* counts,
                              int32_t* scratch, int64_t n_images, int32_t h, int32_t w,
                              cudaStream_t stream);

namespace {

std::tuple<at::Tensor, at::Tensor> connected_components_cuda(const at::Tensor& mask) {
  TORCH_CHECK(mask.is_cuda(), "connected_components: expected a CUDA tensor, got ", mask.device());
  TORCH_CHECK(mask.dim() == 4 && mask.size(1) == 1,
              "connected_components: expected a mask of shape [N, 1, H, W], got ", mask.sizes());
  TORCH_CHECK(mask.scalar_type() == at::kByte,
              "connected_components: expected a uint8 mask, got ", mask.scalar_type());
  const int64_t n = mask.size(0), h = mask.size(2), w = mask.size(3);
  TORCH_CHECK(h * w <= INT32_MAX, "connected_components: H*W must fit int32, got ", h, "x", w);
  const c10::cuda::CUDAGuard guard(mask.device());
  const at::Tensor img = mask.contiguous();
  at::Tensor labels = at::empty(img.sizes(), img.options().dtype(at::kInt));
  at::Tensor counts = at::empty(img.sizes(), img.options().dtype(at::kInt));
  if (img.numel() == 0) return {labels, counts};
  const int64_t blocks = ((h + 1) / 2) * ((w + 1) / 2);
  at::Tensor scratch = at::empty({3 * n * blocks}, img.options().dtype(at::kInt));
  const cudaError_t err = dp_sam2_cc_launch(
      img.data_ptr<uint8_t>(), labels.data_ptr<int32_t>(), counts.data_ptr<int32_t>(),
      scratch.data_ptr<int32_t>(), n, static_cast<int32_t>(h), static_cast<int32_t>(w),
      c10::cuda::getCurrentCUDAStream(img.device().index()).stream());
  TORCH_CHECK(err == cudaSuccess, "connected_components: CUDA error: ", cudaGetErrorString(err));
  return {labels, counts};
}

}  // namespace

TORCH_LIBRARY(dp_sam2_ext, m) {
  m.def("connected_components(Tensor mask) -> (Tensor labels, Tensor counts)");
}

TORCH_LIBRARY_IMPL(dp_sam2_ext, CUDA, m) {
  m.impl("connected_components", &connected_components_cuda);
}
