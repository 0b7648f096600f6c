// Rotary position embedding, rotate-half layout (the Llama / Hugging Face convention).
#include "common.cuh"

namespace {

// One thread per (row, head, pair). sincosf, not __sincosf: angles reach position * inv_freq[0] = thousands of
// radians, where the fast intrinsic loses the phase.
__global__ void rope_kernel(float* x, int rows, int heads, int head_dim, const int32_t* __restrict__ positions,
                            const float* __restrict__ inv_freq) {
    const int half = head_dim / 2;
    const size_t total = (size_t)rows * heads * half;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const int p = (int)(i % half);
        const size_t rh = i / half;  // row * heads + head
        const int row = (int)(rh / heads);
        float s, c;
        sincosf((float)positions[row] * inv_freq[p], &s, &c);
        float* v = x + rh * head_dim;
        const float a = v[p], b = v[p + half];
        v[p] = a * c - b * s;
        v[p + half] = b * c + a * s;
    }
}

}  // namespace

extern "C" FS_API fs_status fs_cuda_rope(fs_stream stream, float* x, int rows, int heads, int head_dim,
                                         const int32_t* positions, const float* inv_freq) {
    FS_API_BEGIN
    FS_CHECK_ARG(x && positions && inv_freq, "rope: null pointer");
    FS_CHECK_ARG(rows >= 0 && heads > 0 && head_dim > 0 && head_dim % 2 == 0,
                 "rope: bad shape rows %d heads %d head_dim %d (head_dim must be even)", rows, heads, head_dim);
    if (rows == 0) return FS_OK;
    const size_t total = (size_t)rows * heads * (head_dim / 2);
    size_t blocks = (total + 255) / 256;
    if (blocks > 65536) blocks = 65536;
    rope_kernel<<<(unsigned)blocks, 256, 0, (cudaStream_t)stream>>>(x, rows, heads, head_dim, positions, inv_freq);
    FS_LAUNCH_CHECK("rope_kernel");
    return FS_OK;
    FS_API_END
}
