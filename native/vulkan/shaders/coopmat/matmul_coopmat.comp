#version 450
// MatMul as matmul.comp computes it (dst[r, n] = Σ_k x[r, k] · w[n, k] (· scale[n]) (+ bias[n])) on the device's
// cooperative-matrix units (VK_KHR_cooperative_matrix: tensor cores), for F16 and FP8 E4M3 weights, both exact in F16.
// Needs a compiler with GL_KHR_cooperative_matrix (native/vulkan/glslc-coopmat.sh); the backend uses it only where the
// device offers an F16 x F16 + F32 subgroup-scope shape (CM x CN x CK, specialization constants 1-3).
//
// Numerics stay the CPU path's within F32 rounding: each activation row is scaled by a power of two s (so its largest
// element is below 2^14, far from F16's 65504), split into hi = x·s cut to F16's 11 significant bits and
// lo = f16(x·s − hi), and both halves are multiplied by the F16 weights with F32 accumulation: hi + lo carries 22 bits
// of x (F32 has 24), every product is exact in F32, and the result is divided by s again (exact). Two tensor-core
// products per tile are still far cheaper than one on the F32 ALUs. hi is cut with a mask, not by converting to F16 and
// back: a compiler may fold f32(f16(v)) into v, which made lo zero on lavapipe (the hi-only error, 2e-4, twice
// MatMul's tolerance, caught by check-backend there).
//
// Tiling: a workgroup of 4 subgroups (of the pipeline's required size: 32 on NVIDIA, 8 on lavapipe) owns a BM × BN
// output block (BM = 2·RM·CM, BN = 2·RN·CN); subgroup (sr, sc) the RM × RN fragments of its quarter. k is walked in
// steps of BK = 2·CK: the x block (split) and the decoded weight block are staged in shared memory, from where the
// fragments are loaded. The accumulators go through shared memory at the end, one half of the block at a time (which
// keeps 16x16x16 within 32 KiB, lavapipe's limit), where the scales, the bias and the matrix edges are applied. Blocks
// are column tiles gx + gy · groupsX and row tiles z, as in matmul_tiled.comp.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#include "../common.glsl"
#define RM 2
#define RN 2
layout(local_size_x_id = 4) in; // 4 subgroups: 4 x the subgroup size the pipeline requires
layout(constant_id = 0) const int DTYPE = DT_FP8;
layout(constant_id = 1) const uint CM = 16;
layout(constant_id = 2) const uint CN = 16;
layout(constant_id = 3) const uint CK = 16;
layout(constant_id = 4) const uint THREADS = 128;
const uint BM = 2u * RM * CM;
const uint BN = 2u * RN * CN;
const uint BK = 2u * CK;
// Shared lines padded by 8 halves (16 bytes), which keeps every fragment load 16-byte aligned and staggers the banks.
const uint LD = BK + 8u;
const uint LDC = BN + 4u;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer W { uint w[]; };
layout(std430, binding = 2) readonly buffer Scales { float scale[]; };
layout(std430, binding = 3) readonly buffer Bias { float bias[]; };
layout(std430, binding = 4) writeonly buffer Dst { float dst[]; };
layout(push_constant) uniform P { uint rows; uint k; uint n; uint hasBias; uint groupsX; } p;
shared float16_t xhi[BM * LD];
shared float16_t xlo[BM * LD];
shared float16_t ws[BN * LD];   // [column][k]: B = wᵀ is column-major with stride LD
shared float out_[BM / 2u * LDC]; // one half of the rows at a time
shared float rowScale[BM];

// Exact: every F16 and E4M3 value is an F16.
float16_t weight16(uint e) { return float16_t(weight_from(DTYPE, w[weight_word(DTYPE, e)], e)); }

void main()
{
    uint col0 = (gl_WorkGroupID.x + gl_WorkGroupID.y * p.groupsX) * BN;
    if (col0 >= p.n) return; // whole workgroup: uniform
    uint row0 = gl_WorkGroupID.z * BM;
    uint tid = gl_LocalInvocationID.x, threads = gl_WorkGroupSize.x;
    uint sg = gl_SubgroupID, lane = gl_SubgroupInvocationID;

    // Each subgroup finds the largest |x| of rows sg, sg + 4, ...; s = 2^(14 - e) for a maximum in [2^(e-1), 2^e).
    for (uint r = sg; r < BM; r += 4u)
    {
        float m = 0.0;
        if (row0 + r < p.rows)
            for (uint kk = lane; kk < p.k; kk += gl_SubgroupSize) m = max(m, abs(x[(row0 + r) * p.k + kk]));
        m = subgroupMax(m);
        if (subgroupElect())
        {
            int e;
            frexp(m, e);
            rowScale[r] = (m > 0.0 && !isinf(m) && !isnan(m)) ? ldexp(1.0, clamp(14 - e, -100, 100)) : 1.0;
        }
    }
    barrier();

    uint sr = sg >> 1, sc = sg & 1u;
    coopmat<float, gl_ScopeSubgroup, CM, CN, gl_MatrixUseAccumulator> acc[RM][RN];
    [[unroll]] for (int i = 0; i < RM; i++)
        [[unroll]] for (int j = 0; j < RN; j++) acc[i][j] = coopmat<float, gl_ScopeSubgroup, CM, CN, gl_MatrixUseAccumulator>(0.0);

    for (uint k0 = 0u; k0 < p.k; k0 += BK)
    {
        // Stage: consecutive threads take consecutive k of one row (coalesced reads); outside the matrix: 0.
        for (uint e = tid; e < BM * BK; e += threads)
        {
            uint r = e / BK, kk = e % BK;
            float v = (row0 + r < p.rows && k0 + kk < p.k) ? x[(row0 + r) * p.k + k0 + kk] * rowScale[r] : 0.0;
            // 1 + 10 mantissa bits: exact in F16 down to 2^-14 (below that, 2^-27 of the row's largest, F16's
            // subnormals drop bits that cannot matter)
            float h = uintBitsToFloat(floatBitsToUint(v) & 0xFFFFE000u);
            xhi[r * LD + kk] = float16_t(h);
            xlo[r * LD + kk] = float16_t(v - h);
        }
        for (uint e = tid; e < BN * BK; e += threads)
        {
            uint c = e / BK, kk = e % BK;
            ws[c * LD + kk] = (col0 + c < p.n && k0 + kk < p.k) ? weight16((col0 + c) * p.k + k0 + kk) : float16_t(0.0);
        }
        barrier();
        [[unroll]] for (uint kk = 0u; kk < BK; kk += CK)
        {
            coopmat<float16_t, gl_ScopeSubgroup, CK, CN, gl_MatrixUseB> b[RN];
            [[unroll]] for (int j = 0; j < RN; j++)
                coopMatLoad(b[j], ws, ((sc * RN + uint(j)) * CN) * LD + kk, LD, gl_CooperativeMatrixLayoutColumnMajor);
            [[unroll]] for (int i = 0; i < RM; i++)
            {
                uint a0 = ((sr * RM + uint(i)) * CM) * LD + kk;
                coopmat<float16_t, gl_ScopeSubgroup, CM, CK, gl_MatrixUseA> hi, lo;
                coopMatLoad(hi, xhi, a0, LD, gl_CooperativeMatrixLayoutRowMajor);
                coopMatLoad(lo, xlo, a0, LD, gl_CooperativeMatrixLayoutRowMajor);
                [[unroll]] for (int j = 0; j < RN; j++)
                {
                    acc[i][j] = coopMatMulAdd(hi, b[j], acc[i][j]);
                    acc[i][j] = coopMatMulAdd(lo, b[j], acc[i][j]);
                }
            }
        }
        barrier();
    }

    // Half h of the block's rows belongs to subgroup row sr = h.
    const uint HM = BM / 2u;
    [[unroll]] for (uint h = 0u; h < 2u; h++)
    {
        if (sr == h)
            [[unroll]] for (int i = 0; i < RM; i++)
                [[unroll]] for (int j = 0; j < RN; j++)
                    coopMatStore(acc[i][j], out_, (uint(i) * CM) * LDC + (sc * RN + uint(j)) * CN, LDC, gl_CooperativeMatrixLayoutRowMajor);
        barrier();
        for (uint e = tid; e < HM * BN; e += threads)
        {
            uint r = h * HM + e / BN, c = e % BN;
            if (row0 + r >= p.rows || col0 + c >= p.n) continue;
            float v = out_[(e / BN) * LDC + c] / rowScale[r];
            if (DTYPE == DT_FP8) v *= scale[col0 + c];
            if (p.hasBias != 0u) v += bias[col0 + c];
            dst[(row0 + r) * p.n + col0 + c] = v;
        }
        barrier();
    }
}
