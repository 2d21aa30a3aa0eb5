"""Put the prebuilt OHIF viewer (@ohif/app's dist/) into tests/viewer/ohif-dist/, checked.

``npm install @ohif/app`` cannot work: the package lists @ohif packages of its
own version that the registry does not have. Its ``dist/`` is a finished
build that needs none of them, so this script asks npm for the package
tarball alone (``npm pack``), refuses it unless its integrity is the one
pinned in package.json (``ohifApp``), and unpacks ``dist/``. Run by ``make
test`` (target ``viewer-deps``); does nothing when that version is there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DIST = HERE / "ohif-dist"
STAMP = DIST / ".version"


def _integrity(path: Path) -> str:
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def main() -> int:
    pinned = json.loads((HERE / "package.json").read_text())["ohifApp"]
    version, integrity = pinned["version"], pinned["integrity"]
    if STAMP.exists() and STAMP.read_text().strip() == integrity:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["npm", "pack", f"@ohif/app@{version}", "--pack-destination", tmp, "--silent"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=900,
        )
        (tarball,) = Path(tmp).glob("*.tgz")
        found = _integrity(tarball)
        if found != integrity:
            print(
                f"@ohif/app@{version}: integrity {found} is not the pinned {integrity}",
                file=sys.stderr,
            )
            return 1
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tarball) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith("package/dist/")]
            archive.extractall(unpacked, members=members, filter="data")
        shutil.rmtree(DIST, ignore_errors=True)
        shutil.move(unpacked / "package" / "dist", DIST)
    STAMP.write_text(integrity + "\n")
    print(f"OHIF {version} in {DIST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
