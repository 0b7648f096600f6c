#version 450
// MatMul as matmul.comp computes it (dst[r, n] = Σ_k x[r, k] · w[n, k] (· scale[n]) (+ bias[n]), F32 accumulation),
// tiled for many activation rows (prefill, large decode batches): a workgroup owns a BM × BN block of the output and
// walks k in steps of BK, staging the x block and the decoded weight block in shared memory, so each weight is read
// from memory once per BM rows (the GEMV shaders: once per 8) and each staged value feeds TM × TN multiply-adds from
// registers. Thread t computes rows ty + 8i and columns tx + 16j (i, j < 4; ty = t / 16, tx = t % 16): strided, so
// the 16 threads reading one row of a shared tile read 16 consecutive words. Blocks are column tiles gx + gy · groupsX
// (a dispatch's x dimension may be capped at 65535) and row tiles z.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#include "common.glsl"
#define BM 32
#define BN 64
#define BK 32
#define TM 4
#define TN 4
#define THREADS 128
layout(local_size_x = THREADS) in;
layout(constant_id = 0) const int DTYPE = DT_F32;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer W { uint w[]; };
layout(std430, binding = 2) readonly buffer Scales { float scale[]; };
layout(std430, binding = 3) readonly buffer Bias { float bias[]; };
layout(std430, binding = 4) writeonly buffer Dst { float dst[]; };
layout(push_constant) uniform P { uint rows; uint k; uint n; uint hasBias; uint groupsX; } p;
// [k][row] and [k][column]: a thread's multiply-adds read along the second index. One word of padding per line keeps
// the transposing stores (consecutive threads write consecutive k) off a single bank.
shared float xs[BK][BM + 1];
shared float ws[BK][BN + 1];

float weight_at(uint e) { return weight_from(DTYPE, w[weight_word(DTYPE, e)], e); }

void main()
{
    uint col0 = (gl_WorkGroupID.x + gl_WorkGroupID.y * p.groupsX) * BN;
    if (col0 >= p.n) return; // whole workgroup: uniform
    uint row0 = gl_WorkGroupID.z * BM;
    uint tid = gl_LocalInvocationID.x;
    uint tx = tid % 16u, ty = tid / 16u;
    float acc[TM][TN];
    [[unroll]] for (int i = 0; i < TM; i++)
        [[unroll]] for (int j = 0; j < TN; j++) acc[i][j] = 0.0;

    for (uint k0 = 0u; k0 < p.k; k0 += BK)
    {
        // Stage: element e of a block is (line e / BK, k e % BK), so consecutive threads read consecutive k of one
        // activation row or weight row. Outside the matrix: 0, which adds nothing.
        [[unroll]] for (uint i = 0u; i < BM * BK / THREADS; i++)
        {
            uint e = tid + i * THREADS;
            uint r = row0 + e / BK, kk = k0 + e % BK;
            xs[e % BK][e / BK] = (r < p.rows && kk < p.k) ? x[r * p.k + kk] : 0.0;
        }
        [[unroll]] for (uint i = 0u; i < BN * BK / THREADS; i++)
        {
            uint e = tid + i * THREADS;
            uint c = col0 + e / BK, kk = k0 + e % BK;
            ws[e % BK][e / BK] = (c < p.n && kk < p.k) ? weight_at(c * p.k + kk) : 0.0;
        }
        barrier();
        [[unroll]] for (uint kk = 0u; kk < BK; kk++)
        {
            float a[TM], b[TN];
            [[unroll]] for (int i = 0; i < TM; i++) a[i] = xs[kk][ty + 8u * uint(i)];
            [[unroll]] for (int j = 0; j < TN; j++) b[j] = ws[kk][tx + 16u * uint(j)];
            [[unroll]] for (int i = 0; i < TM; i++)
                [[unroll]] for (int j = 0; j < TN; j++) acc[i][j] = fma(a[i], b[j], acc[i][j]);
        }
        barrier();
    }

    [[unroll]] for (int j = 0; j < TN; j++)
    {
        uint c = col0 + tx + 16u * uint(j);
        if (c >= p.n) continue;
        float s = DTYPE == DT_FP8 ? scale[c] : 1.0;
        float b = p.hasBias != 0u ? bias[c] : 0.0;
        [[unroll]] for (int i = 0; i < TM; i++)
        {
            uint r = row0 + ty + 8u * uint(i);
            if (r < p.rows) dst[r * p.n + c] = acc[i][j] * s + b;
        }
    }
}
