"""Triton kernels of mulact, installed as ``mulact.kernels``.

Import through ``mulact.kernels`` (never the top-level name ``kernels``). Each module holds
one op's kernels and launchers; the ``autograd.Function`` and dispatch live in ``mulact.ops``.
On a machine without a GPU the kernels run under ``TRITON_INTERPRET=1`` (tests only).
"""
