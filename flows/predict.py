"""Classify text with a run's INT8 model, straight from the artifact store.

    python flows/predict.py "i feel wonderful today" "this is so unfair"
    python flows/predict.py --model sst2/latest --file reviews.txt
    python flows/predict.py --name reviews "great value, arrived late"   # = --model reviews/production
    echo "what a lovely surprise" | python flows/predict.py --model 3ee42f85f2fb

By default the workload's production model (`<name>/production`, moved only when a run
is promoted: artifacts/promotions.py); with none, a clear error naming `distillery promote`
(never the latest run unasked: it may be one the gate refused).
--model is an alias (`<workload>/latest`, `<workload>/production`, both run records),
or a full digest or unique digest prefix of a run record or of a run's INT8 model. The run record names the model (role `student_int8`) and the tokens it was
trained on (role `student_tokens`), whose tokenizer and settings encode the text
(tasks/data/encoding.py, as the pipeline did). Prints one JSON line per text:
{"text", "label", "scores"}.

Everything the user gave is checked before the model is loaded: a missing store,
alias or file, a text that is empty, or an artifact that is not an INT8 model each
stop the command with exit status 2 and a message naming the fix.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, TextIO

import numpy as np

from artifacts.edge import add_store_argument, bad_input
from artifacts.runs import INT8_ROLE, RunRecord, find_run
from artifacts.store import ArtifactStore, StoreError
from tasks.errors import DistilleryError

MODEL_ROLE, TOKENS_ROLE = INT8_ROLE, "student_tokens"


@dataclass
class Classifier:
    session: object
    encoder: object  # tasks.data.encoding.Encoder
    labels: list[str]

    def scores(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        from tasks.data.batching import pad

        out = []
        for start in range(0, len(texts), batch_size):
            sequences = self.encoder.encode(texts[start : start + batch_size])
            ids, mask = (t.numpy() for t in pad(sequences, range(len(sequences)), self.encoder.pad_id))
            logits = self.session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
            exp = np.exp(logits - logits.max(1, keepdims=True))
            out.append(exp / exp.sum(1, keepdims=True))
        return np.concatenate(out)


def load_classifier(store: ArtifactStore, run: RunRecord) -> Classifier:
    """The run's INT8 model, and the encoder of the tokens it was trained on."""
    from tasks.data.encoding import encoder_of
    from tasks.formats import onnx_file, open_tokens
    from tasks.onnx.session import onnx_session

    tokens = open_tokens(store.open(run.role(TOKENS_ROLE)))
    session = onnx_session(onnx_file(store.open(run.role(MODEL_ROLE))))
    return Classifier(session, encoder_of(tokens), tokens.labels)


def read_texts(args_texts: list[str], file: str | None, stdin: TextIO) -> list[tuple[str, str]]:
    """(where, text) pairs from arguments, a file (one text per line) or stdin; all checked."""
    if args_texts and file:
        raise DistilleryError("give texts as arguments or with --file, not both")
    if args_texts:
        items = [(f"argument {i}", t) for i, t in enumerate(args_texts, 1)]
    elif file and file != "-":
        path = Path(file)
        if not path.is_file():
            raise DistilleryError(f"--file {file}: no such file" + (" (it is a folder)" if path.is_dir() else "")
                                  + "; pass a UTF-8 text file with one text per line, or - for stdin")
        try:
            content = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DistilleryError(f"--file {file}: not UTF-8 text (byte {exc.start}); pass a text file with one "
                                  f"text per line") from None
        items = _lines(content.splitlines(), f"{file} line")
    else:
        if stdin.isatty() and file != "-":
            raise DistilleryError("no text to classify: pass texts as arguments, --file FILE, or pipe lines to stdin")
        items = _lines(_read_utf8(stdin).splitlines(), "stdin line")
    if not items:
        raise DistilleryError("no text to classify: the input holds no lines")
    empty = [where for where, text in items if not text.strip()]
    if empty:
        raise DistilleryError(f"empty text at {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}: "
                              f"every text must hold at least one non-blank character")
    return items


def _read_utf8(stdin: TextIO) -> str:
    """All of stdin as text, refused when it is not UTF-8. Under a C or POSIX locale Python
    reads stdin with surrogateescape, so bad bytes arrive as lone surrogates, not an error."""
    try:
        text = stdin.read()
        text.encode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError) as exc:
        raise DistilleryError(f"stdin is not UTF-8 text (at character {exc.start}): convert it first, e.g. "
                              f"iconv -f latin1 -t utf-8, or pass a UTF-8 file with --file") from None
    return text


def _lines(lines: Iterable[str], where: str) -> list[tuple[str, str]]:
    lines = list(lines)
    while lines and not lines[-1].strip():  # a trailing newline is not an empty text
        lines.pop()
    return [(f"{where} {i}", line) for i, line in enumerate(lines, 1)]


def predict(store: ArtifactStore, model: str, texts: list[str]) -> list[dict]:
    classifier = load_classifier(store, find_run(store, model))
    scores = classifier.scores(texts)
    return [
        {"text": text, "label": classifier.labels[int(row.argmax())],
         "scores": {name: round(float(p), 6) for name, p in zip(classifier.labels, row)}}
        for text, row in zip(texts, scores)
    ]


DEFAULT_WORKLOAD = "emotion"


def serving_alias(store: ArtifactStore, name: str) -> str:
    """`<name>/production`; with none, a DistilleryError naming `distillery promote`.

    Never `<name>/latest`: latest moves for every finished run, refused ones included, so it
    may name a model the gate turned down. A person can still ask for it: --model NAME/latest."""
    from artifacts.promotions import production_alias

    alias = production_alias(name)
    if alias not in store.aliases():
        raise DistilleryError(
            f"workload {name!r} has no production model in {store.root}: no run of it was promoted (the gate promotes "
            f"a run that passes it; `distillery promote {name} RUN` promotes one by hand, e.g. RUN = {name}/latest "
            f"after checking its report). To use the latest run anyway, pass --model {name}/latest")
    return alias


def main(argv: list[str] | None = None, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout,
         prog: str = "python flows/predict.py") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("texts", nargs="*", help="texts to classify (default: --file, else stdin)")
    parser.add_argument("--model", help="alias, digest or digest prefix of a run record or of a run's INT8 model "
                        "(default: <name>/production; <name>/latest only when asked for)")
    parser.add_argument("--name", help=f"the workload whose production model to use (default: {DEFAULT_WORKLOAD})")
    parser.add_argument("--file", help="a UTF-8 text file with one text per line; - for stdin")
    add_store_argument(parser)
    args = parser.parse_args(argv)
    try:
        if args.model and args.name:
            raise DistilleryError(f"give --model or --name, not both (--name {args.name} is --model "
                                  f"{args.name}/production)")
        items = read_texts(args.texts, args.file, stdin)
        store = ArtifactStore(args.store)
        if store.is_local and not Path(store.path, "objects").is_dir():
            raise DistilleryError(f"no artifact store at {store.root}: run a workload first "
                                  f"(`distillery run --preset emotion`) or pass --store / DISTILLERY_STORE")
        model = args.model or serving_alias(store, args.name or DEFAULT_WORKLOAD)
        results = predict(store, model, [text for _, text in items])
    except (DistilleryError, StoreError) as exc:
        return bad_input(str(exc))
    for result in results:
        stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
