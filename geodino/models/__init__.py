"""DINOv3 backbones from timm: the registry of named models, building, strict checkpoint loading and layouts.

>>> from geodino.models import list_models, build_model, load_backbone
>>> model = build_model("dinov3-vitl16-sat493m", depth=2)          # random init, small for tests
>>> model = load_backbone("dinov3-vitl16-sat493m", "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth")
>>> model.vit                                                      # timm's vit_large_patch16_dinov3 (Eva)

Also Meta's CHMv2 canopy-height head on the SAT ViT-L (``chmv2/``):

>>> from geodino.models import load_canopy_model
>>> chm = load_canopy_model("facebook/dinov3-vitl16-chmv2-dpt-head")   # heights = chm(x): [B, H, W] in metres

Modules: ``config`` (the registry of named models), ``backbone`` (timm's ViT with geodino's one forward call),
``layouts`` (key names of each checkpoint layout), ``weights`` (reading files strictly), ``loading`` (building,
loading block by block, the weights tools), ``chmv2/`` (the canopy head, split the same way).
"""

from __future__ import annotations

from geodino.models.backbone import Backbone, crop_to_patch_multiple, flops_per_image, rope_periods
from geodino.models.config import (IMAGENET_MEAN, IMAGENET_STD, SAT_MEAN, SAT_STD, ModelConfig, ViTArch, get_config,
                                   list_models)
from geodino.models.layouts import LAYOUTS, convert_state_dict, detect_layout
from geodino.models.weights import RandomWeightsWarning, WeightsInfo, file_sha256
from geodino.models.loading import (build_model, convert_weights, hf_config_for, inspect_weights, load_backbone,
                                    save_weights)

__all__ = [
    "Backbone", "ViTArch", "ModelConfig", "WeightsInfo", "RandomWeightsWarning", "LAYOUTS", "list_models",
    "get_config", "build_model", "load_backbone", "detect_layout", "convert_state_dict", "save_weights",
    "inspect_weights", "convert_weights", "file_sha256", "crop_to_patch_multiple", "rope_periods", "flops_per_image",
    "SAT_MEAN", "SAT_STD", "IMAGENET_MEAN", "IMAGENET_STD", "CHMv2Arch", "CHMv2Head", "CanopyHeightModel",
    "CanopyConfig", "CHMV2_MEAN", "CHMV2_STD", "load_canopy_model", "save_canopy_weights", "convert_canopy_state_dict",
    "detect_canopy_layout", "get_canopy_config",
]

# The CHMv2 canopy-height head (a DPT decoder on the SAT ViT-L).
from geodino.models.chmv2 import (CHMV2_MEAN, CHMV2_STD, CanopyConfig, CanopyHeightModel, CHMv2Arch,
                                  CHMv2Head, convert_canopy_state_dict, detect_canopy_layout, get_canopy_config,
                                  load_canopy_model, save_canopy_weights)
