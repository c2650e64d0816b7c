"""Checkpoint files: formats detected from content, loading that never runs code, atomic saves, clear errors."""
import os
import pickle

import numpy as np
import pytest

import xfreeze
from xfreeze import XFreezeError
from xfreeze import _checkpoint
from harness import Spec, kit, random_state

CNN = Spec("cnn", (4, 3))
SUFFIXES = [".pt", ".pth", ".bin", ".pdparams", ".safetensors", ".npz"]


def model(fw):
    m = fw.build(CNN)
    fw.load(m, random_state(CNN, "float32", 0))
    return m


def arrays(fw, m):
    from xfreeze._backend import adapter_for
    return adapter_for(m).state_arrays(m)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_every_format_from_either_framework(fw, tmp_path, suffix):
    m = model(fw)
    path = xfreeze.save_checkpoint(m, tmp_path / f"w{suffix}")
    loaded = xfreeze.load_checkpoint(path)
    expected = arrays(fw, m)
    assert sorted(loaded) == sorted(expected)
    for key, value in expected.items():
        assert np.array_equal(_checkpoint.to_numpy(loaded[key]), value), key
    assert loaded.format == {".pdparams": "paddle", ".safetensors": "safetensors", ".npz": "npz"}.get(suffix, "torch")


def test_framework_is_recorded_or_recognised(fw, tmp_path):
    m = model(fw)
    for suffix in (".safetensors", ".npz", ".pdparams"):
        loaded = xfreeze.load_checkpoint(xfreeze.save_checkpoint(m, tmp_path / f"w{suffix}"))
        assert loaded.framework == fw.name, suffix  # safetensors metadata, else the statistics' names


def test_format_is_detected_from_content_not_suffix(tmp_path):
    state = {"fc.weight": np.arange(6, dtype="float32").reshape(2, 3)}
    for fmt in ("torch", "paddle", "safetensors", "npz"):
        path = xfreeze.save_checkpoint(state, tmp_path / f"{fmt}.weights", format=fmt)
        loaded = xfreeze.load_checkpoint(path)
        assert loaded.format == fmt and np.array_equal(_checkpoint.to_numpy(loaded["fc.weight"]), state["fc.weight"])


def test_files_written_by_the_frameworks_themselves_load(tmp_path):
    torch_kit, paddle_kit = kit("torch"), kit("paddle")
    t, p = model(torch_kit), model(paddle_kit)
    torch_kit.t.save({"epoch": 3, "state_dict": t.state_dict()}, tmp_path / "t.pth")
    torch_kit.t.save(t.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    paddle_kit.p.save(p.state_dict(), str(tmp_path / "p.pdparams"))
    wrapped = xfreeze.load_checkpoint(tmp_path / "t.pth")
    assert wrapped.notes == [("state_dict", "unwrapped checkpoint %r['state_dict']" % str(tmp_path / "t.pth"))]
    assert len(xfreeze.load_checkpoint(tmp_path / "legacy.pt")) == len(t.state_dict())
    pd = xfreeze.load_checkpoint(tmp_path / "p.pdparams")
    assert "1._mean" in pd and pd.framework == "paddle"
    assert paddle_kit.p.load(str(xfreeze.save_checkpoint(pd, tmp_path / "again.pdparams")))["1._mean"].shape == [4]


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("suffix", [".pdparams", ".pt"])
def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    if suffix == ".pt":
        kit("torch").t.save({"w": kit("torch").t.ones(2), "x": RunsCode(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"w": np.ones(2), "x": RunsCode(marker)}, protocol=4))
    with pytest.raises(XFreezeError, match="refused to load"):
        xfreeze.load_checkpoint(path)
    assert not marker.exists(), "the file's code ran"


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_truncated_files_are_clear_errors(tmp_path, suffix):
    path = xfreeze.save_checkpoint(model(kit("torch")), tmp_path / f"w{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(XFreezeError, match=r"w\%s'.* (truncated or corrupt|not a torch)" % suffix):
        xfreeze.load_checkpoint(path)


def test_missing_empty_corrupt_and_directory(tmp_path):
    with pytest.raises(XFreezeError, match=r"checkpoint '.*nope.pt' does not exist"):
        xfreeze.load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(XFreezeError, match=r"empty.pt' is empty \(0 bytes\)"):
        xfreeze.load_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "noise.pt").write_bytes(os.urandom(256).replace(b"\x80", b"\x81").replace(b"PK", b"pk"))
    with pytest.raises(XFreezeError, match=r"noise.pt' is not a torch, Paddle, safetensors or npz file \(the suffix"):
        xfreeze.load_checkpoint(tmp_path / "noise.pt")
    with pytest.raises(XFreezeError, match="is a directory"):
        xfreeze.load_checkpoint(tmp_path)


def test_non_tensor_values_are_refused(tmp_path):
    path = tmp_path / "mixed.pdparams"
    path.write_bytes(pickle.dumps({"w": np.ones(2), "lr": 0.1, "names": ["a"]}, protocol=4))
    with pytest.raises(XFreezeError, match=r"values that are not tensors: 'lr' \(float\), 'names' \(list\)"):
        xfreeze.load_checkpoint(path)


def test_save_is_atomic(tmp_path, monkeypatch):
    path = xfreeze.save_checkpoint({"w": np.ones(3, "float32")}, tmp_path / "w.npz")
    before = path.read_bytes()

    def crash(arrays, f, framework):
        f.write(b"half a file")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setitem(_checkpoint.__dict__, "_write_npz", crash)
    with pytest.raises(KeyboardInterrupt):
        xfreeze.save_checkpoint({"w": np.zeros(3, "float32")}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"], "no temporary file is left behind"


def test_save_errors(tmp_path):
    with pytest.raises(XFreezeError, match="cannot tell the format"):
        xfreeze.save_checkpoint({"w": np.ones(1)}, tmp_path / "w.weights")
    with pytest.raises(XFreezeError, match="does not exist"):
        xfreeze.save_checkpoint({"w": np.ones(1)}, tmp_path / "no" / "w.npz")
    with pytest.raises(XFreezeError, match=r"value of 'lr' is a float"):
        xfreeze.save_checkpoint({"lr": 0.1}, tmp_path / "w.npz")
