"""The daemon that runs inside each sandbox: a small HTTP/1.1 server that runs commands
and moves files.  Standard library only, Python >= 3.9.

An image gets it as one file, a zipapp with the modules' bytecode (``bundle.py``), and
starts it with ``python3 -I -S -u /opt/commandlab/daemon.pyz``;
``python -m commandlab_async.daemon`` runs it from source.  Its wire contract (the
environment it reads, the endpoints, the frames, the error codes) is ``protocol.py``,
which the client imports too.  This package's ``__init__`` imports nothing.

Modules: ``protocol`` (the wire contract), ``config`` (environment to ``Config``, the TLS
context), ``errors`` (typed request errors), ``http`` (request heads, authentication,
replies, the log), ``connections`` (TLS socket, connection, request body, one exchange),
``server`` (the loop, the worker pool, the bounds on unauthenticated clients),
``routes`` (the route table), ``exec`` (``/exec`` and ``/processes``), ``processes``
(output rings, the registry of processes, OOM scores), ``users`` (another user to run
as), ``files`` (the ``/files`` endpoints), ``fileops`` (the file work and the write
walk), ``file_agent`` (file work as another user, in a short-lived process), ``main``
(start-up), ``bundle`` (builds the zipapp; not part of it).

Why it is shaped like this
--------------------------
A sandbox is worth more than any one request, so nothing a client sends or a command
prints may grow the daemon's memory without bound or exhaust its processes:

* One thread (the *loop*) accepts connections and reads request headers without
  blocking.  Headers must arrive within ``HEADER_DEADLINE`` seconds and fit in
  ``MAX_HEADER_BYTES``; idle keep-alive connections close after ``IDLE_TIMEOUT``.
  Authentication happens there, so an unauthenticated client costs one socket and
  never a thread.  What unauthenticated clients can make it hold is bounded by the
  sandbox's memory limit, however many connect: at most a sixteenth of it (1 to 16
  MiB) in request heads not yet authenticated (past that the largest are dropped), and
  at most ``MAX_CONNECTIONS`` connections, fewer in a small sandbox (past that the
  oldest unauthenticated one is dropped).  A client that pipelines requests faster
  than it reads the replies is not read from until it does.  (``server.py``)
* Authenticated requests (except ``/health``, answered by the loop) go to a bounded
  pool of ``MAX_WORKERS`` threads; more wait in a queue.
* Output, stdin and files are streamed with back-pressure in bounded chunks.  What
  background processes print is kept in rings that together hold at most
  ``OUTPUT_BUDGET``, however many processes ran (finished ones' output goes first).
  (``exec.py``, ``processes.py``)
* Commands are the kernel OOM killer's first choice, the daemon its last: every command's
  ``oom_score_adj`` is raised to 1000 (a shell command does it with a builtin as its
  first act, the daemon does it for an argv command as soon as it has exec'd), so a
  command that blows the sandbox's memory limit is the one killed (exit code -9) and
  the daemon keeps serving.  Where /proc is not writable, nothing changes.
* A thread or process the kernel refuses (the sandbox's pids or memory limit) is a
  ``resource_exhausted`` reply, never a dropped connection: a request no worker thread
  can be started for waits ``STARVED_GRACE`` seconds for a busy one, then gets a 503.
  Idle workers exit after ``WORKER_IDLE`` seconds, giving their pids back; the TTL is
  kept by the loop (no timer thread).
* Every import counts in a sandbox's start cost: ``typing`` is never imported at run
  time (each module's ``TYPE_CHECKING = False`` trick), rarely needed modules are
  imported where they are used, and the zipapp holds compiled bytecode.
* The daemon marks itself non-dumpable so commands running as the same user cannot
  read its memory (``main.py``).  A root daemon never opens a path on another user's
  behalf: a short-lived process running as them does (``file_agent.py``).
"""
