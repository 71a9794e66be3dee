"""Configs are dataclasses, loaded from configs/*.yaml and overridable from the command line.

Each stage owns its dataclass (recon.data.config, recon.init.config, ...); ReconConfig composes them.
Overrides are dotted `key=value` strings, e.g. `train.iterations=500`, values parsed as YAML.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from recon.data.config import DataConfig
from recon.decoder.config import DecoderConfig
from recon.errors import ReconError
from recon.export.config import ExportConfig
from recon.init.config import InitConfig
from recon.prior.config import PriorConfig
from recon.train.config import TrainConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class ReconConfig:
    preset: str = "default"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    data: DataConfig = field(default_factory=DataConfig)
    init: InitConfig = field(default_factory=InitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _field_types(cls) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


def _coerce(value, tp, where: str):
    origin = typing.get_origin(tp)
    if tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ReconError as e:  # try the next member of the union
                errors.append(str(e))
        raise ReconError(f"{where}: {value!r} does not fit {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ReconError(f"{where}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ReconError(f"{where}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (typing.Any,)
        return origin(_coerce(v, inner, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ReconError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ReconError(f"{where}: expected true or false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ReconError(f"{where}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ReconError(f"{where}: expected a whole number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ReconError(f"{where}: expected text, got {value!r}")
    return value


def _from_dict(cls, d: dict, where: str = "config"):
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ReconError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in d.items()}
    return cls(**kwargs)


def merge(cfg, d: dict, where: str = "config"):
    """A copy of dataclass `cfg` with the values of mapping `d` laid over it (recursively)."""
    hints = _field_types(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ReconError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    changes = {}
    for k, v in d.items():
        cur = getattr(cfg, k)
        if dataclasses.is_dataclass(cur) and isinstance(v, dict):
            changes[k] = merge(cur, v, f"{where}.{k}")
        else:
            changes[k] = _coerce(v, hints[k], f"{where}.{k}")
    return dataclasses.replace(cfg, **changes)


def parse_override(text: str) -> dict:
    """`train.iterations=500` -> {"train": {"iterations": 500}}."""
    if "=" not in text:
        raise ReconError(f"override {text!r} is not key=value", fix="write it as e.g. train.iterations=500")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    out: dict = {}
    cur = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def resolve_preset(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise ReconError("config file not found", path=p, fix=f"use a preset name ({', '.join(list_presets())}) or an existing .yaml")
        return p
    cand = CONFIG_DIR / f"{name_or_path}.yaml"
    if not cand.exists():
        raise ReconError(f"unknown preset {name_or_path!r}", fix=f"choose one of {', '.join(list_presets())} or give a .yaml path")
    return cand


def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(preset: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> ReconConfig:
    cfg = ReconConfig()
    if preset is not None:
        path = resolve_preset(preset)
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ReconError(f"not valid YAML ({str(e).splitlines()[0]})", path=path, fix="fix the syntax") from None
        if not isinstance(d, dict):
            raise ReconError("a config file must be a mapping of sections", path=path)
        d.setdefault("preset", path.stem)
        cfg = merge(cfg, d, where=str(path))
    for o in overrides:
        cfg = merge(cfg, parse_override(o), where="override")
    return cfg


def save_config(cfg: ReconConfig, path: Path) -> None:
    from recon.io_utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
