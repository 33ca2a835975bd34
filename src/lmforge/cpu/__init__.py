"""CPU fast paths: the capability probe (capabilities.py), oneDNN linears with fused activations
(onednn.py), encoder self-attention with one Q|K|V GEMM and varlen attention on unpadded tokens
(attention.py), 16-bit dropout draws (dropout.py), projection + cross-entropy in one node (losses.py).
Each falls back to the plain torch computation where it does not apply (GPU, autograd, missing CPU features)."""
