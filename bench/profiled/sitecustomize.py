"""Profile a registry started by bench/grant_pipeline.py --profile (on PYTHONPATH only then): a sampling
profiler on the process's CPU time (SIGPROF every millisecond of CPU, all threads counted, the event
loop's Python stack recorded), so that its cost barely moves the figures and idle waits count nothing.
SIGUSR1 starts it, SIGUSR2 stops it and writes $LEASENET_BENCH_PROFILE/<host id>.stacks (collapsed
stacks, one `frame;frame;... count` per line: flamegraph.pl or speedscope read them). CPU that grpc's own
threads or C code burn is charged to the Python code the event loop runs next."""

import collections
import os
import signal
import sys

_out = os.environ.get("LEASENET_BENCH_PROFILE")
_argv = list(getattr(sys, "orig_argv", ()))
if _out and "registry" in _argv and "--host-id" in _argv:
    _path = os.path.join(_out, _argv[_argv.index("--host-id") + 1] + ".stacks")
    _stacks: collections.Counter = collections.Counter()
    _INTERVAL_S = 0.001

    def _sample(_signum, frame):
        names = []
        while frame is not None:
            code = frame.f_code
            names.append(f"{code.co_name} ({code.co_filename.rpartition('site-packages/')[2]}:{code.co_firstlineno})")
            frame = frame.f_back
        _stacks[";".join(reversed(names))] += 1

    def _start(*_):
        _stacks.clear()
        signal.signal(signal.SIGPROF, _sample)
        signal.setitimer(signal.ITIMER_PROF, _INTERVAL_S, _INTERVAL_S)

    def _stop(*_):
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        with open(_path + ".tmp", "w") as out:
            for stack, count in _stacks.most_common():
                out.write(f"{stack} {count}\n")
        os.replace(_path + ".tmp", _path)

    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
