// Token sampling on the device: greedy arg-max, or temperature + top-k + top-p with a counter-based generator.
//
// One CTA (1024 threads) per row. Probabilities p = exp((logit - max) / T) go to the workspace, and their masses are
// summed as 40-bit fixed point in 64-bit integers, so every sum is exact and a (seed, counter) always picks the same
// token whatever the thread timing. The kept set (top-k, then the smallest prefix by probability that reaches top-p)
// is found without sorting: a 4-pass radix select over the probabilities' float bits (monotone for p >= 0) finds the
// threshold value tau; all tokens above tau are kept and, among tokens equal to tau, the lowest ids first as needed.
// The draw u = Philox4x32-10(key = seeds[r], counter = counters[r]) in [0, 1) then picks the token where the running mass in
// id order passes u * kept mass.
#include "common.cuh"

#include <limits.h>

namespace {

constexpr int kSampleThreads = 1024;
constexpr float kFixedOne = 1099511627776.0f;  // 2^40

__device__ __forceinline__ unsigned long long fixed_mass(float p) { return (unsigned long long)__float2ull_rz(p * kFixedOne); }

__device__ __forceinline__ void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        const uint32_t lo0 = 0xD2511F53u * c[0], hi0 = __umulhi(0xD2511F53u, c[0]);
        const uint32_t lo1 = 0xCD9E8D57u * c[2], hi1 = __umulhi(0xCD9E8D57u, c[2]);
        const uint32_t n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0; c[1] = lo1; c[2] = n2; c[3] = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
}

template <typename T>
__device__ __forceinline__ T warp_inclusive_scan(T v) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const T u = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += u;
    }
    return v;
}

// Exclusive prefix over the block in thread order; *total gets the block's sum. scratch: 33 T. Has barriers.
template <typename T>
__device__ __forceinline__ T block_exclusive_scan(T v, T* scratch, T* total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const T inc = warp_inclusive_scan(v);
    __syncthreads();  // scratch may still be read by the previous call
    if (lane == 31) scratch[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        const T w = lane < warps ? scratch[lane] : T(0);
        const T wi = warp_inclusive_scan(w);
        __syncwarp();
        if (lane < warps) scratch[lane] = wi - w;
        if (lane == 31) scratch[32] = wi;
    }
    __syncthreads();
    *total = scratch[32];
    return scratch[warp] + inc - v;
}

__global__ void __launch_bounds__(kSampleThreads)
sample_kernel(const float* __restrict__ logits, int vocab, const float* __restrict__ temperature,
              const float* __restrict__ top_p, const int32_t* __restrict__ top_k, const uint64_t* __restrict__ seeds,
              const uint64_t* __restrict__ counters, float* __restrict__ probs, int32_t* __restrict__ out_tokens) {
    __shared__ float s_val[32];
    __shared__ int s_idx[32];
    __shared__ unsigned int hist_cnt[256];
    __shared__ unsigned long long hist_mass[256];
    __shared__ unsigned long long s_u64[33];
    __shared__ int s_int[33];
    __shared__ unsigned int s_prefix;
    __shared__ int s_token;

    const int row = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const float* lg = logits + (size_t)row * vocab;
    float* p = probs + (size_t)row * vocab;

    // Arg-max, lowest id on ties; NaN never wins. Each thread scans ids in increasing order, so a strict ">" keeps
    // its lowest id, and the tree below breaks equal values by id.
    float bv = -INFINITY;
    int bi = INT_MAX;
    for (int i = tid; i < vocab; i += blockDim.x) {
        const float v = lg[i];
        if (v > bv || (bi == INT_MAX && v == -INFINITY)) { bv = v; bi = i; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
    }
    if (lane == 0) { s_val[warp] = bv; s_idx[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
        bv = lane < (int)(blockDim.x >> 5) ? s_val[lane] : -INFINITY;
        bi = lane < (int)(blockDim.x >> 5) ? s_idx[lane] : INT_MAX;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
        }
        if (lane == 0) { s_val[0] = bv; s_idx[0] = bi == INT_MAX ? 0 : bi; }
    }
    __syncthreads();
    const float vmax = s_val[0];
    const int argmax = s_idx[0];
    const float temp = temperature[row];
    if (!(temp > 0.f) || vmax == -INFINITY || !isfinite(vmax)) {
        if (tid == 0) out_tokens[row] = argmax;
        return;
    }

    const float inv_t = 1.f / temp;
    unsigned long long z = 0;
    for (int i = tid; i < vocab; i += blockDim.x) {
        const float v = lg[i];
        const float e = v == v ? expf((v - vmax) * inv_t) : 0.f;
        p[i] = e;
        z += fixed_mass(e);
    }
    unsigned long long z_total;
    (void)block_exclusive_scan<unsigned long long>(z, s_u64, &z_total);

    const int k = top_k ? top_k[row] : 0;
    const float tp = top_p ? top_p[row] : 1.f;
    const bool use_k = k > 0 && k < vocab, use_p = tp > 0.f && tp < 1.f;
    // Kept set: p > tau, plus the first `need` (by id) of the tokens with p == tau.
    unsigned int tau = 0;
    int need = INT_MAX;
    if (use_k || use_p) {
        // top_p less 1e-6 of slack: float top_p (0.8f is a hair above 0.8) would otherwise pull in one token too
        // many at an exact boundary. The same expression as CounterSampler's, in double, so host and device agree.
        const double want_mass = ((double)tp - 1e-6) * (double)z_total;
        const unsigned long long target_mass = use_p ? (want_mass > 1.0 ? (unsigned long long)want_mass : 1ull) : ULLONG_MAX;
        const unsigned int target_cnt = use_k ? (unsigned int)k : UINT_MAX;
        unsigned int prefix = 0, mask = 0, cnt_above = 0;
        unsigned long long mass_above = 0;
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (int i = tid; i < 256; i += blockDim.x) { hist_cnt[i] = 0; hist_mass[i] = 0; }
            __syncthreads();
            for (int i = tid; i < vocab; i += blockDim.x) {
                const float e = p[i];
                const unsigned int b = __float_as_uint(e);
                if ((b & mask) == prefix) {
                    const unsigned int d = (b >> shift) & 255u;
                    atomicAdd(&hist_cnt[d], 1u);
                    atomicAdd(&hist_mass[d], fixed_mass(e));
                }
            }
            __syncthreads();
            if (tid == 0) {
                // From the largest bin down, the first bin whose inclusion reaches a target holds tau.
                unsigned int c = cnt_above, sel = 0;
                unsigned long long sm = mass_above;
                for (int d = 255; d >= 0; --d) {
                    if (c + hist_cnt[d] >= target_cnt || sm + hist_mass[d] >= target_mass) { sel = (unsigned int)d; break; }
                    c += hist_cnt[d];
                    sm += hist_mass[d];
                }
                s_prefix = prefix | (sel << shift);
                s_int[0] = (int)c;
                s_u64[0] = sm;
                s_int[1] = (int)hist_cnt[sel];
            }
            __syncthreads();
            prefix = s_prefix;
            mask |= 255u << shift;
            cnt_above = (unsigned int)s_int[0];
            mass_above = s_u64[0];
            const unsigned int ties = (unsigned int)s_int[1];
            __syncthreads();  // s_* are rewritten by the next pass
            if (shift == 0) {
                tau = prefix;
                unsigned long long n = ties;
                if (use_k) n = min(n, (unsigned long long)(target_cnt - cnt_above));
                const unsigned long long q_tau = fixed_mass(__uint_as_float(tau));
                if (use_p && q_tau > 0) {
                    const unsigned long long rest = target_mass > mass_above ? target_mass - mass_above : 0;
                    n = min(n, (rest + q_tau - 1) / q_tau);
                }
                need = (int)max(1ull, n);
            }
        }
    }

    // Contiguous id ranges per thread, so "lowest ids first" and "in id order" are prefix sums over threads.
    const int per = (vocab + (int)blockDim.x - 1) / (int)blockDim.x;
    const int i0 = min(vocab, tid * per), i1 = min(vocab, i0 + per);
    int my_ties = 0;
    for (int i = i0; i < i1; ++i) my_ties += __float_as_uint(p[i]) == tau;
    int ties_total;
    const int tie_base = block_exclusive_scan<int>(my_ties, s_int, &ties_total);
    unsigned long long my_mass = 0;
    for (int i = i0, r = tie_base; i < i1; ++i) {
        const unsigned int b = __float_as_uint(p[i]);
        if (b > tau || (b == tau && r++ < need)) my_mass += fixed_mass(p[i]);
    }
    unsigned long long kept;
    const unsigned long long mass_base = block_exclusive_scan<unsigned long long>(my_mass, s_u64, &kept);

    if (tid == 0) s_token = argmax;  // only if the kept mass is zero (every probability below 2^-40)
    __syncthreads();
    if (kept > 0) {
        const uint64_t step = counters ? counters[row] : 0ull;
        uint32_t c[4] = {(uint32_t)step, (uint32_t)(step >> 32), 0u, 0u};
        const uint64_t seed = seeds ? seeds[row] : 0ull;
        philox4x32_10(c, (uint32_t)seed, (uint32_t)(seed >> 32));
        const double u = (double)(((unsigned long long)(c[0] >> 5) << 26) | (c[1] >> 6)) * (1.0 / 9007199254740992.0);
        unsigned long long target = (unsigned long long)(u * (double)kept);
        if (target >= kept) target = kept - 1;
        if (my_mass > 0 && target >= mass_base && target < mass_base + my_mass) {
            unsigned long long run = mass_base;
            for (int i = i0, r = tie_base; i < i1; ++i) {
                const unsigned int b = __float_as_uint(p[i]);
                if (b > tau || (b == tau && r++ < need)) {
                    run += fixed_mass(p[i]);
                    if (target < run) { s_token = i; break; }
                }
            }
        }
    }
    __syncthreads();
    if (tid == 0) out_tokens[row] = s_token;
}

size_t workspace_bytes(int rows, int vocab) {
    if (rows <= 0 || vocab <= 0) return 0;
    return (size_t)rows * (size_t)vocab * sizeof(float);
}

}  // namespace

extern "C" {

FS_API size_t fs_cuda_sample_workspace_bytes(int rows, int vocab) {
    try {
        return workspace_bytes(rows, vocab);
    } catch (...) {
        return 0;
    }
}

FS_API fs_status fs_cuda_sample(fs_stream stream, const float* logits, int rows, int vocab, const float* temperature,
                                const float* top_p, const int32_t* top_k, const uint64_t* seeds, const uint64_t* counters,
                                void* workspace, size_t workspace_bytes_given, int32_t* out_tokens) {
    FS_API_BEGIN
    FS_CHECK_ARG(logits && temperature && out_tokens, "sample: null pointer (logits, temperature and out_tokens are required)");
    FS_CHECK_ARG(rows >= 0 && vocab > 0, "sample: bad shape rows %d vocab %d", rows, vocab);
    if (rows == 0) return FS_OK;
    const size_t need = workspace_bytes(rows, vocab);
    FS_CHECK_ARG(workspace && workspace_bytes_given >= need && ((uintptr_t)workspace & 3u) == 0,
                 "sample: workspace %p of %zu bytes; need %zu bytes, 4-byte aligned (fs_cuda_sample_workspace_bytes)",
                 workspace, workspace_bytes_given, need);
    sample_kernel<<<rows, kSampleThreads, 0, (cudaStream_t)stream>>>(logits, vocab, temperature, top_p, top_k, seeds,
                                                                     counters, static_cast<float*>(workspace), out_tokens);
    FS_LAUNCH_CHECK("sample_kernel");
    return FS_OK;
    FS_API_END
}

}  // extern "C"
