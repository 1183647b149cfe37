"""Deterministic synthetic data in the exact Rakuten challenge layout, for tests, demos and pipeline smoke runs.

The generated set imitates the real one where it matters to the code that reads it: the file names and CSV
format, French titles, HTML descriptions (often empty), imbalanced classes and per-product JPEGs. Both
modalities carry the class but each is imperfect on *different* rows, so the ensemble has something to gain.
"""

from __future__ import annotations

import colorsys
import math
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from tqdm import tqdm

from rakuten_mm.errors import ConfigError
from rakuten_mm.labels import KNOWN_CODES

MIN_TRAIN_PER_CLASS = 3  # a stratified train/val/test split needs one row of each class per part
MAX_PRODUCTS = 500_000
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024
MAX_TEST_FRACTION = 0.9
TEXT_CONFUSION = 0.12  # share of rows whose text mostly describes a related class
IMAGE_CONFUSION = 0.15  # share of rows whose image shows a related class's pattern (disjoint from the text rows)
EMPTY_DESCRIPTION = 0.35

# Train rows per class in the real challenge: imitates its ~1:13 imbalance.
_REAL_COUNTS: dict[int, int] = {
    10: 3116, 40: 2508, 50: 1681, 60: 832, 1140: 2671, 1160: 3953, 1180: 764, 1280: 4870, 1281: 2070,
    1300: 5045, 1301: 807, 1302: 2491, 1320: 3241, 1560: 5073, 1920: 4303, 1940: 803, 2060: 4993,
    2220: 824, 2280: 4760, 2403: 4774, 2462: 1421, 2522: 4989, 2582: 2589, 2583: 10209, 2585: 2496,
    2705: 2761, 2905: 872,
}

# Classes a product can plausibly be confused with (the real data's hard pairs: book kinds, game kinds, toys, home).
_RELATED: dict[int, tuple[int, ...]] = {
    10: (2403, 2705, 2280), 2280: (2403, 10), 2403: (10, 2705, 2280), 2705: (10, 2403),
    40: (2462, 2905, 60), 50: (60, 2462, 40), 60: (2462, 50, 40), 2462: (60, 40, 50), 2905: (40, 2462),
    1140: (1180, 1160, 1280), 1160: (1281, 1180, 1140), 1180: (1140, 1281, 1160),
    1280: (1281, 1300, 1302, 1140), 1281: (1280, 1160, 1180), 1300: (1280, 1302), 1301: (1320, 1280, 1302),
    1302: (1280, 1300, 2582), 1320: (1301, 1280),
    1560: (2060, 1920, 2582), 1920: (1560, 2060), 2060: (1560, 1920, 2582), 2582: (1560, 2583, 2585),
    1940: (1560, 2060), 2220: (1320, 2582), 2522: (10, 2403, 1560), 2583: (2582, 2585), 2585: (2582, 1560),
}

# Per-class vocabularies; words shared between related classes are deliberate (they make text imperfect).
_VOCAB: dict[int, tuple[str, ...]] = {
    10: ("roman", "livre", "tome", "auteur", "édition", "poche", "récit", "chapitre", "préface", "collection",
         "histoire", "volume", "édition originale"),
    2280: ("magazine", "revue", "numéro", "hebdomadaire", "mensuel", "journal", "dossier", "supplément",
           "actualité", "reportage", "spécial", "édition"),
    2403: ("livre", "bande dessinée", "album", "lot", "ancien", "édition", "illustré", "tome", "recueil",
           "collection", "roman", "revue"),
    2705: ("roman", "livre", "auteur", "broché", "essai", "éditions", "thriller", "biographie", "récit",
           "poche", "nouvelle", "bande dessinée"),
    2522: ("cahier", "stylo", "agenda", "classeur", "feutre", "carnet", "enveloppe", "trousse", "crayon",
           "papier", "bloc-notes", "ramette"),
    40: ("jeu", "playstation", "xbox", "nintendo", "pc", "aventure", "cartouche", "version", "wii", "ps4",
         "jeu vidéo", "action"),
    50: ("manette", "câble", "chargeur", "support", "stylet", "housse", "casque", "adaptateur", "protection",
         "batterie", "nintendo switch", "gamepad"),
    60: ("console", "nintendo", "playstation", "xbox", "game boy", "portable", "rétro", "pack", "manette", "ds",
         "sega", "mégadrive"),
    2462: ("lot", "jeux", "console", "manettes", "nintendo", "playstation", "xbox", "occasion", "complet",
           "pack", "wii", "jeu vidéo"),
    2905: ("téléchargement", "pc", "steam", "clé", "code", "jeu", "extension", "numérique", "windows",
           "simulation", "dlc", "jeu vidéo"),
    1140: ("figurine", "funko", "pop", "marvel", "star wars", "manga", "statuette", "vinyle", "collector",
           "dragon ball", "goodies", "porte-clés"),
    1160: ("carte", "pokémon", "yu-gi-oh", "magic", "booster", "rare", "holo", "deck", "vf", "panini",
           "extension", "collection"),
    1180: ("warhammer", "figurine", "plateau", "dés", "miniatures", "peinture", "armée", "règles", "extension",
           "jeu de rôle", "games workshop"),
    1280: ("peluche", "poupée", "jouet", "playmobil", "lego", "doudou", "enfant", "barbie", "marionnette",
           "figurine", "disney"),
    1281: ("jeu de société", "puzzle", "cartes", "plateau", "joueurs", "famille", "pièces", "ambiance",
           "stratégie", "dés", "monopoly"),
    1300: ("voiture", "maquette", "miniature", "échelle", "1/43", "radiocommandé", "drone", "hélicoptère",
           "moteur", "train", "circuit"),
    1301: ("chaussettes", "bébé", "babyfoot", "fléchettes", "billard", "body", "naissance", "bavoir", "layette",
           "coton"),
    1302: ("trampoline", "toboggan", "balançoire", "vélo", "trottinette", "piscine gonflable", "ballon",
           "cerf-volant", "portique", "jardin", "plein air"),
    1320: ("poussette", "bébé", "siège auto", "biberon", "tétine", "sac à langer", "lit parapluie",
           "chaise haute", "tapis d'éveil", "naissance"),
    1560: ("meuble", "table", "chaise", "étagère", "armoire", "commode", "bois", "rangement", "tiroir", "canapé",
           "lit", "matelas"),
    1920: ("coussin", "housse", "rideau", "drap", "couette", "nappe", "serviette", "plaid", "taie", "coton",
           "parure"),
    1940: ("café", "thé", "épices", "chocolat", "bonbons", "infusion", "conserve", "sucre", "capsules",
           "biscuits", "bio", "miel"),
    2060: ("lampe", "décoration", "cadre", "bougie", "miroir", "vase", "horloge", "guirlande", "sticker",
           "luminaire", "suspension", "led"),
    2220: ("chien", "chat", "collier", "laisse", "gamelle", "litière", "niche", "arbre à chat", "croquettes",
           "harnais", "aquarium"),
    2582: ("parasol", "salon de jardin", "tonnelle", "tente", "pot", "jardinière", "transat", "bâche", "pergola",
           "hamac", "barbecue", "jardin"),
    2583: ("piscine", "filtre", "chlore", "bâche", "pompe", "robot", "skimmer", "spa", "liner", "échelle",
           "hivernage", "cartouche"),
    2585: ("perceuse", "outil", "tondeuse", "visseuse", "scie", "tournevis", "clé", "aspirateur", "nettoyeur",
           "tuyau", "arrosage", "batterie"),
}

# Words every class uses: they carry no signal, like most of a real title.
_FILLER: tuple[str, ...] = (
    "lot", "neuf", "occasion", "qualité", "noir", "blanc", "rouge", "bleu", "vert", "grand", "petit", "nouveau",
    "original", "cadeau", "idéal", "pas cher", "garantie", "taille", "modèle", "couleur", "français", "luxe",
    "mini", "pratique", "édition limitée", "très bon état",
)
_BRANDS: tuple[str, ...] = (
    "Marquise", "Lumina", "Bertin", "Atelier Roux", "Kiwi & Co", "Durand", "Véga", "Octave", "Soléa", "Novak",
)
_ENTITIES: tuple[tuple[str, str], ...] = (
    ("é", "&eacute;"), ("è", "&egrave;"), ("ê", "&ecirc;"), ("à", "&agrave;"), ("ç", "&ccedil;"),
    ("ô", "&ocirc;"), ("'", "&#39;"),
)
_SENTENCES: tuple[str, ...] = (
    "Ce {a} est idéal pour les amateurs de {b}.",
    "{A} de très bonne qualité, parfait avec votre {b}.",
    "Caractéristiques : {a}, {b} et {c}.",
    "Livré avec {a} &amp; {b}.",
    "Dimensions : {n} x {m} cm.",
    "Marque : {brand}.",
    "Très bon état général, {a} à découvrir.",
    "Compatible avec {a} et {b}.",
    "Idéal pour offrir : {a} {c}.",
)

_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "hstripes", "checker", "cross", "ring", "diamond",
                            "vstripes")
_TEXTURES: tuple[str, ...] = ("plain", "dots", "hatch")
# Related classes sit next to each other, so their background hues are close and their shapes differ.
_PATTERN_ORDER: tuple[int, ...] = (10, 2280, 2403, 2705, 40, 50, 60, 2462, 2905, 1140, 1160, 1180, 1280, 1281,
                                   1300, 1302, 1301, 1320, 1560, 1920, 2060, 2582, 2583, 2585, 2220, 1940, 2522)


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate` wrote."""

    root: Path
    train_rows: int
    test_rows: int
    class_counts: dict[int, int]  # prdtypecode -> train rows


@dataclass(frozen=True)
class _Pattern:
    hue: float
    sat: float
    val: float
    shape: str
    texture: str
    fg: tuple[int, int, int]


def _patterns() -> dict[int, _Pattern]:
    out: dict[int, _Pattern] = {}
    for k, code in enumerate(_PATTERN_ORDER):
        hue = k / len(_PATTERN_ORDER)
        fg_hue = (hue + (0.5 if k % 2 == 0 else 0.33)) % 1.0
        fg = colorsys.hsv_to_rgb(fg_hue, 0.8, 0.95 if k % 2 == 0 else 0.3)
        out[code] = _Pattern(hue=hue, sat=(0.55, 0.35, 0.75)[k % 3], val=(0.9, 0.7, 0.8)[k % 3],
                             shape=_SHAPES[k % len(_SHAPES)], texture=_TEXTURES[(k // len(_SHAPES)) % 3],
                             fg=(int(fg[0] * 255), int(fg[1] * 255), int(fg[2] * 255)))
    return out


def _test_rows(products: int, test_fraction: float) -> int:
    return max(1, math.floor(products * test_fraction + 0.5))


def _min_products(test_fraction: float) -> int:
    n = MIN_TRAIN_PER_CLASS * len(KNOWN_CODES)
    while n - _test_rows(n, test_fraction) < MIN_TRAIN_PER_CLASS * len(KNOWN_CODES):
        n += 1
    return n


def _validate(products: int, seed: int, image_size: int, test_fraction: float) -> None:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0 < test_fraction < MAX_TEST_FRACTION:
        raise ConfigError(f"test_fraction must be > 0 and < {MAX_TEST_FRACTION}; got {test_fraction!r}")
    lo = _min_products(float(test_fraction))
    if isinstance(products, bool) or not isinstance(products, int) or not lo <= products <= MAX_PRODUCTS:
        raise ConfigError(f"products must be an integer between {lo} and {MAX_PRODUCTS} (every one of the "
                          f"{len(KNOWN_CODES)} classes needs >= {MIN_TRAIN_PER_CLASS} training rows at "
                          f"test_fraction={test_fraction}); got {products!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) \
            or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"image_size must be an integer between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE}; "
                          f"got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer; got {seed!r}")


def _class_counts(train_rows: int) -> dict[int, int]:
    """Split ``train_rows`` over the classes in the real proportions (largest remainder), with a floor of 3."""
    codes = list(KNOWN_CODES)
    weights = np.array([_REAL_COUNTS[c] for c in codes], dtype=float)
    spare = train_rows - MIN_TRAIN_PER_CLASS * len(codes)
    share = weights / weights.sum() * spare
    counts = np.floor(share).astype(int)
    # Ties broken by code order so the split never depends on float noise across platforms.
    order = sorted(range(len(codes)), key=lambda i: (-(share[i] - counts[i]), i))
    for i in order[: spare - int(counts.sum())]:
        counts[i] += 1
    return {c: int(n) + MIN_TRAIN_PER_CLASS for c, n in zip(codes, counts, strict=True)}


def _pick(rng: np.random.Generator, seq: Sequence[str]) -> str:
    return seq[int(rng.integers(len(seq)))]


def _word(rng: np.random.Generator, code: int, other: int | None) -> str:
    """One content word: mostly the class's own, sometimes a related class's or filler (imperfect text)."""
    u = rng.random()
    if other is not None:  # a confusing product: described mostly with the related class's words
        return _pick(rng, _VOCAB[other] if u < 0.7 else _VOCAB[code] if u < 0.85 else _FILLER)
    if u < 0.75:
        return _pick(rng, _VOCAB[code])
    if u < 0.88:
        return _pick(rng, _VOCAB[_pick_code(rng, _RELATED[code])])
    return _pick(rng, _FILLER)


def _pick_code(rng: np.random.Generator, codes: Sequence[int]) -> int:
    return codes[int(rng.integers(len(codes)))]


def _title_case(text: str) -> str:
    # str.title() would also capitalise after apostrophes and digits ("1/43" stays, "d'éveil" -> "D'éveil").
    return " ".join(w[:1].upper() + w[1:] for w in text.split(" "))


def _extra(rng: np.random.Generator) -> str:
    kind = int(rng.integers(6))
    if kind == 0:
        return f"N° {int(rng.integers(1, 400))}"
    if kind == 1:
        return f"Lot De {int(rng.integers(2, 13))}"
    if kind == 2:
        return f"{int(rng.integers(10, 300))} X {int(rng.integers(10, 300))} Mm"
    if kind == 3:
        return str(int(rng.integers(1960, 2021)))
    if kind == 4:
        return f"Vol. {int(rng.integers(1, 40))}"
    return f"Réf. {_pick(rng, ('SL', 'AX', 'PR', 'MK'))}-{int(rng.integers(1000, 9999))}"


def _title(rng: np.random.Generator, code: int, other: int | None) -> str:
    words = [_word(rng, code, other) for _ in range(int(rng.integers(2, 6)))]
    title = _title_case(" ".join(words))
    if rng.random() < 0.4:
        title = f"{_pick(rng, _BRANDS)} {title}"
    if rng.random() < 0.5:
        title = f"{title} - {_extra(rng)}"
    return title


def _description(rng: np.random.Generator, code: int, other: int | None) -> str:
    """HTML like the real sellers write: tags, ``<br />`` breaks, entity-encoded accents about half the time."""
    if rng.random() < EMPTY_DESCRIPTION:
        return ""
    sentences = []
    for _ in range(int(rng.integers(1, 5))):
        a, b, c = (_word(rng, code, other) for _ in range(3))
        if rng.random() < 0.3:
            a = f"<b>{a}</b>"
        sentences.append(_pick(rng, _SENTENCES).format(
            a=a, A=a[:1].upper() + a[1:], b=b, c=c, n=int(rng.integers(10, 200)), m=int(rng.integers(10, 200)),
            brand=_pick(rng, _BRANDS).replace("&", "&amp;")))
    style = int(rng.integers(3))
    if style == 0:
        html = "".join(f"<p>{s}</p>" for s in sentences)
    elif style == 1:
        html = "<br />".join(sentences)
    else:
        html = "&nbsp;".join(sentences)
    if rng.random() < 0.5:
        for char, entity in _ENTITIES:
            html = html.replace(char, entity)
    if rng.random() < 0.05:  # the quoted attribute makes the CSV writer escape quotes, as in the real file
        html += '<span class="vga_style2"><b></b><br>'
    return html


def _unique_ids(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    # Floyd-style sampling without replacement inside numpy: no huge permutation for a 4e9-wide range.
    return rng.choice(high - low, size=n, replace=False).astype(np.int64) + low


def _draw_image(rng: np.random.Generator, pattern: _Pattern, size: int, path: Path) -> None:
    hue = (pattern.hue + rng.uniform(-0.015, 0.015)) % 1.0
    bg = colorsys.hsv_to_rgb(hue, pattern.sat, pattern.val)
    img = Image.new("RGB", (size, size), tuple(int(v * 255) for v in bg))
    draw = ImageDraw.Draw(img)
    texture_colour = tuple(int(v * 255 * 0.75) for v in bg)
    if pattern.texture == "dots":
        for x, y in rng.integers(0, size, size=(max(8, size // 4), 2)):
            r = max(1, size // 40)
            draw.ellipse((int(x) - r, int(y) - r, int(x) + r, int(y) + r), fill=texture_colour)
    elif pattern.texture == "hatch":
        step = max(4, size // 8)
        for off in range(-size, size, step):
            draw.line((off, 0, off + size, size), fill=texture_colour, width=max(1, size // 64))

    half = size * rng.uniform(0.18, 0.32)
    cx = size / 2 + rng.uniform(-0.12, 0.12) * size
    cy = size / 2 + rng.uniform(-0.12, 0.12) * size
    x0, y0, x1, y1 = int(cx - half), int(cy - half), int(cx + half), int(cy + half)
    fg = tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in pattern.fg)
    shape = pattern.shape
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fg)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fg)
    elif shape == "triangle":
        draw.polygon([(int(cx), y0), (x1, y1), (x0, y1)], fill=fg)
    elif shape == "diamond":
        draw.polygon([(int(cx), y0), (x1, int(cy)), (int(cx), y1), (x0, int(cy))], fill=fg)
    elif shape == "ring":
        draw.ellipse((x0, y0, x1, y1), outline=fg, width=max(2, int(half / 3)))
    elif shape == "cross":
        w = max(1, int(half / 3))
        draw.rectangle((x0, int(cy) - w, x1, int(cy) + w), fill=fg)
        draw.rectangle((int(cx) - w, y0, int(cx) + w, y1), fill=fg)
    elif shape in ("hstripes", "vstripes"):
        band = max(2, int(half / 3))
        for k, pos in enumerate(range(y0 if shape == "hstripes" else x0, y1 if shape == "hstripes" else x1, band)):
            if k % 2 == 0:
                box = (x0, pos, x1, pos + band - 1) if shape == "hstripes" else (pos, y0, pos + band - 1, y1)
                draw.rectangle(box, fill=fg)
    else:  # checker
        cell = max(2, int(half / 2))
        for i, x in enumerate(range(x0, x1, cell)):
            for j, y in enumerate(range(y0, y1, cell)):
                if (i + j) % 2 == 0:
                    draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=fg)

    # Sensor-like noise so no two images of a class are pixel-identical.
    pixels = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, size=(size, size, 3), dtype=np.int16)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(path, format="JPEG", quality=90)


def _frame(index: range, designation: list[str], description: list[str], productid: np.ndarray,
           imageid: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"designation": designation, "description": description, "productid": productid,
                         "imageid": imageid}, index=pd.RangeIndex(index.start, index.stop))


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output {out} must not exist or be an empty directory; it holds data, "
                          "which synth will not overwrite")


def generate(out: Path | str, products: int = 600, seed: int = 0, image_size: int = 64,
             test_fraction: float = 0.2) -> SynthSummary:
    """Write a synthetic dataset in the challenge layout under ``out`` and return what was written.

    ``products`` counts train + test rows. The same arguments always give byte-identical files. ``out`` must be
    absent or empty; the data is built beside it and renamed into place, so a failure leaves nothing half-written.
    """
    _validate(products, seed, image_size, test_fraction)
    out = Path(out)
    _check_out(out)

    rng = np.random.default_rng(seed)
    n_test = _test_rows(products, test_fraction)
    n_train = products - n_test
    counts = _class_counts(n_train)
    codes = np.array(KNOWN_CODES)
    train_labels = rng.permutation(np.repeat(codes, [counts[c] for c in KNOWN_CODES]))
    weights = np.array([_REAL_COUNTS[c] for c in KNOWN_CODES], dtype=float)
    test_labels = rng.choice(codes, size=n_test, p=weights / weights.sum())
    labels = np.concatenate([train_labels, test_labels])

    # One draw decides which modality (if any) is misleading for a row, so text and image fail on different rows.
    text_other: list[int | None] = [None] * products
    image_other: list[int | None] = [None] * products
    for i, (code, u) in enumerate(zip(labels, rng.random(products), strict=True)):
        if u < TEXT_CONFUSION:
            text_other[i] = _pick_code(rng, _RELATED[int(code)])
        elif u < TEXT_CONFUSION + IMAGE_CONFUSION:
            image_other[i] = _pick_code(rng, _RELATED[int(code)])
    designation = [_title(rng, int(c), o) for c, o in zip(labels, text_other, strict=True)]
    description = [_description(rng, int(c), o) for c, o in zip(labels, text_other, strict=True)]
    productid = _unique_ids(rng, products, 100_000_000, 4_300_000_000)
    imageid = _unique_ids(rng, products, 900_000_000, 1_400_000_000)

    out.parent.mkdir(parents=True, exist_ok=True)
    # A uuid name (not mkdtemp) so the directory gets the usual umask permissions once renamed into place.
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        train_index, test_index = range(0, n_train), range(n_train, products)
        x_train = _frame(train_index, designation[:n_train], description[:n_train], productid[:n_train],
                         imageid[:n_train])
        x_test = _frame(test_index, designation[n_train:], description[n_train:], productid[n_train:],
                        imageid[n_train:])
        y_train = pd.DataFrame({"prdtypecode": train_labels}, index=x_train.index)
        # Explicit "\n" so the bytes do not depend on the platform's line separator.
        x_train.to_csv(tmp / "X_train_update.csv", lineterminator="\n")
        y_train.to_csv(tmp / "Y_train_CVw08PX.csv", lineterminator="\n")
        x_test.to_csv(tmp / "X_test_update.csv", lineterminator="\n")

        patterns = _patterns()
        for sub in ("image_train", "image_test"):
            (tmp / "images" / sub).mkdir(parents=True)
        for i in tqdm(range(products), desc="synth images", unit="img", disable=None):
            sub = "image_train" if i < n_train else "image_test"
            code = image_other[i] if image_other[i] is not None else int(labels[i])
            # A per-image generator keeps the pixels independent of how much randomness the text above consumed.
            image_rng = np.random.default_rng([seed, 1, i])
            path = tmp / "images" / sub / f"image_{imageid[i]}_product_{productid[i]}.jpg"
            _draw_image(image_rng, patterns[code], image_size, path)

        _check_out(out)  # again: someone may have written there while we were busy
        try:
            os.replace(tmp, out)
        except OSError as exc:
            raise ConfigError(f"could not move the generated data into {out}: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SynthSummary(root=out, train_rows=n_train, test_rows=n_test, class_counts=counts)
