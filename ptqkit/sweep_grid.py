"""The recipes of a sweep: one point of the grid is the single-run flags that change what int8 model comes out;
the grid comes from comma lists of those flags or from a JSON/YAML file."""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from .backends import ENGINES, FILE_ENGINES
from .config import WEIGHT_ROUNDINGS
from .errors import UserError, reason

RECIPE_KEYS = ("calib_method", "smoothquant", "max_accuracy_drop", "weight_rounding", "backend")


@dataclass(frozen=True)
class Recipe:
    """One point of the grid: the single-run flags that change what int8 model comes out."""

    calib_method: str | None = None  # None: the device's default
    smoothquant: float | None = None
    max_accuracy_drop: float | None = None  # auto-fallback budget in points; None: off
    backend: str = FILE_ENGINES[0]
    weight_rounding: str = WEIGHT_ROUNDINGS[0]

    def label(self) -> str:
        parts = [self.backend, self.calib_method or "default"]
        if self.smoothquant is not None:
            parts.append(f"sq{self.smoothquant:g}")
        if self.max_accuracy_drop is not None:
            parts.append(f"fallback{self.max_accuracy_drop:g}")
        if self.weight_rounding != WEIGHT_ROUNDINGS[0]:
            parts.append(self.weight_rounding)
        return "/".join(parts)


def parse_grid(flags: dict[str, str | None], grid_file: str | None) -> list[Recipe]:
    """Recipes from comma lists of the single-run flags (the product), or from a JSON/YAML list of recipes."""
    if grid_file:
        if any(v is not None for v in flags.values()):
            raise UserError("pass either --grid FILE or the grid flags (--calib-method, ...), not both")
        return _recipes_from_file(Path(grid_file))
    values = {
        "calib_method": _items(flags.get("calib_method"), lambda s: s, None),
        "smoothquant": _items(flags.get("smoothquant"), float, None),
        "max_accuracy_drop": _items(flags.get("max_accuracy_drop"), float, None),
        "weight_rounding": _items(flags.get("weight_rounding"), lambda s: s, WEIGHT_ROUNDINGS[0]),
        "backend": _items(flags.get("backend"), lambda s: s, FILE_ENGINES[0]),
    }
    return [_recipe(dict(zip(values, combo))) for combo in itertools.product(*values.values())]


def _items(text: str | None, kind, default) -> list:
    if not text:
        return [default]
    out = []
    for item in text.split(","):
        item = item.strip()
        if item.lower() in ("off", "none", "default"):
            out.append(None)
            continue
        try:
            out.append(kind(item))
        except ValueError:
            raise UserError(f"bad grid value {item!r}: expected a number or 'off'") from None
    return out


def _recipes_from_file(path: Path) -> list[Recipe]:
    if not path.is_file():
        raise UserError(f"grid file {path} not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error is the user's file
        raise UserError(f"grid file {path} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: "
                        f"{reason(e)}") from None
    if isinstance(data, dict):
        data = data.get("recipes")
    if not isinstance(data, list) or not data or not all(isinstance(r, dict) for r in data):
        raise UserError(f"grid file {path}: expected a non-empty list of recipes (objects with keys "
                        f"{', '.join(RECIPE_KEYS)}), or {{\"recipes\": [...]}}")
    return [_recipe(r, path) for r in data]


def _recipe(values: dict, source: Path | None = None) -> Recipe:
    unknown = sorted(set(values) - set(RECIPE_KEYS))
    if unknown:
        raise UserError(f"{source or 'grid'}: unknown recipe key(s) {', '.join(unknown)}; use {', '.join(RECIPE_KEYS)}")
    recipe = Recipe(**{k: v for k, v in values.items() if v is not None})
    if recipe.weight_rounding not in WEIGHT_ROUNDINGS:
        raise UserError(f"weight rounding {recipe.weight_rounding!r}: use {' or '.join(WEIGHT_ROUNDINGS)}")
    if recipe.backend not in FILE_ENGINES:
        raise UserError(f"sweep backend {recipe.backend!r}: use {' or '.join(FILE_ENGINES)} "
                        f"({', '.join(n for n in ENGINES if n not in FILE_ENGINES)} compile the model, not files: "
                        "use bert_ptq.py --backend ENGINE)")
    return recipe
