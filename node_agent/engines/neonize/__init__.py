"""The neonize (whatsmeow) engine — production default.

neonize wraps whatsmeow (Go) through ctypes. Its glue has hazards that can kill or hang
the whole process (see ``NEONIZE.md`` of the team); this module is where every rule we
follow against them lives:

1. **One process-wide lock.** The Go glue keeps its clients in unsynchronised global maps.
   Calls that create or stop a client write those maps and take the :class:`FfiLock`
   exclusively; every other call (send, lookups, pairing code, liveness) reads them and
   takes it shared (Go allows concurrent map reads). A start holds the lock until the dial
   shows its first sign (QR, connected, failure) or ``start_hold_s`` passed, then waits
   ``start_stagger_s``: starts are serialised and staggered. When a pairing attempt ends,
   the Go thread reads the maps once more; its status callback blocks that thread until we
   hold the lock for it.
2. **A dedicated executor** sized ``max_sessions + spare``: each live session pins one
   thread (the Go event pump runs in ``to_thread``). Threads pinned forever by the glue (a
   dial that never returns; a pairing attempt that ended without a scan, whose Go thread
   then waits for a device id that never comes) are counted, and the executor is replaced
   by a larger one before they can starve it.
3. **Every handler wrapped**: neonize swallows exceptions of handlers silently; ours log.
4. **One referenced client per uuid**: a client object is created once per uuid and kept
   for the life of the engine, with its GC finalizer detached (it would call ``Stop(uuid)``
   outside our lock). A session gets a new uuid (``<id>~<n>``) only when its previous
   client is stuck in a dial that cannot be stopped without blocking.
5. **Bounded dials, never cancelled on the loop**: cancelling neonize's connect task runs a
   synchronous ``Stop`` on the loop (~57 s). We wait with a timeout instead and *abandon*
   a stuck dial: its client is kept referenced and stopped later, once the dial ends.
6. **Go log level set** before the first connect (``neonize.utils.log``), so DEBUG lines do
   not cross the FFI; neonize's ``logging.basicConfig`` handler is removed again.
7. **Own QR handler** (no terminal QR printer), own login-status handler.
8. **Device store**: a SQLite file per session under ``data_dir/neonize/`` (the path
   ``node_agent.device_store`` backs up, so a moved session needs no new pairing), or a
   PostgreSQL URL shared by all agents (then the paired JID of each session is kept in
   KV bucket ``zf_device_jids`` so another node loads the same device without re-pairing).
9. **Proxy and device name per session** (``SessionSpec.proxy`` / ``device_name``).
   Device properties are process-global in whatsmeow: the last writer wins at pairing.
10. **Stop in order**: the agent stops sessions one by one on SIGTERM; ``close()`` does not
    wait for pinned threads (the CLI exits the process without joining them).

Layout: :mod:`.engine` (the engine: config, FFI lock, executor, clients, device jids),
:mod:`.session` (a session's lifecycle and the events from Go), :mod:`.messaging`
(sends, read marks, presence), :mod:`.groups` and :mod:`.contacts` (issue 16),
:mod:`.protos` (message builders and decoders, pure functions tested offline).
"""

from node_agent.engines.neonize.engine import DEVICES_BUCKET, FfiLock, NeonizeConfig, NeonizeEngine
from node_agent.engines.neonize.session import NeonizeSession

__all__ = ["DEVICES_BUCKET", "FfiLock", "NeonizeConfig", "NeonizeEngine", "NeonizeSession"]
