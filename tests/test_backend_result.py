"""Array backend round trips and the Result / Deadline / History helpers."""

import math
import time

import numpy as np
import pytest
import torch

from combprune import backend
from combprune.result import Deadline, History, Result, Status, relative_gap


def test_namespace_defaults_to_numpy():
    xp = backend.namespace(None, 3.0)
    assert xp.__name__.endswith("numpy")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_round_trip_keeps_namespace_and_dtype(dtype):
    like = torch.zeros(3, dtype=dtype)
    out = backend.from_numpy(np.arange(3.0), like=like, keep_dtype=True)
    assert isinstance(out, torch.Tensor) and out.dtype == dtype
    assert np.array_equal(backend.to_numpy(out), np.arange(3.0))


def test_numpy_keep_dtype_casts_float():
    like = np.zeros(2, dtype=np.float32)
    assert backend.from_numpy(np.ones(2), like=like, keep_dtype=True).dtype == np.float32
    assert backend.from_numpy(np.ones(2), like=like).dtype == np.float64


def test_to_numpy_is_zero_copy_for_cpu_tensors():
    t = torch.arange(4.0)
    a = backend.to_numpy(t)
    t[0] = 7.0
    assert a[0] == 7.0


def test_cupy_available_is_a_bool():
    assert backend.cupy_available() in (True, False)


def test_relative_gap_mip_convention():
    assert relative_gap(10.0, 9.0) == pytest.approx(0.1)
    assert relative_gap(0.0, 1e-13) == pytest.approx(0.1)
    assert relative_gap(1.0, None) is None
    assert relative_gap(math.inf, 1.0) is None


def test_result_normalises_fields():
    r = Result(x=np.zeros(3), support=[True, False, True], objective=np.float32(2), status="feasible", bound=1.0)
    assert r.status is Status.FEASIBLE and r.nnz == 2
    assert r.gap == pytest.approx(0.5)
    d = r.to_dict()
    assert d["status"] == "feasible" and "x" not in d
    assert r.to_dict(include_x=True)["support"] == [True, False, True]
    with pytest.raises(ValueError):
        Result(x=None, support=[], objective=0.0, status="solved")


def test_deadline_and_history():
    dl = Deadline(0.01)
    assert not dl.expired() or dl.elapsed() >= 0.01
    time.sleep(0.02)
    assert dl.expired() and dl.remaining() < 0
    assert Deadline(None).remaining() == math.inf and not Deadline(None).expired()
    h = History(Deadline(None), "min")
    for v in (3.0, 4.0, 2.0, 2.0, 1.0):
        h.record(v)
    assert [v for _, v in h.points] == [3.0, 2.0, 1.0]
    hmax = History(Deadline(None), "max")
    for v in (1.0, 0.5, 2.0):
        hmax.record(v)
    assert [v for _, v in hmax.points] == [1.0, 2.0]
