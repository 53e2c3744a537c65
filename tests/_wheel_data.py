"""Real third-party imagery shipped inside wheels on the package index, fetched once into
``output/test_data/`` (ignored by git, never committed).

The wheel file is fetched from the index's simple page, not with pip: solaris 0.4.0's metadata has a malformed
dependency string that pip >= 24.1 refuses even for ``pip download``. ``PIP_INDEX_URL`` selects another index.
"""

import hashlib
import json
import os
import re
import urllib.parse
import urllib.request
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(REPO, "output", "test_data")
TIMEOUT_S = 120


class FetchError(RuntimeError):
    pass


def _index() -> str:
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


def _wheel_links(project: str) -> dict[str, tuple[str, str | None]]:
    """filename -> (url, sha256) from the project's simple page (PEP 691 JSON, else PEP 503 HTML)."""
    page = f"{_index()}/{project}/"
    request = urllib.request.Request(
        page, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"}
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        kind, body = response.headers.get("Content-Type", ""), response.read().decode()
    if "json" in kind:
        files = json.loads(body)["files"]
        return {
            f["filename"]: (urllib.parse.urljoin(page, f["url"]), f.get("hashes", {}).get("sha256"))
            for f in files
        }
    links = {}
    for href in re.findall(r'href="([^"]+)"', body):
        url, _, fragment = urllib.parse.urljoin(page, href).partition("#")
        sha = fragment[len("sha256=") :] if fragment.startswith("sha256=") else None
        links[os.path.basename(urllib.parse.urlparse(url).path)] = (url, sha)
    return links


def _download(project: str, version: str) -> str:
    prefix = f"{project.replace('-', '_')}-{version}-"
    wheels = {n: v for n, v in _wheel_links(project).items() if n.startswith(prefix) and n.endswith(".whl")}
    if not wheels:
        raise FetchError(f"the index has no wheel of {project}=={version}")
    filename, (url, sha256) = min(wheels.items())
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        payload = response.read()
    if sha256 and hashlib.sha256(payload).hexdigest() != sha256:
        raise FetchError(f"{filename} does not match the index's sha256")
    path = os.path.join(CACHE, "wheels", filename)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.partial", "wb") as f:
        f.write(payload)
    os.replace(f"{path}.partial", path)
    return path


def wheel_member(project: str, version: str, member: str) -> str:
    """Local path of ``member`` (e.g. "solaris/data/sample_geotiff.tif") of the wheel, fetched once."""
    root = os.path.join(CACHE, f"{project}-{version}")
    path = os.path.join(root, member)
    if os.path.isfile(path):
        return path
    wheels = os.path.join(CACHE, "wheels")
    prefix = f"{project.replace('-', '_')}-{version}-"
    cached = [f for f in os.listdir(wheels) if f.startswith(prefix)] if os.path.isdir(wheels) else []
    try:
        wheel = os.path.join(wheels, cached[0]) if cached else _download(project, version)
    except (OSError, ValueError, KeyError) as e:  # URLError is an OSError
        raise FetchError(
            f"Cannot fetch {project}=={version} from {_index()} ({e}). These tests read real imagery from "
            f"it: give the machine access to the package index, or put the wheel into {wheels}/."
        ) from e
    with zipfile.ZipFile(wheel) as z:
        z.extract(member, root)
    return path
