"""Coursework checkers: does a student's implementation agree with the library?

Each checker takes the student's function or class, runs it next to the library's reference on
several seeded random inputs of different shapes, and then either

* prints one line (``✓ attention passed: 4/4 cases match ...``) and returns ``None``, or
* raises ``AssertionError`` naming the first difference: which case (input shapes), which output,
  the shape mismatch or the largest absolute error and where, and a hint when the mistake is a
  known one (missing ``√d_k``, softmax over the wrong axis, wrong patch order, missing residual …).

So the same call works in a notebook (a readable message) and in an autograder (an exception).
Exceptions raised by the student's code are re-raised as ``AssertionError`` with the case attached;
so are a call that runs longer than ``harness.TIME_LIMIT_S`` seconds and a wrong type of result.

**The library's own answer does not pass.** Every checker names the library's (and PyTorch's)
implementation of what its exercise asks for (:func:`.guard.forbid`), and fails a submission whose
code runs any of it, however it is reached: called directly or under another name, wrapped in a
function, inherited by subclassing, or re-imported. An independent implementation built from tensor
operations (and from the building blocks an exercise allows, such as ``titn_edu.MultiHeadAttention``
inside the transformer block) passes.

**Hidden tests.** Every checker takes ``seed=``: without it, the fixed cases the notebooks show; with
it, other cases drawn from that seed (other shapes, sizes and edge cases, e.g. a single token or
patch). The course's autograder calls each checker again with seeds the students do not see.

Functions are called exactly like their library counterparts (see each checker's docstring).

Classes (``multi_head_attention``, ``mlp``, ``transformer_block``, ``inner_outer_block``) are handled
the same way every time:

1. the student's class is built with **the same constructor arguments** as the library class
   (listed in each docstring);
2. its ``state_dict()`` must have **the same parameter names and shapes** as the library module's
   (the checker lists every missing, unexpected or wrongly shaped entry otherwise);
3. the checker builds the reference module with seeded random weights (LayerNorm scales and all
   biases included, so forgetting one is caught), copies them into the student's module with
   ``load_state_dict(strict=True)``, puts both in ``eval()`` mode on the library's reference path
   (:func:`titn_edu.set_fast_path` off, so a check never builds or times a fast kernel) and compares
   the outputs.

Inputs and weights come from private random generators, and the global random state is restored
afterwards: calling a checker does not change what the rest of a notebook computes.

Where each checker lives: one module per notebook, all built on :mod:`titn_edu.checks.harness`
(the comparison, the messages, the seeding and the tolerances they share) and
:mod:`titn_edu.checks.guard` (the time limit and the watch for the library's own code).

Part I, building the model (notebooks 00–05):

* ``nb00_data``: notebook 00, setup and data: ``preprocess``
* ``nb01_patches``: notebook 01, patches and pixels: ``patchify``, ``pixelify``, ``unpatchify``
* ``nb02_attention``: notebook 02, attention (eq. 1–3): ``attention``, ``multi_head_attention``,
  ``mha_parameters``
* ``nb03_block``: notebook 03, MLP, LayerNorm and the block (eq. 4–6): ``layer_norm``, ``mlp``,
  ``transformer_block``
* ``nb04_titn_block``: notebook 04, inner and outer transformer (Fig. 1): ``inner_outer_block``,
  ``block_parameters``, ``inner_flops``
* ``nb05_tokens``: notebook 05, tokens and the model: ``embed_tokens``, ``model_parameters``

Part II, training and evaluating it (notebooks 06–10):

* ``nb06_loss``: notebook 06, the loss (CutMix, eq. 10): ``cutmix_box``, ``titn_loss``
* ``nb09_rollout``: notebook 09, evaluation and attention: ``attention_rollout``
"""

from __future__ import annotations

from .guard import TimeLimitExceeded, forbid, time_limit
from .harness import within_budget
from .nb00_data import preprocess
from .nb01_patches import patchify, pixelify, unpatchify
from .nb02_attention import attention, mha_parameters, multi_head_attention
from .nb03_block import layer_norm, mlp, transformer_block
from .nb04_titn_block import block_parameters, inner_flops, inner_outer_block
from .nb05_tokens import embed_tokens, model_parameters
from .nb06_loss import _reference_cutmix_box, cutmix_box, titn_loss  # noqa: F401  (the box rule; tests compare it with torchvision)
from .nb09_rollout import attention_rollout

__all__ = [
    "preprocess",
    "attention",
    "multi_head_attention",
    "mha_parameters",
    "layer_norm",
    "mlp",
    "transformer_block",
    "patchify",
    "pixelify",
    "unpatchify",
    "inner_outer_block",
    "embed_tokens",
    "block_parameters",
    "inner_flops",
    "model_parameters",
    # the guards, for grading tests of one's own (within_budget: a question graded on a measured outcome)
    "within_budget",
    "forbid",
    "time_limit",
    "TimeLimitExceeded",
    # part II
    "titn_loss",
    "cutmix_box",
    "attention_rollout",
]
