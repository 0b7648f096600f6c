// CPU check of the number conversions the GEMM and the KV cache rely on, run without a GPU (CTest): E4M3 decode of
// every byte, F32 -> E4M3 rounding (nearest even, saturating) against a brute-force search over all E4M3 values,
// the E4M3 -> BF16 bit move used by the portable FP8 path for every pair of bytes in both halves (the NaN bytes
// included: they must stay NaN), and F32 -> BF16 rounding.
#include "mma.cuh"

#include <math.h>
#include <stdio.h>

static int failures;
#define EXPECT(cond, ...)                                          \
    do {                                                           \
        if (!(cond)) {                                             \
            if (++failures <= 20) {                                \
                printf("FAIL %s:%d: ", __FILE__, __LINE__);        \
                printf(__VA_ARGS__);                               \
                printf("\n");                                      \
            }                                                      \
        }                                                          \
    } while (0)

static bool is_nan_code(int c) { return (c & 0x7f) == 0x7f; }

static double ref_decode(int c) {
    const int e = (c >> 3) & 0xf, m = c & 7;
    const double v = e == 0 ? m * ldexp(1.0, -9) : (1.0 + m / 8.0) * ldexp(1.0, e - 7);
    return (c & 0x80) ? -v : v;
}

// Nearest finite E4M3 value, ties to the even code, saturating at +-448.
static int ref_encode(float f) {
    int best = -1;
    double best_d = INFINITY;
    for (int c = 0; c < 256; ++c) {
        if (is_nan_code(c)) continue;
        if (((c & 0x80) != 0) != (signbit(f) != 0)) continue;
        const double d = fabs((double)f - ref_decode(c));
        if (d < best_d || (d == best_d && (c & 1) == 0 && (best & 1) == 1)) { best_d = d; best = c; }
    }
    return best;
}

static float bf16_to_float(uint32_t h) { return fs::f32_from_bits(h << 16); }

int main() {
    // Decode of every byte; encode(decode(c)) == c.
    for (int c = 0; c < 256; ++c) {
        const float f = fs::e4m3_to_float((uint8_t)c);
        if (is_nan_code(c)) { EXPECT(f != f, "code %#x should decode to NaN, got %g", c, f); continue; }
        EXPECT((double)f == ref_decode(c), "decode %#x: %g, expected %g", c, f, ref_decode(c));
        EXPECT(fs::float_to_e4m3(f) == c, "round trip %#x -> %g -> %#x", c, f, fs::float_to_e4m3(f));
    }
    // Encode: every midpoint between neighbours (ties), points just either side, and a dense sweep.
    int checked = 0;
    for (int c = 0; c < 0x7e; ++c) {
        const double lo = ref_decode(c), hi = ref_decode(c + 1), mid = (lo + hi) / 2;
        const float probes[] = {(float)mid, nextafterf((float)mid, 0.f), nextafterf((float)mid, 1000.f), (float)lo, (float)hi};
        for (float p : probes)
            for (float s : {1.f, -1.f}) {
                const float v = p * s;
                EXPECT(fs::float_to_e4m3(v) == ref_encode(v), "encode %.9g: %#x, expected %#x", v, fs::float_to_e4m3(v), ref_encode(v));
                ++checked;
            }
    }
    for (float v = 0.f; v < 520.f; v = v < 1e-3f ? v + 1e-6f : v * 1.0007f + 1e-7f) {
        EXPECT(fs::float_to_e4m3(v) == ref_encode(v), "encode %.9g: %#x, expected %#x", v, fs::float_to_e4m3(v), ref_encode(v));
        EXPECT(fs::float_to_e4m3(-v) == ref_encode(-v), "encode %.9g", -v);
        checked += 2;
    }
    EXPECT(fs::float_to_e4m3(1e30f) == 0x7e && fs::float_to_e4m3(-1e30f) == 0xfe, "saturation");
    EXPECT(fs::float_to_e4m3(INFINITY) == 0x7e, "inf saturates");
    EXPECT(fs::float_to_e4m3(NAN) == 0x7f, "NaN");
    // E4M3 -> BF16 bit move: value * 2^-120, in both 16-bit halves, for both byte pairs, every pair of bytes. The NaN
    // bytes must give a BF16 NaN (before and after the 2^120 rebias) without touching the other half.
    const float two120 = ldexpf(1.f, 120);
    int nan_halves = 0;
    auto half_ok = [&](uint32_t h, int code) {
        if (is_nan_code(code)) {
            ++nan_halves;
            return (h & 0x7f80u) == 0x7f80u && (h & 0x7fu) != 0 && bf16_to_float(h) * two120 != bf16_to_float(h) * two120;
        }
        return bf16_to_float(h) * two120 == fs::e4m3_to_float((uint8_t)code);
    };
    for (int a = 0; a < 256; ++a)
        for (int b = 0; b < 256; ++b) {
            const uint32_t w01 = (uint32_t)a | ((uint32_t)b << 8) | 0xa5c30000u;
            const uint32_t w23 = 0x00003cc5u | ((uint32_t)a << 16) | ((uint32_t)b << 24);
            const uint32_t t0 = fs::e4m3x2_to_bf16x2_unscaled<0>(w01), t1 = fs::e4m3x2_to_bf16x2_unscaled<1>(w23);
            EXPECT(half_ok(t0 & 0xffff, a) && half_ok(t0 >> 16, b), "bf16 move sel 0 (%#x, %#x): %#010x", a, b, t0);
            EXPECT(half_ok(t1 & 0xffff, a) && half_ok(t1 >> 16, b), "bf16 move sel 1 (%#x, %#x): %#010x", a, b, t1);
            ++checked;
        }
    EXPECT(nan_halves == 2 * 2 * 2 * 256, "NaN halves checked: %d", nan_halves);  // sels x halves x NaN codes x other byte
    // F32 -> BF16: exact values stay, ties go to even, NaN stays NaN.
    EXPECT(fs::float_to_bf16_bits(1.f) == 0x3f80, "bf16 1.0");
    EXPECT(fs::float_to_bf16_bits(fs::f32_from_bits(0x3f808000u)) == 0x3f80, "bf16 tie to even (down)");
    EXPECT(fs::float_to_bf16_bits(fs::f32_from_bits(0x3f818000u)) == 0x3f82, "bf16 tie to even (up)");
    EXPECT(fs::float_to_bf16_bits(fs::f32_from_bits(0x3f808001u)) == 0x3f81, "bf16 above tie");
    EXPECT((fs::float_to_bf16_bits(NAN) & 0x7fff) > 0x7f80, "bf16 NaN");
    printf("%d values checked, %s\n", checked, failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
