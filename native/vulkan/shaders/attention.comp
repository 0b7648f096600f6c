#version 450
// Causal grouped-query attention over one layer's paged cache. One workgroup per (query head, row): the row's
// positions 0..pos are visited in chunks of THREADS, one score per thread (q · k / sqrt(dim)), with an online
// softmax (running max and sum, F32) rescaling the output accumulators; thread t owns output dims t, t + THREADS, ...
// Arena at off: seqOfRow[rows] | position[rows] | blockTables[seqs][maxBlocks]. A layer's cache is split into up to
// four segments of blocksPerSeg blocks (bindings K0..K3, V0..V3), each within the device's storage-buffer range.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#define THREADS 64
#define MAX_DIM 256
#define PER_THREAD (MAX_DIM / THREADS)
layout(local_size_x = THREADS) in;
layout(constant_id = 0) const int BF16 = 0;
layout(std430, binding = 0) readonly buffer Q { float q[]; };
layout(std430, binding = 1) readonly buffer KC0 { uint kc0[]; };
layout(std430, binding = 2) readonly buffer KC1 { uint kc1[]; };
layout(std430, binding = 3) readonly buffer KC2 { uint kc2[]; };
layout(std430, binding = 4) readonly buffer KC3 { uint kc3[]; };
layout(std430, binding = 5) readonly buffer VC0 { uint vc0[]; };
layout(std430, binding = 6) readonly buffer VC1 { uint vc1[]; };
layout(std430, binding = 7) readonly buffer VC2 { uint vc2[]; };
layout(std430, binding = 8) readonly buffer VC3 { uint vc3[]; };
layout(std430, binding = 9) readonly buffer Arena { int arena[]; };
layout(std430, binding = 10) writeonly buffer Dst { float dst[]; };
layout(push_constant) uniform P { uint rows; uint heads; uint kvHeads; uint dim; uint blockSize; uint maxBlocks; uint off; uint blocksPerSeg; } p;
shared float qs[MAX_DIM];
shared float sc[THREADS];
shared float red[THREADS];

uint word_at(bool isK, uint seg, uint i)
{
    if (isK) return seg == 0u ? kc0[i] : seg == 1u ? kc1[i] : seg == 2u ? kc2[i] : kc3[i];
    return seg == 0u ? vc0[i] : seg == 1u ? vc1[i] : seg == 2u ? vc2[i] : vc3[i];
}

float cache_at(bool isK, uint seg, uint e)
{
    if (BF16 == 0) return uintBitsToFloat(word_at(isK, seg, e));
    return bf16_to_f32(half_at(word_at(isK, seg, e >> 1), e));
}

// Segment and first element of position pos's K/V vector for KV head kvh in the segment's
// [block][slot][kvHead][dim] layout.
uvec2 slot_base(uint seq, uint pos, uint kvh)
{
    uint block = uint(arena[p.off + 2u * p.rows + seq * p.maxBlocks + pos / p.blockSize]);
    uint local = block % p.blocksPerSeg;
    return uvec2(block / p.blocksPerSeg, ((local * p.blockSize + pos % p.blockSize) * p.kvHeads + kvh) * p.dim);
}

float reduce_max(float v, uint tid)
{
    red[tid] = v;
    barrier();
    for (uint s = THREADS / 2; s > 0u; s >>= 1)
    {
        if (tid < s) red[tid] = max(red[tid], red[tid + s]);
        barrier();
    }
    float r = red[0];
    barrier();
    return r;
}

float reduce_sum(float v, uint tid)
{
    red[tid] = v;
    barrier();
    for (uint s = THREADS / 2; s > 0u; s >>= 1)
    {
        if (tid < s) red[tid] += red[tid + s];
        barrier();
    }
    float r = red[0];
    barrier();
    return r;
}

void main()
{
    uint h = gl_WorkGroupID.x, row = gl_WorkGroupID.y, tid = gl_LocalInvocationID.x;
    uint seq = uint(arena[p.off + row]);
    uint pos = uint(arena[p.off + p.rows + row]);
    uint kvh = h / (p.heads / p.kvHeads);
    uint qbase = row * p.heads * p.dim + h * p.dim;
    for (uint j = tid; j < p.dim; j += THREADS) qs[j] = q[qbase + j];
    barrier();
    float scale = 1.0 / sqrt(float(p.dim));
    float m = -1.0 / 0.0, l = 0.0;
    float acc[PER_THREAD];
    for (int t = 0; t < PER_THREAD; t++) acc[t] = 0.0;

    for (uint base = 0u; base <= pos; base += THREADS)
    {
        uint pp = base + tid;
        float s = -1.0 / 0.0;
        if (pp <= pos)
        {
            uvec2 kb = slot_base(seq, pp, kvh);
            float dot = 0.0;
            for (uint j = 0u; j < p.dim; j++) dot += qs[j] * cache_at(true, kb.x, kb.y + j);
            s = dot * scale;
        }
        float mNew = max(m, reduce_max(s, tid));
        float e = pp <= pos ? exp(s - mNew) : 0.0;
        sc[tid] = e;
        float lChunk = reduce_sum(e, tid); // its barriers also publish sc
        float corr = exp(m - mNew);
        l = l * corr + lChunk;
        m = mNew;
        uint count = min(uint(THREADS), pos - base + 1u);
        for (int t = 0; t < PER_THREAD; t++) acc[t] *= corr;
        for (uint c = 0u; c < count; c++)
        {
            uvec2 vb = slot_base(seq, base + c, kvh);
            float w = sc[c];
            for (int t = 0; t < PER_THREAD; t++)
            {
                uint j = tid + uint(t) * THREADS;
                if (j < p.dim) acc[t] += w * cache_at(false, vb.x, vb.y + j);
            }
        }
        barrier(); // sc is rewritten by the next chunk
    }
    for (int t = 0; t < PER_THREAD; t++)
    {
        uint j = tid + uint(t) * THREADS;
        if (j < p.dim) dst[qbase + j] = acc[t] / l;
    }
}
