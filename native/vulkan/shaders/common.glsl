// Shared helpers of the FastServe Vulkan shaders. Weights and 16-bit KV caches are bound as uint words and unpacked
// here, so the shaders need neither 8- nor 16-bit storage (every Vulkan 1.1 device runs them).
#define DT_F32 0
#define DT_F16 1
#define DT_BF16 2
#define DT_FP8 3

// IEEE binary16 to F32, exact for normals, subnormals, infinities and NaN (unpackHalf2x16 may flush subnormals).
float f16_to_f32(uint h)
{
    uint sign = (h & 0x8000u) << 16;
    uint e = (h >> 10) & 0x1Fu;
    uint m = h & 0x3FFu;
    if (e == 0u)
    {
        float v = float(m) * (1.0 / 16777216.0); // m · 2^-24
        return (sign != 0u) ? -v : v;
    }
    if (e == 31u) return uintBitsToFloat(sign | 0x7F800000u | (m << 13));
    return uintBitsToFloat(sign | ((e + 112u) << 23) | (m << 13));
}

float bf16_to_f32(uint b) { return uintBitsToFloat(b << 16); }

// OCP FP8 E4M3 ("e4m3fn"): bias 7, no infinities, S.1111.111 is NaN.
float e4m3_to_f32(uint c)
{
    uint e = (c >> 3) & 0xFu;
    uint m = c & 7u;
    float mag;
    if (e == 15u && m == 7u) mag = uintBitsToFloat(0x7FC00000u);
    else if (e == 0u) mag = float(m) * (1.0 / 512.0); // m/8 · 2^-6
    else mag = uintBitsToFloat(((e + 120u) << 23) | (m << 20));
    return (c & 0x80u) != 0u ? -mag : mag;
}

// F32 to BF16 bits, round to nearest even; NaN stays NaN (HalfFloats.F32ToBF16).
uint f32_to_bf16(float x)
{
    uint u = floatBitsToUint(x);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return ((u >> 16) | 0x40u) & 0xFFFFu;
    u += 0x7FFFu + ((u >> 16) & 1u);
    return u >> 16;
}

// Element e of a 16-bit array stored two per uint word (little-endian: element 2i is the low half of word i).
uint half_at(uint word, uint e) { return (e & 1u) != 0u ? (word >> 16) : (word & 0xFFFFu); }

// A weight matrix stored as dtype is read as uint words: weight e sits in word weight_word(dtype, e) (4, 2 or 1 bytes a
// weight), and weight_from decodes it from that word. The shaders' weight_at binds these to their own buffer.
uint weight_word(int dtype, uint e) { return dtype == DT_F32 ? e : (dtype == DT_FP8 ? e >> 2 : e >> 1); }

float weight_from(int dtype, uint word, uint e)
{
    if (dtype == DT_F32) return uintBitsToFloat(word);
    if (dtype == DT_F16) return f16_to_f32(half_at(word, e));
    if (dtype == DT_BF16) return bf16_to_f32(half_at(word, e));
    return e4m3_to_f32((word >> ((e & 3u) * 8u)) & 0xFFu);
}
