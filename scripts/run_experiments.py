#!/usr/bin/env python3
"""Train a series of lstm-lm runs one after another and tabulate their results.

Each --config is run once, or once per point of the grid when --grid is given
(the cartesian product of every --grid list). --set overrides apply to every
run. Each run gets its own directory under --out, named from the config's file
stem and the grid values, e.g. OUT/tiny__model.cell-gru. The console output of
each lstm-train goes to OUT/logs/NAME.log.

A run that exits with a non-zero status is reported with the last line of its
stderr, and the series continues. After every run OUT/results.md (a markdown
table) and OUT/results.csv are rewritten from the summary.json of each run.

With --reuse, a run directory that already has summary.json is not trained
again, and one with checkpoints/last.safetensors but no summary.json (an
interrupted run) is resumed. In both cases the stored config.json must hold
the requested override values, else the run is reported as failed.

Grid values are separated by commas, so a value cannot contain a comma. Each
value, like a --set value, is read as JSON when it parses, else as a string.

Exit status: 0 when every run succeeded, 1 when at least one failed, 2 for an
invalid command line, 130 when interrupted.

Example:
  scripts/run_experiments.py --config configs/tiny.json \\
      --grid model.cell=rnn,rnn_relu,gru,lstm --set train.max_steps=200 --out runs/cells
"""

import argparse
import csv
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BIN_DIRS = (os.path.join(REPO_ROOT, "build", "bin"), os.path.join(REPO_ROOT, "build", "src"))

CSV_COLUMNS = ("config", "overrides", "fixed_overrides", "test_perplexity", "best_valid_perplexity",
               "wall_time_s", "tokens_per_s", "threads", "parameters", "status", "run_dir")


class UsageError(Exception):
    pass


class Override:
    """One KEY=VALUE setting, whose value is the parsed JSON value, or the text when it is not JSON."""

    def __init__(self, key, value):
        self.key = key
        self.value = value

    def value_text(self):
        """Return the value as a --set argument that lstm-train reads back as the same value."""
        if isinstance(self.value, str):
            return self.value if not is_json(self.value) else json.dumps(self.value)
        return json.dumps(self.value)

    def __str__(self):
        return f"{self.key}={self.value_text()}"


class Run:
    """One lstm-train invocation and its outcome."""

    def __init__(self, config, grid_point, name, run_dir):
        self.config = config
        self.grid_point = grid_point  # the Overrides that vary across the grid
        self.name = name
        self.run_dir = run_dir
        self.status = "not run"
        self.summary = None


def is_json(text):
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def parse_value(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def split_assignment(text, option):
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"invalid {option} {text!r}: expected KEY=VALUE, e.g. train.lr=10")
    return key, value


def parse_set(text):
    key, value = split_assignment(text, "--set")
    return Override(key, parse_value(value))


def parse_grid(text):
    """Return the list of Overrides of one --grid KEY=V1,V2,... option."""
    key, values = split_assignment(text, "--grid")
    items = values.split(",")
    if any(not item.strip() for item in items):
        raise UsageError(f"invalid --grid {text!r}: every comma-separated value must be non-empty")
    return [Override(key, parse_value(item.strip())) for item in items]


def find_binary(bin_dir, name):
    """Return the path of the lstm-lm executable `name`.

    Looks in bin_dir when given, else in build/bin and build/src of the
    repository, else on PATH.
    """
    candidates = [bin_dir] if bin_dir else list(DEFAULT_BIN_DIRS)
    for folder in candidates:
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    if not bin_dir:
        found = shutil.which(name)
        if found:
            return found
    searched = bin_dir if bin_dir else ", ".join(DEFAULT_BIN_DIRS) + " or PATH"
    raise UsageError(f"{name} not found in {searched}: build the project "
                     "(cmake -S . -B build -G Ninja && ninja -C build) or pass --bin-dir")


def safe_name_part(text):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def run_name(config, grid_point):
    parts = [safe_name_part(os.path.splitext(os.path.basename(config))[0])]
    parts += [safe_name_part(f"{o.key}-{o.value_text()}") for o in grid_point]
    return "__".join(parts)


def plan_runs(configs, grids, out_dir):
    """Return one Run per config and grid point, with distinct directory names."""
    runs = []
    used = set()
    for config in configs:
        for grid_point in itertools.product(*grids):
            base = run_name(config, grid_point)
            name, count = base, 1
            while name in used:
                count += 1
                name = f"{base}-{count}"
            used.add(name)
            runs.append(Run(config, list(grid_point), name, os.path.join(out_dir, name)))
    return runs


def read_json(path):
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def stored_value(config, key):
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def reuse_mismatch(run, overrides):
    """Return a message when the stored config.json of run does not hold the requested overrides."""
    path = os.path.join(run.run_dir, "config.json")
    try:
        stored = read_json(path)
    except (OSError, ValueError) as error:
        return f"cannot read {path} to check it before reuse: {error}"
    for override in overrides:
        if override.key == "train.threads":
            continue  # the thread count does not define the experiment
        value = stored_value(stored, override.key)
        if value != override.value:
            return (f"{run.run_dir} holds a run with {override.key}={json.dumps(value)}, "
                    f"not {override.value_text()}: choose another --out or drop --reuse")
    return None


def last_line(text):
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def train(run, command, log_path):
    """Run lstm-train; return (exit status, last line of its stderr)."""
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.PIPE, text=True,
                                   errors="replace")
        try:
            _, stderr = process.communicate()
        except KeyboardInterrupt:
            # lstm-train received the same SIGINT; it writes a checkpoint and exits.
            _, stderr = process.communicate()
            log.write(stderr)
            raise
        log.write(stderr)
    return process.returncode, last_line(stderr)


def execute(run, train_binary, fixed, args, log_dir):
    """Train (or reuse, or resume) one run and set its status and summary."""
    overrides = fixed + run.grid_point
    summary_path = os.path.join(run.run_dir, "summary.json")
    last_checkpoint = os.path.join(run.run_dir, "checkpoints", "last.safetensors")
    set_arguments = [argument for o in overrides for argument in ("--set", str(o))]
    command = [train_binary, "--config", run.config, "--run-dir", run.run_dir, "--progress", "off"]
    command += set_arguments
    resuming = False

    if args.reuse and (os.path.exists(summary_path) or os.path.exists(last_checkpoint)):
        mismatch = reuse_mismatch(run, overrides)
        if mismatch:
            run.status = f"failed: {mismatch}"
            return
        if os.path.exists(summary_path):
            run.status = "reused"
            run.summary = read_json(summary_path)
            return
        command = [train_binary, "--resume", run.run_dir, "--progress", "off"] + set_arguments
        resuming = True

    if args.dry_run:
        print("  " + " ".join(command))
        run.status = "dry run"
        return

    status, message = train(run, command, os.path.join(log_dir, run.name + ".log"))
    if status != 0:
        run.status = f"failed (exit {status}): {message}" if message else f"failed (exit {status})"
        return
    try:
        run.summary = read_json(summary_path)
    except (OSError, ValueError) as error:
        run.status = f"failed: lstm-train exited with 0 but {summary_path} is unreadable: {error}"
        return
    run.status = "resumed" if resuming else "ok"


def format_duration(seconds):
    total = int(round(seconds))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def summary_number(run, key):
    value = (run.summary or {}).get(key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def csv_row(run):
    def text(value):
        if value is None:
            return ""
        if isinstance(value, float):
            return repr(value)  # every digit, so the CSV loses nothing
        return str(value)

    return {
        "config": run.config,
        "overrides": " ".join(str(o) for o in run.grid_point),
        "test_perplexity": text(summary_number(run, "test_perplexity")),
        "best_valid_perplexity": text(summary_number(run, "best_valid_perplexity")),
        "wall_time_s": text(summary_number(run, "wall_time_s")),
        "tokens_per_s": text(summary_number(run, "tokens_per_s")),
        "threads": text(summary_number(run, "threads")),
        "parameters": text(summary_number(run, "parameters")),
        "status": run.status,
        "run_dir": run.run_dir,
    }


def markdown_cell(text):
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_row(run):
    def fixed_point(key, digits):
        value = summary_number(run, key)
        return "" if value is None else f"{value:,.{digits}f}"

    wall = summary_number(run, "wall_time_s")
    cells = [
        run.config,
        " ".join(str(o) for o in run.grid_point),
        fixed_point("test_perplexity", 2),
        fixed_point("best_valid_perplexity", 2),
        "" if wall is None else f"{wall:.1f}",
        "" if wall is None else format_duration(wall),
        fixed_point("tokens_per_s", 0),
        fixed_point("threads", 0),
        fixed_point("parameters", 0),
        run.status,
    ]
    return "| " + " | ".join(markdown_cell(cell) for cell in cells) + " |"


def write_results(runs, fixed, out_dir):
    """Rewrite OUT/results.md and OUT/results.csv from the runs done so far."""
    fixed_text = " ".join(str(o) for o in fixed)
    csv_path = os.path.join(out_dir, "results.csv")
    with open(csv_path + ".tmp", "w", encoding="utf-8", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for run in runs:
            writer.writerow(dict(csv_row(run), fixed_overrides=fixed_text))
    os.replace(csv_path + ".tmp", csv_path)

    lines = ["# Experiment results", ""]
    if fixed:
        lines += [f"Overrides of every run: `{fixed_text}`", ""]
    lines += [
        "Values are from each run's summary.json: the test perplexity of the best "
        "checkpoint, the lowest validation perplexity, lstm-train's wall time "
        "(summed over resumes), its training throughput in tokens/s and the threads it used.",
        "",
        "| config | overrides | test ppl | best valid ppl | wall time (s) | wall time | tokens/s "
        "| threads | parameters | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [markdown_row(run) for run in runs]
    md_path = os.path.join(out_dir, "results.md")
    with open(md_path + ".tmp", "w", encoding="utf-8") as stream:
        stream.write("\n".join(lines) + "\n")
    os.replace(md_path + ".tmp", md_path)


def describe(run):
    if run.summary is None:
        return run.status
    test = summary_number(run, "test_perplexity")
    valid = summary_number(run, "best_valid_perplexity")
    wall = summary_number(run, "wall_time_s")
    parts = [run.status]
    if test is not None:
        parts.append(f"test ppl {test:.2f}")
    if valid is not None:
        parts.append(f"best valid ppl {valid:.2f}")
    if wall is not None:
        parts.append(format_duration(wall))
    return ", ".join(parts)


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        description="Train lstm-lm configs (and grids over config keys) one after another and "
                    "write OUT/results.md and OUT/results.csv.",
        epilog="Grid values are comma-separated and read as JSON, else as strings. "
               "Exit status: 0 all runs succeeded, 1 a run failed, 2 invalid arguments.")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="JSON config to run (repeatable)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="run every config once per value of KEY (repeatable: cartesian product)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key in every run (repeatable)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="threads per run, passed as --set train.threads=N (0 = all cores)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for the run directories, logs/, results.md and results.csv")
    parser.add_argument("--reuse", action="store_true",
                        help="skip runs whose directory has summary.json and resume interrupted ones")
    parser.add_argument("--bin-dir", metavar="DIR",
                        help="folder with lstm-train (default: build/bin or build/src of the repository, "
                             "else PATH)")
    parser.add_argument("--dry-run", action="store_true", help="print the lstm-train commands without running them")
    args = parser.parse_args(argv)
    if not args.config:
        parser.error("give at least one --config FILE")
    if args.threads is not None and args.threads < 0:
        parser.error(f"--threads {args.threads} is negative: give 0 (all cores) or more")
    return args


def build_plan(args):
    """Return (runs, fixed overrides) or raise UsageError."""
    for config in args.config:
        if not os.path.isfile(config):
            raise UsageError(f"config not found: {config}")
    fixed = [parse_set(text) for text in args.set]
    if args.threads is not None:
        fixed.append(Override("train.threads", args.threads))
    grids = [parse_grid(text) for text in args.grid]
    grid_keys = [grid[0].key for grid in grids]
    fixed_keys = [o.key for o in fixed]
    for key in set(grid_keys + fixed_keys):
        if grid_keys.count(key) + fixed_keys.count(key) > 1:
            raise UsageError(f"{key} is given more than once across --grid, --set and --threads")
    return plan_runs(args.config, grids, args.out), fixed


def main(argv=None):
    args = parse_arguments(argv)
    try:
        runs, fixed = build_plan(args)
        train_binary = find_binary(args.bin_dir, "lstm-train")
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    log_dir = os.path.join(args.out, "logs")
    if not args.dry_run:
        os.makedirs(log_dir, exist_ok=True)
    print(f"{len(runs)} run(s) with {train_binary}, output in {args.out}")
    started = time.monotonic()
    interrupted = False
    for number, run in enumerate(runs, start=1):
        print(f"[{number}/{len(runs)}] {run.name}", flush=True)
        try:
            execute(run, train_binary, fixed, args, log_dir)
        except KeyboardInterrupt:
            run.status = "interrupted"
            interrupted = True
        print(f"  {describe(run)}", flush=True)
        if not args.dry_run:
            write_results(runs, fixed, args.out)
        if interrupted:
            break

    failed = [run for run in runs if run.status.startswith("failed")]
    if not args.dry_run:
        print(f"wrote {os.path.join(args.out, 'results.md')} and results.csv "
              f"({format_duration(time.monotonic() - started)} in all)")
    if interrupted:
        print("interrupted: the remaining runs were not started", file=sys.stderr)
        return 128 + signal.SIGINT
    if failed:
        print(f"{len(failed)} of {len(runs)} run(s) failed: " + ", ".join(run.name for run in failed),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
