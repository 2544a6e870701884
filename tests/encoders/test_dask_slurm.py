"""The SLURM recipe of docs/scale.md (issue 22, item 1): each Python block of the Dask section
that makes a ``dask_jobqueue.SLURMCluster`` is run up to that cluster (its imports and the
``SLURMCluster(...)`` statement as written), and the job script it would submit starts a Dask
worker of one thread on the cluster's scheduler, with the CPUs, memory, time and Python the
recipe asks for. No job is submitted: there is no SLURM (sbatch) here."""

from __future__ import annotations

import ast
import re

import pytest

from tests.conftest import REPO_ROOT

SCALE_MD = REPO_ROOT / "docs" / "scale.md"


def _dask_section_blocks() -> list[str]:
    text = SCALE_MD.read_text(encoding="utf-8")
    section = text[text.index("## Several machines: extraction on Dask") :]
    nxt = section.find("\n## ", 1)
    section = section if nxt < 0 else section[:nxt]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def _slurm_blocks() -> list[str]:
    return [b for b in _dask_section_blocks() if "SLURMCluster(" in b]


def test_the_recipe_is_there():
    blocks = _slurm_blocks()
    assert len(blocks) == 2, "docs/scale.md: a SLURM block for Python (client=) and one for the CLI (--scheduler)"
    calls = [
        {
            n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", None): n
            for n in ast.walk(ast.parse(b))
            if isinstance(n, ast.Call)
        }
        for b in blocks
    ]
    assert all("scale" in c for c in calls)
    python = calls[0]["extract_features_dask"]
    assert any(k.arg == "client" for k in python.keywords)
    text = SCALE_MD.read_text(encoding="utf-8")
    assert "--scheduler" in blocks[1] or re.search(r"gcrdp \w+ .*--scheduler", text)


@pytest.mark.parametrize("which", [0, 1])
def test_the_recipes_slurm_cluster_writes_a_worker_job_script(which, monkeypatch):
    pytest.importorskip("dask_jobqueue")
    import dask

    tree = ast.parse(_slurm_blocks()[which])
    keep = [
        n
        for n in tree.body
        if (isinstance(n, ast.ImportFrom) and n.module == "dask_jobqueue")
        or (isinstance(n, ast.Assign) and isinstance(n.value, ast.Call) and getattr(n.value.func, "id", "") == "SLURMCluster")
    ]
    assert len(keep) == 2, ast.dump(tree)[:300]
    namespace: dict = {}
    # no dashboard on port 8787 (the recipe keeps dask-jobqueue's default, a real cluster's choice)
    with dask.config.set({"jobqueue.slurm.scheduler-options": {"dashboard_address": ":0"}}):
        exec(compile(ast.Module(body=keep, type_ignores=[]), str(SCALE_MD), "exec"), namespace)  # noqa: S102
    cluster = namespace[keep[1].targets[0].id]
    try:
        script = cluster.job_script()
        address = cluster.scheduler_address
    finally:
        cluster.close()
    assert address.startswith("tcp://")
    worker = [line for line in script.splitlines() if "distributed.cli.dask_worker" in line]
    assert len(worker) == 1, script
    assert worker[0].startswith("/shared/venv/bin/python -m distributed.cli.dask_worker " + address)
    assert "--nthreads 1" in worker[0] and "--nworkers" not in worker[0].replace("--nworkers 1", "")
    for directive in ("#SBATCH -p cpu", "#SBATCH --cpus-per-task=8", "#SBATCH -t 02:00:00", "#SBATCH -A my-project"):
        assert directive in script, (directive, script)
