"""The 27 Rakuten ``prdtypecode`` classes and the label map that travels inside every bundle."""

from __future__ import annotations

from dataclasses import dataclass

from rakuten_mm.errors import ConfigError

# Codes published by the challenge; names are the community's English names (the challenge publishes codes only).
CATEGORY_NAMES: dict[int, str] = {
    10: "Books",
    40: "Video Games",
    50: "Gaming Accessories",
    60: "Consoles",
    1140: "Merchandise",
    1160: "Trading Cards",
    1180: "Tabletop Items",
    1280: "Toys",
    1281: "Games",
    1300: "RC Hobby",
    1301: "Kids Misc.",
    1302: "Outdoor Leisure",
    1320: "Baby Gear",
    1560: "Home Living",
    1920: "Home Textiles",
    1940: "Food",
    2060: "Home Decor",
    2220: "Pet Supplies",
    2280: "Magazines",
    2403: "Print Media",
    2462: "Gaming Bundles",
    2522: "Stationery",
    2582: "Garden Outdoor",
    2583: "Pool Supplies",
    2585: "DIY Tools",
    2705: "Books Comics",
    2905: "Digital Games",
}
KNOWN_CODES: tuple[int, ...] = tuple(sorted(CATEGORY_NAMES))


@dataclass(frozen=True)
class LabelMap:
    """``prdtypecode`` ↔ class index ↔ category name; the index order is the model's output order."""

    codes: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def default(cls) -> LabelMap:
        return cls(KNOWN_CODES, tuple(CATEGORY_NAMES[c] for c in KNOWN_CODES))

    def __post_init__(self) -> None:
        if len(self.codes) != len(self.names) or len(set(self.codes)) != len(self.codes):
            raise ConfigError(f"label map needs unique codes, one name each; got {len(self.codes)} codes, "
                              f"{len(set(self.codes))} unique, {len(self.names)} names")

    def __len__(self) -> int:
        return len(self.codes)

    def index_of(self, code: int) -> int:
        try:
            return self.codes.index(int(code))
        except ValueError:
            raise ConfigError(f"unknown prdtypecode {code}; allowed: {list(self.codes)}") from None

    def to_json(self) -> dict[str, list[int] | list[str]]:
        return {"codes": list(self.codes), "names": list(self.names)}

    @classmethod
    def from_json(cls, obj: dict[str, list]) -> LabelMap:
        return cls(tuple(int(c) for c in obj["codes"]), tuple(str(n) for n in obj["names"]))
