#version 450
// dst[i, :] = table[tokens[i], :] as F32 (FP8: · scale of the row). One thread per output element.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 256) in;
layout(constant_id = 0) const int DTYPE = DT_F32;
layout(std430, binding = 0) readonly buffer Table { uint w[]; };
layout(std430, binding = 1) readonly buffer Scales { float scale[]; };
layout(std430, binding = 2) readonly buffer Arena { int arena[]; };
layout(std430, binding = 3) writeonly buffer Dst { float dst[]; };
layout(push_constant) uniform P { uint cols; uint tokens; uint tokOff; uint stride; } p;

float weight_at(uint e) { return weight_from(DTYPE, w[weight_word(DTYPE, e)], e); }

void main()
{
    uint n = p.tokens * p.cols;
    for (uint i = gl_GlobalInvocationID.x; i < n; i += p.stride)
    {
        uint t = i / p.cols, c = i % p.cols;
        uint tok = uint(arena[p.tokOff + t]);
        float v = weight_at(tok * p.cols + c);
        if (DTYPE == DT_FP8) v *= scale[tok];
        dst[i] = v;
    }
}
