"""Where a command may write, and how: one set of rules for every output, folder or file.

1. An output never equals, contains or sits inside a folder the command reads, and never
   equals or contains a file it reads (`check_apart`).
2. An existing output is replaced only with --overwrite, and only if maskgit wrote it: a folder
   whose every entry (file, folder, link, pipe, ...) its manifest lists, or a file that carries
   maskgit's signature. Anything else is refused, by name.
3. Whole or not at all: an output is built in a hidden sibling and moved into place at the end.
   An existing folder keeps its identity (its entries are swapped), so a shell inside it stays put.
4. An output being written is locked: a second run to the same output is refused as "in use".
5. A hidden partial output left by a killed run is removed by the next run to the same output.

Training run directories (`RunDir`) follow the same rules, entry by entry: a stage claims the
names it will write, and a name that exists without maskgit having written it is refused.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from maskgit_cli import __version__
from maskgit_cli.errors import DataError, MaskgitError, OutputExistsError

MANIFEST = ".maskgit-output.json"  # in every output folder: what maskgit wrote there
PARTIAL = "maskgit-partial"  # hidden siblings being built: .NAME.maskgit-partial-XXXX
OLD = "maskgit-old"  # an existing output's entries on their way out: .NAME.maskgit-old-XXXX
LOCK = "maskgit-lock"  # .NAME.maskgit-lock beside the output while it is written


class OutputInUse(MaskgitError):
    """Another maskgit run is writing the same output."""


# ------------------------------------------------------------------------------- errors


_FIXES = {
    errno.ENOSPC: "the disk is full: free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is exhausted: free some space or write elsewhere",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EPERM: "permission denied: choose a folder you can write to",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "it is a folder: give a file path",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
}


def os_error(err: OSError, action: str = "cannot write") -> MaskgitError:
    """An OSError as a one-line MaskgitError naming the file and the fix."""
    where = err.filename or "output"
    fix = _FIXES.get(err.errno or 0, err.strerror or err.__class__.__name__)
    return DataError(f"{where}: {action} ({fix})")


# ---------------------------------------------------------------------------- file basics


def usual_mode(directory: bool = False) -> int:
    """The permissions open()/mkdir() give under the current umask (mkstemp/mkdtemp give
    0600/0700)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp_path), then rename over `path`: readers never see a half-written file.
    An OSError (disk full, read-only, ...) becomes a one-line error naming `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(Path(tmp))
        os.chmod(tmp, usual_mode())
        os.replace(tmp, path)
    except OSError as err:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if err.filename is None or str(err.filename) == str(tmp):
            err.filename = str(path)  # name the destination, not our temporary file
        raise os_error(err) from None
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------- paths


def resolve(out: str | Path, flag: str = "--out") -> Path:
    """An output path made absolute (`.` and `a/..` get real names), refused where no output can
    go: the file system root, or below something that is a file."""
    text = str(out)
    if text == "":
        raise DataError(f"{flag} is empty (an unset shell variable?); give a path")
    path = Path(out).expanduser().absolute()
    path = Path(os.path.normpath(path))
    if path == path.parent:
        raise DataError(f"{flag} {out}: cannot write into the file system root; choose a folder")
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise DataError(
                    f"{flag} {out}: {parent} is a file, not a folder; choose another path"
                )
            break
    return path


def _real(p: Path) -> Path:
    return Path(os.path.realpath(p))


def check_apart(
    out: Path, reads: Iterable[tuple[str | Path | None, str]], flag: str = "--out"
) -> None:
    """The output must not equal, contain or sit inside a folder the command reads, nor equal or
    contain a file it reads. reads: (path, how the user gave it), e.g. (masks, "--masks")."""
    target = _real(out)
    for given, label in reads:
        if given is None:
            continue
        src = _real(Path(given))
        is_dir = Path(given).is_dir()
        if target == src:
            what = "folder" if is_dir else "file"
            raise DataError(
                f"{flag} {out} is the input {what} {given} ({label}): maskgit never writes over "
                f"its inputs; choose another {flag}"
            )
        if target in src.parents:
            raise DataError(
                f"{flag} {out} contains the input {given} ({label}): replacing it would delete "
                f"the input; choose an {flag} outside every input"
            )
        if is_dir and src in target.parents:
            raise DataError(
                f"{flag} {out} is inside the input folder {given} ({label}): outputs never sit "
                f"inside an input; choose an {flag} outside it"
            )


# ---------------------------------------------------------------------------------- lock


class Lock:
    """An exclusive lock on an output, held while it is written: a hidden `.NAME.maskgit-lock`
    beside it (flock: released by the kernel if the process dies, even by kill -9)."""

    def __init__(self, out: Path, flag: str = "--out"):
        self.path = out.parent / f".{out.name}.{LOCK}"
        self.out, self.flag, self.fd = out, flag, None

    def acquire(self) -> Lock:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): outputs are not locked there
            return self
        while True:
            try:
                self.out.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise os_error(err) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise OutputInUse(
                    f"{self.flag} {self.out} is in use: another maskgit run is writing it; "
                    "wait for it to finish or choose another path"
                ) from None
            try:  # the holder before us may have removed the file: lock the one at the path
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def remove_partials(out: Path) -> None:
    """Hidden siblings a killed run left behind (only ever called with the output's lock held)."""
    if not out.parent.is_dir():
        return
    for p in out.parent.glob(f".{glob_escape(out.name)}.*"):
        name = p.name[len(out.name) + 2 :]
        if name.startswith((PARTIAL + "-", OLD + "-")) or (name.endswith(".tmp") and p.is_file()):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(
                missing_ok=True
            )


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


# ------------------------------------------------------------------------------ manifest


def entries(folder: Path) -> tuple[list[str], list[str], list[str]]:
    """Every entry under `folder` (links not followed): (files, folders, others), as relative
    paths; `others` are links, pipes, sockets and devices, which maskgit never writes."""
    files, folders, others = [], [], []
    for root, dirs, names in os.walk(folder, followlinks=False):
        base = Path(root)
        for d in list(dirs):
            p = base / d
            (others if p.is_symlink() else folders).append(str(p.relative_to(folder)))
        dirs[:] = [d for d in dirs if not (base / d).is_symlink()]
        for n in names:
            p = base / n
            kind = files if (p.is_file() and not p.is_symlink()) else others
            kind.append(str(p.relative_to(folder)))
    return sorted(files), sorted(folders), sorted(others)


def manifest(folder: Path) -> tuple[set[str], set[str]]:
    """(files, folders) a folder's manifest lists; empty sets without a readable manifest.
    Folders holding a listed file are listed too (manifests before 0.2 named files only)."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
        files = {str(f) for f in data["files"]}
        folders = {str(f) for f in data.get("folders", [])}
    except (OSError, ValueError, KeyError, TypeError):
        return set(), set()
    for f in files:
        folders.update(str(p) for p in Path(f).parents if str(p) != ".")
    return files, folders


def write_manifest(
    folder: Path, files: Iterable[str], folders: Iterable[str], command: str
) -> None:
    payload = {
        "written_by": f"maskgit {__version__}",
        "command": command,
        "files": sorted(set(files)),
        "folders": sorted(set(folders)),
    }
    atomic_write(
        folder / MANIFEST, lambda tmp: tmp.write_text(json.dumps(payload, indent=1) + "\n")
    )


def manifest_command(folder: Path) -> str | None:
    """The command that wrote a folder (its manifest's `command`), if known."""
    try:
        return json.loads((folder / MANIFEST).read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        return None


def foreign_entries(folder: Path) -> list[str]:
    """Entries of `folder` that its manifest does not list (a user's files, links, folders)."""
    files, folders, others = entries(folder)
    ours_f, ours_d = manifest(folder)
    return (
        [f for f in files if f not in ours_f and f != MANIFEST]
        + [d for d in folders if d not in ours_d]
        + others
    )


def _named(items: Sequence[str]) -> str:
    return ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")


# ------------------------------------------------------------------------ folders, files


class _Output(ABC):
    """What a folder and a file output share: the path rules at construction (so a command fails
    before its work), and a transaction: lock, clear a killed run's partials, re-check the
    existing output, build hidden, move into place; an error abandons the partial, and an
    OSError while writing becomes one line."""

    def __init__(self, out: str | Path, overwrite: bool, reads, flag: str):
        self.given, self.flag, self.overwrite = out, flag, overwrite
        self.out = resolve(out, flag)
        check_apart(self.out, reads, flag)
        self.lock = Lock(self.out, flag)
        self.tmp: Path | None = None

    @abstractmethod
    def check_existing(self) -> None:
        """Refuse an existing output that is not maskgit's to replace (called again under the
        lock, on entry)."""

    @abstractmethod
    def _create(self) -> Path:
        """The hidden partial to write into."""

    @abstractmethod
    def _commit(self) -> None:
        """Move the finished partial into place."""

    @abstractmethod
    def _abandon(self) -> None:
        """Remove the partial."""

    def __enter__(self) -> Path:
        self.lock.acquire()
        try:
            remove_partials(self.out)
            self.check_existing()
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = self._create()
        except OSError as err:
            self.lock.release()
            raise os_error(err) from None
        except BaseException:
            self.lock.release()
            raise
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                try:
                    self._commit()
                except OSError as err:
                    self._abandon()
                    raise os_error(err) from None
            else:
                self._abandon()
        finally:
            self.lock.release()
        if isinstance(exc, OSError):  # a full disk or a vanished folder while writing: one line
            if exc.filename is None or str(exc.filename) == str(self.tmp):
                exc.filename = str(self.out)  # name the output, not our hidden partial
            raise os_error(exc) from None


class OutputDir(_Output):
    """A folder output, built whole in a hidden sibling and moved into place:

        with OutputDir(out, overwrite, reads=[(masks, "--masks")], command="inpaint") as tmp:
            ...write into tmp...

    An existing OUT is replaced (with --overwrite) only if it is empty or every entry in it is
    listed in its manifest; anything else is refused, naming the entries."""

    def __init__(
        self,
        out: str | Path,
        overwrite: bool,
        *,
        reads: Iterable[tuple[str | Path | None, str]] = (),
        command: str = "",
        flag: str = "--out",
    ):
        super().__init__(out, overwrite, reads, flag)
        self.command = command

    def check_existing(self) -> None:
        out = self.out
        if out.is_symlink() or (out.exists() and not out.is_dir()):
            raise OutputExistsError(
                f"{self.flag} {self.given} is a file, not a folder; choose a folder"
            )
        if not out.exists():
            return
        if manifest_command(out) == "train":
            raise OutputExistsError(
                f"{self.flag} {self.given} is a training run directory; maskgit never "
                f"replaces one with {self.command} output: choose another {self.flag}"
            )
        foreign = foreign_entries(out)
        if foreign:
            raise OutputExistsError(
                f"{self.flag} {self.given} holds files maskgit did not write "
                f"({_named(foreign)}); choose a new or empty folder (--overwrite only "
                "replaces earlier maskgit output)"
            )
        if any(out.iterdir()) and not self.overwrite:
            raise OutputExistsError(f"{self.given} already exists; pass --overwrite to replace it")

    def _create(self) -> Path:
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.{PARTIAL}-", dir=self.out.parent))
        tmp.chmod(usual_mode(directory=True))
        return tmp

    def _abandon(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _commit(self) -> None:
        tmp, out = self.tmp, self.out
        files, folders, _ = entries(tmp)
        write_manifest(tmp, files, folders, self.command)
        if not out.exists():
            tmp.rename(out)
            return
        # swap the entries, not the folder: OUT keeps its identity, permissions and any shell
        # sitting inside it; the manifest goes last, so a crash half-way leaves the new
        # entries unlisted (refused as foreign), never a user's file listed as ours
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.{OLD}-", dir=out.parent))
        for p in out.iterdir():
            if p.name != MANIFEST:
                p.rename(old / p.name)
        for p in tmp.iterdir():
            if p.name != MANIFEST:
                p.rename(out / p.name)
        os.replace(tmp / MANIFEST, out / MANIFEST)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


class OutputFile(_Output):
    """A file output (a token file, statistics, weights), written to a hidden temporary file
    beside it and renamed into place. An existing file is replaced (with --overwrite) only if
    `signature(path)` says maskgit wrote it.

        with OutputFile(out, overwrite, signature=is_token_file, what="token file") as tmp:
            save(tmp)"""

    def __init__(
        self,
        out: str | Path,
        overwrite: bool,
        *,
        signature: Callable[[Path], bool],
        what: str,
        reads: Iterable[tuple[str | Path | None, str]] = (),
        flag: str = "--out",
        example: str = "out.npz",
    ):
        super().__init__(out, overwrite, reads, flag)
        if self.out.is_dir() and not self.out.is_symlink():
            raise DataError(
                f"{flag} {out} is a folder; give the file to write, e.g. {Path(out) / example}"
            )
        self.signature, self.what = signature, what

    def check_existing(self) -> None:
        out = self.out
        if not (out.exists() or out.is_symlink()):
            return
        if out.is_symlink() or not out.is_file():
            raise OutputExistsError(
                f"{self.flag} {self.given} exists and is not a regular file (a link, pipe or "
                "device); maskgit does not replace it: choose another path"
            )
        if not self.overwrite:
            raise OutputExistsError(f"{self.given} already exists; pass --overwrite to replace it")
        if not self.signature(out):
            raise OutputExistsError(
                f"{self.flag} {self.given} is not a {self.what} maskgit wrote; --overwrite "
                "only replaces maskgit's own files: choose another path"
            )

    def _create(self) -> Path:
        fd, tmp = tempfile.mkstemp(dir=self.out.parent, prefix=f".{self.out.name}.", suffix=".tmp")
        os.close(fd)
        return Path(tmp)

    def _abandon(self) -> None:
        self.tmp.unlink(missing_ok=True)

    def _commit(self) -> None:
        os.chmod(self.tmp, usual_mode())
        try:
            os.replace(self.tmp, self.out)
        except OSError as err:
            err.filename = str(self.out)
            raise


def npz_signature(*keys: str) -> Callable[[Path], bool]:
    """A signature test for .npz files maskgit writes: `written_by` says so, or (older files)
    all of `keys` are present."""

    def ours(path: Path) -> bool:
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as z:
                names = set(z.files)
                if "written_by" in names:
                    return str(z["written_by"]).startswith("maskgit")
                return set(keys) <= names
        except Exception:
            return False

    return ours


# ------------------------------------------------------------------------ run directories


class RunDir:
    """A training run directory: locked for the whole run, and every name a stage writes is
    claimed first. A name that exists is refused unless maskgit wrote it (the run's manifest
    lists it, or the folder is a run made before manifests, recognized by its checkpoints).

        with RunDir(out, ["config.yaml", "tokenizer.pt", ...], reads=[(data, "--data")]) as run:
            ...atomic writes into run..."""

    # what a run directory made before manifests held; adopted only when a checkpoint is there
    LEGACY = (
        "config.yaml",
        "metrics.jsonl",
        "metrics_decoder.jsonl",
        "metrics_transformer.jsonl",
        "tokenizer.pt",
        "tokenizer_stage1.pt",
        "transformer.pt",
        "transformer_best.pt",
        "tokens_train.npz",
        "tokens_val.npz",
    )

    def __init__(
        self,
        out: str | Path,
        names: Iterable[str],
        *,
        reads: Iterable[tuple[str | Path | None, str]] = (),
        flag: str = "--out",
        primary: bool = True,
    ):
        self.given, self.flag = out, flag
        self.out = resolve(out, flag)
        check_apart(self.out, reads, flag)
        self.names = list(names)
        self.primary = (
            primary  # under torchrun only rank 0 locks and claims; the others write nothing
        )
        self.lock = Lock(self.out, flag)
        self.created = False

    def _ours(self) -> tuple[set[str], set[str]]:
        files, folders = manifest(self.out)
        if not (self.out / MANIFEST).is_file() and any(
            (self.out / n).is_file() for n in ("tokenizer.pt", "transformer.pt")
        ):
            files |= {n for n in self.LEGACY if (self.out / n).is_file()}
        return files, folders

    def __enter__(self) -> Path:
        out = self.out
        if out.is_symlink() or (out.exists() and not out.is_dir()):
            raise DataError(
                f"{self.flag} {self.given} is a file, not a folder; give a run directory"
            )
        if not self.primary:
            return out
        self.lock.acquire()
        try:
            self.created = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
            files, folders = self._ours()
            clash = [
                n
                for n in self.names
                if ((out / n).exists() or (out / n).is_symlink()) and n not in files
            ]
            if clash:
                raise OutputExistsError(
                    f"{self.flag} {self.given} holds {_named(clash)}, which maskgit did not "
                    "write; move it away or choose another run directory"
                )
            for p in out.glob(".*.tmp"):  # temporary files of a run killed while saving
                if p.is_file() and not p.is_symlink():
                    p.unlink(missing_ok=True)
            write_manifest(out, files | set(self.names), folders, "train")
        except OSError as err:
            self.lock.release()
            raise os_error(err) from None
        except BaseException:
            self.lock.release()
            raise
        return out

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if (
                exc_type is not None
                and self.created
                and [p.name for p in self.out.iterdir()] == [MANIFEST]
            ):
                shutil.rmtree(
                    self.out, ignore_errors=True
                )  # refused before anything was written: leave no trace
        finally:
            self.lock.release()
