// RMS normalisation, alone and fused with the residual add that precedes it in every transformer block.
#include "common.cuh"

namespace {

// One block per row. Each thread keeps to the same columns in both passes, so x == dst (in place) is safe.
__global__ void rmsnorm_kernel(const float* __restrict__ x, const float* __restrict__ gamma, float eps, int cols,
                               float* dst) {
    __shared__ float scratch[32];
    const size_t base = (size_t)blockIdx.x * cols;
    float ss = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = x[base + c];
        ss += v * v;
    }
    ss = fs::block_sum(ss, scratch);
    const float inv = rsqrtf(ss / (float)cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dst[base + c] = x[base + c] * inv * gamma[c];
}

// residual += x, then dst = rmsnorm(residual). dst may alias x or residual (same-thread columns again).
__global__ void add_rmsnorm_kernel(float* residual, const float* x, const float* __restrict__ gamma, float eps,
                                   int cols, float* dst) {
    __shared__ float scratch[32];
    const size_t base = (size_t)blockIdx.x * cols;
    float ss = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = residual[base + c] + x[base + c];
        residual[base + c] = v;
        ss += v * v;
    }
    ss = fs::block_sum(ss, scratch);
    const float inv = rsqrtf(ss / (float)cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dst[base + c] = residual[base + c] * inv * gamma[c];
}

int norm_threads(int cols) { return cols >= 4096 ? 1024 : cols >= 1024 ? 512 : cols >= 256 ? 256 : 128; }

}  // namespace

extern "C" {

FS_API fs_status fs_cuda_rmsnorm(fs_stream stream, const float* x, const float* gamma, float eps, int rows, int cols,
                                 float* dst) {
    FS_API_BEGIN
    FS_CHECK_ARG(x && gamma && dst, "rmsnorm: null pointer (x %p, gamma %p, dst %p)", (const void*)x, (const void*)gamma, (void*)dst);
    FS_CHECK_ARG(rows >= 0 && cols > 0, "rmsnorm: bad shape rows %d cols %d", rows, cols);
    if (rows == 0) return FS_OK;
    rmsnorm_kernel<<<rows, norm_threads(cols), 0, (cudaStream_t)stream>>>(x, gamma, eps, cols, dst);
    FS_LAUNCH_CHECK("rmsnorm_kernel");
    return FS_OK;
    FS_API_END
}

FS_API fs_status fs_cuda_add_rmsnorm(fs_stream stream, float* residual, const float* x, const float* gamma, float eps,
                                     int rows, int cols, float* dst) {
    FS_API_BEGIN
    FS_CHECK_ARG(residual && x && gamma && dst, "add_rmsnorm: null pointer");
    FS_CHECK_ARG(rows >= 0 && cols > 0, "add_rmsnorm: bad shape rows %d cols %d", rows, cols);
    if (rows == 0) return FS_OK;
    add_rmsnorm_kernel<<<rows, norm_threads(cols), 0, (cudaStream_t)stream>>>(residual, x, gamma, eps, cols, dst);
    FS_LAUNCH_CHECK("add_rmsnorm_kernel");
    return FS_OK;
    FS_API_END
}

}  // extern "C"
