"""`gasworks --help` answers at once: it loads no database, web, DuckDB or simulator code (the times are in bench/)."""

import json
import subprocess
import sys

import pytest

HEAVY = ("alembic", "sqlalchemy", "fastapi", "starlette", "uvicorn", "duckdb", "psycopg", "gasworks.sim", "gasworks.adapters.db", "gasworks.bootstrap")

PROBE = """
import json, sys
from gasworks.entrypoints.cli.main import app
sys.argv = ["gasworks", *json.loads(sys.argv[1])]
try:
    app()
except SystemExit:
    pass
print("\\nLOADED " + json.dumps(sorted(name for name in sys.modules if name.startswith({heavy}))))
"""


@pytest.mark.parametrize("args", [["--help"], ["check", "--help"], ["reconcile", "--help"], ["demo", "--help"], ["holds", "decide", "--help"]])
def test_help_loads_no_heavy_module(args):
    probe = PROBE.format(heavy=repr(HEAVY))
    done = subprocess.run([sys.executable, "-c", probe, json.dumps(args)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout
    loaded = json.loads(done.stdout.rsplit("LOADED ", 1)[1])
    assert loaded == [], f"`gasworks {' '.join(args)}` loaded {loaded}"


def test_a_command_still_loads_what_it_needs(tmp_path):
    from typer.testing import CliRunner

    from gasworks.entrypoints.cli.main import app

    url = f"sqlite:///{tmp_path / 'g.db'}"
    assert CliRunner().invoke(app, ["db", "upgrade", "--database-url", url]).exit_code == 0
    checked = CliRunner().invoke(app, ["check", "--database-url", url])
    assert checked.exit_code == 0 and "ledger holds" in checked.output
