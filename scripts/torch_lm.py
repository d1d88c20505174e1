#!/usr/bin/env python3
"""Train the lstm-lm model in PyTorch from an lstm-lm JSON config, as a reference.

The model, data pipeline, initialization, optimizer and learning-rate schedule
follow the C++ trainer's config keys, so perplexities and speeds of the two can
be compared run for run.

Output on stdout, one line per epoch and one at the end:
    epoch E valid_perplexity P tokens_per_s S
    test_perplexity P
tokens_per_s counts training tokens over the epoch's training time, without the
validation pass. Warnings and the train perplexity of each epoch go to stderr.

Data: each line of DIR/ptb.{train,valid,test}.txt (or DIR/{train,valid,test}.txt)
becomes its words followed by <eos>. The vocabulary lists the words in order of
first appearance in the train split. Valid and test words missing from it
become <unk> when the vocabulary has <unk>, and are an error otherwise.
Each split is cut into B contiguous streams of floor(N/B) tokens (B is
train.batch_size for training, eval.batch_size for evaluation) and read in
windows of train.bptt steps, the last window being shorter. Targets are the
inputs shifted by one token.

Training: mean cross-entropy per window (times the window length when
train.loss_reduction is "sum_over_time"), then gradient clipping to total norm
train.clip_norm (when > 0), then an SGD or Adam step. The hidden state starts
at zero each epoch and is carried, detached, from window to window. Evaluation
does the same without dropout, and perplexity = exp(total NLL / tokens).

Learning rate (epochs numbered from 1, lr0 = train.lr, d = train.lr_decay):
  "plateau": after each epoch, lr = lr / d when the valid perplexity is not
             lower than the best one so far.
  "epoch":   epoch e uses lr0 / d ** max(0, e - train.lr_decay_start + 1), so
             epochs before lr_decay_start use lr0, epoch lr_decay_start uses
             lr0 / d, the next one lr0 / d**2, and so on.
The test perplexity is computed with the weights of the epoch that had the
lowest valid perplexity.

Initialization (model.init):
  "book":    embedding ~ N(0, 1) * 0.01; each weight matrix ~ N(0, 1) / sqrt(fan_in),
             where fan_in is its input size (weight_ih: the layer's input size,
             weight_hh: hidden_size, decoder: hidden_size); all biases zero.
  "uniform": embedding and all weight matrices ~ U(-init_range, init_range);
             all biases zero.

train.max_steps (or --max-steps) stops training after that many steps in all.
The epoch in progress is then validated and reported, and the run ends with the
test perplexity.

Config keys (defaults in parentheses): data.dir; model.cell ("lstm", "gru",
"rnn" (tanh), "rnn_relu"), model.embedding_size, model.hidden_size,
model.num_layers (1), model.dropout (0), model.tie_weights (false), model.init
("book"), model.init_range (0.1); train.batch_size (20), train.bptt (35),
train.epochs, train.max_steps (0 = no limit), train.lr, train.lr_decay (1),
train.lr_schedule ("plateau"), train.lr_decay_start (1), train.clip_norm (0 = off),
train.seed (1), train.optimizer ("sgd"), train.adam_beta1 (0.9),
train.adam_beta2 (0.999), train.adam_eps (1e-8), train.weight_decay (0);
eval.batch_size (10). Other keys are ignored.

Needs PyTorch (Debian: python3-torch, run with /usr/bin/python3).
"""

import argparse
import copy
import json
import math
import os
import sys
import time

TORCH_MISSING_MESSAGE = (
    "error: PyTorch is not available to {python}; run `sudo apt-get install python3-torch` "
    "and start this script with /usr/bin/python3"
)

CELLS = ("lstm", "gru", "rnn", "rnn_relu")
INITS = ("book", "uniform")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("plateau", "epoch")

SPLIT_FILE_NAMES = {
    "train": ("ptb.train.txt", "train.txt"),
    "valid": ("ptb.valid.txt", "valid.txt"),
    "test": ("ptb.test.txt", "test.txt"),
}


class ConfigError(Exception):
    pass


# ---------------------------------------------------------------- config


def parse_override(text):
    """Split "key.path=value" into (["key", "path"], value).

    The value is parsed as JSON when it is valid JSON, else kept as a string.
    """
    if "=" not in text:
        raise ConfigError(f"invalid --set {text!r}: expected key.path=value")
    key, raw_value = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"invalid --set {text!r}: empty key component")
    try:
        value = json.loads(raw_value)
    except json.JSONDecodeError:
        value = raw_value
    return path, value


def set_path(config, path, value):
    node = config
    for key in path[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {'.'.join(path)}: {key} is not an object")
        node = child
    node[path[-1]] = value


def get_path(config, dotted, default=None, required=False):
    node = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            if required:
                raise ConfigError(f"missing config key {dotted}")
            return default
        node = node[key]
    return node


def load_config(path, overrides):
    try:
        with open(path, encoding="utf-8") as config_file:
            config = json.load(config_file)
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror}") from error
    except json.JSONDecodeError as error:
        raise ConfigError(f"invalid JSON in {path} at line {error.lineno}: {error.msg}") from error
    if not isinstance(config, dict):
        raise ConfigError(f"invalid config {path}: the top level must be a JSON object")
    for text in overrides:
        path_keys, value = parse_override(text)
        set_path(config, path_keys, value)
    return config


def resolve_settings(config):
    """Read every key this script uses, apply defaults and check the values."""

    def number(dotted, default=None, required=False, kind=float, minimum=None):
        value = get_path(config, dotted, default, required)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"invalid {dotted}={value!r}: expected a number")
        if kind is int and value != int(value):
            raise ConfigError(f"invalid {dotted}={value!r}: expected an integer")
        value = kind(value)
        if minimum is not None and value < minimum:
            raise ConfigError(f"invalid {dotted}={value}: must be at least {minimum}")
        return value

    def choice(dotted, default, allowed):
        value = get_path(config, dotted, default)
        if value not in allowed:
            raise ConfigError(f"invalid {dotted}={value!r}: expected one of {', '.join(allowed)}")
        return value

    settings = {
        "data_dir": get_path(config, "data.dir", required=True),
        "cell": choice("model.cell", "lstm", CELLS),
        "embedding_size": number("model.embedding_size", required=True, kind=int, minimum=1),
        "hidden_size": number("model.hidden_size", required=True, kind=int, minimum=1),
        "num_layers": number("model.num_layers", 1, kind=int, minimum=1),
        "dropout": number("model.dropout", 0.0, minimum=0.0),
        "tie_weights": bool(get_path(config, "model.tie_weights", False)),
        "init": choice("model.init", "book", INITS),
        "init_range": number("model.init_range", 0.1, minimum=0.0),
        "batch_size": number("train.batch_size", 20, kind=int, minimum=1),
        "bptt": number("train.bptt", 35, kind=int, minimum=1),
        "epochs": number("train.epochs", required=True, kind=int, minimum=1),
        "max_steps": number("train.max_steps", 0, kind=int, minimum=0),
        "lr": number("train.lr", required=True, minimum=0.0),
        "lr_decay": number("train.lr_decay", 1.0),
        "lr_schedule": choice("train.lr_schedule", "plateau", LR_SCHEDULES),
        "lr_decay_start": number("train.lr_decay_start", 1, kind=int, minimum=1),
        "clip_norm": number("train.clip_norm", 0.0, minimum=0.0),
        "loss_reduction": choice("train.loss_reduction", "mean", ("mean", "sum_over_time")),
        "seed": number("train.seed", 1, kind=int),
        "optimizer": choice("train.optimizer", "sgd", OPTIMIZERS),
        "adam_beta1": number("train.adam_beta1", 0.9, minimum=0.0),
        "adam_beta2": number("train.adam_beta2", 0.999, minimum=0.0),
        "adam_eps": number("train.adam_eps", 1e-8, minimum=0.0),
        "weight_decay": number("train.weight_decay", 0.0, minimum=0.0),
        "eval_batch_size": number("eval.batch_size", 10, kind=int, minimum=1),
    }
    if not isinstance(settings["data_dir"], str):
        raise ConfigError(f"invalid data.dir={settings['data_dir']!r}: expected a path string")
    if settings["dropout"] >= 1.0:
        raise ConfigError(f"invalid model.dropout={settings['dropout']}: must be below 1")
    if settings["lr_decay"] <= 0.0:
        raise ConfigError(f"invalid train.lr_decay={settings['lr_decay']}: must be positive")
    if settings["tie_weights"] and settings["embedding_size"] != settings["hidden_size"]:
        raise ConfigError(
            "model.tie_weights needs model.embedding_size == model.hidden_size, got "
            f"{settings['embedding_size']} and {settings['hidden_size']}"
        )
    if get_path(config, "model.variational_dropout", False):
        print(
            "warning: model.variational_dropout is ignored because nn.LSTM/GRU/RNN only have "
            "ordinary dropout; results will differ from a variational-dropout run",
            file=sys.stderr,
        )
    return settings


# ---------------------------------------------------------------- data


def find_split_file(data_dir, split):
    for name in SPLIT_FILE_NAMES[split]:
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            return path
    names = " nor ".join(SPLIT_FILE_NAMES[split])
    raise ConfigError(f"{split} split not found: {data_dir} contains neither {names} (set data.dir)")


def read_words(path):
    words = []
    with open(path, encoding="utf-8") as text:
        for line in text:
            words.extend(line.split())
            words.append("<eos>")
    return words


def build_vocabulary(words):
    """Map each word to an id in order of first appearance."""
    word_to_id = {}
    for word in words:
        if word not in word_to_id:
            word_to_id[word] = len(word_to_id)
    return word_to_id


def words_to_ids(words, word_to_id, path):
    unk_id = word_to_id.get("<unk>")
    ids = []
    unknown_count = 0
    for word in words:
        word_id = word_to_id.get(word)
        if word_id is None:
            if unk_id is None:
                raise ConfigError(f"word {word!r} in {path} is not in the train vocabulary, which has no <unk>")
            word_id = unk_id
            unknown_count += 1
        ids.append(word_id)
    if unknown_count:
        print(f"warning: {unknown_count} words of {path} are not in the train vocabulary; read as <unk>", file=sys.stderr)
    return ids


def load_corpus(torch, data_dir):
    """Return (vocabulary size, {split: 1-D LongTensor of token ids})."""
    paths = {split: find_split_file(data_dir, split) for split in SPLIT_FILE_NAMES}
    train_words = read_words(paths["train"])
    word_to_id = build_vocabulary(train_words)
    splits = {"train": torch.tensor([word_to_id[word] for word in train_words], dtype=torch.long)}
    for split in ("valid", "test"):
        ids = words_to_ids(read_words(paths[split]), word_to_id, paths[split])
        splits[split] = torch.tensor(ids, dtype=torch.long)
    return len(word_to_id), splits


def batchify(ids, batch_size):
    """Cut ids into batch_size contiguous streams: a (floor(N/B), B) tensor."""
    stream_length = ids.size(0) // batch_size
    if stream_length < 2:
        raise ConfigError(f"a split of {ids.size(0)} tokens is too short for batch size {batch_size}")
    return ids[: stream_length * batch_size].view(batch_size, stream_length).t().contiguous()


def windows(streams, bptt):
    """Yield (inputs, targets) windows of at most bptt time steps."""
    last_input = streams.size(0) - 1
    for start in range(0, last_input, bptt):
        length = min(bptt, last_input - start)
        yield streams[start : start + length], streams[start + 1 : start + 1 + length]


# ---------------------------------------------------------------- model


def build_model(torch, settings, vocab_size):
    nn = torch.nn

    class LanguageModel(nn.Module):
        def __init__(self):
            super().__init__()
            embedding_size, hidden_size = settings["embedding_size"], settings["hidden_size"]
            num_layers = settings["num_layers"]
            self.cell = settings["cell"]
            self.num_layers = num_layers
            self.hidden_size = hidden_size
            self.embedding = nn.Embedding(vocab_size, embedding_size)
            self.dropout = nn.Dropout(settings["dropout"])
            # nn.LSTM etc. warn when given dropout with a single layer.
            between_layers = settings["dropout"] if num_layers > 1 else 0.0
            if self.cell == "lstm":
                self.rnn = nn.LSTM(embedding_size, hidden_size, num_layers, dropout=between_layers)
            elif self.cell == "gru":
                self.rnn = nn.GRU(embedding_size, hidden_size, num_layers, dropout=between_layers)
            else:
                nonlinearity = "relu" if self.cell == "rnn_relu" else "tanh"
                self.rnn = nn.RNN(
                    embedding_size, hidden_size, num_layers, nonlinearity=nonlinearity, dropout=between_layers
                )
            self.decoder = nn.Linear(hidden_size, vocab_size)
            if settings["tie_weights"]:
                self.decoder.weight = self.embedding.weight

        def initial_state(self, batch_size):
            zeros = torch.zeros(self.num_layers, batch_size, self.hidden_size)
            if self.cell == "lstm":
                return (zeros, zeros.clone())
            return zeros

        def forward(self, inputs, state):
            embedded = self.dropout(self.embedding(inputs))
            output, state = self.rnn(embedded, state)
            return self.decoder(self.dropout(output)), state

    model = LanguageModel()
    initialize(torch, model, settings)
    return model


def initialize(torch, model, settings):
    with torch.no_grad():
        if settings["init"] == "uniform":
            bound = settings["init_range"]
            for name, parameter in model.named_parameters():
                if name.endswith("bias") or "bias_" in name:
                    parameter.zero_()
                else:
                    parameter.uniform_(-bound, bound)
            return

        # "book": scale each matrix by 1/sqrt(fan_in); nn.LSTM's weight_ih_l{k}
        # has shape (gates * H, input size), so fan_in is its second dimension.
        # The decoder is set before the embedding, so with tied weights the
        # shared matrix ends up with the embedding's N(0, 1) * 0.01.
        # NOTE: that choice for tied weights must match the C++ trainer's.
        for name, parameter in model.rnn.named_parameters():
            if name.startswith("weight_"):
                parameter.normal_(0.0, 1.0 / math.sqrt(parameter.size(1)))
            else:
                parameter.zero_()
        model.decoder.weight.normal_(0.0, 1.0 / math.sqrt(settings["hidden_size"]))
        model.decoder.bias.zero_()
        model.embedding.weight.normal_(0.0, 0.01)


def detach_state(state):
    if isinstance(state, tuple):
        return tuple(tensor.detach() for tensor in state)
    return state.detach()


# ---------------------------------------------------------------- training


def evaluate(torch, model, streams, bptt):
    """Return the perplexity of the model on batchified streams."""
    model.eval()
    state = model.initial_state(streams.size(1))
    total_nll = 0.0
    token_count = 0
    with torch.no_grad():
        for inputs, targets in windows(streams, bptt):
            logits, state = model(inputs, state)
            total_nll += torch.nn.functional.cross_entropy(
                logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction="sum"
            ).item()
            token_count += targets.numel()
    return math.exp(total_nll / token_count)


def make_optimizer(torch, model, settings):
    if settings["optimizer"] == "adam":
        return torch.optim.Adam(
            model.parameters(),
            lr=settings["lr"],
            betas=(settings["adam_beta1"], settings["adam_beta2"]),
            eps=settings["adam_eps"],
            weight_decay=settings["weight_decay"],
        )
    return torch.optim.SGD(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])


def train_epoch(torch, model, optimizer, streams, settings, steps_done):
    """Run one epoch of training, stopping early at max_steps.

    Returns (steps done in all, train perplexity, tokens per second).
    """
    model.train()
    state = model.initial_state(streams.size(1))
    total_nll = 0.0
    token_count = 0
    start = time.perf_counter()
    for inputs, targets in windows(streams, settings["bptt"]):
        if settings["max_steps"] and steps_done >= settings["max_steps"]:
            break
        state = detach_state(state)
        logits, state = model(inputs, state)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        optimizer.zero_grad()
        if settings["loss_reduction"] == "sum_over_time":
            # Summed over the window's steps, averaged over the streams.
            (loss * inputs.size(0)).backward()
        else:
            loss.backward()
        if settings["clip_norm"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings["clip_norm"])
        optimizer.step()
        steps_done += 1
        total_nll += loss.item() * targets.numel()
        token_count += targets.numel()
    elapsed = time.perf_counter() - start
    train_perplexity = math.exp(total_nll / token_count) if token_count else float("nan")
    tokens_per_s = token_count / elapsed if elapsed > 0 else 0.0
    return steps_done, train_perplexity, tokens_per_s


def epoch_lr(settings, epoch):
    """Return the "epoch" schedule's lr for 1-based epoch."""
    exponent = max(0, epoch - settings["lr_decay_start"] + 1)
    return settings["lr"] / settings["lr_decay"] ** exponent


def run(torch, settings):
    torch.manual_seed(settings["seed"])
    vocab_size, corpus = load_corpus(torch, settings["data_dir"])
    train_streams = batchify(corpus["train"], settings["batch_size"])
    valid_streams = batchify(corpus["valid"], settings["eval_batch_size"])
    test_streams = batchify(corpus["test"], settings["eval_batch_size"])
    print(f"vocabulary {vocab_size} words, train {corpus['train'].numel()} tokens", file=sys.stderr)

    model = build_model(torch, settings, vocab_size)
    optimizer = make_optimizer(torch, model, settings)
    lr = settings["lr"]
    best_perplexity = math.inf
    best_state = copy.deepcopy(model.state_dict())
    steps_done = 0

    for epoch in range(1, settings["epochs"] + 1):
        if settings["lr_schedule"] == "epoch":
            lr = epoch_lr(settings, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr

        steps_done, train_perplexity, tokens_per_s = train_epoch(
            torch, model, optimizer, train_streams, settings, steps_done
        )
        valid_perplexity = evaluate(torch, model, valid_streams, settings["bptt"])
        print(f"epoch {epoch} valid_perplexity {valid_perplexity:.2f} tokens_per_s {tokens_per_s:.0f}", flush=True)
        print(f"epoch {epoch} train_perplexity {train_perplexity:.2f} lr {lr:g} steps {steps_done}", file=sys.stderr)

        if valid_perplexity < best_perplexity:
            best_perplexity = valid_perplexity
            best_state = copy.deepcopy(model.state_dict())
        elif settings["lr_schedule"] == "plateau":
            lr /= settings["lr_decay"]
        if settings["max_steps"] and steps_done >= settings["max_steps"]:
            break

    model.load_state_dict(best_state)
    test_perplexity = evaluate(torch, model, test_streams, settings["bptt"])
    print(f"test_perplexity {test_perplexity:.2f}", flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Train the lstm-lm model in PyTorch from an lstm-lm JSON config (reference runs).",
        epilog="Run with /usr/bin/python3 (needs python3-torch). See the module docstring for the exact schedule.",
    )
    parser.add_argument("--config", required=True, help="lstm-lm JSON config file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config key; VALUE is parsed as JSON, else taken as a string (repeatable)",
    )
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--threads", type=int, help="number of intra-op threads for PyTorch (default: PyTorch's)")
    parser.add_argument("--max-steps", type=int, help="override train.max_steps: stop after N training steps in all")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print(TORCH_MISSING_MESSAGE.format(python=sys.executable), file=sys.stderr)
        return 2

    try:
        overrides = list(args.set)
        if args.epochs is not None:
            overrides.append(f"train.epochs={args.epochs}")
        if args.max_steps is not None:
            overrides.append(f"train.max_steps={args.max_steps}")
        settings = resolve_settings(load_config(args.config, overrides))
        if args.threads is not None:
            if args.threads < 1:
                raise ConfigError(f"invalid --threads {args.threads}: must be at least 1")
            torch.set_num_threads(args.threads)
        run(torch, settings)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
