"""Meta's CHMv2 canopy-height head (a DPT decoder with depth bins) on geodino's timm DINOv3 backbone.

Numerically faithful to transformers' ``CHMv2ForDepthEstimation`` / ``CHMv2Config`` (5.x) and to the official
``dinov3/eval/depth/models/dpt_head.py`` + ``dinov3/hub/depthers.py::dinov3_vitl16_chmv2`` (facebookresearch/dinov3).
Split as the backbone is: ``config.py`` (the head's hyper-parameters and the named canopy models), ``head.py`` (its
layers, the head, the backbone + head model), ``layouts.py`` (key names of each checkpoint layout), ``weights.py``
(strict loading and saving).

The model (official config, ``_get_chmv2_config`` in dinov3/hub/depthers.py, and the transformers defaults):

* the backbone is the SAT-493M ViT-L/16, run once; the head reads blocks ``[5, 11, 17, 23]`` (0-based; transformers'
  ``out_indices`` ``[6, 12, 18, 24]`` count the patch embedding as stage 0), each after the backbone's final
  LayerNorm, with that block's (normed) class token;
* readout ``project``: every patch token is concatenated with the class token, ``GELU(Linear(2D -> D))``;
* reassemble: 1x1 conv to ``[128, 256, 512, 1024]`` channels, then resize by ``[4, 2, 1, 0.5]`` (transposed conv
  4x4/4, 2x2/2, identity, 3x3 stride-2 conv): patch grids at 1/4, 1/8, 1/16 and 1/32 of the input;
* 3x3 convs to 256 channels, then four fusion blocks (pre-activation residual units, 2x bilinear upsampling with
  ``align_corners=True``, 1x1 projection; a skip of another size is resized with ``align_corners=False``);
* depth head: 3x3 conv 256 -> 128, 2x bilinear upsample, 3x3 conv -> 128, ReLU, 1x1 conv -> 256 bin logits;
* heights: ``chmv2_mixlog`` bins (a linear-to-log blend from 0.001 m to 96/8 m) weighted by the ReLU'd logits, sum
  normalised, times 8. Heights lie in [0.008, 96] m.

Input contract (what the streaming job must feed :class:`CanopyHeightModel`):

* RGB, 3 bands in R, G, B order, scaled to 0..1 (uint8 / 255 in the official notebook), then normalised with
  :data:`CHMV2_MEAN` = (0.420, 0.411, 0.296) and :data:`CHMV2_STD` = (0.213, 0.156, 0.143). These are CHMv2's own
  values: ``notebooks/chmv2_inference.ipynb`` (facebookresearch/dinov3) and transformers' ``CHMv2ImageProcessor``
  both use them. They differ from the SAT-493M backbone's mean (0.430, ...) in the first channel only, so use the
  canopy model's ``mean``/``std``, not the backbone config's.
* Imagery of about 0.6 m ground sampling distance: the backbone was pretrained on SAT-493M, Maxar RGB at 0.6 m
  (DINOv3 model card), and CHMv2 maps canopy height at metre resolution from such imagery (Brandt et al. 2026,
  arXiv:2603.06382). Resample other resolutions in the read (:attr:`CanopyHeightModel.native_gsd_m`).
* H and W multiples of 32 (checked). The head halves the 1/16 patch grid once and doubles it five times, so the
  map is ``32 * ceil(H / 32)`` px tall: exactly the input size only for multiples of 32. The references pad instead
  (official: centre-pad to a multiple of 16, then resize the map back with bilinear interpolation; transformers:
  centre-pad with ``CHMv2ImageProcessor``, resize with ``post_process_depth_estimation``); geodino makes the caller
  choose tiles that need neither.
* Output: heights in metres, ``[B, H, W]``, float32 (the bin arithmetic runs in fp32 whatever the model dtype),
  pixel-aligned with the input.

Checkpoints: the HF repo ``facebook/dinov3-vitl16-chmv2-dpt-head`` (gated) holds ``config.json`` and one F32
``model.safetensors`` whose hub metadata counts 336,876,800 values: exactly a whole ``CHMv2ForDepthEstimation``
with the SAT ViT-L backbone and no key bias (483 tensors). transformers' converter (``convert_chmv2_to_hf.py``)
writes it with ``save_pretrained``: ``backbone.embeddings.*``, ``backbone.layer.N.*`` (``backbone.model.layer.N``
in memory; both are read), ``backbone.norm.*`` and ``head.*``, without key bias, ``bias_mask`` or local_cls_norm.
The official release is the head alone, ``dinov3_vitl16_chmv2_dpt_head-3703d643.pth`` in the official module names
(``dinov3/hub/depthers.py`` loads it onto the SAT-493M backbone). Both load here, strictly: see
:func:`load_canopy_model`. transformers recomputes RoPE frequencies unrounded; geodino keeps the bf16-rounded
periods of the released backbone, as the official code does.
"""

from geodino.models.chmv2.config import (CANOPY_DEFAULT_BACKBONE, CHMV2_MEAN, CHMV2_STD, CanopyConfig, CHMv2Arch,
                                         get_canopy_config, list_canopy_models)
from geodino.models.chmv2.head import CanopyHeightModel, CHMv2Head, check_compatible, depth_bins, logits_to_heights
from geodino.models.chmv2.layouts import (HEAD_LAYOUTS, convert_canopy_state_dict, detect_canopy_layout,
                                          hf_canopy_config)
from geodino.models.chmv2.weights import load_canopy_model, save_canopy_weights, validate_canopy_weights

__all__ = ["CHMv2Arch", "CHMv2Head", "CanopyHeightModel", "CanopyConfig", "CHMV2_MEAN", "CHMV2_STD",
           "CANOPY_DEFAULT_BACKBONE", "HEAD_LAYOUTS", "load_canopy_model", "validate_canopy_weights",
           "save_canopy_weights", "convert_canopy_state_dict", "detect_canopy_layout", "get_canopy_config",
           "list_canopy_models", "logits_to_heights", "depth_bins", "check_compatible", "hf_canopy_config"]
