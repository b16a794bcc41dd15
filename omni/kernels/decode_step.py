"""One batch-1 decode step of a 4-bit decoder LM as a single C call (kernel: cpu/omni_cpu.c).

Per layer: RMSNorm -> q/k/v (Q4_1 blocks, optional bias) -> rotary on q and k -> k, v written into the
session's cache slot -> grouped-query attention over the valid slots with an additive mask (sinks scored
by a query rotated to a shifted position once the cache has wrapped, see omni/model/lm/kv_cache.py) -> o_proj
added to the residual -> RMSNorm -> gate/up -> SiLU(gate) * up -> down added to the residual; then the
final RMSNorm. All in float32 apart from the 4-bit weights, the int16 activations entering them and a
float16 cache when the session's cache is float16 (keys and values rounded once, when stored).

The eager reference is the model's own torch path (omni/model/lm/decoder.py) with its projections computed by
`omni.kernels.q4_matmul.q4_1_matmul_reference`; tests/kernels compares the two.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from omni.kernels.cpu import Library

CACHE_DTYPES = (torch.float32, torch.float16)  # the KV cache element types the C step reads and writes


class _Layer(ctypes.Structure):
    _fields_ = [(n, ctypes.c_void_p) for n in ("qkv", "o", "gate_up", "down", "qkv_bias", "attn_norm", "mlp_norm")]


class _Model(ctypes.Structure):
    _fields_ = [*[(n, ctypes.c_int) for n in ("n_layers", "C", "H", "Hkv", "D", "I")], ("eps", ctypes.c_float),
                ("layers", ctypes.c_void_p), ("final_norm", ctypes.c_void_p)]


class _Step(ctypes.Structure):
    _fields_ = [("k", ctypes.c_void_p), ("v", ctypes.c_void_p), ("cap", ctypes.c_int), ("slot", ctypes.c_int),
                ("n", ctypes.c_int), ("mask", ctypes.c_void_p), ("rope", ctypes.c_void_p),
                ("sink_rope", ctypes.c_void_p), ("sinks", ctypes.c_int), ("kv_f16", ctypes.c_int)]


@dataclass
class LayerWeights:
    qkv: torch.Tensor  # Q4_1 blocks [(H + 2 Hkv) D, C/32 * 20] uint8
    o: torch.Tensor  # [C, H D/32 * 20]
    gate_up: torch.Tensor  # [2 I, C/32 * 20]
    down: torch.Tensor  # [C, I/32 * 20]
    qkv_bias: torch.Tensor | None  # [(H + 2 Hkv) D] float32
    attn_norm: torch.Tensor  # [C] float32
    mlp_norm: torch.Tensor  # [C] float32


class DecodeStep:
    """Holds the weights' addresses (and references to the tensors, so they stay alive) for `omni_decode_step`."""

    def __init__(self, lib: Library, layers: list[LayerWeights], final_norm: torch.Tensor, *, num_heads: int,
                 num_kv_heads: int, head_dim: int, intermediate_size: int, eps: float) -> None:
        C = final_norm.shape[0]
        for name, t in [("final_norm", final_norm), *[(f"layer {i}", t) for i, L in enumerate(layers)
                                                      for t in vars(L).values() if t is not None]]:
            if t.device.type != "cpu" or not t.is_contiguous():
                raise ValueError(f"decode step: {name} must be a contiguous CPU tensor")
        if C % 32 or intermediate_size % 32 or (num_heads * head_dim) % 32 or head_dim % 2:
            raise ValueError("decode step: hidden, intermediate and attention widths must be multiples of 32")
        self._lib = lib
        self._keep = (layers, final_norm)
        self._layers = (_Layer * len(layers))()
        for i, L in enumerate(layers):
            self._layers[i] = _Layer(*(None if t is None else t.data_ptr() for t in
                                       (L.qkv, L.o, L.gate_up, L.down, L.qkv_bias, L.attn_norm, L.mlp_norm)))
        self._model = _Model(len(layers), C, num_heads, num_kv_heads, head_dim, intermediate_size, eps,
                             ctypes.addressof(self._layers), final_norm.data_ptr())
        self.hidden_size = C
        self._cache_dims = (len(layers), 1, num_kv_heads, head_dim)

    def __call__(self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot: int, mask: torch.Tensor,
                 rope: torch.Tensor, sink_rope: torch.Tensor | None, sinks: int) -> torch.Tensor:
        """x [C] float32 (the token's embedding; overwritten with the residual stream) -> final-norm hidden [C].

        k_cache, v_cache: [L, 1, Hkv, capacity, D] float32 or float16 (CACHE_DTYPES), written at `slot`;
        mask [n] float32 (0 or -inf) over slots [0, n); rope and sink_rope: [2, D] (cos, signed sin) as
        omni/model/layers/rope.fold_rope makes.
        """
        for t in (x, mask, rope, *(() if sink_rope is None else (sink_rope,))):
            if t.dtype != torch.float32 or not t.is_contiguous():
                raise ValueError("decode step: x, mask and rotary tables must be contiguous float32")
        if k_cache.dtype not in CACHE_DTYPES or v_cache.dtype != k_cache.dtype or not k_cache.is_contiguous() \
                or not v_cache.is_contiguous():
            raise ValueError(f"decode step: caches must be contiguous and both of one of {CACHE_DTYPES}")
        L, B, Hkv, cap, D = k_cache.shape
        n = mask.shape[-1]
        if (L, B, Hkv, D) != self._cache_dims or v_cache.shape != k_cache.shape or x.shape != (self.hidden_size,):
            raise ValueError(f"decode step: cache {tuple(k_cache.shape)} or x {tuple(x.shape)} do not fit the model")
        if not 0 <= slot < n <= cap or rope.shape != (2, D) or (sink_rope is not None and sink_rope.shape != (2, D)):
            raise ValueError(f"decode step: slot {slot}, {n} valid slots, capacity {cap}: inconsistent plan")
        out = torch.empty(self.hidden_size, dtype=torch.float32)
        step = _Step(k_cache.data_ptr(), v_cache.data_ptr(), cap, slot, n, mask.data_ptr(),
                     rope.data_ptr(), None if sink_rope is None else sink_rope.data_ptr(), sinks,
                     int(k_cache.dtype == torch.float16))
        rc = self._lib.lib.omni_decode_step(ctypes.addressof(self._model), ctypes.addressof(step), x.data_ptr(),
                                            out.data_ptr(), torch.get_num_threads())
        if rc != 0:
            raise MemoryError("decode step: could not allocate scratch memory")
        return out
