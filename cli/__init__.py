"""The composition root: the ``coalition`` command (``main.py``; ``python -m cli``), serve
(``serve.py``), the worker and its jobs (``jobs.py``), the administrative, link and file
commands (``commands.py``, ``links.py``, ``files.py``) and the demo (``demo.py`` over the
simulation in ``simulation/``). It may import every layer; nothing imports it."""
