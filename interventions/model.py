"""``HookedModel``: a HuggingFace causal LM with named sites and composable interventions.

The wrapped model runs its own forward, unchanged (SDPA stays on; only a session
that reads or writes ``attn_pattern`` switches to an eager attention that
exposes the probabilities). ``run`` pads prompts and returns logits plus caches;
``apply`` attaches interventions for any forward in its body, ``generate`` included.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, cast

import torch
from torch import nn

from .architectures import (
    Architecture,
    dimensions,
    get_module,
    output_projection,
    weight_in_out,
)
from .backends.hooks import attach
from .backends.session import Session
from .base import Interventions, as_interventions
from .cache import ActivationCache, session_cache
from .errors import InputError, SiteError
from .hf_compat import check_internals
from .inference import detect_architecture
from .inputs import Batch, encode
from .placement import input_device
from .sites import Site, all_site_names, resolve_sites

#: Backends that run interventions: PyTorch hooks (everything) and an nnsight trace (``run`` only).
BACKENDS = ("hooks", "nnsight")


@dataclass
class RunResult:
    """Output of :meth:`HookedModel.run`: logits ``[batch, pos, vocab]``, caches and the padded batch."""

    logits: torch.Tensor
    cache: ActivationCache
    batch: Batch

    def last_logits(self) -> torch.Tensor:
        """Logits at each prompt's last real token: ``[batch, vocab]``."""
        idx = self.batch.last_index.to(self.logits.device)
        return self.logits[torch.arange(self.logits.shape[0], device=idx.device), idx]


@dataclass
class Generation:
    """Output of :meth:`HookedModel.generate`."""

    tokens: torch.Tensor  # [batch, prompt + new] (prompt left-padded)
    new_tokens: torch.Tensor  # [batch, new]
    texts: list[str] | None  # decoded new tokens


class HookedModel:
    """Wrap ``hf_model`` (a causal LM) and optionally its tokenizer; neither is modified."""

    def __init__(self, hf_model: nn.Module, tokenizer: Any = None, *, backend: str = "hooks") -> None:
        if backend not in BACKENDS:
            raise InputError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        #: Default backend of :meth:`run`: "hooks" (PyTorch hooks) or "nnsight" (an nnsight trace).
        self.backend = backend
        self.arch: Architecture = detect_architecture(hf_model)
        check_internals()
        config = hf_model.config
        self._dims = dimensions(config, int(self.unembed_weight.shape[0]))
        self.available_kinds = self.arch.available_sites(config)
        self._layers = cast(nn.ModuleList, self.module(self.arch.layers))  # indexed by layer
        #: The attention port ``attn_pattern`` installs on this transformers version (None: the attention interface
        #: is enough); resolved, and an unknown HF signature refused, here rather than mid-forward.
        self.attention_port = (self.arch.attention_port(self.module(f"{self.arch.layers}.0.{self.arch.attn}"))
                               if self.arch.attention_port is not None and len(self._layers) else None)
        from .placement import check_placement

        hooked = {p: self.module(p) for p in (self.arch.embed, self.arch.final_norm, self.arch.unembed)}
        hooked.update({f"{self.arch.layers}.{i}": layer for i, layer in enumerate(self._layers)})
        check_placement(hf_model, hooked)
        self._input_device = input_device(hf_model, self.module(self.arch.embed))
        hf_model.eval()
        if self.arch.inferred:
            from .adapter_checks import accept_inferred

            accept_inferred(self)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str], *, dtype: torch.dtype | str = torch.float32,
                        device: str | torch.device = "cpu", **hf_kwargs: Any) -> HookedModel:
        """Load with ``AutoModelForCausalLM.from_pretrained`` (hub ids need a network or the HF cache; local
        folders and ``gguf_file=`` work offline).

        Without a network (checked in under a second) a hub id loads from the local Hugging Face cache when it
        is there, and is otherwise an :class:`~lmscope.interventions.errors.OfflineError` at once, instead of
        transformers' ~30 s of retries.

        Big models: ``device_map="auto"`` or a dict, ``offload_folder=...`` and ``max_memory=...`` place modules
        across GPUs, CPU and disk with accelerate; every intervention works there (see
        :mod:`lmscope.interventions.placement`).

        Embedded models load offline by name: ``"default"``/``"smollm2-135m"`` (SmolLM2-135M-Instruct) and
        ``"gemma-3-270m"`` (Gemma 3 270M); see :mod:`lmscope.interventions.defaults`. The first CPU load of a process
        sets torch's thread count to the cores other processes leave free (:mod:`lmscope.interventions.threads`).
        """
        from .defaults import embedded_model, load_embedded
        from .placement import split_placement
        from .threads import apply_default_threads

        placement = split_placement(hf_kwargs)
        if "device_map" not in placement and torch.device(device).type == "cpu":
            apply_default_threads()
        embedded = embedded_model(str(name_or_path)) if not os.path.exists(str(name_or_path)) else None
        if embedded is not None:
            if hf_kwargs:
                raise InputError(f"{sorted(hf_kwargs)} do not apply to the embedded model {embedded.key!r} "
                                 "(only device_map, offload_folder and max_memory do).")
            hf, tok = load_embedded(embedded, dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype,
                                    device=device, **placement)
            return cls(hf, tok)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = str(name_or_path)
        if not hf_kwargs.get("local_files_only"):
            from .hub import resolve_model_name

            path = resolve_model_name(path)
        gguf = hf_kwargs.get("gguf_file")
        if path.endswith(".gguf") and gguf is None and os.path.isfile(path):
            path, hf_kwargs["gguf_file"] = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
        elif gguf is not None and os.path.isdir(path) and not os.path.isfile(os.path.join(path, gguf)):
            raise InputError(f"GGUF file {gguf!r} not found in {path}.")
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **placement, **hf_kwargs)
        if "device_map" not in placement:  # accelerate placed the modules itself otherwise
            model = model.to(device)
        tok_kwargs = {"gguf_file": hf_kwargs["gguf_file"]} if "gguf_file" in hf_kwargs else {}
        tokenizer = None
        files = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
        if os.path.isdir(path) and not tok_kwargs and not any(os.path.isfile(os.path.join(path, f)) for f in files):
            # transformers would build an empty placeholder tokenizer here; better none than a wrong one
            warnings.warn(f"No tokenizer files in {path}; pass token ids, or wrap with "
                          "HookedModel(model, tokenizer).", stacklevel=2)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path, **tok_kwargs)
        return cls(model, tokenizer)

    @classmethod
    def default(cls, dtype: torch.dtype | str = torch.float32, device: str | torch.device = "cpu") -> HookedModel:
        """The embedded SmolLM2-135M-Instruct (see :mod:`lmscope.interventions.defaults`)."""
        return cls.from_pretrained("default", dtype=dtype, device=device)

    # -- sizes and sites -----------------------------------------------------------------------
    n_layers = property(lambda self: self._dims.n_layers)
    n_heads = property(lambda self: self._dims.n_heads)
    n_kv_heads = property(lambda self: self._dims.n_kv_heads)
    d_model = property(lambda self: self._dims.d_model)
    d_head = property(lambda self: self._dims.d_head)
    d_vocab = property(lambda self: self._dims.d_vocab)
    n_ctx = property(lambda self: self._dims.n_ctx)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's (execution) device, also under an accelerate ``device_map``."""
        if getattr(self.hf_model, "hf_device_map", None):
            return self._input_device
        return next(self.hf_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf_model.parameters()).dtype

    def sites(self, pattern: str | None = None) -> list[str]:
        """Every site name in forward order, or those matching ``pattern`` (e.g. ``"resid_post.*"``)."""
        if pattern is None:
            return all_site_names(self.n_layers, self.available_kinds)
        return [s.name for s in self.resolve(pattern)]

    def resolve(self, spec: str | Site | Sequence[str | Site]) -> list[Site]:
        """Parse site name(s) into concrete sites; raises :class:`SiteError` with suggestions."""
        return resolve_sites(spec if not isinstance(spec, Sequence) or isinstance(spec, str) else list(spec),
                             self.n_layers, self.available_kinds)

    def site_shape(self, site: Site | str) -> tuple[int, ...]:
        """Trailing shape of a site's value after ``[batch, pos]`` (``attn_pattern`` has query/key dims)."""
        s = site if isinstance(site, Site) else self.resolve(site)[0]
        shapes: dict[str, tuple[int, ...]] = {
            "q": (self.n_heads, self.d_head), "rot_q": (self.n_heads, self.d_head),
            "k": (self.n_kv_heads, self.d_head), "rot_k": (self.n_kv_heads, self.d_head),
            "v": (self.n_kv_heads, self.d_head), "head_z": (self.n_heads, self.d_head),
            "head_out": (self.n_heads, self.d_model), "attn_scores": (self.n_heads,), "attn_pattern": (self.n_heads,),
            "logits": (self.d_vocab,),
        }
        if s.kind in ("mlp_pre", "mlp_post"):
            return (self.d_mlp,)
        return shapes.get(s.kind, (self.d_model,))

    @property
    def d_mlp(self) -> int:
        """Width of the MLP's hidden layer (the ``mlp_pre``/``mlp_post`` neurons); a SiteError on MoE models."""
        w_out, _ = self.mlp_output_projection(0)
        return int(w_out.shape[0])

    def module(self, path: str) -> nn.Module:
        """The HF submodule at a dotted path of the adapter table."""
        try:
            return get_module(self.hf_model, path)
        except (AttributeError, IndexError) as err:
            raise SiteError(f"The {self.arch.name} adapter points at {path!r}, which this model lacks "
                            f"({err}); the adapter table does not fit this checkpoint.") from None

    def layer_module(self, layer: int) -> nn.Module:
        return self._layers[layer]

    @property
    def final_norm(self) -> nn.Module:
        return self.module(self.arch.final_norm)

    @property
    def unembed(self) -> nn.Module:
        return self.module(self.arch.unembed)

    @property
    def unembed_weight(self) -> torch.Tensor:
        weight = self.unembed.weight
        assert isinstance(weight, torch.Tensor)
        return weight

    def decode_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Residual-stream vectors to logits through the model's own final norm and unembedding.

        ``hidden`` may live anywhere (a cache kept on the CPU, say): it is moved to the final norm's device."""
        hidden = hidden.to(input_device(self.hf_model, self.final_norm))
        return self.arch.finish_logits(self.hf_model.config, self.unembed(self.final_norm(hidden)))

    def output_projection(self, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W_O [n_heads, d_head, d_model], b_O)`` of a layer: ``Σ_h head_z[h] @ W_O[h] + b_O`` is the output
        projection's output, which is ``attn_out`` unless a post-attention norm follows (docs/architectures.md)."""
        index = self.resolve(f"head_z.{layer}")[0].layer
        o_proj = self.module(f"{self.arch.layers}.{index}.{self.arch.attn}.{self.arch.o_proj}")
        return output_projection(o_proj, self.arch.o_proj_layout, self.n_heads, self.d_head)

    def mlp_output_projection(self, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W_out [d_mlp, d_model], b_out)`` of a layer's MLP: ``mlp_post @ W_out + b_out`` is the MLP module's
        output, which is ``mlp_out`` unless a post-MLP norm follows. A SiteError on MoE models (no such matrix)."""
        index = self.resolve(f"mlp_post.{layer}")[0].layer
        assert index is not None
        down = self.module(self.arch.mlp_paths(index)[1])
        return weight_in_out(down, self.arch.o_proj_layout), getattr(down, "bias", None)

    def fingerprint(self) -> dict[str, Any]:
        from .fingerprint import model_fingerprint

        return model_fingerprint(self)

    # -- tokens --------------------------------------------------------------------------------
    def tokenize(self, inputs: Any, padding_side: str = "left") -> Batch:
        """Prompts or token ids to a padded :class:`Batch` on the model's device."""
        batch = encode(inputs, self.tokenizer, padding_side=padding_side, max_length=self.n_ctx)
        self._check_token_ids(batch.input_ids)
        return batch.to(self.device)

    def _check_token_ids(self, ids: torch.Tensor) -> None:
        """Refuse ids the embedding has no row for (instead of a raw IndexError deep in the forward)."""
        rows = getattr(self.module(self.arch.embed), "num_embeddings", None) or self.d_vocab
        bad = (ids < 0) | (ids >= rows)
        if bool(bad.any()):
            where = [tuple(int(i) for i in w) for w in bad.nonzero()[:3]]
            values = [int(ids[w]) for w in where]
            raise InputError(f"Token id(s) {values} at (prompt, position) {where} are outside the vocabulary: "
                             f"ids must be in 0..{rows - 1}.")

    def to_str_tokens(self, text: str) -> list[str]:
        """``text`` as the model sees it: one decoded string per token, special tokens (a BOS) included.

        The list lines up with positions in :meth:`run`/:meth:`tokenize` of the same unpadded prompt, so it
        labels cache rows, lens tables and patching heat maps."""
        if self.tokenizer is None:
            raise InputError("This model has no tokenizer.")
        ids = self.tokenizer(text)["input_ids"]
        return [self.tokenizer.decode([i]) for i in ids]

    def token_id(self, token: str) -> int:
        """The id of a string that must be exactly one token (e.g. ``" Paris"``)."""
        if self.tokenizer is None:
            raise InputError("This model has no tokenizer.")
        ids = self.tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = [self.tokenizer.decode([i]) for i in ids]
            raise InputError(f"{token!r} is {len(ids)} tokens {pieces}, not one; pass a single token.")
        return int(ids[0])

    # -- running -------------------------------------------------------------------------------
    @contextmanager
    def apply(self, *interventions: Interventions) -> Iterator[Session]:
        """Attach interventions for every forward in the body (``generate`` included); always detach.

        Yields the session; ``session.cache`` reads what any ``Cache`` recorded. The session acts only
        on forwards run in the context that opened it (this thread, or this asyncio task): other threads
        using the same model at the same time are unaffected. Sessions nest: inside an inner ``apply``
        the outer interventions still run, before the inner ones at a shared site.
        """
        with attach(self, as_interventions(list(interventions))) as session:
            yield session

    def run(self, inputs: Any, interventions: Interventions = (), *, padding_side: str = "left",
            grad: bool = False, position_ids: torch.Tensor | None = None, backend: str | None = None,
            remote: bool | str = False) -> RunResult:
        """One forward over ``inputs`` (padded; per-prompt results equal unbatched runs).

        ``interventions`` run in list order; the result's ``cache`` merges every ``Cache``.
        Gradients are off unless ``grad=True``. ``position_ids`` ([batch, pos], same layout as the
        padded batch) overrides the positions the model sees, e.g. to shift a span's positions
        (position-independence experiments); by default they count real tokens from 0.
        ``backend`` overrides the model's default (``"hooks"`` or ``"nnsight"``; equal results); ``remote=True``
        (nnsight only) runs the trace on NDIF, ``remote="local"`` is nnsight's serverless dry run of that request
        (see :mod:`lmscope.interventions.backends.nnsight`).
        """
        ivs = as_interventions(interventions)
        batch = self.tokenize(inputs, padding_side)
        if position_ids is not None:
            if tuple(position_ids.shape) != tuple(batch.input_ids.shape):
                raise InputError(f"position_ids has shape {tuple(position_ids.shape)}; the padded batch has "
                                 f"{tuple(batch.input_ids.shape)}.")
            if position_ids.is_floating_point() or (position_ids.numel() and (int(position_ids.min()) < 0 or (
                    self.n_ctx is not None and int(position_ids.max()) >= self.n_ctx))):
                allowed = f"in 0..{self.n_ctx - 1} (the context window)" if self.n_ctx else "non-negative"
                raise InputError(f"position_ids must be integers {allowed}.")
            batch = Batch(batch.input_ids, batch.attention_mask, position_ids.to(self.device), batch.texts)
        backend = self.backend if backend is None else backend
        if backend not in BACKENDS:
            raise InputError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
        if remote and backend != "nnsight":
            raise InputError("remote=True runs through nnsight's NDIF service: pass backend='nnsight'.")
        if backend == "nnsight":
            from .backends.nnsight import run_nnsight

            logits, cache = run_nnsight(self, batch, ivs, remote=remote, grad=grad)
            return RunResult(logits, cache, batch)
        with self.apply(ivs) as session, (nullcontext() if grad else torch.no_grad()):
            out = self.hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                position_ids=batch.position_ids, use_cache=False)
        return RunResult(out.logits, session_cache(self, session, batch.attention_mask), batch)

    def run_with_cache(self, inputs: Any, names_filter: Any = None, *, interventions: Interventions = (),
                       device: str | None = None, **run_kwargs: Any) -> tuple[torch.Tensor, ActivationCache]:
        """TransformerLens's ``run_with_cache``: ``(logits, cache)`` of one :meth:`run`.

        ``names_filter`` as in TransformerLens: None (every site), a name, a list of names (lmscope or
        TransformerLens names) or a function of a name (asked about TransformerLens names, or about lmscope names
        when it accepts none of those; see :func:`lmscope.interventions.tl_names.filter_sites`). ``device`` moves
        the recorded values (e.g. ``"cpu"``); ``interventions`` run in the same forward, before the cache records;
        other keywords go to :meth:`run`. The cache takes TransformerLens keys (``cache["resid_pre", 3]``).
        """
        from .cache import Cache
        from .tl_names import filter_sites

        names = names_filter if callable(names_filter) else [s.name for s in filter_sites(self, names_filter)]
        cache = Cache(names, device=device)
        result = self.run(inputs, [*as_interventions(interventions), cache], **run_kwargs)
        return result.logits, result.cache

    def generate(self, inputs: Any, max_new_tokens: int = 32, *, interventions: Interventions = (),
                 do_sample: bool = False, **generate_kwargs: Any) -> Generation:
        """Greedy (default) or sampled continuation of left-padded prompts under ``interventions`` (one or a list)."""
        ivs = as_interventions(interventions)
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
        batch = self.tokenize(inputs, "left")
        if self.n_ctx is not None and batch.input_ids.shape[1] + max_new_tokens > self.n_ctx:
            raise InputError(f"Prompt ({batch.input_ids.shape[1]} tokens) plus max_new_tokens ({max_new_tokens}) "
                             f"exceeds the context window of {self.n_ctx}.")
        pad_id = 0
        if self.tokenizer is not None:
            pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else \
                (self.tokenizer.eos_token_id or 0)
        with self.apply(ivs), torch.no_grad():
            out = cast(Any, self.hf_model).generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                         max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad_id,
                                         **generate_kwargs)
        new = out[:, batch.input_ids.shape[1]:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True) if self.tokenizer is not None else None
        return Generation(out, new, texts)

    def __repr__(self) -> str:
        return (f"HookedModel({self.arch.name}, layers={self.n_layers}, d_model={self.d_model}, "
                f"heads={self.n_heads}, d_head={self.d_head}, vocab={self.d_vocab})")
