"""CPU fast paths: the capability probe (capabilities.py), oneDNN linears with fused activations
(onednn.py; the blocks using them, mlp.py), self-attention with one Q|K|V GEMM (encoder and decoder) and
varlen attention on unpadded tokens (attention.py), 16-bit dropout draws (dropout.py), projection +
cross-entropy in one node (losses.py); which replaces which readable block (fast_paths.py).
Each falls back to the plain torch computation where it does not apply (GPU, autograd, missing CPU features)."""
