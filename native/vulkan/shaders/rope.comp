#version 450
// Rotary embedding in place, rotate-half layout: pairs (i, i + dim/2) of each head rotate by the row's angle. The
// host computes cos and sin of positions[row] · invFreq[i] in F32 (as the reference does) into the arena:
// cos[row][i] at csOff, sin[row][i] after all the cosines.
layout(local_size_x = 256) in;
layout(std430, binding = 0) buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer Arena { float arena[]; };
layout(push_constant) uniform P { uint rows; uint heads; uint dim; uint cols; uint csOff; uint stride; } p;

void main()
{
    uint half_ = p.dim / 2u;
    uint n = p.rows * p.heads * half_;
    for (uint t = gl_GlobalInvocationID.x; t < n; t += p.stride)
    {
        uint i = t % half_;
        uint h = (t / half_) % p.heads;
        uint r = t / (half_ * p.heads);
        float c = arena[p.csOff + r * half_ + i];
        float s = arena[p.csOff + p.rows * half_ + r * half_ + i];
        uint o = r * p.cols + h * p.dim + i;
        float a = x[o], b = x[o + half_];
        x[o] = a * c - b * s;
        x[o + half_] = b * c + a * s;
    }
}
