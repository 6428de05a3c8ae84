"""Changes to a forward that only the calling thread (or asyncio task) sees.

The model's modules and config are shared by every thread and every ``lmscope serve`` worker, so no code path
may change them, not even for a moment: another thread's forward could run in that moment. The two tools here
give a fast path what it needs without that:

- :func:`local_hooks` registers PyTorch hooks that act only on forwards of the context that registered them
  (the same :class:`contextvars.ContextVar` rule as ``model.apply`` sessions: per thread and per asyncio task;
  a thread started inside the block does not inherit it, a task created inside it does). Every other forward
  passes through them untouched.
- :func:`module_tree_copy` copies every module object of a model (parameters shared, no hooks) for a library
  that patches modules in place, such as nnsight.
- :func:`shell` builds a private shallow copy of a module chain (the causal LM, its decoder, ...) in which one
  submodule is replaced, e.g. the decoder's layer list by a slice of it or the unembedding by a smaller head.
  Calling the shell runs the model's own ``forward`` code over the *same* parameter-holding modules, so every
  hook registered on them (sessions included) still fires, while the shared model is never modified.
  :func:`shell_unsupported` says when a chain cannot be copied that way (a module whose ``forward`` was
  replaced on the instance, e.g. by accelerate's device hooks); callers then take their exact slow path.

Configs: a shell can carry its own shallow copy of the model's config (e.g. with ``layer_types`` sliced to
the layers that run). :func:`base_config` maps such a copy back to the model's config, so code that keys
state by config identity (the attention-function dispatch of the hooks backend) treats both alike.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterable, Iterator

from torch import nn

#: the tokens of the local-hook blocks open in the current context
_OPEN: ContextVar[frozenset[object]] = ContextVar("lmscope_local_hooks", default=frozenset())
_BASE = "_lmscope_base_config"


@contextmanager
def local_hooks(hooks: Iterable[tuple[nn.Module, Callable[..., Any]]], *, pre: bool = False,
                with_kwargs: bool = False, prepend: bool = False) -> Iterator[None]:
    """For the body, each ``(module, hook)`` pair is a forward hook (``pre``: pre-hook) acting only on
    forwards run in this context; all are removed on exit, also when the body raises.

    Each hook has PyTorch's signature for the chosen kind; in any other context the registered wrapper
    returns None without calling it (a no-op for PyTorch).
    """
    token = object()

    def gated(hook: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            return hook(*args, **kwargs) if token in _OPEN.get() else None
        return run

    handles = []
    reset = _OPEN.set(_OPEN.get() | {token})
    try:
        for module, hook in hooks:
            register = module.register_forward_pre_hook if pre else module.register_forward_hook
            handles.append(register(gated(hook), with_kwargs=with_kwargs, prepend=prepend))
        yield
    finally:
        for handle in handles:
            handle.remove()
        try:
            _OPEN.reset(reset)
        except ValueError:  # left from another context than the one that entered
            _OPEN.set(_OPEN.get() - {token})


def _chain(root: nn.Module, path: str) -> list[tuple[nn.Module, str]]:
    """``(parent, child name)`` for each step of the dotted ``path`` below ``root`` (``a|b``: the first of the
    alternatives the model has, as in the adapter table)."""
    if "|" in path:
        options = path.split("|")
        for option in options[:-1]:
            try:
                return _chain(root, option)
            except AttributeError:
                continue
        return _chain(root, options[-1])
    steps, module = [], root
    for name in path.split("."):
        steps.append((module, name))
        child = module._modules.get(name)
        if child is None:
            raise AttributeError(f"{type(module).__name__} has no submodule {name!r} (path {path!r})")
        module = child
    return steps


def _forward_patched(module: nn.Module) -> bool:
    """Whether ``module``'s ``forward`` is set on the instance (accelerate's ``AlignDevicesHook``, a patched
    forward): a copy of the module object would still run the original's."""
    return "forward" in module.__dict__ or hasattr(module, "_hf_hook")


def shell_unsupported(root: nn.Module, paths: Iterable[str]) -> str | None:
    """Why a shell of ``root`` replacing ``paths`` would not run the model's own code (None when it would).

    A module on a chain whose ``forward`` is set on the instance (accelerate's ``AlignDevicesHook``, a
    patched forward) would run through the *original* module, not the copy."""
    for path in paths:
        for parent, _ in _chain(root, path):
            if _forward_patched(parent):
                return f"{type(parent).__name__}.forward is wrapped on the instance (e.g. by accelerate placement)"
    return None


def _copy_module(module: nn.Module, config: Any, base: Any) -> nn.Module:
    twin = copy.copy(module)  # shares parameters, buffers and hook dictionaries; own attribute dict
    twin.__dict__["_modules"] = dict(module._modules)
    if config is not None and getattr(module, "config", None) is base:
        twin.__dict__["config"] = config
    return twin


def shell(root: nn.Module, replace: dict[str, nn.Module], config: Any = None) -> nn.Module:
    """A private copy of ``root`` in which the submodule at each dotted path of ``replace`` is swapped.

    Only the modules on the paths are copied (shallowly: same parameters, same hook dictionaries); the rest
    is shared. ``config`` (from :func:`config_copy`) replaces the model's config on every copied module
    that held it. ``root`` itself is never modified. Check :func:`shell_unsupported` first.
    """
    base = base_config(config) if config is not None else None
    copies: dict[int, nn.Module] = {}

    def copied(module: nn.Module) -> nn.Module:
        if id(module) not in copies:
            copies[id(module)] = _copy_module(module, config, base)
        return copies[id(module)]

    top = copied(root)
    for path, new in replace.items():
        node = top
        for parent, name in _chain(root, path)[:-1]:
            child = copied(parent._modules[name])  # type: ignore[arg-type]
            node._modules[name] = child
            node = child
        node._modules[_chain(root, path)[-1][1]] = new
    return top


def config_copy(config: Any, **changes: Any) -> Any:
    """A shallow copy of ``config`` with ``changes`` set, which :func:`base_config` maps back to ``config``."""
    twin = copy.copy(config)
    for name, value in changes.items():
        setattr(twin, name, value)
    twin.__dict__[_BASE] = base_config(config)
    return twin


def base_config(config: Any) -> Any:
    """The model's own config for a :func:`config_copy` (the config itself otherwise)."""
    return getattr(config, "__dict__", {}).get(_BASE, config)


#: Per-module hook registries a private copy starts empty (PyTorch's names; absent ones are skipped).
_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


def module_tree_copy(root: nn.Module) -> nn.Module:
    """A copy of every module object under ``root`` that shares its parameters and buffers, with empty hook
    registries: for a library that patches modules in place (nnsight wraps every module's ``forward``), so the
    model every other caller uses stays untouched. A tree with a ``forward`` already set on an instance
    (accelerate's device hooks) cannot be copied that way: ``root`` itself is returned."""
    if any(_forward_patched(m) for m in root.modules()):
        return root
    copies: dict[int, nn.Module] = {}

    def clone(module: nn.Module) -> nn.Module:
        if id(module) not in copies:
            twin = _copy_module(module, None, None)
            copies[id(module)] = twin
            twin.__dict__["_modules"] = {name: None if child is None else clone(child)
                                         for name, child in module._modules.items()}
            for name in _HOOK_DICTS:
                if name in module.__dict__:
                    twin.__dict__[name] = type(module.__dict__[name])()
        return copies[id(module)]

    return clone(root)
