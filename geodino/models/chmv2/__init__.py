"""Meta's CHMv2 canopy-height model: the timm DINOv3 backbone (SAT-493M ViT-L/16) plus a DPT head with depth bins,
numerically as transformers' ``CHMv2ForDepthEstimation`` and the official ``dinov3/eval/depth`` code.

The head reads blocks ``[5, 11, 17, 23]`` (0-based) after the final norm with their class tokens. Input: RGB in
0..1 normalised with :data:`CHMV2_MEAN`/:data:`CHMV2_STD` (CHMv2's own, not the backbone's), about 0.6 m per pixel,
H and W multiples of 32 (checked; the references pad instead). Output: heights ``[B, H, W]`` in metres, fp32.
Checkpoints: the transformers snapshot ``facebook/dinov3-vitl16-chmv2-dpt-head`` (backbone and head) or the
official head-only ``.pth`` on a separate backbone. ``config.py`` holds the hyper-parameters, ``head.py`` the
layers, ``layouts.py`` the key names, ``weights.py`` strict loading and saving.
"""

from geodino.models.chmv2.config import (CHMV2_MEAN, CHMV2_STD, CanopyConfig, CHMv2Arch, get_canopy_config)
from geodino.models.chmv2.head import CanopyHeightModel, CHMv2Head, logits_to_heights
from geodino.models.chmv2.layouts import convert_canopy_state_dict, detect_canopy_layout, hf_canopy_config
from geodino.models.chmv2.weights import load_canopy_model, save_canopy_weights
