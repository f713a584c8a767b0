"""What the tests share, one module per job.

* `waiting`: ``wait_for(cond, timeout, what)``, a condition polled up to a deadline.
* `clocks`: ``FakeClock``, a monotonic clock that moves only when told.
* `clients`: raw client bytes and reads (upgrade requests, heads, statuses, keys).
* `backends`: loopback TCP servers on OS-picked ports, a thread per connection, closed
  by the test (the silent, closing, answering, recording, h11 and flooding backends).
* `resources`: the process's open fds and threads, for "nothing left behind" checks.
* `processes`: ``python -m tunnel`` as a subprocess and reading its output lines.
* `strategies`: the tunnel strategy configurations the behaviour tests run under.
* `sansio`: the protocol layer's helpers and hypothesis strategies (no sockets).
"""
