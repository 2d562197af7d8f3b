"""Model bundles: a folder of text/JSON files and a manifest with a sha256 per file.

Loading verifies every hash (and the manifest's own hash, when the registry knows it)
before parsing anything, and refuses files the manifest does not list. Never a pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb

from tidal.errors import BundleIntegrityError, StateError
from tidal.features.pipeline import FeaturePipeline

MANIFEST = "manifest.json"
MODEL = "model.txt"
PIPELINE = "pipeline.json"
SIGNATURE = "signature.json"
METRICS = "metrics.json"
REFERENCE = "reference.json"
FILES = (MODEL, PIPELINE, SIGNATURE, METRICS, REFERENCE)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Bundle:
    """A loaded, verified model bundle."""

    path: Path
    booster: lgb.Booster
    pipeline: FeaturePipeline
    signature: dict[str, Any]
    metrics: dict[str, Any]
    reference: dict[str, Any]
    manifest_sha256: str

    @property
    def size_bytes(self) -> int:
        return sum((self.path / f).stat().st_size for f in (*FILES, MANIFEST))


def guard_model(bundle: Bundle) -> Any:
    """The bundle as the poisoning guard uses it (a scorer and the held-out label slope), or None."""
    from tidal.data.checks import ReferenceModel

    slope = bundle.metrics.get("test", {}).get("label_slope")
    if not slope:
        return None

    def score(frame: Any) -> Any:
        return bundle.booster.predict(bundle.pipeline.transform_arrow(frame.to_arrow()))

    return ReferenceModel(score=score, label_slope=slope)


def write_bundle(path: Path, *, model_text: str, pipeline: FeaturePipeline, signature: dict[str, Any],
                 metrics: dict[str, Any], reference: dict[str, Any]) -> str:
    """Write a bundle atomically (temp folder, then rename) and return its manifest's sha256."""
    contents = {
        MODEL: model_text.encode(),
        PIPELINE: pipeline.to_json().encode(),
        SIGNATURE: json.dumps(signature, indent=1, sort_keys=True).encode(),
        METRICS: json.dumps(metrics, indent=1, sort_keys=True, default=float).encode(),
        REFERENCE: json.dumps(reference, sort_keys=True, default=float).encode(),
    }
    manifest = {"format": "tidal-bundle/1", "files": {name: sha256_bytes(data) for name, data in contents.items()}}
    manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
    if path.exists():
        raise StateError(f"bundle folder {path} already exists", fix="bundles are immutable; train a new run")
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name, data in {**contents, MANIFEST: manifest_bytes}.items():
            with open(tmp / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sha256_bytes(manifest_bytes)


def _read_verified(path: Path, expected_manifest_sha256: str | None) -> tuple[dict[str, bytes], str]:
    try:
        manifest_bytes = (path / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise BundleIntegrityError(f"bundle {path} has no {MANIFEST}", fix="re-train or restore the bundle") from None
    digest = sha256_bytes(manifest_bytes)
    if expected_manifest_sha256 and digest != expected_manifest_sha256:
        raise BundleIntegrityError(f"bundle {path}: {MANIFEST} does not match the registry's hash",
                                   fix="the bundle was modified; restore it or re-train")
    try:
        manifest = json.loads(manifest_bytes)
        listed = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise BundleIntegrityError(f"bundle {path}: {MANIFEST} is not a tidal manifest") from None
    if manifest.get("format") != "tidal-bundle/1":
        raise BundleIntegrityError(f"bundle {path}: unsupported bundle format {manifest.get('format')!r}",
                                   fix="load it with the tidal version that wrote it")
    present = {p.name for p in path.iterdir()} - {MANIFEST}
    extra = present - set(listed)
    if extra:
        raise BundleIntegrityError(f"bundle {path} holds files its manifest does not list: {sorted(extra)}",
                                   fix="remove them; tidal loads only listed text/JSON files")
    out = {}
    for name in FILES:
        if name not in listed:
            raise BundleIntegrityError(f"bundle {path}: manifest does not list {name}")
        try:
            data = (path / name).read_bytes()
        except FileNotFoundError:
            raise BundleIntegrityError(f"bundle {path}: {name} is missing") from None
        if sha256_bytes(data) != listed[name]:
            raise BundleIntegrityError(f"bundle {path}: {name} fails its sha256 check (tampered or corrupted)",
                                       fix="restore the bundle from a backup or re-train")
        out[name] = data
    return out, digest


def load_bundle(path: str | Path, *, expected_manifest_sha256: str | None = None) -> Bundle:
    path = Path(path)
    files, digest = _read_verified(path, expected_manifest_sha256)
    booster = lgb.Booster(model_str=files[MODEL].decode())
    return Bundle(path=path, booster=booster, pipeline=FeaturePipeline.from_json(files[PIPELINE].decode()),
                  signature=json.loads(files[SIGNATURE]), metrics=json.loads(files[METRICS]),
                  reference=json.loads(files[REFERENCE]), manifest_sha256=digest)
