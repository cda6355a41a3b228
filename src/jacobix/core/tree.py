"""Draft trees: a window of guesses shaped as a tree, verified in one forward (SJD-PAC).

A tree window has a *trunk*, the usual chain of drafts after the last committed token (the
root), and *branches*: at each of the first ``depth - 1`` draft positions, ``branches - 1``
alternatives to the trunk's draft, drawn from the same law without replacement. Every node at
tree depth ``d - 1`` has the same ``branches`` children (the trunk's draft at depth ``d`` and the
alternatives), so the tree holds all ``branches ** (depth - 1)`` combinations of the first
``depth - 1`` positions; the all-trunk path continues as the chain. With 4 branches and depth 3
that is 18 extra nodes (SJD-PAC's default, ALGORITHMS.md section 9).

Nodes are numbered trunk first (node ``i`` of the trunk sits at depth ``i``), then the branch
nodes depth by depth. A node attends to the committed prefix, its ancestors and itself; its
position is the root's plus its depth. In the cache it is written at the slot ``root + index``,
so trunk nodes land at their own positions and branch nodes past the trunk, where a rejected
draft's keys would be anyway; the accepted path's branch nodes are moved to their positions
afterwards (:func:`path_moves`).

Verification (:func:`tree_accept`) walks the tree: at each node the children are siblings tried
by recursive rejection (:func:`~jacobix.core.acceptance.sibling_law`), so the committed tokens
follow the target exactly; below the tree the trunk is verified by speculative sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from jacobix.core.acceptance import siblings_accept, speculative_accept
from jacobix.core.sampling import Randomness, sample


@dataclass(frozen=True, kw_only=True)
class DraftTree:
    """Shape of the draft tree a sampling pass verifies (the decoding spec's ``tree``).

    Attributes:
        branches: K, candidates tried at each tree position (the trunk's draft and K - 1 alternatives).
        depth: D, the tree spans the first D - 1 draft positions (D = 1 would be no tree).
    """

    branches: int = 4
    depth: int = 3

    def __post_init__(self) -> None:
        for name, low in (("branches", 2), ("depth", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"DraftTree.{name} must be an int >= {low}, got {value!r} "
                                 "(for no tree at all leave Decoding.tree=None)")
        if self.extra_nodes > 512:
            raise ValueError(f"DraftTree(branches={self.branches}, depth={self.depth}) has {self.extra_nodes} branch "
                             "nodes; use fewer branches or a smaller depth")

    @property
    def extra_nodes(self) -> int:
        """Nodes besides the trunk: ``sum_{d=1}^{D-1} (K^d - 1)``."""
        return sum(self.branches ** d - 1 for d in range(1, self.depth))

    def label(self) -> str:
        return f"K{self.branches} D{self.depth}"


@dataclass(frozen=True)
class TreeLayout:
    """Index tables of one tree window (shared by every row of a batch).

    Attributes:
        trunk: T, trunk nodes (the root and ``T - 1`` drafts).
        depth: tree levels actually used, ``min(D, T)``.
        branches: K.
        ancestors: (N, N) bool, node i attends node j (j is i or an ancestor of i).
        node_depth: (N,) long.
        source: (N,) long, where each node's token comes from in the table
            ``[root, trunk drafts (T - 1), alternatives ((depth - 1) * K)]``.
        children: (N, K) long, child of each node for each branch, -1 where none.
    """

    trunk: int
    depth: int
    branches: int
    ancestors: Tensor
    node_depth: Tensor
    source: Tensor
    children: Tensor

    @property
    def nodes(self) -> int:
        return len(self.node_depth)


@lru_cache(maxsize=64)
def tree_layout(trunk: int, branches: int, depth: int) -> TreeLayout:
    """The layout of a tree window with ``trunk`` trunk nodes (root included), K and D."""
    depth = min(depth, trunk)
    parents, depths = list(range(-1, trunk - 1)), list(range(trunk))
    source = list(range(trunk))
    children = [[-1] * branches for _ in range(trunk)]
    for i in range(trunk - 1):
        children[i][0] = i + 1
    level = [0]
    for d in range(1, depth):
        following = []
        for parent in level:
            for k in range(branches):
                if k == 0 and parent == d - 1:  # the trunk's own child
                    following.append(d)
                    continue
                parents.append(parent)
                depths.append(d)
                source.append(trunk + (d - 1) * branches + k)
                children.append([-1] * branches)
                children[parent][k] = len(parents) - 1
                following.append(len(parents) - 1)
        level = following
    n = len(parents)
    ancestors = torch.eye(n, dtype=torch.bool)
    for i in range(n):  # parents come before children, so each row extends its parent's
        if parents[i] >= 0:
            ancestors[i] |= ancestors[parents[i]]
    return TreeLayout(trunk, depth, branches, ancestors, torch.tensor(depths), torch.tensor(source),
                      torch.tensor(children))


def alternatives(p_draft: Tensor, first: Tensor, branches: int, generator: Randomness) -> tuple[Tensor, Tensor]:
    """Draw ``branches - 1`` alternatives to each draft from its law, without replacement.

    Args:
        p_draft: (B, P, V) the law each draft ``first`` (B, P) was drawn from.
        first: (B, P) the drafts (branch 0).
        branches: K.
        generator: randomness.
    Returns:
        tokens: (B, P, K) branch 0 is ``first``.
        laws: (B, P, K, V) the law of branch k given branches before it (``p_draft`` with them
            removed, renormalised); all zeros once the law has no mass left (never accepted).
    """
    tokens, laws = [first], [p_draft]
    left = p_draft.clone()
    for _ in range(branches - 1):
        left = left.scatter(-1, tokens[-1][..., None], 0.0)  # (B, P, V)
        total = left.sum(-1, keepdim=True)
        law = torch.where(total > 0, left / total.clamp_min(torch.finfo(left.dtype).tiny), 0.0)
        drawable = torch.where(total > 0, law, p_draft)  # an exhausted law draws anything: it is never accepted
        tokens.append(sample(drawable, generator))  # (B, P)
        laws.append(law)
    return torch.stack(tokens, 2), torch.stack(laws, 2)


@dataclass(frozen=True)
class TreeVerdict:
    """What :func:`tree_accept` decided, per row.

    Attributes:
        n_accepted: (B,) drafts accepted along the path.
        values: (B, T) accepted tokens, the recovered or bonus token at slot ``n_accepted``, then
            the trunk's drafts.
        path: (B, T) node at each depth of the accepted path (the trunk past its end).
        off_trunk: (B,) depth at which the path left the trunk (T where it never did).
    """

    n_accepted: Tensor
    values: Tensor
    path: Tensor
    off_trunk: Tensor

    def repeat(self, times: int) -> TreeVerdict:
        """The verdict for ``times`` stacked copies of the batch (guidance's two row sets)."""
        return TreeVerdict(self.n_accepted.repeat(times), self.values.repeat(times, 1), self.path.repeat(times, 1),
                           self.off_trunk.repeat(times))


def tree_accept(layout: TreeLayout, table: Tensor, alt_laws: Tensor, trunk_laws: Tensor, p_nodes: Tensor,
                generator: Randomness) -> TreeVerdict:
    """Recursive rejection down a draft tree, then speculative sampling down the trunk.

    At a node on the path, its children are the siblings ``x_1 .. x_K`` of the next position,
    tried against the node's target by :func:`~jacobix.core.acceptance.siblings_accept`; the
    first accepted becomes the path's next node, and if all fail the position takes the residual
    draw and the pass stops. Past the tree only the trunk continues, verified as in SJD. A path
    that ends on a branch leaf takes a bonus draw from the leaf's target. Each committed token
    follows the target given the tokens before it, exactly.

    Args:
        layout: the window's tables.
        table: (B, T + (depth - 1) * K) tokens: root, trunk drafts, alternatives.
        alt_laws: (B, depth - 1, K, V) the law of each alternative (branch 0: the trunk draft's).
        trunk_laws: (B, T - 1, V) the law of each trunk draft.
        p_nodes: (B, N, V) the target after each node.
        generator: randomness.
    """
    b, t, k = table.shape[0], layout.trunk, layout.branches
    device = table.device
    rows = torch.arange(b, device=device)
    children = layout.children.to(device)
    alt_tokens = table[:, t:].view(b, layout.depth - 1, k)  # (B, depth-1, K)
    node = torch.zeros(b, dtype=torch.long, device=device)  # (B,) the path's current node
    alive = torch.ones(b, dtype=torch.bool, device=device)
    accepted = torch.zeros(b, dtype=torch.long, device=device)
    values = torch.cat([table[:, 1:t], table.new_zeros(b, 1)], 1)  # (B, T) slot i: position root + 1 + i
    path = torch.arange(t, device=device).repeat(b, 1)  # (B, T)
    for d in range(1, layout.depth):
        chosen, token = siblings_accept(p_nodes[rows, node], alt_laws[:, d - 1], alt_tokens[:, d - 1], generator)
        hit = alive & (chosen < k)
        values[:, d - 1] = torch.where(alive, token, values[:, d - 1])
        node = torch.where(hit, children[node, chosen.clamp(max=k - 1)], node)
        path[:, d] = torch.where(hit, node, path[:, d])
        accepted += hit.long()
        alive &= hit
    last = layout.depth - 1
    on_trunk = alive & (node == last) & (t - 1 > last)  # rows that go on down the chain below the tree
    if t - 1 > last:
        n_chain, chain_token = speculative_accept(table[:, last + 1 : t], trunk_laws[:, last:],
                                                  p_nodes[:, last:t], generator)
        chain = values[:, last:].scatter(1, n_chain[:, None], chain_token[:, None])  # (B, T - last)
        values[:, last:] = torch.where(on_trunk[:, None], chain, values[:, last:])
        accepted = torch.where(on_trunk, accepted + n_chain, accepted)
    leaf = alive & ~on_trunk  # a fully accepted tree path with nothing below it: a bonus from its end
    bonus = sample(p_nodes[rows, node], generator)  # (B,)
    values[rows, accepted] = torch.where(leaf, bonus, values[rows, accepted])
    off = (path != torch.arange(t, device=device)).long().argmax(1)
    off_trunk = torch.where((path != torch.arange(t, device=device)).any(1), off, t)
    return TreeVerdict(accepted, values, path, off_trunk)


def path_moves(verdict: TreeVerdict, root_slot: Tensor) -> tuple[Tensor, Tensor]:
    """Cache slots to copy so that the accepted path's keys sit at their positions.

    Args:
        verdict: a tree verdict.
        root_slot: (B,) the slot of each row's root.
    Returns:
        source, target: (B, P) slots; where nothing moves, source equals target.
    """
    t = verdict.path.shape[1]
    depth = torch.arange(t, device=root_slot.device)[None]  # (1, T)
    moved = (depth >= verdict.off_trunk[:, None]) & (depth <= verdict.n_accepted[:, None])  # (B, T) accepted branch nodes
    target = root_slot[:, None] + depth  # (B, T)
    source = torch.where(moved, root_slot[:, None] + verdict.path, target)
    return source, target


__all__ = ["DraftTree", "TreeLayout", "TreeVerdict", "alternatives", "path_moves", "tree_accept", "tree_layout"]
