#version 450
// dst[r, :] = x[r, :] / sqrt(mean(x[r, :]²) + eps) · gamma; with ADD, first x[r, :] += addend[r, :] (the residual
// update of AddRmsNorm). One workgroup per row, shared-memory reduction; x and dst may be one buffer.
layout(local_size_x = 256) in;
layout(constant_id = 0) const int ADD = 0;
layout(std430, binding = 0) buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer Addend { float addend[]; };
layout(std430, binding = 2) readonly buffer Gamma { float gamma[]; };
layout(std430, binding = 3) buffer Dst { float dst[]; };
layout(push_constant) uniform P { uint cols; float eps; } p;
shared float red[256];

void main()
{
    uint row = gl_WorkGroupID.x, tid = gl_LocalInvocationID.x;
    uint base = row * p.cols;
    float ss = 0.0;
    for (uint c = tid; c < p.cols; c += 256u)
    {
        float v = x[base + c];
        if (ADD != 0)
        {
            v += addend[base + c];
            x[base + c] = v;
        }
        ss += v * v;
    }
    red[tid] = ss;
    barrier();
    for (uint s = 128u; s > 0u; s >>= 1)
    {
        if (tid < s) red[tid] += red[tid + s];
        barrier();
    }
    float inv = 1.0 / sqrt(red[0] / float(p.cols) + p.eps);
    for (uint c = tid; c < p.cols; c += 256u) dst[base + c] = x[base + c] * inv * gamma[c];
}
