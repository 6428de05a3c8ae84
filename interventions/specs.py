"""One place for the small specs every client passes: layers and prompt lists.

``LayerSpec`` is what Python APIs take (``None``/``"all"``, an int, a list of ints;
negatives count from the end); :func:`parse_layers` reads the command-line form
(``"0,5,10"``, ``"0-10"``, ``"-1"``) into the same thing. Site names are parsed
in :mod:`lmscope.interventions.sites` and positions in :mod:`lmscope.interventions.positions`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence, Union

from .errors import InputError, SiteError

if TYPE_CHECKING:
    from .model import HookedModel

#: Prompts: strings, or token-id lists.
Prompts = Union[Sequence[str], Sequence[Sequence[int]]]
#: Layers: None or "all" (every layer), one int, or a list of ints (negatives count from the end).
LayerSpec = Union[None, str, int, Sequence[int]]


def resolve_layers(model: HookedModel | int, layers: LayerSpec) -> list[int]:
    """A :data:`LayerSpec` to sorted, non-negative, distinct layer indices of ``model`` (or a layer count)."""
    n = model if isinstance(model, int) else model.n_layers
    if layers is None or layers == "all":
        return list(range(n))
    if isinstance(layers, (bool, str)):
        raise InputError(f"layers must be None, 'all', an int or a list of ints, got {layers!r}.")
    items = [layers] if isinstance(layers, int) else list(layers)
    if not items:
        raise InputError("layers is an empty list; pass None for every layer.")
    for layer in items:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise InputError(f"layers must be ints, got {layer!r}.")
    check_layer_range(items, n, SiteError)
    return sorted({layer % n for layer in items})


def check_layer_range(layers: Sequence[int], n: int, error: type[Exception] = InputError) -> None:
    """Raise ``error`` if any layer is outside ``-n..n-1``, naming the furthest one and the allowed range.

    A command-line range such as ``25-40`` on a 30-layer model reaches past the end at 30 first, but the bound
    the user typed is 40: the message names that one (and how many of the asked layers do not exist).
    """
    bad = [layer for layer in layers if not -n <= layer < n]
    if not bad:
        return
    worst = max(bad, key=lambda layer: layer - (n - 1) if layer >= n else -n - layer)  # furthest past either end
    more = f" ({len(bad)} of the layers asked, {min(bad)}..{max(bad)}, do not exist)" if len(bad) > 1 else ""
    raise error(f"Layer {worst} is out of range{more}: this model has {n} layers (0..{n - 1} or -{n}..-1).")


def parse_layers(text: str | None, option: str = "--layers") -> list[int] | None:
    """``"0,5,10"``, ``"0-10"``, ``"-1"`` or mixes (``"0-3,8,-1"``) to layer numbers; None/"all" = every layer.

    Raises :class:`InputError` naming ``option`` for text that is not a layer list.
    """
    if text is None or text.strip() in ("", "all"):
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:  # a range (a leading '-' is a negative layer)
                cut = part.index("-", 1)
                lo, hi = int(part[:cut]), int(part[cut + 1:])
            else:
                lo = hi = int(part)
        except ValueError:
            raise InputError(f"Cannot read {option} {text!r}: use e.g. '0,5,10', '0-10' or '-1'.") from None
        if hi < lo:  # outside the try: an InputError is a ValueError too
            raise InputError(f"{option} range {part!r} is reversed (it ends before it starts): write "
                             f"'{part[part.index('-', 1) + 1:]}-{part[:part.index('-', 1)]}'.")
        out += list(range(lo, hi + 1))
    return out


def as_prompt_list(prompts: Any, name: str = "prompts") -> list[Any]:
    """A non-empty list of prompts (strings or token-id lists); one bare string or tensor is refused."""
    import torch

    if isinstance(prompts, (str, torch.Tensor)):
        raise InputError(f"{name} must be a list of prompts (strings or token-id lists), got one "
                         f"{type(prompts).__name__}.")
    items = list(prompts)
    if not items:
        raise InputError(f"{name} is empty: give at least one prompt.")
    return items
