"""Sample datasets that ship with Crucible, and the resolution of dataset URIs.

A dataset URI is ``builtin://<name>`` for the files in this folder, or a path to a Parquet file
in the control plane's artifact storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
BUILTIN_SCHEME = "builtin://"


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    file: str
    description: str
    license: str
    target: str
    sensitive_features: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        return BUILTIN_SCHEME + self.name

    @property
    def path(self) -> Path:
        return HERE / self.file


BUILTIN: dict[str, BuiltinDataset] = {
    d.name: d
    for d in [
        BuiltinDataset(
            name="adult",
            file="adult.parquet",
            description="UCI Adult (Census Income): 48,842 people, predict income >50K. "
            "Both original files, adult.data then adult.test.",
            license="CC BY 4.0 — Becker, B. & Kohavi, R. (1996). Adult. UCI Machine Learning "
            "Repository. https://doi.org/10.24432/C5XW20",
            target="income",
            sensitive_features=("sex", "race"),
        )
    ]
}


def resolve_uri(uri: str) -> str:
    """The local path of a dataset URI."""
    if uri.startswith(BUILTIN_SCHEME):
        name = uri[len(BUILTIN_SCHEME) :]
        if name not in BUILTIN:
            raise ValueError(f"no built-in dataset named '{name}'")
        return str(BUILTIN[name].path)
    return uri
