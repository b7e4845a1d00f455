"""``enable_compile_fusion()``: make ``torch.compile`` (Inductor) replace the eager patterns of AlexNet-style
networks with the fused ops, forward and backward, by itself.

    F.max_pool2d(F.local_response_norm(F.relu(x), ...), ...)  ->  alexnet_triton::relu_lrn_max_pool2d
    F.local_response_norm(F.relu(x), ...)                     ->  alexnet_triton::relu_lrn
    F.max_pool2d(F.relu(x), ...)                              ->  alexnet_triton::relu_max_pool2d
    F.max_pool2d(x, ...)                                      ->  alexnet_triton::max_pool2d
    F.dropout(F.relu(x), p), F.dropout(x, p) (training)       ->  alexnet_triton::relu_dropout, ::dropout

How: each pattern is traced as Inductor traces a model (``torch._inductor.pattern_matcher``:
``joint_fwd_bwd`` for training graphs, whose backward nodes must match too, ``fwd_only`` for inference
graphs) and registered with ``register_replacement``; a ``CustomGraphPass`` installed as
``torch._inductor.config.joint_custom_pre_pass`` applies them to every joint graph, first normalising it
as the traced patterns were (``remove_noop_ops`` and Inductor's early view patterns: that pass runs after
the custom one, so without it nothing matches). Its ``uuid()`` hashes this file and the configurations,
so the compile cache stays valid.

The scalars of a pattern are part of it: LRN's beta appears in the backward as beta - 1 and the like, so
one pattern is traced per configuration (``lrn``: (size, alpha, beta, k); ``pool``: (kernel, stride,
padding, ceil_mode)). A call with other arguments is left to Inductor, as is ``ceil_mode``
in the fused block (``relu_lrn_max_pool2d`` does not take it) and any intermediate that is also used
elsewhere (the matcher checks that). Dropout (``dropout``: the probabilities p to match) is Inductor's
``rand`` -> ``gt`` -> ``mul`` in the graph; the fused op draws its seed from torch's generator and its
mask from its own Philox stream, so the masks differ from what Inductor would draw (both random: the same
keep rate and scaling), as compiled dropout's masks already differ from eager's; ``dropout=()`` keeps
Inductor's.
"""

from __future__ import annotations

import functools
import hashlib

import torch
import torch.nn.functional as F

from .block import relu_lrn_max_pool2d
from .dropout import dropout, relu_dropout
from .lrn import relu_lrn
from .pool import max_pool2d, relu_max_pool2d

#: (size, alpha, beta, k): AlexNet's (Caffe's and torch.nn's k=1, the paper's k=2)
LRN_CONFIGS = ((5, 1e-4, 0.75, 1.0), (5, 1e-4, 0.75, 2.0))
#: (kernel, stride, padding, ceil_mode): AlexNet's overlapping pool (GoogLeNet's with ceil_mode), VGG's
POOL_CONFIGS = ((3, 2, 0, False), (3, 2, 0, True), (2, 2, 0, False))
#: dropout probabilities: AlexNet's and VGG's
DROPOUT_CONFIGS = (0.5,)


def _block(a, p):
    # (closures, not default arguments: register_replacement reads the functions' parameters as inputs)
    def search(x):
        return F.max_pool2d(F.local_response_norm(F.relu(x), *a), *p)

    def replace(x):
        return relu_lrn_max_pool2d(x, *a, *p)

    return search, replace


def _relu_lrn(a):
    def search(x):
        return F.local_response_norm(F.relu(x), *a)

    def replace(x):
        return relu_lrn(x, *a)

    return search, replace


def _pool(p, ceil, relu):
    def search(x):
        return F.max_pool2d(F.relu(x) if relu else x, *p, ceil_mode=ceil)

    def replace(x):
        return (relu_max_pool2d if relu else max_pool2d)(x, *p, ceil_mode=ceil)

    return search, replace


def _dropout(p, relu):
    def search(x):
        return F.dropout(F.relu(x) if relu else x, p, True)

    def replace(x):
        return (relu_dropout if relu else dropout)(x, p, True)

    return search, replace


def _patterns(lrn_configs, pool_configs, dropout_configs=()):
    """Lists of (name, search, replacement), the longest patterns first: each list is applied to the whole
    graph before the next (within one pass the matcher visits nodes in an order of its own, and a shorter
    pattern could take part of a longer one)."""
    pools = [((kernel, stride, padding), ceil) for kernel, stride, padding, ceil in pool_configs]
    return [
        [(f"relu_lrn_max_pool2d{a + p}", *_block(a, p))
         for a in lrn_configs for p, ceil in pools if not ceil],  # the fused block has no ceil_mode
        [(f"relu_max_pool2d{p + (ceil,)}", *_pool(p, ceil, True)) for p, ceil in pools]
        + [(f"relu_lrn{a}", *_relu_lrn(a)) for a in lrn_configs]
        + [(f"relu_dropout({p})", *_dropout(p, True)) for p in dropout_configs],
        [(f"max_pool2d{p + (ceil,)}", *_pool(p, ceil, False)) for p, ceil in pools]
        + [(f"dropout({p})", *_dropout(p, False)) for p in dropout_configs],
    ]


@functools.lru_cache(maxsize=8)
def _pattern_passes(lrn_configs, pool_configs, dropout_configs):
    """PatternMatcherPasses, one per list of ``_patterns``, each pattern traced for training and for
    inference graphs."""
    import inspect

    from torch._inductor.pattern_matcher import (
        PatternMatcherPass,
        fwd_only,
        joint_fwd_bwd,
        register_replacement,
    )

    named = "pattern_name" in inspect.signature(register_replacement).parameters  # not in torch 2.11
    passes = []
    for level in _patterns(lrn_configs, pool_configs, dropout_configs):
        patterns = PatternMatcherPass(pass_name=f"alexnet_triton_fusion_{len(passes)}")
        for name, search, replace in level:
            # meta tensors: traced without running anything. The example's sizes and dtype are not part of
            # the pattern (a match is traced again with the graph's own shapes and dtype and checked)
            x = torch.empty(2, 8, 9, 9, device="meta")
            for trace, example in ((joint_fwd_bwd, x.requires_grad_()), (fwd_only, x.detach())):
                register_replacement(search, replace, [example], trace, patterns,
                                     **(dict(pattern_name=f"{name}_{trace.__name__}") if named else {}))
        passes.append(patterns)
    return passes


def _normalise(graph: torch.fx.Graph) -> None:
    """What ``joint_fwd_bwd`` does to a pattern after tracing it, done to the graph before matching."""
    from torch._inductor.fx_passes.joint_graph import early_patterns
    from torch._inductor.fx_passes.post_grad import remove_noop_ops

    remove_noop_ops(graph)
    early_patterns.apply(graph)


def _custom_graph_pass_base():
    from torch._inductor.custom_graph_pass import CustomGraphPass

    return CustomGraphPass


class FusionPass(_custom_graph_pass_base()):
    """The joint-graph pass: normalise, replace the patterns, restore a topological order (a replacement's
    backward node is inserted at its forward's place). Runs ``previous`` (a pass that was installed before
    this one) first."""

    def __init__(self, lrn_configs, pool_configs, dropout_configs=(), previous=None):
        self.configs = (tuple(map(tuple, lrn_configs)), tuple(map(tuple, pool_configs)),
                        tuple(float(p) for p in dropout_configs))
        self.previous = previous
        self.replaced = 0  # replacements made so far (a compile served from Inductor's cache runs no pass)

    def __call__(self, graph: torch.fx.Graph) -> None:
        from torch._inductor.pattern_matcher import stable_topological_sort

        if self.previous is not None:
            self.previous(graph)
        _normalise(graph)
        count = sum(patterns.apply(graph) for patterns in _pattern_passes(*self.configs))
        if count:
            stable_topological_sort(graph)
            graph.lint()
            self.replaced += count

    def uuid(self):
        with open(__file__, "rb") as f:
            h = hashlib.sha256(f.read())
        h.update(repr(self.configs).encode())
        if self.previous is not None:
            h.update(repr(self.previous.uuid()).encode())
        return h.hexdigest()


class enable_compile_fusion:  # noqa: N801 - a function to its callers, a class to be a context manager
    """Install the pattern pass for every later ``torch.compile`` (Inductor); as a context manager, only
    inside the block (the previous setting is restored on exit).

        kernels.enable_compile_fusion()
        with kernels.enable_compile_fusion(): ...

    ``lrn`` and ``pool``: the (size, alpha, beta, k) and (kernel, stride, padding, ceil_mode)
    configurations to match (the defaults cover AlexNet, Caffe's AlexNet, GoogLeNet's and VGG's pools);
    ``dropout``: the probabilities p of ``F.dropout`` to match (``()`` keeps Inductor's dropout). Patterns
    are traced once per configuration (about 0.1 s each).
    Already compiled functions keep their code (``torch._dynamo.reset()`` to recompile)."""

    def __init__(self, lrn=LRN_CONFIGS, pool=POOL_CONFIGS, dropout=DROPOUT_CONFIGS):
        from torch._inductor import config

        self._previous = config.joint_custom_pre_pass
        previous = self._previous.previous if isinstance(self._previous, FusionPass) else self._previous
        self.fusion_pass = FusionPass(lrn, pool, dropout, previous)
        _pattern_passes(*self.fusion_pass.configs)  # trace now: errors here, not inside a compile
        config.joint_custom_pre_pass = self.fusion_pass

    def __enter__(self):
        return self.fusion_pass

    def __exit__(self, *exc):
        from torch._inductor import config

        config.joint_custom_pre_pass = self._previous
        return False


def disable_compile_fusion() -> None:
    """Remove the pass installed by ``enable_compile_fusion`` (keeping any pass that was there before)."""
    from torch._inductor import config

    current = config.joint_custom_pre_pass
    if isinstance(current, FusionPass):
        config.joint_custom_pre_pass = current.previous
