"""``mmc reproduce``: re-execute recorded jobs from their recorded code, config and inputs, and
check that they produce the recorded files again (docs/provenance.md, section 4).

- :mod:`mmc.reproduce.stages`: per stage, whether it is re-executed and how its files compare;
- :mod:`mmc.reproduce.compare`: file comparison, bitwise then by value (pure);
- :mod:`mmc.reproduce.sample`: which jobs an audit picks (pure);
- :mod:`mmc.reproduce.sandbox`: code checkouts, data mirrors, links;
- :mod:`mmc.reproduce.run`: the audit and its report; :mod:`mmc.reproduce.cli`: the command.
"""
