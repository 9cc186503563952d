"""Example sweep specs shipped with the package (``quickstart`` is the default)."""
from __future__ import annotations

from pathlib import Path

SPEC_DIR = Path(__file__).resolve().parent
DEFAULT_SPEC = "quickstart"


def resolve_spec_path(spec: str | None) -> Path:
    """A path as given, or the name of a shipped spec (``quickstart``, ``digits-smoke``, ...)."""
    if spec is None:
        return SPEC_DIR / f"{DEFAULT_SPEC}.yaml"
    path = Path(spec)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in spec:
        return path
    shipped = SPEC_DIR / f"{spec}.yaml"
    return shipped if shipped.exists() else path


def shipped() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))
