// Hopper (sm_90a) warpgroup MMA for the FP8 GEMM: shared-memory matrix descriptors and one 64x128x32 E4M3
// product. Only compiled where the toolkit has FP8 wgmma (CUDA 12.4+) and the arch is sm_90a; FS_WGMMA says so.
#pragma once

#include "common.cuh"

#if FS_FP8_MMA_TOOLKIT && defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FS_WGMMA 1
#else
#define FS_WGMMA 0
#endif

namespace fs {

// Matrix descriptor of a K-major operand in shared memory without swizzling. The operand is stored as "core
// matrices" of 8 rows x 16 bytes (128 contiguous bytes); lbo is the byte distance between core matrices adjacent in
// k, sbo between core matrices adjacent in m (or n), i.e. between groups of 8 rows. Fields (PTX "Matrix Descriptor
// Format"): start address >> 4 in bits 0-13, lbo >> 4 in 16-29, sbo >> 4 in 32-45, base offset 0, swizzle 0 (none).
__device__ __forceinline__ uint64_t wgmma_desc(const void* smem, uint32_t lbo, uint32_t sbo) {
    const uint32_t addr = (uint32_t)__cvta_generic_to_shared(smem);
    return (uint64_t)((addr & 0x3FFFFu) >> 4) | ((uint64_t)((lbo & 0x3FFFFu) >> 4) << 16) |
           ((uint64_t)((sbo & 0x3FFFFu) >> 4) << 32);
}

#if FS_WGMMA
// Shared memory written by ordinary stores (or cp.async) must be made visible to the async proxy that wgmma reads.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }

// d (64 x 128, F32, the warpgroup's 128 threads holding 64 values each) += A (64 x 32 E4M3) * B (32 x 128 E4M3),
// both K-major in shared memory. Thread layout of d (warp w of the warpgroup, lane = 4 g + t), PTX's m64nNk32 D
// fragment: d[4 j + 0/1] = D[16 w + g][8 j + 2 t + 0/1], d[4 j + 2/3] = D[16 w + g + 8][8 j + 2 t + 0/1].
// accumulate = 0 overwrites d instead of adding.
__device__ __forceinline__ void wgmma_e4m3_m64n128k32(float d[64], uint64_t desc_a, uint64_t desc_b, int accumulate) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}
#endif

}  // namespace fs
