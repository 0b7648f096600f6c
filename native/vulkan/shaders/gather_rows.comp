#version 450
// dst[i, :] = src[rows[i], :]; src and dst are different buffers (the backend gathers in place through scratch).
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer Src { float src[]; };
layout(std430, binding = 1) readonly buffer Arena { int arena[]; };
layout(std430, binding = 2) writeonly buffer Dst { float dst[]; };
layout(push_constant) uniform P { uint rows; uint cols; uint idxOff; uint stride; } p;

void main()
{
    uint n = p.rows * p.cols;
    for (uint i = gl_GlobalInvocationID.x; i < n; i += p.stride)
    {
        uint r = i / p.cols, c = i % p.cols;
        dst[i] = src[uint(arena[p.idxOff + r]) * p.cols + c];
    }
}
