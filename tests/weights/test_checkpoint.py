"""Checkpoint files: structural format detection, every real file readable, native dtypes bit for bit, saves that
keep mode / links / no stale temps, and clear errors."""

import errno
import json
import os
import pickle
import re
import signal
import stat
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import xfreeze
from xfreeze import XFreezeError
from xfreeze.backends.formats import FileFormat
from xfreeze.core.tensors import same_bits, to_backend
from xfreeze.weights import files as _checkpoint, formats
from xfreeze.weights.statedict import StateDict
from harness import Spec, kit, random_state

CNN = Spec("cnn", (4, 3))
SUFFIXES = [".pt", ".pth", ".bin", ".pdparams", ".safetensors", ".npz"]
FORMAT_OF = {".pdparams": "paddle", ".safetensors": "safetensors", ".npz": "npz"}
DTYPES = [
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "float8_e4m3fn",
    "float8_e5m2",
    "int64",
    "int32",
    "int8",
    "uint8",
    "bool",
]
NUMPY_LACKS = {"bfloat16", "float8_e4m3fn", "float8_e5m2"}


def model(fw):
    m = fw.build(CNN)
    fw.load(m, random_state(CNN, "float32", 0))
    return m


def tensor(dtype: str, shape=(3, 2), seed=0):
    """A torch tensor of ``dtype`` with varied bits (fp8/bf16 from float32 values)."""
    import torch

    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return torch.from_numpy(rng.integers(0, 2, shape).astype(bool))
    if dtype.startswith(("int", "uint")):
        return torch.from_numpy(rng.integers(0, 100, shape).astype(dtype))
    return torch.from_numpy(rng.standard_normal(shape).astype("float32")).to(getattr(torch, dtype))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_every_format_from_either_framework(fw, tmp_path, suffix):
    m = model(fw)
    path = xfreeze.save_checkpoint(m, tmp_path / f"w{suffix}")
    loaded = xfreeze.load_checkpoint(path)
    expected = m.state_dict()
    assert sorted(loaded) == sorted(expected)
    for key, value in expected.items():
        assert same_bits(loaded[key], value), key
    assert loaded.format == FORMAT_OF.get(suffix, "torch")
    assert loaded.framework == fw.name


@pytest.mark.parametrize("suffix", [".pt", ".pdparams", ".safetensors"])
@pytest.mark.parametrize("backend", ["torch", "paddle"])
def test_every_dtype_round_trips_bit_for_bit(tmp_path, suffix, backend):
    from xfreeze.core.dispatch import adapter_named

    state = {d: tensor(d, seed=i) for i, d in enumerate(DTYPES) if d in adapter_named(backend).DTYPES}
    state = {k: to_backend(v, backend, k) for k, v in state.items()}
    loaded = xfreeze.load_checkpoint(xfreeze.save_checkpoint(state, tmp_path / f"w{suffix}"))
    for key, value in state.items():
        assert same_bits(loaded[key], value), key
        if key not in NUMPY_LACKS and suffix != ".pt":
            assert isinstance(loaded[key], np.ndarray), key  # numpy where numpy holds the dtype


def test_npz_refuses_dtypes_numpy_lacks_naming_the_tensor(tmp_path):
    with pytest.raises(XFreezeError, match=r"tensor 'h.w' is bfloat16, which numpy cannot hold"):
        xfreeze.save_checkpoint({"h.w": tensor("bfloat16")}, tmp_path / "w.npz")
    assert list(tmp_path.iterdir()) == []


def test_paddle_bf16_files_from_paddle_save_read_as_bf16_and_ours_read_in_paddle(tmp_path):
    paddle = kit("paddle").p
    w = paddle.to_tensor([1.5, -0.94]).astype("bfloat16")
    paddle.save({"w": w, "epoch": 3, "pair": (1, 2.0, "x")}, str(tmp_path / "p.pdparams"))
    with pytest.raises(XFreezeError, match=r"values that are not tensors: 'epoch' \(int\), 'pair' \(tuple\)"):
        xfreeze.load_checkpoint(tmp_path / "p.pdparams")  # readable; only the non-tensor entries are named
    paddle.save({"w": w}, str(tmp_path / "q.pdparams"))
    assert same_bits(xfreeze.load_checkpoint(tmp_path / "q.pdparams")["w"], w)
    ours = xfreeze.save_checkpoint({"w": w, "f8": tensor("float8_e4m3fn")}, tmp_path / "ours.pdparams")
    assert paddle.load(str(ours))["w"].dtype == paddle.bfloat16
    assert same_bits(xfreeze.load_checkpoint(ours)["f8"], tensor("float8_e4m3fn"))


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_paddle_save_protocols_and_wrapped_states_load(tmp_path, protocol):
    paddle = kit("paddle").p
    m = model(kit("paddle"))
    paddle.save(
        {"model": m.state_dict(), "epoch": 7, "best": (0.5, "acc")}, str(tmp_path / "p.pdparams"), protocol=protocol
    )
    loaded = xfreeze.load_checkpoint(tmp_path / "p.pdparams")
    assert sorted(loaded) == sorted(m.state_dict()) and loaded.notes[0][0] == "model"
    for key, value in m.state_dict().items():
        assert same_bits(loaded[key], value), key


def test_numpy_protocol_5_pickles_load(tmp_path):
    path = tmp_path / "p5.pdparams"
    path.write_bytes(pickle.dumps({"w": np.arange(6, dtype="float32").reshape(2, 3)}, protocol=5))
    assert xfreeze.load_checkpoint(path)["w"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_files_written_by_torch_itself_load(tmp_path):
    t = kit("torch").t
    m = model(kit("torch"))
    t.save({"epoch": 3, "state_dict": m.state_dict()}, tmp_path / "t.pth")
    t.save(m.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    wrapped = xfreeze.load_checkpoint(tmp_path / "t.pth")
    assert wrapped.notes == [("state_dict", "unwrapped checkpoint %r['state_dict']" % str(tmp_path / "t.pth"))]
    assert len(xfreeze.load_checkpoint(tmp_path / "legacy.pt")) == len(m.state_dict())


def test_safetensors_header_lengths_ending_in_0x80_are_not_pickles(tmp_path):
    # the header length's low byte is 0x80 for some key lengths: detection must not read it as a pickle opcode
    hits = 0
    for n in range(1, 160):
        path = xfreeze.save_checkpoint({"k" * n: np.ones(1, "float32")}, tmp_path / "w.safetensors")
        hits += path.read_bytes()[0] == 0x80
        assert list(xfreeze.load_checkpoint(path)) == ["k" * n]
    assert hits > 0


def test_safetensors_files_are_readable_by_safetensors_itself(tmp_path):
    from safetensors.torch import load_file

    state = {d: tensor(d) for d in DTYPES}
    back = load_file(str(xfreeze.save_checkpoint(state, tmp_path / "w.safetensors")))
    assert all(same_bits(back[k], v) for k, v in state.items())


@pytest.mark.parametrize("key", ["__metadata__", "file", "a b[/x] ü €", "[bold]x[/bold]", "\x1b[31mred", "0"])
@pytest.mark.parametrize("suffix", [".pt", ".pdparams", ".safetensors", ".npz"])
def test_awkward_keys(tmp_path, key, suffix):
    state = {key: np.arange(3, dtype="float32")}
    if key == "__metadata__" and suffix == ".safetensors":
        with pytest.raises(XFreezeError, match="'__metadata__' is reserved by the safetensors format"):
            xfreeze.save_checkpoint(state, tmp_path / f"w{suffix}")
        return
    loaded = xfreeze.load_checkpoint(xfreeze.save_checkpoint(state, tmp_path / f"w{suffix}"))
    assert list(loaded) == [key] and same_bits(loaded[key], state[key])


def test_keys_must_be_strings(tmp_path):
    with pytest.raises(XFreezeError, match=r"keys that are not non-empty strings: 3 \(int\)"):
        xfreeze.save_checkpoint({3: np.ones(1)}, tmp_path / "w.pt")


KEYS = st.text(min_size=1, max_size=1000).filter(lambda k: k != "__metadata__" and "\x00" not in k)
SHAPES = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)


@pytest.mark.parametrize("backend", ["torch", "paddle"])
@pytest.mark.parametrize("suffix", [".pt", ".pdparams", ".safetensors", ".npz"])
@settings(max_examples=12, deadline=None)
@given(items=st.dictionaries(KEYS, st.tuples(st.sampled_from(DTYPES), SHAPES), min_size=1, max_size=4))
def test_property_load_of_save_is_the_identity(tmp_path_factory, backend, suffix, items):
    state = {k: to_backend(tensor(d, shape, seed=i), backend, k) for i, (k, (d, shape)) in enumerate(items.items())}
    if suffix == ".npz":
        state = {k: v for k, v in state.items() if items[k][0] not in NUMPY_LACKS} or {"x": tensor("int8")}
    path = xfreeze.save_checkpoint(state, tmp_path_factory.mktemp("p") / f"w{suffix}")
    loaded = xfreeze.load_checkpoint(path)
    assert list(loaded) == list(state)
    assert all(same_bits(loaded[k], v) for k, v in state.items())


def test_format_is_detected_from_content_not_suffix(tmp_path):
    state = {"fc.weight": np.arange(6, dtype="float32").reshape(2, 3)}
    assert set(formats.NAMES) >= {"torch", "paddle", "safetensors", "npz"}
    for fmt in formats.NAMES:
        path = xfreeze.save_checkpoint(state, tmp_path / f"{fmt}.weights", format=fmt)
        loaded = xfreeze.load_checkpoint(path)
        assert loaded.format == fmt and same_bits(loaded["fc.weight"], state["fc.weight"])


def test_framework_argument_and_metadata(tmp_path):
    with pytest.raises(XFreezeError, match=r"Expected one of \('torch', 'paddle'\). Received: framework='tf'"):
        xfreeze.load_checkpoint(tmp_path / "x.pt", framework="tf")
    with pytest.raises(XFreezeError, match=r"Received: format='onnx'"):
        xfreeze.save_checkpoint({"w": np.ones(1)}, tmp_path / "w.pt", format="onnx")
    state = StateDict({"bn._mean": np.zeros(2, "float32")}, framework="paddle")
    path = _checkpoint._save(state, tmp_path / "w.safetensors", None, {"framework": "torch"})
    loaded = xfreeze.load_checkpoint(path)
    assert loaded.framework == "paddle"  # the key names are the file's own structure
    assert ("", "metadata says framework='torch' but the key names are paddle's; using paddle") in loaded.notes
    path = _checkpoint._save({"w": np.zeros(2)}, tmp_path / "u.safetensors", None, {"framework": "\x1b[31mtf"})
    assert "ignored: not one of" in xfreeze.load_checkpoint(path).notes[0][1]
    assert xfreeze.load_checkpoint(path, framework="paddle").framework == "paddle"


@pytest.mark.parametrize("suffix", [".pdparams", ".pt"])
def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path, suffix):
    marker = tmp_path / "pwned"

    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / f"evil{suffix}"
    if suffix == ".pt":
        kit("torch").t.save({"w": kit("torch").t.ones(2), "x": RunsCode()}, path)
    else:
        path.write_bytes(pickle.dumps({"w": np.ones(2), "x": RunsCode()}, protocol=4))
    with pytest.raises(XFreezeError, match="refused to load"):
        xfreeze.load_checkpoint(path)
    assert not marker.exists(), "the file's code ran"


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_truncated_files_are_clear_errors(tmp_path, suffix):
    path = xfreeze.save_checkpoint(model(kit("torch")), tmp_path / f"w{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(XFreezeError, match=r"w\%s'.*(truncated or corrupt|not a torch|cut short|not a valid)" % suffix):
        xfreeze.load_checkpoint(path)


def test_missing_empty_corrupt_and_directory(tmp_path):
    with pytest.raises(XFreezeError, match=r"checkpoint '.*nope.pt' does not exist"):
        xfreeze.load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(XFreezeError, match=r"empty.pt' is empty \(0 bytes\)"):
        xfreeze.load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(XFreezeError, match="is a directory"):
        xfreeze.load_checkpoint(tmp_path)


# --- saving -------------------------------------------------------------------------------------------------
def test_file_mode_follows_umask_and_existing_files(tmp_path):
    old = os.umask(0o022)
    try:
        path = xfreeze.save_checkpoint({"w": np.ones(2)}, tmp_path / "w.safetensors")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.chmod(path, 0o640)
        xfreeze.save_checkpoint({"w": np.zeros(2)}, path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_saving_to_a_symlink_writes_through_to_its_target(tmp_path):
    target = xfreeze.save_checkpoint({"w": np.ones(2)}, tmp_path / "real.pt")
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    xfreeze.save_checkpoint({"w": np.zeros(2)}, link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert xfreeze.load_checkpoint(target)["w"].tolist() == [0, 0]


def test_a_killed_save_leaves_the_old_file_and_the_next_save_removes_its_temp(tmp_path):
    path = xfreeze.save_checkpoint({"w": np.ones(3, "float32")}, tmp_path / "w.npz")
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import os, signal, numpy as np, xfreeze
        from xfreeze.weights import files as _checkpoint
        def write(f):
            f.write(b"half a file"); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
        _checkpoint._atomic_write(_checkpoint.Path({str(path)!r}), write)
    """)
    result = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert result.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    stale = [p.name for p in tmp_path.iterdir() if p.name != "w.npz"]
    assert len(stale) == 1 and stale[0].startswith(".w.npz.xfreeze-") and stale[0].endswith(".tmp")
    xfreeze.save_checkpoint({"w": np.zeros(3, "float32")}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_disk_full_is_one_clear_error_and_the_old_file_stays(tmp_path, suffix):
    """A real limit (RLIMIT_FSIZE): torch.save's zip writer turns the OSError into a RuntimeError; the cause is kept."""
    path = xfreeze.save_checkpoint({"w": np.ones(3, "float32")}, tmp_path / f"w{suffix}")
    script = textwrap.dedent(f"""
        import resource, signal, numpy as np, xfreeze
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # a disk that fills after 4 KiB
        try:
            xfreeze.save_checkpoint({{"w": np.ones(100000, "float32")}}, {str(path)!r})
        except xfreeze.XFreezeError as exc:
            print(exc)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (
        "cannot write" in result.stdout
        and "EFBIG" in result.stdout
        and "previous file there is intact" in result.stdout
    ), result.stdout + result.stderr
    assert xfreeze.load_checkpoint(path)["w"].tolist() == [1, 1, 1]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_read_only_location_is_one_clear_error():
    with pytest.raises(XFreezeError, match=r"cannot write '/sys/w.pt': .*(EACCES|EROFS|EPERM)"):
        xfreeze.save_checkpoint({"w": np.ones(2)}, "/sys/w.pt")


def test_save_errors(tmp_path):
    with pytest.raises(XFreezeError, match="cannot tell the format"):
        xfreeze.save_checkpoint({"w": np.ones(1)}, tmp_path / "w.weights")
    with pytest.raises(XFreezeError, match="does not exist"):
        xfreeze.save_checkpoint({"w": np.ones(1)}, tmp_path / "no" / "w.npz")
    with pytest.raises(XFreezeError, match=r"value of 'lr' is a float"):
        xfreeze.save_checkpoint({"lr": 0.1}, tmp_path / "w.npz")
    assert list(tmp_path.iterdir()) == []


def test_concurrent_saves_to_one_path_from_threads_each_write_a_whole_file(tmp_path):
    import threading

    path = tmp_path / "w.safetensors"
    errors = []

    def save(i):
        try:
            xfreeze.save_checkpoint({"w": np.full(20000, i, "float32")}, path)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    values = xfreeze.load_checkpoint(path)["w"]
    assert len(set(values.tolist())) == 1  # one save's whole file, never a mix
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_numpy_checkpoints_import_no_framework(tmp_path):
    script = textwrap.dedent(f"""
        import sys, numpy as np, xfreeze
        for suffix in (".npz", ".safetensors", ".pdparams"):
            path = {str(tmp_path)!r} + "/w" + suffix
            xfreeze.save_checkpoint({{"fc.weight": np.ones((2, 2), "float32")}}, path)
            xfreeze.load_checkpoint(path)
        print("torch" in sys.modules, "paddle" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "False"], result.stderr[-2000:]


def test_a_format_is_one_registry_entry(tmp_path, monkeypatch):
    """A new format (here: a zip holding one JSON file) is an entry with sniff / read / write; load, save and
    detection pick it up, and the refusal for an unknown zip archive names it."""

    def read(path, size, fmt):
        with zipfile.ZipFile(path) as archive:
            return {k: np.asarray(v, "float32") for k, v in json.loads(archive.read("w.json")).items()}, {}

    def write(state, fmt, framework, metadata):
        text = json.dumps({k: np.asarray(v).tolist() for k, v in state.items()})

        def to(f):
            with zipfile.ZipFile(f, "w") as archive:
                archive.writestr("w.json", text)

        return to

    sniff = lambda head, names: names == ["w.json"]  # noqa: E731
    listing = FileFormat("listing", (".lst",), "zip", sniff, read, write, missing="a listing (no w.json)")
    monkeypatch.setattr(formats, "REGISTRY", formats.REGISTRY + (listing,))
    monkeypatch.setattr(formats, "SUFFIXES", {**formats.SUFFIXES, ".lst": "listing"})
    path = xfreeze.save_checkpoint({"fc.weight": np.ones((2, 3), "float32")}, tmp_path / "w.lst")
    loaded = xfreeze.load_checkpoint(path)
    assert loaded.format == "listing" and loaded["fc.weight"].tolist() == [[1.0] * 3] * 2
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hi")
    with pytest.raises(XFreezeError, match=r"nor an npz \(members not all \.npy\) nor a listing \(no w\.json\)"):
        xfreeze.load_checkpoint(tmp_path / "other.zip")


# --- issue 18: paths that are not paths, paths too long, a full disk -------------------------------------------
@pytest.mark.parametrize("bad", [3, None, ["w.pt"], 1.5, {"path": "w.pt"}])
def test_a_path_that_is_not_a_path_is_refused_naming_it(tmp_path, bad):
    with pytest.raises(
        XFreezeError, match=rf"path must be a file path \(str or os.PathLike\), not {type(bad).__name__}"
    ):
        xfreeze.save_checkpoint({"w": np.ones(2)}, bad)
    with pytest.raises(XFreezeError, match=rf"not {type(bad).__name__}\. Received: path="):
        xfreeze.load_checkpoint(bad)
    with pytest.raises(XFreezeError, match="path is empty"):
        xfreeze.load_checkpoint("")


def test_bytes_paths_are_paths(tmp_path):
    path = xfreeze.save_checkpoint({"w": np.ones(2, "float32")}, os.fsencode(tmp_path / "w.npz"))
    assert xfreeze.load_checkpoint(os.fsencode(path))["w"].tolist() == [1, 1]


def test_paths_too_long_are_refused_before_touching_the_disk(fw, tmp_path):
    deep = str(tmp_path) + ("/" + "d" * 200) * 25 + "/w.pt"
    long_name = tmp_path / ("n" * 300 + ".pt")
    for path, message in ((deep, r"path is too long: 5,\d\d\d bytes, .* \(PATH_MAX\)"), (long_name, r"\(NAME_MAX\)")):
        with pytest.raises(XFreezeError, match=message) as info:
            xfreeze.save_checkpoint(model(fw), path)
        assert len(str(info.value)) < 500  # the path is shortened in the message
        with pytest.raises(XFreezeError, match=message):
            xfreeze.load_checkpoint(path)
    assert list(tmp_path.iterdir()) == []
    near_the_limit = tmp_path / ("m" * 250 + ".pt")  # its temporary file needs a shorter stand-in name
    xfreeze.save_checkpoint(model(fw), near_the_limit)
    assert [p.name for p in tmp_path.iterdir()] == [near_the_limit.name]


def test_a_directory_is_not_a_file_to_save_to(tmp_path):
    with pytest.raises(XFreezeError, match=r"cannot write '.*': it is a directory; name a file inside it"):
        xfreeze.save_checkpoint({"w": np.ones(2)}, tmp_path)
    with pytest.raises(XFreezeError, match="is a directory"):
        _checkpoint.check_writable(tmp_path)


class FullDisk:
    """An open file on a disk with ``room`` bytes left: a write past it raises ENOSPC, as the OS does."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data):
        size = memoryview(data).nbytes
        if size > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= size
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("suffix", [".pt", ".pdparams", ".safetensors", ".npz"])
def test_a_full_disk_is_one_error_with_the_free_space_and_leaves_nothing(fw, tmp_path, monkeypatch, suffix):
    path = xfreeze.save_checkpoint({"w": np.ones(3, "float32")}, tmp_path / f"w{suffix}")
    before = path.read_bytes()
    fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: FullDisk(fdopen(fd, *a, **k), room=200))
    with pytest.raises(XFreezeError) as info:  # torch.save alone would raise RuntimeError("unexpected pos ...")
        xfreeze.save_checkpoint(model(fw), path)
    message = str(info.value)
    assert f"cannot write {str(path)!r}: No space left on device (ENOSPC); " in message
    assert re.search(r"\(([\d,]+) bytes\) free in ", message) and "nothing was left behind" in message
    monkeypatch.undo()
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]
