"""The demo's simulated coalition (``coalition demo``, cli/demo.py).

- ``world.py``: the partners, their rate cards and economics, the traffic mix, the pace;
- ``period.py``: :class:`~cli.simulation.period.Simulation`, the period on a simulated clock:
  events scheduled day by day, run in batched transactions, the expiry jobs each night;
- ``traffic.py``: what each event does through :class:`~partners.operations.Operations`
  (a member joins, earns, burns, holds; a partner refunds; the operator corrects);
- ``keys.py``: the API keys the demo makes;
- ``settle.py``: the period closed, its statements exported and verified, paid, reconciled;
- ``report.py``: the tables the demo prints.
"""
