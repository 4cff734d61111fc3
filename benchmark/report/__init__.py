"""Reporting, derived only from run records: ``summary`` (once per write) -> ``columns`` -> ``markdown``
(``leaderboard.md``) and ``figures``; published baselines (``baselines``) and paper-table comparisons
(``paper_tables``)."""
