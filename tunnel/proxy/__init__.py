"""One client connection, as generator tasks: the session (`session`), reaching a backend
with failover (`failover`), plain HTTP forwarding (`forward`), what a request did
(`records`), and the narrow view of the engine it uses (`services`)."""
