#version 450
// dst[r, n] = Σ_k x[r, k] · w[n, k] (· scale[n] for FP8) (+ bias[n]), F32 accumulation. One workgroup per output
// column n and tile of ROWS activation rows: each weight element is decoded once and used for every row of the tile;
// the 64 partial sums of each row are reduced in shared memory. The output column is
// gl_WorkGroupID.x + gl_WorkGroupID.y · groupsX (a device may cap a dispatch's x dimension at 65535).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#include "common.glsl"
#define THREADS 64
#define ROWS 8
layout(local_size_x = THREADS) in;
layout(constant_id = 0) const int DTYPE = DT_F32;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer W { uint w[]; };
layout(std430, binding = 2) readonly buffer Scales { float scale[]; };
layout(std430, binding = 3) readonly buffer Bias { float bias[]; };
layout(std430, binding = 4) writeonly buffer Dst { float dst[]; };
layout(push_constant) uniform P { uint rows; uint k; uint n; uint hasBias; uint groupsX; } p;
shared float red[ROWS][THREADS];

float weight_at(uint e) { return weight_from(DTYPE, w[weight_word(DTYPE, e)], e); }

void main()
{
    uint col = gl_WorkGroupID.x + gl_WorkGroupID.y * p.groupsX;
    uint tid = gl_LocalInvocationID.x;
    if (col >= p.n) return; // whole workgroup: uniform
    uint row0 = gl_WorkGroupID.z * ROWS;
    uint count = min(uint(ROWS), p.rows - row0);
    float acc[ROWS];
    for (int r = 0; r < ROWS; r++) acc[r] = 0.0;
    uint wbase = col * p.k;
    for (uint kk = tid; kk < p.k; kk += THREADS)
    {
        float wv = weight_at(wbase + kk);
        // Constant bounds keep acc[] in registers (a dynamically indexed array spills to memory).
        [[unroll]] for (int r = 0; r < ROWS; r++)
        {
            if (uint(r) < count) acc[r] += x[(row0 + uint(r)) * p.k + kk] * wv;
        }
    }
    for (int r = 0; r < ROWS; r++) red[r][tid] = acc[r];
    barrier();
    for (uint s = THREADS / 2; s > 0u; s >>= 1)
    {
        if (tid < s)
        {
            for (int r = 0; r < ROWS; r++) red[r][tid] += red[r][tid + s];
        }
        barrier();
    }
    if (tid < count)
    {
        float v = red[tid][0];
        if (DTYPE == DT_FP8) v *= scale[col];
        if (p.hasBias != 0u) v += bias[col];
        dst[(row0 + tid) * p.n + col] = v;
    }
}
