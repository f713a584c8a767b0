"""The cyclic garbage collector's settings for ``tunnel serve`` (the CLI owns its process;
an embedding host keeps its own settings: nothing here runs on ``import tunnel``).

A handshake allocates a few hundred container objects (the request's head, the route's
notes, the tunnel's records and callbacks), nearly all freed by reference counting as the
tunnel ends. With the interpreter's default generation-0 threshold (700 allocations)
the collector runs every couple of handshakes and walks objects that are about to be
freed anyway; a larger threshold runs it an order of magnitude less often.

`freeze` moves every object alive once the configuration is loaded and the engine built
(the modules, the frozen `Config`, compiled patterns, the engine's tables) out of the
collector's generations, so no full collection walks them again; before ``fork`` it also
keeps the workers from writing to those pages (copy-on-write stays shared). A reload
``unfreeze``-s first (`thaw`) so the replaced configuration can be collected; it is not
frozen again, because the tunnels open at that moment would be frozen with it.
"""

from __future__ import annotations

import gc
import logging
import os

log = logging.getLogger("tunnel")

#: Generation-0 threshold for ``tunnel serve`` (the interpreter's default is 700); the
#: older generations keep their defaults.
GEN0_THRESHOLD = 10_000


def tune() -> None:
    """Raise the generation-0 threshold (once per process; a forked worker inherits it)."""
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
    log.debug("gc: thresholds %s (pid %d)", gc.get_threshold(), os.getpid())


def freeze() -> None:
    """Collect what is garbage now, then move everything alive out of the generations."""
    gc.collect()
    gc.freeze()
    log.debug("gc: %d objects frozen (pid %d)", gc.get_freeze_count(), os.getpid())


def thaw() -> None:
    """Give the frozen objects back to the oldest generation (a reload: the old
    configuration may now be garbage)."""
    count = gc.get_freeze_count()
    gc.unfreeze()
    log.debug("gc: %d objects unfrozen (pid %d)", count, os.getpid())
