"""Split expressions: which frames of a dataset a run trains or scores on.

    train                 the split `train`
    train+val             two splits read as one (the final model of a recipe chosen on train -> val)
    train:0006R0          the frames of `train` whose names start with 0006R0 (one CamVid sequence)
    train:-0006R0+val     `train` without that sequence, plus `val`
    train:0001TP,0016E5   several prefixes: frames starting with any of them

Name prefixes are how recordings are told apart: CamVid names frames `<sequence>_<frame>`, Cityscapes
`<city>_<seq>_<frame>`, and a folder dataset keeps the names you gave your recordings. Holding a whole
sequence out ('leave one sequence out') scores a recipe on streets it never saw, which CamVid's val split
cannot: val is sequence 0016E5, whose other frames are in train, and val has overstated the held-out test
(mostly sequence Seq05VD) by 8-9 points.

This module only reads expressions (no dataset is opened), so checkpoints can answer "was this split
trained on?" without importing the data pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class SplitError(ValueError):
    """A split expression that cannot be read."""


@dataclass(frozen=True)
class SplitPart:
    """One '+'-joined part: a split, and the name prefixes that keep (or, with `drop`, remove) frames."""

    split: str
    prefixes: tuple[str, ...] = ()
    drop: bool = True  # no prefixes + drop = the whole split

    def keeps(self, name: str) -> bool:
        hit = any(name.startswith(p) for p in self.prefixes)
        return not hit if self.drop else hit

    def disjoint_from(self, other: SplitPart) -> bool:
        """Provably no frame in common, from the expressions alone (else False: assume they overlap)."""
        if self.split != other.split:
            return True  # splits are different frames (the datasets' own convention)
        if not self.drop and not other.drop:
            return not any(a.startswith(b) or b.startswith(a) for a in self.prefixes for b in other.prefixes)
        if not self.drop:  # every frame this keeps, `other` drops
            return all(any(a.startswith(b) for b in other.prefixes) for a in self.prefixes)
        if not other.drop:
            return other.disjoint_from(self)
        return False  # both keep 'everything but ...': they share whatever neither drops

    def __str__(self) -> str:
        if not self.prefixes:
            return self.split
        return f"{self.split}:{'-' if self.drop else ''}{','.join(self.prefixes)}"


def parse_split(spec: str) -> list[SplitPart]:
    """`spec` as its parts, with a clear error for anything malformed."""
    parts = []
    for text in str(spec).split("+"):
        text = text.strip()
        split, colon, filt = text.partition(":")
        split = split.strip()
        if not split:
            raise SplitError(f"split {spec!r}: empty split name (join names with '+', e.g. 'train+val')")
        if not colon:
            parts.append(SplitPart(split))
            continue
        filt = filt.strip()
        drop = filt.startswith("-")
        prefixes = tuple(p.strip() for p in filt.removeprefix("-").split(","))
        if not filt.removeprefix("-") or any(not p for p in prefixes):
            raise SplitError(f"split {spec!r}: after '{split}:' give name prefixes, e.g. '{split}:0006R0' "
                             f"(keep) or '{split}:-0006R0' (drop)")
        parts.append(SplitPart(split, prefixes, drop))
    if len({str(p) for p in parts}) != len(parts):
        raise SplitError(f"split {spec!r} names the same part twice")
    return parts


def splits_overlap(a: str, b: str) -> bool:
    """Whether expressions `a` and `b` may share frames (True unless provably disjoint)."""
    return any(not pa.disjoint_from(pb) for pa in parse_split(a) for pb in parse_split(b))


def format_split(parts: Sequence[SplitPart]) -> str:
    return "+".join(str(p) for p in parts)


__all__ = ["SplitError", "SplitPart", "format_split", "parse_split", "splits_overlap"]
