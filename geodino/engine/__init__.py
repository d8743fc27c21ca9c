"""Stage 3 of the pipeline: backbone inference on a device (GPU or CPU)."""

from geodino.engine.engine import (Engine, EngineSpec, compile_pays_back, cpu_has_native_bf16, engine_numerics,
                                    get_engine, prepare_batch, resolve_device, resolve_precision)

__all__ = ["Engine", "EngineSpec", "get_engine", "prepare_batch", "resolve_device", "resolve_precision",
           "cpu_has_native_bf16", "engine_numerics", "compile_pays_back"]
