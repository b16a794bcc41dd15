"""One-token (decode) attention over our sink + ring KV cache, grouped-query, split-K over the cache.

Cache layout (omni/model/lm/kv_cache.py): K and V of one layer are [B, Hkv, S, D] with S = sinks + ring slots; slot
s < sinks holds token s, later tokens go round the ring; `slot_token` [S] (or [B, S], one row per batch row)
says which token a slot holds (-1: empty or truncated away). A query at token index n = lengths[b] - 1 (its
own K/V already written) sees, exactly as `KVCache.plan` decides,

    slot_token[s] >= 0  and  slot_token[s] <= n  and  (s < sinks  or  slot_token[s] > n - window)

and scores the sink slots with `q_sink` (the query rotated to position - shift, see omni/kernels/rope.py) and
every other slot with `q`. Softmax order does not matter, so slots are visited in storage order: a wrapped
ring needs no unrolling, and a partly filled cache is cut at min(S, n + 1) slots.

Split-K: program (b, kv head, split) covers one slice of the ring (split 0 covers the sinks) for all G query
heads of that KV head, so each K/V row is read once per group, never expanded; it leaves a running max, sum
and weighted V sum, which a second kernel merges. At batch 1 a 7B model has 4 KV heads: without splitting a
4096-slot cache that is 4 programs on a 132-SM H200; the default split count aims at ~2 programs per SM.
The split count depends only on S and B, never on lengths, so launches are the same at every step (CUDA graphs).
"""

import math

import torch

from omni.kernels._triton import dot, interpreting, next_pow2, require_triton, round_to, tl, triton, use_triton

_BLOCK_N = 32  # slots per inner step; tl.dot needs >= 16 on every side

if triton is not None:
    _NEG = tl.constexpr(-1.0e30)  # "no score yet": finite, so empty splits merge without inf - inf

    @triton.jit
    def _split_kernel(
        q_ptr, qs_ptr, k_ptr, v_ptr, len_ptr, tok_ptr, m_ptr, l_ptr, acc_ptr,
        sq_b, sq_h, sqs_b, sqs_h, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, st_b,
        G, D, S, sinks, window, split_len, n_splits, scale,
        BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        kvh = tl.program_id(1).to(tl.int64)
        split = tl.program_id(2)
        n = tl.load(len_ptr + b).to(tl.int64) - 1  # the query's token index
        n_valid = tl.minimum(n + 1, S)
        lo = tl.where(split == 0, 0, sinks + (split - 1) * split_len)
        hi = tl.minimum(tl.where(split == 0, sinks, lo + split_len), n_valid)

        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, BLOCK_D)
        heads = kvh * G + g
        qmask = (g[:, None] < G) & (d[None, :] < D)
        q_main = tl.load(q_ptr + b * sq_b + heads[:, None] * sq_h + d[None, :], mask=qmask, other=0.0)
        q_sink = tl.load(qs_ptr + b * sqs_b + heads[:, None] * sqs_h + d[None, :], mask=qmask, other=0.0)
        q = tl.where(split == 0, q_sink, q_main).to(k_ptr.dtype.element_ty)

        m_i = tl.full((BLOCK_G,), _NEG, tl.float32)
        l_i = tl.zeros((BLOCK_G,), tl.float32)
        acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
        for start in range(lo, hi, BLOCK_N):
            slots = start + tl.arange(0, BLOCK_N)
            inside = slots < hi
            tok = tl.load(tok_ptr + b * st_b + slots, mask=inside, other=-1)
            seen = inside & (tok >= 0) & (tok <= n) & ((slots < sinks) | (tok > n - window))
            kv_mask = inside[:, None] & (d[None, :] < D)
            k = tl.load(k_ptr + b * sk_b + kvh * sk_h + slots[:, None] * sk_s + d[None, :], mask=kv_mask, other=0.0)
            s = dot(q, tl.trans(k), DOT_FP32) * scale  # [BLOCK_G, BLOCK_N]
            s = tl.where(seen[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            v = tl.load(v_ptr + b * sv_b + kvh * sv_h + slots[:, None] * sv_s + d[None, :], mask=kv_mask, other=0.0)
            pv = dot(round_to(p, v_ptr.dtype.element_ty), v, DOT_FP32)
            acc = acc * alpha[:, None] + pv
            l_i = l_i * alpha + tl.sum(p, axis=1)
            m_i = m_new
        out = ((b * G * tl.num_programs(1) + heads) * n_splits + split)  # [B, H, splits] row of each head
        gmask = g < G
        tl.store(m_ptr + out, m_i, mask=gmask)
        tl.store(l_ptr + out, l_i, mask=gmask)
        tl.store(acc_ptr + out[:, None] * D + d[None, :], acc, mask=qmask)

    @triton.jit
    def _merge_kernel(
        m_ptr, l_ptr, acc_ptr, o_ptr, so_b, so_h, H, D, n_splits,
        BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1).to(tl.int64)
        s = tl.arange(0, BLOCK_S)
        d = tl.arange(0, BLOCK_D)
        row = (b * H + h) * n_splits + s
        smask = s < n_splits
        m = tl.load(m_ptr + row, mask=smask, other=_NEG)
        w = tl.exp(m - tl.max(m, axis=0))  # empty splits: m = _NEG, weight 0
        l_sum = tl.sum(tl.load(l_ptr + row, mask=smask, other=0.0) * w, axis=0)
        acc = tl.load(acc_ptr + row[:, None] * D + d[None, :], mask=smask[:, None] & (d[None, :] < D), other=0.0)
        o = tl.sum(acc * w[:, None], axis=0) / l_sum
        tl.store(o_ptr + b * so_b + h * so_h + d, round_to(o, o_ptr.dtype.element_ty), mask=d < D)


def _check(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
           slot_token: torch.Tensor, sinks: int, window: int, q_sink: torch.Tensor | None) -> None:
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(f"q [B, H, D] and caches [B, Hkv, S, D] expected, got q {tuple(q.shape)}, "
                         f"k {tuple(k_cache.shape)}, v {tuple(v_cache.shape)}")
    B, H, D = q.shape
    Bc, Hkv, S, Dc = k_cache.shape
    if Bc != B or Dc != D or H % Hkv:
        raise ValueError(f"q {tuple(q.shape)} does not fit caches {tuple(k_cache.shape)}: need the same B and D "
                         "and query heads a multiple of KV heads")
    if q_sink is not None and q_sink.shape != q.shape:
        raise ValueError(f"q_sink must be like q {tuple(q.shape)}, got {tuple(q_sink.shape)}")
    if lengths.shape != (B,) or lengths.is_floating_point():
        raise ValueError(f"lengths must be integer [B] = [{B}], got {lengths.dtype} {tuple(lengths.shape)}")
    if slot_token.shape not in ((S,), (B, S)):
        raise ValueError(f"slot_token must be [S] or [B, S] with S = {S}, got {tuple(slot_token.shape)}")
    if not 0 <= sinks <= S or window < 1:
        raise ValueError(f"need 0 <= sinks <= S = {S} and window >= 1, got sinks {sinks}, window {window}")


def decode_attention_reference(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
    slot_token: torch.Tensor, sinks: int, window: int, q_sink: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Eager reference of `decode_attention`, computed as the model's attention computes it: scaled query
    in the cache dtype, scores in that dtype, softmax in float32, probabilities cast back for the V sum."""
    _check(q, k_cache, v_cache, lengths, slot_token, sinks, window, q_sink)
    B, H, D = q.shape
    Hkv, S = k_cache.shape[1], k_cache.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    tok = slot_token.to(q.device).expand(B, S)
    n = (lengths.to(q.device).long() - 1)[:, None]
    slot = torch.arange(S, device=q.device)[None, :]
    seen = (tok >= 0) & (tok <= n) & ((slot < sinks) | (tok > n - window)) & (slot <= n)
    dtype = k_cache.dtype
    qg = q.to(dtype).view(B, Hkv, H // Hkv, D) * scale
    scores = qg @ k_cache.transpose(-1, -2)  # [B, Hkv, G, S]
    if q_sink is not None and sinks:
        qs = q_sink.to(dtype).view(B, Hkv, H // Hkv, D) * scale
        scores[..., :sinks] = qs @ k_cache[:, :, :sinks].transpose(-1, -2)
    scores = scores.float().masked_fill(~seen[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v_cache.dtype)
    return (probs @ v_cache).view(B, H, D).to(q.dtype)


def default_splits(batch: int, kv_heads: int, slots: int, device: torch.device) -> int:
    """Ring splits for about two programs per streaming multiprocessor, each covering >= 64 slots."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
    return max(1, min(triton.cdiv(max(slots, 1), 2 * _BLOCK_N), triton.cdiv(2 * sms, batch * kv_heads)))


def decode_attention_triton(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
    slot_token: torch.Tensor, sinks: int, window: int, q_sink: torch.Tensor | None = None,
    scale: float | None = None, num_splits: int | None = None,
) -> torch.Tensor:
    """The Triton launcher (CUDA, or CPU tensors under TRITON_INTERPRET=1); same contract as the
    reference, plus `num_splits`: how many slices the ring slots are cut into (default `default_splits`)."""
    require_triton("decode_attention")
    _check(q, k_cache, v_cache, lengths, slot_token, sinks, window, q_sink)
    B, H, D = q.shape
    Hkv, S = k_cache.shape[1], k_cache.shape[2]
    for name, t in (("q", q), ("q_sink", q_sink), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t is not None and t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dimension, strides {t.stride()}")
    ring = S - sinks
    splits = default_splits(B, Hkv, ring, q.device) if num_splits is None else num_splits
    split_len = triton.cdiv(triton.cdiv(max(ring, 1), splits), _BLOCK_N) * _BLOCK_N
    n_splits = 1 + splits  # split 0: the sinks
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    tok = slot_token if slot_token.dim() == 2 else slot_token[None]
    qs = q if q_sink is None else q_sink
    m = torch.empty(B, H, n_splits, device=q.device, dtype=torch.float32)
    l_sum = torch.empty_like(m)
    acc = torch.empty(B, H, n_splits, D, device=q.device, dtype=torch.float32)
    block_d = max(16, next_pow2(D))
    _split_kernel[(B, Hkv, n_splits)](
        q, qs, k_cache, v_cache, lengths, tok, m, l_sum, acc,
        q.stride(0), q.stride(1), qs.stride(0), qs.stride(1), k_cache.stride(0), k_cache.stride(1),
        k_cache.stride(2), v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        tok.stride(0) if tok.shape[0] == B else 0,
        H // Hkv, D, S, sinks, window, split_len, n_splits, scale,
        BLOCK_G=max(16, next_pow2(H // Hkv)), BLOCK_N=_BLOCK_N, BLOCK_D=block_d, DOT_FP32=interpreting(),
    )
    out = torch.empty_like(q)
    _merge_kernel[(B, H)](m, l_sum, acc, out, out.stride(0), out.stride(1), H, D, n_splits,
                          BLOCK_S=next_pow2(n_splits), BLOCK_D=block_d)
    return out


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
    slot_token: torch.Tensor, sinks: int, window: int, q_sink: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of one new token per batch row over a sink + ring cache -> [B, H, D] in q's dtype.

    q [B, H, D]: the query rotated to its position; q_sink [B, H, D] or None: the query rotated for scoring
    the sinks (None: q scores them too, i.e. before the ring wraps); k_cache, v_cache [B, Hkv, S, D]: one
    layer of `KVCache.k`/`.v`, the query's own K/V already written; lengths [B]: tokens written per row, the
    query's included (>= 1); slot_token [S] or [B, S]: `KVCache.slot_token`; sinks, window: its CacheConfig;
    scale: default 1/sqrt(D). Query head h reads KV head h // (H / Hkv). Triton on CUDA, the reference elsewhere.
    """
    if use_triton(q):
        return decode_attention_triton(q, k_cache, v_cache, lengths, slot_token, sinks, window, q_sink, scale)
    return decode_attention_reference(q, k_cache, v_cache, lengths, slot_token, sinks, window, q_sink, scale)
