"""Tunnels: the pump that moves bytes both ways (`pump`), its two drivers (`sync_driver`:
a pool thread per tunnel; `async_driver`: on the loop), the strategy that chooses between
them (`strategy`), and `relay_sockets` for two plain sockets (`api`)."""
