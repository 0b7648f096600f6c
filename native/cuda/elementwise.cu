// Element-wise and row-copy ops: add, silu_gate, gather_rows, embedding.
#include "common.cuh"

namespace {

__global__ void add_kernel(float* acc, const float* x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        acc[i] += x[i];
}

__global__ void silu_gate_kernel(const float* gate, const float* up, size_t n, float* dst) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float g = gate[i];
        dst[i] = g / (1.f + expf(-g)) * up[i];
    }
}

__global__ void gather_rows_kernel(const float* __restrict__ src, int cols, const int32_t* __restrict__ rows_idx,
                                   float* __restrict__ dst) {
    const size_t from = (size_t)rows_idx[blockIdx.x] * cols, to = (size_t)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dst[to + c] = src[from + c];
}

template <fs_dtype T>
__device__ __forceinline__ float load_weight(const void* table, size_t i) {
    if constexpr (T == FS_F32) return static_cast<const float*>(table)[i];
    else if constexpr (T == FS_F16) return fs::half_bits_to_float(static_cast<const uint16_t*>(table)[i]);
    else if constexpr (T == FS_BF16) return fs::bf16_bits_to_float(static_cast<const uint16_t*>(table)[i]);
    else return fs::e4m3_to_float(static_cast<const uint8_t*>(table)[i]);
}

// A token outside [0, vocab) cannot be reported from here (ops are asynchronous); its row is written as zeros.
template <fs_dtype T>
__global__ void embedding_kernel(const void* __restrict__ table, const float* __restrict__ scale, int vocab, int cols,
                                 const int32_t* __restrict__ tokens, float* __restrict__ dst) {
    const int tok = tokens[blockIdx.x];
    const size_t to = (size_t)blockIdx.x * cols;
    if (tok < 0 || tok >= vocab) {
        for (int c = threadIdx.x; c < cols; c += blockDim.x) dst[to + c] = 0.f;
        return;
    }
    const float s = (T == FS_F8E4M3 && scale) ? scale[tok] : 1.f;
    const size_t from = (size_t)tok * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dst[to + c] = load_weight<T>(table, from + c) * s;
}

unsigned elementwise_blocks(size_t n) {
    const size_t b = (n + 255) / 256;
    return (unsigned)(b < 65536 ? (b ? b : 1) : 65536);  // grid-stride loops cover the rest
}

}  // namespace

extern "C" {

FS_API fs_status fs_cuda_add(fs_stream stream, float* acc, const float* x, size_t n) {
    FS_API_BEGIN
    FS_CHECK_ARG(acc && x, "add: null pointer");
    if (n == 0) return FS_OK;
    add_kernel<<<elementwise_blocks(n), 256, 0, (cudaStream_t)stream>>>(acc, x, n);
    FS_LAUNCH_CHECK("add_kernel");
    return FS_OK;
    FS_API_END
}

FS_API fs_status fs_cuda_silu_gate(fs_stream stream, const float* gate, const float* up, size_t n, float* dst) {
    FS_API_BEGIN
    FS_CHECK_ARG(gate && up && dst, "silu_gate: null pointer");
    if (n == 0) return FS_OK;
    silu_gate_kernel<<<elementwise_blocks(n), 256, 0, (cudaStream_t)stream>>>(gate, up, n, dst);
    FS_LAUNCH_CHECK("silu_gate_kernel");
    return FS_OK;
    FS_API_END
}

FS_API fs_status fs_cuda_gather_rows(fs_stream stream, const float* src, int cols, const int32_t* rows_idx, int n,
                                     float* dst) {
    FS_API_BEGIN
    FS_CHECK_ARG(src && rows_idx && dst, "gather_rows: null pointer");
    FS_CHECK_ARG(cols > 0 && n >= 0, "gather_rows: bad shape cols %d n %d", cols, n);
    if (n == 0) return FS_OK;
    gather_rows_kernel<<<n, cols >= 1024 ? 256 : 128, 0, (cudaStream_t)stream>>>(src, cols, rows_idx, dst);
    FS_LAUNCH_CHECK("gather_rows_kernel");
    return FS_OK;
    FS_API_END
}

FS_API fs_status fs_cuda_embedding(fs_stream stream, const void* table, fs_dtype dtype, const float* scale, int vocab,
                                   int cols, const int32_t* tokens, int n, float* dst) {
    FS_API_BEGIN
    FS_CHECK_ARG(table && tokens && dst, "embedding: null pointer");
    FS_CHECK_ARG(vocab > 0 && cols > 0 && n >= 0, "embedding: bad shape vocab %d cols %d n %d", vocab, cols, n);
    FS_CHECK_ARG(dtype != FS_F8E4M3 || scale, "embedding: FP8 table needs its per-row scale");
    if (n == 0) return FS_OK;
    cudaStream_t s = (cudaStream_t)stream;
    const int threads = cols >= 1024 ? 256 : 128;
    switch (dtype) {
    case FS_F32: embedding_kernel<FS_F32><<<n, threads, 0, s>>>(table, scale, vocab, cols, tokens, dst); break;
    case FS_F16: embedding_kernel<FS_F16><<<n, threads, 0, s>>>(table, scale, vocab, cols, tokens, dst); break;
    case FS_BF16: embedding_kernel<FS_BF16><<<n, threads, 0, s>>>(table, scale, vocab, cols, tokens, dst); break;
    case FS_F8E4M3: embedding_kernel<FS_F8E4M3><<<n, threads, 0, s>>>(table, scale, vocab, cols, tokens, dst); break;
    default: return fs::set_error(FS_ERR_INVALID_ARGUMENT, __FILE__, __LINE__, "embedding: unknown dtype %d", (int)dtype);
    }
    FS_LAUNCH_CHECK("embedding_kernel");
    return FS_OK;
    FS_API_END
}

}  // extern "C"
