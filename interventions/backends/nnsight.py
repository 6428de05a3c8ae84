"""The nnsight backend: the same intervention objects, run inside an nnsight trace of the same HF model.

``model.run(inputs, interventions, backend="nnsight")`` (or ``HookedModel(..., backend="nnsight")``) wraps
the HF model in ``nnsight.NNsight`` once and, inside one ``trace``, visits every requested site in forward
order through nnsight's envoys (``.input`` / ``.output`` of the module the architecture table names),
passes the value through the site's interventions (the very ``__call__`` the hooks backend uses) and writes
the result back. Results equal the hooks backend's (tests compare them on every battery architecture).

What differs:

- ``rot_q``, ``rot_k``, ``attn_scores`` and ``attn_pattern`` are not available (they exist only inside the
  attention function; the hooks backend swaps in an attention function of its own for them) -- a
  :class:`SiteError` says so. Every other kind is visited through the same declarative table as the hooks
  backend (:data:`lmscope.interventions.locations.MODULE_SITES`) or one handler in :data:`VISIT`;
- ``remote=True`` sends the trace to NDIF (nnsight's hosted models) instead of running it here. NDIF runs
  its own copy of the checkpoint, named by its Hugging Face id, so the model must have been loaded by that
  id (``HookedModel.from_pretrained("meta-llama/Llama-3.1-8B")``); the request goes through nnsight's
  ``LanguageModel`` wrapper of the already-loaded model, with lmscope registered for serialisation by value
  (``nnsight.register``) so the server rebuilds the interventions' code. It needs ``NDIF_API_KEY`` (or
  nnsight's configured key) and a network. It is refused up front, with a :class:`RemoteError` naming what
  is missing, without a key, for a model with no Hugging Face id (a local folder, the embedded GGUF models,
  an in-memory model) and for interventions that run arbitrary Python (``Edit``); an unreachable server is
  a :class:`RemoteError` too. Nothing ever silently runs locally instead.

nnsight 0.8 runs the trace body interleaved with the real forward, so the values seen here are real tensors.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..base import Intervention
from ..cache import session_cache
from ..errors import InputError, LmscopeError, SiteError
from ..local import module_tree_copy
from ..locations import MODULE_SITES, head_out_value
from ..positions import ForwardContext
from ..sites import LAYER_SITES, MODEL_SITES, Site
from .session import Session, forward_order, open_session, validate

if TYPE_CHECKING:
    from ..cache import ActivationCache
    from ..inputs import Batch
    from ..model import HookedModel


class RemoteError(LmscopeError):
    """A remote (NDIF) run that cannot start: no API key, no network, or an intervention it cannot ship."""


ALL_KINDS = (*MODEL_SITES[:1], *LAYER_SITES, *MODEL_SITES[1:])
#: Interventions whose behaviour is arbitrary user Python (refused for remote runs).
LOCAL_ONLY = ("Edit",)


def _envoy(root: Any, path: str) -> Any:
    """The nnsight envoy at a dotted module path (``a|b`` alternatives as in the architecture table)."""
    for option in path.split("|"):
        env = root
        try:
            for part in option.split("."):
                env = env[int(part)] if part.isdigit() else getattr(env, part)
            return env
        except (AttributeError, IndexError):
            continue
    raise SiteError(f"nnsight found no module at {path!r} in this model.")


def nnsight_model(model: HookedModel) -> Any:
    """The ``nnsight.NNsight`` wrapper of ``model.hf_model`` (built once, kept on the HookedModel), over a copy of its
    module objects (same parameters): nnsight wraps every module's ``forward`` in place, which would otherwise
    change the model every other thread and fast path uses."""
    wrapped = getattr(model, "_nnsight", None)
    if wrapped is None:
        try:
            from nnsight import NNsight
        except ImportError:
            raise InputError("backend='nnsight' needs the nnsight package: pip install 'lmscope[nnsight]' "
                             "(nnsight>=0.8).") from None
        wrapped = NNsight(module_tree_copy(model.hf_model))  # nnsight patches every forward: not the shared ones
        setattr(model, "_nnsight", wrapped)  # noqa: B010 - kept on the HookedModel, built once
    return wrapped


#: A Hugging Face repository id (``name`` or ``owner/name``), as NDIF names the checkpoints it hosts.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
#: Top-level modules of the HTTP / socket stacks nnsight and huggingface_hub use: their errors mean "offline".
_NETWORK_MODULES = {"httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3", "socketio", "engineio",
                    "websocket", "websockets", "aiohttp", "socket", "ssl"}


def hub_name(model: HookedModel) -> str:
    """The Hugging Face id NDIF would run ``model`` as, or a :class:`RemoteError` saying why there is none."""
    hf = model.hf_model
    name = getattr(hf, "name_or_path", "") or getattr(hf.config, "_name_or_path", "") or ""
    if not name or os.path.exists(name) or not _REPO_ID.match(name):
        where = f"was loaded from {name!r}" if name else "has no Hugging Face id (it was built in memory)"
        raise RemoteError(f"remote=True runs the model NDIF hosts under its Hugging Face id, but this model {where}. "
                          "Load it by its hub name (HookedModel.from_pretrained('meta-llama/Llama-3.1-8B'), "
                          "say), or run locally (remote=False).")
    return str(name)


def remote_nnsight_model(model: HookedModel) -> Any:
    """nnsight's ``LanguageModel`` around the loaded model (its hub id keys the NDIF request), built once.

    Unlike :func:`nnsight_model` it wraps the model itself (nnsight's request serialisation fails on a copy of the
    module objects), so after a remote (or ``remote="local"``) run this model's modules carry nnsight's
    ``forward`` wrappers: the fast partial forwards then refuse it and methods take their exact slow paths. Use a
    separate :class:`HookedModel` for remote work if that matters."""
    wrapped = getattr(model, "_nnsight_remote", None)
    if wrapped is None:
        hub_name(model)
        if model.tokenizer is None:
            raise RemoteError("remote=True needs the model's tokenizer (nnsight's LanguageModel wraps both); "
                              "load the model with HookedModel.from_pretrained(name).")
        import nnsight
        from nnsight import LanguageModel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # LanguageModel's deprecation notice: it is still nnsight's remote path
            wrapped = LanguageModel(model.hf_model, tokenizer=model.tokenizer)
        nnsight.register("lmscope")  # the server rebuilds lmscope's intervention code from source
        _fresh_on_unpickle()
        _tag_modules(wrapped)
        setattr(model, "_nnsight_remote", wrapped)  # noqa: B010 - kept on the HookedModel, built once
    return wrapped


def _is_network_error(err: BaseException) -> bool:
    """Whether ``err`` says the network (NDIF or the Hub) could not be reached."""
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    return any(c.__module__.split(".")[0] in _NETWORK_MODULES for c in type(err).__mro__)


def check_remote(interventions: list[Intervention], need_key: bool = True) -> None:
    """Refuse a remote run before anything is sent: no key (unless ``need_key`` is False: nnsight's local
    simulation), interventions that run arbitrary Python, or readers whose records could not come back."""
    local = [type(iv).__name__ for iv in interventions if type(iv).__name__ in LOCAL_ONLY]
    if local:
        raise RemoteError(f"{', '.join(sorted(set(local)))} runs arbitrary Python and cannot run on a remote NDIF "
                          "server; express it with Steer/Patch/Ablate, or run locally (remote=False).")
    silent = [type(iv).__name__ for iv in interventions if not iv.writes and not iv.session_fields]
    if silent:
        raise RemoteError(f"{', '.join(sorted(set(silent)))} records into itself but lists no session_fields, so "
                          "its records would stay on the server; declare them (see Intervention.session_fields) "
                          "or run locally (remote=False).")
    if not need_key:
        return
    key = os.environ.get("NDIF_API_KEY")
    if not key:
        try:
            from nnsight import CONFIG

            key = getattr(CONFIG.API, "APIKEY", None)
        except ImportError:
            key = None
    if not key:
        raise RemoteError("remote=True needs an NDIF API key: set NDIF_API_KEY (or nnsight.CONFIG.set_default_api_key"
                          "(...)) and make sure this machine can reach ndif.us; remote runs also need the model to "
                          "be one NDIF hosts (load it by its HF name).")


def save_session_state(interventions: list[Intervention]) -> list[dict[str, Any]]:
    """Each intervention's session state (its ``session_fields``), marked to come back from the trace: a
    remote run records into the server's copies of the interventions."""
    from nnsight import save

    return save([{name: getattr(iv, name) for name in iv.session_fields} for iv in interventions])


def _fresh_on_unpickle() -> None:
    """Let a request ship lmscope's code by value: the process-local objects its modules hold (the sessions'
    ContextVar, the attention function's lock) travel as fresh ones (a server-side run starts with no session)."""
    import _thread
    import contextvars
    import copyreg

    copyreg.pickle(contextvars.ContextVar, lambda cv: (contextvars.ContextVar, (cv.name,)))
    copyreg.pickle(_thread.LockType, lambda lock: (_thread.allocate_lock, ()))
    copyreg.pickle(_thread.RLock, lambda lock: (_thread.RLock, ()))


def _tag_modules(root: Any) -> None:
    """Give every module its nnsight persistent id up front, so a request that reaches a module through the
    HookedModel (not an envoy) references the server's module instead of shipping the weights."""
    for env in root.modules():
        env._module._persistent_id = f"Module:{env.path}"


class _Visitor:
    """Reads and writes every requested site, in forward order, through nnsight envoys (:data:`VISIT`)."""

    def __init__(self, model: HookedModel, session: Session, root: Any) -> None:
        self.model, self.session, self.root, self.arch = model, session, root, model.arch
        self.stash: dict[int, torch.Tensor] = {}  # resid_pre of a layer, for resid_mid

    def visit(self, site: Site) -> None:
        VISIT[site.kind](self, site)

    def module_site(self, site: Site) -> None:
        """A kind of :data:`MODULE_SITES`: the named side of one module, through the entry's read/write."""
        loc = MODULE_SITES[site.kind]
        env = _envoy(self.root, loc.path(self.model, site.layer))
        if loc.side == "input":
            raw = env.input
            new = self.session.run_site(site, loc.read(self.model, site, raw))
            if new is not None:
                raw = loc.write(self.model, site, raw, new)
                env.input = raw
            if site.kind == "resid_pre":  # the base of resid_mid
                assert site.layer is not None
                self.stash[site.layer] = raw
            return
        out = env.output
        raw = out[0] if isinstance(out, tuple) else out
        new = self.session.run_site(site, loc.read(self.model, site, raw))
        copy = loc.copy(self.arch)
        if new is None and not copy:
            return
        value = raw if new is None else loc.write(self.model, site, raw, new)
        value = value.clone() if copy else value
        env.output = (value, *out[1:]) if isinstance(out, tuple) else value

    def logits(self, site: Site) -> None:
        out = self.root.output
        new = self.session.run_site(site, out.logits if hasattr(out, "logits") else out[0])
        if new is not None:
            out.logits = new

    def resid_mid(self, site: Site) -> None:
        assert site.layer is not None
        env = _envoy(self.root, self.arch.attn_out_path(site.layer))
        out = env.output
        attn = out[0] if isinstance(out, tuple) else out
        base = self.stash[site.layer]
        new = self.session.run_site(site, base + attn)
        if new is not None:
            env.output = (new - base, *out[1:]) if isinstance(out, tuple) else new - base

    def head_out(self, site: Site) -> None:
        assert site.layer is not None
        o_proj = _envoy(self.root, MODULE_SITES["head_z"].path(self.model, site.layer))
        per_head = head_out_value(self.model, site.layer, o_proj.input)
        new = self.session.run_site(site, per_head)
        if new is not None:
            out = o_proj.output
            o_proj.output = out + (new - per_head).sum(2)


#: One visit function per site kind this backend gives (keyed like the hooks backend's ``ATTACH``); the kinds
#: read inside the attention function are missing: nnsight sees module inputs and outputs only.
VISIT: dict[str, Callable[[_Visitor, Site], None]] = {
    **dict.fromkeys(MODULE_SITES, _Visitor.module_site),
    "logits": _Visitor.logits,
    "resid_mid": _Visitor.resid_mid,
    "head_out": _Visitor.head_out,
}


def _with_resid_pre(session: Session) -> list[Site]:
    """The visiting order: forward order, with each resid_mid's layer input read first (its base)."""
    sites = set(session.per_site)
    extra = {Site("resid_pre", s.layer) for s in sites if s.kind == "resid_mid"} - sites
    for site in extra:
        session.per_site[site] = []
    return sorted(sites | extra, key=forward_order)


def run_nnsight(model: HookedModel, batch: Batch, interventions: list[Intervention], *,
                remote: bool | str = False, grad: bool = False) -> tuple[torch.Tensor, ActivationCache]:
    """One forward of ``batch`` inside an nnsight trace with ``interventions``; returns (logits, cache).

    ``remote=True`` sends it to NDIF; ``remote="local"`` is nnsight's serverless dry run of exactly that
    request (serialised as for NDIF, deserialised with lmscope hidden as on a server, run here)."""
    validate(interventions)  # before the remote checks, which read the interventions' declarations
    if remote not in (False, True, "local"):
        raise InputError(f"remote must be False, True (NDIF) or 'local' (a dry run of the request), got {remote!r}.")
    if remote:
        check_remote(interventions, need_key=remote is True)
    session = open_session(model, interventions)
    missing = sorted({s.kind for s in session.per_site if s.kind not in VISIT})
    if missing:
        gives = [k for k in ALL_KINDS if k in VISIT and k in model.available_kinds]
        raise SiteError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not available with "
                        "backend='nnsight' (they exist only inside the attention function); use the hooks backend "
                        f"for them. nnsight gives: {', '.join(gives)}.")
    root = remote_nnsight_model(model) if remote else nnsight_model(model)
    order = _with_resid_pre(session)
    session.ctx = ForwardContext.from_mask(batch.attention_mask, 0, int(batch.input_ids.shape[1]))
    kwargs: dict[str, Any] = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                              "position_ids": batch.position_ids, "use_cache": False}
    ctx = torch.enable_grad() if grad else torch.no_grad()
    records: list[dict[str, Any]] = []  # only values saved inside the trace come back out of it
    with ctx:
        try:
            with root.trace(**kwargs, remote=remote) if remote else root.trace(**kwargs):
                visitor = _Visitor(model, session, root)
                for site in order:
                    visitor.visit(site)
                saved = root.output.save()
                if remote:
                    records = save_session_state(interventions)
        except LmscopeError:
            raise
        except Exception as err:
            if remote and _is_network_error(err):
                raise RemoteError(f"NDIF (or the Hugging Face Hub, which names the model) could not be reached: "
                                  f"{type(err).__name__}: {err}. Check the network, or run locally "
                                  "(remote=False).") from None
            raise
    for iv, state in zip(interventions, records):  # a remote run recorded into the server's copies: take theirs
        for name, value in state.items():
            setattr(iv, name, value)
    logits = saved.logits if hasattr(saved, "logits") else saved[0]
    return logits, session_cache(model, session, batch.attention_mask)
