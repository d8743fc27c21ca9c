"""Reading checkpoints from disk or the local Hugging Face cache, strictly, with provenance.

``weights`` may be a ``.safetensors`` file, a ``.pth``/``.pt``/``.bin`` file (read only through
``torch.load(weights_only=True)``: a pickle that names anything beyond tensors is refused, never run),
a directory in the HF snapshot layout (``config.json`` + ``model.safetensors`` or shards), or a hub repo id
resolved offline from the local HF cache (a download happens only with ``allow_download=True``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from geodino.checks import weights_hint
from geodino.errors import UnsafeFileError, WeightsError, WeightsMismatchError, WeightsNotFoundError
from geodino.models.config import get_config, list_models
from geodino.models.layouts import blocks, detect_layout, unwrap_state_dict

RANDOM = "random"
_SAFETENSORS = (".safetensors",)
_PICKLES = (".pth", ".pt", ".bin", ".ckpt")


class RandomWeightsWarning(UserWarning):
    """The backbone has random weights: its features mean nothing (demos and tests only)."""


@dataclass(frozen=True)
class WeightsInfo:
    """Where a model's weights came from: enough to reproduce and audit a feature cube."""

    source: str
    layout: str
    sha256: str  # of the weights file; for shards, of the sorted per-shard digests; "random-init" if random
    files: tuple[str, ...] = field(default=())
    random: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22, *, cache: bool = True) -> str:
    """sha256 of a file, cached per (path, size, mtime) in ``$GEODINO_CACHE_DIR`` (default ~/.cache/geodino):
    hashing a 13 GB checkpoint takes tens of seconds, and every run would otherwise repeat it."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    cf = Path(os.environ.get("GEODINO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "geodino")) / "weights-sha256.json"
    try:
        known = json.loads(cf.read_text()) if cache else {}
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    known = {**{k: v for k, v in known.items() if not k.startswith(f"{p}|")}, key: h.hexdigest()}
    try:
        if cache:
            cf.parent.mkdir(parents=True, exist_ok=True)
            tmp = cf.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known))
            os.replace(tmp, cf)  # atomic: concurrent writers never leave a torn file
    except OSError:  # a read-only home: hashing still works, it is just not remembered
        pass
    return known[key]


def _combined_sha256(files: list[Path]) -> str:
    if len(files) == 1:
        return file_sha256(files[0])
    h = hashlib.sha256()
    for f in sorted(files, key=lambda p: p.name):
        h.update(f"{f.name}:{file_sha256(f)}\n".encode())
    return h.hexdigest()


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def _first_sentence(e: BaseException, limit: int = 160) -> str:
    """The first sentence of a library's error message, without terminal codes, cut at a word (for one line)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    s = re.split(r"(?<=[a-z0-9)])\.(?:\s|$)", text.splitlines()[0] if text else "", maxsplit=1)[0].strip()
    if len(s) > limit:
        s = s[:limit].rsplit(" ", 1)[0] + " ..."
    return s or type(e).__name__


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Meta tensors (shapes and dtypes from the header, no data read) and the metadata of a safetensors file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            out = {}
            for k in f.keys():
                sl = f.get_slice(k)
                out[k] = torch.empty(sl.get_shape(), dtype=_ST_DTYPES.get(sl.get_dtype(), torch.float32),
                                     device="meta")
            return out, f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{path} is not a readable safetensors file ({_first_sentence(e)}): it is truncated or "
                           "corrupt; download or convert it again") from e


def _read_pickle(path: Path) -> dict[str, Tensor]:
    try:
        with warnings.catch_warnings():  # torch's note on non-zip pickles would be a second line to the user
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is prose for its own API (with terminal bold codes): name only what the pickle imports
        names = re.search(r"GLOBAL (\S+)", str(e))
        if names or "Unsupported global" in str(e) or "not an allowed global" in str(e):
            what = names.group(1) if names else "a Python object"
            raise UnsafeFileError(
                f"{path} holds a pickle that would import or run code ({what}), so it was not loaded; only plain "
                "tensor checkpoints are read: convert it to safetensors with a tool you trust") from e
        # torch's reason comes after its advice to retry with weights_only=False (running the file): the reason only
        m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", str(e), re.S)
        why = " ".join(m.group(1).split())[:160] if m else _first_sentence(e)
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint ({why}): it is truncated or corrupt, or a "
                           "pickle of more than tensors, so it was not loaded; download or convert it again") from e
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as e:
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint ({_first_sentence(e)}): it is truncated or "
                           "corrupt; download or convert it again") from e
    return unwrap_state_dict(obj)


def _hf_dir_files(d: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (d / index).is_file():
            try:
                shards = sorted(set(json.loads((d / index).read_text())["weight_map"].values()))
            except (ValueError, KeyError) as e:
                raise WeightsError(f"{d / index} is not a valid shard index: {e}") from e
            missing = [s for s in shards if not (d / s).is_file()]
            if missing:
                raise WeightsError(f"{d} lacks shards {missing[:3]} named in {index}: the download is incomplete")
            return [d / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors"):
        if (d / name).is_file():
            return [d / name]
    found = sorted(d.glob("*.safetensors")) or sorted(p for p in d.iterdir() if p.suffix in _PICKLES)
    if len(found) == 1:
        return found
    if not found:
        raise WeightsNotFoundError(f"{d} holds no weights file (model.safetensors or *.pth)")
    raise WeightsError(f"{d} holds several weights files ({', '.join(p.name for p in found[:4])}): pass one")


def _is_safetensors(path: Path) -> bool:
    if path.suffix in _SAFETENSORS or path.suffix in _PICKLES:
        return path.suffix in _SAFETENSORS
    with open(path, "rb") as f:  # no known suffix: a zip or raw pickle is torch's, anything else safetensors
        head = f.read(2)
    return head != b"PK" and head[:1] != b"\x80"


@dataclass
class Checkpoint:
    state_dict: dict[str, Tensor]
    layout: str
    info: WeightsInfo
    hf_config: dict | None = None
    metadata: dict | None = None
    index: dict[str, tuple[Path, str]] = field(default_factory=dict)  # key -> (file, key inside the file)


def load_tensors(ckpt: Checkpoint, keys: list[str]) -> dict[str, Tensor]:
    """Read ``keys`` of a checkpoint (:func:`read_checkpoint` reads shapes and dtypes only).

    The tensors are views of the memory-mapped file (safetensors' ``get_tensor`` and ``torch.load(mmap=True)`` are
    zero-copy): copy what you keep, and drop the views. Each call opens the files, reads only these tensors and
    closes them again, so that the memory-mapped pages of what was read leave this process's memory before the next
    group: loading a checkpoint group by group peaks at the model's own size plus one group (safetensors'
    ``safe_open`` and ``torch.load(mmap=True)`` keep every page they touched resident until the file is closed).
    """
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for k in keys:
        by_file.setdefault(ckpt.index[k][0], []).append(k)
    out: dict[str, Tensor] = {}
    for f, ks in by_file.items():
        if _is_safetensors(f):
            with safe_open(str(f), framework="pt") as fh:
                for k in ks:
                    out[k] = fh.get_tensor(ckpt.index[k][1])
        else:
            sd = _read_pickle(f)  # memory-mapped
            for k in ks:
                out[k] = sd[k]
            del sd
    return out


def resolve_weights(weights: str | os.PathLike, allow_download: bool = False) -> Path:
    """A local file or directory for ``weights`` (a path, or a HF repo id looked up in the local cache)."""
    p = Path(os.path.expanduser(str(weights)))
    if p.exists():
        return p
    s = str(weights)
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", s):  # a hub repo id, owner/name
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(s, local_files_only=not allow_download,
                                          allow_patterns=["*.json", "*.safetensors", "*.pth", "*.bin"]))
        except LocalEntryNotFoundError as e:
            if allow_download:  # what huggingface_hub raises when the hub cannot be reached
                why = re.search(r"Got: ([^\n]+)", str(e))
                raise WeightsNotFoundError(
                    f"cannot download {s}: the Hugging Face hub is unreachable (the network is unreachable"
                    f"{': ' + why.group(1) if why else ''}); run `hf download {s}` where there is network and copy "
                    "the Hugging Face cache here, or give a local file") from e
            raise WeightsNotFoundError(f"weights {s} are not in the local Hugging Face cache: {weights_hint(s)}") \
                from e
        except Exception as e:  # gated repo, network, bad id
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise WeightsNotFoundError(f"could not fetch {s} from the Hugging Face hub ({first[:200]}): "
                                       f"{weights_hint(s)}") from e
    raise WeightsNotFoundError(f"weights file {s} not found: {weights_hint(s)}")


def read_checkpoint(weights: str | os.PathLike, allow_download: bool = False,
                    detect: Callable[[dict[str, Tensor]], str] = detect_layout) -> Checkpoint:
    """Read any supported checkpoint's state dict as meta tensors (shapes and dtypes: enough to check it cheaply;
    :func:`load_tensors` reads the values), with its layout and provenance. ``detect`` names the layout of the
    state dict (the backbone layouts by default; the CHMv2 head passes its own)."""
    path = resolve_weights(weights, allow_download)
    files = _hf_dir_files(path) if path.is_dir() else [path]
    raw: dict[str, Tensor] = {}
    meta, index, hf_config = {}, {}, None
    for f in files:
        part, m = _read_safetensors(f) if _is_safetensors(f) else (_read_pickle(f), {})  # pickles: mapped
        raw.update({k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in part.items()})
        meta.update(m)
        index.update({k: (f, k) for k in part})
    if path.is_dir() and (path / "config.json").is_file():
        try:
            hf_config = json.loads((path / "config.json").read_text())
        except ValueError as e:
            raise WeightsError(f"{path / 'config.json'} is not valid JSON: {e}") from e
    sd = unwrap_state_dict(raw)
    first, k0 = next(iter(raw)), next(iter(sd))  # the prefix unwrap_state_dict stripped from every key
    index = {k: index[first[: len(first) - len(k0)] + k] for k in sd}
    layout = detect(sd)
    info = WeightsInfo(source=str(weights), layout=layout, sha256=_combined_sha256(files),
                       files=tuple(str(f) for f in files))
    return Checkpoint(sd, layout, info, hf_config, meta, index)


def write_state_dict(sd: dict[str, Tensor], path: str | os.PathLike, metadata: dict[str, str],
                     hf_config: dict | None = None) -> Path:
    """Write ``sd``: ``.pth``/``.pt``/``.bin`` -> torch.save; with ``hf_config`` and a path without a suffix -> an
    HF snapshot directory (config.json + model.safetensors); anything else -> safetensors carrying ``metadata``."""
    from safetensors.torch import save_file

    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}
    path = Path(path)
    if hf_config is not None and not path.suffix:
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(hf_config, indent=2))
        save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".pth", ".pt", ".bin"):
        torch.save(sd, path)
    else:
        save_file(sd, str(path), metadata={"format": "pt", **metadata})
    return path


def infer_arch_fields(sd: dict[str, Tensor]) -> dict:
    """What the shapes of a timm-layout state dict say of its architecture (not num_heads)."""
    out: dict = {"depth": 1 + max(blocks(sd), default=-1)}
    if "cls_token" in sd:
        out["embed_dim"] = sd["cls_token"].shape[-1]
    if "reg_token" in sd:
        out["n_registers"] = sd["reg_token"].shape[1]
    if (w := sd.get("patch_embed.proj.weight")) is not None:
        out["patch_size"], out["in_chans"] = w.shape[-1], w.shape[1]
    for name, ffn in (("fc1_g", "swiglu"), ("fc1", "mlp")):
        if f"blocks.0.mlp.{name}.weight" in sd:
            out["ffn"], out["ffn_hidden"] = ffn, sd[f"blocks.0.mlp.{name}.weight"].shape[0]
            break
    return out


def match_models(sd: dict[str, Tensor], local_cls_norm: bool | None = None, ignore_depth: bool = False) -> list[str]:
    """Registered models whose architecture fits a timm-layout state dict (best guesses first). ``local_cls_norm``
    (known from official and geodino files only) tells the SAT ViT-L from the LVD one."""
    fields = {k: v for k, v in infer_arch_fields(sd).items() if not (ignore_depth and k == "depth")}
    hits = [n for n in list_models() if all(
        fields.get(k, getattr(get_config(n).arch, k)) == getattr(get_config(n).arch, k)
        for k in ("embed_dim", "depth", "ffn", "ffn_hidden", "patch_size", "n_registers"))]
    if len(hits) > 1 and local_cls_norm is not None:
        hits = [n for n in hits if get_config(n).arch.local_cls_norm == local_cls_norm] or hits
    return hits


def state_dict_differences(sd: dict[str, Tensor], expected: dict[str, torch.Size]) -> list[str]:
    """How ``sd`` differs from ``expected`` keys and shapes, in words (empty when it fits)."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k])]
    parts = [f"{len(ks)} {what} ({', '.join(ks[:3])})" for what, ks in
             (("missing key(s)", missing), ("unexpected key(s)", unexpected)) if ks]
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} shape mismatch(es) ({k}: file {list(sd[k].shape)} vs model {list(expected[k])})")
    return parts


def check_state_dict(sd: dict[str, Tensor], expected: dict[str, torch.Size], target: str, layout: str,
                     local_cls_norm: bool | None = None) -> None:
    """Raise one :class:`WeightsMismatchError` if keys or shapes of ``sd`` (timm's names) differ from ``expected``;
    ``local_cls_norm``: whether an official or geodino file carries it (None for other layouts)."""
    parts = state_dict_differences(sd, expected)
    if not parts:
        return
    guess = [m for m in match_models(sd, local_cls_norm) if m != target]
    if guess:
        hint = f"the file looks like {' or '.join(guess[:2])}: pass that model name"
    else:
        near = [m for m in match_models(sd, local_cls_norm, ignore_depth=True) if m != target]
        hint = (f"the file looks like a {infer_arch_fields(sd).get('depth')}-block variant of {' or '.join(near[:2])}"
                if near else "it matches no registered model")
    raise WeightsMismatchError(f"weights ({layout} layout) do not fit {target}: {'; '.join(parts)}; {hint}")


def warn_random(name: str) -> None:
    warnings.warn(f"{name} has RANDOM weights: features are meaningless (demos and tests only); "
                  "this is recorded in every output", RandomWeightsWarning, stacklevel=3)

