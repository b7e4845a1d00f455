"""``kernels.patch(model)``: swap runs of ``torch.nn`` modules for the fused modules of ``kernels.nn``, in
place, and report what was replaced and what was left alone and why.

Runs, inside an ``nn.Sequential`` (whose forward feeds each module's output to the next and nowhere else):

    ReLU -> LocalResponseNorm -> MaxPool2d   =>  ReLULocalResponseNormMaxPool2d
    ReLU -> LocalResponseNorm                =>  ReLULocalResponseNorm
    ReLU -> MaxPool2d                        =>  ReLUMaxPool2d
    ReLU -> Dropout                          =>  ReLUDropout
    MaxPool2d, Dropout                       =>  MaxPool2d, Dropout (also outside a Sequential)

The fused module takes the run's first slot and ``nn.Identity`` the others, so indices and state-dict keys
stay as they were. Only modules of exactly these types are matched (a subclass may change forward). Left
alone, with the reason in the report: a module with hooks, a module that sits at several places in the
tree (its output may be used elsewhere), pooling with ``dilation`` other than 1 or ``return_indices``, LRN
arguments the op rejects, and (``dropout=False``) dropout. A plain ReLU or LRN that no run covers is not a
candidate and is not listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from . import nn as fused

# the runs, longest first: (module types, builder of the fused module from the run's modules)
_RUNS = (
    ((nn.ReLU, nn.LocalResponseNorm, nn.MaxPool2d),
     lambda r, n, p: fused.ReLULocalResponseNormMaxPool2d(n.size, n.alpha, n.beta, n.k, p.kernel_size,
                                                          p.stride, p.padding, ceil_mode=p.ceil_mode)),
    ((nn.ReLU, nn.LocalResponseNorm),
     lambda r, n: fused.ReLULocalResponseNorm(n.size, n.alpha, n.beta, n.k)),
    ((nn.ReLU, nn.MaxPool2d),
     lambda r, p: fused.ReLUMaxPool2d(p.kernel_size, p.stride, p.padding, ceil_mode=p.ceil_mode)),
    ((nn.ReLU, nn.Dropout), lambda r, d: fused.ReLUDropout(d.p, inplace=d.inplace)),
    ((nn.MaxPool2d,), lambda p: fused.MaxPool2d(p.kernel_size, p.stride, p.padding, ceil_mode=p.ceil_mode)),
    ((nn.Dropout,), lambda d: fused.Dropout(d.p, inplace=d.inplace)),
)
_SINGLE = (nn.MaxPool2d, nn.Dropout)  # replaceable anywhere: one module in, one out


@dataclass
class Replaced:
    names: tuple[str, ...]  # the run's qualified names, e.g. ("features.1", "features.2")
    modules: tuple[str, ...]  # their types, e.g. ("ReLU", "MaxPool2d")
    new: nn.Module  # the fused module now in names[0] (the others hold nn.Identity)

    def __str__(self):
        return f"{_span(self.names)}: {' -> '.join(self.modules)} => {self.new}"


@dataclass
class Skipped:
    names: tuple[str, ...]
    modules: tuple[str, ...]
    reason: str

    def __str__(self):
        return f"{_span(self.names)}: {' -> '.join(self.modules)} left alone: {self.reason}"


@dataclass
class PatchReport:
    replaced: list[Replaced] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def __str__(self):
        lines = [f"kernels.patch: {len(self.replaced)} replaced, {len(self.skipped)} left alone"]
        lines += [f"  replaced {r}" for r in self.replaced]
        lines += [f"  skipped  {s}" for s in self.skipped]
        return "\n".join(lines)


def _span(names) -> str:
    return names[0] if len(names) == 1 else f"{names[0]}..{names[-1].rsplit('.', 1)[-1]}"


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def _why_not(run, builder, places: dict[int, list[str]]) -> tuple[str | None, nn.Module | None]:
    """(reason, None) if the run cannot be replaced, else (None, the fused module)."""
    for m in run:
        where = places[id(m)]
        if _has_hooks(m):
            return f"{where[0]} has hooks (the fused module would bypass them)", None
        if len(where) > 1:
            return f"{where[0]} is also at {', '.join(where[1:])} (its output may be used elsewhere)", None
        if isinstance(m, nn.MaxPool2d) and (m.dilation not in (1, (1, 1), [1, 1]) or m.return_indices):
            what = "return_indices=True" if m.return_indices else f"dilation={m.dilation}"
            return f"{where[0]}: {what} is not supported by kernels.max_pool2d", None
    try:
        new = builder(*run)
    except (TypeError, ValueError) as e:
        return str(e), None
    new.train(run[-1].training)
    return None, new


def patch(model: nn.Module, *, dropout: bool = True) -> PatchReport:
    """Replace, in place, the runs of ``torch.nn`` modules listed in this module's docstring with the fused
    modules of ``kernels.nn``; returns a ``PatchReport`` (``print`` it) of what was replaced and what was
    left alone and why. ``dropout=False`` keeps ``nn.Dropout`` (and ReLU -> Dropout) as they are: the fused
    dropout draws other masks than torch's (the same keep rate and scaling)."""
    places: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        places.setdefault(id(m), []).append(name or "<model>")
    runs = [r for r in _RUNS if dropout or nn.Dropout not in r[0]]
    report = PatchReport()
    for parent_name, parent in list(model.named_modules()):
        children = list(parent.named_children())
        prefix = f"{parent_name}." if parent_name else ""
        sequential = isinstance(parent, nn.Sequential) and type(parent).forward is nn.Sequential.forward
        i = 0
        while i < len(children):
            step = 1
            failed = False
            for types, builder in runs:
                n = len(types)
                if not sequential and n > 1:
                    continue
                if not sequential and not isinstance(children[i][1], _SINGLE):
                    continue
                run = [m for _, m in children[i:i + n]]
                if len(run) < n or any(type(m) is not t for m, t in zip(run, types)):
                    continue
                names = tuple(prefix + c for c, _ in children[i:i + n])
                kinds = tuple(type(m).__name__ for m in run)
                reason, new = _why_not(run, builder, places)
                if reason is not None:
                    if not failed:  # the longest run's reason; a shorter run may still go
                        report.skipped.append(Skipped(names, kinds, reason))
                    failed = True
                    continue
                setattr(parent, children[i][0], new)
                for c, _ in children[i + 1:i + n]:
                    setattr(parent, c, nn.Identity())
                report.replaced.append(Replaced(names, kinds, new))
                step = n
                break
            i += step
    for parent_name, parent in model.named_modules():  # subclasses of the matched types: say so
        for c, m in parent.named_children():
            base = next((t for t in (nn.ReLU, nn.LocalResponseNorm, nn.MaxPool2d, nn.Dropout)
                         if isinstance(m, t) and type(m) is not t), None)
            if base is not None:
                name = f"{parent_name}.{c}" if parent_name else c
                report.skipped.append(Skipped((name,), (type(m).__name__,),
                                              f"a subclass of nn.{base.__name__} (its forward may differ)"))
    return report
