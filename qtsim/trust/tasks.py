"""Pointer chasing with a controllable hop count k: the trust probe's multi-hop task family.

One problem: a random map ``succ`` over ``n_nodes`` nodes, written in the prompt as its edges
in random order, a start node x0, and the chain x1 = succ(x0), ..., xk = succ(x(k-1)) that the
model writes out one node per generated token (chain of thought: one token per hop, as the
paper's K atomic hops are tokens). The answer is xk, exact by construction.

The map is a random **cyclic** permutation (one cycle through all nodes), so a chain of k <
n_nodes hops never revisits a node: every hop is a fresh lookup, and a wrong hop cannot rejoin
the right chain by itself (it lands at another node of the cycle and follows the cycle from
there), so the final answer is right only if every hop was (unless later errors cancel).

Tokens (:func:`vocab_size`): ``PAD``, ``BOS``, ``SEP``, one *node* token per node (``A``, ``B``,
...) and one *edge* token per ordered pair (``a>B``: node a points to node B), so the map is
``n_nodes`` tokens and one hop is one lookup: find the edge whose source is the current node,
emit its target. (An edge as two tokens, source then target, needs an induction circuit that
a small model on a shared 2-core CPU did not form within minutes of training; one token per
edge is the fused key-value form of associative recall.)::

    BOS  edge(a1>succ(a1)) ... edge(aN>succ(aN))  SEP  node(x0)  |  node(x1) ... node(xk)
    <----------------- prompt: n_nodes + 3 tokens ----------------> | <-- chain: k tokens -->

The prompt length does not depend on k, so problems of any depth batch without padding.

Problems come from a seed through numpy's ``default_rng`` with a stream per (seed, split, k)
(:func:`problems`): the same arguments give the same problems on any machine; training and
evaluation draw from different splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qtsim.errors import QtsimError

PAD, BOS, SEP = 0, 1, 2
N_SPECIAL = 3
#: the stream tags of :func:`problems` (a third value of the seed sequence)
SPLITS = {"train": 0, "eval": 1, "test": 2, "check": 3}
MIN_NODES = 3


def vocab_size(n_nodes: int) -> int:
    """Tokens in the vocabulary: 3 specials + ``n_nodes`` node tokens + ``n_nodes**2`` edges."""
    return N_SPECIAL + int(n_nodes) + int(n_nodes) ** 2


def node_token(node):
    """Token of node ``node`` (the start or a chain step); arrays welcome."""
    return N_SPECIAL + np.asarray(node)


def edge_token(src, dst, n_nodes: int):
    """Token of the edge ``src -> dst``; arrays welcome."""
    return N_SPECIAL + int(n_nodes) + np.asarray(src) * int(n_nodes) + np.asarray(dst)


def token_node(token, n_nodes: int):
    """Node index of a node token (-1 for anything else: an edge, a special); arrays welcome."""
    t = np.asarray(token) - N_SPECIAL
    return np.where((t >= 0) & (t < n_nodes), t, -1)


def token_edge(token, n_nodes: int):
    """(src, dst) of edge tokens, (-1, -1) for anything else; arrays welcome."""
    e = np.asarray(token) - N_SPECIAL - int(n_nodes)
    ok = (e >= 0) & (e < int(n_nodes) ** 2)
    return np.where(ok, e // n_nodes, -1), np.where(ok, e % n_nodes, -1)


def prompt_length(n_nodes: int) -> int:
    """Tokens in every prompt: BOS, one per edge, SEP, the start node."""
    return int(n_nodes) + 3


@dataclass(frozen=True)
class Problems:
    """``n`` pointer-chasing problems of ``hops`` hops over ``n_nodes`` nodes.

    ``prompts`` (n, n_nodes + 3) int64 tokens; ``chains`` (n, hops) node indices x1..xk;
    ``succ`` (n, n_nodes) the maps; ``start`` (n,) x0. ``answers`` is ``chains[:, -1]``.
    """

    prompts: np.ndarray
    chains: np.ndarray
    succ: np.ndarray
    start: np.ndarray
    n_nodes: int
    hops: int

    @property
    def answers(self) -> np.ndarray:
        """x_k, the node k hops from the start (node indices)."""
        return self.chains[:, -1]

    @property
    def chain_tokens(self) -> np.ndarray:
        """The chain as node tokens (n, hops): what a model should generate."""
        return node_token(self.chains)

    def sequences(self) -> np.ndarray:
        """Prompt followed by the chain (n, n_nodes + 3 + hops): a training sequence."""
        return np.concatenate([self.prompts, self.chain_tokens], axis=1)

    def __len__(self) -> int:
        return len(self.start)


def check_args(n_nodes: int, hops: int, n: int = 1) -> None:
    """Refuse a family that cannot exist (one-line :class:`QtsimError`)."""
    if int(n_nodes) < MIN_NODES:
        raise QtsimError(f"pointer chasing needs at least {MIN_NODES} nodes, got {n_nodes}")
    if not 1 <= int(hops) < int(n_nodes):
        raise QtsimError(f"hops must be in 1..{int(n_nodes) - 1} for {n_nodes} nodes (a chain of "
                         f"n_nodes or more hops revisits the cycle), got {hops}")
    if int(n) < 1:
        raise QtsimError(f"need at least one problem, got {n}")


def rng_for(seed: int, split: str, hops: int) -> np.random.Generator:
    """The generator of one (seed, split, k) stream."""
    if split not in SPLITS:
        raise QtsimError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    return np.random.default_rng([int(seed), SPLITS[split], int(hops)])


def random_cycles(rng: np.random.Generator, n: int, n_nodes: int) -> np.ndarray:
    """``n`` random cyclic permutations (one cycle through all nodes): succ arrays (n, n_nodes)."""
    order = rng.permuted(np.tile(np.arange(n_nodes), (n, 1)), axis=1)
    succ = np.empty_like(order)
    np.put_along_axis(succ, order, np.roll(order, -1, axis=1), axis=1)
    return succ


def follow(succ: np.ndarray, start: np.ndarray, hops: int) -> np.ndarray:
    """The chains x1..xk from ``start`` through maps ``succ`` (n, n_nodes): (n, hops)."""
    rows = np.arange(len(start))
    out = np.empty((len(start), hops), dtype=np.int64)
    x = np.asarray(start)
    for j in range(hops):
        x = succ[rows, x]
        out[:, j] = x
    return out


def problems(n: int, hops: int, n_nodes: int = 16, seed: int = 0,
             split: str = "eval") -> Problems:
    """``n`` seeded pointer-chasing problems of ``hops`` hops (the module docstring's format)."""
    check_args(n_nodes, hops, n)
    rng = rng_for(seed, split, hops)
    succ = random_cycles(rng, n, n_nodes)
    edge_order = rng.permuted(np.tile(np.arange(n_nodes), (n, 1)), axis=1)
    start = rng.integers(0, n_nodes, size=n)
    rows = np.arange(n)[:, None]
    edges = edge_token(edge_order, succ[rows, edge_order], n_nodes)
    prompts = np.concatenate([np.full((n, 1), BOS), edges, np.full((n, 1), SEP),
                              node_token(start)[:, None]], axis=1).astype(np.int64)
    return Problems(prompts, follow(succ, start, hops), succ, start, int(n_nodes), int(hops))


def parse_prompt(prompt, n_nodes: int) -> tuple[dict[int, int], int]:
    """(map, start) read back from one prompt's tokens: an independent decoder for checks."""
    toks = [int(t) for t in prompt]
    if toks[0] != BOS or toks[-2] != SEP or len(toks) != prompt_length(n_nodes):
        raise QtsimError("not a pointer-chasing prompt")
    src, dst = token_edge(toks[1:-2], n_nodes)
    succ = {}
    for a, b in zip(src.tolist(), dst.tolist(), strict=True):
        if a < 0 or a in succ:
            raise QtsimError("malformed edge in a pointer-chasing prompt")
        succ[a] = b
    return succ, int(token_node(toks[-1], n_nodes))


def render(prompt, n_nodes: int, chain=None) -> str:
    """A prompt (and chain) as text, keys lower-case and nodes upper-case: ``a>F c>B | A : F``."""
    def name(i):
        return _letters(i)

    succ, start = parse_prompt(prompt, n_nodes)
    text = " ".join(f"{name(a)}>{name(b).upper()}" for a, b in succ.items())
    text += f" | {name(start).upper()}"
    if chain is not None:
        text += " : " + " ".join(name(int(c)).upper() if c >= 0 else "?" for c in chain)
    return text


def _letters(i: int) -> str:
    s = ""
    i = int(i)
    while True:
        s = chr(ord("a") + i % 26) + s
        i = i // 26 - 1
        if i < 0:
            return s


def chain_accuracy(predicted_nodes: np.ndarray, chains: np.ndarray) -> dict[str, np.ndarray]:
    """Per-problem scores of predicted chains (n, k) against the exact ones.

    ``answer``: x_k right (the task's score); ``chain``: every hop right; ``hops_right``: hops
    right before the first error (0..k).
    """
    pred = np.asarray(predicted_nodes)
    ok = pred == np.asarray(chains)
    return {"answer": ok[:, -1], "chain": ok.all(axis=1),
            "hops_right": first_divergence(pred, chains)}


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
MAX_ENCODED_NODES = len(_DIGITS)


def encode_chains(nodes: np.ndarray) -> str:
    """Chains of node indices (n, k) as one string, a word per chain, a base-36 digit per hop
    (``?`` for a token that is not a node; maps of up to 36 nodes): ``"09z? abcd"``. Stored in
    probe records."""
    nodes = np.asarray(nodes)
    if nodes.size and nodes.max() >= MAX_ENCODED_NODES:
        raise QtsimError(f"chains over more than {MAX_ENCODED_NODES} nodes cannot be encoded")
    table = np.array(list(_DIGITS) + ["?"])
    return " ".join("".join(row) for row in table[np.where(nodes < 0, MAX_ENCODED_NODES, nodes)])


def decode_chains(text: str) -> np.ndarray:
    """The inverse of :func:`encode_chains`: (n, k) node indices, -1 for ``?``."""
    lookup = {c: i for i, c in enumerate(_DIGITS)}
    return np.array([[lookup.get(c, -1) for c in w] for w in text.split()], dtype=np.int64)


def first_divergence(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, hops equal in both chains before they first differ (k where they never do)."""
    same = np.asarray(a) == np.asarray(b)
    return np.where(same.all(axis=1), same.shape[1], np.argmin(same, axis=1))


def flip_outcomes(pred: np.ndarray, ref: np.ndarray, probs: Problems) -> dict[str, int]:
    """Where two chains on the same problems first part, who was right at that hop.

    At the first hop where ``pred`` leaves ``ref`` (both having followed the same nodes so
    far, so the hop has one right answer), count ``ref_right`` (ref right, pred wrong),
    ``pred_right`` (pred right, ref wrong) and ``both_wrong``; chains that never part count in
    ``same``. A paired comparison: a setting that only moves hops its reference got wrong
    costs no accuracy however often it moves them.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    first = first_divergence(pred, ref)
    rows = np.nonzero(first < pred.shape[1])[0]
    pos = first[rows]
    prev = np.where(pos == 0, probs.start[rows], ref[rows, np.maximum(pos - 1, 0)])
    truth = np.where(prev >= 0, probs.succ[rows, np.maximum(prev, 0)], -2)
    ref_ok = ref[rows, pos] == truth
    pred_ok = pred[rows, pos] == truth
    return {"ref_right": int((ref_ok & ~pred_ok).sum()), "pred_right": int((pred_ok & ~ref_ok).sum()),
            "both_wrong": int((~ref_ok & ~pred_ok).sum()), "same": int(len(pred) - len(rows))}
