"""The pipeline: a networkx DAG of configured passes, validated completely before anything runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

import networkx as nx
from pydantic import ValidationError

from tailorfit.pipeline.contract import Facts, Pass, Port, PortFacts, get_pass
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.recipe import Recipe, Step


@dataclass
class Node:
    step: Step
    pass_: Pass
    wiring: dict[str, list[str]] = field(default_factory=dict)  # port name -> upstream step ids
    many: set[str] = field(default_factory=set)  # ports taking a list of handles


class Pipeline:
    """A validated DAG: unknown passes, bad config fields, cycles and unfed ports all fail here."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.nodes: dict[str, Node] = {}
        for step in recipe.steps:
            if step.id in self.nodes:
                raise TailorfitError(f"two recipe steps have the id '{step.id}'", "give each step a unique 'id'")
            self.nodes[step.id] = Node(step, _configure(step))
        self._wire()
        self.graph = nx.DiGraph()
        self.graph.add_nodes_from(self.nodes)
        for sid, node in self.nodes.items():
            for ups in node.wiring.values():
                self.graph.add_edges_from((u, sid) for u in ups)
        if not nx.is_directed_acyclic_graph(self.graph):
            cycle = " -> ".join(u for u, _ in nx.find_cycle(self.graph))
            raise TailorfitError(f"the recipe's steps form a cycle ({cycle})", "remove one of those 'inputs' references")
        self.order: list[str] = list(nx.lexicographical_topological_sort(self.graph, key=self._position))
        self._preflight()

    def _position(self, sid: str) -> int:
        return list(self.nodes).index(sid)

    def _wire(self) -> None:
        ids = list(self.nodes)
        consumed: set[str] = set()
        list_ports: list[tuple[Node, Port]] = []
        for pos, sid in enumerate(ids):
            node = self.nodes[sid]
            ports = {p.name: p for p in type(node.pass_).ports()}
            node.many = {p.name for p in ports.values() if p.many}
            for name in node.step.inputs:
                if name not in ports:
                    raise TailorfitError(
                        f"step '{sid}' (pass {node.step.pass_name}) has no input '{name}'",
                        f"its inputs are: {', '.join(ports) or 'none'}",
                    )
            for port in ports.values():
                given = node.step.inputs.get(port.name)
                if given is not None:
                    ups = [given] if isinstance(given, str) else list(given)
                    for up in ups:
                        self._check_explicit(sid, port, up)
                elif port.many:
                    list_ports.append((node, port))
                    continue
                else:
                    earlier = [u for u in ids[:pos] if issubclass(self._produces(u), port.kind)]
                    if not earlier:
                        raise TailorfitError(
                            f"step '{sid}' (pass {node.step.pass_name}) needs a {port.kind.kind} input but no earlier step produces one",
                            f"add a step producing {port.kind.kind} before it, or set inputs.{port.name}",
                        )
                    ups = [earlier[-1]]
                node.wiring[port.name] = ups
                # a handle is superseded when a step turns it into another of its kind (lower → evaluate), not when
                # it is only read (select reads a SearchResult, which package still wants)
                consumed.update(u for u in ups if issubclass(self._produces(u), port.kind) and issubclass(self._produces(sid), self._produces(u)))
        for node, port in list_ports:
            leaves = [u for u in ids if u != node.step.id and issubclass(self._produces(u), port.kind) and u not in consumed]
            if not leaves and not port.optional:
                raise TailorfitError(
                    f"step '{node.step.id}' (pass {node.step.pass_name}) needs {port.kind.kind} inputs but no step produces one",
                    f"add a step producing {port.kind.kind}, or set inputs.{port.name}",
                )
            node.wiring[port.name] = leaves

    def _check_explicit(self, sid: str, port: Port, up: str) -> None:
        if up not in self.nodes:
            raise TailorfitError(f"step '{sid}' takes input '{port.name}' from '{up}', which is not a step id", f"use one of: {', '.join(self.nodes)}")
        if not issubclass(self._produces(up), port.kind):
            raise TailorfitError(
                f"step '{sid}' input '{port.name}' needs a {port.kind.kind} but step '{up}' produces a {self._produces(up).kind}",
                "point the input at a step of the right kind",
            )

    def _produces(self, sid: str) -> type:
        return type(self.nodes[sid].pass_).produces()

    def _preflight(self) -> None:
        """Check each step's ``requires`` on the facts its ports will carry, in run order: a port's facts are what the
        step wired to it ``ensures`` (a list port: one per branch, in wiring order), so a fact one step changes (extract's
        layer count) reaches exactly the steps downstream of it along the wiring, never a sibling branch."""
        ensured: dict[str, Facts] = {}
        for sid in self.order:
            node = self.nodes[sid]
            ports: PortFacts = {
                port: [ensured[u] for u in ups] if port in node.many else ensured[ups[0]] for port, ups in node.wiring.items()
            }
            node.pass_.requires(ports)
            ensured[sid] = MappingProxyType(dict(node.pass_.ensures(ports)))
        self.facts = ensured

    def downstream(self, step_ids: set[str]) -> set[str]:
        out = set(step_ids)
        for sid in step_ids:
            out |= nx.descendants(self.graph, sid)
        return out

    def steps_matching(self, name: str) -> set[str]:
        """Step ids whose id or pass name is ``name`` (what ``--force`` accepts)."""
        found = {sid for sid, n in self.nodes.items() if name in (sid, n.step.pass_name)}
        if not found:
            raise TailorfitError(f"--force '{name}' matches no step or pass in the recipe", f"use one of: {', '.join(self.nodes)}")
        return found


def _configure(step: Step) -> Pass:
    cls = get_pass(step.pass_name)
    try:
        config = cls.Config.model_validate(step.config)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(p) for p in e["loc"]) or "config"
        raise TailorfitError(
            f"recipe step '{step.id}' (pass {step.pass_name}): field '{loc}': {e['msg']}",
            f"`tailorfit passes` lists the fields of '{step.pass_name}'",
        ) from None
    return cls(config)
