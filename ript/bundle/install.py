"""Install a ript offline bundle: verify every part, unpack the wheels, pip-install them.

    python3 install.py [--target DIR] [--dry-run] [-- PIP_ARGS...]

Run it from the bundle's directory (beside manifest.json and the parts), with the Python the
bundle was built for. It needs only the standard library and pip, and never the network: pip
runs with the index switched off and without dependency resolution (the bundle holds exactly
what the target lacked when it was built). A missing or damaged part is named before
anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


class _Parts:
    """The parts read back to back as one stream."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)
        self.current = None

    def read(self, size: int = -1) -> bytes:
        while True:
            if self.current is None:
                if not self.paths:
                    return b""
                self.current = open(self.paths.pop(0), "rb")  # noqa: SIM115 - closed below
            data = self.current.read(size)
            if data:
                return data
            self.current.close()
            self.current = None


def verify(directory: Path, manifest: dict) -> list[Path]:
    """The parts in order; exits with one line per missing or damaged part."""
    problems, paths = [], []
    for part in manifest["parts"]:
        path = directory / part["file"]
        paths.append(path)
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        if path.stat().st_size != part["bytes"]:
            problems.append(f"{path}: {path.stat().st_size} bytes, expected {part['bytes']}")
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda f=f: f.read(2**20), b""):
                digest.update(block)
        if digest.hexdigest() != part["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest (damaged in transfer?)")
    if problems:
        sys.exit("install.py: error: " + "; ".join(problems) + "; nothing was installed")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=HERE, help="bundle directory")
    parser.add_argument("--target", help="install into this directory (pip --target)")
    parser.add_argument("--dry-run", action="store_true", help="verify and list, install nothing")
    parser.add_argument("pip_args", nargs="*", help="passed to pip install (after --)")
    args = parser.parse_args(argv)
    manifest_path = args.bundle / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"install.py: error: {manifest_path}: cannot read the manifest ({e})")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    if manifest["python"] != python:
        sys.exit(
            f"install.py: error: the bundle was built for Python {manifest['python']}, "
            f"this is {python} ({sys.executable}); run it with python{manifest['python']}"
        )
    parts = verify(args.bundle, manifest)
    with tempfile.TemporaryDirectory(prefix="ript-bundle-") as tmp:
        with lzma.LZMAFile(_Parts(parts)) as xz, tarfile.open(fileobj=xz, mode="r|") as tar:
            for member in tar:
                name = Path(member.name)
                if not member.isfile() or name.parent != Path("wheels") or ".." in name.parts:
                    sys.exit(f"install.py: error: unexpected member {member.name!r} in the parts")
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extract(member, tmp, set_attrs=False, **safe)
        wheels = sorted(str(p) for p in Path(tmp, "wheels").glob("*.whl"))
        expected = {w["file"] for w in manifest["wheels"]}
        if {os.path.basename(w) for w in wheels} != expected:
            sys.exit("install.py: error: the parts do not hold the wheels the manifest lists")
        print(f"install.py: {len(parts)} parts verified, {len(wheels)} wheels")
        if args.dry_run:
            print("\n".join(os.path.basename(w) for w in wheels))
            return 0
        # --force-reinstall: an older copy elsewhere on the path (e.g. a venv's system
        # site-packages) must not be taken as already satisfying the bundle.
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps"]
        cmd += ["--force-reinstall", "--no-warn-script-location", "--disable-pip-version-check"]
        if args.target:
            cmd += ["--target", args.target]
        result = subprocess.run([*cmd, *args.pip_args, *wheels])
        if result.returncode:
            sys.exit(f"install.py: error: pip install exited with {result.returncode}")
    print(
        f"install.py: installed {len(wheels)} wheels for {manifest['suite']} "
        f"(tasks {manifest['tasks']}); try: ript collect --help"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
