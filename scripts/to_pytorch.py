#!/usr/bin/env python3
"""Load an lstm-lm checkpoint into PyTorch modules and evaluate its perplexity.

The checkpoint is read with the reader in this file (json, struct and numpy),
so the `safetensors` package is not needed. The checksum is verified unless
--no-checksum is given. docs/checkpoint-format.md describes the file.

Modules built (V words, E embedding size, H hidden size, L layers):
  embedding  nn.Embedding(V, E), weight = embedding.weight
  rnn        nn.LSTM / nn.RNN(nonlinearity "tanh" or "relu") with L layers:
               weight_ih_l{k} = rnn.{k}.weight_x transposed,
               weight_hh_l{k} = rnn.{k}.weight_h transposed,
               bias_ih_l{k} = rnn.{k}.bias, bias_hh_l{k} = 0.
             For lstm the gate blocks are reordered from lstm-lm's f, i, o, g
             to PyTorch's i, f, g, o.
             For gru, ChoGRU below (an explicit loop over time steps).
  decoder    nn.Linear(H, V), weight = decoder.weight, or the embedding's
             Parameter itself when model.tie_weights is true; bias = decoder.bias.

Why gru is not nn.GRU: lstm-lm computes the candidate as in Cho et al. (2014),
n = tanh(x Wx_n + (r * h) Wh_n + b_n), so the reset gate scales h before the
product. PyTorch's nn.GRU (as of 1.13) computes
n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), which applies r after the
product. The two agree only in special cases (such as a diagonal Wh_n), so
a Cho GRU's weights cannot in general be loaded into nn.GRU.

Evaluation is lstm-eval's: the split is read as words plus <eos> per non-blank
line, mapped to ids with the checkpoint's vocabulary (unknown words become
data.unk_token when it is set, else they are an error), cut into B streams of
floor(N / B) tokens and read in windows of eval.bptt steps with the state
carried from zero. (floor(N / B) - 1) * B tokens are scored and
perplexity = exp(mean cross-entropy per token).

Usage:
  to_pytorch.py CHECKPOINT [--data SPLIT_OR_FILE] [--batch-size N] [--json]
CHECKPOINT is a .safetensors file or a run directory, whose
checkpoints/best.safetensors is read. Split files are found from the stored
config's data.dir (or data.train/valid/test), relative to the current
directory, as lstm-eval does.

The functions read_checkpoint() and build_model() can be imported to use the
model elsewhere. Needs PyTorch and numpy (Debian: python3-torch; run with
/usr/bin/python3).
"""

import argparse
import json
import math
import os
import re
import struct
import sys

FORMAT_NAME = "lstm-lm"
FORMAT_VERSION = "1"
END_OF_SENTENCE = "<eos>"
CELLS = ("rnn", "rnn_relu", "lstm", "gru")
SPLITS = ("train", "valid", "test")

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
UINT64_MASK = (1 << 64) - 1

# Words are separated by these bytes only, as in lstm-lm's reader. str.split()
# would also split on other Unicode spaces.
WORD_SEPARATORS = re.compile("[ \t\r\v\f]+")

# PyTorch's nn.LSTM stacks the gates as i, f, g, o, and lstm-lm stacks them as
# f, i, o, g. Entry k is the lstm-lm block that becomes PyTorch block k.
LSTM_GATE_ORDER = (1, 0, 3, 2)


class CheckpointError(Exception):
    pass


class DataError(Exception):
    pass


def import_modules():
    """Import numpy and torch, or exit with status 2 naming the package to install."""
    # Debian's python3-torch depends on python3-numpy, so torch is checked first.
    try:
        import torch
    except ImportError:
        print(f"error: PyTorch is not available to {sys.executable}; run `sudo apt-get install "
              "python3-torch` and start this script with /usr/bin/python3", file=sys.stderr)
        sys.exit(2)
    try:
        import numpy
    except ImportError:
        print(f"error: numpy is not available to {sys.executable}; run `sudo apt-get install "
              "python3-numpy` and start this script with /usr/bin/python3", file=sys.stderr)
        sys.exit(2)
    return numpy, torch


# ---------------------------------------------------------------- checkpoint


def fnv1a_64(data, value=FNV_OFFSET):
    """Return the 64-bit FNV-1a hash of data, continued from value."""
    for byte in data:
        value = ((value ^ byte) * FNV_PRIME) & UINT64_MASK
    return value


def checkpoint_checksum(data, metadata):
    """Compute the checksum that lstm-lm stores in metadata["checksum"].

    FNV-1a 64 over the data section, then over each other metadata key and its
    value (UTF-8, keys in byte order), each followed by a NUL byte.
    """
    value = fnv1a_64(data)
    items = sorted((key.encode("utf-8"), text.encode("utf-8"))
                   for key, text in metadata.items() if key != "checksum")
    for key, text in items:
        value = fnv1a_64(key + b"\0", value)
        value = fnv1a_64(text + b"\0", value)
    return f"{value:016x}"


def resolve_checkpoint_path(path):
    """Return path, or path/checkpoints/best.safetensors when path is a directory."""
    if os.path.isdir(path):
        return os.path.join(path, "checkpoints", "best.safetensors")
    return path


def read_safetensors(path, numpy, verify_checksum=True):
    """Read a safetensors file of F32 tensors.

    Returns ({name: float32 array in the stored shape}, {metadata key: value}).
    Raises CheckpointError naming the file and the problem.
    """
    def invalid(what):
        return CheckpointError(f"invalid checkpoint {path}: {what}")

    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path} (give a .safetensors file or a run directory)")
    with open(path, "rb") as stream:
        content = stream.read()
    if len(content) < 8:
        raise invalid(f"file is {len(content)} bytes, shorter than the 8-byte header length (truncated?)")
    (header_size,) = struct.unpack("<Q", content[:8])
    if header_size > len(content) - 8:
        raise invalid(f"header length {header_size} runs past the end of the {len(content)}-byte file "
                      "(truncated or not a safetensors file)")
    try:
        header = json.loads(content[8:8 + header_size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise invalid(f"header is not valid JSON: {error}") from error
    if not isinstance(header, dict):
        raise invalid("header is not a JSON object")
    data = content[8 + header_size:]

    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise invalid("__metadata__ is not an object of strings")

    tensors = {}
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise invalid(f'tensor "{name}" lacks dtype, shape or data_offsets')
        if info["dtype"] != "F32":
            raise invalid(f'tensor "{name}" has dtype {info["dtype"]!r}, expected "F32"')
        shape = info["shape"]
        offsets = info["data_offsets"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise invalid(f'tensor "{name}" has invalid shape {shape!r}')
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets)):
            raise invalid(f'tensor "{name}" has invalid data_offsets {offsets!r}')
        begin, end = offsets
        if not 0 <= begin <= end <= len(data):
            raise invalid(f'tensor "{name}" offsets [{begin}, {end}) run past the {len(data)}-byte '
                          "data section (truncated?)")
        if end - begin != 4 * math.prod(shape):
            raise invalid(f'tensor "{name}" spans {end - begin} bytes but its shape {shape} '
                          f"needs {4 * math.prod(shape)}")
        values = numpy.frombuffer(data, dtype="<f4", count=math.prod(shape), offset=begin)
        tensors[name] = values.astype(numpy.float32).reshape(shape)

    stored = metadata.get("checksum")
    if verify_checksum and stored is not None:
        computed = checkpoint_checksum(data, metadata)
        if computed != stored:
            raise invalid(f"checksum mismatch (stored {stored}, computed {computed}): "
                          "the file is damaged; use another checkpoint")
    return tensors, metadata


def read_checkpoint(path, numpy, verify_checksum=True):
    """Read an lstm-lm checkpoint.

    Returns (tensors, config, vocab): the tensors by name, the resolved config
    as a dict and the vocabulary as a list of words (index = id).
    """
    tensors, metadata = read_safetensors(path, numpy, verify_checksum)

    def invalid(what):
        return CheckpointError(f"invalid checkpoint {path}: {what}")

    if metadata.get("format") != FORMAT_NAME:
        raise invalid(f'metadata "format" is {metadata.get("format")!r}, expected "{FORMAT_NAME}" '
                      "(not an lstm-lm checkpoint)")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise invalid(f"unsupported format version {metadata.get('format_version')!r}, "
                      f"this script reads version {FORMAT_VERSION}")
    if verify_checksum and "checksum" not in metadata:
        raise invalid("checksum is missing")
    for key in ("config", "vocab"):
        if key not in metadata:
            raise invalid(f'metadata "{key}" is missing')
    try:
        config = json.loads(metadata["config"])
        vocab = json.loads(metadata["vocab"])
    except json.JSONDecodeError as error:
        raise invalid(f"config or vocabulary metadata is malformed: {error}") from error
    if not isinstance(vocab, list) or not vocab or not all(isinstance(w, str) for w in vocab):
        raise invalid("the vocabulary is not a non-empty JSON array of strings")
    return tensors, config, vocab


# ---------------------------------------------------------------- model


def model_settings(config, path):
    """Return the model section of a stored config, checked."""
    model = config.get("model", {})
    try:
        settings = {
            "cell": model["cell"],
            "embedding_size": int(model["embedding_size"]),
            "hidden_size": int(model["hidden_size"]),
            "num_layers": int(model["num_layers"]),
            "tie_weights": bool(model.get("tie_weights", False)),
        }
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"invalid checkpoint {path}: stored config lacks a valid model key: {error}") from error
    if settings["cell"] not in CELLS:
        raise CheckpointError(f"invalid checkpoint {path}: model.cell {settings['cell']!r} is not one of "
                              f"{', '.join(CELLS)}")
    return settings


def gate_rows(cell, hidden_size):
    return {"rnn": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}[cell] * hidden_size


def expected_shapes(settings, vocab_size):
    """Return {tensor name: shape} of every parameter the config needs."""
    V, E, H = vocab_size, settings["embedding_size"], settings["hidden_size"]
    G = gate_rows(settings["cell"], H)
    shapes = {"embedding.weight": [V, E], "decoder.bias": [V]}
    for layer in range(settings["num_layers"]):
        shapes[f"rnn.{layer}.weight_x"] = [E if layer == 0 else H, G]
        shapes[f"rnn.{layer}.weight_h"] = [H, G]
        shapes[f"rnn.{layer}.bias"] = [G]
    if not settings["tie_weights"]:
        shapes["decoder.weight"] = [V, H]
    return shapes


def define_modules(torch):
    """Define the module classes, which need the torch module imported by import_modules()."""
    nn = torch.nn

    class ChoGRU(nn.Module):
        """Stacked GRU with lstm-lm's (Cho et al.) candidate, time-major input [T, B, I].

        Per layer, with gate blocks z, r, n along the last dimension:
          [z, r] = sigmoid(x Wx_zr + h Wh_zr + b_zr)
          n      = tanh(x Wx_n + (r * h) Wh_n + b_n)
          h'     = z * h + (1 - z) * n
        Parameters keep the checkpoint layout: weight_x [I, 3H], weight_h [H, 3H], bias [3H].
        """

        def __init__(self, input_size, hidden_size, num_layers):
            super().__init__()
            self.hidden_size = hidden_size
            self.num_layers = num_layers
            for layer in range(num_layers):
                size_in = input_size if layer == 0 else hidden_size
                self.register_parameter(f"weight_x_l{layer}",
                                        nn.Parameter(torch.zeros(size_in, 3 * hidden_size)))
                self.register_parameter(f"weight_h_l{layer}",
                                        nn.Parameter(torch.zeros(hidden_size, 3 * hidden_size)))
                self.register_parameter(f"bias_l{layer}", nn.Parameter(torch.zeros(3 * hidden_size)))

        def forward(self, inputs, state=None):
            """Return (outputs [T, B, H], final state [L, B, H])."""
            H = self.hidden_size
            if state is None:
                state = inputs.new_zeros(self.num_layers, inputs.shape[1], H)
            layer_input = inputs
            final = []
            for layer in range(self.num_layers):
                weight_x = getattr(self, f"weight_x_l{layer}")
                weight_h = getattr(self, f"weight_h_l{layer}")
                bias = getattr(self, f"bias_l{layer}")
                projected = layer_input @ weight_x + bias  # [T, B, 3H] for all steps at once
                h = state[layer]
                outputs = []
                for t in range(layer_input.shape[0]):
                    zr = torch.sigmoid(projected[t, :, :2 * H] + h @ weight_h[:, :2 * H])
                    z, r = zr[:, :H], zr[:, H:]
                    n = torch.tanh(projected[t, :, 2 * H:] + (r * h) @ weight_h[:, 2 * H:])
                    h = z * h + (1.0 - z) * n
                    outputs.append(h)
                layer_input = torch.stack(outputs)
                final.append(h)
            return layer_input, torch.stack(final)

    class CheckpointLanguageModel(nn.Module):
        """Embedding, recurrent layers and decoder, mapping ids [T, B] to logits [T, B, V]."""

        def __init__(self, settings, vocab_size):
            super().__init__()
            E, H, L = settings["embedding_size"], settings["hidden_size"], settings["num_layers"]
            self.cell = settings["cell"]
            self.embedding = nn.Embedding(vocab_size, E)
            if self.cell == "lstm":
                self.rnn = nn.LSTM(E, H, num_layers=L)
            elif self.cell == "gru":
                self.rnn = ChoGRU(E, H, L)
            else:
                self.rnn = nn.RNN(E, H, num_layers=L,
                                  nonlinearity="relu" if self.cell == "rnn_relu" else "tanh")
            self.decoder = nn.Linear(H, vocab_size)
            if settings["tie_weights"]:
                self.decoder.weight = self.embedding.weight

        def forward(self, ids, state=None):
            """Return (logits [T, B, V], state) for ids [T, B]; state None starts from zero."""
            outputs, state = self.rnn(self.embedding(ids), state)
            return self.decoder(outputs), state

    return CheckpointLanguageModel


def build_model(tensors, config, vocab, torch, path="checkpoint"):
    """Build a CheckpointLanguageModel (in eval mode) holding the checkpoint's weights."""
    settings = model_settings(config, path)
    for name, shape in expected_shapes(settings, len(vocab)).items():
        if name not in tensors:
            raise CheckpointError(f'invalid checkpoint {path}: tensor "{name}" is missing')
        if list(tensors[name].shape) != shape:
            raise CheckpointError(f'invalid checkpoint {path}: tensor "{name}" has shape '
                                  f"{list(tensors[name].shape)} but its config needs {shape}")

    model = define_modules(torch)(settings, len(vocab))
    H = settings["hidden_size"]

    def as_tensor(name):
        return torch.from_numpy(tensors[name].copy())

    def reorder_lstm_gates(matrix):
        """Reorder the gate blocks along dimension 0 from f, i, o, g to i, f, g, o."""
        blocks = matrix.split(H, dim=0)
        return torch.cat([blocks[k] for k in LSTM_GATE_ORDER], dim=0)

    with torch.no_grad():
        model.embedding.weight.copy_(as_tensor("embedding.weight"))
        for layer in range(settings["num_layers"]):
            weight_x = as_tensor(f"rnn.{layer}.weight_x")  # [I, G]
            weight_h = as_tensor(f"rnn.{layer}.weight_h")  # [H, G]
            bias = as_tensor(f"rnn.{layer}.bias")          # [G]
            if settings["cell"] == "gru":
                getattr(model.rnn, f"weight_x_l{layer}").copy_(weight_x)
                getattr(model.rnn, f"weight_h_l{layer}").copy_(weight_h)
                getattr(model.rnn, f"bias_l{layer}").copy_(bias)
                continue
            weight_ih, weight_hh = weight_x.t(), weight_h.t()  # PyTorch stores [G, I] and [G, H]
            if settings["cell"] == "lstm":
                weight_ih = reorder_lstm_gates(weight_ih)
                weight_hh = reorder_lstm_gates(weight_hh)
                bias = reorder_lstm_gates(bias)
            getattr(model.rnn, f"weight_ih_l{layer}").copy_(weight_ih)
            getattr(model.rnn, f"weight_hh_l{layer}").copy_(weight_hh)
            getattr(model.rnn, f"bias_ih_l{layer}").copy_(bias)
            getattr(model.rnn, f"bias_hh_l{layer}").zero_()
        if not settings["tie_weights"]:
            model.decoder.weight.copy_(as_tensor("decoder.weight"))
        model.decoder.bias.copy_(as_tensor("decoder.bias"))
    model.eval()
    return model


# ---------------------------------------------------------------- data


def resolve_data_path(data, config):
    """Return the file of split `data` of the config, or `data` itself when it is not a split name."""
    if data not in SPLITS:
        return data
    section = config.get("data", {})
    explicit = section.get(data, "")
    if explicit:
        return explicit
    folder = section.get("dir", "")
    for name in (f"{data}.txt", f"ptb.{data}.txt"):
        candidate = os.path.join(folder, name)
        if os.path.exists(candidate):
            return candidate
    if not os.path.isdir(folder):
        raise DataError(f"data folder not found: {folder!r} (relative to {os.getcwd()}); run this script "
                        "from the directory lstm-train ran in, or pass --data FILE")
    raise DataError(f"no {data} split in {folder}: expected {data}.txt or ptb.{data}.txt, or pass --data FILE")


def read_tokens(path):
    """Return the words of each non-blank line of path, each line followed by <eos>."""
    if not os.path.isfile(path):
        raise DataError(f"data file not found: {path}")
    with open(path, "rb") as stream:
        raw = stream.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"invalid UTF-8 in {path} at file offset {error.start}: convert the file to UTF-8") from error
    tokens = []
    for line in text.split("\n"):
        words = [word for word in WORD_SEPARATORS.split(line) if word]
        if words:
            tokens.extend(words)
            tokens.append(END_OF_SENTENCE)
    if not tokens:
        raise DataError(f"data file {path} contains no words: give a non-empty corpus")
    return tokens


def encode(tokens, vocab, unk_token, path):
    """Return (ids, number of words mapped to unk_token)."""
    index = {word: i for i, word in enumerate(vocab)}
    unk_id = index.get(unk_token, -1) if unk_token else -1
    ids = []
    unk_mapped = 0
    for word in tokens:
        word_id = index.get(word, -1)
        if word_id < 0:
            if unk_id < 0:
                raise DataError(f'word "{word}" in {path} is not in the train vocabulary: set data.unk_token '
                                "to map unseen words")
            word_id = unk_id
            unk_mapped += 1
        ids.append(word_id)
    return ids, unk_mapped


# ---------------------------------------------------------------- evaluation


def evaluate(model, ids, batch_size, bptt, torch):
    """Return (summed loss in nats, tokens scored) as lstm-eval computes them."""
    stream_length = len(ids) // batch_size
    positions = stream_length - 1
    if positions < 1:
        raise DataError(f"a split of {len(ids)} tokens is too short for {batch_size} evaluation streams: "
                        "lower --batch-size")
    # Column b of the [S, B] matrix is stream b, ids[b*S : (b+1)*S].
    streams = torch.tensor(ids[:stream_length * batch_size], dtype=torch.long)
    streams = streams.view(batch_size, stream_length).t().contiguous()
    loss_sum = 0.0
    state = None
    with torch.no_grad():
        for position in range(0, positions, bptt):
            steps = min(bptt, positions - position)
            inputs = streams[position:position + steps]
            targets = streams[position + 1:position + 1 + steps]
            logits, state = model(inputs, state)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                     targets.reshape(-1), reduction="none")
            loss_sum += loss.double().sum().item()
    return loss_sum, positions * batch_size


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Load an lstm-lm checkpoint into PyTorch and evaluate its perplexity "
                    "the way lstm-eval does.")
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="checkpoint file, or a run directory (its checkpoints/best.safetensors)")
    parser.add_argument("--data", default="test",
                        help="split of the checkpoint's config (train, valid, test) or a text file "
                             "(default: test)")
    parser.add_argument("--batch-size", type=positive_int,
                        help="evaluation streams (default: eval.batch_size of the stored config, else 10)")
    parser.add_argument("--bptt", type=positive_int,
                        help="window length in steps; does not change the result "
                             "(default: eval.bptt of the stored config, else 35)")
    parser.add_argument("--threads", type=positive_int, help="PyTorch intra-op threads (default: PyTorch's)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: perplexity, loss (nats per token), tokens")
    parser.add_argument("--no-checksum", action="store_true",
                        help="skip the checksum check (it hashes the file in pure Python, "
                             "roughly a few MB/s)")
    parser.add_argument("--save", metavar="OUT.pt",
                        help="also write the model's state_dict, config and vocabulary with torch.save")
    args = parser.parse_args(argv)

    numpy, torch = import_modules()
    if args.threads:
        torch.set_num_threads(args.threads)

    path = resolve_checkpoint_path(args.checkpoint)
    try:
        tensors, config, vocab = read_checkpoint(path, numpy, verify_checksum=not args.no_checksum)
        model = build_model(tensors, config, vocab, torch, path)
        eval_section = config.get("eval", {})
        batch_size = args.batch_size or int(eval_section.get("batch_size", 10))
        bptt = args.bptt or int(eval_section.get("bptt", 35))
        data_path = resolve_data_path(args.data, config)
        ids, unk_mapped = encode(read_tokens(data_path), vocab, config.get("data", {}).get("unk_token", ""),
                                 data_path)
        loss_sum, tokens = evaluate(model, ids, batch_size, bptt, torch)
    except (CheckpointError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: cannot read {error.filename}: {error.strerror}", file=sys.stderr)
        return 1

    if args.save:
        try:
            torch.save({"state_dict": model.state_dict(), "config": config, "vocab": vocab}, args.save)
        except OSError as error:
            print(f"error: cannot write {args.save}: {error.strerror}", file=sys.stderr)
            return 1

    loss = loss_sum / tokens
    perplexity = math.exp(loss)
    if args.json:
        print(json.dumps({"perplexity": perplexity, "loss": loss, "tokens": tokens, "unk_mapped": unk_mapped,
                          "data": data_path, "checkpoint": path, "batch_size": batch_size}))
    else:
        print(f"{data_path}: perplexity {perplexity:.4f} (loss {loss:.6f} nats/token over {tokens} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
