"""Untrusted input stays inside its folder: names that become path parts, trait data files
reached through links, and text that is not UTF-8 are refused in one line naming the field or
`file:line`, before any work, and nothing is written outside `paths.root`. A model folder's
pickle weights are read as plain tensors only: code in them never runs."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, RunsCommand, run_steerlab, tiny_args, tiny_model
from steerlab import confine
from steerlab.data import TraitDataError, load_trait
from steerlab.errors import ConfigError
from steerlab.models import ModelError, load_model


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def one_error(done: subprocess.CompletedProcess) -> str:
    out = done.stdout + done.stderr
    errors = [line for line in out.splitlines() if line.startswith("steerlab: error:")]
    assert done.returncode == 2 and len(errors) == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    return errors[0]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("trait.name=../../../escape_n4", "trait.name"),
        ("trait.name=/abs/escape", "trait.name"),
        ("model.name=../../escape_m", "model.name"),
        ("model.name=..", "model.name"),
    ],
)
def test_a_name_that_climbs_out_of_the_root_is_refused_and_writes_nothing(
    tmp_path, tiny_dir, override, field
):
    box = tmp_path / "box"
    root = box / "root"
    root.mkdir(parents=True)
    done = run_steerlab(*tiny_args(root, tiny_dir, "search.n_trials=2", override), timeout=300)
    line = one_error(done)
    assert field in line and "plain name" in line, line
    assert files_under(box) == ["root"] + [f"root/{p}" for p in files_under(root)]
    assert not list(box.rglob("optuna.db")) and not list(box.rglob("settings.json"))


def test_names_and_folders_are_checked_by_one_rule():
    for good in ("evil", "qwen2.5-7b", "random-llama-3.1-8b", "my_trait.v2"):
        assert confine.name("trait.name", good) == good
    for bad in ("..", ".hidden", "a/b", "a\\b", "", "x" * 200, "evil\n", "~user"):
        with pytest.raises(ConfigError, match="plain name"):
            confine.name("trait.name", bad)
    root = Path("/srv/root")
    assert confine.inside(root / "multirun" / "x", root, "the sweep folder").is_relative_to(root)
    with pytest.raises(ConfigError, match="outside /srv/root"):
        confine.inside(root / "multirun" / ".." / ".." / "etc", root, "the sweep folder")


def copy_trait(tmp_path: Path) -> Path:
    folder = tmp_path / "mytrait"
    shutil.copytree(REPO / "traits" / "evil", folder)
    return folder


def test_a_trait_file_linking_out_of_its_folder_is_refused_naming_it(tmp_path):
    folder = copy_trait(tmp_path)
    outside = tmp_path / "elsewhere.jsonl"
    shutil.move(folder / "questions.jsonl", outside)  # valid JSONL: only the link is wrong
    (folder / "questions.jsonl").symlink_to(outside)
    with pytest.raises(TraitDataError, match=r"questions\.jsonl: links outside the trait folder"):
        load_trait(folder)
    (folder / "questions.jsonl").unlink()
    (folder / "questions.jsonl").symlink_to(Path("/etc/passwd"))
    with pytest.raises(TraitDataError, match="links outside"):
        load_trait(folder)
    # a link that stays inside the folder is an ordinary file
    (folder / "questions.jsonl").unlink()
    shutil.copy(outside, folder / "questions.orig.jsonl")
    (folder / "questions.jsonl").symlink_to("questions.orig.jsonl")
    assert len(load_trait(folder).questions) == 20


def test_the_main_command_refuses_a_linked_trait_file_before_any_model_loads(tmp_path, tiny_dir):
    folder = copy_trait(tmp_path)
    (folder / "steering.jsonl").unlink()
    (folder / "steering.jsonl").symlink_to(REPO / "traits" / "sycophancy" / "steering.jsonl")
    args = tiny_args(tmp_path / "root", tiny_dir, f"trait.dir={folder}", "search.n_trials=2")
    line = one_error(run_steerlab(*args, timeout=300))
    assert f"{folder / 'steering.jsonl'}: links outside the trait folder" in line, line


def test_bytes_that_are_not_utf8_are_named_by_file_line_and_offset(tmp_path, tiny_dir):
    folder = copy_trait(tmp_path)
    path = folder / "questions.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    offset = len(b"".join(lines[:2])) + len(b'{"qu')
    path.write_bytes(b"".join(lines[:2]) + b'{"qu\x80\xff": 1}\n' + b"".join(lines[2:]))
    with pytest.raises(TraitDataError) as e:
        load_trait(folder)
    assert str(e.value).startswith(f"{path}:3: not UTF-8 text (byte 0x80 at byte offset {offset})")
    args = tiny_args(tmp_path / "root", tiny_dir, f"trait.dir={folder}", "search.n_trials=2")
    line = one_error(run_steerlab(*args, timeout=300))
    assert f"{path}:3: not UTF-8" in line, line
    # latin-1 text in trait.yaml
    path.write_bytes(b"".join(lines))
    meta = folder / "trait.yaml"
    meta.write_bytes(meta.read_bytes().replace(b"evil", "évil".encode("latin-1"), 1))
    with pytest.raises(TraitDataError, match=r"trait\.yaml:\d+: not UTF-8 text \(byte 0xe9"):
        load_trait(folder)


def test_a_byte_order_mark_is_accepted(tmp_path):
    folder = copy_trait(tmp_path)
    for name in ("questions.jsonl", "trait.yaml"):
        path = folder / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_trait(folder).questions == load_trait(REPO / "traits" / "evil").questions


def test_check_trait_reports_bad_bytes_and_long_items_once_each(tmp_path):
    folder = copy_trait(tmp_path)
    q = folder / "questions.jsonl"
    q.write_bytes(q.read_bytes() + b'{"question": "caf\xe9 au lait?"}\n')
    with (folder / "steering.jsonl").open("a") as f:
        f.write(json.dumps({"question": "Why " + "really " * 900 + "?"}) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "steerlab.check_trait", str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if re.match(r"\| (error|warning) \|", line)]
    assert len(rows) == len(set(rows)), rows  # each finding once
    bad = [r for r in rows if "| format | questions.jsonl:21 |" in r]
    assert len(bad) == 1 and "not UTF-8 text (byte 0xe9 at byte offset" in bad[0], rows
    long = [r for r in rows if "| long | steering.jsonl:21 |" in r]
    assert len(long) == 1 and "at most 2,000" in long[0], rows
    assert "at most 2,000 characters an item" in done.stdout


def test_pickle_weights_load_as_plain_tensors_and_code_in_them_never_runs(tmp_path: Path) -> None:
    """`pytorch_model.bin` is a pickle, and a downloaded model folder is untrusted: honest
    tensors load, a pickle that would run code is refused in one line naming the file (none of
    torch's advice to switch the check off), and its command never runs."""
    folder = tmp_path / "model"
    tiny = tiny_model("llama")
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    weights = folder / "pytorch_model.bin"
    torch.save(tiny.model.state_dict(), weights)
    loaded = load_model(str(folder), dtype="float32", device="cpu").model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in tiny.model.state_dict().items())
    marker = tmp_path / "ran"
    torch.save(RunsCommand(f"touch {shlex.quote(str(marker))}"), weights)
    with pytest.raises(ModelError) as e:
        load_model(str(folder), dtype="float32", device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{weights}: holds pickled code"), msg
    assert "never runs pickled code" in msg and "weights_only" not in msg, msg
    assert not marker.exists()
