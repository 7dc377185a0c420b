"""Small hand-written models for the benchmark tasks (no torchvision here)."""

from lrfree.bench.models.encoder import ConvEncoder
from lrfree.bench.models.resnet import ResNetCifar, resnet20
from lrfree.bench.models.seeded import build_seeded
from lrfree.bench.models.unet import UNet
from lrfree.bench.models.vgg import SmallVGG
from lrfree.bench.models.vit import ViT

__all__ = ["ConvEncoder", "ResNetCifar", "SmallVGG", "UNet", "ViT", "build_seeded", "resnet20"]
