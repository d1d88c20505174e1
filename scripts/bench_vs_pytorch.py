#!/usr/bin/env python3
"""Time PyTorch training and evaluation steps for lstm-lm configs, optionally next to our C++ benchmark.

For each config the model is built as scripts/torch_lm.py builds it, with a
vocabulary of --vocab words, and fed random token ids in consecutive windows
with the hidden state carried across windows, as in training.
  train step: forward, mean cross-entropy, backward, gradient clipping (when
              train.clip_norm > 0) and the config's optimizer step (SGD unless
              train.optimizer is "adam"); batch train.batch_size.
  eval step:  forward and summed cross-entropy under torch.no_grad(), without
              dropout; batch eval.batch_size (default 10).
Both use train.bptt time steps. After --warmup untimed steps, --steps steps are
timed one by one, and the reported speed is batch * bptt / median step time.

With --ours BIN, BIN is run right after PyTorch with the same settings as
    BIN --config FILE --threads N --vocab N --steps N --warmup K --json
and must print one JSON object with train_tokens_per_s and eval_tokens_per_s.
The output is then a table of both speeds and their ratio (ours / PyTorch).

Needs PyTorch (Debian: python3-torch, run with /usr/bin/python3).
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_lm  # noqa: E402  (imports no torch at module level)


class BenchmarkError(Exception):
    pass


def load_settings(config_path):
    config = torch_lm.load_config(config_path, [])
    # The benchmark reads no data, so data.dir may be absent.
    torch_lm.set_path(config, ["data", "dir"], torch_lm.get_path(config, "data.dir", ""))
    return torch_lm.resolve_settings(config)


def random_windows(torch, vocab_size, batch_size, bptt, count):
    """Return count (inputs, targets) windows cut from one random token stream."""
    streams = torch.randint(vocab_size, (count * bptt + 1, batch_size), dtype=torch.long)
    return list(torch_lm.windows(streams, bptt))


def time_steps(step, windows, warmup):
    """Run step on each window and return the durations in seconds after warmup."""
    durations = []
    for index, (inputs, targets) in enumerate(windows):
        start = time.perf_counter()
        step(inputs, targets)
        if index >= warmup:
            durations.append(time.perf_counter() - start)
    return durations


def bench_pytorch(torch, settings, vocab_size, warmup, steps):
    """Return (train tokens/s, eval tokens/s), each from the median step time."""
    torch.manual_seed(settings["seed"])
    model = torch_lm.build_model(torch, settings, vocab_size)
    optimizer = torch_lm.make_optimizer(torch, model, settings)
    cross_entropy = torch.nn.functional.cross_entropy
    bptt = settings["bptt"]

    train_batch = settings["batch_size"]
    state = {"hidden": model.initial_state(train_batch)}

    def train_step(inputs, targets):
        hidden = torch_lm.detach_state(state["hidden"])
        logits, state["hidden"] = model(inputs, hidden)
        loss = cross_entropy(logits.view(-1, vocab_size), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        if settings["clip_norm"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings["clip_norm"])
        optimizer.step()

    model.train()
    windows = random_windows(torch, vocab_size, train_batch, bptt, warmup + steps)
    train_seconds = statistics.median(time_steps(train_step, windows, warmup))

    eval_batch = settings["eval_batch_size"]
    state["hidden"] = model.initial_state(eval_batch)

    def eval_step(inputs, targets):
        with torch.no_grad():
            logits, state["hidden"] = model(inputs, state["hidden"])
            cross_entropy(logits.view(-1, vocab_size), targets.reshape(-1), reduction="sum").item()

    model.eval()
    windows = random_windows(torch, vocab_size, eval_batch, bptt, warmup + steps)
    eval_seconds = statistics.median(time_steps(eval_step, windows, warmup))

    return train_batch * bptt / train_seconds, eval_batch * bptt / eval_seconds


def bench_ours(binary, config_path, args):
    command = [
        binary, "--config", config_path, "--threads", str(args.threads), "--vocab", str(args.vocab),
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--json",
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as error:
        raise BenchmarkError(f"cannot run {binary}: {error.strerror}") from error
    if result.returncode != 0:
        last_error_line = (result.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise BenchmarkError(f"{binary} exited with code {result.returncode}: {last_error_line}")

    # The JSON object is expected to be the whole output, or at least its last line.
    output = result.stdout.strip()
    candidates = [output] + output.splitlines()[-1:]
    for text in candidates:
        try:
            report = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(report, dict):
            break
    else:
        raise BenchmarkError(f"{binary} printed no JSON object on stdout: {output[:200]!r}")
    for key in ("train_tokens_per_s", "eval_tokens_per_s"):
        value = report.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise BenchmarkError(f"{binary} output has invalid {key}={value!r}: expected a positive number")
    return float(report["train_tokens_per_s"]), float(report["eval_tokens_per_s"])


def ratio(ours, pytorch):
    return ours / pytorch if pytorch > 0 else math.nan


def print_table(rows, show_ours):
    if show_ours:
        header = ("config", "phase", "ours tok/s", "pytorch tok/s", "ours/pytorch")
    else:
        header = ("config", "phase", "pytorch tok/s")
    lines = [header]
    for row in rows:
        for phase in ("train", "eval"):
            pytorch_speed = row["pytorch"][f"{phase}_tokens_per_s"]
            if show_ours:
                ours_speed = row["ours"][f"{phase}_tokens_per_s"]
                lines.append((
                    row["config"], phase, f"{ours_speed:.0f}", f"{pytorch_speed:.0f}",
                    f"{row['ratio'][phase]:.2f}",
                ))
            else:
                lines.append((row["config"], phase, f"{pytorch_speed:.0f}"))
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    for line in lines:
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(line[2:], widths[2:])]
        print("  ".join(cells))


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Time PyTorch train and eval steps for lstm-lm configs on random token ids, "
        "optionally next to our C++ benchmark.",
        epilog="Run with /usr/bin/python3 (needs python3-torch).",
    )
    parser.add_argument("--config", required=True, action="append", help="lstm-lm JSON config (repeatable)")
    parser.add_argument("--vocab", type=int, default=10000, help="vocabulary size in words (default 10000)")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads, also passed to --ours (default 2)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing (default 5)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per phase (default 20)")
    parser.add_argument("--ours", metavar="BIN", help="our C++ benchmark executable, run after PyTorch")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    for name in ("vocab", "threads", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print(torch_lm.TORCH_MISSING_MESSAGE.format(python=sys.executable), file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)

    rows = []
    try:
        for config_path in args.config:
            settings = load_settings(config_path)
            train_speed, eval_speed = bench_pytorch(torch, settings, args.vocab, args.warmup, args.steps)
            row = {
                "config": config_path,
                "batch_size": settings["batch_size"],
                "eval_batch_size": settings["eval_batch_size"],
                "bptt": settings["bptt"],
                "pytorch": {"train_tokens_per_s": train_speed, "eval_tokens_per_s": eval_speed},
            }
            if args.ours:
                ours_train, ours_eval = bench_ours(args.ours, config_path, args)
                row["ours"] = {"train_tokens_per_s": ours_train, "eval_tokens_per_s": ours_eval}
                row["ratio"] = {"train": ratio(ours_train, train_speed), "eval": ratio(ours_eval, eval_speed)}
            rows.append(row)
    except (torch_lm.ConfigError, BenchmarkError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    if args.json:
        report = {
            "torch_version": torch.__version__,
            "threads": args.threads,
            "vocab": args.vocab,
            "warmup": args.warmup,
            "steps": args.steps,
            "results": rows,
        }
        print(json.dumps(report))
    else:
        print(f"median over {args.steps} steps after {args.warmup} warmup steps, vocab {args.vocab}, "
              f"{args.threads} threads, torch {torch.__version__}")
        print_table(rows, bool(args.ours))
    return 0


if __name__ == "__main__":
    sys.exit(main())
