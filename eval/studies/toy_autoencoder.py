"""A small MLP autoencoder for latent-representation studies, with a swappable bottleneck.

The encoder and decoder are the same for every bottleneck, so a study compares bottlenecks
and nothing else:

- ``"ae"``: none, the decoder sees the encoder output z.
- ``"vqvae"``: :class:`~dqcodec.models.quantizers.VectorQuantizer` (EMA codebook, nearest
  code, straight-through gradient, beta * commitment loss). Its 1x1 projection acts as the
  encoder's last linear layer: the vector it quantizes is ``z_e = W z + b``.
- ``"soft-vqvae"``: :class:`~dqcodec.models.soft_quantizers.BayesianSoftQuantizer` (noise on
  z, posterior mean over the codebook in training, MAP centroid in eval mode); ``z_e = z``.

Images are (B, 1, S, S) in [0, 1]; latents are (B, D) vectors, passed to the quantizers as
(B, D, 1, 1) feature maps.
"""

from dataclasses import dataclass

import torch
from torch import nn

from dqcodec.models.quantizers import VectorQuantizer
from dqcodec.models.soft_quantizers import BayesianSoftQuantizer

BOTTLENECKS = ("ae", "vqvae", "soft-vqvae")


@dataclass
class AutoencoderOutput:
    """What :meth:`ToyAutoencoder.forward` returns.

    reconstruction: (B, 1, S, S) decoder output in [0, 1].
    loss: scalar bottleneck regulariser (0 for the plain autoencoder).
    perplexity: scalar exp(entropy) of the batch's code usage (0 for the plain autoencoder).
    """

    reconstruction: torch.Tensor
    loss: torch.Tensor
    perplexity: torch.Tensor


def _mlp(widths: list[int]) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (none after the last)."""
    layers = []
    for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(width_in, width_out))
        if index < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ToyAutoencoder(nn.Module):
    """MLP encoder (S*S -> hidden -> hidden/2 -> D), bottleneck, mirrored MLP decoder with sigmoid.

    Args:
        bottleneck: one of ``BOTTLENECKS``.
        image_size: S, the side of the square one-channel images.
        latent_dim: D, the dimension of z and of the codewords.
        codebook_size: K, codewords of the VQ bottlenecks (ignored by ``"ae"``).
        hidden: width of the first hidden layer.
        noise_std, beta: the soft VQ-VAE's latent noise and both quantizers' commitment weight.
    """

    def __init__(
        self, bottleneck: str, image_size: int = 16, latent_dim: int = 16, codebook_size: int = 32,
        hidden: int = 256, noise_std: float = 0.1, beta: float = 0.25,
    ):
        super().__init__()
        if bottleneck not in BOTTLENECKS:
            raise ValueError(f"unknown bottleneck {bottleneck!r}; expected one of {', '.join(BOTTLENECKS)}")
        self.bottleneck = bottleneck
        self.image_size = image_size
        pixels = image_size * image_size
        self.encoder = _mlp([pixels, hidden, hidden // 2, latent_dim])
        self.decoder = _mlp([latent_dim, hidden // 2, hidden, pixels])
        if bottleneck == "vqvae":
            self.quantizer = VectorQuantizer(latent_dim, codebook_size, latent_dim, beta=beta)
        elif bottleneck == "soft-vqvae":
            self.quantizer = BayesianSoftQuantizer(latent_dim, codebook_size, noise_std=noise_std, beta=beta)
        else:
            self.quantizer = None

    def encoder_latent(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) images -> (B, D) z_e, the vector the bottleneck quantizes."""
        z = self.encoder(images.flatten(1))
        if self.bottleneck == "vqvae":
            return self.quantizer.project(z[:, :, None, None]).flatten(1)
        return z

    def quantized_latent(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) images -> (B, D) z_hat, the hard codeword (z for the plain autoencoder)."""
        z = self.encoder(images.flatten(1))
        if self.quantizer is None:
            return z
        features = z[:, :, None, None]
        return self.quantizer.dequantize(self.quantizer.quantize(features)).flatten(1)

    def forward(self, images: torch.Tensor) -> AutoencoderOutput:
        """(B, 1, S, S) images -> AutoencoderOutput (train mode: soft/straight-through; eval: hard)."""
        z = self.encoder(images.flatten(1))
        if self.quantizer is None:
            decoded = z
            loss = perplexity = torch.zeros((), device=z.device)
        else:
            features = z[:, :, None, None]
            out = self.quantizer(features)
            decoded, loss, perplexity = out.quantized.flatten(1), out.loss, out.perplexity.mean()
        reconstruction = torch.sigmoid(self.decoder(decoded)).view(-1, 1, self.image_size, self.image_size)
        return AutoencoderOutput(reconstruction=reconstruction, loss=loss, perplexity=perplexity)
