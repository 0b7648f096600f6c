// Tensor-core building blocks for the FP8 GEMM: one 16x8x32 E4M3 product (native FP8 mma where the toolkit and arch
// have it, else the E4M3 bytes widened to BF16 in registers and two BF16 mmas), and cp.async.
#pragma once

#include "common.cuh"

namespace fs {

// Fragment layout (PTX m16n8k32, 8-bit types), g = lane / 4, t = lane % 4, each register four consecutive k:
//   a[0] = A[g][t*4..],  a[1] = A[g+8][t*4..],  a[2] = A[g][16+t*4..],  a[3] = A[g+8][16+t*4..]
//   b[0] = B[t*4..][g],  b[1] = B[16+t*4..][g]
//   c[0], c[1] = C[g][t*2, t*2+1],  c[2], c[3] = C[g+8][t*2, t*2+1]
// A dot product does not care in which order k runs as long as A and B agree, so callers may fill "k" with any
// fixed permutation of the real k indices.

// Two E4M3 bytes of w (bytes sel*2 and sel*2+1) to a BF16 pair. The E4M3 exponent and mantissa are moved into BF16's
// fields unchanged, which reads as the value times 2^-120 (subnormals included), and one BF16 FMA by 2^120 rebiases.
// Exact: every E4M3 value is a BF16 value. The NaN bytes (0x7f, 0xff) become a BF16 NaN, which the FMA keeps, so a
// NaN activation (cvt satfinite keeps NaN) poisons its outputs as it does on the FP8 mma path instead of reading as
// 480. The bit move alone is host-callable for native/tests/convert_test.cu.
template <int sel>
__host__ __device__ __forceinline__ uint32_t e4m3x2_to_bf16x2_unscaled(uint32_t w) {
#if defined(__CUDA_ARCH__)
    const uint32_t x = __byte_perm(w, 0u, sel == 0 ? 0x1404 : 0x3424);  // byte b -> high byte of its 16-bit half
#else
    const uint32_t lo = (w >> (sel * 16)) & 0xffu, hi = (w >> (sel * 16 + 8)) & 0xffu;
    const uint32_t x = (lo << 8) | (hi << 24);
#endif
    const uint32_t t = (x & 0x80008000u) | ((x >> 4) & 0x07f007f0u);
    // A NaN byte's exponent and mantissa land as 0x07f0 in its half, the only value that adding 0x0010 carries into
    // bit 11 (and no half carries into the next). Times 15 that bit becomes bits 14..11, which are clear in t, so the
    // add sets them: BF16 exponent all ones, mantissa 0x70, a NaN. Branch-free, three integer ops per pair.
    return t + ((t + 0x00100010u) & 0x08000800u) * 15u;
}

#if !FS_FP8_MMA
template <int sel>
__device__ __forceinline__ uint32_t e4m3x2_to_bf16x2(uint32_t w) {
    const uint32_t t = e4m3x2_to_bf16x2_unscaled<sel>(w);
    uint32_t r;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(t), "r"(0x7b807b80u), "r"(0x80008000u));
    return r;
}

__device__ __forceinline__ void mma_bf16_16x8x16(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                 uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
#endif

// c += A (16x32 E4M3) * B (32x8 E4M3), F32 accumulation.
__device__ __forceinline__ void mma_e4m3_16x8x32(float c[4], const uint32_t a[4], const uint32_t b[2]) {
#if FS_FP8_MMA
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    // BF16 m16n8k16 wants a = (A[g][t*2..+1], A[g+8][t*2..+1], A[g][8+t*2..+1], A[g+8][8+t*2..+1]) and
    // b = (B[t*2..+1][g], B[8+t*2..+1][g]). Taking the low byte pair of each E4M3 register as "k = t*2.." and the high
    // pair as "k = 8+t*2.." maps k consistently for A and B, so the first mma covers E4M3 k 0..15, the second 16..31.
    mma_bf16_16x8x16(c, e4m3x2_to_bf16x2<0>(a[0]), e4m3x2_to_bf16x2<0>(a[1]), e4m3x2_to_bf16x2<1>(a[0]),
                     e4m3x2_to_bf16x2<1>(a[1]), e4m3x2_to_bf16x2<0>(b[0]), e4m3x2_to_bf16x2<1>(b[0]));
    mma_bf16_16x8x16(c, e4m3x2_to_bf16x2<0>(a[2]), e4m3x2_to_bf16x2<0>(a[3]), e4m3x2_to_bf16x2<1>(a[2]),
                     e4m3x2_to_bf16x2<1>(a[3]), e4m3x2_to_bf16x2<0>(b[1]), e4m3x2_to_bf16x2<1>(b[1]));
#else
    // Device code below sm_80 is never built (CMake targets 80;89;90); the host pass needs a body.
    (void)c; (void)a; (void)b;
    __trap();
#endif
}

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes) {
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

}  // namespace fs
