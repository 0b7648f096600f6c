#version 450
// dst = silu(gate) ⊙ up, silu(z) = z / (1 + e^-z).
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer Gate { float gate[]; };
layout(std430, binding = 1) readonly buffer Up { float up[]; };
layout(std430, binding = 2) writeonly buffer Dst { float dst[]; };
layout(push_constant) uniform P { uint n; uint stride; } p;

void main()
{
    for (uint i = gl_GlobalInvocationID.x; i < p.n; i += p.stride)
    {
        float z = gate[i];
        dst[i] = z / (1.0 + exp(-z)) * up[i];
    }
}
