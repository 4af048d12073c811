"""Triton kernels of mulact, installed as ``mulact.kernels``.

Import through ``mulact.kernels`` (never the top-level name ``kernels``). Each module holds
one op's kernels and their launchers (plain functions of tensors). This package is a leaf: it
imports nothing from ``mulact``; validation, the status checks, the ``torch.library``
registration and autograd live in ``mulact.ops`` (docs/design.md §3).
On a machine without a GPU the kernels run under ``TRITON_INTERPRET=1`` (tests only).
"""
