"""Honest bits/dim of a DQ-AE likelihood model: the code indices' bits plus -log2 p(x | codes).

The DQ paper reports -log2 p(x | codes) / dims, the *reconstruction term only*: the code indices
that the decoder needs are free in that figure. A real code length also pays for the indices
(DESIGN.md, "Measurement conventions"):

    bits/dim = (bits of the indices under an index prior + -log2 p(x | codes)) / (H W C).

The index prior is the project's exact one, fitted on the codes of *training* images only: per
level, the top level under a :class:`~dqcodec.models.entropy.ContextIndexModel` (contexts from
earlier codebooks and decoded neighbours), every lower level under a
:class:`~dqcodec.models.hierarchical_entropy.CoarseConditionedIndexModel` reading the level
above (the DQ-AE decodes top down, so a level's parent is decoded first). Its bits are the
-log2 of the integer frequency tables a range coder would use, so they are an achievable code
length, not an entropy estimate of the test codes themselves.

Images are (N, S, S, 3) uint8 arrays (what :mod:`dqcodec.train.likelihood_data` loads).
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dqcodec.models.entropy import ContextIndexModel
from dqcodec.models.hierarchical_entropy import CoarseConditionedIndexModel

COARSE = "coarse"  # the side-information name under which a level reads the level above


@dataclass
class Encoded:
    """A set of images run through the model.

    indices: per level, bottom first, (N, M_l, h_l, w_l) int64 code indices.
    reconstruction_bits: (N,) -log2 p(x | codes) of each image, in bits.
    squared_error: (N,) mean squared error per sub-pixel of the head's mean image, in 8-bit
        code values squared (the L2 of the DQ paper's tables, on the 0..255 scale).
    dims: sub-pixels per image (H W C).
    """

    indices: list[np.ndarray]
    reconstruction_bits: np.ndarray
    squared_error: np.ndarray
    dims: int


@dataclass
class SplitLikelihood:
    """Bits per sub-pixel of one data set split (means over its images)."""

    images: int
    squared_error: float  # MSE per sub-pixel of the head's mean image, 8-bit code values squared
    reconstruction_bits_per_dim: float  # -log2 p(x | codes) / dims: the paper's figure, reconstruction term only
    index_bits_per_dim: float  # bits of all levels' indices under the fitted prior / dims
    index_bits_per_dim_by_level: list[float]  # the same, per level, bottom first
    bits_per_dim: float  # honest: index bits + reconstruction bits, / dims

    def as_dict(self) -> dict:
        return dict(vars(self))


def to_batch(images: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255


@torch.no_grad()
def encode_images(net: nn.Module, images: np.ndarray, batch_size: int = 64, desc: str = "encoding") -> Encoded:
    """Indices of every level and -log2 p(x | codes) of (N, S, S, 3) uint8 ``images``."""
    net.eval()
    levels: list[list[np.ndarray]] = [[] for _ in range(net.num_levels)]
    bits, errors = [], []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False):
        batch = to_batch(images[start : start + batch_size])
        indices = net.encode(batch)
        parameters = net.head_parameters(indices)
        bits.append(net.head.bits(parameters, batch).double().numpy())
        errors.append((((net.head.mean(parameters) - batch) * 255) ** 2).flatten(1).mean(1).double().numpy())
        for level, level_indices in zip(levels, indices, strict=True):
            level.append(level_indices.numpy())
    return Encoded([np.concatenate(level) for level in levels], np.concatenate(bits), np.concatenate(errors),
                   int(np.prod(images.shape[1:])))


@torch.no_grad()
def encode_indices(net: nn.Module, images: np.ndarray, batch_size: int = 64, desc: str = "encoding") -> list[np.ndarray]:
    """Per level, bottom first, the (N, M_l, h_l, w_l) int64 indices of (N, S, S, 3) uint8 ``images``
    (what fitting an index prior needs, without evaluating the output head)."""
    net.eval()
    batches = [net.encode(to_batch(images[start : start + batch_size]))
               for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False)]
    return [np.concatenate([batch[level].numpy() for batch in batches]) for level in range(net.num_levels)]


def _sides(indices: list[np.ndarray]) -> list[dict]:
    """The side information of each level: the indices of the level above (none for the top)."""
    return [{COARSE: indices[level + 1]} if level + 1 < len(indices) else {} for level in range(len(indices))]


def _usage(indices: np.ndarray, codebook_size: int) -> torch.Tensor:
    """(M, K) how often each code of each codebook occurs in (N, M, h, w) ``indices``."""
    return torch.stack([torch.bincount(torch.from_numpy(indices[:, m].ravel()), minlength=codebook_size)
                        for m in range(indices.shape[1])]).double()


@torch.no_grad()
def fit_index_prior(net: nn.Module, training: list[np.ndarray]) -> list[ContextIndexModel]:
    """Per level (bottom first), context tables counted over the training images' codes
    ``training`` (per level, (N, M_l, h_l, w_l) indices).

    Every code gets one extra count before the activity classes are set, so a code that no
    training image used stays in the alphabet (the tables give it the prior count's probability).
    """
    priors: list[ContextIndexModel] = []
    for level, (quantizer, indices, side) in enumerate(zip(net.quantizers, training, _sides(training), strict=True)):
        m_count, k_count = quantizer.num_codebooks, quantizer.codebook_size
        if level + 1 < net.num_levels:
            above = net.quantizers[level + 1]
            prior = CoarseConditionedIndexModel(m_count, k_count, COARSE, above.num_codebooks, above.codebook_size, factor=2)
            prior.set_coarse_codes(above.codebooks.double(), _usage(training[level + 1], above.codebook_size) + 1)
        else:
            prior = ContextIndexModel(m_count, k_count)
        prior.set_codes(quantizer.codebooks.double(), _usage(indices, k_count) + 1)
        prior.fit([(indices, side)])
        priors.append(prior)
    return priors


def split_likelihood(priors: list[ContextIndexModel], encoded: Encoded) -> SplitLikelihood:
    """Mean bits per sub-pixel of ``encoded`` images: reconstruction term, index bits, honest total."""
    count = len(encoded.reconstruction_bits)
    level_bits = [prior.bits(indices, side) for prior, indices, side in zip(priors, encoded.indices, _sides(encoded.indices), strict=True)]
    per_dim = count * encoded.dims
    reconstruction = float(encoded.reconstruction_bits.sum()) / per_dim
    index = sum(level_bits) / per_dim
    return SplitLikelihood(
        images=count,
        squared_error=float(encoded.squared_error.mean()),
        reconstruction_bits_per_dim=reconstruction,
        index_bits_per_dim=index,
        index_bits_per_dim_by_level=[bits / per_dim for bits in level_bits],
        bits_per_dim=reconstruction + index,
    )
