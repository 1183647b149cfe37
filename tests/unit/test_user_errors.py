"""Whatever a user feeds the data and bundle loaders, ``rakuten`` answers with exit code 1 and ONE ``error:`` line on
the whole of stderr (no traceback, no warning), and writes nothing to its output.

Run through the real CLI function in-process (fast: ``rakuten_cli.main.main`` with capsys), plus a couple of real
subprocesses. The hypothesis tests generate malformed CSVs (columns, cell types, encodings, separators, index
values) and malformed bundles (manifest / config / vocab / tensor / npz edits, with the manifest recomputed).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rakuten_cli.main import main
from tests.unit.bundle_edits import rehash, tfidf_bundle_for

pytestmark = pytest.mark.unit


@pytest.fixture(scope="session")
def tfidf_bundle(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tfidf_bundle_for(synth_data, tmp_path_factory)

X_NAME, Y_NAME = "X_train_update.csv", "Y_train_CVw08PX.csv"
FUZZ = settings(max_examples=int(os.environ.get("RAKUTEN_FUZZ_EXAMPLES", "40")), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code: int, err: str, contains: str = "") -> None:
    """Exit code 1 and stderr exactly one line, ``error: ...``: the whole stderr, not only lines starting so."""
    assert code == 1, err
    assert err.endswith("\n") and err.count("\n") == 1 and err.startswith("error: "), repr(err[-2000:])
    assert contains in err, err


def _link_tree(src: Path, dest: Path) -> Path:
    """A copy whose unchanged files are hard links (fast); edits must replace files, never write into them."""
    return Path(shutil.copytree(src, dest, copy_function=os.link))


def _replace(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    path.write_bytes(data)


@pytest.fixture
def data(synth_data: Path, tmp_path: Path) -> Path:
    return _link_tree(synth_data, tmp_path / "data")


# ---- the cases of the issue, one by one ---------------------------------------------------------------------------

def _set_index(root: Path, row: int, value: str) -> None:
    for name in (X_NAME, Y_NAME):
        lines = (root / name).read_text().splitlines()
        lines[row + 1] = value + lines[row + 1][lines[row + 1].index(","):]
        _replace(root / name, ("\n".join(lines) + "\n").encode())


def _set_cell(root: Path, column: str, row: int, value: str) -> None:
    x = pd.read_csv(root / X_NAME, index_col=0, dtype=str, keep_default_na=False)
    x.iloc[row, x.columns.get_loc(column)] = value
    (root / X_NAME).unlink()
    x.to_csv(root / X_NAME)


@pytest.mark.parametrize(("edit", "options", "message"), [
    (lambda d: _set_index(d, 2, "abc"), [], "bad index: 'abc' is not an integer"),
    (lambda d: _set_index(d, 2, ""), [], "bad index: '' is not an integer"),
    (lambda d: _set_cell(d, "productid", 3, "1e20"), ["--on-missing-image", "text-only"], "bad productid: '1e20'"),
    (lambda d: _set_cell(d, "imageid", 3, "abc"), [], "bad imageid: 'abc'"),
    (lambda d: _replace(d / X_NAME, b"\xff\xfe\x00garbage"), [], "not a readable UTF-8 CSV"),
    (lambda d: _replace(d / Y_NAME, (d / Y_NAME).read_bytes().replace(b",", b";")), [], "lacks required columns"),
])
def test_bad_csvs_are_one_error_line_and_train_writes_nothing(data, tmp_path, capsys, edit, options, message):
    edit(data)
    assert_one_error_line(*run(capsys, "data", "validate", data, *options)[::2], message)
    out = tmp_path / "bundle"
    code, stdout, err = run(capsys, "train", data, "--out", out, "--in-process", "--no-tracking", *options)
    assert_one_error_line(code, err, message)
    assert not out.exists()


@pytest.mark.parametrize("value", ["abc", "1e3"])
def test_bad_imageids_with_drop_are_dropped_rows(data, capsys, value):
    _set_cell(data, "imageid", 3, value)
    code, out, err = run(capsys, "data", "validate", data, "--on-bad-rows", "drop")
    assert (code, err) == (0, "") and "dropped 1 rows" in out and out.rstrip().endswith("ok")


def _bundle_edits() -> dict[str, Any]:
    def config(change):
        def edit(root: Path) -> None:
            obj = json.loads((root / "config.json").read_text())
            new = change(obj)
            _replace(root / "config.json", json.dumps(obj if new is None else new).encode())
            rehash(root)
        return edit

    def manifest_files_list(root: Path) -> None:
        manifest = json.loads((root / "manifest.json").read_text())
        _replace(root / "manifest.json", json.dumps({**manifest, "files": list(manifest["files"])}).encode())

    def tensor(root: Path) -> None:
        state = torch.load(root / "image_head.pt", weights_only=True)
        state["net.5.weight"] = torch.zeros(26, 256)
        (root / "image_head.pt").unlink()
        torch.save(state, root / "image_head.pt")
        rehash(root)

    def vocab_link(root: Path) -> None:
        (root / "vocab.json").unlink()
        (root / "vocab.json").symlink_to("image_head.pt")
        rehash(root)

    def smaller_labels(c: dict[str, Any]) -> None:
        c["labels"] = {"codes": c["labels"]["codes"][:-1], "names": c["labels"]["names"][:-1]}

    return {
        "manifest files is a list": (manifest_files_list, "is not of type 'object'"),
        "config without image": (config(lambda c: c.pop("image") and None), "'image' is a required property"),
        "config is a list": (config(lambda c: []), "is not of type 'object'"),
        "label map of the wrong size": (config(smaller_labels), "label map 26"),
        "tensor of the wrong size": (tensor, "tensor net.5.weight is torch.float32 [26, 256]"),
        "vocab.json links to a non-JSON file": (vocab_link, "vocab.json is unreadable"),
        "vocab replaced by an object": (
            lambda r: (_replace(r / "vocab.json", b'{"a": 1}'), rehash(r)), "must be a JSON list"),
        "unknown member": (config(lambda c: c["ensemble"]["members"].append("audio")), "ensemble.members[2]"),
        "weights -5 and 6": (config(lambda c: c["ensemble"]["weights"].update(text=-5, image=6)),
                             "ensemble.weights"),
    }


@pytest.mark.parametrize("case", list(_bundle_edits()))
def test_bad_bundles_are_one_error_line_and_predict_writes_nothing(tiny_bundle, synth_data, tmp_path, capsys, case):
    edit, message = _bundle_edits()[case]
    bundle = _link_tree(tiny_bundle, tmp_path / "bundle")
    edit(bundle)
    out = tmp_path / "predictions.csv"
    code, stdout, err = run(capsys, "predict", bundle, synth_data, "--out", out)
    assert_one_error_line(code, err, message)
    assert stdout == "" and not out.exists()


def test_object_array_npz_is_one_error_line(tfidf_bundle, synth_data, tmp_path, capsys):
    bundle = _link_tree(tfidf_bundle, tmp_path / "bundle")
    with np.load(bundle / "tfidf.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["terms"] = np.array([{"a": 1}, None], dtype=object)
    (bundle / "tfidf.npz").unlink()
    np.savez(bundle / "tfidf.npz", **arrays)
    rehash(bundle)
    code, _, err = run(capsys, "evaluate", bundle, synth_data)
    assert_one_error_line(code, err, "is not a plain-array .npz")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["data", "bundle"])
def test_through_a_real_process(tiny_bundle, data, tmp_path, kind):
    if kind == "data":
        _set_index(data, 2, "abc")
        argv = ["data", "validate", str(data)]
    else:
        bundle = _link_tree(tiny_bundle, tmp_path / "bundle")
        _bundle_edits()["tensor of the wrong size"][0](bundle)
        argv = ["predict", str(bundle), str(data), "--out", str(tmp_path / "p.csv")]
    proc = subprocess.run([sys.executable, "-m", "rakuten_cli", *argv], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).parents[2])
    assert_one_error_line(proc.returncode, proc.stderr)
    assert proc.stdout == "" and not (tmp_path / "p.csv").exists()


# ---- property: malformed CSVs --------------------------------------------------------------------------------------

NASTY = ["", " ", "abc", "1e3", "1e20", "-1", "1.5", "nan", "NaN", "inf", "None", "0x10", " 7 ", "٣", "１２",
         "9" * 30, "\x00", '"', "'", ",", ";", "\n", "é", "\ufeff", "10", "2905", "99999"]
cells = st.one_of(st.sampled_from(NASTY), st.text(max_size=12), st.integers(-10**20, 10**20).map(str),
                  st.floats(allow_nan=True, allow_infinity=True).map(repr))


@st.composite
def csv_pair(draw: Any, fatal: bool) -> dict[str, Any]:
    """Edits to the challenge CSVs: cell values, index values, columns, rows, separator, encoding, truncation."""
    edits: list[tuple[Any, ...]] = draw(st.lists(st.one_of(
        st.tuples(st.just("cell"), st.sampled_from([X_NAME, Y_NAME]), st.integers(0, 300), st.integers(0, 5), cells),
        st.tuples(st.just("index"), st.sampled_from(["both", X_NAME]), st.integers(0, 300), cells),
        st.tuples(st.just("duplicate row"), st.sampled_from([X_NAME, Y_NAME]), st.integers(0, 300)),
        st.tuples(st.just("extra column"), st.sampled_from([X_NAME, Y_NAME]), cells),
        st.tuples(st.just("shuffle columns"), st.sampled_from([X_NAME, Y_NAME]), st.randoms()),
    ), max_size=5))
    rows = draw(st.one_of(st.none(), st.integers(1, 40)))  # all rows, or the first few
    fatals = ["drop column", "rename column", "separator", "utf-16", "misaligned", "truncate", "no rows",
              "binary", "latin-1"]
    file_edit = draw(st.sampled_from(fatals) if fatal else st.one_of(st.none(), st.sampled_from(fatals)))
    return {"edits": edits, "rows": rows, "file_edit": file_edit, "target": draw(st.sampled_from([X_NAME, Y_NAME])),
            "seed": draw(st.integers(0, 10**6)),
            "options": draw(st.sampled_from([[], ["--on-bad-rows", "drop"], ["--on-missing-image", "text-only"],
                                             ["--on-bad-rows", "drop", "--on-missing-image", "text-only"]]))}


def _read_rows(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))


def _write(root: Path, spec: dict[str, Any], base: Path) -> None:
    tables = {name: _read_rows(base / name) for name in (X_NAME, Y_NAME)}
    if spec["rows"] is not None:
        tables = {k: v[: spec["rows"] + 1] for k, v in tables.items()}
    for edit in spec["edits"]:
        kind, name = edit[0], edit[1]
        table = tables[X_NAME] if name == "both" else tables[name]
        body = len(table) - 1
        if kind == "cell" and body:
            row = table[1 + edit[2] % body]
            row[edit[3] % len(row)] = edit[4]
        elif kind == "index" and body:
            for t in ([tables[X_NAME], tables[Y_NAME]] if name == "both" else [table]):
                if len(t) > 1:
                    t[1 + edit[2] % (len(t) - 1)][0] = edit[3]
        elif kind == "duplicate row" and body:
            table.append(list(table[1 + edit[2] % body]))
        elif kind == "extra column":
            for i, row in enumerate(table):
                row.append("extra" if i == 0 else edit[2])
        elif kind == "shuffle columns":
            order = list(range(len(table[0])))
            edit[2].shuffle(order)
            for i, row in enumerate(table):
                table[i] = [row[j] if j < len(row) else "" for j in order]
    sep, encoding = ",", "utf-8"
    target, edit = tables[spec["target"]], spec["file_edit"]
    if edit == "drop column":
        column = 1 + spec["seed"] % (len(target[0]) - 1)
        for row in target:
            del row[column:column + 1]
    elif edit == "rename column":
        target[0][1 + spec["seed"] % (len(target[0]) - 1)] = "renamed"
    elif edit == "misaligned" and len(target) > 1:
        target[1][0] = "x" + target[1][0]
    elif edit == "no rows":
        del target[1:]
    for name, table in tables.items():
        buffer = io.StringIO(newline="")
        this_sep = {"separator": ";", "utf-16": ","}.get(edit, ",") if name == spec["target"] else sep
        csv.writer(buffer, delimiter=this_sep, lineterminator="\n").writerows(table)
        text = buffer.getvalue()
        this_encoding = {"utf-16": "utf-16", "latin-1": "latin-1"}.get(edit, encoding) \
            if name == spec["target"] else encoding
        data = text.encode(this_encoding, errors="replace")
        if name == spec["target"] and edit == "latin-1":
            data = data + "é,é\n".encode("latin-1")
        if name == spec["target"] and edit == "truncate":
            data = data[: spec["seed"] % max(1, len(data) // 2)]
        if name == spec["target"] and edit == "binary":
            data = bytes(np.random.default_rng(spec["seed"]).integers(0, 256, 300, dtype=np.uint8))
        (root / name).write_bytes(data)


@pytest.fixture(scope="module")
def images_only(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic data without its CSVs, to be hard-linked into each example's fresh directory."""
    root = tmp_path_factory.mktemp("fuzz-base") / "data"
    _link_tree(synth_data, root)
    for name in (X_NAME, Y_NAME, "X_test_update.csv"):
        (root / name).unlink()
    return root


@contextlib.contextmanager
def _example_dir(images_only: Path) -> Iterator[Path]:
    """A fresh directory per example (hypothesis runs many examples in one test call)."""
    with tempfile.TemporaryDirectory(prefix="rakuten-fuzz-") as tmp:
        yield _link_tree(images_only, Path(tmp) / "data")


@FUZZ
@given(spec=csv_pair(fatal=False))
def test_any_csv_is_ok_or_one_error_line(synth_data, images_only, capsys, spec):
    with _example_dir(images_only) as root:
        _write(root, spec, synth_data)
        code, out, err = run(capsys, "data", "validate", root, *spec["options"])
        event(f"exit {code}")
        if code == 0:
            assert err == "" and out.rstrip().endswith("ok")
        else:
            assert_one_error_line(code, err)


@FUZZ
@given(spec=csv_pair(fatal=True))
def test_malformed_csvs_fail_with_one_error_line_and_train_writes_nothing(synth_data, images_only, capsys, spec):
    with _example_dir(images_only) as root:
        _write(root, spec, synth_data)
        out = root.parent / "bundle"
        code, stdout, err = run(capsys, "train", root, "--out", out, "--in-process", "--no-tracking",
                                *spec["options"])
        assert_one_error_line(code, err)
        assert not out.exists()


# ---- property: malformed bundles -----------------------------------------------------------------------------------

REQUIRED = {  # config.json paths every bundle needs, with the JSON type of their value
    ("labels",): dict, ("labels", "codes"): list, ("labels", "names"): list, ("ensemble",): dict,
    ("ensemble", "members"): list, ("ensemble", "weights"): dict, ("image",): dict, ("image", "preset"): dict,
    ("image", "preset", "size"): int, ("image", "preset", "mean"): list, ("image", "preset", "std"): list,
    ("cleaning",): dict, ("cleaning", "max_tokens"): int, ("cleaning", "lowercase"): bool, ("text",): dict,
    ("text", "model"): dict, ("text", "model", "vocab_size"): int, ("text", "model", "num_classes"): int,
    ("format",): int,
}
VALUES = [None, "x", "", [], [1, "a"], {}, {"a": 1}, True, False, -1, 0, 1.5, -2.5, 10**12]


def _json_type(value: Any) -> type:
    return bool if isinstance(value, bool) else type(value)


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


bundle_edits = st.sampled_from([  # a kind first, uniformly (one_of would favour its first branches)
    st.tuples(st.just("config delete"), st.sampled_from(sorted(REQUIRED))),
    st.tuples(st.just("config retype"), st.sampled_from(sorted(REQUIRED)), st.sampled_from(VALUES)),
    st.tuples(st.just("weights"), st.lists(st.floats(-10, 10), min_size=2, max_size=3)),
    st.tuples(st.just("member"), st.text(min_size=1, max_size=8).filter(lambda s: s not in ("text", "image",
                                                                                            "tfidf"))),
    st.tuples(st.just("labels"), st.integers(1, 26)),
    st.tuples(st.just("vocab size"), st.integers(-50, 50).filter(bool)),
    st.tuples(st.just("vocab"), st.sampled_from([{}, "tokens", [1, 2], None, 3, ["a", "a"]])),
    st.tuples(st.just("vocab drop"), st.integers(1, 30)),
    st.tuples(st.just("tensor"), st.sampled_from(["reshape", "delete", "add", "nan", "bytes", "non-tensor"]),
              st.integers(0, 10**6)),
    st.tuples(st.just("npz"), st.sampled_from(["object", "delete", "reshape", "dtype", "bytes"]),
              st.integers(0, 10**6)),
    st.tuples(st.just("manifest"), st.sampled_from(["list", "null", "files list", "no files", "format", "escape",
                                                    "subdir name", "bytes"])),
    st.tuples(st.just("entry"), st.sampled_from(["subdir", "extra file", "link out", "fifo"])),
]).flatmap(lambda kind: kind)


def _edit_bundle(root: Path, edit: tuple[Any, ...], outside: Path) -> None:
    kind = edit[0]
    members = json.loads((root / "config.json").read_text())["ensemble"]["members"]

    def config(change: Any) -> None:
        obj = json.loads((root / "config.json").read_text())
        change(obj)
        _replace(root / "config.json", json.dumps(obj).encode())

    if kind == "config delete":
        config(lambda c: _get(c, edit[1][:-1]).pop(edit[1][-1]))
    elif kind == "config retype":
        value = edit[2] if _json_type(edit[2]) is not REQUIRED[edit[1]] else None
        config(lambda c: _get(c, edit[1][:-1]).__setitem__(edit[1][-1], value))
    elif kind == "weights":
        values = (edit[1] + [0.0] * len(members))[: len(members)]
        if all(0 <= v <= 1 for v in values) and abs(sum(values) - 1) < 1e-3:
            values[0] += 0.5  # keep it off the simplex
        config(lambda c: c["ensemble"].__setitem__("weights", dict(zip(members, values, strict=True))))
    elif kind == "member":
        config(lambda c: (c["ensemble"]["members"].append(edit[1]), c["ensemble"]["weights"].__setitem__(edit[1], 0)))
    elif kind == "labels":
        config(lambda c: c.__setitem__("labels", {k: v[: 27 - edit[1]] for k, v in c["labels"].items()}))
    elif kind == "vocab size":
        config(lambda c: c["text"]["model"].__setitem__("vocab_size", c["text"]["model"]["vocab_size"] + edit[1]))
    elif kind == "vocab":
        _replace(root / "vocab.json", json.dumps(edit[1]).encode())
    elif kind == "vocab drop":
        vocab = json.loads((root / "vocab.json").read_text())
        _replace(root / "vocab.json", json.dumps(vocab[: max(0, len(vocab) - edit[1])]).encode())
    elif kind == "tensor":
        name = "image_head.pt" if (root / "image_head.pt").exists() else "text_model.pt"
        state = torch.load(root / name, weights_only=True)
        key = sorted(state)[edit[2] % len(state)]
        action = edit[1]
        if action == "reshape":
            state[key] = torch.zeros(*state[key].shape, 2)
        elif action == "delete":
            del state[key]
        elif action == "add":
            state["extra.weight"] = torch.zeros(1)
        elif action == "nan":
            key = next(k for k in sorted(state) if state[k].is_floating_point())
            state[key] = torch.full_like(state[key], float("nan"))
        elif action == "non-tensor":
            state[key] = 1  # type: ignore[assignment]
        (root / name).unlink()
        if action == "bytes":
            (root / name).write_bytes(np.random.default_rng(edit[2]).bytes(100))
        else:
            torch.save(state, root / name)
    elif kind == "npz":
        if not (root / "tfidf.npz").exists():
            return _edit_bundle(root, ("tensor", "reshape", edit[2]), outside)
        with np.load(root / "tfidf.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        key = sorted(arrays)[edit[2] % len(arrays)]
        action = edit[1]
        if action == "object":
            arrays[key] = np.array([{"a": 1}, None], dtype=object)
        elif action == "delete":
            del arrays[key]
        elif action == "reshape":
            arrays[key] = np.zeros((*arrays[key].shape, 2), dtype=arrays[key].dtype)
        elif action == "dtype":
            arrays[key] = arrays[key].astype(str) if arrays[key].dtype.kind != "U" else np.zeros(arrays[key].shape)
        (root / "tfidf.npz").unlink()
        if action == "bytes":
            (root / "tfidf.npz").write_bytes(np.random.default_rng(edit[2]).bytes(100))
        else:
            np.savez(root / "tfidf.npz", **arrays)  # type: ignore[arg-type]
    elif kind == "entry":
        action = edit[1]
        if action == "subdir":
            (root / "sub").mkdir()
        elif action == "extra file":
            (root / "run.py").write_text("print('hi')")
        elif action == "link out":
            (root / "vocab.json").unlink()
            (root / "vocab.json").symlink_to(outside)
        elif action == "fifo":
            os.mkfifo(root / "queue")
    if kind != "manifest":
        if kind != "entry":
            rehash(root)
        elif edit[1] == "link out":
            rehash(root)  # the manifest even agrees with the outside file's bytes
        return
    manifest = json.loads((root / "manifest.json").read_text())
    action = edit[1]
    new: Any = {
        "list": [manifest], "null": None, "files list": {**manifest, "files": list(manifest["files"])},
        "no files": {"format": 1}, "format": {**manifest, "format": 2},
        "escape": {**manifest, "files": {**manifest["files"], "../../etc/passwd": "0" * 64}},
        "subdir name": {**manifest, "files": {**manifest["files"], "sub/x.json": "0" * 64}},
    }.get(action)
    _replace(root / "manifest.json", b"\x00{not json" if action == "bytes" else json.dumps(new).encode())


@pytest.fixture(scope="module")
def outside_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("outside") / "vocab.json"
    path.write_text("[]")
    return path


@FUZZ
@given(edits=st.lists(bundle_edits, min_size=1, max_size=3), which=st.sampled_from(["tiny", "tfidf"]))
def test_malformed_bundles_fail_with_one_error_line_and_predict_writes_nothing(
        tiny_bundle, tfidf_bundle, synth_data, outside_file, capsys, edits, which):
    with tempfile.TemporaryDirectory(prefix="rakuten-fuzz-") as tmp:
        bundle = _link_tree(tiny_bundle if which == "tiny" else tfidf_bundle, Path(tmp) / "bundle")
        for edit in edits:
            try:
                _edit_bundle(bundle, edit, outside_file)
            except (KeyError, TypeError, AttributeError, IndexError, json.JSONDecodeError, UnicodeDecodeError,
                    RuntimeError, ValueError, OSError, EOFError):
                continue  # an earlier edit already removed what this one edits: the bundle is broken anyway
        event(edits[0][0])
        out = Path(tmp) / "predictions.csv"
        code, stdout, err = run(capsys, "predict", bundle, synth_data, "--out", out)
        assert_one_error_line(code, err)
        assert stdout == "" and not out.exists()
