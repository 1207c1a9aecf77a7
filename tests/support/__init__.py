"""Shared test support, imported as `support.<module>` (tests/ is on sys.path,
pytest's rootdir-relative import mode puts it there for every test file):

- servers: a real wsexec in-process (make_config, serving) or as a process
  (WsexecProcess), and handler scripts written at test time
- clients: every client the tests use: trio_websocket, raw bytes and hand-built
  WebSocket frames, and an h11 HTTP/1.1 client
- waiting: trio_test and every wait with a time ceiling
- procfs: what /proc says about processes (descendants, fds, memory, CPU)
- certs: a CA and certificates made at test time (trustme)
"""
