#!/usr/bin/env python3
"""Plot the training curves of one or more lstm-lm runs into one PNG.

Reads RUN_DIR/metrics.jsonl of each run: one JSON object per line, where
"split": "train" records have step, epoch, perplexity, lr, grad_norm,
tokens_per_s and elapsed_s, "valid" records have step, epoch and perplexity,
and the "test" record has perplexity. Blank lines and records of other splits
are skipped.

The figure has three panels over the training step: train and valid perplexity
(log scale), learning rate, and gradient norm before clipping (log scale). Runs
are overlaid and labelled with their folder name, with the test perplexity in
the label when the run has one.

Usage: plot_run.py RUN_DIR [RUN_DIR ...] [-o OUT.png]
The default output is RUN_DIR/curves.png for one run and runs.png in the
current directory for several.

Needs matplotlib (Debian: python3-matplotlib, run with /usr/bin/python3).
"""

import argparse
import json
import os
import sys

REQUIRED_KEYS = {
    "train": ("step", "perplexity", "lr", "grad_norm"),
    "valid": ("step", "perplexity"),
    "test": ("perplexity",),
}


class MetricsError(Exception):
    pass


def read_metrics(run_dir):
    """Return {"train": [...], "valid": [...], "test": [...]} records of a run."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise MetricsError(f"{path} not found. Pass a run folder that contains metrics.jsonl")
    records = {split: [] for split in REQUIRED_KEYS}
    try:
        read_records(path, records)
    except UnicodeDecodeError as error:
        raise MetricsError(f"{path} is not UTF-8 text: {error.reason} at byte {error.start}") from error
    if not records["train"] and not records["valid"]:
        raise MetricsError(f"{path} contains no train or valid records")
    return records


def read_records(path, records):
    """Append each record of the metrics file at path to records[split]."""
    with open(path, encoding="utf-8") as metrics:
        for line_number, line in enumerate(metrics, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise MetricsError(f"{path}:{line_number}: invalid JSON: {error.msg}") from error
            if not isinstance(record, dict):
                raise MetricsError(f"{path}:{line_number}: expected a JSON object")
            split = record.get("split")
            if split not in REQUIRED_KEYS:
                continue
            for key in REQUIRED_KEYS[split]:
                if key not in record:
                    raise MetricsError(f"{path}:{line_number}: {split} record has no {key}")
                value = record[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise MetricsError(
                        f"{path}:{line_number}: {split} record has invalid {key}={value!r}: expected a number"
                    )
            records[split].append(record)


def run_labels(run_dirs):
    """Label runs by folder name, or by full path when two folder names are equal."""
    names = [os.path.basename(os.path.normpath(run_dir)) for run_dir in run_dirs]
    if len(set(names)) < len(names):
        return [os.path.normpath(run_dir) for run_dir in run_dirs]
    return names


def plot_runs(pyplot, ticker, runs, out_path):
    figure, (perplexity_axes, lr_axes, grad_axes) = pyplot.subplots(3, 1, sharex=True, figsize=(10, 10))
    colors = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]

    for index, (label, records) in enumerate(runs):
        color = colors[index % len(colors)]
        if records["test"]:
            label = f"{label} (test ppl {records['test'][-1]['perplexity']:.2f})"
        train = records["train"]
        valid = records["valid"]
        if train:
            steps = [record["step"] for record in train]
            perplexity_axes.plot(steps, [r["perplexity"] for r in train], color=color, linewidth=1, label=f"{label} train")
            # A train record's lr applies to the steps since the previous record.
            lr_axes.plot(steps, [r["lr"] for r in train], color=color, drawstyle="steps-pre", label=label)
            grad_axes.plot(steps, [r["grad_norm"] for r in train], color=color, linewidth=1, label=label)
        if valid:
            perplexity_axes.plot(
                [r["step"] for r in valid], [r["perplexity"] for r in valid],
                color=color, linestyle="--", marker="o", markersize=4, label=f"{label} valid",
            )

    # Plain numbers (150, 200) read better than 2x10^2 on these log axes.
    plain_format = ticker.FuncFormatter(lambda value, _position: f"{value:g}")
    perplexity_axes.set_yscale("log")
    perplexity_axes.set_ylabel("perplexity")
    perplexity_axes.set_title("train (solid) and valid (dashed) perplexity")
    lr_axes.set_ylabel("learning rate")
    grad_axes.set_yscale("log")
    grad_axes.set_ylabel("gradient norm before clipping")
    grad_axes.set_xlabel("step")
    for axes in (perplexity_axes, grad_axes):
        axes.yaxis.set_major_formatter(plain_format)
        axes.yaxis.set_minor_formatter(plain_format)
        axes.tick_params(axis="y", which="minor", labelsize="x-small")
    for axes in (perplexity_axes, lr_axes, grad_axes):
        axes.grid(True, which="major", alpha=0.3)
    perplexity_axes.legend(fontsize="small")
    if len(runs) > 1:
        lr_axes.legend(fontsize="small")

    figure.tight_layout()
    figure.savefig(out_path, dpi=100)
    pyplot.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Plot perplexity, learning rate and gradient norm of lstm-lm runs.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder containing metrics.jsonl")
    parser.add_argument("-o", "--output", metavar="OUT.png",
                        help="output PNG (default: RUN_DIR/curves.png for one run, else runs.png)")
    args = parser.parse_args(argv)

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
        import matplotlib.ticker as ticker
    except ImportError:
        print(f"error: matplotlib is not available to {sys.executable}; run `sudo apt-get install "
              "python3-matplotlib` and start this script with /usr/bin/python3", file=sys.stderr)
        return 2

    if args.output:
        out_path = args.output
    elif len(args.run_dirs) == 1:
        out_path = os.path.join(args.run_dirs[0], "curves.png")
    else:
        out_path = "runs.png"

    try:
        runs = [(label, read_metrics(run_dir)) for label, run_dir in zip(run_labels(args.run_dirs), args.run_dirs)]
    except (MetricsError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        plot_runs(pyplot, ticker, runs, out_path)
    except OSError as error:
        print(f"error: cannot write {out_path}: {error.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
