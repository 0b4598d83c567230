"""The embedded digits model: data, network, shipped weights, classifier, digits-FID and training.

Importing this package loads the data split, network and file helpers; the classifier, digits-FID
and training live in their own modules (``ddim.app.digits.classifier``, ``.fid``, ``.training``).
"""

from ddim.app.digits.data import PIXEL_MAX, SPLIT_SEED, TEST_SIZE, DigitsSplit, load_digits_split
from ddim.app.digits.model_files import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_model,
    load_pretrained,
    load_state_dict,
    read_model_config,
    scheduler_from_config,
    unet_config_from_dict,
    unet_from_state_dict,
    weights_dir,
)
from ddim.app.digits.unet import DigitsUNet, ResBlock, UNetConfig, timestep_embedding
from ddim.app.images import to_images

__all__ = [
    "CONFIG_NAME",
    "PIXEL_MAX",
    "SPLIT_SEED",
    "TEST_SIZE",
    "WEIGHTS_NAME",
    "DigitsSplit",
    "DigitsUNet",
    "ResBlock",
    "UNetConfig",
    "load_digits_split",
    "load_model",
    "load_pretrained",
    "load_state_dict",
    "read_model_config",
    "scheduler_from_config",
    "timestep_embedding",
    "to_images",
    "unet_config_from_dict",
    "unet_from_state_dict",
    "weights_dir",
]
