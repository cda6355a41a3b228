"""Draft trees on the bundled image model: rows by name, where tokens came from, and the pictures."""

from __future__ import annotations

import pytest
import torch

from jacobix.bench.images import parse_decoder
from jacobix.bench.tree_pictures import tree_pictures
from jacobix.core.tree import DraftTree
from jacobix.images.model import load_image_model
from jacobix.images.provenance import BRANCH, KEPT, RECOVERED, REDRAFTED, acceptance_kinds, committed_counts
from jacobix.images.sample import ImageSampling, generate_images
from jacobix.tokens.decoding import Decoding


@pytest.fixture(scope="module")
def model():
    return load_image_model("fmnist-ar")


def test_tree_rows_are_named_by_their_shape():
    spec = parse_decoder("sjd-pac:64:prior-above:K4D3")
    assert spec.decoding.tree == DraftTree(branches=4, depth=3) and spec.label() == "pac w64 K4 D3 prior-above"
    assert parse_decoder("sjd-coupled:16:random:K2D2").label() == "sjd-coupled w16 K2 D2 random"
    assert parse_decoder("sjd-pac:16:random").label() == "sjd-pac w16 random"
    for bad in ("sjd-pac:64:prior-above:K4", "sjd-pac:64:prior-above:4x3", "jacobi:16:random:K2D2"):
        with pytest.raises(ValueError, match="bad decoder spec|needs a sampling method"):
            parse_decoder(bad)


def test_every_token_has_a_kind_that_matches_the_pass_counts(model):
    settings = ImageSampling(decoding=Decoding(method="sjd-pac", window=24, init="prior-above", tree=DraftTree()))
    out = generate_images(model, list(range(6)), settings, generator=torch.Generator().manual_seed(0), batch_size=3,
                          record=True)
    kinds = acceptance_kinds(out, prompt_length=1).flatten(1)  # (N, 196)
    # (N,) drafts accepted per image and kept (the last pass may accept past the image's end)
    accepted = torch.cat([torch.minimum(s.accepted_per_pass, s.committed_per_pass).sum(0)
                          for s in out.stats])
    branch = torch.cat([s.branch_per_pass.sum(0) for s in out.stats])
    assert torch.equal((kinds != RECOVERED).sum(1), accepted)
    assert torch.equal((kinds == BRANCH).sum(1), branch) and int(branch.sum()) > 0
    assert int((kinds == KEPT).sum()) > 0 and int((kinds == REDRAFTED).sum()) > 0
    committed = committed_counts(out, 16)
    assert int(committed.sum()) == int(sum(s.active_per_pass.sum() for s in out.stats))


def test_pictures_are_written(model, tmp_path):
    rows = [parse_decoder("sjd:16:random"), parse_decoder("sjd-pac:16:prior-above:K2D3")]
    kinds, histogram = tree_pictures(model, rows, tmp_path / "plots", per_class=1)
    assert kinds.stat().st_size > 10_000 and histogram.stat().st_size > 10_000
    with pytest.raises(ValueError, match="parallel rows"):
        tree_pictures(model, [parse_decoder("ar")], tmp_path)
