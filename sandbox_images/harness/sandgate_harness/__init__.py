"""The in-container harness of sandgate. Runs as the sandbox's PID 1.

It is the only trusted code inside the sandbox. It receives the payload (skill
files, semgrep rules, run config) as a tar stream on stdin, runs the static
phase (semgrep's native engine, before any submitted code runs), then the
dynamic phase (pytest + coverage in a child process, started before the
payload arrives so that it imports the toolchain while a warm pool's sandbox
waits; it blocks on a pipe for its job, which the harness sends only after
the static phase), then, when nothing has
already failed the verdict, the mutation phase (``sandgate_harness.mutation``:
harness-made mutants, one forked child each, controls of the unmutated skill),
and writes its signed lines to its stdout, which no other process in the
container holds.

Trust boundary:
- semgrep's findings are read from semgrep's own pipe before submitted code runs.
- test results and coverage come from the child through a pipe, as a stream of
  numbered frames authenticated with an HMAC key that the child reads from a
  second pipe and closes *before* importing submitted code (collected ids, one
  frame per test, one final summary); the harness accepts the result only if
  the stream is complete and consistent, the child then exited 0, and every
  test it read from the test files' AST was reported (``parse_frames``,
  ``unreported_tests``). Forging needs the signer from the runner's memory
  (closure cells, gc), which the static rules make hard.  This is "hard to
  fake", not "impossible to fake": the report states it.
- mutant outcomes are the exit statuses of forked children running submitted
  code: claims, like test results. The mutation server never imports the skill,
  rewrites the skill directory from the payload's bytes before each child, and
  its result pipe is closed in every child; see that module's docstring.
- after the child exits, every other process in the container is SIGKILLed
  before results are accepted (all but the warm mutation server, which has not
  been given its job: everyone is stopped first, killed by pid until no one
  else is alive, and only then is it continued; ``procs``); the harness is non-dumpable (no ptrace, no
  /proc/1/fd by the same uid under runc) and, as PID 1, ignores signals from
  inside under runc.
- every line the harness writes is signed with a per-evaluation key that the
  controller sends in the payload (never on disk, in the environment or in the
  test process). Under gVisor (whose 2022 release lets a same-uid process open
  /proc/1/fd/1 and signal PID 1) a skill can still kill the harness or write to
  its stdout, but cannot forge a line: the controller accepts only verified
  lines and treats any other line as tampering.
"""

PROTOCOL = 2
