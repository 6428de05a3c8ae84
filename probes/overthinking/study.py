"""One call for the whole "Overthinking the Truth" study on one model and task.

:func:`run_study` builds paired prompts for every setting, reads label probabilities at every layer and
k-shot position through each lens, finds the critical layer (true vs ``false_setting`` demos), scores
every head (false-induction and prefix matching, on ``score_task`` with permuted labels as the authors
do), and ablates the top-k heads at the final token against random heads. The returned
:class:`OverthinkingReport` is JSON-able (``to_dict``/``save``) and carries its figures.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from lmscope.interventions.artifacts import atomic_write_bytes
from lmscope.interventions.errors import InputError
from lmscope.interventions.numbers import float32_clean_all

from . import plots
from .ablation import METHODS, check_method
from .final_token import final_label_probs
from .heads import batched_head_scores, random_head_sets, top_heads
from .metrics import calibrated_correct, correct, critical_layer, gap_reduction
from .readings import read_labels
from .tasks import SETTINGS, FewShotTask, build_prompts, load_task

if TYPE_CHECKING:
    from lmscope.interventions import HookedModel
    from lmscope.lens import Lens


@dataclass
class StudyConfig:
    """Sizes and choices of one study (all JSON-able)."""

    task: str
    score_task: str
    settings: list[str]
    false_setting: str
    n_prompts: int
    n_demos: int
    lenses: list[str]
    top_k: int
    n_random: int
    methods: list[str]
    batch_size: int
    seed: int
    min_sigma: float


@dataclass
class OverthinkingReport:
    """Tables, critical layers, head scores, ablations and figures of one study.

    ``tables[lens][setting]["acc"|"cal"]`` is ``[n_layers][n_demos + 1]`` (k-shot accuracy per layer);
    ``critical[lens]`` a :class:`~.metrics.CriticalLayer` dict; ``heads`` the layer x head score maps and
    the top heads; ``ablation`` accuracies and gap reductions per method (top-k vs random draws).
    """

    config: StudyConfig
    model: str
    labels: list[str]
    tables: dict[str, dict[str, dict[str, list[list[float]]]]]
    critical: dict[str, dict[str, Any]]
    heads: dict[str, Any]
    ablation: dict[str, Any] | None
    timings: dict[str, float]
    figures: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the figures, JSON-able."""
        return _json_safe({"config": asdict(self.config), "model": self.model, "labels": self.labels,
                           "tables": self.tables, "critical": self.critical, "heads": self.heads,
                           "ablation": self.ablation, "timings": self.timings})

    def save(self, folder: str | Path) -> Path:
        """Write ``report.json`` and one PNG per figure into ``folder`` (each file written atomically)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "report.json", json.dumps(self.to_dict(), indent=1, allow_nan=False).encode())
        for name in self.figures:
            atomic_write_bytes(out / f"{name}.png", self.png(name))
        return out

    @classmethod
    def load(cls, folder: str | Path, *, figures: bool = True) -> OverthinkingReport:
        """Read a report written by :meth:`save` (``report.json``; figures are redrawn from its numbers).

        Lets a notebook show a study run once at full size (``lmscope overthinking --out``) without re-running it.
        """
        path = Path(folder) / "report.json"
        if not path.is_file():
            raise InputError(f"No overthinking report at {path}; write one with `lmscope overthinking --out "
                             f"{folder}` or OverthinkingReport.save.")
        try:
            data = _nan_in_lists(json.loads(path.read_text()))
            report = cls(StudyConfig(**data["config"]), data["model"], list(data["labels"]), data["tables"],
                         data["critical"], data["heads"], data["ablation"], data["timings"])
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"{path} is not an overthinking report ({type(err).__name__}: {err}).") from None
        if figures:
            report.figures = make_figures(report)
        return report

    def png(self, name: str) -> bytes:
        """One figure as PNG bytes (``IPython.display.Image(report.png(name))`` shows it in a notebook)."""
        if name not in self.figures:
            raise InputError(f"No figure {name!r}; figures: {', '.join(self.figures) or 'none'}.")
        import io

        buf = io.BytesIO()
        self.figures[name].savefig(buf, format="png", dpi=110)
        return buf.getvalue()

    def summary(self) -> str:
        """A few human-readable lines: accuracies, critical layer, top heads, gap reductions."""
        c, lines = self.config, []
        for lens, per in self.tables.items():
            accs = ", ".join(f"{s} {per[s]['acc'][-1][-1]:.3f}" for s in per)
            crit = self.critical[lens]
            where = f"layer {crit['layer']}" if crit["layer"] is not None else "none"
            lines.append(f"[{lens} lens] final-layer {c.n_demos}-shot accuracy: {accs}")
            lines.append(f"[{lens} lens] critical layer ({c.false_setting} vs true): {where} -- {crit['reason']}")
            lines.append(f"[{lens} lens] best early exit for {c.false_setting} demos: layer "
                         f"{crit['best_false_layer']} acc {crit['best_false_acc']:.3f} (final layer "
                         f"{crit['final_false_acc']:.3f})")
        pairs = zip(self.heads["top"], self.heads["top_scores"])
        top = ", ".join(f"L{layer}H{h} ({s:+.3f})" for (layer, h), s in pairs)
        lines.append(f"top-{c.top_k} false-induction heads ({c.score_task}, permuted): {top}")
        if self.ablation is not None:
            a = self.ablation
            lines.append(f"ablation at the final token: acc true {a['acc_true']:.3f}, {c.false_setting} "
                         f"{a['acc_false']:.3f} (gap {a['gap']:+.3f})")
            for m, r in a["methods"].items():
                rnd = r["random"]
                if not _finite(r["top"]["gap_reduction"]):  # no false-demo gap: a reduction means nothing
                    lines.append(f"  {m:>4}: top-{c.top_k} gap reduction n/a: no gap (true and "
                                 f"{c.false_setting} demos are equally accurate)")
                    continue
                lines.append(f"  {m:>4}: top-{c.top_k} gap reduction {r['top']['gap_reduction']:+.3f} "
                             f"(acc true {r['top']['acc_true']:.3f}, false {r['top']['acc_false']:.3f}); "
                             f"random {_signed(rnd['gap_reduction_mean'])} +- {_signed(rnd['gap_reduction_std'], '')} "
                             f"over {len(rnd['gap_reductions'])} draws")
        return "\n".join(lines)


def _finite(x: float | None) -> bool:
    """Whether a report number is a real value (NaN is stored as None in the JSON report)."""
    return x is not None and math.isfinite(x)


def _signed(x: float | None, sign: str = "+") -> str:
    """``x`` to 3 decimals (with ``sign`` as the format's sign option), or ``n/a`` when undefined."""
    return f"{x:{sign}.3f}" if x is not None and _finite(x) else "n/a"


#: Report fields that are always numbers (a ``null`` there was a NaN); other ``null`` fields mean "none".
_FLOAT_FIELDS = frozenset({"gap", "gap_reduction", "gap_reduction_mean", "gap_reduction_std", "acc_true", "acc_false",
                           "acc_true_mean", "acc_false_mean", "best_false_acc", "final_false_acc"})


def _nan_in_lists(obj: Any) -> Any:
    """Undo :func:`_json_safe`: a ``null`` inside a list of numbers, or in a number-only field, was a NaN."""
    if isinstance(obj, dict):
        return {k: math.nan if v is None and k in _FLOAT_FIELDS else _nan_in_lists(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [math.nan if v is None else _nan_in_lists(v) for v in obj]
    return obj


def _json_safe(obj: Any) -> Any:
    """NaN/inf floats become None so the report is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def resolve_lenses(model: HookedModel, lenses: Sequence[str] | dict[str, Lens]) -> dict[str, Lens]:
    """``"logit"`` -> :class:`LogitLens`; ``"tuned"`` -> the default model's cached tuned lens; a dict as is."""
    if isinstance(lenses, dict):
        return dict(lenses)
    from lmscope.lens import LogitLens

    out: dict[str, Lens] = {}
    for name in lenses:
        if name == "logit":
            out[name] = LogitLens(model)
        elif name == "tuned":
            from lmscope.lens.training import default_lens

            out[name] = default_lens(model)
        else:
            raise InputError(f"Unknown lens {name!r}; use 'logit', 'tuned', or pass a dict of name -> lens.")
    return out


def _tables(probs: torch.Tensor, true: torch.Tensor) -> dict[str, list[list[float]]]:
    # probs [L, n, k, labels]; true [n, k] -> per layer and k: accuracy and calibrated accuracy over inputs
    p = probs.transpose(1, 2)  # [L, k, n, labels]
    t = true.T  # [k, n]
    return float32_clean_all({"acc": correct(p, t).mean(-1).tolist(),
                              "cal": calibrated_correct(p, t).mean(-1).tolist()})


def _check_choices(settings: Sequence[str], false_setting: str, methods: Sequence[str]) -> list[str]:
    """The study's settings (``true`` and ``false_setting`` first, no repeats), after checking every choice."""
    settings = list(dict.fromkeys(["true", false_setting, *settings]))
    for s in settings:
        if s not in SETTINGS:
            raise InputError(f"Unknown setting {s!r}; settings: {', '.join(SETTINGS)}.")
    if false_setting == "true":
        raise InputError("false_setting must be a false-demo setting: permuted, half or random.")
    for m in methods:
        check_method(m, "run_study methods: ")
    return settings


def run_study(model: HookedModel, task: str | FewShotTask = "category", *, score_task: str | FewShotTask | None =
              "unnatural", settings: Sequence[str] = ("true", "permuted", "random"), false_setting: str = "permuted",
              n_prompts: int = 100, n_demos: int = 12, lenses: Sequence[str] | dict[str, Lens] = ("logit", "tuned"),
              top_k: int = 5, n_random: int = 20, methods: Sequence[str] = METHODS, batch_size: int = 8,
              seed: int = 0, min_sigma: float = 2.0, ablate: bool = True, progress: bool = True,
              figures: bool = True) -> OverthinkingReport:
    """Run the whole study; see the module docstring. ``score_task=None`` scores heads on ``task``."""
    task = load_task(task)
    score = load_task(score_task) if score_task is not None else task
    settings = _check_choices(settings, false_setting, methods)
    lens_map = resolve_lenses(model, lenses)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    prompts = {s: build_prompts(model, task, s, n_prompts, n_demos, seed) for s in settings}
    same_task = score.name == task.name and score.pairs == task.pairs
    readings = {}
    for s in settings:
        readings[s] = read_labels(model, prompts[s], lens_map, batch_size=batch_size, progress=progress,
                                  head_scores=same_task and s == "permuted", desc=f"lens readings ({s})")
    timings["lens_readings_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    head_sums = readings["permuted"].heads if same_task and "permuted" in readings else None
    head_means = head_sums.means() if head_sums is not None else batched_head_scores(
        model, build_prompts(model, score, "permuted", n_prompts, n_demos, seed), batch_size=batch_size,
        progress=progress)
    timings["head_scores_s"] = time.perf_counter() - t1
    fi = head_means["false_induction"]
    top = top_heads(fi, top_k)
    heads = float32_clean_all({"score_task": score.name, "setting": "permuted", "false_induction": fi.tolist(),
                               "prefix_matching": head_means["prefix_matching"].tolist(),
                               "same": head_means["same"].tolist(), "all": head_means["all"].tolist(),
                               "top": [list(h) for h in top], "top_scores": [float(fi[layer, h]) for layer, h in top]})

    tables: dict[str, dict[str, dict[str, list[list[float]]]]] = {}
    critical = {}
    for name in lens_map:
        tables[name] = {s: _tables(readings[s].probs[name], torch.tensor(prompts[s].true)) for s in settings}
        ct = correct(readings["true"].probs[name][:, :, -1], torch.tensor(prompts["true"].true)[:, -1])
        cf = correct(readings[false_setting].probs[name][:, :, -1], torch.tensor(prompts[false_setting].true)[:, -1])
        critical[name] = float32_clean_all(critical_layer(ct, cf, min_sigma=min_sigma, seed=seed).to_dict())

    abl = None
    if ablate:
        t2 = time.perf_counter()
        abl = _ablation_study(model, prompts["true"], prompts[false_setting], top, top_k, n_random, list(methods),
                              batch_size, seed, progress)
        timings["ablation_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0
    config = StudyConfig(task.name, score.name, settings, false_setting, n_prompts, n_demos, list(lens_map), top_k,
                         n_random, list(methods), batch_size, seed, min_sigma)
    report = OverthinkingReport(config, model.arch.name + f" ({getattr(model.hf_model.config, '_name_or_path', '')})",
                                list(task.labels), tables, critical, heads, abl, timings)
    if figures:
        report.figures = make_figures(report)
    return report


def _ablation_study(model: HookedModel, true_ps: Any, false_ps: Any, top: list[tuple[int, int]], k: int,
                    n_random: int, methods: list[str], batch_size: int, seed: int, progress: bool) -> dict[str, Any]:
    draws = random_head_sets(model.n_layers, model.n_heads, k, n_random, seed)
    configs: dict[str, Any] = {"none": ((), "zero")}
    for m in methods:
        configs[f"{m}/top"] = (top, m)
        for i, d in enumerate(draws):
            configs[f"{m}/random{i}"] = (d, m)
    acc: dict[str, dict[str, float]] = {}
    for which, ps in (("true", true_ps), ("false", false_ps)):
        probs = final_label_probs(model, ps, configs, batch_size=batch_size, progress=progress)
        t = torch.tensor([row[-1] for row in ps.true])
        acc[which] = {name: float(correct(p, t).mean()) for name, p in probs.items()}
    a_t, a_f = acc["true"]["none"], acc["false"]["none"]
    out: dict[str, Any] = {"k": k, "n_random": n_random, "acc_true": a_t, "acc_false": a_f, "gap": a_t - a_f,
                           "top_heads": [list(h) for h in top], "random_heads": [[list(h) for h in d] for d in draws],
                           "methods": {}}
    for m in methods:
        red = [gap_reduction(a_t, a_f, acc["false"][f"{m}/random{i}"]) for i in range(n_random)]
        rt = torch.tensor(red, dtype=torch.float64)
        n = max(n_random, 1)
        out["methods"][m] = {
            "top": {"acc_true": acc["true"][f"{m}/top"], "acc_false": acc["false"][f"{m}/top"],
                    "gap_reduction": gap_reduction(a_t, a_f, acc["false"][f"{m}/top"])},
            "random": {"acc_true_mean": sum(acc["true"][f"{m}/random{i}"] for i in range(n_random)) / n,
                       "acc_false_mean": sum(acc["false"][f"{m}/random{i}"] for i in range(n_random)) / n,
                       "gap_reductions": red, "gap_reduction_mean": float(rt.mean()) if n_random else float("nan"),
                       "gap_reduction_std": float(rt.std()) if n_random > 1 else float("nan")}}
    return float32_clean_all(out)


def make_figures(report: OverthinkingReport) -> dict[str, Any]:
    """Accuracy-over-layers, k-shot, head heat-map and ablation figures of a report."""
    c = report.config
    figs = {"accuracy_layers": plots.accuracy_figure(report.tables, report.critical, len(report.labels),
                                                     f"{c.task}: {c.n_demos}-shot label accuracy by layer"),
            "accuracy_demos": plots.demos_figure(report.tables, next(iter(report.tables)),
                                                 f"{c.task}: final layer vs number of demos"),
            "head_scores": plots.heads_figure(report.heads["false_induction"], report.heads["prefix_matching"],
                                              report.heads["top"], f"head scores on {c.score_task} (permuted)")}
    if report.ablation is not None:
        figs["ablation"] = plots.ablation_figure(report.ablation, f"{c.task}: ablating heads at the final token")
    return figs
