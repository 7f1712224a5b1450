"""The layers hold: an entrypoint never opens a unit of work itself. It calls a service (a use case,
or a read-only query such as `delivery.get_meter`) and hands it `system.new_uow()`; the service
opens, reads or commits, and closes it. `uv run lint-imports` holds the imports; this holds the
rest, which import rules cannot see."""

import ast
from pathlib import Path

import gasworks

ENTRYPOINTS = Path(gasworks.__file__).parent / "entrypoints"

# Places allowed to open a unit of work in an entrypoint, by path under entrypoints/ and the
# function it happens in, each with why it is wiring and not a read: keep this short. None so far:
# the health probes read through checks.database_answers like every other read.
WIRING: dict[tuple[str, str], str] = {}

UOW_FACTORIES = frozenset({"new_uow", "uow_factory"})


def _opens_a_unit_of_work(expr: ast.expr) -> bool:
    """`with system.new_uow() as uow`, `with new_uow():`, `with (x.new_uow()) as uow`, `with uow:`."""
    if isinstance(expr, ast.Call):
        func = expr.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        return name in UOW_FACTORIES
    if isinstance(expr, ast.Name | ast.Attribute):
        return (expr.id if isinstance(expr, ast.Name) else expr.attr) == "uow"
    return False


def units_of_work_opened(source: str) -> list[tuple[str, int]]:
    """(enclosing function, line) of every `with` that opens a unit of work in this source."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.With | ast.AsyncWith) and any(_opens_a_unit_of_work(item.context_expr) for item in child.items):
                found.append((function, child.lineno))
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            visit(child, inner)

    visit(ast.parse(source), "<module>")
    return found


def test_no_entrypoint_opens_a_unit_of_work_of_its_own():
    opened = []
    for path in sorted(ENTRYPOINTS.rglob("*.py")):
        where = path.relative_to(ENTRYPOINTS).as_posix()
        for function, line in units_of_work_opened(path.read_text(encoding="utf-8")):
            if (where, function) not in WIRING:
                opened.append(f"entrypoints/{where}:{line} in {function}()")
    assert not opened, "move these reads into a service query (`def x(..., uow: UnitOfWork)` that opens `with uow:`) and call it:\n" + "\n".join(opened)


def test_every_wiring_place_still_opens_one():
    """An allowance outlives its reason otherwise."""
    for (where, function), why in WIRING.items():
        assert why.strip(), (where, function)
        assert any(f == function for f, _ in units_of_work_opened((ENTRYPOINTS / where).read_text(encoding="utf-8"))), f"entrypoints/{where} {function}() opens none now: drop it from WIRING"


def test_the_scan_sees_each_way_of_opening_one():
    """The rule is only as good as its scan: every spelling seen in entrypoints before is caught."""
    source = """
def get_meter(serial):
    with new_uow() as uow:
        return uow.meters.get(serial)

def channels_list(database_url):
    with system(database_url).new_uow() as uow:
        return uow.channels.list()

def healthz():
    with (system.new_uow()) as uow, open("x") as f:
        pass

async def later(uow):
    async with uow:
        pass

def fine(serial):
    with open("x") as f:
        return delivery.get_meter(serial, system.new_uow())
"""
    assert units_of_work_opened(source) == [("get_meter", 3), ("channels_list", 7), ("healthz", 11), ("later", 15)]
