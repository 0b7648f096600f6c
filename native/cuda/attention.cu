// Causal grouped-query attention over the paged BF16 KV cache, one kernel for decode and prefill rows alike.
//
// One CTA per (row, kv head, chunk of up to 8 query heads of that kv head's group): the group's query heads share
// every K and V load. When that gives fewer CTAs than SMs (small-batch decode) and the GPU is sm_90, a thread block
// cluster of up to 8 CTAs takes each row instead, splitting its keys, and the CTAs merge through distributed shared
// memory: flash-decoding without the global scratch buffer the ABI does not have. The CTA's 8 warps split the row's keys 32 at a time (split-K inside the CTA); each warp keeps an
// online softmax (running max, running sum, F32 accumulator) per query head, and the warps' partial results merge
// in shared memory at the end with the usual max rescaling. Scores: each lane takes one key and does its full dot
// product against the queries held in shared memory (broadcast reads); V: each lane owns head_dim/32 contiguous
// dimensions and walks the warp's 32 keys with their probabilities from shared memory.
#include "common.cuh"

#include <cooperative_groups.h>

#include <atomic>

namespace cg = cooperative_groups;

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

// Merges the warps' online-softmax partials of head g, dimension d: max, sum of exp, unnormalised output.
template <int D, int GC>
__device__ __forceinline__ void merge_warps(const float* m_s, const float* l_s, const float* acc_s, int g, int d,
                                            float& mx, float& sum, float& o) {
    mx = -INFINITY;
#pragma unroll
    for (int wi = 0; wi < kAttnWarps; ++wi) mx = fmaxf(mx, m_s[wi * GC + g]);
    sum = 0.f;
    o = 0.f;
    if (mx == -INFINITY) return;
#pragma unroll
    for (int wi = 0; wi < kAttnWarps; ++wi) {
        const float c = exp2f(m_s[wi * GC + g] - mx);  // 0 for a warp that saw no key
        sum += l_s[wi * GC + g] * c;
        o += acc_s[(wi * GC + g) * D + d] * c;
    }
}

// DPL = head_dim / 32 dims per lane; GC = query heads per CTA. kCluster: the row's keys are split over the `splits`
// CTAs of a thread block cluster (sm_90), which merge their partial softmax results through distributed shared
// memory; otherwise splits == 1.
// Two CTAs per SM: without the bound ptxas squeezes the small variants to 48 registers and spills.
template <int DPL, int GC, bool kCluster>
__global__ void __launch_bounds__(kAttnWarps * 32, 2)
attention_kernel(const float* __restrict__ q, int heads, int kv_heads, const uint16_t* __restrict__ k_cache,
                 const uint16_t* __restrict__ v_cache, int block_size, const int32_t* __restrict__ block_tables,
                 int max_blocks, const int32_t* __restrict__ seq_of_row, const int32_t* __restrict__ positions,
                 float* __restrict__ dst, int splits) {
    constexpr int D = DPL * 32;
    extern __shared__ __align__(16) float smem[];
    float* q_s = smem;                             // [GC][D], pre-scaled by log2(e) / sqrt(D)
    float* p_s = q_s + GC * D;                     // [warps][32][GC]
    float* acc_s = p_s + kAttnWarps * 32 * GC;     // [warps][GC][D]
    float* m_s = acc_s + kAttnWarps * GC * D;      // [warps][GC]
    float* l_s = m_s + kAttnWarps * GC;            // [warps][GC]

    const int row = (int)blockIdx.x / splits, rank = (int)blockIdx.x % splits, kh = blockIdx.y;
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
    for (int base = (rank * kAttnWarps + warp) * 32; base < n_keys; base += splits * kAttnWarps * 32) {
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
    if constexpr (!kCluster) {
        for (int i = threadIdx.x; i < nh * D; i += blockDim.x) {
            const int g = i / D, d = i % D;
            float mx, sum, o;
            merge_warps<D, GC>(m_s, l_s, acc_s, g, d, mx, sum, o);
            // A row with no key to attend to (a negative position) gets zeros rather than NaN.
            dst[q_row + (size_t)(h0 + g) * D + d] = sum > 0.f ? o / sum : 0.f;
        }
    } else {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        // This CTA's partial (max, sum, unnormalised output) per head, in the space q_s and p_s no longer need.
        float* cta_o = q_s;       // [GC][D]
        float* cta_m = p_s;       // [GC]
        float* cta_l = p_s + GC;  // [GC]
        for (int i = threadIdx.x; i < GC * D; i += blockDim.x) {
            const int g = i / D, d = i % D;
            float mx, sum, o;
            merge_warps<D, GC>(m_s, l_s, acc_s, g, d, mx, sum, o);
            cta_o[i] = o;
            if (d == 0) {
                cta_m[g] = mx;
                cta_l[g] = sum;
            }
        }
        cg::cluster_group cluster = cg::this_cluster();
        cluster.sync();  // every CTA's partial is written and visible cluster-wide
        for (int i = rank * (int)blockDim.x + threadIdx.x; i < nh * D; i += splits * (int)blockDim.x) {
            const int g = i / D, d = i % D;
            float mx = -INFINITY;
            for (int r = 0; r < splits; ++r) mx = fmaxf(mx, cluster.map_shared_rank(cta_m, r)[g]);
            float sum = 0.f, o = 0.f;
            if (mx != -INFINITY)
                for (int r = 0; r < splits; ++r) {
                    const float c = exp2f(cluster.map_shared_rank(cta_m, r)[g] - mx);
                    sum += cluster.map_shared_rank(cta_l, r)[g] * c;
                    o += cluster.map_shared_rank(cta_o, r)[i] * c;
                }
            dst[q_row + (size_t)(h0 + g) * D + d] = sum > 0.f ? o / sum : 0.f;
        }
        cluster.sync();  // no CTA leaves while another still reads its shared memory
#else
        __trap();  // the host launches clusters only for kernels built for sm_90 or newer
#endif
    }
}

size_t attention_smem(int dpl, int gc) {
    const int d = dpl * 32;
    return sizeof(float) * ((size_t)gc * d + kAttnWarps * 32 * gc + (size_t)kAttnWarps * gc * d + 2 * kAttnWarps * gc);
}

struct AttnArgs {
    cudaStream_t stream;
    dim3 grid;  // (rows, kv_heads, head chunks)
    int splits; // CTAs per row in a cluster; 1 = no cluster
    const float* q;
    int heads, kv_heads;
    const uint16_t *k_cache, *v_cache;
    int block_size;
    const int32_t* block_tables;
    int max_blocks;
    const int32_t *seq_of_row, *positions;
    float* dst;
};

template <int DPL, int GC>
cudaError_t launch_attention(const AttnArgs& a) {
    const size_t smem = attention_smem(DPL, GC);
    if (a.splits <= 1) {
        attention_kernel<DPL, GC, false><<<a.grid, kAttnWarps * 32, smem, a.stream>>>(
            a.q, a.heads, a.kv_heads, a.k_cache, a.v_cache, a.block_size, a.block_tables, a.max_blocks, a.seq_of_row,
            a.positions, a.dst, 1);
        return cudaSuccess;
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(a.grid.x * a.splits, a.grid.y, a.grid.z);
    cfg.blockDim = dim3(kAttnWarps * 32);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = a.stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = (unsigned)a.splits;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    return cudaLaunchKernelEx(&cfg, attention_kernel<DPL, GC, true>, a.q, a.heads, a.kv_heads, a.k_cache, a.v_cache,
                              a.block_size, a.block_tables, a.max_blocks, a.seq_of_row, a.positions, a.dst, a.splits);
}

template <int DPL>
cudaError_t launch_attention_gc(int gc, const AttnArgs& a) {
    switch (gc) {
    case 1: return launch_attention<DPL, 1>(a);
    case 2: return launch_attention<DPL, 2>(a);
    case 4: return launch_attention<DPL, 4>(a);
    default:
        if constexpr (DPL <= 4) return launch_attention<DPL, 8>(a);
        else return launch_attention<DPL, 4>(a);  // D = 256: 8 heads would pass 48 KiB of shared memory
    }
}

// Per device: SM count, and whether the cluster kernels run there as sm_90 code (compute capability 9.0+ and this
// build's image for it was compiled for sm_90 or newer, not JIT-compiled from older PTX). Cached: looked up once.
struct DeviceTraits {
    int sms;
    bool clusters;
};

DeviceTraits device_traits() {
    static std::atomic<int> cache[64];  // 0 = unknown; else (sms << 1 | clusters) + 1
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) {
        (void)cudaGetLastError();
        return {108, false};
    }
    int v = cache[dev].load(std::memory_order_relaxed);
    if (v == 0) {
        int sms = 0, major = 0;
        cudaFuncAttributes fa;
        bool clusters = false;
        if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) sms = 108;
        if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 9 &&
            cudaFuncGetAttributes(&fa, attention_kernel<4, 1, true>) == cudaSuccess)
            clusters = fa.ptxVersion >= 90 || fa.binaryVersion >= 90;
        (void)cudaGetLastError();
        v = ((sms << 1) | (clusters ? 1 : 0)) + 1;
        cache[dev].store(v, std::memory_order_relaxed);
    }
    --v;
    return {v >> 1, (v & 1) != 0};
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
    AttnArgs a{(cudaStream_t)stream, dim3((unsigned)rows, (unsigned)kv_heads, (unsigned)((group + gc - 1) / gc)), 1,
               q, heads, kv_heads, k_cache, v_cache, block_size, block_tables, max_blocks, seq_of_row, positions, dst};
    FS_CHECK_ARG(kv_heads <= 65535 && a.grid.z <= 65535, "attention: kv_heads %d too large", kv_heads);
    // Few rows (small-batch decode) leave most SMs idle with one CTA per (row, kv head, head chunk); on sm_90 a
    // cluster of up to 8 CTAs then shares each row's keys (flash-decoding without a global scratch buffer).
    const DeviceTraits dt = device_traits();
    const long long ctas = (long long)rows * a.grid.y * a.grid.z;
    if (dt.clusters)
        while (a.splits < 8 && ctas * a.splits * 2 <= dt.sms) a.splits *= 2;
    FS_CHECK_ARG((long long)rows * a.splits <= 2147483647LL, "attention: rows %d too large", rows);
    cudaError_t err;
    switch (head_dim) {
    case 64: err = launch_attention_gc<2>(gc, a); break;
    case 96: err = launch_attention_gc<3>(gc, a); break;
    case 128: err = launch_attention_gc<4>(gc, a); break;
    default: err = launch_attention_gc<8>(gc, a); break;
    }
    if (err != cudaSuccess) return fs::cuda_error(err, "cudaLaunchKernelEx (attention cluster)", __FILE__, __LINE__);
    FS_LAUNCH_CHECK("attention_kernel");
    return FS_OK;
    FS_API_END
}
