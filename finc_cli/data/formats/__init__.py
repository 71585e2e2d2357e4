"""One module per on-disk dataset format: where its files are, how they are read, and how they are written."""

from finc_cli.data.formats.celeba import CelebAImages, write_celeba
from finc_cli.data.formats.cifar10 import write_cifar10
from finc_cli.data.formats.imagenet import write_imagenet
from finc_cli.data.formats.mnist import write_mnist

__all__ = ["CelebAImages", "write_celeba", "write_cifar10", "write_imagenet", "write_mnist"]
