/* CPU kernels for batch-1 decoding of 4-bit decoder LMs (the embedded SmolLM2 and any Q4 GGUF).
 *
 * Why C: on 2 cores a decode step of a 135M-parameter model through torch spends ~14 ms of ~27 ms in
 * per-op dispatch (about 35 small ops per layer, 30 layers). Here the whole step is one call with one
 * OpenMP parallel region; the weights are read once, as stored in the GGUF file.
 *
 * Formats (ggml's legacy blocks, 32 weights each):
 *   block_q4_1: f16 d, f16 m, 16 bytes; weight j = d * q_j + m, q_j = low nibble of byte j (j < 16) or the
 *               high nibble of byte j - 16. Q4_0 weights are converted to it at load (m = -8 d).
 *   block_q8_0: f16 d, 32 x int8; weight j = d * q_j (the output head).
 * Activations entering a 4-bit matmul are quantised per block of 32 to int16 (scale = max|x| / 32767,
 * round half to even) so the dot products run on integers, 16 multiply-adds per AVX2 instruction. Not
 * int8 as llama.cpp does: int8 activations (error up to 0.4% of a block's largest value) measured
 * 0.3-1% relative error per projection on SmolLM2-135M, 3x bfloat16's, and derailed its greedy replies;
 * int16 is 256x finer: 3e-5 relative error per projection, 100x below torch's int4 GEMM with bfloat16
 * activations.
 * The head (block_q8_0) takes float32 activations unquantised, so logits are exact up to summation order.
 *
 * Every entry point takes `nthreads`; OpenMP binds to the runtime torch already loaded (same soname), so
 * these kernels share torch's thread pool instead of adding a second one.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define OMNI_AVX2 1
#include <immintrin.h>
#endif

#define QK 32

typedef struct {
    uint16_t d, m;
    uint8_t qs[QK / 2];
} block_q4_1;

typedef struct {
    uint16_t d;
    int8_t qs[QK];
} block_q8_0;

typedef struct {   /* one quantised activation block: x_j ~= d * qs[j]; s = d * sum(qs) */
    float d, s;
    int16_t qs[QK];
} block_q16_act;

int omni_block_sizes(int *out) { /* lets the Python side check the struct layouts it writes */
    out[0] = (int)sizeof(block_q4_1);
    out[1] = (int)sizeof(block_q8_0);
    out[2] = (int)sizeof(block_q16_act);
#ifdef OMNI_AVX2
    return 1;
#else
    return 0;
#endif
}

static inline float f16_to_f32(uint16_t h) {
#ifdef OMNI_AVX2
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3FF) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

/* float32 -> float16, round to nearest even (as torch's .half() and F16C's _mm256_cvtps_ph do), so the
 * KV cache holds the same bits whichever path wrote it. */
static inline uint16_t f32_to_f16(float f) {
#ifdef OMNI_AVX2
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000, a = x & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return (uint16_t)(sign | 0x7E00);  /* NaN */
    if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00); /* >= 65520 rounds to infinity */
    if (a < 0x38800000u) {                                  /* below 2^-14: subnormal or zero */
        const uint32_t e = a >> 23;
        if (e < 102) return (uint16_t)sign;                 /* below 2^-25: rounds to zero */
        const uint32_t mant = (a & 0x7FFFFF) | 0x800000, shift = 126 - e; /* value = mant 2^(e-150) */
        uint32_t m = mant >> shift;
        const uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (m & 1))) m++;
        return (uint16_t)(sign | m);
    }
    return (uint16_t)(sign | ((a + 0xFFF + ((a >> 13) & 1) - (112u << 23)) >> 13)); /* rebias 127 -> 15 */
#endif
}

void omni_f16_convert(const void *src, void *dst, int n, int to_f16) { /* exposed for tests */
    for (int i = 0; i < n; i++) {
        if (to_f16) ((uint16_t *)dst)[i] = f32_to_f16(((const float *)src)[i]);
        else ((float *)dst)[i] = f16_to_f32(((const uint16_t *)src)[i]);
    }
}

#ifdef OMNI_AVX2
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* e^x for x in [-87, 88] (inputs below are clamped; callers mask -inf themselves): x = k ln2 + r with
 * |r| <= ln2/2, e^r by a degree-6 Taylor polynomial (relative error < 2e-7 there), 2^k through the
 * exponent bits. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-87.0f));
    __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x); /* ln2 split in two for precision */
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#endif

/* ---------------------------------------------------------------- activation quantisation */

static void quantize_q16_act(const float *x, block_q16_act *y, int K) {
    for (int b = 0; b < K / QK; b++) {
        const float *xb = x + b * QK;
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(xb[j]));
        const float d = amax / 32767.0f, id = amax > 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
#ifdef OMNI_AVX2
        const __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; k++) q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + 8 * k), vid));
        __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_hadd_epi32(s4, s4);
        s4 = _mm_hadd_epi32(s4, s4);
        sum = _mm_cvtsi128_si32(s4);
        for (int k = 0; k < 2; k++) { /* packs works per 128-bit lane: reorder the 64-bit quarters after it */
            const __m256i p = _mm256_packs_epi32(q[2 * k], q[2 * k + 1]);
            _mm256_storeu_si256((__m256i *)(y[b].qs + 16 * k), _mm256_permute4x64_epi64(p, 0xD8));
        }
#else
        for (int j = 0; j < QK; j++) {
            const int q = (int)nearbyintf(xb[j] * id);
            y[b].qs[j] = (int16_t)q;
            sum += q;
        }
#endif
        y[b].d = d;
        y[b].s = d * (float)sum;
    }
}

void omni_quantize_q16_act(const float *x, void *y, int T, int K) { /* exposed for tests */
    for (int t = 0; t < T; t++) quantize_q16_act(x + (int64_t)t * K, (block_q16_act *)y + (int64_t)t * (K / QK), K);
}

/* ---------------------------------------------------------------- dot products */

#ifdef OMNI_AVX2
/* products of one Q4_1 block's nibbles with 32 int16 activations: 8 int32 partial sums */
static inline __m256i block_dot_i16(__m256i wlo, __m256i whi, const int16_t *x) {
    return _mm256_add_epi32(_mm256_madd_epi16(wlo, _mm256_loadu_si256((const __m256i *)x)),
                            _mm256_madd_epi16(whi, _mm256_loadu_si256((const __m256i *)(x + 16))));
}

/* A Q4_1 block's (d, m) as float32 lanes 0 and 1: one conversion instead of two scalar ones */
static inline __m128 q4_1_scales(const block_q4_1 *w) {
    int32_t dm;
    memcpy(&dm, w, 4);
    return _mm_cvtph_ps(_mm_cvtsi32_si128(dm));
}

/* acc += (d x.d) p; lane 1 of mins += m x.s (the block's offset term); x.d and x.s are adjacent floats */
static inline void q4_1_accumulate(__m256i p, __m128 dm, const block_q16_act *x, __m256 *acc, __m128 *mins) {
    const __m128 prod = _mm_mul_ps(dm, _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)&x->d)));
    *acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(prod), _mm256_cvtepi32_ps(p), *acc);
    *mins = _mm_add_ps(*mins, prod);
}

/* weights 0..15 (low nibbles) and 16..31 (high nibbles) as int16: widened once, then split */
static inline void q4_1_nibbles(const block_q4_1 *w, __m256i *lo, __m256i *hi) {
    const __m256i bytes = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)w->qs));
    *lo = _mm256_and_si256(bytes, _mm256_set1_epi16(0x0F));
    *hi = _mm256_srli_epi16(bytes, 4);
}
#endif

/* The AVX2 path is bound by instructions per block (~5 per cycle issued): the scales of a block are
 * converted and multiplied as one (d, m) pair and the nibbles widened once: 22 -> ~15 per block,
 * 4.2 -> 3.2 ms for a decode step's 120 projections of SmolLM2-135M on one core. The 4-token version sums
 * in the same order, so a token gives the same bits alone or in a prefill batch. */
static inline float dot_q4_1_q16(const block_q4_1 *w, const block_q16_act *x, int nb) {
#ifdef OMNI_AVX2
    __m256 acc = _mm256_setzero_ps();
    __m128 mins = _mm_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m256i lo, hi;
        q4_1_nibbles(&w[b], &lo, &hi);
        q4_1_accumulate(block_dot_i16(lo, hi, x[b].qs), q4_1_scales(&w[b]), &x[b], &acc, &mins);
    }
    return hsum8(acc) + _mm_cvtss_f32(_mm_movehdup_ps(mins));
#else
    float acc = 0.0f;
    for (int b = 0; b < nb; b++) {
        int s = 0;
        for (int j = 0; j < QK / 2; j++) {
            s += (w[b].qs[j] & 0x0F) * x[b].qs[j];
            s += (w[b].qs[j] >> 4) * x[b].qs[j + QK / 2];
        }
        acc += f16_to_f32(w[b].d) * x[b].d * (float)s + f16_to_f32(w[b].m) * x[b].s;
    }
    return acc;
#endif
}

/* The same for 4 tokens at once: each weight block is unpacked once (prefill). */
static inline void dot_q4_1_q16_x4(const block_q4_1 *w, const block_q16_act *x, int64_t xstride, int nb,
                                   float *out) {
#ifdef OMNI_AVX2
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    __m128 mins[4] = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()};
    for (int b = 0; b < nb; b++) {
        __m256i lo, hi;
        q4_1_nibbles(&w[b], &lo, &hi);
        const __m128 dm = q4_1_scales(&w[b]);
        for (int t = 0; t < 4; t++) {
            const block_q16_act *xb = x + t * xstride + b;
            q4_1_accumulate(block_dot_i16(lo, hi, xb->qs), dm, xb, &acc[t], &mins[t]);
        }
    }
    for (int t = 0; t < 4; t++) out[t] = hsum8(acc[t]) + _mm_cvtss_f32(_mm_movehdup_ps(mins[t]));
#else
    for (int t = 0; t < 4; t++) out[t] = dot_q4_1_q16(w, x + t * xstride, nb);
#endif
}

static inline float dot_q8_0_f32(const block_q8_0 *w, const float *x, int nb) {
#ifdef OMNI_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const float *xb = x + b * QK;
        __m256 a = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(w[b].qs + 8 * k)));
            a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), _mm256_loadu_ps(xb + 8 * k), a);
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_to_f32(w[b].d)), a, acc);
    }
    return hsum8(acc);
#else
    float acc = 0.0f;
    for (int b = 0; b < nb; b++) {
        float a = 0.0f;
        for (int j = 0; j < QK; j++) a += (float)w[b].qs[j] * x[b * QK + j];
        acc += f16_to_f32(w[b].d) * a;
    }
    return acc;
#endif
}

static inline float dot_f32(const float *a, const float *b, int n) {
#ifdef OMNI_AVX2
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float s = hsum8(acc);
#else
    float s = 0.0f;
    int i = 0;
#endif
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* ---------------------------------------------------------------- matmuls (any number of tokens) */

/* y[T, N] = x[T, K] @ W[N, K]^T (+ bias[N]) with W in block_q4_1 rows; x is quantised per block here. */
void omni_q4_1_matmul(const void *w, int N, int K, const float *x, int T, float *y, const float *bias,
                      int nthreads) {
    const int nb = K / QK;
    block_q16_act *xq = malloc(sizeof(block_q16_act) * (size_t)T * nb);
    if (!xq) return;
#pragma omp parallel num_threads(nthreads)
    {
#pragma omp for schedule(static)
        for (int t = 0; t < T; t++) quantize_q16_act(x + (int64_t)t * K, xq + (int64_t)t * nb, K);
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            const block_q4_1 *row = (const block_q4_1 *)w + (int64_t)n * nb;
            const float b = bias ? bias[n] : 0.0f;
            int t = 0;
            for (; t + 4 <= T; t += 4) {
                float o[4];
                dot_q4_1_q16_x4(row, xq + (int64_t)t * nb, nb, nb, o);
                for (int k = 0; k < 4; k++) y[(int64_t)(t + k) * N + n] = o[k] + b;
            }
            for (; t < T; t++) y[(int64_t)t * N + n] = dot_q4_1_q16(row, xq + (int64_t)t * nb, nb) + b;
        }
    }
    free(xq);
}

/* y[T, N] = x[T, K] @ W[N, K]^T with W in block_q8_0 rows and x in float32 (the output head). */
void omni_q8_0_matmul(const void *w, int N, int K, const float *x, int T, float *y, int nthreads) {
    const int nb = K / QK;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int n = 0; n < N; n++) {
        const block_q8_0 *row = (const block_q8_0 *)w + (int64_t)n * nb;
        for (int t = 0; t < T; t++) y[(int64_t)t * N + n] = dot_q8_0_f32(row, x + (int64_t)t * K, nb);
    }
}

/* ---------------------------------------------------------------- one decode step */

typedef struct {
    const void *qkv, *o, *gate_up, *down; /* block_q4_1 rows: [(H + 2 Hkv) D, C], [C, H D], [2 I, C], [C, I] */
    const float *qkv_bias;                /* [(H + 2 Hkv) D] or NULL */
    const float *attn_norm, *mlp_norm;    /* [C] */
} omni_layer;

typedef struct {
    int n_layers, C, H, Hkv, D, I;
    float eps;
    const omni_layer *layers;
    const float *final_norm;
} omni_model;

typedef struct {
    void *k, *v;         /* [L, 1, Hkv, cap, D] float32, or float16 when kv_f16 */
    int cap, slot, n;    /* write the new token at `slot`; attend over slots [0, n) */
    const float *mask;   /* [n]: 0 or -inf */
    const float *rope;   /* [2, D]: cos, signed sin (see model/layers/rope.py fold_rope) */
    const float *sink_rope; /* [2, D] for scoring slots [0, sinks), or NULL */
    int sinks;
    int kv_f16;
} omni_step;

static void rms_norm(const float *x, const float *w, float *y, int C, float eps) {
    double ss = 0.0;
    for (int i = 0; i < C; i++) ss += (double)x[i] * x[i];
    const float r = (float)(1.0 / sqrt(ss / C + eps));
    for (int i = 0; i < C; i++) y[i] = x[i] * r * w[i];
}

static void rope(const float *x, const float *tab, float *y, int D) { /* y = x cos + roll(x, D/2) signed_sin */
    const int h = D / 2;
    for (int i = 0; i < D; i++) y[i] = x[i] * tab[i] + x[(i + h) % D] * tab[D + i];
}

static void silu_mul(const float *gu, float *y, int I) { /* y = silu(gate) * up, gu = [gate | up] */
    int i = 0;
#ifdef OMNI_AVX2
    for (; i + 8 <= I; i += 8) {
        const __m256 g = _mm256_loadu_ps(gu + i);
        const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        const __m256 s = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(s, _mm256_loadu_ps(gu + I + i)));
    }
#endif
    for (; i < I; i++) y[i] = gu[i] / (1.0f + expf(-gu[i])) * gu[I + i];
}

#include "omni_attention.c" /* cache_rows, attend_split, combine_splits: part of this file, split out */

/* Scratch of one decode step (one allocation; sizes in floats) */
typedef struct {
    float *xn, *qkv, *qrot, *qsink, *attn_out, *gu, *scores, *tiles, *pm, *pl, *po;
    int S; /* splits of the slot range per KV head */
} step_scratch;

static float *alloc_scratch(const omni_model *m, int n, int nthreads, step_scratch *w) {
    const int C = m->C, H = m->H, D = m->D, I = m->I, QKV = (H + 2 * m->Hkv) * D;
    /* one split per thread once there is enough to share: below 32 slots per thread it is not worth it */
    w->S = n >= 32 * nthreads ? nthreads : 1;
    const size_t items = (size_t)m->Hkv * w->S;
    float *buf = malloc(sizeof(float) * ((size_t)C + QKV + 3 * (size_t)H * D + 2 * (size_t)I + (size_t)H * n +
                                         items * TILE * D + (size_t)w->S * H * (2 + (size_t)D)));
    if (!buf) return NULL;
    w->xn = buf, w->qkv = w->xn + C, w->qrot = w->qkv + QKV, w->qsink = w->qrot + H * D;
    w->attn_out = w->qsink + H * D, w->gu = w->attn_out + H * D, w->scores = w->gu + 2 * I;
    w->tiles = w->scores + (size_t)H * n, w->pm = w->tiles + items * TILE * D;
    w->pl = w->pm + (size_t)w->S * H, w->po = w->pl + (size_t)w->S * H;
    return buf;
}

/* Rotary on q (and its sink-scoring copy) and k; k and v stored into the cache slot, rounded to float16
 * for a half-precision cache. */
static void rotate_and_store(const omni_step *st, const float *qkv, int H, int Hkv, int D, void *kc, void *vc,
                             float *qrot, float *qsink, float *krot) {
    const int64_t head_stride = (int64_t)st->cap * D, at = (int64_t)st->slot * D;
    for (int h = 0; h < H; h++) {
        rope(qkv + h * D, st->rope, qrot + h * D, D);
        if (st->sink_rope) rope(qkv + h * D, st->sink_rope, qsink + h * D, D);
    }
    for (int j = 0; j < Hkv; j++) {
        const float *v = qkv + (H + Hkv + j) * D;
        rope(qkv + (H + j) * D, st->rope, krot, D);
        if (st->kv_f16) {
            uint16_t *kd = (uint16_t *)kc + j * head_stride + at, *vd = (uint16_t *)vc + j * head_stride + at;
            for (int i = 0; i < D; i++) kd[i] = f32_to_f16(krot[i]), vd[i] = f32_to_f16(v[i]);
        } else {
            memcpy((float *)kc + j * head_stride + at, krot, sizeof(float) * D);
            memcpy((float *)vc + j * head_stride + at, v, sizeof(float) * D);
        }
    }
}

/* Attention of every head for one layer, inside the step's parallel region: Hkv x S work items (KV head,
 * slot range), then one combine per query head. */
static void attention(const omni_step *st, const step_scratch *w, int H, int Hkv, int D, const void *kc,
                      const void *vc) {
    const int G = H / Hkv, S = w->S, n = st->n, esz = st->kv_f16 ? 2 : 4;
    const int64_t head_bytes = (int64_t)st->cap * D * esz;
#pragma omp for schedule(static)
    for (int it = 0; it < Hkv * S; it++) {
        const int j = it / S, s = it % S, t0 = (int)((int64_t)n * s / S), t1 = (int)((int64_t)n * (s + 1) / S);
        const attn_group a = {w->qrot + j * G * D, st->sink_rope ? w->qsink + j * G * D : NULL,
                              (const char *)kc + j * head_bytes, (const char *)vc + j * head_bytes, st->mask,
                              st->kv_f16, st->sinks, G, D, n, 1.0f / sqrtf((float)D)};
        attend_split(&a, t0, t1, w->tiles + (int64_t)it * TILE * D, w->scores + (int64_t)j * G * n,
                     w->pm + s * H + j * G, w->pl + s * H + j * G, w->po + ((int64_t)s * H + j * G) * D);
    }
#pragma omp for schedule(static)
    for (int h = 0; h < H; h++)
        combine_splits(w->pm + h, w->pl + h, w->po + (int64_t)h * D, S, H, D, w->attn_out + h * D);
}

/* One token through every layer. x [C]: the token's embedding on entry, the residual stream after the
 * last layer on return; out [C]: the final-norm hidden state. Returns 0, or -1 when scratch memory
 * could not be allocated (x and the cache are then untouched). */
int omni_decode_step(const omni_model *m, const omni_step *st, float *x, float *out, int nthreads) {
    const int C = m->C, H = m->H, Hkv = m->Hkv, D = m->D, I = m->I;
    const int QKV = (H + 2 * Hkv) * D, maxK = I > C ? (I > H * D ? I : H * D) : (C > H * D ? C : H * D);
    const int64_t layer_bytes = (int64_t)Hkv * st->cap * D * (st->kv_f16 ? 2 : 4);
    step_scratch w;
    float *buf = alloc_scratch(m, st->n, nthreads, &w);
    block_q16_act *xq = malloc(sizeof(block_q16_act) * (size_t)(maxK / QK));
    if (!buf || !xq) {
        free(buf);
        free(xq);
        return -1;
    }
    float *xn = w.xn, *qkv = w.qkv, *gu = w.gu, *act = w.gu; /* act overwrites gate in place */
#pragma omp parallel num_threads(nthreads)
    for (int l = 0; l < m->n_layers; l++) {
        const omni_layer *L = &m->layers[l];
        char *kc = (char *)st->k + l * layer_bytes, *vc = (char *)st->v + l * layer_bytes;
#pragma omp single
        {
            rms_norm(x, L->attn_norm, xn, C, m->eps);
            quantize_q16_act(xn, xq, C);
        }
#pragma omp for schedule(static)
        for (int r = 0; r < QKV; r++)
            qkv[r] = dot_q4_1_q16((const block_q4_1 *)L->qkv + (int64_t)r * (C / QK), xq, C / QK) +
                     (L->qkv_bias ? L->qkv_bias[r] : 0.0f);
#pragma omp single
        rotate_and_store(st, qkv, H, Hkv, D, kc, vc, w.qrot, w.qsink, w.attn_out); /* free until the attention */
        attention(st, &w, H, Hkv, D, kc, vc);
#pragma omp single
        quantize_q16_act(w.attn_out, xq, H * D);
#pragma omp for schedule(static)
        for (int r = 0; r < C; r++)
            x[r] += dot_q4_1_q16((const block_q4_1 *)L->o + (int64_t)r * (H * D / QK), xq, H * D / QK);
#pragma omp single
        {
            rms_norm(x, L->mlp_norm, xn, C, m->eps);
            quantize_q16_act(xn, xq, C);
        }
#pragma omp for schedule(static)
        for (int r = 0; r < 2 * I; r++)
            gu[r] = dot_q4_1_q16((const block_q4_1 *)L->gate_up + (int64_t)r * (C / QK), xq, C / QK);
#pragma omp single
        {
            silu_mul(gu, act, I);
            quantize_q16_act(act, xq, I);
        }
#pragma omp for schedule(static)
        for (int r = 0; r < C; r++)
            x[r] += dot_q4_1_q16((const block_q4_1 *)L->down + (int64_t)r * (I / QK), xq, I / QK);
    }
    rms_norm(x, m->final_norm, out, C, m->eps);
    free(buf);
    free(xq);
    return 0;
}
