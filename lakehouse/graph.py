"""Ordering nodes so that every node comes after the nodes it reads: the one graph algorithm.

Used by the configuration's check that gold tables read no cycle (lakehouse/config/loading.py)
and by the pipeline graph (lakehouse/pipeline.py). No dependencies, so both can use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class CycleError(ValueError):
    """Nodes that read each other in a cycle; ``nodes`` is the cycle, its first node repeated last."""

    def __init__(self, nodes: tuple[str, ...]):
        super().__init__(f"read each other in a cycle: {' -> '.join(nodes)}")
        self.nodes = nodes


def inputs_first(reads: Mapping[str, Iterable[str]], wanted: Iterable[str] | None = None) -> list[str]:
    """``wanted`` (default: every node of ``reads``) in an order where each node comes after the
    nodes among them that it reads, directly or through nodes outside ``wanted``. Nodes keep their
    given order where the graph leaves it free. Raises CycleError."""
    chosen = list(reads) if wanted is None else list(wanted)
    keep = set(chosen)
    order: list[str] = []
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        if node in done:
            return
        if node in path:
            raise CycleError(path[path.index(node):] + (node,))
        for read in reads.get(node, ()):
            visit(read, path + (node,))
        done.add(node)
        if node in keep:
            order.append(node)

    for node in chosen:
        visit(node, ())
    return order

