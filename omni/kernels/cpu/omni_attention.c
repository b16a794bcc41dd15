/* Decode attention over a float32 or float16 KV cache: part of omni_cpu.c, which #includes this file after
 * its conversions and dot products (it is not compiled on its own). A separate .c file so that each stays
 * readable and the package data (every .c file in omni_kernels/cpu) ships it; the library's cache key covers
 * every .c and .h here (omni_kernels/cpu/__init__.py), so editing this file rebuilds the library too. */

/* ---------------------------------------------------------------- attention over the KV cache */

#define TILE 8 /* cache rows converted to float32 at once: 8 x D floats (2 KB at D = 64) stay in L1 */

/* Rows [t, t + r) of one head's cache as float32: the rows themselves for a float32 cache, else converted
 * into `tile` (F16C: 8 values per instruction). */
static inline const float *cache_rows(const void *base, int f16, int64_t t, int r, int D, float *tile) {
    if (!f16) return (const float *)base + t * D;
    const uint16_t *src = (const uint16_t *)base + t * D;
    int i = 0;
#ifdef OMNI_AVX2
    for (; i + 8 <= r * D; i += 8)
        _mm256_storeu_ps(tile + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
#endif
    for (; i < r * D; i++) tile[i] = f16_to_f32(src[i]);
    return tile;
}

/* out[r] = (q . rows[r]) scale + mask[r] for the TILE rows of a tile (mask: 0 or -inf); returns the largest.
 * The AVX2 path keeps one accumulator per row (8 independent FMA chains instead of one) and sums all 8
 * with one hadd tree: one chain and a horizontal sum per slot ran at ~80 cycles per slot of a KV head. */
static inline float score_tile(const float *q, const float *rows, int D, float scale, const float *mask,
                               float *out) {
#ifdef OMNI_AVX2
    if (D % 8 == 0) {
        __m256 a[TILE];
        for (int r = 0; r < TILE; r++) a[r] = _mm256_setzero_ps();
        for (int c = 0; c < D; c += 8) {
            const __m256 qc = _mm256_loadu_ps(q + c);
            for (int r = 0; r < TILE; r++) a[r] = _mm256_fmadd_ps(qc, _mm256_loadu_ps(rows + r * D + c), a[r]);
        }
        const __m256 h0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        const __m256 h1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
        const __m256 dots =
            _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20), _mm256_permute2f128_ps(h0, h1, 0x31));
        const __m256 sc = _mm256_fmadd_ps(dots, _mm256_set1_ps(scale), _mm256_loadu_ps(mask)); /* -inf stays */
        _mm256_storeu_ps(out, sc);
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(sc), _mm256_extractf128_ps(sc, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        return _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    }
#endif
    float mx = -INFINITY;
    for (int r = 0; r < TILE; r++) {
        out[r] = mask[r] == -INFINITY ? -INFINITY : dot_f32(q, rows + r * D, D) * scale + mask[r];
        mx = fmaxf(mx, out[r]);
    }
    return mx;
}

/* exp(s - mx) in place over n scores (0 for -inf ones); returns their sum */
static float exp_scores(float *s, int n, float mx) {
    float sum = 0.0f;
    int t = 0;
#ifdef OMNI_AVX2
    __m256 vsum = _mm256_setzero_ps();
    const __m256 vmx = _mm256_set1_ps(mx), ninf = _mm256_set1_ps(-INFINITY);
    for (; t + 8 <= n; t += 8) {
        const __m256 x = _mm256_loadu_ps(s + t);
        const __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(x, vmx)), _mm256_cmp_ps(x, ninf, _CMP_NEQ_OQ));
        _mm256_storeu_ps(s + t, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    sum = hsum8(vsum);
#endif
    for (; t < n; t++) {
        s[t] = s[t] == -INFINITY ? 0.0f : expf(s[t] - mx);
        sum += s[t];
    }
    return sum;
}

/* o[D] += sum over r < nr of p[r] rows[r]. AVX2: 64 outputs stay in 8 registers over the tile's rows
 * (one broadcast per row instead of one per row and 8 outputs). */
static inline void accumulate_rows(const float *p, const float *rows, int nr, int D, float *o) {
    int c = 0;
#ifdef OMNI_AVX2
    for (; c + 64 <= D; c += 64) {
        __m256 acc[8];
        for (int k = 0; k < 8; k++) acc[k] = _mm256_loadu_ps(o + c + 8 * k);
        for (int r = 0; r < nr; r++) {
            const __m256 pr = _mm256_set1_ps(p[r]);
            for (int k = 0; k < 8; k++)
                acc[k] = _mm256_fmadd_ps(pr, _mm256_loadu_ps(rows + r * D + c + 8 * k), acc[k]);
        }
        for (int k = 0; k < 8; k++) _mm256_storeu_ps(o + c + 8 * k, acc[k]);
    }
    for (; c + 8 <= D; c += 8) {
        __m256 acc = _mm256_loadu_ps(o + c);
        for (int r = 0; r < nr; r++)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(p[r]), _mm256_loadu_ps(rows + r * D + c), acc);
        _mm256_storeu_ps(o + c, acc);
    }
#endif
    for (; c < D; c++)
        for (int r = 0; r < nr; r++) o[c] += p[r] * rows[r * D + c];
}

typedef struct {       /* one KV head's view of the step, shared by its G query heads */
    const float *q, *q_sink; /* [G, D] rotated queries; the sink-scoring copies or NULL */
    const void *K, *V;       /* [cap, D] rows of this KV head, float32 or float16 (f16) */
    const float *mask;       /* [n] */
    int f16, sinks, G, D, n;
    float scale;
} attn_group;

/* Partial attention of a group's G query heads over slots [t0, t1) (flash-decoding style split, so two
 * threads share a KV head): per head the largest score m, the sum l of exp(score - m) and the unnormalised
 * output o [D]. Each cache row is read (and converted) once for all G heads. scores: [G, n]. */
static void attend_split(const attn_group *a, int t0, int t1, float *tile, float *scores, float *m, float *l,
                         float *o) {
    const int G = a->G, D = a->D, n = a->n;
    for (int g = 0; g < G; g++) m[g] = -INFINITY;
    for (int t = t0; t < t1; t += TILE) {
        const int r = t1 - t < TILE ? t1 - t : TILE;
        const float *rows = cache_rows(a->K, a->f16, t, r, D, tile);
        for (int g = 0; g < G; g++) {
            float *s = scores + (int64_t)g * n + t;
            if (r == TILE && !(a->q_sink && t < a->sinks)) {
                m[g] = fmaxf(m[g], score_tile(a->q + g * D, rows, D, a->scale, a->mask + t, s));
                continue;
            }
            for (int i = 0; i < r; i++) {
                const float *q = (a->q_sink && t + i < a->sinks ? a->q_sink : a->q) + g * D;
                const float mk = a->mask[t + i];
                s[i] = mk == -INFINITY ? -INFINITY : dot_f32(q, rows + i * D, D) * a->scale + mk;
                m[g] = fmaxf(m[g], s[i]);
            }
        }
    }
    for (int g = 0; g < G; g++) {
        l[g] = m[g] == -INFINITY ? 0.0f : exp_scores(scores + (int64_t)g * n + t0, t1 - t0, m[g]);
        for (int i = 0; i < D; i++) o[g * D + i] = 0.0f;
    }
    for (int t = t0; t < t1; t += TILE) {
        const int r = t1 - t < TILE ? t1 - t : TILE;
        const float *rows = cache_rows(a->V, a->f16, t, r, D, tile);
        for (int g = 0; g < G; g++)
            if (m[g] != -INFINITY) accumulate_rows(scores + (int64_t)g * n + t, rows, r, D, o + g * D);
    }
}

/* Softmax-weighted sum of S partial results of one head (m, l, o strided by `stride` heads). */
static void combine_splits(const float *m, const float *l, const float *o, int S, int stride, int D, float *out) {
    float mx = -INFINITY, sum = 0.0f;
    for (int s = 0; s < S; s++) mx = fmaxf(mx, m[s * stride]);
    for (int i = 0; i < D; i++) out[i] = 0.0f;
    for (int s = 0; s < S; s++) {
        if (m[s * stride] == -INFINITY) continue;
        const float w = expf(m[s * stride] - mx);
        sum += w * l[s * stride];
        for (int i = 0; i < D; i++) out[i] += w * o[(int64_t)s * stride * D + i];
    }
    const float inv = 1.0f / sum;
    for (int i = 0; i < D; i++) out[i] *= inv;
}
