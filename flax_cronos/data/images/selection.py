"""Which images to load, and in what order: classes by name or label, the first few per class."""

from collections.abc import Sequence
from typing import Optional, Union

import numpy as np

LISTED = 30  # class names listed in an error message


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:LISTED])
    return shown + (f", … ({len(names)} in all)" if len(names) > LISTED else "")


def class_ids(classes: Optional[Sequence[Union[str, int]]],
              class_names: Sequence[str]) -> np.ndarray:
    """The labels of the chosen classes, in the order given.

    Args:
        classes: class names and/or labels 0..k−1, distinct; None: all k classes.
        class_names: the k names of the data set's labels.

    Returns:
        int [c] labels; the c chosen classes become labels 0..c−1 in this order.
    """
    if classes is None:
        return np.arange(len(class_names))
    if isinstance(classes, str):
        raise ValueError(f"classes must be a sequence of class names or labels; got {classes!r}")
    index = {name: label for label, name in enumerate(class_names)}
    ids = []
    for item in classes:
        if isinstance(item, str) and item not in index:
            raise ValueError(f"classes: unknown class {item!r}; available: {_listing(class_names)}")
        if isinstance(item, str):
            ids.append(index[item])
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool) \
                and 0 <= item < len(class_names):
            ids.append(int(item))
        else:
            raise ValueError(f"classes must hold class names or labels 0..{len(class_names) - 1}; "
                             f"got {item!r}")
    if not ids or len(set(ids)) != len(ids):
        raise ValueError(f"classes must be distinct and not empty; got {list(classes)}")
    return np.array(ids)


def check_per_class(per_class: Optional[int]) -> None:
    if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, int)
                                  or per_class < 1):
        raise ValueError(f"per_class must be a positive int or None; got {per_class!r}")


def select_rows(labels: np.ndarray, ids: np.ndarray, num_classes: int,
                per_class: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """The rows of the chosen classes, at most the first ``per_class`` of each, in row order.

    Args:
        labels: int [n] labels 0..num_classes−1.
        ids: int [c] chosen labels (from :func:`class_ids`).
        num_classes: the number of labels.
        per_class: rows kept per class; None: all.

    Returns:
        (rows int [m] indices into labels, ascending; new int32 [m] labels: positions in ids).
    """
    check_per_class(per_class)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1}; found {labels.min()}.."
                         f"{labels.max()} (a negative label usually marks unlabelled rows)")
    lookup = np.full(num_classes, -1, np.int32)
    lookup[ids] = np.arange(len(ids))
    new = lookup[labels]
    rows = np.flatnonzero(new >= 0)
    if per_class is not None:
        by_class = np.argsort(new[rows], kind="stable")
        sorted_labels = new[rows][by_class]
        rank = np.arange(len(rows)) - np.searchsorted(sorted_labels, sorted_labels)
        rows = np.sort(rows[by_class[rank < per_class]])
    return rows, new[rows]


def row_order(n: int, seed: Optional[int]) -> np.ndarray:
    """int [n]: a seeded random permutation, so that batches mix classes; None: 0..n−1."""
    return np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
