"""Init runs torch on one thread."""
from __future__ import annotations

import functools
from contextlib import contextmanager

import torch


@contextmanager
def one_thread():
    """Init is thousands of mid-sized tensor ops: a second thread gains little there and, on a busy
    machine, costs several times the work in thread hand-offs (measured 5-10x on 2 shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def single_threaded(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with one_thread():
            return fn(*args, **kwargs)

    return wrapper
