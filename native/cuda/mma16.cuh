// Tensor-core building block for 16-bit weights (F16, BF16): one m16n8k16 product with F32 accumulation, and the
// F32 -> 16-bit pair packing of activations that feed it.
#pragma once

#include "common.cuh"

namespace fs {

// Fragment layout (PTX m16n8k16, 16-bit types), g = lane / 4, t = lane % 4, each register two consecutive k:
//   a0 = A[g][t*2..], a1 = A[g+8][t*2..], a2 = A[g][8+t*2..], a3 = A[g+8][8+t*2..]
//   b0 = B[t*2..][g], b1 = B[8+t*2..][g]
//   c[0], c[1] = C[g][t*2, t*2+1],  c[2], c[3] = C[g+8][t*2, t*2+1]
// As for the FP8 product, callers may feed any fixed permutation of k to both operands.

// Two F32 to a 16-bit pair of type T, first in the low half, round to nearest even.
template <fs_dtype T>
__device__ __forceinline__ uint32_t pack_16x2(float lo, float hi) {
    static_assert(T == FS_F16 || T == FS_BF16, "16-bit types only");
    if constexpr (T == FS_BF16) {
        const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<const uint32_t*>(&v);
    } else {
        const __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<const uint32_t*>(&v);
    }
}

// c += A (16x16) * B (16x8), T operands, F32 accumulation.
template <fs_dtype T>
__device__ __forceinline__ void mma_16x8x16(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                            uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if constexpr (T == FS_BF16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
#else
    // Device code below sm_80 is never built (CMake targets 80;89;90); the host pass needs a body.
    (void)c; (void)a0; (void)a1; (void)a2; (void)a3; (void)b0; (void)b1;
    __trap();
#endif
}

}  // namespace fs
