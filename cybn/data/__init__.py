"""CIFAR-10 for cybn: verified download, safe loading, normalisation, augmentation, batching.

    data = load_cifar10(path)                     # archive / folder; None = cached download
    mean, std = channel_stats(data.train_images)  # per channel, pixel/255 units
    train = DataLoader(data.train_images, data.train_labels, 128, augment=True, seed=0,
                       mean=mean, std=std)
    test = DataLoader(data.test_images, data.test_labels, 500, shuffle=False, mean=mean, std=std)
"""
from .cifar10 import CIFAR10, CIFAR10_CLASSES, load_cifar10, safe_unpickle
from .download import (CIFAR10_MD5, CIFAR10_SIZE, CIFAR10_URL, ChecksumError, DownloadError,
                       default_cache_dir, download, download_cifar10)
from .loader import (DataLoader, augment_normalize, channel_stats, crop_flip_normalize,
                     normalization_lut, normalize)

__all__ = ["load_cifar10", "CIFAR10", "CIFAR10_CLASSES", "safe_unpickle",
           "download_cifar10", "download", "default_cache_dir", "DownloadError", "ChecksumError",
           "CIFAR10_URL", "CIFAR10_MD5", "CIFAR10_SIZE",
           "DataLoader", "channel_stats", "normalize", "normalization_lut",
           "crop_flip_normalize", "augment_normalize"]
