"""The model bundle's layout: file names, the config it carries, and its writer and reader.

One directory (local or s3://) holding everything a prediction needs, and nothing executable:
``config.json`` (label map, cleaning, text model config, image preset, ensemble weights, data version,
versions), ``vocab.json``, the members' files (``text_model.pt``, ``image_backbone.pt`` + ``image_head.pt``,
``tfidf.npz``, ``chartfidf.npz``: see :mod:`rakuten_mm.members`), ``splits.json``, ``metrics.json`` and
``manifest.json`` (sha256 of every other file). Tensors are plain ``state_dict``s loaded with
``torch.load(weights_only=True)``; the manifest is written last and verified first. The runtime model built from
a bundle is :mod:`rakuten_mm.model`'s.

Publishing (:func:`write_bundle` → :func:`rakuten_mm.storage.publish_dir`) never breaks the bundle already at
the URI: locally a staged directory is renamed into place; on S3 each publish is an immutable
``<uri>/versions/<id>/`` copy that one PUT of ``<uri>/current.json`` makes current, so an interrupted publish leaves
the previous bundle loadable and a finished one is exactly the new bundle's files. Published files are readable by
other users (0644/0755 under umask 022).

Loading (:func:`verify`, which :func:`rakuten_mm.model.load_bundle` calls first) trusts nothing: the manifest names
plain files only (no path leaves the directory), the directory holds exactly those files (no sub-directory; a
symlink only when it resolves to a file inside the bundle), every checksum matches, ``config.json`` passes a JSON
Schema (:func:`config_schema`, checked with ``jsonschema``), members are known (:data:`rakuten_mm.members.REGISTRY`),
weights lie on the simplex, and vocabulary, label map and every tensor's shape agree with the config. Every
failure is one :class:`BundleError` naming the file and what was expected.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rakuten_mm import __version__, storage
from rakuten_mm.digest import sha256
from rakuten_mm.errors import BundleError, StorageError
from rakuten_mm.members import CHARTFIDF as CHARTFIDF_MEMBER
from rakuten_mm.members import IMAGE as IMAGE_MEMBER
from rakuten_mm.members import REGISTRY
from rakuten_mm.members import TEXT as TEXT_MEMBER
from rakuten_mm.members import TFIDF as TFIDF_MEMBER

if TYPE_CHECKING:  # torch is imported where tensors are read: naming the layout must stay cheap
    import torch

    from rakuten_mm.text import Vocabulary

FORMAT_VERSION = 1
# Every file name of the layout, defined once.
MANIFEST = "manifest.json"
CONFIG = "config.json"
VOCAB = "vocab.json"
METRICS = "metrics.json"
SPLITS = "splits.json"
# The members' files are named in their registry entries (rakuten_mm.members), once.
(TEXT_MODEL,) = REGISTRY[TEXT_MEMBER].files
IMAGE_BACKBONE, IMAGE_HEAD = REGISTRY[IMAGE_MEMBER].files
(TFIDF,) = REGISTRY[TFIDF_MEMBER].files
(CHARTFIDF,) = REGISTRY[CHARTFIDF_MEMBER].files


def versions() -> dict[str, str]:
    import torch
    import torchvision

    return {"rakuten_mm": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__}


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_bundle(out: str | Path, files: dict[str, Path], config: dict[str, Any], vocab: Vocabulary,
                 metrics: dict[str, Any], splits: dict[str, list[Any]]) -> str:
    """Assemble and publish a bundle. ``files`` maps bundle names (``text_model.pt``...) to finished files.

    The directory is built in a temporary place, the manifest written last, then published in one step
    (rename locally; a new ``versions/<id>/`` then the pointer on s3), so a crash never leaves a bundle that
    verifies half-written, nor breaks the one already at ``out``.
    """
    with tempfile.TemporaryDirectory(prefix="rakuten-bundle-") as tmp:
        staging = Path(tmp)
        for name, src in files.items():
            shutil.copyfile(src, staging / name)
        write_json(staging / CONFIG, {**config, "format": FORMAT_VERSION, "versions": versions()})
        write_json(staging / VOCAB, vocab.to_json())
        write_json(staging / METRICS, metrics)
        write_json(staging / SPLITS, splits)
        manifest = {"format": FORMAT_VERSION, "files": {p.name: sha256(p) for p in sorted(staging.iterdir())}}
        write_json(staging / MANIFEST, manifest)
        return storage.publish_dir(staging, out, last=MANIFEST)


# ---- verification: the manifest, the directory, then the meaning of every file -------------------------------------

# Where a name lands: a bundle is one flat directory, so a manifest entry is a plain file name.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = "^[0-9a-f]{64}$"
MANIFEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["format", "files"],
    "properties": {
        "format": {"type": "integer"},
        "files": {"type": "object", "additionalProperties": {"type": "string", "pattern": _SHA256}},
    },
}
_NUMBER3 = {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}
# config.json, as :func:`rakuten_mm.training.fit_ensemble` writes it. Objects read with ``cls(**obj)`` allow no
# extra keys; the member names come from the registry (``{members}`` is filled in by :func:`config_schema`).
_CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["format", "labels", "ensemble", "image", "cleaning"],
    "properties": {
        "format": {"const": FORMAT_VERSION},
        "labels": {
            "type": "object", "required": ["codes", "names"],
            "properties": {
                "codes": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "uniqueItems": True},
                "names": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            },
        },
        "ensemble": {
            "type": "object", "required": ["members", "weights"],
            "properties": {
                "members": {"type": "array", "items": {"enum": "{members}"}, "minItems": 1, "uniqueItems": True},
                "weights": {"type": "object", "propertyNames": {"enum": "{members}"},
                            "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1}},
            },
        },
        "image": {
            "type": "object", "required": ["preset"],
            "properties": {
                "preset": {
                    "type": "object", "required": ["size", "mean", "std"],
                    "properties": {
                        "size": {"type": "integer", "minimum": 1},  # its range: ImagePreset's own check
                        "mean": {**_NUMBER3, "items": {"type": "number", "minimum": 0, "maximum": 1}},
                        "std": {**_NUMBER3, "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 10}},
                    },
                },
                "backbone": {"type": "string"},
                "weights_source": {"type": "string"},
                "head": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"in_features": {"type": "integer", "minimum": 1, "maximum": 65536},
                                   "hidden": {"type": "integer", "minimum": 1, "maximum": 65536},
                                   "dropout": {"type": "number", "minimum": 0, "maximum": 1}},
                },
            },
        },
        "text": {
            "type": "object", "required": ["model"],
            "properties": {
                "model": {
                    "type": "object", "additionalProperties": False,
                    "required": ["vocab_size", "num_classes"],
                    "properties": {
                        "vocab_size": {"type": "integer", "minimum": 2, "maximum": 10_000_000},
                        "num_classes": {"type": "integer", "minimum": 2},
                        "embed_dim": {"type": "integer", "minimum": 1, "maximum": 65536},
                        "hidden_dim": {"type": "integer", "minimum": 1, "maximum": 65536},
                        "bidirectional": {"type": "boolean"},
                        "dropout": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                },
            },
        },
        "cleaning": {
            "type": "object", "additionalProperties": False,
            "required": ["lowercase", "strip_html", "max_tokens"],
            "properties": {"lowercase": {"type": "boolean"}, "strip_html": {"type": "boolean"},
                           "max_tokens": {"type": "integer", "minimum": 1, "maximum": 100_000}},
        },
        "data_version": {"type": "string"},
        "versions": {"type": "object", "additionalProperties": {"type": "string"}},
        "train_config": {"type": "object"},
    },
}


def config_schema() -> dict[str, Any]:
    """The JSON Schema of ``config.json`` with the member names of :data:`rakuten_mm.members.REGISTRY`."""
    from rakuten_mm.members import REGISTRY

    text = json.dumps(_CONFIG_SCHEMA).replace('"{members}"', json.dumps(sorted(REGISTRY)))
    schema: dict[str, Any] = json.loads(text)
    return schema


def _schema_check(obj: Any, schema: dict[str, Any], where: str) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    error = best_match(Draft202012Validator(schema).iter_errors(obj))
    if error is not None:
        at = error.json_path.replace("$", "", 1).lstrip(".") or "the top level"
        raise BundleError(f"{where} does not match the bundle schema at {at}: {error.message[:300]}")


def _strict_json(path: Path, what: str) -> Any:
    """JSON from ``path``; NaN/Infinity (not JSON) and undecodable bytes are a :class:`BundleError`."""
    def no_constants(name: str) -> None:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(path.read_bytes().decode("utf-8"), parse_constant=no_constants)
    except (OSError, ValueError) as exc:  # ValueError covers JSONDecodeError and UnicodeDecodeError
        raise BundleError(f"{what} is unreadable: {str(exc)[:200]}") from None


def _entry(root: Path, entry: Path) -> Path:
    """A directory entry of the bundle that may be read: a regular file, or a link to one inside the bundle."""
    if entry.is_symlink():
        try:
            target = storage.inside(root, entry)
        except StorageError:
            raise BundleError(f"bundle {root} holds {entry.name}, a symlink to {os.readlink(entry)!r} outside the "
                              "bundle; links are followed only inside the bundle directory") from None
        if not storage.is_regular_file(target):
            raise BundleError(f"bundle {root} holds {entry.name}, a symlink to {target}, which is not a regular file")
        return target
    if entry.is_dir():
        raise BundleError(f"bundle {root} holds a sub-directory {entry.name}/; a bundle is one flat directory of "
                          "the files its manifest lists")
    if not storage.is_regular_file(entry):
        raise BundleError(f"bundle {root} holds {entry.name}, which is not a regular file")
    return entry


def _read_manifest(root: Path) -> dict[str, str]:
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root} is not a model bundle: not a directory")
    if not manifest_path.exists() and not manifest_path.is_symlink():
        raise BundleError(f"{root} is not a model bundle: {MANIFEST} is missing (incomplete or not a bundle)")
    manifest = _strict_json(_entry(root, manifest_path), str(manifest_path))
    version = manifest.get("format") if isinstance(manifest, dict) else None
    if isinstance(manifest, dict) and "format" in manifest and version != FORMAT_VERSION:
        raise BundleError(f"bundle format {version!r} is not supported; this version reads format {FORMAT_VERSION}")
    _schema_check(manifest, MANIFEST_SCHEMA, str(manifest_path))
    listed: dict[str, str] = manifest["files"]
    for name in listed:
        if not _PLAIN_NAME.fullmatch(name) or name == MANIFEST:
            raise BundleError(f"{manifest_path} lists {name!r}, which is not a plain file name of the bundle: paths "
                              "that leave the bundle directory or enter a sub-directory are refused")
    return listed


def verify(root: Path) -> dict[str, Any]:
    """Check a bundle directory and return its ``config.json``; :class:`BundleError` on anything wrong.

    In order: the manifest (its schema; plain file names only), the directory (exactly the listed files, regular
    files or links to files inside the bundle, no sub-directories), every checksum, then the meaning of the files
    (:func:`check_contents`): ``config.json`` against :func:`config_schema`, known members with their files, ensemble
    weights on the simplex, vocabulary and label map sizes against the models, every tensor's name, shape and dtype
    against the modules the config describes, ``tfidf.npz``'s and ``chartfidf.npz``'s arrays. What passes loads
    without surprises.
    """
    return _readable(Path(root), contents=True)


def verify_files(root: Path) -> dict[str, Any]:
    """:func:`verify` without the files' meaning: the manifest, the directory and every checksum; return the
    parsed ``config.json``. For steps that hand a bundle on without loading it (the checks of
    :func:`check_contents` import torch and scikit-learn); whatever loads it later runs :func:`verify`."""
    return _readable(Path(root), contents=False)


def verify_unchanged(root: Path, manifest_sha256: str) -> dict[str, Any]:
    """Check that ``root`` is, file for file, the bundle :func:`verify` passed when its manifest's sha256 was
    ``manifest_sha256`` (then :func:`verify_files`), and return its ``config.json``. For a later step of the same
    run (register after evaluate), which need not check the files' meaning again."""
    return _readable(Path(root), contents=False, manifest_sha256=manifest_sha256)


def _readable(root: Path, contents: bool, manifest_sha256: str | None = None) -> dict[str, Any]:
    """:func:`_verify`, after the manifest's digest when one is given; unreadable files are a :class:`BundleError`."""
    try:
        if manifest_sha256 is not None and (actual := sha256(root / MANIFEST)) != manifest_sha256:
            raise BundleError(f"bundle {root} changed after it was verified: its {MANIFEST} has sha256 {actual}, "
                              f"the verified one had {manifest_sha256}")
        return _verify(root, contents)
    except OSError as exc:  # unreadable directory or file (permissions, I/O): the bundle cannot be used
        raise BundleError(f"cannot read bundle {root}: {exc}") from None


def _verify(root: Path, contents: bool) -> dict[str, Any]:
    if (root / storage.POINTER).is_file():
        raise BundleError(f"{root} holds a publish pointer ({storage.POINTER}), not a bundle: load it through "
                          "rakuten_mm.storage.local_copy, which follows the pointer")
    listed = _read_manifest(root)
    present: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        if entry.name != MANIFEST:
            present[entry.name] = _entry(root, entry)
    if missing := sorted(set(listed) - set(present)):
        raise BundleError(f"bundle {root} is incomplete: missing {missing}")
    if extra := sorted(set(present) - set(listed)):
        raise BundleError(f"bundle {root} holds files not in its manifest: {extra}")
    for name, digest in listed.items():
        if sha256(present[name]) != digest:
            raise BundleError(f"bundle {root} was modified: checksum of {name} does not match the manifest")
    config = _strict_json(root / CONFIG, f"{root / CONFIG}")
    if contents:
        check_contents(root, config, set(listed))
    result: dict[str, Any] = config
    return result


def check_config(config: Any, where: str = CONFIG) -> None:
    """``config.json`` alone: the schema, members and their requirements, weights on the simplex, label map."""
    from rakuten_mm.ensemble import check_weights
    from rakuten_mm.errors import ConfigError
    from rakuten_mm.image import ImagePreset
    from rakuten_mm.labels import LabelMap
    from rakuten_mm.members import IMAGE, REGISTRY, TEXT

    _schema_check(config, config_schema(), where)
    names: list[str] = config["ensemble"]["members"]
    for name in names:
        if missing := [r for r in REGISTRY[name].requires if r not in names]:
            raise BundleError(f"{where}: member {name} needs {', '.join(missing)}, which the bundle does not hold")
    try:
        check_weights(config["ensemble"]["weights"], names)
        labels = LabelMap.from_json(config["labels"])
        ImagePreset.from_json(config["image"]["preset"])
    except ConfigError as exc:
        raise BundleError(f"{where}: {exc}") from None
    if TEXT in names:
        if "text" not in config:
            raise BundleError(f"{where}: member text needs text.model (the LSTM's configuration)")
        if config["text"]["model"]["num_classes"] != len(labels):
            raise BundleError(f"{where}: the text model has {config['text']['model']['num_classes']} classes but "
                              f"the label map {len(labels)}")
    if IMAGE in names:
        from rakuten_mm.backbones import BACKBONES

        if (backbone := config["image"].get("backbone")) not in BACKBONES:
            raise BundleError(f"{where}: image backbone {backbone!r} is not supported; allowed: {sorted(BACKBONES)}")


def check_contents(root: Path, config: Any, names: set[str]) -> None:
    """The files' meaning, given the bundle's file ``names`` (all of them already checksummed)."""
    from rakuten_mm.labels import LabelMap
    from rakuten_mm.members import REGISTRY, TEXT
    from rakuten_mm.members import TFIDF as TFIDF_MEMBER
    from rakuten_mm.text import Vocabulary

    where = str(root / CONFIG)
    check_config(config, where)
    members: list[str] = config["ensemble"]["members"]
    expected = {CONFIG, VOCAB, METRICS, SPLITS} | {f for m in members for f in REGISTRY[m].files}
    if unknown := sorted(names - expected):
        raise BundleError(f"bundle {root} holds {unknown}, no part of a bundle with members {members} "
                          f"(expected {sorted(expected)})")
    if missing := sorted(expected - names):
        raise BundleError(f"bundle {root} is incomplete: members {members} need {missing}")
    vocab = _strict_json(root / VOCAB, str(root / VOCAB))
    if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
        raise BundleError(f"{root / VOCAB} must be a JSON list of token strings, got {type(vocab).__name__}")
    if len(set(vocab)) != len(vocab):
        raise BundleError(f"{root / VOCAB} repeats tokens: each token needs one id")
    labels = LabelMap.from_json(config["labels"])
    if TEXT in members and (size := config["text"]["model"]["vocab_size"]) != len(Vocabulary.from_json(vocab)):
        raise BundleError(f"{root / VOCAB} holds {len(vocab)} tokens (+2 reserved ids) but the text model embeds "
                          f"{size} ids: vocabulary and model do not belong together")
    for name, kind in ((METRICS, dict), (SPLITS, dict)):
        if not isinstance(read_json(root, name), kind):
            raise BundleError(f"{root / name} must hold a JSON object")
    modules = _modules(config, len(labels), names)
    for name in sorted(names & {TEXT_MODEL, IMAGE_BACKBONE, IMAGE_HEAD}):
        _check_state(root, name, load_state(root, name), modules.get(name))
    if TFIDF_MEMBER in members:
        _check_tfidf(root / TFIDF, len(labels))
    if CHARTFIDF_MEMBER in members:
        from rakuten_mm.chartfidf import CharTfidfMember

        try:
            CharTfidfMember.check(root / CHARTFIDF, len(labels))
        except ValueError as exc:
            raise BundleError(f"{root / CHARTFIDF}: {exc}") from None


def _modules(config: dict[str, Any], num_classes: int, names: set[str]) -> dict[str, Any]:
    """Bundle file → the module its ``state_dict`` must fit, built on the meta device (shapes only, no memory).

    A new backbone must describe its stored state here before bundles may name it."""
    import torch

    from rakuten_mm.backbones import BACKBONES
    from rakuten_mm.text import TextClassifier, TextModelConfig
    from rakuten_mm.vgg import ImageHead

    builders: dict[str, Callable[[], Any]] = {
        TEXT_MODEL: lambda: TextClassifier(TextModelConfig.from_json(config["text"]["model"])),
        IMAGE_HEAD: lambda: ImageHead(num_classes, **config["image"].get("head", {})),
    }
    if (backbone := BACKBONES.get(config["image"].get("backbone", ""))) is not None:
        builders[IMAGE_BACKBONE] = backbone.skeleton  # what training stores (Backbone.stored_state)
    try:
        with torch.device("meta"):
            return {name: build() for name, build in builders.items() if name in names}
    except (TypeError, ValueError, RuntimeError) as exc:
        raise BundleError(f"config.json describes a model that cannot be built: {exc}") from None


def _check_state(root: Path, name: str, state: Any, module: Any) -> None:
    import torch

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BundleError(f"{name} in {root} must be a state_dict of tensors")
    want = module.state_dict() if module is not None else state
    if missing := sorted(set(want) - set(state)):
        raise BundleError(f"{name} in {root} lacks tensors {missing[:5]} the model described by config.json has")
    if extra := sorted(set(state) - set(want), key=str):
        raise BundleError(f"{name} in {root} holds tensors {extra[:5]} the model described by config.json lacks")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(want[key].shape) or tensor.dtype != want[key].dtype:
            raise BundleError(f"{name} in {root}: tensor {key} is {tensor.dtype} {list(tensor.shape)}, but the model "
                              f"described by config.json needs {want[key].dtype} {list(want[key].shape)}")
        if tensor.is_floating_point() and not np.isfinite(tensor.detach().float().numpy()).all():
            raise BundleError(f"{name} in {root}: tensor {key} holds NaN or infinite values")


def _check_tfidf(path: Path, num_classes: int) -> None:
    """``tfidf.npz``: plain arrays (no pickles) of the sizes :class:`rakuten_mm.tfidf.TfidfMember` reads."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{path} is not a plain-array .npz: {str(exc)[:200]}") from None

    def bad(why: str) -> BundleError:
        return BundleError(f"{path}: {why}")

    if missing := sorted({"terms", "idf", "coef", "intercept", "classes", "num_classes"} - set(arrays)):
        raise bad(f"arrays {missing} are missing")
    terms, idf, coef = arrays["terms"], arrays["idf"], arrays["coef"]
    classes, intercept, n = arrays["classes"], arrays["intercept"], arrays["num_classes"]
    if terms.ndim != 1 or terms.dtype.kind != "U":
        raise bad(f"terms must be a 1-d string array, got {terms.dtype} {list(terms.shape)}")
    if n.shape != () or n.dtype.kind not in "iu" or int(n) != num_classes:
        raise bad(f"num_classes must be the label map's size {num_classes}, got {n.dtype} {n.tolist()!r}")
    if classes.ndim != 1 or classes.dtype.kind not in "iu" or len(set(classes.tolist())) != len(classes) \
            or len(classes) < 2 or (len(classes) and not 0 <= classes.min() <= classes.max() < num_classes):
        raise bad(f"classes must be at least 2 distinct class indices below {num_classes}")
    rows = len(classes) if len(classes) > 2 else 1
    for key, array, shape in (("idf", idf, (len(terms),)), ("coef", coef, (rows, len(terms))),
                              ("intercept", intercept, (rows,))):
        if array.shape != shape or array.dtype.kind != "f":
            raise bad(f"{key} must be a float array of shape {list(shape)}, got {array.dtype} {list(array.shape)}")
        if not np.isfinite(array).all():
            raise bad(f"{key} holds NaN or infinite values")


def read_json(root: Path, name: str) -> Any:
    """One JSON file of a verified bundle (:class:`BundleError` if it does not parse)."""
    try:
        return json.loads((root / name).read_bytes().decode("utf-8"))
    except (OSError, ValueError) as exc:  # ValueError covers JSONDecodeError and UnicodeDecodeError
        raise BundleError(f"{name} in {root} is unreadable: {str(exc)[:200]}") from None


def load_state(root: Path, name: str) -> dict[str, torch.Tensor]:
    """One ``state_dict`` of a verified bundle, loaded with ``weights_only=True`` onto the CPU."""
    import torch

    try:
        state: dict[str, torch.Tensor] = torch.load(root / name, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle refusals and corrupt archives vary in type; all mean "bad bundle file"
        raise BundleError(f"cannot load {name} from {root}: {exc}") from None
    return state
