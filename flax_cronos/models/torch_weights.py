"""Torch checkpoints (``pytorch_model.bin``, ``*.pth``) read as NumPy arrays, without torch.

Both formats of ``torch.save`` pickle the object with each tensor written as
``_rebuild_tensor_v2(storage, offset, size, stride, …)``, ``storage`` being a persistent id
``("storage", torch.FloatStorage, key, device, numel[, view])`` that names a flat buffer of
``numel`` elements stored outside the pickle, as raw little-endian bytes:

* zip (torch ≥ 1.6): ``<root>/data.pkl`` is the pickle and ``<root>/data/<key>`` each buffer.
* legacy (torch < 1.6, or ``_use_new_zipfile_serialization=False``): one file of consecutive
  pickles, the magic number ``0x1950a86a20f9469cfc6c``, the protocol version 1001, a dict of
  system info (``little_endian``, …) and the object; then a pickled list of storage keys and, for
  each key in that order, its element count (8 bytes, little-endian) followed by its bytes.

Reading is the same for both: unpickling allocates each storage as zeros and returns tensors as
views of it; the buffers are then filled from the archive or the end of the file, and the views
copied out. Only tensors, parameters and ordered dicts are unpickled; anything else is refused,
so a checkpoint cannot run code.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from typing import IO, Any

import numpy as np

# Storage type → dtype of its bytes in the file; bfloat16 storages (raw uint16 bits) are widened
# to float32, whose upper half they are.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_BFLOAT16 = "BFloat16Storage"
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` for NumPy: a strided view of the flat storage.

    Raises ``pickle.UnpicklingError`` when the view would reach outside the storage.
    """
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or min(stride, default=0) < 0 or (all(size) and last >= storage.size):
        raise pickle.UnpicklingError(f"tensor (offset {offset}, size {size}, stride {stride}) "
                                     f"lies outside its storage of {storage.size} elements")
    itemsize = storage.dtype.itemsize
    return np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride))


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles a torch checkpoint's object, allowing only tensors and ordered dicts.

    Each storage becomes a zeroed buffer in ``storages`` (key → (storage type, buffer)), which
    the caller fills with ``_fill`` once the pickle is read.
    """

    def __init__(self, file: IO[bytes]):
        super().__init__(file)
        self.storages: dict[str, tuple[str, np.ndarray]] = {}

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, *_: data
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a torch checkpoint")

    def persistent_load(self, pid):
        kind, storage_type, key, _device, numel, *view = pid
        if kind != "storage" or storage_type not in _STORAGE_DTYPES or view not in ([], [None]):
            raise pickle.UnpicklingError(f"unsupported torch storage {pid!r}")
        if key not in self.storages:
            dtype = np.float32 if storage_type == _BFLOAT16 else _STORAGE_DTYPES[storage_type]
            self.storages[key] = storage_type, np.zeros(numel, dtype)
        return self.storages[key][1]


def _fill(storage_type: str, buffer: np.ndarray, raw: bytes, key: str) -> None:
    """Writes a storage's raw bytes into its buffer (bfloat16 bits into the float32's top half)."""
    data = np.frombuffer(raw, _STORAGE_DTYPES[storage_type])
    if data.size != buffer.size:
        raise ValueError(f"torch storage {key} holds {data.size} elements, its tensors say "
                         f"{buffer.size}")
    target = buffer.view(np.uint16)[1::2] if storage_type == _BFLOAT16 else buffer
    target[...] = data


def _load_zip(archive: zipfile.ZipFile) -> Any:
    """The object of a zip checkpoint, its storages filled from ``<root>/data/<key>``."""
    pkl = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
    if pkl is None:
        raise ValueError(f"{archive.filename} is not a torch zip checkpoint (no data.pkl)")
    with archive.open(pkl) as file:
        unpickler = _TorchUnpickler(file)
        obj = unpickler.load()
    root = pkl[: -len("data.pkl")]
    for key, (storage_type, buffer) in unpickler.storages.items():
        _fill(storage_type, buffer, archive.read(f"{root}data/{key}"), key)
    return obj


def _load_legacy(file: IO[bytes]) -> Any:
    """The object of a legacy checkpoint, its storages filled from the end of the file."""
    try:
        magic, protocol, sys_info = (_TorchUnpickler(file).load() for _ in range(3))
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise ValueError(f"{file.name} is not a torch checkpoint ({error})") from error
    if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL:
        raise ValueError(f"{file.name} is not a torch checkpoint (magic number {magic!r}, "
                         f"protocol {protocol!r})")
    if not sys_info.get("little_endian", False):
        raise ValueError(f"{file.name} was saved on a big-endian machine, which is not supported")
    unpickler = _TorchUnpickler(file)
    obj = unpickler.load()
    for key in _TorchUnpickler(file).load():
        if key not in unpickler.storages:
            raise ValueError(f"{file.name}: storage {key} has data but no tensor")
        storage_type, buffer = unpickler.storages[key]
        numel = int.from_bytes(file.read(8), "little")
        itemsize = np.dtype(_STORAGE_DTYPES[storage_type]).itemsize
        _fill(storage_type, buffer, file.read(numel * itemsize), key)
    return obj


def _copied(obj: Any) -> Any:
    """``obj`` with each array (a view of a storage) copied into its own C-contiguous array."""
    if isinstance(obj, np.ndarray):
        return np.array(obj, order="C")
    if isinstance(obj, dict):
        return {name: _copied(value) for name, value in obj.items()}
    return obj


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A ``torch.save``d state dict (zip or legacy format) as NumPy arrays, without torch.

    Only tensors and (ordered) dicts are unpickled; anything else raises ``pickle.UnpicklingError``.

    Raises:
        ValueError: when ``path`` is not a torch checkpoint holding a dict.
    """
    with open(path, "rb") as file:
        if zipfile.is_zipfile(file):
            with zipfile.ZipFile(file) as archive:
                obj = _load_zip(archive)
        else:
            file.seek(0)
            obj = _load_legacy(file)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return _copied(obj)
