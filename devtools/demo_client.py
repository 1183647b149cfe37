"""Send sample products to the transformer with ``tritonclient.http`` and print code, category and probability.

    python -m devtools.demo_client --url 127.0.0.1:8085 --data DATA -n 5   # servers already running
    python -m devtools.demo_client --bundle BUNDLE --data DATA -n 5        # start both, send, stop them

Products come from DATA's test split (``X_test_update.csv`` + ``images/image_test``; the flat ``X_test.csv`` +
``images_test`` layout works too), or from a few built-in titles without images when no ``--data`` is given.
Images travel as raw bytes with the binary tensor extension. An unreachable or failing server is one ``error:``
line on stderr and exit code 1. Development tooling: the serving image does not ship it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tritonclient.utils import InferenceServerException

BUILTIN = [("Console Nintendo Switch Lite turquoise", ""),
           ("Le Petit Prince - Antoine de Saint-Exupéry", "Roman illustré, édition de poche"),
           ("Piscine tubulaire ronde 3,66 x 0,76 m", "<p>Filtration &agrave; cartouche incluse</p>"),
           ("Peluche lapin 30 cm", ""),
           ("Café en grains 1 kg pur arabica", "")]


@dataclass
class Sample:
    designation: str
    description: str
    image: bytes | None


def load_samples(data: str | None, count: int) -> list[Sample]:
    if not data:
        return [Sample(d, desc, None) for d, desc in BUILTIN[:count]]
    import pandas as pd

    root = Path(data)
    csv = next((root / n for n in ("X_test_update.csv", "X_test.csv") if (root / n).is_file()), None)
    if csv is None:
        raise SystemExit(f"error: {root} has no X_test_update.csv (or X_test.csv)")
    image_dir = next((root / n for n in ("images/image_test", "images_test") if (root / n).is_dir()), None)
    frame = pd.read_csv(csv, index_col=0, keep_default_na=False).head(count)
    samples = []
    for row in frame.itertuples():
        path = image_dir / f"image_{row.imageid}_product_{row.productid}.jpg" if image_dir else None
        image = path.read_bytes() if path is not None and path.is_file() else None
        samples.append(Sample(str(row.designation), str(row.description), image))
    return samples


def classify(url: str, samples: Sequence[Sample], model: str = "rakuten") -> list[tuple[int, str, float]]:
    """One V2 request with B = len(samples) through tritonclient; returns (code, category, probability)."""
    import tritonclient.http as httpclient

    def tensor(name: str, values: list[bytes]) -> httpclient.InferInput:
        inp = httpclient.InferInput(name, [len(values)], "BYTES")
        inp.set_data_from_numpy(np.array(values, dtype=object), binary_data=True)
        return inp

    inputs = [tensor("designation", [s.designation.encode() for s in samples]),
              tensor("description", [s.description.encode() for s in samples])]
    if any(s.image for s in samples):
        inputs.append(tensor("image", [s.image or b"" for s in samples]))  # empty element = no image
    client = httpclient.InferenceServerClient(url, network_timeout=120.0, connection_timeout=10.0)
    try:
        result = client.infer(model, inputs)
    finally:
        client.close()
    codes = result.as_numpy("prdtypecode")
    names = result.as_numpy("category")
    probs = result.as_numpy("probabilities")
    return [(int(c), n.decode() if isinstance(n, bytes) else str(n), float(p.max()))
            for c, n, p in zip(codes, names, probs, strict=True)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo_client", description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="HOST:PORT of a running transformer")
    where.add_argument("--bundle", help="start predictor + transformer for this bundle on free loopback ports")
    parser.add_argument("--data", help="dataset directory with test rows (and images)")
    parser.add_argument("-n", "--count", type=int, default=5)
    parser.add_argument("--model", default="rakuten")
    args = parser.parse_args(argv)
    samples = load_samples(args.data, args.count)
    try:
        results = _run(args, samples)
    except (OSError, InferenceServerException, RuntimeError, TimeoutError) as exc:
        print(f"error: cannot classify through {args.url or 'the local servers'}: {_one_line(exc)}", file=sys.stderr)
        return 1
    print(f"{'designation':<48} {'image':>5} {'code':>5}  {'category':<20} {'probability':>11}")
    for sample, (code, category, prob) in zip(samples, results, strict=True):
        title = sample.designation if len(sample.designation) <= 47 else sample.designation[:44] + "..."
        print(f"{title:<48} {'yes' if sample.image else 'no':>5} {code:>5}  {category:<20} {prob:>11.3f}")
    return 0


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _run(args: argparse.Namespace, samples: list[Sample]) -> list[tuple[int, str, float]]:
    if args.url:
        return classify(args.url, samples, args.model)
    from devtools.local_servers import LocalServers

    with LocalServers(args.bundle, model_name=args.model) as servers:
        assert servers.transformer is not None and servers.predictor is not None
        print(f"predictor {servers.predictor.url}, transformer {servers.transformer.url} "
              f"(pids {servers.predictor.pid}, {servers.transformer.pid})")
        return classify(servers.transformer.address, samples, args.model)


if __name__ == "__main__":
    sys.exit(main())
