"""The benchmark suite: tasks, optimizer configurations, runner, report.

Never imported by the library itself. Entry point: `python -m lrfree.bench` (`lrfree-bench`).
Layout: `tasks/` (the task contract in `tasks/base.py` and the registry), `optimizers.py`
(name -> handle factory), `runner.py` (one JSON record per run), `report.py` + `plots.py`
(tables and figures regenerated from the records), `cli.py`.
"""
