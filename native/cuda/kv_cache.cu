// Writes the new rows' K and V into the paged BF16 cache.
#include "common.cuh"

namespace {

// One thread per (row, kv head, dim). A negative slot (a padding row) is skipped, as vLLM does.
__global__ void kv_store_kernel(uint16_t* __restrict__ k_cache, uint16_t* __restrict__ v_cache, int width,
                                const float* __restrict__ k, const float* __restrict__ v, int rows,
                                const int32_t* __restrict__ slots) {
    const size_t total = (size_t)rows * width;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const int r = (int)(i / width), c = (int)(i % width);
        const int slot = slots[r];
        if (slot < 0) continue;
        // [num_blocks, block_size, kv_heads, head_dim] flattened: slot = block * block_size + offset.
        const size_t to = (size_t)slot * width + c;
        k_cache[to] = fs::float_to_bf16_bits(k[i]);
        v_cache[to] = fs::float_to_bf16_bits(v[i]);
    }
}

}  // namespace

extern "C" FS_API fs_status fs_cuda_kv_store(fs_stream stream, uint16_t* k_cache, uint16_t* v_cache, int kv_heads,
                                             int head_dim, const float* k, const float* v, int rows,
                                             const int32_t* slots) {
    FS_API_BEGIN
    FS_CHECK_ARG(k_cache && v_cache && k && v && slots, "kv_store: null pointer");
    FS_CHECK_ARG(kv_heads > 0 && head_dim > 0 && rows >= 0, "kv_store: bad shape kv_heads %d head_dim %d rows %d",
                 kv_heads, head_dim, rows);
    if (rows == 0) return FS_OK;
    const int width = kv_heads * head_dim;
    const size_t total = (size_t)rows * width;
    size_t blocks = (total + 255) / 256;
    if (blocks > 65536) blocks = 65536;
    kv_store_kernel<<<(unsigned)blocks, 256, 0, (cudaStream_t)stream>>>(k_cache, v_cache, width, k, v, rows, slots);
    FS_LAUNCH_CHECK("kv_store_kernel");
    return FS_OK;
    FS_API_END
}
