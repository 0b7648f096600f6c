#version 450
// MatMul as matmul.comp computes it (dst[r, n] = Σ_k x[r, k] · w[n, k] (· scale[n]) (+ bias[n]), F32 accumulation),
// for devices with subgroup arithmetic: each subgroup owns whole output columns and reduces with subgroupAdd, so
// there is no shared memory and no barrier. Workgroup g owns columns [g · cols, (g + 1) · cols) (cols in the push
// constants); its subgroups take them in turn, whatever the subgroup size. Rows come in tiles of ROWS (z). Where a
// weight row is a whole number of 16-byte words (p.vec), each lane loads 16 bytes of weights and the matching vec4s of
// x per step: 4 to 16 weights per load, which GPUs and lavapipe (whose every buffer access is a bounds-checked gather)
// both reward.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "common.glsl"
#define ROWS 8
layout(local_size_x = 64) in;
layout(constant_id = 0) const int DTYPE = DT_F32;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 0) readonly buffer X4 { vec4 x4[]; };
layout(std430, binding = 1) readonly buffer W { uint w[]; };
layout(std430, binding = 1) readonly buffer W4 { uvec4 w4[]; };
layout(std430, binding = 2) readonly buffer Scales { float scale[]; };
layout(std430, binding = 3) readonly buffer Bias { float bias[]; };
layout(std430, binding = 4) writeonly buffer Dst { float dst[]; };
layout(push_constant) uniform P { uint rows; uint k; uint n; uint hasBias; uint groupsX; uint cols; uint vec; } p;

float weight_at(uint e) { return weight_from(DTYPE, w[weight_word(DTYPE, e)], e); }

// Weights per 16-byte load.
const uint EPV = DTYPE == DT_F32 ? 4u : (DTYPE == DT_FP8 ? 16u : 8u);

// Weight j (0..EPV-1) of a 16-byte load.
float unpack_at(uvec4 q, uint j) { return weight_from(DTYPE, q[weight_word(DTYPE, j)], j); }

void main()
{
    uint group = gl_WorkGroupID.x + gl_WorkGroupID.y * p.groupsX;
    uint first = group * p.cols;
    uint end = min(first + p.cols, p.n);
    uint row0 = gl_WorkGroupID.z * ROWS;
    uint count = min(uint(ROWS), p.rows - row0);
    for (uint col = first + gl_SubgroupID; col < end; col += gl_NumSubgroups)
    {
        float acc[ROWS];
        for (int r = 0; r < ROWS; r++) acc[r] = 0.0;
        uint wbase = col * p.k;
        if (p.vec != 0u)
        {
            uint loads = p.k / EPV;
            for (uint c = gl_SubgroupInvocationID; c < loads; c += gl_SubgroupSize)
            {
                uvec4 q = w4[wbase / EPV + c];
                float wv[16];
                [[unroll]] for (uint j = 0u; j < EPV; j++) wv[j] = unpack_at(q, j);
                [[unroll]] for (int r = 0; r < ROWS; r++)
                {
                    if (uint(r) >= count) break;
                    uint xb = ((row0 + uint(r)) * p.k + c * EPV) / 4u;
                    float a = acc[r];
                    [[unroll]] for (uint i = 0u; i < EPV / 4u; i++)
                        a += dot(x4[xb + i], vec4(wv[4u * i], wv[4u * i + 1u], wv[4u * i + 2u], wv[4u * i + 3u]));
                    acc[r] = a;
                }
            }
        }
        else for (uint kk = gl_SubgroupInvocationID; kk < p.k; kk += gl_SubgroupSize)
        {
            float wv = weight_at(wbase + kk);
            // Constant bounds keep acc[] in registers (a dynamically indexed array spills to memory).
            [[unroll]] for (int r = 0; r < ROWS; r++)
            {
                if (uint(r) < count) acc[r] += x[(row0 + uint(r)) * p.k + kk] * wv;
            }
        }
        [[unroll]] for (int r = 0; r < ROWS; r++)
        {
            if (uint(r) >= count) break;
            float v = subgroupAdd(acc[r]);
            if (subgroupElect())
            {
                if (DTYPE == DT_FP8) v *= scale[col];
                if (p.hasBias != 0u) v += bias[col];
                dst[(row0 + uint(r)) * p.n + col] = v;
            }
        }
    }
}
