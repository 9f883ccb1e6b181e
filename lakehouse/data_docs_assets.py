"""Data Docs that render offline: the scripts, styles and fonts GX's pages load come from npm's
registry, pinned and checked, instead of CDNs at view time.

GX (1.24) writes every page with ``<script>`` and ``<link>`` tags to CDNs (jQuery, Bootstrap,
bootstrap-table, Vega, Font Awesome, ...); without internet its index lists nothing (the lists are
drawn by those scripts) and every page is unstyled. :func:`fetch_assets` downloads the npm
packages below once into the user's cache (``make install`` does it; each tarball's sha512 is
checked against the pin), and :func:`localize_site`, run after GX builds the site
(lakehouse/quality.py), copies the files the pages use into ``static/vendor/`` and points every
tag at them. A page then loads nothing from outside the site.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lakehouse.fs import user_cache

REGISTRY = "https://registry.npmjs.org"


@dataclass(frozen=True)
class NpmPackage:
    name: str
    version: str
    integrity: str  # the registry's dist.integrity: sha512 of the tarball
    main: str  # the file a bare ``<cdn>/<name>@<major>`` URL serves
    directories: tuple[str, ...] = ()  # folders the files need beside them (fonts a stylesheet loads)

    @property
    def folder(self) -> str:
        return f"{self.name.removeprefix('@').replace('/', '__')}-{self.version}"

    @property
    def tarball(self) -> str:
        return f"{REGISTRY}/{self.name}/-/{self.name.rsplit('/', 1)[-1]}-{self.version}.tgz"


PACKAGES = {p.name: p for p in (
    NpmPackage("jquery", "3.7.1",
               "sha512-m4avr8yL8kmFN8psrbFFFmB/If14iN5o9nw/NgnnM+kybDJpRsAynV2BsfpTYrTRysYUdADVD7CkUUizgkpLfg==",
               "dist/jquery.min.js"),
    NpmPackage("popper.js", "1.12.9",
               "sha512-s0EEi9xiSCdqz9lV4IiVH5yIZnDX/U1t0tCjB+0jXx9jW8lrR7kOpVupiUg175ogqVoudpDXHF1p6dKATCHMeg==",
               "dist/umd/popper.min.js"),
    NpmPackage("bootstrap", "4.3.1",
               "sha512-rXqOmH1VilAt2DyPzluTi2blhk17bO7ef+zLLPlWvG494pDxcM234pJ8wTc/6R40UWizAIIMgxjvxZg5kmsbag==",
               "dist/js/bootstrap.min.js"),
    NpmPackage("bootstrap-table", "1.19.1",
               "sha512-WvV+l1AI/C+zThaKmfHmi/IuayVNB0qdFyEhFx1jyZhO0oLtNJNANkCR3rvJf6Dkh72dsLElxpE/bzK9seEQLA==",
               "dist/bootstrap-table.min.js"),
    NpmPackage("bootstrap-datepicker", "1.9.0",
               "sha512-9rYYbaVOheGYxjOr/+bJCmRPihfy+LkLSg4fIFMT9Od8WwWB/MB50w0JO1eBgKUMbb7PFHQD5uAfI3ArAxZRXA==",
               "dist/js/bootstrap-datepicker.min.js"),
    NpmPackage("@fortawesome/fontawesome-free", "6.6.0",
               "sha512-60G28ke/sXdtS9KZCpZSHHkCbdsOGEhIUGlwq6yhY74UpTiToIh8np7A8yphhM4BWsvNFtIvLpi4co+h9Mr9Ow==",
               "css/all.min.css", directories=("webfonts",)),
    NpmPackage("@forevolve/bootstrap-dark", "1.1.0",
               "sha512-A3ucpEpxPoTVO490lZZCfjPXxv832l7mm1IxX3bXyxvgwnPGXDLyh7dWrphXKO8YBAu3EswbBEu3VSW8NRMW3A==",
               "dist/css/bootstrap-prefers-dark.css"),
    NpmPackage("vega", "5.33.1",
               "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
               "build/vega.min.js"),
    NpmPackage("vega-lite", "5.23.0",
               "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
               "build/vega-lite.min.js"),
    NpmPackage("vega-embed", "6.29.0",
               "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
               "build/vega-embed.min.js"),
)}

# CDN addresses in GX's pages -> (package, file). npm CDNs name the package in the URL; the others
# are listed. A version in the URL that differs from the pin (bootstrap-table@1.19.0's
# stylesheet) takes the pinned package's file.
_NPM_CDN = re.compile(r"^https://(?:unpkg\.com|cdn\.jsdelivr\.net/npm)/(@[^/@]+/[^/@]+|[^/@]+)@[^/]+(/.*)?$")
_OTHER_CDNS = {
    "https://code.jquery.com/jquery-3.7.1.min.js": ("jquery", "dist/jquery.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": ("popper.js", "dist/umd/popper.min.js"),
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": ("bootstrap", "dist/css/bootstrap.min.css"),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": ("bootstrap", "dist/js/bootstrap.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        ("bootstrap-datepicker", "dist/css/bootstrap-datepicker.min.css"),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        ("bootstrap-datepicker", "dist/js/bootstrap-datepicker.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css":
        ("@fortawesome/fontawesome-free", "css/all.min.css"),
}
_TAG = re.compile(r"<(?:script|link|img)\b[^>]*>")
_TAG_URL = re.compile(r'(\b(?:src|href)=")(https?://[^"]+)(")')
# Subresource integrity and CORS attributes are the CDN copies' (and a file:// page cannot load a
# script it asks for with CORS): a local copy goes without them.
_SITE_STATIC = re.compile(r'(\b(?:src|href)=")(?:\./|(?:\.\./)+)?static/')
_CDN_ATTRIBUTES = re.compile(r'\s+(?:integrity|crossorigin)(?:="[^"]*")?')
_GX_LOGO = re.compile(r"^https://great-expectations-web-assets\.s3\.[^/]+\.amazonaws\.com/(logo-long\.png)(?:\?.*)?$")


def cache_dir() -> Path:
    return user_cache("data-docs-assets")


def fetch_assets(out=print) -> Path:
    """Every package unpacked under :func:`cache_dir` (downloaded once, its sha512 checked)."""
    root = cache_dir()
    for package in PACKAGES.values():
        target = root / package.folder
        if (target / package.main).is_file():
            continue
        out(f"Data Docs assets: fetching {package.name}@{package.version} from the npm registry")
        with urllib.request.urlopen(package.tarball, timeout=120) as response:
            data = response.read()
        digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        if digest != package.integrity:
            raise RuntimeError(f"{package.tarball}: sha512 {digest} is not the pinned {package.integrity}")
        staging = root / f".{package.folder}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            archive.extractall(staging, filter="data")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging / "package", target)
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _local(url: str) -> tuple[NpmPackage, str] | None:
    """The pinned package and file that serve ``url``, or None."""
    if url in _OTHER_CDNS:
        name, path = _OTHER_CDNS[url]
        return PACKAGES[name], path
    match = _NPM_CDN.match(url)
    if match and match.group(1) in PACKAGES:
        package = PACKAGES[match.group(1)]
        return package, (match.group(2) or "/" + package.main).lstrip("/")
    return None


def localize_site(site: Path, assets: Path) -> list[str]:
    """Copy the files the site's pages load into ``static/vendor/`` and point the pages at them;
    returns the outside addresses a page still loads (none, for the pinned GX)."""
    vendor = site / "static" / "vendor"
    left: set[str] = set()
    for page in site.rglob("*.html"):
        up = "../" * (len(page.relative_to(site).parts) - 1)

        def local(match: re.Match, up: str = up) -> str:
            url = match.group(2)
            logo = _GX_LOGO.match(url)
            if logo:
                return f"{match.group(1)}{up}static/images/{logo.group(1)}{match.group(3)}"
            found = _local(url)
            if found is None:
                left.add(url)
                return match.group(0)
            package, path = found
            source = assets / package.folder / path
            copied = vendor / package.folder / path
            if not copied.exists():
                copied.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, copied)
                for folder in package.directories:
                    shutil.copytree(assets / package.folder / folder, vendor / package.folder / folder, dirs_exist_ok=True)
            return f"{match.group(1)}{up}static/vendor/{package.folder}/{path}{match.group(3)}"

        def tag(match: re.Match, local=local, up: str = up) -> str:
            # GX points a page under validations/ at the site's own static/ one folder short.
            fixed = _SITE_STATIC.sub(lambda m: f"{m.group(1)}{up}static/", match.group(0))
            rewritten = _TAG_URL.sub(local, fixed)
            return rewritten if rewritten == fixed else _CDN_ATTRIBUTES.sub("", rewritten)

        text = page.read_text(encoding="utf-8")
        page.write_text(_TAG.sub(tag, text), encoding="utf-8")
    return sorted(left)


if __name__ == "__main__":  # make install: fetch them once, while the network is there
    print(f"Data Docs assets in {fetch_assets()}")
    sys.exit(0)
