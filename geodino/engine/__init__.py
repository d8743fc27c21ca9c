"""Stage 3 of the pipeline: inference on a device (GPU or CPU): the backbone's features (``engine.py``) and, with
the CHMv2 head on the same backbone pass, canopy heights (``canopy.py``)."""

from geodino.engine.canopy import CanopyEngine, CanopyEngineSpec
from geodino.engine.engine import (Engine, EngineSpec, compile_pays_back, cpu_has_native_bf16, engine_numerics,
                                    get_engine, prepare_batch, resolve_device, resolve_precision)

__all__ = ["Engine", "EngineSpec", "get_engine", "prepare_batch", "resolve_device", "resolve_precision",
           "cpu_has_native_bf16", "engine_numerics", "compile_pays_back", "CanopyEngine", "CanopyEngineSpec"]
