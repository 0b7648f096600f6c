#version 450
// acc += x, element-wise.
layout(local_size_x = 256) in;
layout(std430, binding = 0) buffer Acc { float acc[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(push_constant) uniform P { uint n; uint stride; } p;

void main()
{
    for (uint i = gl_GlobalInvocationID.x; i < p.n; i += p.stride) acc[i] += x[i];
}
