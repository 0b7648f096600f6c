// Causal grouped-query attention over the paged BF16 KV cache, one kernel for decode and prefill rows alike.
//
// One CTA per (row, kv head, chunk of up to 8 query heads of that kv head's group): the group's query heads share
// every K and V load. The CTA's 8 warps split the row's keys 32 at a time (split-K inside the CTA); each warp keeps an
// online softmax (running max, running sum, F32 accumulator) per query head, and the warps' partial results merge
// in shared memory at the end with the usual max rescaling. Scores: each lane takes one key and does its full dot
// product against the queries held in shared memory (broadcast reads); V: each lane owns head_dim/32 contiguous
// dimensions and walks the warp's 32 keys with their probabilities from shared memory.
#include "common.cuh"

namespace {

constexpr int kAttnWarps = 8;

template <int N>
__device__ __forceinline__ void load_bf16(const uint16_t* p, float* out) {
    if constexpr (N % 4 == 0) {
#pragma unroll
        for (int i = 0; i < N; i += 4) {
            const uint2 u = *reinterpret_cast<const uint2*>(p + i);
            out[i] = __uint_as_float(u.x << 16);
            out[i + 1] = __uint_as_float(u.x & 0xffff0000u);
            out[i + 2] = __uint_as_float(u.y << 16);
            out[i + 3] = __uint_as_float(u.y & 0xffff0000u);
        }
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) out[i] = fs::bf16_bits_to_float(p[i]);
    }
}

// DPL = head_dim / 32 dims per lane; GC = query heads per CTA.
// Two CTAs per SM: without the bound ptxas squeezes the small variants to 48 registers and spills.
template <int DPL, int GC>
__global__ void __launch_bounds__(kAttnWarps * 32, 2)
attention_kernel(const float* __restrict__ q, int heads, int kv_heads, const uint16_t* __restrict__ k_cache,
                 const uint16_t* __restrict__ v_cache, int block_size, const int32_t* __restrict__ block_tables,
                 int max_blocks, const int32_t* __restrict__ seq_of_row, const int32_t* __restrict__ positions,
                 float* __restrict__ dst) {
    constexpr int D = DPL * 32;
    extern __shared__ __align__(16) float smem[];
    float* q_s = smem;                             // [GC][D], pre-scaled by log2(e) / sqrt(D)
    float* p_s = q_s + GC * D;                     // [warps][32][GC]
    float* acc_s = p_s + kAttnWarps * 32 * GC;     // [warps][GC][D]
    float* m_s = acc_s + kAttnWarps * GC * D;      // [warps][GC]
    float* l_s = m_s + kAttnWarps * GC;            // [warps][GC]

    const int row = blockIdx.x, kh = blockIdx.y;
    const int group = heads / kv_heads;
    const int h0 = kh * group + blockIdx.z * GC;
    const int nh = min(GC, group - (int)blockIdx.z * GC);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const size_t q_row = (size_t)row * heads * D;

    const float qscale = rsqrtf((float)D) * 1.4426950408889634f;  // softmax in base 2
    for (int i = threadIdx.x; i < GC * D; i += blockDim.x) {
        const int g = i / D, d = i % D;
        q_s[i] = g < nh ? q[q_row + (size_t)(h0 + g) * D + d] * qscale : 0.f;
    }
    __syncthreads();

    const int seq = seq_of_row[row];
    int n_keys = positions[row] + 1;
    if (n_keys > max_blocks * block_size) n_keys = max_blocks * block_size;
    const int32_t* table = block_tables + (size_t)seq * max_blocks;
    const size_t slot_stride = (size_t)kv_heads * D;

    float m[GC], l[GC], acc[GC][DPL];
#pragma unroll
    for (int g = 0; g < GC; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.f;
#pragma unroll
        for (int i = 0; i < DPL; ++i) acc[g][i] = 0.f;
    }

    float* pw = p_s + warp * 32 * GC;
    for (int base = warp * 32; base < n_keys; base += kAttnWarps * 32) {
        const int j = base + lane;
        const bool valid = j < n_keys;
        float s[GC];
#pragma unroll
        for (int g = 0; g < GC; ++g) s[g] = 0.f;
        if (valid) {
            const size_t slot = (size_t)table[j / block_size] * block_size + j % block_size;
            const uint16_t* kp = k_cache + slot * slot_stride + (size_t)kh * D;
#pragma unroll 4
            for (int d = 0; d < D; d += 8) {
                const uint4 u = *reinterpret_cast<const uint4*>(kp + d);
                float kf[8];
                kf[0] = __uint_as_float(u.x << 16); kf[1] = __uint_as_float(u.x & 0xffff0000u);
                kf[2] = __uint_as_float(u.y << 16); kf[3] = __uint_as_float(u.y & 0xffff0000u);
                kf[4] = __uint_as_float(u.z << 16); kf[5] = __uint_as_float(u.z & 0xffff0000u);
                kf[6] = __uint_as_float(u.w << 16); kf[7] = __uint_as_float(u.w & 0xffff0000u);
#pragma unroll
                for (int g = 0; g < GC; ++g) {
                    const float4 qa = *reinterpret_cast<const float4*>(q_s + g * D + d);
                    const float4 qb = *reinterpret_cast<const float4*>(q_s + g * D + d + 4);
                    s[g] += qa.x * kf[0] + qa.y * kf[1] + qa.z * kf[2] + qa.w * kf[3] + qb.x * kf[4] + qb.y * kf[5] +
                            qb.z * kf[6] + qb.w * kf[7];
                }
            }
        }
#pragma unroll
        for (int g = 0; g < GC; ++g) {
            const float sg = valid ? s[g] : -INFINITY;
            const float m_new = fmaxf(m[g], fs::warp_max(sg));  // finite: lane 0's key is always valid
            const float p = valid ? exp2f(sg - m_new) : 0.f;
            const float corr = exp2f(m[g] - m_new);
            l[g] = l[g] * corr + fs::warp_sum(p);
            m[g] = m_new;
#pragma unroll
            for (int i = 0; i < DPL; ++i) acc[g][i] *= corr;
            pw[lane * GC + g] = p;
        }
        __syncwarp();
        const int nk = min(32, n_keys - base);
#pragma unroll 1  // unrolling this loop makes ptxas spill
        for (int jj = 0; jj < nk; ++jj) {
            const int jk = base + jj;
            const size_t slot = (size_t)table[jk / block_size] * block_size + jk % block_size;
            float v[DPL];
            load_bf16<DPL>(v_cache + slot * slot_stride + (size_t)kh * D + lane * DPL, v);
#pragma unroll
            for (int g = 0; g < GC; ++g) {
                const float p = pw[jj * GC + g];
#pragma unroll
                for (int i = 0; i < DPL; ++i) acc[g][i] = fmaf(p, v[i], acc[g][i]);
            }
        }
        __syncwarp();  // pw is rewritten by the next iteration
    }

#pragma unroll
    for (int g = 0; g < GC; ++g) {
        if (lane == 0) {
            m_s[warp * GC + g] = m[g];
            l_s[warp * GC + g] = l[g];
        }
#pragma unroll
        for (int i = 0; i < DPL; ++i) acc_s[(warp * GC + g) * D + lane * DPL + i] = acc[g][i];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < nh * D; i += blockDim.x) {
        const int g = i / D, d = i % D;
        float mx = -INFINITY;
#pragma unroll
        for (int wi = 0; wi < kAttnWarps; ++wi) mx = fmaxf(mx, m_s[wi * GC + g]);
        float sum = 0.f, o = 0.f;
        if (mx != -INFINITY) {
#pragma unroll
            for (int wi = 0; wi < kAttnWarps; ++wi) {
                const float c = exp2f(m_s[wi * GC + g] - mx);  // 0 for a warp that saw no key
                sum += l_s[wi * GC + g] * c;
                o += acc_s[(wi * GC + g) * D + d] * c;
            }
        }
        // A row with no key to attend to (a negative position) gets zeros rather than NaN.
        dst[q_row + (size_t)(h0 + g) * D + d] = sum > 0.f ? o / sum : 0.f;
    }
}

size_t attention_smem(int dpl, int gc) {
    const int d = dpl * 32;
    return sizeof(float) * ((size_t)gc * d + kAttnWarps * 32 * gc + (size_t)kAttnWarps * gc * d + 2 * kAttnWarps * gc);
}

template <int DPL, int GC>
void launch_attention(cudaStream_t s, dim3 grid, const float* q, int heads, int kv_heads, const uint16_t* k_cache,
                      const uint16_t* v_cache, int block_size, const int32_t* block_tables, int max_blocks,
                      const int32_t* seq_of_row, const int32_t* positions, float* dst) {
    attention_kernel<DPL, GC><<<grid, kAttnWarps * 32, attention_smem(DPL, GC), s>>>(
        q, heads, kv_heads, k_cache, v_cache, block_size, block_tables, max_blocks, seq_of_row, positions, dst);
}

template <int DPL>
void launch_attention_gc(int gc, cudaStream_t s, dim3 grid, const float* q, int heads, int kv_heads,
                         const uint16_t* k_cache, const uint16_t* v_cache, int block_size, const int32_t* block_tables,
                         int max_blocks, const int32_t* seq_of_row, const int32_t* positions, float* dst) {
#define FS_ATTN(GC_) launch_attention<DPL, GC_>(s, grid, q, heads, kv_heads, k_cache, v_cache, block_size, block_tables, max_blocks, seq_of_row, positions, dst)
    switch (gc) {
    case 1: FS_ATTN(1); break;
    case 2: FS_ATTN(2); break;
    case 4: FS_ATTN(4); break;
    default:
        if constexpr (DPL <= 4) FS_ATTN(8);
        else FS_ATTN(4);  // D = 256: 8 heads would pass 48 KiB of shared memory
        break;
    }
#undef FS_ATTN
}

}  // namespace

extern "C" FS_API fs_status fs_cuda_attention(fs_stream stream, const float* q, int rows, int heads, int kv_heads,
                                              int head_dim, const uint16_t* k_cache, const uint16_t* v_cache,
                                              int block_size, const int32_t* block_tables, int max_blocks,
                                              const int32_t* seq_of_row, const int32_t* positions, float* dst) {
    FS_API_BEGIN
    FS_CHECK_ARG(q && k_cache && v_cache && block_tables && seq_of_row && positions && dst, "attention: null pointer");
    FS_CHECK_ARG(rows >= 0 && heads > 0 && kv_heads > 0 && heads % kv_heads == 0,
                 "attention: bad heads %d / kv_heads %d (heads must be a multiple of kv_heads), rows %d", heads,
                 kv_heads, rows);
    FS_CHECK_ARG(block_size > 0 && max_blocks > 0, "attention: bad block_size %d / max_blocks %d", block_size,
                 max_blocks);
    FS_CHECK_ARG(((uintptr_t)k_cache & 15u) == 0 && ((uintptr_t)v_cache & 15u) == 0,
                 "attention: k_cache and v_cache must be 16-byte aligned");
    if (head_dim != 64 && head_dim != 96 && head_dim != 128 && head_dim != 256)
        return fs::set_error(FS_ERR_UNSUPPORTED, __FILE__, __LINE__,
                             "attention: head_dim %d is not built (64, 96, 128, 256 are)", head_dim);
    if (rows == 0) return FS_OK;
    const int group = heads / kv_heads;
    const int gc_max = head_dim == 256 ? 4 : 8;
    int gc = 1;
    while (gc < group && gc < gc_max) gc *= 2;
    const dim3 grid((unsigned)rows, (unsigned)kv_heads, (unsigned)((group + gc - 1) / gc));
    FS_CHECK_ARG(kv_heads <= 65535 && grid.z <= 65535, "attention: kv_heads %d too large", kv_heads);
    cudaStream_t s = (cudaStream_t)stream;
    switch (head_dim) {
    case 64: launch_attention_gc<2>(gc, s, grid, q, heads, kv_heads, k_cache, v_cache, block_size, block_tables, max_blocks, seq_of_row, positions, dst); break;
    case 96: launch_attention_gc<3>(gc, s, grid, q, heads, kv_heads, k_cache, v_cache, block_size, block_tables, max_blocks, seq_of_row, positions, dst); break;
    case 128: launch_attention_gc<4>(gc, s, grid, q, heads, kv_heads, k_cache, v_cache, block_size, block_tables, max_blocks, seq_of_row, positions, dst); break;
    default: launch_attention_gc<8>(gc, s, grid, q, heads, kv_heads, k_cache, v_cache, block_size, block_tables, max_blocks, seq_of_row, positions, dst); break;
    }
    FS_LAUNCH_CHECK("attention_kernel");
    return FS_OK;
    FS_API_END
}
