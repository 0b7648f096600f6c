#version 450
// Writes k and v rows ([rows, width], width = kvHeads · headDim) into one layer's cache at the slots the host
// computed (slot = block · blockSize + position % blockSize, in the arena at slotOff). A layer's cache is split into up
// to four segments of blocksPerSeg blocks, each one buffer within the device's storage-buffer range. F32 caches store the words;
// BF16 caches (BF16 = 1) round to nearest even and store two values per word, each half written atomically so that
// neighbours in one word never race.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 256) in;
layout(constant_id = 0) const int BF16 = 0;
layout(std430, binding = 0) readonly buffer K { float k[]; };
layout(std430, binding = 1) readonly buffer V { float v[]; };
layout(std430, binding = 2) buffer KC0 { uint kc0[]; };
layout(std430, binding = 3) buffer KC1 { uint kc1[]; };
layout(std430, binding = 4) buffer KC2 { uint kc2[]; };
layout(std430, binding = 5) buffer KC3 { uint kc3[]; };
layout(std430, binding = 6) buffer VC0 { uint vc0[]; };
layout(std430, binding = 7) buffer VC1 { uint vc1[]; };
layout(std430, binding = 8) buffer VC2 { uint vc2[]; };
layout(std430, binding = 9) buffer VC3 { uint vc3[]; };
layout(std430, binding = 10) readonly buffer Arena { int arena[]; };
layout(push_constant) uniform P { uint rows; uint width; uint slotOff; uint stride; uint blockSize; uint blocksPerSeg; } p;

// Word i of segment seg of K (isK) or V: set to value (F32), or its 16-bit half at shift set to bits (BF16).
void put(bool isK, uint seg, uint i, uint value)
{
    if (isK)
    {
        if (seg == 0u) kc0[i] = value; else if (seg == 1u) kc1[i] = value; else if (seg == 2u) kc2[i] = value; else kc3[i] = value;
    }
    else
    {
        if (seg == 0u) vc0[i] = value; else if (seg == 1u) vc1[i] = value; else if (seg == 2u) vc2[i] = value; else vc3[i] = value;
    }
}

void put_half(bool isK, uint seg, uint i, uint shift, uint bits)
{
    uint keep = ~(0xFFFFu << shift), set = bits << shift;
    if (isK)
    {
        if (seg == 0u) { atomicAnd(kc0[i], keep); atomicOr(kc0[i], set); }
        else if (seg == 1u) { atomicAnd(kc1[i], keep); atomicOr(kc1[i], set); }
        else if (seg == 2u) { atomicAnd(kc2[i], keep); atomicOr(kc2[i], set); }
        else { atomicAnd(kc3[i], keep); atomicOr(kc3[i], set); }
    }
    else
    {
        if (seg == 0u) { atomicAnd(vc0[i], keep); atomicOr(vc0[i], set); }
        else if (seg == 1u) { atomicAnd(vc1[i], keep); atomicOr(vc1[i], set); }
        else if (seg == 2u) { atomicAnd(vc2[i], keep); atomicOr(vc2[i], set); }
        else { atomicAnd(vc3[i], keep); atomicOr(vc3[i], set); }
    }
}

void main()
{
    uint n = p.rows * p.width;
    for (uint i = gl_GlobalInvocationID.x; i < n; i += p.stride)
    {
        uint r = i / p.width, j = i % p.width;
        uint slot = uint(arena[p.slotOff + r]);
        uint block = slot / p.blockSize;
        uint seg = block / p.blocksPerSeg;
        uint e = ((block % p.blocksPerSeg) * p.blockSize + slot % p.blockSize) * p.width + j;
        if (BF16 == 0)
        {
            put(true, seg, e, floatBitsToUint(k[i]));
            put(false, seg, e, floatBitsToUint(v[i]));
        }
        else
        {
            put_half(true, seg, e >> 1, (e & 1u) * 16u, f32_to_bf16(k[i]));
            put_half(false, seg, e >> 1, (e & 1u) * 16u, f32_to_bf16(v[i]));
        }
    }
}
