#!/usr/bin/env python3
"""Plot gradient-flow curves written by lstm-gradflow --csv into one PNG.

Each CSV has the header label,cell,layer,kind,distance,norm: the mean norm of
dL/dh (kind h) or dL/dc (kind c, lstm only) of one layer at distance k back
from the step that carries the loss. The figure has one solid curve per label
for layer 0's |dL/dh| and, in the same colour, a dashed curve for its |dL/dc|
when the CSV has one. The y axis is logarithmic; norms that are zero, negative
or not finite cannot be drawn on it and are left out of their curve.

Usage: plot_gradflow.py CSV [CSV ...] -o OUT.png [--title TEXT]

Needs matplotlib (Debian: sudo apt-get install python3-matplotlib, then run
with /usr/bin/python3 if another python3 comes first on PATH).
"""

import argparse
import csv
import math
import sys

COLUMNS = ("label", "cell", "layer", "kind", "distance", "norm")


class CsvError(Exception):
    pass


def read_curves(path, curves):
    """Add the layer-0 rows of one CSV to curves: {label: {kind: [(k, norm)]}}."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or tuple(reader.fieldnames) != COLUMNS:
                raise CsvError(f"{path}: header is {reader.fieldnames}, expected {','.join(COLUMNS)}")
            for line, row in enumerate(reader, start=2):
                try:
                    layer = int(row["layer"])
                    distance = int(row["distance"])
                    norm = float(row["norm"])
                except (TypeError, ValueError) as error:
                    raise CsvError(f"{path}:{line}: invalid layer, distance or norm: {error}") from None
                if row["kind"] not in ("h", "c"):
                    raise CsvError(f"{path}:{line}: kind is {row['kind']!r}, expected h or c")
                if layer != 0:
                    continue
                curves.setdefault(row["label"], {}).setdefault(row["kind"], []).append((distance, norm))
    except OSError as error:
        raise CsvError(f"cannot read {path}: {error.strerror}") from None


def drawable(points):
    """Return the (k, norm) points sorted by k that a log axis can show."""
    return [(k, n) for k, n in sorted(points) if math.isfinite(n) and n > 0.0]


def main():
    parser = argparse.ArgumentParser(description="Plot lstm-gradflow CSV files (layer 0) into one PNG.")
    parser.add_argument("csv", nargs="+", help="CSV files written by lstm-gradflow --csv")
    parser.add_argument("-o", "--output", required=True, help="PNG file to write")
    parser.add_argument("--title", default="Gradient norm at distance k from the loss (layer 0)",
                        help="figure title (default: %(default)s)")
    args = parser.parse_args()

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("error: matplotlib is not installed for " + sys.executable +
              ": sudo apt-get install python3-matplotlib (then run this script with /usr/bin/python3)",
              file=sys.stderr)
        return 2

    curves = {}
    try:
        for path in args.csv:
            read_curves(path, curves)
    except CsvError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not curves:
        print("error: no layer-0 rows in " + ", ".join(args.csv), file=sys.stderr)
        return 1

    figure, axes = plt.subplots(figsize=(8, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    skipped = []
    for index, (label, kinds) in enumerate(curves.items()):
        color = colors[index % len(colors)]
        for kind, style, name in (("h", "-", "|dL/dh|"), ("c", "--", "|dL/dc|")):
            if kind not in kinds:
                continue
            points = drawable(kinds[kind])
            if len(points) < len(kinds[kind]):
                skipped.append(f"{label} {kind}: {len(kinds[kind]) - len(points)}")
            if points:
                axes.plot([k for k, _ in points], [n for _, n in points], style, color=color,
                          label=f"{label} {name}")
    axes.set_yscale("log")
    axes.set_xlabel("distance k (steps back from the step with the loss)")
    axes.set_ylabel("mean norm over streams and windows")
    axes.set_title(args.title)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    try:
        figure.savefig(args.output, dpi=120)
    except OSError as error:
        print(f"error: cannot write {args.output}: {error.strerror}", file=sys.stderr)
        return 1
    if skipped:
        print("note: zero or non-finite norms left out (curve: count): " + ", ".join(skipped), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
