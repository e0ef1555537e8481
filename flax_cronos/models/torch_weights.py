"""Torch checkpoints (``pytorch_model.bin``) read as NumPy arrays, without torch.

A torch ≥ 1.6 checkpoint is a zip holding ``<root>/data.pkl`` and one raw little-endian byte
file per storage, ``<root>/data/<key>``. Only tensors, parameters and ordered dicts are
unpickled; anything else is refused, so a checkpoint cannot run code.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


def _rebuild_tensor(storage, offset, size, stride, *_):
    """``torch._utils._rebuild_tensor_v2`` for NumPy: a strided view of the flat storage, copied."""
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride))
    return np.array(view)


class _TorchUnpickler(pickle.Unpickler):
    """Reads ``data.pkl`` of a torch zip checkpoint, allowing only tensors and ordered dicts.

    A torch checkpoint pickles each tensor as ``_rebuild_tensor_v2(storage, offset, size, stride,
    …)``, where ``storage`` is a persistent id ``("storage", torch.FloatStorage, key, device,
    numel)`` naming the raw little-endian bytes at ``<archive>/data/<key>`` in the zip.
    """

    def __init__(self, file, archive: zipfile.ZipFile, root: str):
        super().__init__(file)
        self.archive, self.root, self.storages = archive, root, {}

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
        kind, storage_type, key, _device, _numel = pid
        if kind != "storage" or storage_type not in _STORAGE_DTYPES:
            raise pickle.UnpicklingError(f"unsupported torch storage {pid!r}")
        if key not in self.storages:
            raw = self.archive.read(f"{self.root}data/{key}")
            dtype = _STORAGE_DTYPES[storage_type]
            if dtype == "bfloat16":  # bfloat16 is the top half of a float32
                flat = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                flat = np.frombuffer(raw, dtype)
            self.storages[key] = flat
        return self.storages[key]


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A ``torch.save``d state dict (zip format, torch ≥ 1.6) as NumPy arrays, without torch.

    Only tensors and (ordered) dicts are unpickled; anything else raises ``pickle.UnpicklingError``.
    """
    with zipfile.ZipFile(path) as archive:
        pkl = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
        if pkl is None:
            raise ValueError(f"{path} is not a torch zip checkpoint (no data.pkl)")
        root = pkl[: -len("data.pkl")]
        with archive.open(pkl) as file:
            return dict(_TorchUnpickler(file, archive, root).load())
