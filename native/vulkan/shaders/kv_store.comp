#version 450
// Writes k and v rows ([rows, width], width = kvHeads · headDim) into one layer's cache at the slots the host
// computed (slot = block · blockSize + position % blockSize, in the arena at slotOff). F32 caches store the words;
// BF16 caches (BF16 = 1) round to nearest even and store two values per word, each half written atomically so that
// neighbours in one word never race.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 256) in;
layout(constant_id = 0) const int BF16 = 0;
layout(std430, binding = 0) readonly buffer K { float k[]; };
layout(std430, binding = 1) readonly buffer V { float v[]; };
layout(std430, binding = 2) buffer KC { uint kc[]; };
layout(std430, binding = 3) buffer VC { uint vc[]; };
layout(std430, binding = 4) readonly buffer Arena { int arena[]; };
layout(push_constant) uniform P { uint rows; uint width; uint slotOff; uint stride; } p;

void main()
{
    uint n = p.rows * p.width;
    for (uint i = gl_GlobalInvocationID.x; i < n; i += p.stride)
    {
        uint r = i / p.width, j = i % p.width;
        uint e = uint(arena[p.slotOff + r]) * p.width + j;
        if (BF16 == 0)
        {
            kc[e] = floatBitsToUint(k[i]);
            vc[e] = floatBitsToUint(v[i]);
        }
        else
        {
            uint shift = (e & 1u) * 16u;
            uint keep = ~(0xFFFFu << shift);
            atomicAnd(kc[e >> 1], keep);
            atomicOr(kc[e >> 1], f32_to_bf16(k[i]) << shift);
            atomicAnd(vc[e >> 1], keep);
            atomicOr(vc[e >> 1], f32_to_bf16(v[i]) << shift);
        }
    }
}
