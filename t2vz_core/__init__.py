"""t2vz_core: the plain library behind t2vz (no Prefect import anywhere in this package).

Manifest schema, media I/O, control maps and the Text2Video-Zero engine. Usable from a
notebook; the Prefect tasks in `tasks/` only wrap these functions.
"""

__version__ = "0.1.0"
