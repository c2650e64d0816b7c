"""Hostile or broken files fail fast and clearly (a generated corpus, tests/hostile_files.py), never hang, never
exhaust memory, and leave the model they were meant for unchanged."""

import os
import subprocess
import sys
import textwrap

import pytest

import xfreeze
from xfreeze import XFreezeError
import hostile_files
from harness import Spec
from statehash import state_hash

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return hostile_files.generate(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("name", sorted(hostile_files.CORPUS))
def test_every_hostile_file_is_one_clear_error_naming_the_file(corpus, name):
    path = next(p for p in corpus if p.endswith(name))
    with pytest.raises(XFreezeError, match=corpus[path]) as info:
        xfreeze.load_checkpoint(path)
    assert name in str(info.value)


@pytest.mark.parametrize(
    "name",
    [
        "self_reference.pdparams",
        "reconstruct_bomb.pdparams",
        "npz_bomb.npz",
        "st_offsets_beyond.safetensors",
        "runs_code.pdparams",
        "int_keys.pdparams",
    ],
)
def test_load_matched_from_a_hostile_file_changes_nothing(corpus, fw, name):
    path = next(p for p in corpus if p.endswith(name))
    m = fw.build(Spec("cnn", (4, 3)))
    before = state_hash(m)
    with pytest.raises(XFreezeError, match=name.replace(".", r"\.")):
        xfreeze.load_matched(m, path)
    with pytest.raises(XFreezeError):
        xfreeze.load_delta(m, path)
    assert state_hash(m) == before


def test_no_loader_takes_more_than_a_bounded_amount_of_memory_on_a_bomb(tmp_path):
    """Every bomb is loaded in a subprocess whose address space is capped at what it holds + 512 MiB."""
    hostile_files.generate(tmp_path)
    script = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {HERE!r})
        import torch, paddle, xfreeze, hostile_files
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
        cap = vm + 512 * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        for name in hostile_files.BOMBS:
            try:
                xfreeze.load_checkpoint({str(tmp_path)!r} + "/" + name)
                print("LOADED", name)
            except xfreeze.XFreezeError:
                print("refused", name)
            except MemoryError:
                print("MEMORY", name)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    lines = result.stdout.split("\n")
    assert [line for line in lines if line] == [f"refused {n}" for n in hostile_files.BOMBS], result.stderr[-2000:]


def test_the_corpus_script_runs_standalone(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "hostile_files.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and len(os.listdir(tmp_path)) == len(hostile_files.CORPUS)


def test_load_matched_reports_print_hostile_keys_as_data(fw):
    m = fw.build(Spec("mlp", (2,)))
    name = next(iter(m.state_dict()))
    state = {k: v for k, v in m.state_dict().items()}
    state["[/x]"], state["\x1b[31mred"] = state[name], state[name]
    text = str(xfreeze.load_matched(m, state))
    assert "[/x]" in text and "\x1b" not in text
