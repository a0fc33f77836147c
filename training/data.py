"""Getting the lesson's data: the real path first (DuckDuckGo search, fastai's untar_data),
the read-only copies in ../shared/datasets when offline — and the log always says which."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("roost.train")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATASETS = Path(os.environ.get("ROOST_SHARED_DATASETS", PROJECT_ROOT.parent / "shared" / "datasets"))
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class DataSource:
    path: Path
    source: str  # in words, for the log and the manifest; names no path of this machine


def named_roots() -> list[tuple[str, Path]]:
    """The roots a data path is recorded against, most specific first."""
    fastai_home = Path(os.environ.get("FASTAI_HOME", Path.home() / ".fastai"))
    return [
        ("shared datasets", SHARED_DATASETS),
        ("fastai data", fastai_home / "data"),
        ("project", PROJECT_ROOT),
        ("home", Path.home()),
    ]


def named(path: Path) -> str:
    """`path` relative to a named root ("shared datasets: bird_or_forest"): a bundle travels between
    machines, so its manifest records no absolute path."""
    for name, root in named_roots():
        for p, r in ((Path(path).absolute(), root.absolute()), (Path(path).resolve(), root.resolve())):
            if p.is_relative_to(r):
                return f"{name}: {p.relative_to(r).as_posix()}"
    return f"elsewhere: {Path(path).name}"


def online(host: str = "duckduckgo.com", port: int = 443, timeout: float = 3.0) -> bool:
    if os.environ.get("ROOST_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def search_images(term: str, max_images: int = 200) -> list[str]:
    from ddgs import DDGS

    return [r["image"] for r in DDGS().images(term, max_results=max_images)]


def download_labelled_images(dest: Path, searches: dict[str, str], max_images: int = 200) -> Path:
    """The lesson's loop: search, download_images, resize_images(max_size=400), verify_images."""
    from fastai.vision.all import download_images, resize_images, verify_images, get_image_files

    for label, term in searches.items():
        folder = dest / label
        folder.mkdir(parents=True, exist_ok=True)
        urls = search_images(term, max_images)
        log.info("%s: %d image URLs for %r", label, len(urls), term)
        download_images(folder, urls=urls)
        resize_images(folder, max_size=400, dest=folder)
    failed = verify_images(get_image_files(dest))
    failed.map(Path.unlink)
    log.info("dropped %d images that would not open", len(failed))
    return dest


def bird_data(data: Path | None, cache: Path) -> DataSource:
    if data is not None:
        return DataSource(Path(data), f"folder {named(data)}")
    if online():
        dest = cache / "bird_or_forest"
        if not dest.exists():
            download_labelled_images(dest, {"bird": "bird photo", "forest": "forest photo"})
        return DataSource(dest, "downloaded: DuckDuckGo image search (ddgs), as in lesson 1")
    shared = SHARED_DATASETS / "bird_or_forest"
    if shared.is_dir():
        log.warning("offline: DuckDuckGo is unreachable, training on the scraped copy in %s", shared)
        return DataSource(shared, f"{named(shared)} (offline copy, scraped by the lesson's own search)")
    raise SystemExit("no network and no --data folder: pass --data DIR with one subfolder per label")


def subset_per_label(src: Path, dest: Path, per_label: int) -> Path:
    """First `per_label` images of each label, as symlinks (for quick runs)."""
    if dest.exists():
        shutil.rmtree(dest)
    for label_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        out = dest / label_dir.name
        out.mkdir(parents=True)
        for img in sorted(p for p in label_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)[:per_label]:
            (out / img.name).symlink_to(img.resolve())
    return dest


def fastai_sample(url: str, name: str, fastai_home: Path) -> DataSource:
    """fastai's untar_data; offline, the extracted copy is placed where untar_data looks first."""
    os.environ.setdefault("FASTAI_HOME", str(fastai_home))
    from fastai.data.external import fastai_path, untar_data

    target = fastai_path("data") / name
    if not target.exists():
        if online("s3.amazonaws.com"):
            return DataSource(untar_data(url), f"fastai: {name}, downloaded by untar_data({url})")
        shared = SHARED_DATASETS / "fastai_samples" / name
        if not shared.is_dir():
            raise SystemExit(f"offline and {shared} is missing: cannot get {url}")
        log.warning("offline: placing the extracted copy %s where untar_data looks (%s)", shared, target)
        shutil.copytree(shared, target)
        return DataSource(untar_data(url), f"fastai: {name}, untar_data({url}) served from the offline copy in {named(shared)}")
    return DataSource(untar_data(url), f"fastai: {name}, untar_data({url}) (already in fastai's data folder)")


def lesson_sample(data: Path | None, url_name: str, name: str, cache: Path) -> DataSource:
    """`--data DIR` when given, else fastai's `untar_data(URLs.<url_name>)` (offline: the shared copy)."""
    if data is not None:
        return DataSource(Path(data), f"folder {named(data)}")
    from fastai.data.external import URLs

    return fastai_sample(getattr(URLs, url_name), name, (Path(cache) / "fastai").resolve())


def tree_sha256(paths: list[Path], root: Path) -> str:
    """Hash over relative names and contents: the data's identity in the manifest."""
    digest = hashlib.sha256()
    for p in sorted(paths):
        digest.update(str(Path(p).relative_to(root)).encode())
        digest.update(hashlib.sha256(Path(p).read_bytes()).digest())
    return digest.hexdigest()
