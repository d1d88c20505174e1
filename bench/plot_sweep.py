#!/usr/bin/env python3
"""Plot the hidden-size x batch-size sweep of `lstm-bench --sweep`.

Reads the markdown table the sweep prints and draws tokens/s and the fraction
of the matrix-product bound against the hidden size, one line per batch size.

Usage: bench/plot_sweep.py SWEEP.md -o OUT.png
"""
import argparse
import sys


def read_rows(path):
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 6 or not cells[0].isdigit():
                continue
            hidden, batch, train_tps, _, fraction, _ = cells
            rows.append((int(hidden), int(batch), float(train_tps), float(fraction)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("error: plotting needs matplotlib: sudo apt-get install python3-matplotlib", file=sys.stderr)
        return 2
    rows = read_rows(args.sweep)
    if not rows:
        print(f"error: no sweep rows in {args.sweep}", file=sys.stderr)
        return 1
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for batch in sorted({r[1] for r in rows}):
        points = sorted(r for r in rows if r[1] == batch)
        hidden = [p[0] for p in points]
        left.plot(hidden, [p[2] for p in points], marker="o", label=f"batch {batch}")
        right.plot(hidden, [p[3] for p in points], marker="o", label=f"batch {batch}")
    left.set(xscale="log", yscale="log", xlabel="hidden size (E = H)", ylabel="training tokens/s")
    # A step can outrun the sgemm timed after it on a noisy machine, so the
    # axis reaches past 1 when a fraction does.
    top = max(1.0, max(r[3] for r in rows)) * 1.05
    right.set(xscale="log", xlabel="hidden size (E = H)", ylabel="fraction of the sgemm bound", ylim=(0, top))
    right.axhline(1.0, color="gray", linewidth=0.8)
    for axis in (left, right):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.suptitle("lstm-bench --sweep: LSTM, V = 10000, bptt 35")
    figure.tight_layout()
    figure.savefig(args.output, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
