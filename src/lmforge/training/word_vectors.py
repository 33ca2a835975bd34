"""Word vectors from co-occurrence counts (PPMI + truncated SVD), a warm start for a model's input embeddings.

Masked-LM pretraining for minutes of a CPU leaves the model at the frequent-word plateau: its input
embeddings learn little about what words mean (docs/design.md). Counting which tokens occur near which
others over the whole corpus takes seconds with numpy, and the positive pointwise mutual information of
those counts, factored by a truncated SVD, gives vectors in which words used alike lie close (Levy, Goldberg
& Dagan 2015: PPMI-SVD is on par with word2vec on similarity tasks). `ppmi_svd_vectors` computes them from
token-id sequences; the pretraining recipe (`--word-init ppmi-svd`) writes them into the word embeddings
before masked-LM training starts.

Choices (Levy et al. 2015's recommendations, at this corpus size):
- window of `window` tokens each side, counts weighted 1/distance (word2vec's dynamic window, in expectation);
- contexts restricted to the `contexts` most frequent tokens (an (V, K) matrix rather than (V, V));
- context counts smoothed to the power 0.75 (shifts PMI away from rare contexts);
- vectors U_k * sqrt(S_k) (eigenvalue weighting p = 0.5), each row centred and the table scaled to a given
  standard deviation, so the embeddings sum with the position embeddings at BERT's init scale.
"""

from __future__ import annotations

import numpy as np
import torch


def cooccurrence(ids: np.ndarray, offsets: np.ndarray, vocab_size: int, contexts: np.ndarray, window: int,
                 ignore: np.ndarray) -> np.ndarray:
    """(V, K) counts of token v with context token `contexts[k]` within `window` positions in one sequence,
    weighted 1 / distance. `ids`: all sequences' tokens, flat; `offsets`: sequence boundaries (n + 1)."""
    ids = np.asarray(ids, dtype=np.int64)
    lengths = np.diff(np.asarray(offsets, dtype=np.int64))
    sequence = np.repeat(np.arange(len(lengths)), lengths)  # sequence index of every token
    column = np.full(vocab_size, -1, dtype=np.int64)
    column[contexts] = np.arange(len(contexts))  # token id -> context column, -1 if not a context
    kept = np.ones(vocab_size, dtype=bool)
    kept[ignore] = False
    keys, weights = [], []
    for distance in range(1, window + 1):
        left, right = ids[:-distance], ids[distance:]
        same = sequence[:-distance] == sequence[distance:]
        for word, context in ((left, right), (right, left)):  # both directions
            col = column[context]
            valid = same & (col >= 0) & kept[word]
            keys.append(word[valid] * len(contexts) + col[valid])
            weights.append(np.full(int(valid.sum()), 1.0 / distance))
    counts = np.bincount(np.concatenate(keys), weights=np.concatenate(weights), minlength=vocab_size * len(contexts))
    return counts.reshape(vocab_size, len(contexts))


def ppmi(counts: np.ndarray, context_power: float = 0.75) -> np.ndarray:
    """Positive PMI of a (V, K) count matrix, context probabilities smoothed to `context_power`."""
    total = counts.sum()
    if total <= 0:
        raise ValueError("no co-occurrences counted: the corpus is empty or shorter than two tokens per sequence")
    p_word = counts.sum(axis=1, keepdims=True) / total  # (V, 1)
    smoothed = counts.sum(axis=0) ** context_power
    p_context = (smoothed / smoothed.sum())[None, :]  # (1, K)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(counts / total) - np.log(p_word) - np.log(p_context)
    return np.where(counts > 0, np.maximum(pmi, 0.0), 0.0)


def ppmi_svd_vectors(ids: np.ndarray, offsets: np.ndarray, vocab_size: int, dim: int, *, window: int = 5,
                     contexts: int = 2000, ignore: list[int] | tuple[int, ...] = (), std: float = 0.02) -> torch.Tensor:
    """(vocab_size, dim) float32 word vectors: PPMI of windowed co-occurrence counts, truncated SVD.

    `ignore`: token ids neither counted as words nor as contexts (special tokens); their rows, and those of
    tokens never seen, are zero. Deterministic: the SVD comes from an eigendecomposition of the (K, K) Gram
    matrix in float64, with each vector's sign fixed (largest entry positive)."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got {ids.min()}..{ids.max()}")
    ignore_ids = np.asarray(list(ignore), dtype=np.int64)
    frequency = np.bincount(ids, minlength=vocab_size).astype(np.float64)
    frequency[ignore_ids] = 0
    order = np.argsort(-frequency, kind="stable")
    context_ids = order[: min(contexts, int((frequency > 0).sum()))]
    if len(context_ids) < dim:
        raise ValueError(f"the corpus has {len(context_ids)} distinct tokens, fewer than dim={dim}")
    matrix = ppmi(cooccurrence(ids, offsets, vocab_size, context_ids, window, ignore_ids))  # (V, K)
    gram = torch.from_numpy(matrix.T @ matrix)  # (K, K), float64
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)  # ascending
    top = torch.flip(eigenvalues[-dim:], [0]).clamp(min=0.0)  # (dim,) = S^2
    right = torch.flip(eigenvectors[:, -dim:], [1])  # (K, dim) = V
    singular = top.sqrt()
    left = torch.from_numpy(matrix) @ right / singular.clamp(min=1e-12)  # (V, dim) = U
    vectors = left * singular.sqrt()  # U * S^0.5
    signs = torch.sign(vectors.gather(0, vectors.abs().argmax(dim=0, keepdim=True)))  # (1, dim)
    vectors = vectors * signs
    seen = torch.from_numpy(matrix.sum(axis=1) > 0)
    vectors[seen] -= vectors[seen].mean(dim=0)
    vectors[~seen] = 0.0
    scale = vectors[seen].std()
    if scale > 0:
        vectors = vectors * (std / scale)
    return vectors.float()
