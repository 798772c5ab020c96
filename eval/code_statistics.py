"""How a quantizer uses its codebooks: code entropy per position and mutual information between codebooks.

The DQ paper (Fig. 3) compares depthwise quantization with the coupled-VQ baseline by the entropy
of each codebook's codes (high: the codes are used, not collapsed) and by the mutual information
between codebooks (low: the codebooks carry different information, not copies of one another).
Both are plug-in estimates from the empirical distributions over a set of images, in **nats**:

- ``position_entropy``: H(q_m at position (r, c)) over the images, (M, h, w);
- ``mutual_information``: I(q_i; q_j) between codebooks i and j at the same position, pooled over
  positions and images, (M, M); the diagonal is each codebook's (pooled) entropy, I(q; q) = H(q).

Indices are (N, M, h, w) integer arrays of N images, M codebooks of K codes.
"""

import numpy as np


def entropy(counts: np.ndarray, axis: int = -1) -> np.ndarray:
    """Entropy in nats of the distribution(s) given by non-negative ``counts`` along ``axis``."""
    counts = np.asarray(counts, dtype=np.float64)
    probabilities = counts / np.maximum(counts.sum(axis=axis, keepdims=True), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probabilities > 0, -probabilities * np.log(probabilities), 0.0)
    return terms.sum(axis=axis)


def position_entropy(indices: np.ndarray, codebook_size: int) -> np.ndarray:
    """(N, M, h, w) indices -> (M, h, w) entropy (nats) of each codebook's code at each position."""
    n, m_count, h, w = indices.shape
    flat = indices.reshape(n, -1).T  # (M h w, N): the N codes seen at one (codebook, position)
    offsets = np.arange(flat.shape[0])[:, None] * codebook_size
    counts = np.bincount((flat + offsets).ravel(), minlength=flat.shape[0] * codebook_size).reshape(-1, codebook_size)
    return entropy(counts).reshape(m_count, h, w)


def mutual_information(indices: np.ndarray, codebook_size: int) -> np.ndarray:
    """(N, M, h, w) indices -> (M, M) I(q_i; q_j) in nats, codebooks paired at the same position.

    I(q_i; q_j) = H(q_i) + H(q_j) - H(q_i, q_j) from the joint K x K histogram over all
    positions and images (the plug-in estimate; it is biased upwards by about (K - 1)^2 / (2 n)
    nats for n samples of independent codes, so use n well above K^2).
    """
    m_count = indices.shape[1]
    codes = np.moveaxis(indices, 1, 0).reshape(m_count, -1).astype(np.int64)  # (M, n)
    marginal = entropy(np.stack([np.bincount(row, minlength=codebook_size) for row in codes]))
    information = np.diag(marginal)
    for i in range(m_count):
        for j in range(i + 1, m_count):
            joint = entropy(np.bincount(codes[i] * codebook_size + codes[j], minlength=codebook_size**2))
            information[i, j] = information[j, i] = max(marginal[i] + marginal[j] - joint, 0.0)
    return information


def mean_off_diagonal(matrix: np.ndarray) -> float:
    """Mean of the off-diagonal entries of a square matrix (0 for 1 x 1)."""
    size = len(matrix)
    if size < 2:
        return 0.0
    return float((matrix.sum() - np.trace(matrix)) / (size * (size - 1)))
