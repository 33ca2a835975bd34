"""oneDNN versions of the `nn.mlp` blocks BERT uses: the matmul through oneDNN (`cpu.onednn`) with the
activation fused into it, where `onednn.compute_dtype` allows (CPU inference; in fp32 only on packed
tokens, x (N, C), so padded "sdpa" batches keep ATen's numbers); else the readable forward. Each
replaces its `nn.mlp` parent in a model (`cpu.fast_paths`) and adds no parameters.
"""

from __future__ import annotations

from torch import Tensor

from ..nn.mlp import DenseAct, DenseActNorm, PostNormOutput
from . import onednn


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
