"""Reading official checkpoints into a flat {key: numpy array} state dict, without pickles.

`.pth` / `.pt` go through `torch.load(weights_only=True)` (torch is the optional `convert` extra, imported
only here); `.safetensors` is parsed directly (a JSON header and raw little-endian buffers); `.npz` with
`allow_pickle=False`; `.mat` (DehazeNet's MATLAB weights) with scipy. Training never imports this module.
"""

import json
import os
import pickle
import re
import struct
from typing import Any, Mapping, Optional

import ml_dtypes
import numpy as np

# Containers official trainers wrap state dicts in, in order of preference: BasicSR saves the EMA
# weights as 'params_ema' next to 'params' and its test scripts load the EMA ones when present.
CONTAINERS = ("params_ema", "params", "state_dict", "model")

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors(path: str) -> dict:
  """The tensors of a .safetensors file as numpy arrays (metadata ignored)."""
  with open(path, "rb") as f:
    raw = f.read()
  if len(raw) < 8:
    raise ValueError(f"{path}: not a safetensors file (too short)")
  (n,) = struct.unpack("<Q", raw[:8])
  try:
    header = json.loads(raw[8:8 + n])
  except ValueError as e:
    raise ValueError(f"{path}: not a safetensors file ({e})") from None
  data = memoryview(raw)[8 + n:]
  out = {}
  for key, info in header.items():
    if key == "__metadata__":
      continue
    if info["dtype"] not in _SAFETENSORS_DTYPES:
      raise ValueError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']}")
    begin, end = info["data_offsets"]
    dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<")
    out[key] = np.frombuffer(data[begin:end], dtype=dtype).reshape(info["shape"]).copy()
  return out


def _read_torch(path: str) -> Any:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(f"reading {path} needs PyTorch: pip install 'restorejax[convert]'") from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:  # torch's message suggests weights_only=False: never here
    found = re.search(r"GLOBAL (\S+)", str(e))
    raise ValueError(f"{path}: refused: it holds Python objects besides tensors"
                     f"{f' ({found.group(1)})' if found else ''}, and restorejax loads no pickles; save the "
                     "state dict alone (torch.save(model.state_dict(), ...)) or as .safetensors") from None

  def to_numpy(x):
    if isinstance(x, torch.Tensor):
      x = x.detach()
      return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    if isinstance(x, Mapping):
      return {k: to_numpy(v) for k, v in x.items()}
    return x

  return to_numpy(obj)


def _read_mat(path: str) -> dict:
  import scipy.io  # pylint: disable=g-import-not-at-top
  # Entries named __header__/__version__/__globals__ are MATLAB file metadata, not arrays.
  return {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}


def unwrap(obj: Any, path: str = "checkpoint", key: Optional[str] = None) -> dict:
  """The flat state dict inside a loaded checkpoint: the `key` container (default: the first of
  CONTAINERS present, else the object itself), with DataParallel 'module.' prefixes stripped."""
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict")
  if key is not None:
    if key not in obj:
      raise ValueError(f"{path}: no {key!r} entry (top-level keys: {', '.join(map(str, obj))})")
    obj = obj[key]
  else:
    for name in CONTAINERS:
      if name in obj and isinstance(obj[name], Mapping):
        obj = obj[name]
        break
  out = {}
  for k, v in obj.items():
    if not isinstance(v, np.ndarray):
      raise ValueError(f"{path}: entry {k!r} is a {type(v).__name__}, not an array; pass the container "
                       f"key (one of {', '.join(CONTAINERS)}) that holds the weights")
    name = k[len("module."):] if k.startswith("module.") else k
    if name in out:
      raise ValueError(f"{path}: key {name!r} appears both with and without the 'module.' prefix")
    out[name] = v
  return out


def load_state_dict(path: str, key: Optional[str] = None) -> dict:
  """{key: numpy array} from a .pth/.pt, .safetensors, .npz or .mat checkpoint (see `unwrap`)."""
  if not os.path.isfile(path):
    raise ValueError(f"checkpoint {path!r} does not exist")
  ext = os.path.splitext(path)[1].lower()
  if ext in (".pth", ".pt"):
    obj = _read_torch(path)
  elif ext == ".safetensors":
    obj = read_safetensors(path)
  elif ext == ".npz":
    with np.load(path, allow_pickle=False) as z:
      obj = {k: z[k] for k in z.files}
  elif ext == ".mat":
    obj = _read_mat(path)
  else:
    raise ValueError(f"checkpoint {path!r}: unknown extension {ext!r} (.pth, .pt, .safetensors, .npz, .mat)")
  return unwrap(obj, path, key)
