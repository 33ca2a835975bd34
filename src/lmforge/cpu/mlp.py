"""oneDNN versions of the `nn.mlp` blocks and of `nn.Linear`: the matmul through oneDNN (`cpu.onednn`) with
the activation (or SwiGLU's product) fused into it, where `onednn.compute_dtype` allows (CPU inference; in
fp32 only BERT's packed tokens, x (N, C), so padded "sdpa" batches and the decoders keep ATen's numbers);
else the readable forward. Each replaces its parent in a model (`cpu.fast_paths`) and adds no parameters.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..nn.mlp import DenseAct, DenseActNorm, GatedMLP, PostNormOutput
from . import onednn


class OneDNNLinear(nn.Linear):
    """`nn.Linear` through oneDNN in bf16 CPU inference (autocast, or bf16 weights): the same numbers as ATen's
    bf16 matmul (itself oneDNN underneath), but inside `onednn.frozen_weights()` the weight is cast and
    reordered into oneDNN's blocked layout once, not on every call (SmolLM2's 49152 x 576 lm_head: 28M
    weights). fp32 and autograd: `nn.Linear`'s forward."""

    def forward(self, x: Tensor) -> Tensor:
        dtype = onednn.compute_dtype(x, self.weight, fp32=False)
        if dtype is None:
            return super().forward(x)
        return onednn.linear(x, *onednn.prepared(self, dtype, lambda: (self.weight, self.bias)))


class OneDNNGatedMLP(GatedMLP):
    """SwiGLU; bf16 CPU inference: the activation fused into the gate matmul and the product into the up
    matmul (oneDNN), so the (B, T, I) intermediate is written once, not three times. fp32 and autograd: the
    parent's computation (`onednn.fused_linears`: one ATen matmul per weight, no weight copy)."""

    def forward(self, x: Tensor) -> Tensor:
        if onednn.active(x, self.gate_proj.weight, fp32=False) and self.hidden_act in onednn.POST_OPS:
            gated = onednn.linear_module(x, self.gate_proj, fp32=False, activation=self.hidden_act)  # (B, T, I)
            return self.down_proj(onednn.linear_times(x, self.up_proj, gated))  # (B, T, C)
        gate, up = onednn.fused_linears(x, self, (self.gate_proj, self.up_proj))  # (B, T, I) each
        return self.down_proj(self.act(gate) * up)  # (B, T, C)


class OneDNNDenseAct(DenseAct):
    def forward(self, x: Tensor) -> Tensor:
        if self.hidden_act not in onednn.POST_OPS:
            return super().forward(x)
        return onednn.linear_module(x, self.dense, fp32=x.dim() == 2, activation=self.hidden_act)


class OneDNNDenseActNorm(DenseActNorm):
    def forward(self, x: Tensor) -> Tensor:
        if self.hidden_act not in onednn.POST_OPS:
            return super().forward(x)
        # bf16 only: its input is padded (B, T, C), or the masked rows of sparse MLM, never packed tokens.
        return self.LayerNorm(onednn.linear_module(x, self.dense, fp32=False, activation=self.hidden_act))


class OneDNNPostNormOutput(PostNormOutput):
    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        projected = onednn.linear_module(x, self.dense, fp32=x.dim() == 2)
        return self.LayerNorm(self.dropout(projected) + residual)
