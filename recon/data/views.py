"""Train/test split and the choice of training views.

Split precedence: an explicit split file (--split), then a split fixed by the format (Blender files), then
SCENE/split.json, then the default: every 8th frame in name order is held out when there are more than 8.
Split files use the format of ../shared/data: {"train": [...], "test": [...], "sparse_train": {name: [...]}},
names being image paths relative to the scene root (without extension or as a bare file name also accepted
when that is unambiguous).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from recon.errors import ReconError

HOLDOUT_EVERY = 8


@dataclass
class Split:
    train: list[int]  # train candidates (indices into the scene's frames)
    test: list[int]
    source: str  # file it came from, "blender files", or "default (...)"
    subsets: dict[str, list[int]] = field(default_factory=dict)  # split file's sparse_train
    subsets_file: str | None = None


class FrameNames:
    """Looks frame names up by relative path, path without extension, file name or file stem."""

    def __init__(self, names: list[str]):
        self.names = names
        self._keys: list[dict[str, set[int]]] = [{}, {}, {}, {}]
        for i, n in enumerate(names):
            p = PurePosixPath(n)
            for level, key in enumerate((n, str(p.with_suffix("")), p.name, p.stem)):
                self._keys[level].setdefault(key, set()).add(i)

    def find(self, name: str) -> int | None:
        """Index of the frame `name` refers to; None when unknown; ReconError-free (callers word errors)."""
        n = str(PurePosixPath(str(name).replace("\\", "/")))
        if n.startswith("./"):
            n = n[2:]
        for table in self._keys:
            hit = table.get(n)
            if hit is not None and len(hit) == 1:
                return next(iter(hit))
        return None

    def lookup(self, name: str, where: str | Path, what: str) -> int:
        idx = self.find(name)
        if idx is None:
            examples = ", ".join(self.names[:3])
            raise ReconError(f"{what} names frame {name!r}, which is not in the scene", path=where,
                             fix=f"Use frame names as `recon info` lists them (e.g. {examples})")
        return idx


def _name_list(value, key: str, where: Path) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ReconError(f"'{key}' must be a list of image names", path=where,
                         fix='Write e.g. "test": ["images/0000.png", ...]')
    return value


def read_split_file(path: Path, frames: FrameNames) -> Split:
    from recon.data.transforms import read_json

    if not path.is_file():
        raise ReconError("split file not found", path=path, fix="Give an existing split.json")
    d = read_json(path)
    if not isinstance(d, dict) or not ("train" in d or "test" in d):
        raise ReconError("a split file must be a JSON object with 'train' and/or 'test' lists", path=path,
                         fix='Write {"train": [...], "test": [...]}')
    n = len(frames.names)
    test = [frames.lookup(x, path, "'test'") for x in _name_list(d.get("test", []), "test", path)]
    if "train" in d:
        train = [frames.lookup(x, path, "'train'") for x in _name_list(d["train"], "train", path)]
    else:
        test_set = set(test)
        train = [i for i in range(n) if i not in test_set]
    both = sorted(set(train) & set(test))
    if both:
        raise ReconError(f"frame {frames.names[both[0]]} is in both 'train' and 'test'", path=path,
                         fix="A held-out test view must not be a training view")
    subsets = {}
    sparse = d.get("sparse_train", {})
    if not isinstance(sparse, dict):
        raise ReconError("'sparse_train' must map subset names to lists of image names", path=path,
                         fix='Write e.g. "sparse_train": {"3": ["images/a.png", ...]}')
    for key, names in sparse.items():
        subsets[str(key)] = [frames.lookup(x, path, f"sparse_train[{key!r}]")
                             for x in _name_list(names, f"sparse_train.{key}", path)]
    return Split(_unique(train), _unique(test), str(path), subsets, str(path))


def _unique(idx: list[int]) -> list[int]:
    return list(dict.fromkeys(idx))


def default_split(names: list[str]) -> Split:
    """Hold out every 8th frame (0, 8, 16, ... in name order) when there are more than 8 frames."""
    order = sorted(range(len(names)), key=lambda i: names[i])
    if len(names) <= HOLDOUT_EVERY:
        return Split(order, [], "default (all frames train, too few to hold out views)")
    test = set(order[::HOLDOUT_EVERY])
    return Split([i for i in order if i not in test], [i for i in order if i in test],
                 f"default (every {HOLDOUT_EVERY}th frame in name order held out)")


def resolve_split(
    names: list[str], root: Path, split_path: str | None, file_split: tuple[list[str], list[str]] | None,
    file_split_source: str | None,
) -> Split:
    frames = FrameNames(names)
    if split_path:
        return read_split_file(Path(split_path), frames)
    if file_split is not None:
        where = file_split_source or str(root)
        train = [frames.lookup(x, where, "train") for x in file_split[0]]
        test = [frames.lookup(x, where, "test") for x in file_split[1]]
        split = Split(train, test, where)
        if (root / "split.json").is_file():  # named subsets still come from split.json
            extra = read_split_file(root / "split.json", frames)
            split.subsets, split.subsets_file = extra.subsets, extra.subsets_file
        return split
    if (root / "split.json").is_file():
        return read_split_file(root / "split.json", frames)
    return default_split(names)


def farthest_view_sampling(directions: np.ndarray, n: int) -> list[int]:
    """Pick n spread-out unit directions (M, 3): start with the one closest to the mean direction, then
    repeatedly take the one farthest (in angle) from all picked so far. Deterministic: ties go to the
    lowest index."""
    d = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    m = len(d)
    n = min(n, m)
    mean = d.mean(0)
    first = int(np.argmax(d @ mean)) if np.linalg.norm(mean) > 1e-9 else 0
    picked = [first]
    closest = d @ d[first]  # cosine to the nearest picked direction
    while len(picked) < n:
        closest[picked] = np.inf
        nxt = int(np.argmin(closest))
        picked.append(nxt)
        closest = np.maximum(closest, d @ d[nxt])
    return picked


def select_train_views(
    split: Split, names: list[str], centers: np.ndarray, lookat: np.ndarray,
    views: str | None, train_views: list[str] | None,
) -> tuple[list[int], str | None]:
    """The training frames: all train candidates, or those --views / --train-views ask for.

    centers: (N, 3) camera centres; lookat: (3,) the point the candidates look at (viewing directions are
    taken from it to each camera). Returns (indices, description of the choice or None).
    """
    if views not in (None, "") and train_views:
        raise ReconError("both --views and --train-views were given", fix="Give only one of them")
    frames = FrameNames(names)
    test = set(split.test)
    if train_views:
        chosen = _unique([frames.lookup(x, "--train-views", "--train-views") for x in train_views])
        _refuse_test_views(chosen, test, names, "--train-views")
        return chosen, f"--train-views ({len(chosen)} views)"
    if views in (None, ""):
        return list(split.train), None
    text = str(views).strip()
    if text.isdigit():
        k = int(text)
        if k < 1:
            raise ReconError(f"--views {k} asks for no views", fix="Ask for at least 1 view (3-8 are typical)")
        if k > len(split.train):
            raise ReconError(f"--views {k} asks for more views than the {len(split.train)} training candidates",
                             fix=f"Ask for at most {len(split.train)}")
        cand = np.array(split.train)
        picked = farthest_view_sampling(centers[cand] - lookat, k)
        return [int(cand[i]) for i in picked], f"farthest-point sampling of {k} viewing directions"
    if text not in split.subsets:
        known = ", ".join(sorted(split.subsets)) or "none"
        where = split.subsets_file or "the scene"
        raise ReconError(f"--views {text!r} is neither a number nor a named subset of {where} (known: {known})",
                         fix="Give a number of views or one of the sparse_train names")
    chosen = _unique(split.subsets[text])
    _refuse_test_views(chosen, test, names, f"sparse_train[{text!r}] of {split.subsets_file}")
    return chosen, f"sparse_train[{text!r}] of {split.subsets_file}"


def _refuse_test_views(chosen: list[int], test: set[int], names: list[str], what: str) -> None:
    bad = [names[i] for i in chosen if i in test]
    if bad:
        raise ReconError(f"{what} includes held-out test view {bad[0]}",
                         fix="Test views are never used for training; pick train views or change the split")
