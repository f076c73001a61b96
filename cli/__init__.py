"""The composition root: the ``coalition`` command (``main.py``), serve (``serve.py``), the
worker and its jobs (``jobs.py``), the administrative and file commands (``commands.py``,
``files.py``) and the demo (``demo.py``). It may import every layer; nothing imports it."""
