"""The flax.linen models of the studies: score networks, generators, classifiers, a tiny LM.

| model | module | maps |
| --- | --- | --- |
| `ScoreMLP` | `mlp` | (x [B, D], t [B]) -> score [B, D] (2-D toys) |
| `UNet` | `unet` | (x [B, H, W, C], t [B]) -> [B, H, W, C] (images) |
| `MLPGenerator` | `generator` | z [B, latent_dim] -> x0 [B, D] (one-step generator) |
| `DenoiserGenerator`, `denoiser_generator` | `generator` | z -> D(sigma_init z, t_init) |
| `MLPClassifier`, `CNNClassifier` | `classifier` | images [B, H, W, C] -> logits [B, K] |
| `ResNet18` | `resnet` | 32x32 images -> logits (the data-diet ResNet) |
| `TransformerLM` | `transformer` | tokens [B, T] -> next-token logits [B, T, V] |

Building blocks and helpers (time embeddings, `ResBlock`, `transformer.sample`, ...) stay in
their modules.
"""

from scorejax.models.classifier import CNNClassifier, MLPClassifier
from scorejax.models.generator import DenoiserGenerator, MLPGenerator, denoiser_generator
from scorejax.models.mlp import ScoreMLP
from scorejax.models.resnet import ResNet18
from scorejax.models.transformer import TransformerLM
from scorejax.models.unet import UNet

__all__ = [
    "CNNClassifier",
    "DenoiserGenerator",
    "MLPClassifier",
    "MLPGenerator",
    "ResNet18",
    "ScoreMLP",
    "TransformerLM",
    "UNet",
    "denoiser_generator",
]
