"""Command-line programs: one thin module per console script (arguments, then a call into the library).

Only here is process-wide state set: thread counts, logging, the matplotlib backend, warnings filters."""
