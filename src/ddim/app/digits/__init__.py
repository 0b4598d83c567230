"""The embedded digits models: data, network, shipped weights, classifier, digits-FID and training.

Two models ship: the unconditional epsilon-prediction one (``load_pretrained()``) and a class-conditional
v-prediction one on a zero-terminal-SNR schedule (``load_pretrained(conditional=True)``, sampled with
:func:`sample_digits`; see ``ddim.app.digits.conditional``). Importing this package loads the data split,
network, file and sampling helpers; the classifier, digits-FID and training live in their own modules
(``ddim.app.digits.classifier``, ``.fid``, ``.training``, ``.conditional_training``).
"""

from ddim.app.digits.conditional import NULL_LABEL, NUM_LABELS, sample_digits
from ddim.app.digits.data import PIXEL_MAX, SAMPLE_SHAPE, SPLIT_SEED, TEST_SIZE, DigitsSplit, load_digits_split
from ddim.app.digits.model_files import (
    CONDITIONAL_CONFIG_NAME,
    CONDITIONAL_WEIGHTS_NAME,
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
    "CONDITIONAL_CONFIG_NAME",
    "CONDITIONAL_WEIGHTS_NAME",
    "CONFIG_NAME",
    "NULL_LABEL",
    "NUM_LABELS",
    "PIXEL_MAX",
    "SAMPLE_SHAPE",
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
    "sample_digits",
    "scheduler_from_config",
    "timestep_embedding",
    "to_images",
    "unet_config_from_dict",
    "unet_from_state_dict",
    "weights_dir",
]
