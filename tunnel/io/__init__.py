"""The I/O layer: the selectors loop (`loop`), the shared socket definitions (`streams`),
waiting steps (`steps`), TLS over memory BIOs (`tls`), backend connects and name lookup
(`connect`), listening and accepting (`listeners`). It knows no HTTP."""
